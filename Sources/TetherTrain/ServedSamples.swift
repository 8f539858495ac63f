import TetherData
import TetherNN
import TetherTensor

/// Where a workload gets its samples when it does not read files: a cluster worker whose coordinator
/// serves the rows it asks for (`tether coordinator --serve-data`), so it needs no copy of the dataset.
/// Splits are `.train` and `.test` (a language model's validation text).
public protocol SampleSource: AnyObject {
    /// The split's row count and its dataset's encoded shape (ServableDataset).
    func describe(_ split: FashionMNIST.Split) throws -> (count: Int, shape: [UInt8])
    /// The encoded rows at `indices`, in that order.
    func rows(_ split: FashionMNIST.Split, _ indices: [Int]) throws -> [UInt8]
}

/// A split as a workload reads it: every row in memory (read from files), or only the rows the shard
/// needs for one epoch (or the evaluation), fetched from a source and found by their index in the split.
final class SplitSamples<Dataset: ServableDataset> {
    let split: FashionMNIST.Split
    let count: Int
    private let source: SampleSource?
    private let shape: [UInt8]
    private(set) var dataset: Dataset
    /// Served: the row of `dataset` holding each fetched sample, and which set is fetched.
    private var row: [Int: Int] = [:]
    private var fetched: Int?

    init(files dataset: Dataset, split: FashionMNIST.Split) {
        (self.split, self.dataset, source, count, shape) = (split, dataset, nil, dataset.count, [])
    }

    /// The split's size and shape from `source`; no rows until `fetch`.
    init(source: SampleSource, split: FashionMNIST.Split) throws {
        (self.split, self.source) = (split, source)
        (count, shape) = try source.describe(split)
        dataset = try Dataset(shape: shape, rows: [])
    }

    /// Served: fetches the rows `indices()` as the set `key` (an epoch, or -1 for the evaluation) unless
    /// that set is already here, dropping the previous one first. Files: nothing to do.
    func fetch(_ key: Int, _ indices: () -> [Int]) throws {
        guard let source, fetched != key else { return }
        let wanted = indices()
        (dataset, row, fetched) = (try Dataset(shape: shape, rows: []), [:], nil)
        dataset = try Dataset(shape: shape, rows: source.rows(split, wanted))
        guard dataset.count == wanted.count else {
            throw DataError.mismatch("served \(split) split: \(dataset.count) rows for \(wanted.count) requested")
        }
        row = Dictionary(uniqueKeysWithValues: wanted.enumerated().map { ($1, $0) })
        fetched = key
    }

    /// The rows of `dataset` that hold the split's samples `indices`.
    func rows(_ indices: ArraySlice<Int>) -> ArraySlice<Int> {
        guard source != nil else { return indices }
        return ArraySlice(
            indices.map { i in
                guard let r = row[i] else { preconditionFailure("\(split) sample \(i) was not fetched (fetch the epoch before its steps)") }
                return r
            })
    }
}

/// The training and held-out splits of a workload whose epochs are shuffled sample orders, with this
/// shard's plan of them: what the image and table workloads share.
final class ShuffledSplits<Dataset: ServableDataset> {
    let train: SplitSamples<Dataset>, test: SplitSamples<Dataset>
    let steps: ShuffledSteps
    let shard: Shard

    init(train: SplitSamples<Dataset>, test: SplitSamples<Dataset>, config: TrainingConfig, shard: Shard) {
        (self.train, self.test, self.shard) = (train, test, shard)
        steps = ShuffledSteps(seed: config.seed, count: train.count, globalBatch: config.globalBatch(workers: shard.count), shard: shard)
    }

    /// Served: the epoch's samples of this shard in step order, or the shard's share of the held-out split.
    func fetch(epoch: Int?) throws {
        if let epoch {
            try train.fetch(epoch) { steps.localSamples(epoch: epoch) }
        } else {
            try test.fetch(-1) { shard.dealt(0..<test.count) }
        }
    }

    /// This shard's held-out samples in batches of `batch`, their stats summed.
    func evaluate(inBatchesOf batch: Int, _ body: (ArraySlice<Int>) -> BatchStats) -> BatchStats {
        inBatches(test.count, of: batch, shard: shard, body)
    }

    /// Every held-out position in order, `batch` at a time (predictions, in one process).
    func heldOutInOrder(inBatchesOf batch: Int) -> [ArraySlice<Int>] {
        stride(from: 0, to: test.count, by: max(1, batch)).map { ArraySlice($0..<min($0 + batch, test.count)) }
    }
}

/// A workload over `ShuffledSplits`: its epoch length, fetching and served splits come from them.
protocol ShuffledWorkload: Workload {
    associatedtype Dataset: ServableDataset
    var splits: ShuffledSplits<Dataset> { get }
}

extension ShuffledWorkload {
    var stepsPerEpoch: Int { splits.steps.perEpoch }
    func fetch(epoch: Int?) throws { try splits.fetch(epoch: epoch) }
    var servedSplits: (train: any ServableDataset, test: any ServableDataset) { (splits.train.dataset, splits.test.dataset) }
    func trainingSamples(epoch: Int, step: Int) -> [Int]? { Array(splits.steps.samples(epoch: epoch, step: step).local) }
}
