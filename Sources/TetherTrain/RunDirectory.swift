import Foundation

/// A run directory: `checkpoint.safetensors` and `metrics.jsonl` of one run. A fresh run starts in a
/// directory that holds neither (or, with --force, deletes them first); --resume continues the run there.
public enum RunDirectory {
    public static let metricsFileName = "metrics.jsonl"

    /// Creates `directory` if needed (a file in its place is an error naming the flag). A fresh run
    /// (`resume` false) is refused where a run's files are, unless `force`, which deletes them.
    public static func prepare(_ directory: URL, resume: Bool, force: Bool = false) throws {
        var isFolder: ObjCBool = false
        if FileManager.default.fileExists(atPath: directory.path, isDirectory: &isFolder) {
            guard isFolder.boolValue else { throw ConfigError(message: "--run-dir \(directory.path) is a file; give a folder (it is created if missing)") }
        } else {
            do { try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true) } catch {
                throw ConfigError(message: "--run-dir \(directory.path): cannot create it (\((error as NSError).localizedFailureReason ?? "\(error)"))")
            }
        }
        guard !resume else { return }
        let files = [Checkpoint.fileName, metricsFileName].filter { FileManager.default.fileExists(atPath: directory.appendingPathComponent($0).path) }
        guard !files.isEmpty else { return }
        guard force else {
            let deletes = "--force to start over (deletes \(files.joined(separator: " and ")))"
            throw ConfigError(message: files.contains(Checkpoint.fileName)
                ? "\(directory.path) holds a run: pass --resume to continue it, \(deletes), or choose another --run-dir"
                : "\(directory.path) holds the metrics of a run that left no checkpoint: pass \(deletes), or choose another --run-dir")
        }
        for f in files {
            do { try FileManager.default.removeItem(at: directory.appendingPathComponent(f)) } catch {
                throw ConfigError(message: "--force: cannot delete \(directory.appendingPathComponent(f).path): \((error as NSError).localizedFailureReason ?? "\(error)")")
            }
        }
    }
}
