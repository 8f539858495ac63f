import TetherTensor

/// One local batch: inputs (B, F) and per row an integer label (classification) or K target values
/// (regression, `targets` (B, K)).
public struct Batch<T: Scalar> {
    public var inputs: Tensor<T>
    public var labels: [Int32]
    public var targets: Tensor<T>?
    public var count: Int { inputs.shape[0] }
    public init(inputs: Tensor<T>, labels: [Int32]) {
        precondition(inputs.shape.first == labels.count, "batch of \(inputs.shape) with \(labels.count) labels")
        (self.inputs, self.labels) = (inputs, labels)
    }
    public init(inputs: Tensor<T>, targets: Tensor<T>) {
        precondition(inputs.shape.first == targets.shape.first, "batch of \(inputs.shape) with targets \(targets.shape)")
        (self.inputs, self.labels, self.targets) = (inputs, [], targets)
    }
}

/// Sums over the samples of one or more batches: what a step or an evaluation reports, and what a
/// cluster all-reduces to get the global figure.
public struct BatchStats: Sendable, Equatable {
    public var lossSum: Double = 0
    public var correct = 0
    public var count = 0
    /// Regression: the summed per-sample mean squared and mean absolute errors.
    public var squaredError = 0.0, absoluteError = 0.0
    public init(lossSum: Double = 0, correct: Int = 0, count: Int = 0, squaredError: Double = 0, absoluteError: Double = 0) {
        (self.lossSum, self.correct, self.count) = (lossSum, correct, count)
        (self.squaredError, self.absoluteError) = (squaredError, absoluteError)
    }
    public static func + (a: BatchStats, b: BatchStats) -> BatchStats {
        BatchStats(
            lossSum: a.lossSum + b.lossSum, correct: a.correct + b.correct, count: a.count + b.count,
            squaredError: a.squaredError + b.squaredError, absoluteError: a.absoluteError + b.absoluteError)
    }
    public var meanLoss: Double { count > 0 ? lossSum / Double(count) : .nan }
    public var accuracy: Double { count > 0 ? Double(correct) / Double(count) : .nan }
    public var rootMeanSquaredError: Double { count > 0 ? (squaredError / Double(count)).squareRoot() : .nan }
    public var meanAbsoluteError: Double { count > 0 ? absoluteError / Double(count) : .nan }
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

/// What a network's outputs are trained against: K class scores (softmax cross-entropy), one logit
/// (logistic loss), or K values (mean squared or absolute error).
public enum Objective: Sendable { case classes, binary, squaredError, absoluteError }

/// A Sequential network trained against what each sample should give: K class scores with softmax
/// cross-entropy, one logit with the logistic loss (binary cross-entropy) against labels 0 and 1, or K
/// values against K targets with the mean squared (mse) or absolute (l1) error.
public final class Predictor<T: Scalar>: Model {
    public let kind: String
    public let arena: ParameterArena<T>
    public let context: ModelContext<T>
    public let network: Sequential<T>
    public let objective: Objective
    /// Wide & Deep's wide tower, whose one logit is added to the network's one output.
    public let wide: WideLinear<T>?
    public let ftrlParameters: Set<String>
    let loss = SoftmaxCrossEntropy<T>()
    let logistic = LogisticLoss<T>()
    let regression: RegressionLoss<T>

    /// Builds the network over `layout`, allocates the arena and draws the initial parameters from `rng`.
    /// `wide` (built over `layout` after the network) is updated by FTRL-Proximal when `ftrl`.
    public init(
        kind: String, layout: ArenaLayout, network: Sequential<T>, wide: WideLinear<T>? = nil, ftrl: Bool = false,
        objective: Objective = .classes, rng: inout RNG
    ) {
        self.kind = kind
        self.network = network
        self.objective = objective
        self.wide = wide
        ftrlParameters = wide != nil && ftrl ? ["wide.weight"] : []
        regression = RegressionLoss(squared: objective == .squaredError)
        arena = ParameterArena(layout: layout)
        arena.initialize(rng: &rng)
        context = ModelContext(arena: arena, rng: rng)
    }

