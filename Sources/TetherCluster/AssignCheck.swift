import Foundation
import TetherComm
import TetherMessages
import TetherTrain

/// What a worker checks in its Assign before acting on any of it: a coordinator (or, with --insecure,
/// anyone posing as one) must not make a worker read, write or connect where it was not started to.
/// Pure: every rule is testable without sockets.
public struct AssignCheck: Sendable {
    /// Folders a job's data may come from (`tether worker --data-root`); the data and schema paths in the
    /// configuration must resolve inside one of them.
    public var dataRoots: [String]
    /// Whether this worker runs with CURVE: then the Assign must carry the ring's keys.
    public var secure: Bool
    /// The folder ipc ring addresses must lie in (the job's own runtime folder).
    public var runtimeDirectory: String

    public init(dataRoots: [String], secure: Bool, runtimeDirectory: String = AssignCheck.defaultRuntimeDirectory) {
        (self.dataRoots, self.secure, self.runtimeDirectory) = (dataRoots, secure, runtimeDirectory)
    }

    public static var defaultRuntimeDirectory: String {
        URL(fileURLWithPath: ProcessInfo.processInfo.environment["XDG_RUNTIME_DIR"] ?? NSTemporaryDirectory()).appendingPathComponent(
            "tether"
        ).path
    }

    /// The data roots a worker has when none are given: Debian's datasets and fortunes, and the folder
    /// it was started in.
    public static var defaultDataRoots: [String] {
        ["/usr/share/datasets", "/usr/share/games/fortunes", FileManager.default.currentDirectoryPath]
    }

    /// The configuration, validated, or an error naming the field that is refused.
    public func validate(_ assign: Assign) throws -> TrainingConfig {
        func refuse(_ why: String) -> ClusterError { ClusterError("refusing the coordinator's assignment: \(why)") }
        guard assign.hashEvery >= 1, assign.bucketBytes >= 4 else {
            throw refuse("hash_every \(assign.hashEvery) and bucket_bytes \(assign.bucketBytes) must be at least 1 and 4")
        }
        guard assign.rank < assign.ring.count else { throw refuse("rank \(assign.rank) of a ring of \(assign.ring.count)") }
        // this worker binds its own address and connects to its right neighbour's; a unix socket among
        // the others is another host's business, but must still be a plain path
        let mine = Int(assign.rank), right = (mine + 1) % assign.ring.count
        for (rank, address) in assign.ring.enumerated() {
            let folder = rank == mine || rank == right ? runtimeDirectory : nil
            if let why = Self.ringAddressProblem(address, runtimeDirectory: folder) {
                throw refuse("ring address of rank \(rank) \"\(address.prefix(200))\": \(why)")
            }
        }
        if secure {
            guard assign.ringPublicKeys.count == assign.ring.count, assign.ringPublicKeys.allSatisfy(CurveKeyPair.isZ85Key),
                (try? CurveKeyPair(secretKey: assign.ringSecretKey))?.publicKey == assign.ringPublicKeys[Int(assign.rank)]
            else {
                throw refuse(
                    "it carries no valid ring keys, and this worker does not run its ring in plaintext (the coordinator runs --insecure?)")
            }
        }
        let config: TrainingConfig
        do { config = try JSONDecoder().decode(TrainingConfig.self, from: Data(assign.configJSON)) } catch {
            throw refuse("the job configuration does not decode: \(error)")
        }
        do { try config.validate() } catch { throw refuse("the job configuration is not valid: \(error)") }
        if !assign.dataServed {
            for path in DataSource.localPaths(data: config.data, schema: config.schema, testData: config.testData) where !within(path) {
                throw refuse(
                    "the job reads \(path), which is outside this worker's data roots (\(dataRoots.joined(separator: ", "))); "
                        + "start the worker with --data-root FOLDER, or serve the data (coordinator --serve-data)")
            }
        }
        return config
    }

    /// Whether `path`, with symbolic links and `..` resolved, lies in one of the data roots.
    func within(_ path: String) -> Bool {
        let resolved = Self.resolve(path)
        return dataRoots.contains { root in
            let r = Self.resolve(root)
            return resolved == r || resolved.hasPrefix(r.hasSuffix("/") ? r : r + "/")
        }
    }

    static func resolve(_ path: String) -> String {
        URL(fileURLWithPath: path).standardizedFileURL.resolvingSymlinksInPath().path
    }

    /// Why a ring address is refused: only tcp://HOST:PORT, or ipc:// inside the job's runtime folder
    /// (nil: a path in any folder, for a link this worker does not use).
    static func ringAddressProblem(_ address: String, runtimeDirectory: String?) -> String? {
        if address.hasPrefix("tcp://") {
            let rest = address.dropFirst(6)
            guard let colon = rest.lastIndex(of: ":"), let port = Int(rest[rest.index(after: colon)...]), (1...65535).contains(port),
                !rest[..<colon].isEmpty, !rest.contains("/"), !rest.contains(";")
            else { return "expected tcp://HOST:PORT" }
            return nil
        }
        if let path = Transport.ipcPath(address) {
            guard !path.contains("/../"), path.hasPrefix((runtimeDirectory ?? "") + "/"), !path.contains("\0") else {
                return "an ipc socket must lie in this job's runtime folder \(runtimeDirectory ?? "(an absolute path)")"
            }
            return nil
        }
        return "only tcp:// (or ipc:// in the job's runtime folder) ring addresses are accepted"
    }
}
