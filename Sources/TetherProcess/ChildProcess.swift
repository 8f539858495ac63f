import CTetherProcess
import Foundation

/// A child process started with posix_spawn (`tether_spawn`): every descriptor but its standard
/// input, output and error closed, no signal blocked and every signal at its default. A thread of its
/// own reaps it. This is how Tether starts processes (simulate's workers, bench's ranks, the tests'
/// runs): Foundation's `Process.run` on Swift 6.3.1 now and then crashed its caller, reading past
/// glibc's buffer while it listed the descriptors to close (swift-corelibs-foundation#5472).
public final class ChildProcess: @unchecked Sendable {
    /// How a child ended: its exit status, or the signal that killed it.
    public enum Ending: Equatable, Sendable {
        case exited(Int32)
        case signalled(Int32)
    }

    public let processIdentifier: Int32
    public let executable: String
    private let lock = NSLock(), ended = DispatchSemaphore(value: 0)
    private var end: Ending?

    /// Starts `executable` with `arguments` and exactly `environment`, its standard output and error on
    /// the descriptors `output` and `error` (this process's own when nil), in `folder` (this process's
    /// when nil). The caller closes its copies of `output` and `error` when it no longer writes to them.
    public init(
        _ executable: String, _ arguments: [String], environment: [String: String], output: Int32? = nil, error: Int32? = nil,
        folder: String? = nil
    ) throws {
        func cStrings(_ strings: [String]) -> [UnsafeMutablePointer<CChar>?] { strings.map { strdup($0) } + [nil] }
        let argv = cStrings([executable] + arguments), envp = cStrings(environment.map { "\($0.key)=\($0.value)" })
        defer { for p in argv + envp { free(p) } }
        var pid: Int32 = 0
        let rc = tether_spawn(executable, argv, envp, output ?? -1, error ?? -1, folder, &pid)
        guard rc == 0 else { throw ChildProcessError(executable: executable, code: rc) }
        (processIdentifier, self.executable) = (pid, executable)
        let child = pid
        Thread { [self] in
            var raw: Int32 = 0
            while waitpid(child, &raw, 0) < 0 && errno == EINTR {}
            let ending: Ending = raw & 0x7f == 0 ? .exited((raw >> 8) & 0xff) : .signalled(raw & 0x7f)
            lock.withLock { end = ending }
            ended.signal()
        }.start()
    }

    /// This binary, for a child that runs Tether itself.
    public static let tether = URL(fileURLWithPath: "/proc/self/exe").resolvingSymlinksInPath().path

    public var isRunning: Bool { lock.withLock { end == nil } }
    /// How it ended; nil while it runs.
    public var ending: Ending? { lock.withLock { end } }

    public func signal(_ number: Int32) { kill(processIdentifier, number) }
    public func terminate() { signal(SIGTERM) }

    /// Waits for it to end.
    @discardableResult
    public func waitUntilExit() -> Ending {
        ended.wait()
        ended.signal()
        return ending!
    }

    /// Whether it ended within `seconds`.
    public func wait(seconds: Double) -> Bool {
        guard ended.wait(timeout: .now() + max(0, seconds)) == .success else { return false }
        ended.signal()
        return true
    }

    /// Everything written to `output` and to `error` until their ends (a child's pipes), read at once so
    /// that neither can fill and stop the child while the other is read.
    public static func readToEnd(_ output: FileHandle, _ error: FileHandle) -> (output: Data, error: Data) {
        let lock = NSLock(), errorRead = DispatchGroup()
        nonisolated(unsafe) var errors = Data()
        DispatchQueue.global().async(group: errorRead) {
            let bytes = error.readDataToEndOfFile()
            lock.withLock { errors = bytes }
        }
        let printed = output.readDataToEndOfFile()
        errorRead.wait()
        return (printed, lock.withLock { errors })
    }

    /// Waits up to `seconds` for each of `children` to end (one deadline for all), then kills the rest
    /// (SIGKILL: a Tether worker takes SIGTERM as a graceful stop, which a job that is over cannot complete).
    public static func reap(_ children: [ChildProcess], within seconds: Double) {
        let deadline = Date().addingTimeInterval(seconds)
        for child in children where !child.wait(seconds: deadline.timeIntervalSinceNow) {
            child.signal(SIGKILL)
            child.waitUntilExit()
        }
    }
}

/// A child that could not be started.
public struct ChildProcessError: Error, CustomStringConvertible {
    public let executable: String
    public let code: Int32
    public var description: String { "cannot start \(executable): \(String(cString: strerror(code)))" }
}
