import Foundation
import TetherData
import TetherNN
import TetherTensor

/// The training and test images a config names: read from its files, or (cluster workers of a coordinator
/// that serves data) from `source`.
private func imageSplits(_ config: TrainingConfig, source: ImageSource?) throws -> (train: ImageSamples, test: ImageSamples) {
    if let source { return (try ImageSamples(source: source, split: .train), try ImageSamples(source: source, split: .test)) }
    return (ImageSamples(files: try DataSource.images(config.data, split: .train, limit: config.trainLimit), split: .train),
            ImageSamples(files: try DataSource.images(config.data, split: .test, limit: config.testLimit), split: .test))
}

/// Fashion-MNIST (or any IDX images) classified by mlp, mlp-wn or cnn-wn.
final class ImageClassification: Workload {
    let classifier: Classifier<Float>
    let train: ImageSamples, test: ImageSamples
    let steps: ShuffledSteps
    var model: any Model<Float> { classifier }

    let shard: Shard

    init(_ config: TrainingConfig, shard: Shard, source: ImageSource?, rng: inout RNG) throws {
        (train, test) = try imageSplits(config, source: source)
        self.shard = shard
        steps = ShuffledSteps(seed: config.seed, count: train.count, batch: config.batch, shard: shard)
        classifier = ImageModels.make(config.model, height: train.shape.height, width: train.shape.width, classes: train.shape.classes, rng: &rng, as: Float.self)!
    }

    var stepsPerEpoch: Int { steps.perEpoch }
    func fetch(epoch: Int?) throws { try fetchImages(train: train, test: test, steps: steps, shard: shard, epoch: epoch) }
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
        let stats = inBatches(test.count, of: 1000, shard: shard) { r in
            let (x, y) = test.batch(r)
            return classifier.evaluate(Batch(inputs: x, labels: y))
        }
        return EvaluationReport(kind: .classification, stats: stats)
    }
}

/// Fashion-MNIST reconstructed by the tied autoencoder.
final class ImageReconstruction: Workload {
    let autoencoder: TiedAutoencoder<Float>
    let train: ImageSamples, test: ImageSamples
    let steps: ShuffledSteps
    var model: any Model<Float> { autoencoder }

    let shard: Shard

    init(_ config: TrainingConfig, shard: Shard, source: ImageSource?, rng: inout RNG) throws {
        (train, test) = try imageSplits(config, source: source)
        self.shard = shard
        steps = ShuffledSteps(seed: config.seed, count: train.count, batch: config.batch, shard: shard)
        autoencoder = TiedAutoencoder(features: train.shape.height * train.shape.width, rng: &rng)
    }

    var stepsPerEpoch: Int { steps.perEpoch }
    func fetch(epoch: Int?) throws { try fetchImages(train: train, test: test, steps: steps, shard: shard, epoch: epoch) }
    var sizeSummary: String { "\(train.count) training / \(test.count) test images" }
    func initializeFromData(reduce: StatisticsReducer) {}

    func accumulateGradients(epoch: Int, step: Int) -> BatchStats {
        let (local, global) = steps.samples(epoch: epoch, step: step)
        return autoencoder.accumulateGradients(train.batch(local).inputs, scale: 1 / Float(global))
    }

    func evaluate() -> EvaluationReport {
        EvaluationReport(kind: .reconstruction, stats: inBatches(test.count, of: 1000, shard: shard) { r in
            autoencoder.evaluate(test.batch(r).inputs)
        })
    }
}

/// Served images: the epoch's samples of this shard in step order, or its share of the test set.
private func fetchImages(train: ImageSamples, test: ImageSamples, steps: ShuffledSteps, shard: Shard, epoch: Int?) throws {
    if let epoch { try train.fetch(epoch) { steps.localSamples(epoch: epoch) } }
    else { try test.fetch(-1) { shard.dealt(0..<test.count) } }
}
