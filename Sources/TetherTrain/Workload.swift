import Foundation
import TetherData
import TetherNN
import TetherTensor

/// What a held-out evaluation reports. `stats.count` is samples, or tokens for a language model.
public struct EvaluationReport: Sendable {
    public enum Kind: Sendable { case classification, reconstruction, languageModel, clickPrediction, regression }
    public var kind: Kind
    public var stats: BatchStats
    /// Area under the ROC curve (click prediction), from `scores` and `labels`.
    public var auc: Double?
    /// Click prediction's held-out scores and labels, kept so shards' reports can be merged.
    public var scores: [Float] = []
    public var labels: [Int32] = []

    public init(kind: Kind, stats: BatchStats, auc: Double? = nil, scores: [Float] = [], labels: [Int32] = []) {
        (self.kind, self.stats, self.auc, self.scores, self.labels) = (kind, stats, auc, scores, labels)
    }
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
        case .regression:
            return "test RMSE \(f(stats.rootMeanSquaredError, 4)), MAE \(f(stats.meanAbsoluteError, 4)), loss \(f(loss, 4))"
        }
    }

    /// The report over the union of shards' evaluations (each sample in exactly one).
    public static func merged(_ reports: [EvaluationReport]) -> EvaluationReport {
        var r = reports[0]
        r.stats = reports.dropFirst().reduce(r.stats) { $0 + $1.stats }
        if r.kind == .clickPrediction {
            (r.scores, r.labels) = (reports.flatMap(\.scores), reports.flatMap(\.labels))
            r.auc = areaUnderROC(scores: r.scores, labels: r.labels)
        }
        return r
    }

    /// The same figures as JSON fields (for metrics.jsonl and `tether eval --json`).
    public func write(into e: inout MetricsEvent) {
        e.test_loss = loss
        e.test_accuracy = accuracy
        e.test_perplexity = perplexity
        e.test_auc = auc
        if kind == .regression { (e.test_rmse, e.test_mae) = (stats.rootMeanSquaredError, stats.meanAbsoluteError) }
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
    /// Data-dependent initialization from this shard's part of the run's first batch; `reduce` sums
    /// the statistics over all shards, so every replica initializes alike.
    func initializeFromData(reduce: StatisticsReducer)
    /// Called before the first step of each epoch (not when resuming mid-epoch).
    func startEpoch(_ epoch: Int)
    /// Forward and backward of this shard's part of step `step` of epoch `epoch`; accumulates the
    /// gradient scaled by 1 / (the global batch's count), so summing over shards gives the exact mean.
    func accumulateGradients(epoch: Int, step: Int) -> BatchStats
    /// This shard's part of the held-out evaluation (merge the shards' with `EvaluationReport.merged`).
    func evaluate() -> EvaluationReport
    /// Makes the samples of `epoch` (nil: the evaluation's) available before its steps run, when they
    /// come from a served source; reading files needs nothing.
    func fetch(epoch: Int?) throws
    /// The training and held-out datasets, as a coordinator serves them (read from files).
    var servedSplits: (train: any ServableDataset, test: any ServableDataset) { get }
    /// Checkpoint metadata the workload needs to be rebuilt (the vocabulary).
    var checkpointMetadata: [String: String] { get }
    /// This shard's sample indices of step `step` of `epoch` (nil: the workload does not deal samples,
    /// a language model's token streams). For `SampleAudit`.
    func trainingSamples(epoch: Int, step: Int) -> [Int]?
}

extension Workload {
    public func trainingSamples(epoch: Int, step: Int) -> [Int]? { nil }
}

/// Seconds one optimizer step spent in its parts.
public struct StepTimes: Sendable {
    public var compute = 0.0, exchange = 0.0, optimizer = 0.0
    public init() {}
}

extension Workload {
    /// One optimizer step, the same in one process and on every replica: this shard's gradients for step
    /// `step` of epoch `epoch`, then `exchange` (a cluster's all-reduce; nothing in one process), then the
    /// update at `lr`, dense and row-sparse.
    public func train(
        epoch: Int, step: Int, optimizer: Optimizer<Float>, lr: Double,
        exchange: () throws -> Void = {}
    ) throws -> (stats: BatchStats, times: StepTimes) {
        func seconds(since t: ContinuousClock.Instant) -> Double {
            let d = t.duration(to: .now).components
            return Double(d.seconds) + Double(d.attoseconds) * 1e-18
        }
        var times = StepTimes()
        var t = ContinuousClock.now
        model.arena.zeroGrads()
        let stats = accumulateGradients(epoch: epoch, step: step)
        (times.compute, t) = (seconds(since: t), .now)
        try exchange()
        (times.exchange, t) = (seconds(since: t), .now)
        let sparse = model.sparseGradients
        optimizer.step(model.arena, lr: lr, sparse: sparse)
        sparse.forEach { $0.clear() }
        times.optimizer = seconds(since: t)
        return (stats, times)
    }

