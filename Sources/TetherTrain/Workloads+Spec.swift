import Foundation
import TetherData
import TetherNN
import TetherTensor

extension DataSource {
    /// The training and held-out samples of `npz:FILE` (arrays x and y): its held-out split from
    /// `testData` (another `npz:`), or else every tenth sample.
    static func arrays(_ config: TrainingConfig) throws -> (train: ArrayDataset, test: ArrayDataset) {
        let all = try ArrayDataset(npz: String(config.data.dropFirst(4)))
        if let test = config.testData {
            guard test.hasPrefix("npz:") else { throw DataError.unknownSource("--test-data \(test): give npz:FILE") }
            let held = try ArrayDataset(npz: String(test.dropFirst(4)))
            guard held.sampleShape == all.sampleShape else {
                throw DataError.mismatch(
                    "--test-data \(test) holds samples of \(held.sampleShape), --data \(config.data) of \(all.sampleShape)")
            }
            return (all.prefix(config.trainLimit), held.prefix(config.testLimit))
        }
        guard all.count >= 2 else { throw DataError.invalid("\(config.data): \(all.count) sample; a held-out split needs at least 2") }
        let heldOut = Set(stride(from: 9, to: all.count, by: 10))
        let pick = { (rows: [Int]) in
            ArrayDataset(
                values: rows.flatMap { all.values[$0 * all.features..<($0 + 1) * all.features] }, labels: rows.map { all.labels[$0] },
                sampleShape: all.sampleShape, classes: all.classes)
        }
        let train = pick((0..<all.count).filter { !heldOut.contains($0) }),
            test = pick(heldOut.isEmpty ? [all.count - 1] : heldOut.sorted())
        return (train.prefix(config.trainLimit), test.prefix(config.testLimit))
    }
}

/// A network of the run's model spec classifying samples of any shape (images or feature vectors),
/// from files or served: its input must hold the data's samples, and every label must be one of the
/// classes its last layer scores.
final class SpecClassification<Dataset: LabelledSamples>: ShuffledWorkload {
    let classifier: Classifier<Float>
    let splits: ShuffledSplits<Dataset>
    var model: any Model<Float> { classifier }

    /// The samples come from `source` (served) or from `files` (read here).
    init(
        _ config: TrainingConfig, spec: ModelSpec, shard: Shard, source: SampleSource?, files: () throws -> (Dataset, Dataset),
        rng: inout RNG
    ) throws {
        let train: SplitSamples<Dataset>, test: SplitSamples<Dataset>
        if let source {
            (train, test) = (try SplitSamples(source: source, split: .train), try SplitSamples(source: source, split: .test))
        } else {
            let (a, b) = try files()
            (train, test) = (SplitSamples(files: a, split: .train), SplitSamples(files: b, split: .test))
        }
        splits = ShuffledSplits(train: train, test: test, config: config, shard: shard)
        let input = try spec.inputShape(), sample = train.dataset.sampleShape
        guard input.count == sample.reduce(1, *), spec.input == sample || spec.input.count == 1 else {
            throw ConfigError(message: "model spec \(spec.name): its input is \(input), the data's samples are \(sample) (\(config.data))")
        }
        let classes = try spec.classes()
        for (split, samples) in [("training", train), ("held-out", test)] where samples.dataset.count > 0 {
            if let (i, bad) = samples.dataset.labels.enumerated().first(where: { !(0..<Int32(classes)).contains($0.element) }) {
                throw ConfigError(
                    message:
                        "\(config.data): label \(bad) of \(split) sample \(i) is not in 0..<\(classes) (the classes model spec \(spec.name)'s last layer scores)"
                )
            }
        }
        var layout = ArenaLayout()
        let network = try spec.network(&layout, as: Float.self)
        classifier = Classifier(kind: config.model, layout: layout, network: network, binary: spec.loss == .binaryCrossEntropy, rng: &rng)
    }

    var sizeSummary: String { "\(splits.train.count) training / \(splits.test.count) test samples of \(splits.train.dataset.sampleShape)" }

    func initializeFromData(reduce: StatisticsReducer) {
        let (x, y) = splits.train.dataset.batch(splits.train.rows(splits.steps.samples(epoch: 0, step: 0).local), as: Float.self)
        classifier.initializeFromData(Batch(inputs: x, labels: y), reduce: reduce)
    }

    func accumulateGradients(epoch: Int, step: Int) -> BatchStats {
        let (local, global) = splits.steps.samples(epoch: epoch, step: step)
        let (x, y) = splits.train.dataset.batch(splits.train.rows(local), as: Float.self)
        return classifier.accumulateGradients(Batch(inputs: x, labels: y), scale: 1 / Float(global))
    }

    func evaluate() -> EvaluationReport {
        let stats = splits.evaluate(inBatchesOf: 256) { r in
            let (x, y) = splits.test.dataset.batch(splits.test.rows(r), as: Float.self)
            return classifier.evaluate(Batch(inputs: x, labels: y))
        }
        return EvaluationReport(kind: .classification, stats: stats)
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
        },
        make: { c, shard, _, source, rng in
            guard let spec = c.spec else { throw ConfigError(message: "--model spec needs a spec: --model FILE.yaml") }
            if c.data.hasPrefix("npz:") {
                return try SpecClassification<ArrayDataset>(
                    c, spec: spec, shard: shard, source: source, files: { try DataSource.arrays(c) }, rng: &rng)
            }
            guard c.testData == nil else { throw DataError.unknownSource("--test-data goes with --data npz:FILE") }
            return try SpecClassification<ImageDataset>(
                c, spec: spec, shard: shard, source: source,
                files: {
                    (
                        try DataSource.images(c.data, split: .train, limit: c.trainLimit),
                        try DataSource.images(c.data, split: .test, limit: c.testLimit)
                    )
                }, rng: &rng)
        })
}