    /// The network's outputs, the wide tower's logit added.
    private func forward(_ x: Tensor<T>) -> Tensor<T> {
        var y = network.forward(x, context)
        if let wide {
            let z = wide.forward(x, context)
            y.withMutablePointer { yp in z.withPointer { T.axpy(yp, $0, alpha: 1, count: z.count) } }
        }
        return y
    }

    /// Backward of d(outputs): the wide tower first (its entries are the arena's last, so they are final
    /// before the network reports any), then the network.
    private func backward(_ dy: Tensor<T>) {
        wide?.backward(dy, context)
        network.backward(dy, context, gradientsReady: context.gradientsReady)
    }

    /// The batch's loss and figures from the outputs; with `scale`, also backward of scale x the summed loss.
    private func loss(_ outputs: Tensor<T>, _ batch: Batch<T>, backwardScale scale: T?) -> BatchStats {
        let b = batch.count
        switch objective {
        case .classes:
            let lossSum = loss.forward(logits: outputs, labels: batch.labels), correct = loss.correctCount()
            if let scale { backward(loss.backward(scale: scale)) }
            return BatchStats(lossSum: lossSum, correct: correct, count: b)
        case .binary:
            // logits (B, 1) -> (B) and back
            let lossSum = logistic.forward(logits: outputs.reshaped([b]), labels: batch.labels), correct = logistic.correctCount()
            if let scale { backward(logistic.backward(scale: scale).reshaped([b, 1])) }
            return BatchStats(lossSum: lossSum, correct: correct, count: b)
        case .squaredError, .absoluteError:
            guard let targets = batch.targets else { preconditionFailure("a regression batch has targets") }
            let lossSum = regression.forward(outputs: outputs, targets: targets)
            if let scale { backward(regression.backward(scale: scale)) }
            return BatchStats(lossSum: lossSum, count: b, squaredError: regression.squaredError, absoluteError: regression.absoluteError)
        }
    }

    public func accumulateGradients(_ batch: Batch<T>, scale: T) -> BatchStats {
        context.training = true
        return loss(forward(batch.inputs), batch, backwardScale: scale)
    }

    public func evaluate(_ batch: Batch<T>) -> BatchStats {
        context.training = false
        defer { context.training = true }
        return loss(forward(batch.inputs), batch, backwardScale: nil)
    }

    public func initializeFromData(_ batch: Batch<T>, reduce: StatisticsReducer) {
        context.training = true
        _ = network.initializeFromData(batch.inputs, context, reduce: reduce)
    }

    public var bufferOwners: [(prefix: String, owner: any BufferOwner)] { network.bufferOwners }
    public var sparseGradients: [SparseRows<T>] { network.sparseGradients + [wide?.table.sparseGradient].compactMap { $0 } }
    /// What the network predicts for inputs (B, ...), in evaluation mode (dropout off, running
    /// statistics): (B, K) class probabilities (softmax of the logits), (B, 1) a binary classifier's
    /// probability of 1 (sigmoid), or the regression's values; what `tether export --onnx` writes as
    /// `probabilities` or `prediction`.
    public func predictions(_ x: Tensor<T>) -> Tensor<T> {
        context.training = false
        defer { context.training = true }
        let y = forward(x), b = y.shape[0], k = y.count / max(1, b)
        switch objective {
        case .classes:
            // the loss kernel's softmax; its losses (against label 0) are not used
            let labels = [Int32](repeating: 0, count: b)
            var losses = T.zeros(count: b)
            return Tensor.uninitialized(y.shape) { p in
                y.withPointer { z in
                    T.softmaxCrossEntropyForward(probs: p, losses: &losses, logits: z, labels: labels, batch: b, classes: k)
                }
            }
        case .binary: return Tensor.uninitialized(y.shape) { p in y.withPointer { T.sigmoidForward(p, $0, count: y.count) } }
        case .squaredError, .absoluteError: return y
        }
    }

    /// The last evaluation's probability of label 1 per row (binary objective).
    public var probabilities: [Float] { logistic.probabilities.map { Float(Double($0)) } }
}