    public var unit: String { "samples" }
    public func startEpoch(_ epoch: Int) {}
    public func fetch(epoch: Int?) throws {}
    public var checkpointMetadata: [String: String] { [:] }
}

public enum Workloads {
    /// Builds the workload `config` names (its `ModelFamily`): its data, then its model with parameters
    /// from the seed's "INIT" stream (so every process that builds it gets the same weights).
    /// `metadata` is a checkpoint's, when rebuilding one (it carries the vocabulary).
    /// `source`: where the samples come from instead of files (a cluster worker's coordinator).
    public static func make(
        _ config: TrainingConfig, shard: Shard = .whole, metadata: [String: String] = [:],
        source: SampleSource? = nil
    ) throws -> any Workload {
        var rng = RNG(seed: config.seed, stream: 0x494E_4954)  // "INIT"
        let workload = try ModelFamily.named(config.model).make(config, shard, metadata, source, &rng)
        workload.model.context.rng = .dropoutMasks(seed: config.seed)
        return workload
    }
}

extension RNG {
    /// The stream a replica draws its dropout masks from ("DROP" + its rank): replicas draw different
    /// masks for their different samples.
    public static func dropoutMasks(seed: UInt64, replica: Int = 0) -> RNG {
        RNG(seed: seed, stream: 0x4452_4F50 &+ UInt64(replica))
    }
}

/// Which part of every global batch a process takes: rank `rank` of `count` data-parallel replicas.
public struct Shard: Sendable, Equatable, Codable {
    public var rank: Int, count: Int
    public init(rank: Int, count: Int) {
        precondition(count > 0 && (0..<count).contains(rank), "shard \(rank) of \(count)")
        (self.rank, self.count) = (rank, count)
    }
    public static let whole = Shard(rank: 0, count: 1)

    /// Positions rank, rank + count, rank + 2 count, ... of `items`: the shards of a slice are disjoint,
    /// cover it, and differ in size by at most one.
    public func dealt<C: RandomAccessCollection>(_ items: C) -> [C.Element] where C.Index == Int {
        stride(from: items.startIndex + rank, to: items.endIndex, by: count).map { items[$0] }
    }

    /// The `rank`-th of `count` nearly equal contiguous parts of 0..<n (for token streams).
    public func part(of n: Int) -> Range<Int> { (rank * n / count)..<((rank + 1) * n / count) }
}

/// The samples of each step of a shuffled epoch (EpochPlan) of `globalBatch` samples a step, dealt
/// over the shards; keeps the current epoch's plan.
final class ShuffledSteps {
    let seed: UInt64, count: Int, globalBatch: Int, shard: Shard
    private var plan: EpochPlan?
    init(seed: UInt64, count: Int, globalBatch: Int, shard: Shard) {
        (self.seed, self.count, self.globalBatch, self.shard) = (seed, count, globalBatch, shard)
    }

    var perEpoch: Int { (count + globalBatch - 1) / globalBatch }

    /// This shard's samples of every step of `epoch`, in step order.
    func localSamples(epoch: Int) -> [Int] { (0..<perEpoch).flatMap { samples(epoch: epoch, step: $0).local } }

    /// This shard's samples of the step, and the global step's sample count (the gradient's divisor).
    func samples(epoch: Int, step: Int) -> (local: ArraySlice<Int>, global: Int) {
        if plan?.epoch != epoch { plan = EpochPlan(seed: seed, epoch: epoch, count: count, globalBatch: globalBatch) }
        let all = plan!.samples(step: step)
        return (shard.dealt(all)[...], all.count)
    }
}

/// Evaluates this shard's items of 0..<count (dealt like training batches) in batches of `batch`,
/// summing the stats: over all shards, every item exactly once.
func inBatches(_ count: Int, of batch: Int, shard: Shard, _ body: (ArraySlice<Int>) -> BatchStats) -> BatchStats {
    let mine = shard.dealt(0..<count)
    return stride(from: 0, to: mine.count, by: batch).reduce(BatchStats()) { $0 + body(mine[$1..<min($1 + batch, mine.count)]) }
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
        let rank = Double(i + j) / 2 + 1  // average rank of the tied run, 1-based
        for k in i...j where labels[order[k]] == 1 { rankSum += rank; positives += 1 }
        i = j + 1
    }
    let negatives = Double(order.count) - positives
    guard positives > 0, negatives > 0 else { return .nan }
    return (rankSum - positives * (positives + 1) / 2) / (positives * negatives)
}
