import Foundation

/// One line of a run directory's metrics.jsonl: the one schema `train` and the cluster (`simulate`,
/// `coordinator`) write, documented in docs/commands.md. Always `event`, `epoch`, `step`; the rest where it
/// applies. Numbers are JSON numbers or null (a NaN or infinite value), never strings.
///
/// Events: `start` (model, parameters; cluster: workers), `training` (cluster: every replica ready;
/// elapsed_s since start-up), `step` every --log-every steps (loss, samples_per_sec, lr; cluster: per
/// rank compute_s, allreduce_s, wait_s, optimizer_s, dense_bytes, sparse_bytes), `epoch` at each epoch's end (loss over the epoch, lr,
/// samples_per_sec, elapsed_s and the held-out metrics), `eval` when a run ends mid-epoch (--max-steps)
/// and from `tether eval --json` (loss over the partial epoch, the held-out metrics), `end`,
/// `interrupted` (a signal: the checkpoint is of `step`), `checkpoint` (one was written, of `step`), `failed` (error); elastic in place: `lost`
/// (error: who and why; workers left), `joined` (a worker joins the running job at a step boundary)
/// and `reformed` (training again from `step`; elapsed_s since the loss or the join; steps_redone: the
/// steps computed and given up, 0 or 1).
public struct MetricsEvent: Codable, Equatable, Sendable {
    public var event: String
    /// 1-based: the epoch of the last step counted in `step` (1 before the first step), as the console
    /// counts them ("epoch 2/10").
    public var epoch: Int
    public var step: Int  // global steps done when the line was written
    public var loss: Double?  // mean training loss since the previous line of the same kind
    public var samples_per_sec: Double?  // tokens per second for a language model
    public var lr: Double?  // the learning rate of the last step counted
    public var test_accuracy: Double?
    public var test_loss: Double?
    public var test_perplexity: Double?
    public var test_auc: Double?
    /// Regression: the held-out root mean squared and mean absolute errors.
    public var test_rmse: Double?
    public var test_mae: Double?
    /// Cluster steps: per rank, seconds of compute, of gradient exchange, and of the exchange waiting.
    public var compute_s: [Double]?
    public var allreduce_s: [Double]?
    public var wait_s: [Double]?
    public var optimizer_s: [Double]?
    /// Cluster steps: per rank, payload bytes sent in the step for dense gradients (as the wire carried
    /// them: narrowed or PowerSGD factors under --compression) and for sparse tables.
    public var dense_bytes: [Double]?
    public var sparse_bytes: [Double]?
    /// Why a job failed.
    public var error: String?
    public var elapsed_s: Double?
    public var parameters: Int?
    public var model: String?
    public var workers: Int?
    /// `tether eval`: the held-out samples (tokens for a language model) evaluated.
    public var samples: Int?
    /// `reformed`: the steps the ranks computed and gave up at the re-formation.
    public var steps_redone: Int?
    /// `training`, `reformed`: each rank's advertised address and compute threads, by rank.
    public var ranks: [String]?
    public var rank_threads: [Int]?

    /// An event after `step` global steps of a run with `stepsPerEpoch` steps an epoch.
    public init(event: String, step: Int, stepsPerEpoch: Int) {
        (self.event, self.step) = (event, step)
        epoch = (max(step, 1) - 1) / max(stepsPerEpoch, 1) + 1
    }
}

/// Appends one JSON object per line, flushed as written, so a crash loses at most the line in flight
/// and a resumed run continues the same file.
public final class MetricsLog {
    private let handle: FileHandle
    public let path: String
    private static let encoder: JSONEncoder = {
        let e = JSONEncoder()
        e.outputFormatting = [.sortedKeys]
        // JSON has no NaN or infinity: such a value is written as null (via a marker no real string holds)
        e.nonConformingFloatEncodingStrategy = .convertToString(
            positiveInfinity: MetricsLog.notANumber, negativeInfinity: MetricsLog.notANumber,
            nan: MetricsLog.notANumber)
        return e
    }()
    static let notANumber = "\u{1}not-a-number\u{1}"
    static let notANumberJSON = Data("\"\\u0001not-a-number\\u0001\"".utf8)

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

    /// One event as a JSON object (keys sorted; NaN and infinities as null), without the newline.
    public static func encode(_ e: MetricsEvent) throws -> Data {
        var line = try encoder.encode(e)
        while let r = line.range(of: Self.notANumberJSON) { line.replaceSubrange(r, with: Data("null".utf8)) }
        return line
    }

    public func write(_ e: MetricsEvent) throws {
        var line = try Self.encode(e)
        line.append(0x0A)
        do { try handle.write(contentsOf: line) } catch {
            throw ConfigError(message: "\(path): cannot write metrics: \(error.localizedDescription)")
        }
    }

    deinit { try? handle.close() }
}
