import Foundation

/// One line of metrics.jsonl. Always `event`, `epoch`, `step`; the rest where it applies.
public struct MetricsEvent: Codable, Equatable, Sendable {
    public var event: String            // start, training (cluster: all replicas ready), step, epoch, end, interrupted
    public var epoch: Int
    public var step: Int                // global step count after this event
    public var loss: Double?            // mean training loss since the previous line of the same kind
    public var samples_per_sec: Double?     // tokens per second for a language model
    public var lr: Double?
    public var test_accuracy: Double?
    public var test_loss: Double?
    public var test_perplexity: Double?
    public var test_auc: Double?
    /// Cluster steps: per rank, seconds of compute, of gradient exchange, and of the exchange waiting.
    public var compute_s: [Double]?
    public var allreduce_s: [Double]?
    public var wait_s: [Double]?
    /// Why a job failed.
    public var error: String?
    public var elapsed_s: Double?
    public var parameters: Int?
    public var model: String?

    public init(event: String, epoch: Int, step: Int) { (self.event, self.epoch, self.step) = (event, epoch, step) }
}

/// Appends one JSON object per line, flushed as written, so a crash loses at most the line in flight
/// and a resumed run continues the same file.
public final class MetricsLog {
    private let handle: FileHandle
    public let path: String
    private let encoder: JSONEncoder = {
        let e = JSONEncoder()
        e.outputFormatting = [.sortedKeys]
        // JSON has no NaN or infinity: such a value is written as null (via a marker no real string holds)
        e.nonConformingFloatEncodingStrategy = .convertToString(positiveInfinity: MetricsLog.notANumber, negativeInfinity: MetricsLog.notANumber,
                                                                nan: MetricsLog.notANumber)
        return e
    }()
    static let notANumber = "\u{1}not-a-number\u{1}"
    static let notANumberJSON = Data("\"\\u0001not-a-number\\u0001\"".utf8)

    /// Creates `directory` if needed; a file in its place is an error naming the flag.
    public static func prepare(runDirectory directory: URL) throws {
        var isFolder: ObjCBool = false
        if FileManager.default.fileExists(atPath: directory.path, isDirectory: &isFolder) {
            guard isFolder.boolValue else { throw ConfigError(message: "--run-dir \(directory.path) is a file; give a folder (it is created if missing)") }
            return
        }
        do { try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true) } catch {
            throw ConfigError(message: "--run-dir \(directory.path): cannot create it (\((error as NSError).localizedFailureReason ?? "\(error)"))")
        }
    }

    public init(path: String) throws {
        self.path = path
        if !FileManager.default.fileExists(atPath: path) {
            guard FileManager.default.createFile(atPath: path, contents: nil) else {
                throw ConfigError(message: "\(path): cannot create the metrics file (does the run directory exist and is it writable?)")
            }
        }
        guard let h = FileHandle(forWritingAtPath: path) else { throw ConfigError(message: "\(path): cannot open for appending") }
        handle = h
        handle.seekToEndOfFile()
    }

    public func write(_ e: MetricsEvent) throws {
        var line = try encoder.encode(e)
        while let r = line.range(of: Self.notANumberJSON) { line.replaceSubrange(r, with: Data("null".utf8)) }
        line.append(0x0A)
        do { try handle.write(contentsOf: line) } catch {
            throw ConfigError(message: "\(path): cannot write metrics: \(error.localizedDescription)")
        }
    }

    deinit { try? handle.close() }
}
