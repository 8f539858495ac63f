import Foundation

/// SIGINT and SIGTERM ask a run to stop at the next step boundary (so the checkpoint it leaves is a
/// complete step); a second signal ends the process at once.
public enum StopSignal {
    nonisolated(unsafe) private static var count: Int32 = 0

    public static func install() {
        // A parent that started this process from a thread with these signals blocked (a test runner,
        // a supervisor) passes the mask on: unblock them, or SIGTERM would never arrive.
        var set = sigset_t()
        sigemptyset(&set)
        for s in [SIGINT, SIGTERM] { sigaddset(&set, s) }
        pthread_sigmask(SIG_UNBLOCK, &set, nil)
        for s in [SIGINT, SIGTERM] {
            signal(s) { sig in
                StopSignal.count += 1
                if StopSignal.count > 1 { _exit(128 + sig) }
            }
        }
    }

    public static var requested: Bool { count > 0 }
}
