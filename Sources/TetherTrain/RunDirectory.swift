import Foundation

/// A run directory: `checkpoint.safetensors` and `metrics.jsonl` of one run, and `run.lock`, which the
/// process writing them holds (`RunLock`). A fresh run starts in a directory that holds neither (or,
/// with --force, deletes them first); --resume continues the run there.
/// `train` and the coordinator open theirs here: the one place a run is started fresh or resumed.
public final class RunDirectory {
    public static let metricsFileName = "metrics.jsonl"
    public let url: URL
    /// The checkpoint being resumed (--resume), checked against the command's settings.
    public let resumed: Checkpoint.Loaded?
    public var checkpointURL: URL { url.appendingPathComponent(Checkpoint.fileName) }
    public var metricsURL: URL { url.appendingPathComponent(Self.metricsFileName) }
    public var path: String { url.path }

    /// Opens `url` for a fresh run (refused where a run's files are, unless `force`, which deletes
    /// them) or, with `resume`, for the continuation of its checkpoint, whose settings `given` may
    /// change only where a resume allows (a note of what changes goes to `progress`).
    public init(_ url: URL, config given: TrainingConfig, resume: Bool, force: Bool = false, progress: ProgressDisplay) throws {
        self.url = url
        created = try Self.create(url)
        if let line = try RunLock.acquire(url) { progress.line(line) }
        Self.removeTornWrites(url)
        try Self.prepare(url, resume: resume, force: force)
        if resume {
            let loaded = try Checkpoint.Loaded(url.appendingPathComponent(Checkpoint.fileName))
            if let line = try given.checkResume(from: loaded.config, path: loaded.path) { progress.line(line) }
            resumed = loaded
        } else {
            resumed = nil
        }
    }

    /// The metrics file, appended to (opened once the run's settings are known good, so that a refused
    /// start leaves no file behind that would make the next start a resume).
    public func openMetrics() throws -> MetricsLog { try MetricsLog(path: metricsURL.path) }

    /// Whether this run created the directory (a run that never started removes what it made).
    let created: Bool

    /// Creates `directory` if needed (a file in its place is an error naming the flag); whether it did.
    static func create(_ directory: URL) throws -> Bool {
        var isFolder: ObjCBool = false
        if FileManager.default.fileExists(atPath: directory.path, isDirectory: &isFolder) {
            guard isFolder.boolValue else {
                throw ConfigError(message: "--run-dir \(directory.path) is a file; give a folder (it is created if missing)")
            }
            return false
        }
        do { try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true) } catch {
            throw ConfigError(
                message: "--run-dir \(directory.path): cannot create it (\((error as NSError).localizedFailureReason ?? "\(error)"))")
        }
        return true
    }

    /// Leaves the directory as this run found it, for a run stopped before its first step: its metrics
    /// file and lock go, and the directory too when this run made it and nothing else is in it.
    public func removeUnstarted() {
        guard resumed == nil, !FileManager.default.fileExists(atPath: checkpointURL.path) else { return }
        try? FileManager.default.removeItem(at: metricsURL)
        RunLock.release(url)
        try? FileManager.default.removeItem(at: url.appendingPathComponent(RunLock.fileName))
        if created, (try? FileManager.default.contentsOfDirectory(atPath: url.path))?.isEmpty == true {
            try? FileManager.default.removeItem(at: url)
        }
    }

    /// The temporary files of checkpoint writes that a kill interrupted (`AtomicFile`): with the
    /// directory's lock held, no other process is writing one.
    static func removeTornWrites(_ directory: URL) {
        let prefix = ".\(Checkpoint.fileName).tmp-"
        for name in (try? FileManager.default.contentsOfDirectory(atPath: directory.path)) ?? [] where name.hasPrefix(prefix) {
            try? FileManager.default.removeItem(at: directory.appendingPathComponent(name))
        }
    }

    /// A fresh run (`resume` false) is refused where a run's files are, unless `force`, which deletes
    /// them (this process holds the directory's lock: no other run is writing them).
    static func prepare(_ directory: URL, resume: Bool, force: Bool) throws {
        guard !resume else { return }
        let files = [Checkpoint.fileName, metricsFileName].filter {
            FileManager.default.fileExists(atPath: directory.appendingPathComponent($0).path)
        }
        guard !files.isEmpty else { return }
        guard force else {
            let deletes = "--force to start over (deletes \(files.joined(separator: " and ")))"
            throw ConfigError(
                message: files.contains(Checkpoint.fileName)
                    ? "\(directory.path) holds a run: pass --resume to continue it, \(deletes), or choose another --run-dir"
                    : "\(directory.path) holds the metrics of a run that left no checkpoint: pass \(deletes), or choose another --run-dir")
        }
        for f in files {
            do { try FileManager.default.removeItem(at: directory.appendingPathComponent(f)) } catch {
                throw ConfigError(
                    message:
                        "--force: cannot delete \(directory.appendingPathComponent(f).path): \((error as NSError).localizedFailureReason ?? "\(error)")"
                )
            }
        }
    }
}
