import Foundation
import TetherData
import TetherNN
import TetherTensor

extension DataSource {
    /// Whether `spec` names NumPy arrays: `npz:FILE` or `npy:DIR`.
    public static func isArrays(_ spec: String) -> Bool { spec.hasPrefix("npz:") || spec.hasPrefix("npy:") }

    /// The training and held-out samples of `npz:FILE` or `npy:DIR` (arrays x and y): its held-out split
    /// from `testData` (other arrays), or else `heldOutRows` (every tenth, or `testFraction` of them).
    static func arrays(_ config: TrainingConfig) throws -> (train: ArrayDataset, test: ArrayDataset) {
        let all = try ArrayDataset(arrays: config.data)
        if let test = config.testData {
            guard isArrays(test) else { throw DataError.unknownSource("--test-data \(test): give npz:FILE or npy:DIR") }
            let held = try ArrayDataset(arrays: test)
            guard held.sampleShape == all.sampleShape else {
                throw DataError.mismatch(
                    "--test-data \(test) holds samples of \(held.sampleShape), --data \(config.data) of \(all.sampleShape)")
            }
            return (all.prefix(config.trainLimit), held.prefix(config.testLimit))
        }
        guard all.count >= 2 else { throw DataError.invalid("\(config.data): \(all.count) sample; a held-out split needs at least 2") }
        let held = heldOutRows(count: all.count, fraction: config.testFraction), heldSet = Set(held)
        let train = all.rows((0..<all.count).filter { !heldSet.contains($0) }), test = all.rows(held)
        return (train.prefix(config.trainLimit), test.prefix(config.testLimit))
    }
}

/// A network of the run's model spec trained on samples of any shape (images, feature vectors, a
/// table's rows), from files or served: its input must hold the data's samples, and what its loss
/// trains against must be in the data: labels among the classes its last layer scores, or as many
/// regression targets as it gives values.
final class SpecTraining<Dataset: LabelledSamples>: ShuffledWorkload {
    let predictor: Predictor<Float>
    let splits: ShuffledSplits<Dataset>
    let regression: Bool
    var model: any Model<Float> { predictor }

    /// The samples come from `source` (served) or from `files` (read here); `fit` gives the spec for the
    /// training samples (a family's shipped spec fits itself to the images' size and classes).
    init(
        _ config: TrainingConfig, fit: (Dataset) throws -> ModelSpec, shard: Shard, source: SampleSource?,
        files: () throws -> (Dataset, Dataset), rng: inout RNG
    ) throws {
        let train: SplitSamples<Dataset>, test: SplitSamples<Dataset>
        if let source {
            (train, test) = (try SplitSamples(source: source, split: .train), try SplitSamples(source: source, split: .test))
        } else {
            let (a, b) = try files()
            (train, test) = (SplitSamples(files: a, split: .train), SplitSamples(files: b, split: .test))
        }
        splits = ShuffledSplits(train: train, test: test, config: config, shard: shard)
        let data = train.dataset, spec = try fit(data)
        regression = spec.loss.isRegression
        if let t = spec.table {
            guard let columns = data.tableColumns, columns == (t.categorical, t.numeric) else {
                let given = data.tableColumns.map { "a table of \($0.categorical) categorical and \($0.numeric) numeric columns" }
                throw ConfigError(
                    message:
                        "model spec \(spec.name): its input is \(try spec.inputShape()), the data's samples are \(given ?? "\(data.sampleShape)") (\(config.data))"
                )
            }
        } else {
            let input = try spec.inputShape(), sample = data.sampleShape
            guard data.tableColumns.map({ $0.categorical == 0 }) ?? true, input.count == sample.reduce(1, *),
                spec.input == sample || spec.input.count == 1 || (spec.input.count == 2 && Array(sample.suffix(2)) == spec.input)
                    || (spec.tokens != nil && sample.count == 1)
            else {
                throw ConfigError(
                    message: "model spec \(spec.name): its input is \(input), the data's samples are \(sample) (\(config.data))")
            }
        }
        if spec.tokens != nil, !(data is ArrayDataset) {
            throw ConfigError(message: "model spec \(spec.name): tokens come from --data npz:FILE or npy:DIR (x: (N, T) whole numbers)")
        }
        let outputs = try spec.classes()
        if (data as? ArrayDataset)?.hasTargets == false {
            // samples to predict on (Workloads.prediction): nothing to check them against
        } else if regression {
            guard data.targetWidth == outputs else {
                throw ConfigError(
                    message:
                        "model spec \(spec.name): its last layer gives \(outputs) values, the data has \(data.targetWidth) targets a sample (\(config.data))"
                )
            }
        } else {
            guard data.classes > 0 else {
                throw ConfigError(
                    message:
                        "\(config.data): its targets are not class labels (whole numbers from 0); loss \(spec.loss.rawValue) needs them: use loss: mse or l1 for regression"
                )
            }
        }
        (self.fittedSpec, dataName) = (spec, config.data)
        predictor = try spec.predictor(kind: config.model, rng: &rng)
        for (split, samples) in [("training", train), ("held-out", test)] { try checkRows(samples.dataset, split) }
    }

