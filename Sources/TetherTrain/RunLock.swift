import Foundation

/// One writer per run directory: `flock(2)` on `run.lock` in it, held for the life of the process, with
/// the holder written in the file ("pid 1234 on host h: tether train, since 2026-12-06T07:01:56Z") so a
/// second run is refused naming it. The kernel drops the lock when its holder dies however it dies, so a
/// lock left by a SIGKILLed run is taken over by the next, which says so. A process takes a directory's
/// lock once (a restart within it keeps it); its descriptor is not inherited by children.
public enum RunLock {
    public static let fileName = "run.lock"
    nonisolated(unsafe) private static var held: [String: Int32] = [:]
    private static let guardLock = NSLock()

    /// Takes `directory`'s lock, or throws naming the process that holds it. A line for `progress` when
    /// a dead holder's lock was taken over.
    public static func acquire(_ directory: URL, command: String = Self.commandName) throws -> String? {
        let key = directory.standardizedFileURL.path
        guardLock.lock()
        defer { guardLock.unlock() }
        if held[key] != nil { return nil }
        let path = directory.appendingPathComponent(fileName).path
        let fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0o644)
        guard fd >= 0 else {
            throw ConfigError(message: "--run-dir \(directory.path): cannot open \(path): \(String(cString: strerror(errno)))")
        }
        let previous = holder(fd)
        guard flock(fd, LOCK_EX | LOCK_NB) == 0 else {
            close(fd)
            throw ConfigError(
                message:
                    "\(directory.path) is in use by another run (\(previous.isEmpty ? "a process that has not said which" : previous)); "
                    + "wait for it to end or stop it, or choose another --run-dir (--force does not take a directory in use)")
        }
        let me =
            "pid \(getpid()) on host \(ProcessInfo.processInfo.hostName): \(command), since \(ISO8601DateFormatter().string(from: Date()))"
        _ = ftruncate(fd, 0)
        _ = pwrite(fd, me + "\n", me.utf8.count + 1, 0)
        if held.isEmpty { atexit { RunLock.releaseAll() } }
        held[key] = fd
        return previous.isEmpty ? nil : "took over \(directory.path) from \(previous), which is no longer running"
    }

    /// Gives the lock up and empties the holder line (the file stays: removing it would let a process
    /// that opened it a moment ago lock a name no longer in the directory).
    public static func release(_ directory: URL) {
        let key = directory.standardizedFileURL.path
        guardLock.lock()
        defer { guardLock.unlock() }
        guard let fd = held.removeValue(forKey: key) else { return }
        _ = ftruncate(fd, 0)
        close(fd)
    }

    /// At exit: every lock given up and its holder line emptied, so the next run finds a directory no
    /// one held (a process killed outright leaves its line, and the next run says it took over).
    static func releaseAll() {
        for directory in guardLock.withLock({ Array(held.keys) }) { release(URL(fileURLWithPath: directory)) }
    }

    /// Whether this process holds `directory`'s lock.
    public static func holds(_ directory: URL) -> Bool {
        guardLock.lock()
        defer { guardLock.unlock() }
        return held[directory.standardizedFileURL.path] != nil
    }

    /// The holder line of an open lock file (empty: none written, or given up).
    static func holder(_ fd: Int32) -> String {
        var buffer = [UInt8](repeating: 0, count: 512)
        let n = pread(fd, &buffer, buffer.count, 0)
        guard n > 0 else { return "" }
        return String(decoding: buffer[0..<n], as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines)
    }

    /// "tether train": the program and its subcommand.
    public static var commandName: String {
        CommandLine.arguments.prefix(2).map { URL(fileURLWithPath: $0).lastPathComponent }.joined(separator: " ")
    }
}
