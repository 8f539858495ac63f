import Foundation
import TetherData
import TetherNN
import TetherTensor

typealias ImageSamples = SplitSamples<ImageDataset>

extension SplitSamples<ImageDataset> {
    /// The split's samples `indices` as a batch of (B, H*W) values in [0, 1].
    func batch(_ indices: ArraySlice<Int>) -> (inputs: Tensor<Float>, labels: [Int32]) { dataset.batch(rows(indices), as: Float.self) }
}

extension ShuffledSplits<ImageDataset> {
    /// Test samples per evaluation batch: cnn-wn's activations for 256 images are ~50 MB (for 1,000
    /// they were 190 MB, most of a worker's peak memory).
    static var evaluationBatch: Int { 256 }

    /// The training and test images a config names: read from its files, or (cluster workers of a
    /// coordinator that serves data) from `source`.
    static func images(_ config: TrainingConfig, shard: Shard, source: SampleSource?) throws -> ShuffledSplits<ImageDataset> {
        if let source {
            return ShuffledSplits(
                train: try ImageSamples(source: source, split: .train), test: try ImageSamples(source: source, split: .test),
                config: config, shard: shard)
        }
        return ShuffledSplits(
            train: ImageSamples(files: try DataSource.images(config.data, split: .train, limit: config.trainLimit), split: .train),
            test: ImageSamples(files: try DataSource.images(config.data, split: .test, limit: config.testLimit), split: .test),
            config: config, shard: shard)
    }
}

/// Fashion-MNIST reconstructed by the tied autoencoder.
final class ImageReconstruction: ShuffledWorkload {
    let autoencoder: TiedAutoencoder<Float>
    let splits: ShuffledSplits<ImageDataset>
    var model: any Model<Float> { autoencoder }

    init(_ config: TrainingConfig, shard: Shard, source: SampleSource?, rng: inout RNG) throws {
        splits = try .images(config, shard: shard, source: source)
        autoencoder = TiedAutoencoder(features: splits.train.dataset.features, rng: &rng)
    }

    var sizeSummary: String { "\(splits.train.count) training / \(splits.test.count) test images" }
    func initializeFromData(reduce: StatisticsReducer) {}

    func accumulateGradients(epoch: Int, step: Int) -> BatchStats {
        let (local, global) = splits.steps.samples(epoch: epoch, step: step)
        return autoencoder.accumulateGradients(splits.train.batch(local).inputs, scale: 1 / Float(global))
    }

    func evaluate() -> EvaluationReport {
        EvaluationReport(
            kind: .reconstruction,
            stats: splits.evaluate(inBatchesOf: ShuffledSplits.evaluationBatch) { r in
                autoencoder.evaluate(splits.test.batch(r).inputs)
            })
    }
}

extension ImageReconstruction: Predicting {
    var objective: Objective { .squaredError }
    var predictionCount: Int { splits.test.count }
    /// Each held-out image's reconstruction, (B, 784) in [0, 1].
    func predictions(inBatchesOf size: Int, _ body: (Tensor<Float>) throws -> Void) rethrows {
        for positions in splits.heldOutInOrder(inBatchesOf: size) {
            try body(autoencoder.reconstructions(splits.test.batch(positions).inputs))
        }
    }
}