    let fittedSpec: ModelSpec, dataName: String

    /// What the network indexes with the data's values, checked before any step uses them (read from
    /// files, or each time rows arrive from a coordinator): every label one of the classes the last
    /// layer scores, every token id in the vocabulary.
    func checkRows(_ data: Dataset, _ split: String) throws {
        if let t = fittedSpec.tokens, let arrays = data as? ArrayDataset,
            let i = arrays.values.firstIndex(where: { !($0 >= 0 && $0 < Float(t.vocabulary) && $0.rounded() == $0) })
        {
            throw ConfigError(
                message:
                    "\(dataName): \(split) sample \(i / t.steps), position \(i % t.steps) holds \(arrays.values[i]), not a token id in 0..<\(t.vocabulary) (uint8 x is scaled to [0, 1] as an image: give integers as int32 or int64)"
            )
        }
        guard !regression, (data as? ArrayDataset)?.hasTargets != false, let classes = try? fittedSpec.classes() else { return }
        if let (i, bad) = data.labels.enumerated().first(where: { !(0..<Int32(classes)).contains($0.element) }) {
            throw ConfigError(
                message:
                    "\(dataName): label \(bad) of \(split) sample \(i) is not in 0..<\(classes) (the classes model spec \(fittedSpec.name)'s last layer scores)"
            )
        }
    }

    /// Served rows, checked as they arrive (a row is counted among those fetched).
    func fetch(epoch: Int?) throws {
        try splits.fetch(epoch: epoch)
        try checkRows(splits.train.dataset, "fetched training")
        try checkRows(splits.test.dataset, "fetched held-out")
    }

    var sizeSummary: String { "\(splits.train.count) training / \(splits.test.count) test samples of \(splits.train.dataset.sampleShape)" }

    /// The split's samples `rows`, with their labels or targets.
    private func batch(_ samples: SplitSamples<Dataset>, _ rows: ArraySlice<Int>) -> Batch<Float> {
        let indices = samples.rows(rows)
        let (x, y) = samples.dataset.batch(indices, as: Float.self)
        return regression ? Batch(inputs: x, targets: samples.dataset.targets(indices, as: Float.self)) : Batch(inputs: x, labels: y)
    }

    func initializeFromData(reduce: StatisticsReducer) {
        predictor.initializeFromData(batch(splits.train, splits.steps.samples(epoch: 0, step: 0).local), reduce: reduce)
    }

    func accumulateGradients(epoch: Int, step: Int) -> BatchStats {
        let (local, global) = splits.steps.samples(epoch: epoch, step: step)
        return predictor.accumulateGradients(batch(splits.train, local), scale: 1 / Float(global))
    }

    /// A binary classifier's report has the AUC too (its held-out probabilities and labels kept, so a
    /// cluster's shards merge into the whole split's).
    func evaluate() -> EvaluationReport {
        var scores: [Float] = [], labels: [Int32] = []
        let binary = predictor.objective == .binary
        let stats = splits.evaluate(inBatchesOf: 256) { rows in
            let b = batch(splits.test, rows), s = predictor.evaluate(b)
            if binary { (scores, labels) = (scores + predictor.probabilities, labels + b.labels) }
            return s
        }
        if binary {
            return EvaluationReport(
                kind: .clickPrediction, stats: stats, auc: areaUnderROC(scores: scores, labels: labels), scores: scores, labels: labels)
        }
        return EvaluationReport(kind: regression ? .regression : .classification, stats: stats)
    }
}

/// What `tether predict` needs of a workload: the network's predictions for the held-out samples, in
/// order.
public protocol Predicting: Workload {
    /// The network's spec, fitted to the data (a shipped family's to the images' size and classes);
    /// nil for a family that is not a spec (wide-deep, autoencoder-tied).
    var spec: ModelSpec? { get }
    var objective: Objective { get }
    /// The classes' names (a language model's: its vocabulary's words), nil when they are numbers.
    var classNames: [String]? { get }
    /// Samples `predictions` goes over: the held-out split (all of --test-data when it is given).
    var predictionCount: Int { get }
    /// Calls body with `Predictor.predictions` (B, K) of consecutive batches of at most `batch`
    /// held-out samples.
    func predictions(inBatchesOf batch: Int, _ body: (Tensor<Float>) throws -> Void) rethrows
}

