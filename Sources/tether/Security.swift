import ArgumentParser
import Foundation
import TetherCluster
import TetherComm

/// `--key-file` and `--insecure`, on every command that opens a cluster socket.
struct SecurityOptions: ParsableArguments {
    @Option(
        help: "The cluster key file (tether keygen writes one; mode 600). Also TETHER_KEY_FILE, or the secret key itself in TETHER_KEY.")
    var keyFile: String?
    @Flag(
        help:
            "No encryption and no authentication: anyone who can reach the ports can read the job's data and parameters, join it and stop it."
    )
    var insecure = false

    /// The environment variable that may hold the secret key itself (never turned into an argument,
    /// which any user could read in the process list).
    static let keyVariable = "TETHER_KEY"

    func validate() throws {
        if insecure, keyFile != nil { throw ValidationError("--insecure and --key-file exclude each other") }
    }

    /// CURVE with the cluster key from --key-file or TETHER_KEY, or (with --insecure) nothing.
    func security() throws -> ClusterSecurity {
        if insecure { return .insecure }
        if let keyFile { return .curve(try KeyFile.read(keyFile)) }
        if let text = ProcessInfo.processInfo.environment[Self.keyVariable], !text.isEmpty {
            return .curve(try KeyFile.parse(text, source: "environment variable \(Self.keyVariable)"))
        }
        throw ValidationError(
            "no cluster key: give --key-file FILE (tether keygen FILE writes one; every process of the job needs the same) "
                + "or the key in TETHER_KEY; or run without security with --insecure")
    }
}

/// `tether keygen FILE`: a new cluster key.
struct Keygen: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Write a new cluster key file (CURVE) for a job's coordinator and workers.",
        discussion: "The file is created with mode 600 and never overwritten. Every process of a job needs the same file "
            + "(--key-file, TETHER_KEY_FILE, a compose or Kubernetes secret); whoever holds it may join the job.")

    @Argument(help: "The key file to create; without it the key is printed (for TETHER_KEY or a secret store).") var file: String?

    func run() throws {
        let keys = try CurveKeyPair.generate()
        guard let file else { return print(KeyFile.text(keys), terminator: "") }
        do { try KeyFile.write(keys, to: file) } catch { exitWithError(error) }
        print("wrote \(file) (public key \(keys.publicKey))")
    }
}

/// A folder only this user may enter (mkdtemp, mode 700), removed with everything in it on deinit. Its
/// name carries the maker's pid: a new one first removes those of this prefix whose makers are gone
/// (a SIGKILLed simulate's key).
final class PrivateFolder {
    let path: String
    init(prefix: String) throws {
        let temporary = URL(fileURLWithPath: NSTemporaryDirectory())
        for name in (try? FileManager.default.contentsOfDirectory(atPath: temporary.path)) ?? [] where name.hasPrefix(prefix + "-") {
            let parts = name.dropFirst(prefix.count + 1).split(separator: "-")
            var info = stat()
            let folder = temporary.appendingPathComponent(name).path
            guard parts.count == 2, let pid = Int32(parts[0]), kill(pid, 0) != 0, errno == ESRCH, lstat(folder, &info) == 0,
                info.st_uid == getuid(), info.st_mode & S_IFMT == S_IFDIR
            else { continue }
            try? FileManager.default.removeItem(atPath: folder)
        }
        var template = Array(temporary.appendingPathComponent("\(prefix)-\(getpid())-XXXXXX").path.utf8CString)
        guard let made = mkdtemp(&template) else {
            throw CurveError("cannot create a private temporary folder: \(String(cString: strerror(errno)))")
        }
        path = String(cString: made)
    }
    deinit { try? FileManager.default.removeItem(atPath: path) }
}

/// The cluster key of a job whose processes this one spawns (simulate, bench allreduce): drawn for the
/// job, in a file only this user can read (removed with this value), and the flags that hand it to a
/// child; with `insecure`, no key and `--insecure`.
struct EphemeralClusterKey {
    let keys: CurveKeyPair?
    /// `--key-file PATH`, or `--insecure`.
    let flags: [String]
    private let folder: PrivateFolder

    init(prefix: String, insecure: Bool) throws {
        folder = try PrivateFolder(prefix: prefix)
        guard !insecure else {
            (keys, flags) = (nil, ["--insecure"])
            return
        }
        let keys = try CurveKeyPair.generate(), path = folder.path + "/cluster.key"
        try KeyFile.write(keys, to: path)
        (self.keys, flags) = (keys, ["--key-file", path])
    }
}
