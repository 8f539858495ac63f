import Foundation
import TetherNN

/// Everything that defines a training run. Stored in every checkpoint; a resumed run keeps it (only
/// its length, `epochs` and `maxSteps`, may be extended).
public struct TrainingConfig: Codable, Equatable, Sendable {
    public var model = "mlp-wn"
    public var data = "fashion-mnist"
    public var epochs = 10
    /// Ends the run after this many steps, if fewer than `epochs` would take.
    public var maxSteps: Int?
    /// Samples per step (per worker, in a cluster).
    public var batch = 64
    public var optimizer = OptimizerConfig()
    public var schedule = LRSchedule()
    public var seed: UInt64 = 0
    /// Use only the first N training / test samples (for quick runs and tests).
    public var trainLimit: Int?
    public var testLimit: Int?
    /// Also checkpoint every K steps (0: only at epoch ends and at the end).
    public var checkpointEvery = 0
    /// A `step` line in metrics.jsonl (and the log) every K steps.
    public var logEvery = 50

    public init() {}

    /// The fields that may differ between a checkpoint and the run that resumes it.
    static let extendableFields: Set<String> = ["epochs", "maxSteps"]

    /// Names of the fields (other than the run's length) in which `self` differs from `other`.
    public func fieldsDiffering(from other: TrainingConfig) -> [String] {
        func flat(_ c: TrainingConfig) -> [String: String] {
            let json = try! JSONSerialization.jsonObject(with: JSONEncoder().encode(c)) as! [String: Any]
            var out: [String: String] = [:]
            for (k, v) in json {
                if let nested = v as? [String: Any] { for (k2, v2) in nested { out["\(k).\(k2)"] = "\(v2)" } }
                else { out[k] = "\(v)" }
            }
            return out
        }
        let (a, b) = (flat(self), flat(other))
        return Set(a.keys).union(b.keys).filter { a[$0] != b[$0] && !Self.extendableFields.contains($0) }.sorted()
    }

    /// Cross-field checks, with a message that says what to do.
    public func validate() throws {
        func fail(_ s: String) -> ConfigError { ConfigError(message: s) }
        guard batch > 0 else { throw fail("--batch must be at least 1 (got \(batch))") }
        guard epochs > 0 else { throw fail("--epochs must be at least 1 (got \(epochs))") }
        if let m = maxSteps, m <= 0 { throw fail("--max-steps must be at least 1 (got \(m))") }
        guard schedule.baseLR > 0, schedule.baseLR.isFinite else { throw fail("--lr must be a positive number (got \(schedule.baseLR))") }
        guard checkpointEvery >= 0 else { throw fail("--checkpoint-every must be 0 (epoch ends only) or more") }
        guard logEvery > 0 else { throw fail("--log-every must be at least 1") }
        if optimizer.nesterov && (optimizer.kind != .sgd || optimizer.momentum <= 0) {
            throw fail("--nesterov needs --optimizer sgd and --momentum > 0")
        }
        if let n = trainLimit, n <= 0 { throw fail("--train-limit must be at least 1") }
        if let n = testLimit, n <= 0 { throw fail("--test-limit must be at least 1") }
    }
}

public struct ConfigError: Error, CustomStringConvertible {
    public let message: String
    public init(message: String) { self.message = message }
    public var description: String { message }
}
