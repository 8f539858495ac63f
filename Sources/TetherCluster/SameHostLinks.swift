import Foundation
import TetherComm
import TetherMessages

/// Ring links between workers on the same host go over unix sockets (ipc://), the rest over TCP:
/// on one host the TCP stack is most of an all-reduce's cost (100 MiB, 2 ranks: 85-90 ms over ipc,
/// 117-123 over tcp loopback). A worker says in its Hello which files it sees (`key`: one kernel
/// boot, one mount namespace, one user; containers and `ip netns exec` hosts differ) and where it can
/// bind a socket (`folder`, its private runtime folder); the coordinator, which sees the pairing,
/// gives rank r a socket in its folder when its left neighbour, the only rank that connects to it,
/// has the same key. The headers, checks and CURVE are those of a TCP link.
public enum SameHostLinks {
    /// This process's host key: boot id, mount namespace and user id ("" when unreadable).
    public static var key: String {
        guard let boot = try? String(contentsOfFile: "/proc/sys/kernel/random/boot_id", encoding: .utf8),
            let mounts = try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/ns/mnt")
        else { return "" }
        return "\(boot.trimmingCharacters(in: .whitespacesAndNewlines))/\(mounts)/\(getuid())"
    }

    /// `path` (the worker's runtime folder), made if missing with mode 0700, when it is this user's own
    /// and private; nil otherwise (a folder another user made, say in a shared /tmp: TCP only).
    public static func folder(_ path: String = AssignCheck.defaultRuntimeDirectory) -> String? {
        try? FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true, attributes: [.posixPermissions: 0o700])
        var info = stat()
        guard lstat(path, &info) == 0, (info.st_mode & S_IFMT) == S_IFDIR, info.st_uid == getuid(), info.st_mode & 0o077 == 0,
            isUsable(path)
        else { return nil }
        HostFiles.sweepDeadSockets(in: path)  // what SIGKILLed workers left
        return path
    }

    /// A folder a coordinator will place sockets in: absolute, no `..`, short enough for a socket
    /// path (108 bytes with the file name).
    static func isUsable(_ folder: String) -> Bool {
        folder.hasPrefix("/") && !folder.contains("/../") && !folder.hasSuffix("/..") && folder.utf8.count <= 64 && !folder.contains("\0")
    }

    /// The ring addresses a coordinator sends for a ring of `advertised` addresses: rank r's (which it
    /// binds and its left neighbour connects to) is `ipc://FOLDER/ring-TOKEN-eEPOCH-rR` when it and its
    /// left neighbour have the same non-empty host key and folder, else the address it advertised.
    /// `hosts[i]`: what rank i said in its Hello (nil: nothing).
    public static func ringAddresses(
        _ advertised: [String], hosts: [(key: String, folder: String)?], token: String, epoch: UInt32
    ) -> [String] {
        let n = advertised.count
        return advertised.indices.map { r in
            guard n > 1, let mine = hosts[r], let left = hosts[(r + n - 1) % n], !mine.key.isEmpty, mine.key == left.key,
                mine.folder == left.folder, isUsable(mine.folder)
            else { return advertised[r] }
            return "ipc://\(mine.folder)/ring-\(token)-e\(epoch)-r\(r)"
        }
    }

    /// Removes the socket files of the job whose ring `addresses` name (same-host links:
    /// `ipc://FOLDER/ring-TOKEN-eE-rR`) that nobody listens on any more: what its SIGKILLed workers
    /// left. At once: the token is the job's coordinator's own, so no other job's socket can match.
    public static func sweepJob(_ addresses: [String]) {
        var swept = Set<String>()
        for address in addresses where address.hasPrefix("ipc://") {
            let path = String(address.dropFirst("ipc://".count))
            let folder = (path as NSString).deletingLastPathComponent, name = (path as NSString).lastPathComponent
            guard name.hasPrefix("ring-"), let token = name.split(separator: "-").dropFirst().first else { continue }
            let prefix = "ring-\(token)-"
            if swept.insert(folder + "/" + prefix).inserted { HostFiles.sweepDeadSockets(in: folder, prefix: prefix, grace: 0) }
        }
    }
}
