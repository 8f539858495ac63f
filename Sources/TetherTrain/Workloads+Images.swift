import Foundation
import TetherData
import TetherNN
import TetherTensor

/// The training and test images a config names.
private func imageSplits(_ config: TrainingConfig) throws -> (train: ImageDataset, test: ImageDataset) {
    (try DataSource.images(config.data, split: .train, limit: config.trainLimit),
     try DataSource.images(config.data, split: .test, limit: config.testLimit))
}

/// Fashion-MNIST (or any IDX images) classified by mlp, mlp-wn or cnn-wn.
final class ImageClassification: Workload {
    let classifier: Classifier<Float>
    let train: ImageDataset, test: ImageDataset
    let steps: ShuffledSteps
    var model: any Model<Float> { classifier }

    let shard: Shard

    init(_ config: TrainingConfig, shard: Shard, rng: inout RNG) throws {
        (train, test) = try imageSplits(config)
        self.shard = shard
        steps = ShuffledSteps(seed: config.seed, count: train.count, batch: config.batch, shard: shard)
        classifier = ImageModels.make(config.model, height: train.height, width: train.width, classes: train.classes, rng: &rng, as: Float.self)!
    }

    var stepsPerEpoch: Int { steps.perEpoch }
    var sizeSummary: String { "\(train.count) training / \(test.count) test samples" }

    func initializeFromData(reduce: StatisticsReducer) {
        let (x, y) = train.batch(steps.samples(epoch: 0, step: 0).local, as: Float.self)
        classifier.initializeFromData(Batch(inputs: x, labels: y), reduce: reduce)
    }

    func accumulateGradients(epoch: Int, step: Int) -> BatchStats {
        let (local, global) = steps.samples(epoch: epoch, step: step)
        let (x, y) = train.batch(local, as: Float.self)
        return classifier.accumulateGradients(Batch(inputs: x, labels: y), scale: 1 / Float(global))
    }

    func evaluate() -> EvaluationReport {
        let stats = inBatches(test.count, of: 1000, shard: shard) { r in
            let (x, y) = test.batch(r, as: Float.self)
            return classifier.evaluate(Batch(inputs: x, labels: y))
        }
        return EvaluationReport(kind: .classification, stats: stats)
    }
}

/// Fashion-MNIST reconstructed by the tied autoencoder.
final class ImageReconstruction: Workload {
    let autoencoder: TiedAutoencoder<Float>
    let train: ImageDataset, test: ImageDataset
    let steps: ShuffledSteps
    var model: any Model<Float> { autoencoder }

    let shard: Shard

    init(_ config: TrainingConfig, shard: Shard, rng: inout RNG) throws {
        (train, test) = try imageSplits(config)
        self.shard = shard
        steps = ShuffledSteps(seed: config.seed, count: train.count, batch: config.batch, shard: shard)
        autoencoder = TiedAutoencoder(features: train.features, rng: &rng)
    }

    var stepsPerEpoch: Int { steps.perEpoch }
    var sizeSummary: String { "\(train.count) training / \(test.count) test images" }
    func initializeFromData(reduce: StatisticsReducer) {}

    func accumulateGradients(epoch: Int, step: Int) -> BatchStats {
        let (local, global) = steps.samples(epoch: epoch, step: step)
        return autoencoder.accumulateGradients(train.batch(local, as: Float.self).inputs, scale: 1 / Float(global))
    }

    func evaluate() -> EvaluationReport {
        EvaluationReport(kind: .reconstruction, stats: inBatches(test.count, of: 1000, shard: shard) { r in
            autoencoder.evaluate(test.batch(r, as: Float.self).inputs)
        })
    }
}
