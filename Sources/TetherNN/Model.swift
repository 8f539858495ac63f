import TetherTensor

/// One local batch: inputs (B, F) and one integer label per row.
public struct Batch<T: Scalar> {
    public var inputs: Tensor<T>
    public var labels: [Int32]
    public var count: Int { labels.count }
    public init(inputs: Tensor<T>, labels: [Int32]) {
        precondition(inputs.shape.first == labels.count, "batch of \(inputs.shape) with \(labels.count) labels")
        (self.inputs, self.labels) = (inputs, labels)
    }
}

/// Sums over the samples of one or more batches: what a step or an evaluation reports, and what a
/// cluster all-reduces to get the global figure.
public struct BatchStats: Sendable, Equatable {
    public var lossSum: Double = 0
    public var correct = 0
    public var count = 0
    public init(lossSum: Double = 0, correct: Int = 0, count: Int = 0) {
        (self.lossSum, self.correct, self.count) = (lossSum, correct, count)
    }
    public static func + (a: BatchStats, b: BatchStats) -> BatchStats {
        BatchStats(lossSum: a.lossSum + b.lossSum, correct: a.correct + b.correct, count: a.count + b.count)
    }
    public var meanLoss: Double { count > 0 ? lossSum / Double(count) : .nan }
    public var accuracy: Double { count > 0 ? Double(correct) / Double(count) : .nan }
}

/// What every model family shares: a kind, its parameters and their checkpointed companions. Each
/// family adds its own forward/backward entry points for its own kind of batch.
public protocol Model<T>: AnyObject {
    associatedtype T: Scalar
    /// The CLI name ("mlp-wn"); a checkpoint of another kind is refused.
    var kind: String { get }
    var arena: ParameterArena<T> { get }
    var context: ModelContext<T> { get }
    var bufferOwners: [(prefix: String, owner: any BufferOwner)] { get }
    /// Tables whose gradients are row-sparse (not in the arena's gradient buffer).
    var sparseGradients: [SparseRows<T>] { get }
    /// Parameters to update with FTRL-Proximal rather than the run's optimizer.
    var ftrlParameters: Set<String> { get }
}

extension Model {
    public var bufferOwners: [(prefix: String, owner: any BufferOwner)] { [] }
    public var sparseGradients: [SparseRows<T>] { [] }
    public var ftrlParameters: Set<String> { [] }
}

/// A classifier: a Sequential network ending in K logits, trained with softmax cross-entropy, or (binary)
/// in one logit, trained with the logistic loss (binary cross-entropy) against labels 0 and 1.
public final class Classifier<T: Scalar>: Model {
    public let kind: String
    public let arena: ParameterArena<T>
    public let context: ModelContext<T>
    public let network: Sequential<T>
    public let binary: Bool
    let loss = SoftmaxCrossEntropy<T>()
    let logistic = LogisticLoss<T>()

    /// Builds the network over `layout`, allocates the arena and draws the initial parameters from `rng`.
    public init(kind: String, layout: ArenaLayout, network: Sequential<T>, binary: Bool = false, rng: inout RNG) {
        self.kind = kind
        self.network = network
        self.binary = binary
        arena = ParameterArena(layout: layout)
        arena.initialize(rng: &rng)
        context = ModelContext(arena: arena, rng: rng)
    }

    public func accumulateGradients(_ batch: Batch<T>, scale: T) -> BatchStats {
        context.training = true
        let logits = network.forward(batch.inputs, context)
        if binary {
            // logits (B, 1) -> (B) and back
            let lossSum = logistic.forward(logits: logits.reshaped([batch.count]), labels: batch.labels)
            let correct = logistic.correctCount()
            network.backward(logistic.backward(scale: scale).reshaped([batch.count, 1]), context, gradientsReady: context.gradientsReady)
            return BatchStats(lossSum: lossSum, correct: correct, count: batch.count)
        }
        let lossSum = loss.forward(logits: logits, labels: batch.labels)
        let correct = loss.correctCount()
        network.backward(loss.backward(scale: scale), context, gradientsReady: context.gradientsReady)
        return BatchStats(lossSum: lossSum, correct: correct, count: batch.count)
    }

    public func evaluate(_ batch: Batch<T>) -> BatchStats {
        context.training = false
        defer { context.training = true }
        if binary {
            let lossSum = logistic.forward(logits: network.forward(batch.inputs, context).reshaped([batch.count]), labels: batch.labels)
            return BatchStats(lossSum: lossSum, correct: logistic.correctCount(), count: batch.count)
        }
        let lossSum = loss.forward(logits: network.forward(batch.inputs, context), labels: batch.labels)
        return BatchStats(lossSum: lossSum, correct: loss.correctCount(), count: batch.count)
    }

    public func initializeFromData(_ batch: Batch<T>, reduce: StatisticsReducer) {
        context.training = true
        _ = network.initializeFromData(batch.inputs, context, reduce: reduce)
    }

    public var bufferOwners: [(prefix: String, owner: any BufferOwner)] { network.bufferOwners }
}
