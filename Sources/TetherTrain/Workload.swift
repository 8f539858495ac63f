import Foundation
import TetherData
import TetherNN
import TetherTensor

/// What a held-out evaluation reports. `stats.count` is samples, or tokens for a language model.
public struct EvaluationReport: Sendable {
    public enum Kind: Sendable { case classification, reconstruction, languageModel, clickPrediction }
    public var kind: Kind
    public var stats: BatchStats
    /// Area under the ROC curve (click prediction).
    public var auc: Double?
    public var loss: Double { stats.meanLoss }
    public var accuracy: Double? { kind == .classification || kind == .clickPrediction ? stats.accuracy : nil }
    public var perplexity: Double? { kind == .languageModel ? exp(stats.meanLoss) : nil }

    /// One phrase for the log: "test accuracy 88.91%, test loss 0.3120".
    public var summary: String {
        let f = ProgressDisplay.fixed
        switch kind {
        case .classification: return "test accuracy \(f(100 * stats.accuracy, 2))%, test loss \(f(loss, 4))"
        case .reconstruction: return "test reconstruction MSE \(f(loss, 5)) per pixel"
        case .languageModel: return "validation perplexity \(f(exp(loss), 2)), loss \(f(loss, 4))"
        case .clickPrediction: return "test AUC \(f(auc ?? .nan, 4)), log loss \(f(loss, 4)), accuracy \(f(100 * stats.accuracy, 2))%"
        }
    }

    /// The same figures as JSON fields (for metrics.jsonl and `tether eval --json`).
    public func write(into e: inout MetricsEvent) {
        e.test_loss = loss
        e.test_accuracy = accuracy
        e.test_perplexity = perplexity
        e.test_auc = auc
    }
}

/// A model family with its data, as the training loop drives it: which samples make step s of epoch e,
/// how to run forward/backward on them, and how to evaluate. One per model family; every workload
/// trains unchanged under `tether train` and, later, on the cluster.
public protocol Workload: AnyObject {
    var model: any Model<Float> { get }
    /// Steps in one epoch at the run's batch size.
    var stepsPerEpoch: Int { get }
    /// "60,000 training / 10,000 test samples"
    var sizeSummary: String { get }
    /// What `BatchStats.count` counts: "samples" or "tokens".
    var unit: String { get }
    /// Data-dependent initialization from the run's first batch.
    func initializeFromData()
    /// Called before the first step of each epoch (not when resuming mid-epoch).
    func startEpoch(_ epoch: Int)
    /// Forward and backward of step `step` of epoch `epoch`; accumulates the batch-mean gradient.
    func accumulateGradients(epoch: Int, step: Int) -> BatchStats
    func evaluate() -> EvaluationReport
    /// Checkpoint metadata the workload needs to be rebuilt (the vocabulary).
    var checkpointMetadata: [String: String] { get }
}

extension Workload {
    public var unit: String { "samples" }
    public func startEpoch(_ epoch: Int) {}
    public var checkpointMetadata: [String: String] { [:] }
}

public enum Workloads {
    public static let names = ImageModels.names + ["autoencoder-tied", "lm-tied", "wide-deep"]

    /// Builds the workload `config` names: its data, then its model with parameters from the seed's
    /// "INIT" stream (so every process that builds it gets the same weights). `metadata` is a
    /// checkpoint's, when rebuilding one (it carries the vocabulary).
    public static func make(_ config: TrainingConfig, metadata: [String: String] = [:]) throws -> any Workload {
        var rng = RNG(seed: config.seed, stream: 0x494E_4954) // "INIT"
        let workload: any Workload
        switch config.model {
        case _ where ImageModels.names.contains(config.model):
            workload = try ImageClassification(config, rng: &rng)
        case "autoencoder-tied":
            workload = try ImageReconstruction(config, rng: &rng)
        case "lm-tied":
            workload = try LanguageModelling(config, metadata: metadata, rng: &rng)
        case "wide-deep":
            workload = try ClickPrediction(config, rng: &rng)
        default:
            throw ConfigError(message: "unknown --model \"\(config.model)\": choose one of \(names.joined(separator: ", "))")
        }
        workload.model.context.rng = RNG(seed: config.seed, stream: 0x4452_4F50) // "DROP": dropout masks
        return workload
    }
}

/// The samples of each step of a shuffled epoch (EpochPlan), keeping the current epoch's plan.
final class ShuffledSteps {
    let seed: UInt64, count: Int, batch: Int
    private var plan: EpochPlan?
    init(seed: UInt64, count: Int, batch: Int) { (self.seed, self.count, self.batch) = (seed, count, batch) }

    var perEpoch: Int { (count + batch - 1) / batch }

    func samples(epoch: Int, step: Int) -> ArraySlice<Int> {
        if plan?.epoch != epoch { plan = EpochPlan(seed: seed, epoch: epoch, count: count, globalBatch: batch) }
        return plan!.samples(step: step)
    }
}

/// Evaluates `count` items in batches of `batch`, each exactly once, summing the stats.
func inBatches(_ count: Int, of batch: Int, _ body: (Range<Int>) -> BatchStats) -> BatchStats {
    stride(from: 0, to: count, by: batch).reduce(BatchStats()) { $0 + body($1 ..< min($1 + batch, count)) }
}

/// The area under the ROC curve of scores against labels in {0, 1}: the probability that a random
/// positive scores above a random negative (ties count half), from the ranks (Mann-Whitney U).
public func areaUnderROC(scores: [Float], labels: [Int32]) -> Double {
    precondition(scores.count == labels.count)
    let order = scores.indices.sorted { scores[$0] < scores[$1] }
    var rankSum = 0.0, positives = 0.0, i = 0
    while i < order.count {
        var j = i
        while j + 1 < order.count && scores[order[j + 1]] == scores[order[i]] { j += 1 }
        let rank = Double(i + j) / 2 + 1 // average rank of the tied run, 1-based
        for k in i...j where labels[order[k]] == 1 { rankSum += rank; positives += 1 }
        i = j + 1
    }
    let negatives = Double(order.count) - positives
    guard positives > 0, negatives > 0 else { return .nan }
    return (rankSum - positives * (positives + 1) / 2) / (positives * negatives)
}
