import Foundation

/// The three ZeroMQ transports a ring runs on, and fresh addresses for N ranks on this host.
public enum Transport: String, CaseIterable, Sendable {
    case tcp, ipc, inproc

    /// N unused addresses: loopback tcp ports the kernel just handed out, socket files in a new temporary
    /// folder, or unique inproc names (inproc works only between ranks sharing one ZeroMQContext).
    public func localAddresses(_ n: Int) throws -> [String] {
        switch self {
        case .tcp:
            return try Self.freeLoopbackPorts(n).map { "tcp://127.0.0.1:\($0)" }
        case .ipc:
            let dir = FileManager.default.temporaryDirectory.appendingPathComponent(Self.ipcFolderPrefix + UUID().uuidString.prefix(8))
            // private, as a job's runtime folder is: only this user may reach the sockets
            try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true, attributes: [.posixPermissions: 0o700])
            return (0..<n).map { "ipc://\(dir.path)/rank\($0)" }
        case .inproc:
            let id = UUID().uuidString.prefix(8)
            return (0..<n).map { "inproc://tether-\(id)-rank\($0)" }
        }
    }

    static let ipcFolderPrefix = "tether-ipc-"

    /// The socket file of an ipc:// address; nil for any other.
    public static func ipcPath(_ address: String) -> String? {
        address.hasPrefix("ipc://") ? String(address.dropFirst("ipc://".count)) : nil
    }

    /// Removes what `localAddresses` made on disk: an ipc ring's folder; tcp and inproc leave nothing.
    public static func removeLocalAddresses(_ addresses: [String]) {
        guard let first = addresses.first.flatMap(ipcPath) else { return }
        let folder = URL(fileURLWithPath: first).deletingLastPathComponent()
        if folder.lastPathComponent.hasPrefix(ipcFolderPrefix) { try? FileManager.default.removeItem(at: folder) }
    }

    /// Ports held open together, so they are distinct, then released for the ranks to bind.
    static func freeLoopbackPorts(_ n: Int) throws -> [Int] {
        var fds: [Int32] = []
        defer { fds.forEach { _ = close($0) } }
        var ports: [Int] = []
        for _ in 0..<n {
            let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
            guard fd >= 0 else { throw CollectiveError(message: "socket(): \(String(cString: strerror(errno)))") }
            fds.append(fd)
            var addr = sockaddr_in()
            addr.sin_family = sa_family_t(AF_INET)
            addr.sin_port = 0
            addr.sin_addr.s_addr = inet_addr("127.0.0.1")
            var len = socklen_t(MemoryLayout<sockaddr_in>.size)
            let ok = withUnsafeMutablePointer(to: &addr) { p in
                p.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, len) == 0 && getsockname(fd, $0, &len) == 0 }
            }
            guard ok else { throw CollectiveError(message: "no free loopback port: \(String(cString: strerror(errno)))") }
            ports.append(Int(UInt16(bigEndian: addr.sin_port)))
        }
        return ports
    }
}
