import Foundation

/// The files a process makes on its host for a job's links (unix sockets in the runtime folder, lanes
/// in /dev/shm): each is removed when its link closes, and `removeAll` removes whatever is left when
/// the process ends some other way (`_exit` while a collective runs, an exec to join again), so a run
/// that ends short of SIGKILL leaves nothing behind. What a SIGKILLed process left is swept by the next
/// run on the host (`SameHostLinks.folder`, `SharedLane.removeAbandoned`), or by the job's last worker
/// to end (`SameHostLinks.sweepJob`).
public enum HostFiles {
    nonisolated(unsafe) private static var paths: Set<String> = []
    private static let lock = NSLock()

    static func made(_ path: String) { lock.withLock { _ = paths.insert(path) } }
    static func gone(_ path: String) { lock.withLock { _ = paths.remove(path) } }

    /// Unlinks every file still registered (safe from any thread; the links themselves are not closed).
    public static func removeAll() {
        for path in lock.withLock({ Array(paths) }) { unlink(path) }
    }

    /// Unix sockets named `ring-*` in `folder` that nobody listens on (a connect is refused) and that are
    /// older than `grace` seconds (a socket is bound a moment before it listens): what killed workers
    /// left. Returns how many were removed.
    /// With `prefix`, only those whose names begin with it (one job's: `ring-TOKEN-`).
    @discardableResult
    public static func sweepDeadSockets(in folder: String, prefix: String = "ring-", grace: Double = 10) -> Int {
        guard let names = try? FileManager.default.contentsOfDirectory(atPath: folder) else { return 0 }
        var removed = 0
        for name in names where name.hasPrefix("ring-") && name.hasPrefix(prefix) {
            let path = folder + "/" + name
            var info = stat()
            guard lstat(path, &info) == 0, info.st_mode & S_IFMT == S_IFSOCK, info.st_uid == getuid(),
                Double(time(nil) - info.st_mtim.tv_sec) >= grace, !listening(path)
            else { continue }
            if unlink(path) == 0 { removed += 1 }
        }
        return removed
    }

    /// Whether a process accepts connections on the unix socket at `path`.
    static func listening(_ path: String) -> Bool {
        let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0)
        guard fd >= 0 else { return true }
        defer { close(fd) }
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        let bytes = Array(path.utf8)
        guard bytes.count < MemoryLayout.size(ofValue: address.sun_path) else { return true }
        withUnsafeMutableBytes(of: &address.sun_path) { raw in
            for (i, b) in bytes.enumerated() { raw[i] = b }
        }
        let status = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
        }
        return status == 0 || errno != ECONNREFUSED
    }
}
