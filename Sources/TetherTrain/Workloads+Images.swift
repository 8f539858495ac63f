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

    init(_ config: TrainingConfig, rng: inout RNG) throws {
        (train, test) = try imageSplits(config)
        steps = ShuffledSteps(seed: config.seed, count: train.count, batch: config.batch)
        classifier = ImageModels.make(config.model, height: train.height, width: train.width, classes: train.classes, rng: &rng, as: Float.self)!
    }

    var stepsPerEpoch: Int { steps.perEpoch }
    var sizeSummary: String { "\(train.count) training / \(test.count) test samples" }

    func initializeFromData() {
        let (x, y) = train.batch(steps.samples(epoch: 0, step: 0), as: Float.self)
        classifier.initializeFromData(Batch(inputs: x, labels: y), reduce: { _ in })
    }

    func accumulateGradients(epoch: Int, step: Int) -> BatchStats {
        let (x, y) = train.batch(steps.samples(epoch: epoch, step: step), as: Float.self)
        return classifier.accumulateGradients(Batch(inputs: x, labels: y), scale: 1 / Float(y.count))
    }

    func evaluate() -> EvaluationReport {
        let stats = inBatches(test.count, of: 1000) { r in
            let (x, y) = test.batch(Array(r)[...], as: Float.self)
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

    init(_ config: TrainingConfig, rng: inout RNG) throws {
        (train, test) = try imageSplits(config)
        steps = ShuffledSteps(seed: config.seed, count: train.count, batch: config.batch)
        autoencoder = TiedAutoencoder(features: train.features, rng: &rng)
    }

    var stepsPerEpoch: Int { steps.perEpoch }
    var sizeSummary: String { "\(train.count) training / \(test.count) test images" }
    func initializeFromData() {}

    func accumulateGradients(epoch: Int, step: Int) -> BatchStats {
        let (x, _) = train.batch(steps.samples(epoch: epoch, step: step), as: Float.self)
        return autoencoder.accumulateGradients(x, scale: 1 / Float(x.shape[0]))
    }

    func evaluate() -> EvaluationReport {
        EvaluationReport(kind: .reconstruction, stats: inBatches(test.count, of: 1000) { r in
            autoencoder.evaluate(test.batch(Array(r)[...], as: Float.self).inputs)
        })
    }
}
