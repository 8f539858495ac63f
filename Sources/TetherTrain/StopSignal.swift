import Foundation

/// SIGINT and SIGTERM ask a run to stop gracefully: at the next step boundary, leaving a checkpoint of
/// that step (a cluster agrees on the step first). A second signal ends the process at once, printing
/// what `lossNote` says is lost.
public enum StopSignal {
    nonisolated(unsafe) private static var count: Int32 = 0
    nonisolated(unsafe) private static var first: Int32 = 0
    /// Two message buffers: the handler writes the active one; `lossNote` fills the other, then flips.
    nonisolated(unsafe) private static var notes: (UnsafeMutablePointer<CChar>, UnsafeMutablePointer<CChar>) = {
        let a = UnsafeMutablePointer<CChar>.allocate(capacity: noteCapacity),
            b = UnsafeMutablePointer<CChar>.allocate(capacity: noteCapacity)
        (a[0], b[0]) = (0, 0)
        return (a, b)
    }()
    nonisolated(unsafe) private static var active: Int32 = 0
    private static let noteCapacity = 1024

    /// Unblocks SIGINT and SIGTERM: a parent that started this process from a thread with them blocked
    /// (a test runner, a supervisor, the restart of `ProcessStart`) passes the mask on.
    public static func unblock() {
        var set = sigset_t()
        sigemptyset(&set)
        for s in [SIGINT, SIGTERM] { sigaddset(&set, s) }
        pthread_sigmask(SIG_UNBLOCK, &set, nil)
    }

    public static func install() {
        _ = notes  // allocated here, never in the handler
        for s in [SIGINT, SIGTERM] {
            Glibc.signal(s) { sig in
                StopSignal.count += 1
                if StopSignal.count == 1 { StopSignal.first = sig; return }
                // Only async-signal-safe calls from here: write and _exit.
                let note = StopSignal.active == 0 ? StopSignal.notes.0 : StopSignal.notes.1
                _ = write(2, note, strlen(note))
                _exit(128 + sig)
            }
        }
        unblock()  // after the handlers: one pending across a restart arrives at the handler
    }

    public static var requested: Bool { count > 0 }

    /// The signal that asked for the stop (SIGINT or SIGTERM), once one has.
    public static var signal: Int32? { count > 0 ? first : nil }

    /// The exit status of a process stopped by it: 128 + the signal (130 for Ctrl-C, 143 for SIGTERM).
    public static var exitStatus: Int32 { 128 + (signal ?? SIGINT) }

    /// "SIGINT" or "SIGTERM".
    public static func name(_ signal: Int32) -> String {
        switch signal {
        case SIGINT: "SIGINT (Ctrl-C)"
        case SIGTERM: "SIGTERM"
        default: "signal \(signal)"
        }
    }

    /// The loss note of a run whose last checkpoint (in `runDirectory`) is of `step`, or that has none.
    public static func lossNote(checkpointStep step: Int?, runDirectory: String) {
        lossNote(
            step.map { "the checkpoint of step \($0) in \(runDirectory) is kept; the steps since are lost" }
                ?? "nothing of this run is kept (no checkpoint was written yet)")
    }

    /// What a second signal prints before the process exits: what is lost by not waiting. Kept up to
    /// date by the loop (it changes when a checkpoint is written).
    public static func lossNote(_ text: String) {
        let target = active == 0 ? notes.1 : notes.0
        let line = Array(("\ntether: interrupted again: exiting at once; " + text + "\n").utf8.prefix(noteCapacity - 1))
        line.withUnsafeBufferPointer { p in
            p.baseAddress!.withMemoryRebound(to: CChar.self, capacity: line.count) { target.update(from: $0, count: line.count) }
        }
        target[line.count] = 0
        active = active == 0 ? 1 : 0
    }
}
