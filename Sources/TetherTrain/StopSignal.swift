import Foundation

/// SIGINT and SIGTERM ask a run to stop at the next step boundary (so the checkpoint it leaves is a
/// complete step); a second signal ends the process at once.
public enum StopSignal {
    nonisolated(unsafe) private static var count: Int32 = 0

    public static func install() {
        for s in [SIGINT, SIGTERM] {
            signal(s) { sig in
                StopSignal.count += 1
                if StopSignal.count > 1 { _exit(128 + sig) }
            }
        }
    }

    public static var requested: Bool { count > 0 }
}
