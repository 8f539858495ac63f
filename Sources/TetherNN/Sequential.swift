import TetherTensor

/// Layers applied in order; backward in reverse. Parameter names follow PyTorch's nn.Sequential
/// inside a module attribute: `layers.<index>.<name>`, where the index counts every layer.
public final class Sequential<T: Scalar> {
    public let layers: [any Layer<T>]
    /// Layers up to and including this one need not return an input gradient (nothing before them learns).
    private let firstWithParameters: Int

    public init(_ layers: [any Layer<T>]) {
        self.layers = layers
        firstWithParameters = layers.firstIndex { $0.hasParameters } ?? layers.count
    }

    public func forward(_ x: Tensor<T>, _ ctx: ModelContext<T>) -> Tensor<T> {
        layers.reduce(x) { $1.forward($0, ctx) }
    }

    /// Backward through every layer; the input gradient of the first layer is computed only when asked for.
    @discardableResult
    public func backward(_ dy: Tensor<T>, _ ctx: ModelContext<T>, needsInputGradient: Bool = false) -> Tensor<T>? {
        var g: Tensor<T>? = dy
        for (i, layer) in layers.enumerated().reversed() {
            guard let current = g else { break }
            g = layer.backward(current, ctx, needsInputGradient: i > firstWithParameters || needsInputGradient)
        }
        return g
    }

    /// Forward that lets every data-dependent layer initialize itself from the activations reaching it.
    public func initializeFromData(_ x: Tensor<T>, _ ctx: ModelContext<T>, reduce: StatisticsReducer) -> Tensor<T> {
        layers.reduce(x) { x, layer in
            if let l = layer as? any DataDependentInit<T> { return l.initializeFromData(x, ctx, reduce: reduce) }
            return layer.forward(x, ctx)
        }
    }

    /// Non-trainable buffers of every layer, as "layers.<i>.<name>".
    public var bufferOwners: [(prefix: String, owner: any BufferOwner)] {
        layers.enumerated().compactMap { i, l in (l as? any BufferOwner).map { ("layers.\(i).", $0) } }
    }
}

/// Mean softmax cross-entropy over (B, K) logits and integer labels.
public final class SoftmaxCrossEntropy<T: Scalar> {
    private var probs = Tensor<T>.zeros([0])
    private var labels: [Int32] = []
    public private(set) var losses: [T] = []

    public init() {}

    /// Per-sample losses of the batch (also kept in `losses`); returns their sum in Double.
    @discardableResult
    public func forward(logits: Tensor<T>, labels: [Int32]) -> Double {
        let (b, k) = (logits.shape[0], logits.shape[1])
        precondition(labels.count == b && labels.allSatisfy { $0 >= 0 && Int($0) < k }, "labels must be in 0..<\(k), one per row")
        self.labels = labels
        losses = T.zeros(count: b)
        probs = Tensor.uninitialized([b, k]) { p in
            logits.withPointer { z in labels.withUnsafeBufferPointer { l in losses.withUnsafeMutableBufferPointer {
                T.softmaxCrossEntropyForward(probs: p, losses: $0.baseAddress!, logits: z, labels: l.baseAddress!, batch: b, classes: k)
            } } }
        }
        return losses.withUnsafeBufferPointer { T.sum($0.baseAddress!, count: b) }
    }

    /// d(scale * sum of losses)/dlogits.
    public func backward(scale: T) -> Tensor<T> {
        let (b, k) = (probs.shape[0], probs.shape[1])
        return Tensor.uninitialized([b, k]) { d in
            probs.withPointer { p in labels.withUnsafeBufferPointer {
                T.softmaxCrossEntropyBackward(d, probs: p, labels: $0.baseAddress!, scale: scale, batch: b, classes: k)
            } }
        }
    }

    /// How many rows of the last forward's logits put the largest probability on their label.
    public func correctCount() -> Int {
        let (b, k) = (probs.shape[0], probs.shape[1])
        var predicted = [Int32](repeating: 0, count: b)
        probs.withPointer { p in predicted.withUnsafeMutableBufferPointer { T.argmaxRows($0.baseAddress!, p, rows: b, columns: k) } }
        return zip(predicted, labels).filter { $0 == $1 }.count
    }
}
