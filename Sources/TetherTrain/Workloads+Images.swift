import Foundation
import TetherData
import TetherNN
import TetherTensor

/// The training and test images a config names: read from its files, or (cluster workers of a coordinator
/// that serves data) from `source`.
private func imageSplits(_ config: TrainingConfig, source: SampleSource?) throws -> (train: ImageSamples, test: ImageSamples) {
    if let source { return (try ImageSamples(source: source, split: .train), try ImageSamples(source: source, split: .test)) }
    return (ImageSamples(files: try DataSource.images(config.data, split: .train, limit: config.trainLimit), split: .train),
            ImageSamples(files: try DataSource.images(config.data, split: .test, limit: config.testLimit), split: .test))
}

typealias ImageSamples = SplitSamples<ImageDataset>

extension SplitSamples<ImageDataset> {
    /// The split's samples `indices` as a batch of (B, H*W) values in [0, 1].
    func batch(_ indices: ArraySlice<Int>) -> (inputs: Tensor<Float>, labels: [Int32]) { dataset.batch(rows(indices), as: Float.self) }
}

/// Fashion-MNIST (or any IDX images) classified by mlp, mlp-wn or cnn-wn.
final class ImageClassification: Workload {
    /// Test samples per evaluation batch: cnn-wn's activations for 256 images are ~50 MB (for 1,000
    /// they were 190 MB, most of a worker's peak memory).
    static let evaluationBatch = 256
    let classifier: Classifier<Float>
    let train: ImageSamples, test: ImageSamples
    let steps: ShuffledSteps
    var model: any Model<Float> { classifier }

    let shard: Shard

    init(_ config: TrainingConfig, shard: Shard, source: SampleSource?, rng: inout RNG) throws {
        (train, test) = try imageSplits(config, source: source)
        self.shard = shard
        steps = ShuffledSteps(seed: config.seed, count: train.count, batch: config.batch, shard: shard)
        classifier = ImageModels.make(config.model, height: train.dataset.height, width: train.dataset.width, classes: train.dataset.classes, rng: &rng, as: Float.self)!
    }

    var stepsPerEpoch: Int { steps.perEpoch }
    func fetch(epoch: Int?) throws { try fetchShuffled(train: train, test: test, steps: steps, shard: shard, epoch: epoch) }
    var servedSplits: (train: any ServableDataset, test: any ServableDataset) { (train.dataset, test.dataset) }
    var sizeSummary: String { "\(train.count) training / \(test.count) test samples" }

    func initializeFromData(reduce: StatisticsReducer) {
        let (x, y) = train.batch(steps.samples(epoch: 0, step: 0).local)
        classifier.initializeFromData(Batch(inputs: x, labels: y), reduce: reduce)
    }

    func accumulateGradients(epoch: Int, step: Int) -> BatchStats {
        let (local, global) = steps.samples(epoch: epoch, step: step)
        let (x, y) = train.batch(local)
        return classifier.accumulateGradients(Batch(inputs: x, labels: y), scale: 1 / Float(global))
    }

    func evaluate() -> EvaluationReport {
        let stats = inBatches(test.count, of: Self.evaluationBatch, shard: shard) { r in
            let (x, y) = test.batch(r)
            return classifier.evaluate(Batch(inputs: x, labels: y))
        }
        return EvaluationReport(kind: .classification, stats: stats)
    }
}

/// Fashion-MNIST reconstructed by the tied autoencoder.
final class ImageReconstruction: Workload {
    static let evaluationBatch = ImageClassification.evaluationBatch
    let autoencoder: TiedAutoencoder<Float>
    let train: ImageSamples, test: ImageSamples
    let steps: ShuffledSteps
    var model: any Model<Float> { autoencoder }

    let shard: Shard

    init(_ config: TrainingConfig, shard: Shard, source: SampleSource?, rng: inout RNG) throws {
        (train, test) = try imageSplits(config, source: source)
        self.shard = shard
        steps = ShuffledSteps(seed: config.seed, count: train.count, batch: config.batch, shard: shard)
        autoencoder = TiedAutoencoder(features: train.dataset.features, rng: &rng)
    }

    var stepsPerEpoch: Int { steps.perEpoch }
    func fetch(epoch: Int?) throws { try fetchShuffled(train: train, test: test, steps: steps, shard: shard, epoch: epoch) }
    var servedSplits: (train: any ServableDataset, test: any ServableDataset) { (train.dataset, test.dataset) }
    var sizeSummary: String { "\(train.count) training / \(test.count) test images" }
    func initializeFromData(reduce: StatisticsReducer) {}

    func accumulateGradients(epoch: Int, step: Int) -> BatchStats {
        let (local, global) = steps.samples(epoch: epoch, step: step)
        return autoencoder.accumulateGradients(train.batch(local).inputs, scale: 1 / Float(global))
    }

    func evaluate() -> EvaluationReport {
        EvaluationReport(kind: .reconstruction, stats: inBatches(test.count, of: Self.evaluationBatch, shard: shard) { r in
            autoencoder.evaluate(test.batch(r).inputs)
        })
    }
}