extension Predicting {
    public var spec: ModelSpec? { nil }
    public var classNames: [String]? { nil }
}

extension SpecTraining: Predicting {
    var spec: ModelSpec? { fittedSpec }
    var objective: Objective { predictor.objective }
    var predictionCount: Int { splits.test.count }
    func predictions(inBatchesOf size: Int, _ body: (Tensor<Float>) throws -> Void) rethrows {
        for positions in splits.heldOutInOrder(inBatchesOf: size) {
            try body(predictor.predictions(splits.test.dataset.batch(splits.test.rows(positions), as: Float.self).inputs))
        }
    }
}

extension Workloads {
    /// A checkpoint's network over every row of the arrays `data` (npz:FILE or npy:DIR: x, in order;
    /// y may be left out), `spec` being the network (`Checkpoint.Loaded.fittedSpec`).
    public static func prediction(_ config: TrainingConfig, spec: ModelSpec, arrays data: String) throws -> any Predicting {
        var rng = RNG(seed: config.seed, stream: 0x494E_4954)  // "INIT"
        let samples = try ArrayDataset(arrays: data, needsTargets: false)
        var c = config
        (c.data, c.testData) = (data, nil)
        return try SpecTraining<ArrayDataset>(c, fit: { _ in spec }, shard: .whole, source: nil, files: { (samples, samples) }, rng: &rng)
    }
}

extension Checkpoint.Loaded {
    /// The checkpoint's network as a spec: its run's, or a shipped family's fitted to the run's data
    /// (which is read for it); nil for a family that is not a spec (wide-deep, lm-tied, autoencoder-tied).
    public func fittedSpec() throws -> ModelSpec? {
        if let spec = config.spec { return spec }
        guard ModelFamily.images.contains(where: { $0.name == config.model }) else { return nil }
        return (try Workloads.make(config.withFilesResolved(), metadata: file.metadata) as? any Predicting)?.spec ?? nil
    }
}

/// The training and test images `config` names, read from files.
func imageFiles(_ config: TrainingConfig) -> () throws -> (ImageDataset, ImageDataset) {
    {
        (
            try DataSource.images(config.data, split: .train, limit: config.trainLimit),
            try DataSource.images(config.data, split: .test, limit: config.testLimit)
        )
    }
}

extension ModelFamily {
    /// The family of networks declared in a model spec (`--model FILE.yaml`, a job file's `model:`).
    static let spec = ModelFamily(
        name: "spec", summary: "a network declared in a model spec (--model FILE.yaml, or model: in a job file)",
        evaluation: .classification, unit: "samples", defaults: { _ in },
        validate: { c in
            guard let spec = c.spec else { throw ConfigError(message: "--model spec needs a spec: --model FILE.yaml") }
            _ = try spec.classes()
            let o = c.optimizer, takesSparse = o.kind == .adagrad || (o.kind == .sgd && o.momentum == 0 && o.weightDecay == 0)
            if let i = spec.layers.firstIndex(where: { $0.sparse == true }), !takesSparse {
                throw ConfigError(
                    message:
                        "model spec \(spec.name): layer \(i) (embedding) has row-sparse gradients (sparse: true): use --optimizer adagrad, or sgd without momentum and weight decay"
                )
            }
            if spec.wide?.ftrl == false, !takesSparse {
                throw ConfigError(
                    message:
                        "model spec \(spec.name): its wide tower (ftrl: false) takes the run's optimizer with row-sparse gradients: use --optimizer adagrad, or sgd without momentum and weight decay"
                )
            }
        },
        make: { c, shard, _, source, rng in
            guard let spec = c.spec else { throw ConfigError(message: "--model spec needs a spec: --model FILE.yaml") }
            if DataSource.isArrays(c.data) {
                return try SpecTraining<ArrayDataset>(
                    c, fit: { _ in spec }, shard: shard, source: source, files: { try DataSource.arrays(c) }, rng: &rng)
            }
            guard c.testData == nil else { throw DataError.unknownSource("--test-data goes with --data npz:FILE or npy:DIR") }
            if c.data.hasPrefix("csv:") {
                return try SpecTraining<TabularDataset>(
                    c, fit: { _ in spec }, shard: shard, source: source,
                    files: {
                        let (train, test) = try DataSource.tabular(
                            c.data, schema: DataSource.schema(c), seed: c.seed, testFraction: c.testFraction)
                        return (train.prefix(c.trainLimit), test.prefix(c.testLimit))
                    }, rng: &rng)
            }
            return try SpecTraining<ImageDataset>(c, fit: { _ in spec }, shard: shard, source: source, files: imageFiles(c), rng: &rng)
        })
}
