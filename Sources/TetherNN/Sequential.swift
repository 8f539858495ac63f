import TetherTensor

/// Layers applied in order; backward in reverse. Parameter names follow PyTorch's nn.Sequential
/// inside a module attribute: `layers.<index>.<name>`, where the index counts every layer.
public final class Sequential<T: Scalar> {
    public let layers: [any Layer<T>]
    /// Layers up to and including this one need not return an input gradient (nothing before them learns).
    private let firstWithParameters: Int
    /// readyFrom[i], for a layer that learns: once backward has passed through layers i..., no gradient
    /// at arena offsets >= readyFrom[i] changes any more (the end of the highest entry that layers 0..<i
    /// still write, shared weights included). nil for layers without parameters (nothing to report).
    private let readyFrom: [Int?]
    /// Each layer's name prefix for its buffers ("layers.3."): its position unless given (a model spec's
    /// layers keep their spec index where the network adds or drops a layer of its own).
    private let prefixes: [String]

    public init(_ layers: [any Layer<T>], prefixes: [String]? = nil) {
        precondition(prefixes == nil || prefixes!.count == layers.count, "one prefix per layer")
        self.layers = layers
        self.prefixes = prefixes ?? layers.indices.map { "layers.\($0)." }
        firstWithParameters = layers.firstIndex { $0.hasParameters } ?? layers.count
        let ends = layers.map { $0.parameterSlots.map { $0.offset + $0.count }.max() ?? 0 }
        readyFrom = layers.indices.map { layers[$0].hasParameters ? ends[..<$0].max() ?? 0 : nil }
    }

    public func forward(_ x: Tensor<T>, _ ctx: ModelContext<T>) -> Tensor<T> {
        guard ctx.frozen != nil else { return layers.reduce(x) { $1.forward($0, ctx) } }
        // Inference (frozen parameters, no backward): a convolution, a 2x2 max pool and an activation
        // after it (the order poolBeforeActivation leaves a ReLU in) run as one pass where the
        // convolution is Winograd's; a dense layer and an activation after it, where its weight is packed.
        var y = x, i = 0
        while i < layers.count {
            if let conv = layers[i] as? Conv2d<T>, i + 1 < layers.count, let pool = layers[i + 1] as? MaxPool2d<T>,
                pool.kernel == 2, pool.stride == 2
            {
                let activation = i + 2 < layers.count ? layers[i + 2] as? Activation<T> : nil
                if let pooled = conv.forwardPooled(y, ctx, activationSlope: activation?.slope) {
                    (y, i) = (pooled, i + (activation == nil ? 2 : 3))
                    continue
                }
            }
            if let dense = layers[i] as? Dense<T>, i + 1 < layers.count, let activation = layers[i + 1] as? Activation<T>,
                let activated = dense.forwardActivated(y, ctx, activationSlope: activation.slope)
            {
                (y, i) = (activated, i + 2)
                continue
            }
            y = layers[i].forward(y, ctx)
            i += 1
        }
        return y
    }

    /// Backward through every layer; the input gradient of the first layer is computed only when asked for.
    /// `gradientsReady(offset)` after each layer tells that the gradients at arena offsets >= offset are
    /// final (valid when this network is the model's whole arena): a cluster starts exchanging them.
    @discardableResult
    public func backward(
        _ dy: Tensor<T>, _ ctx: ModelContext<T>, needsInputGradient: Bool = false,
        gradientsReady: ((Int) -> Void)? = nil
    ) -> Tensor<T>? {
        var g: Tensor<T>? = dy
        for (i, layer) in layers.enumerated().reversed() {
            guard let current = g else { break }
            g = layer.backward(current, ctx, needsInputGradient: i > firstWithParameters || needsInputGradient)
            if let from = readyFrom[i] { gradientsReady?(from) }
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

    /// The row-sparse gradients of its tables (embeddings declared `sparse`).
    public var sparseGradients: [SparseRows<T>] {
        layers.compactMap { ($0 as? TableEmbedding<T>)?.table.sparseGradient ?? ($0 as? TokenEmbedding<T>)?.table.sparseGradient }
    }

    /// Non-trainable buffers of every layer, as "layers.<i>.<name>".
    public var bufferOwners: [(prefix: String, owner: any BufferOwner)] {
        layers.enumerated().compactMap { i, l in (l as? any BufferOwner).map { (prefixes[i], $0) } }
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
            logits.withPointer { z in
                labels.withUnsafeBufferPointer { l in
                    losses.withUnsafeMutableBufferPointer {
                        T.softmaxCrossEntropyForward(
                            probs: p, losses: $0.baseAddress!, logits: z, labels: l.baseAddress!, batch: b, classes: k)
                    }
                }
            }
        }
        return losses.withUnsafeBufferPointer { T.sum($0.baseAddress!, count: b) }
    }

    /// d(scale * sum of losses)/dlogits, computed in place of the probabilities (which it consumes: ask
    /// `correctCount` before).
    public func backward(scale: T) -> Tensor<T> {
        let (b, k) = (probs.shape[0], probs.shape[1])
        var d = probs
        probs = Tensor<T>.zeros([0])  // d is now the buffer's only owner: written in place, not copied
        d.withMutablePointer { p in
            labels.withUnsafeBufferPointer {
                T.softmaxCrossEntropyBackward(p, probs: p, labels: $0.baseAddress!, scale: scale, batch: b, classes: k)
            }
        }
        return d
    }

    /// How many rows of the last forward's logits put the largest probability on their label (before `backward`).
    public func correctCount() -> Int {
        precondition(probs.shape.count == 2, "correctCount after backward")
        let (b, k) = (probs.shape[0], probs.shape[1])
        var predicted = [Int32](repeating: 0, count: b)
        probs.withPointer { p in predicted.withUnsafeMutableBufferPointer { T.argmaxRows($0.baseAddress!, p, rows: b, columns: k) } }
        return zip(predicted, labels).filter { $0 == $1 }.count
    }
}

/// Logistic loss over B logits and labels in {0, 1}: log(1 + e^z) - y z per sample.
public final class LogisticLoss<T: Scalar> {
    public private(set) var probabilities: [T] = []
    private var labels: [Int32] = []
    public init() {}

    /// The summed loss of the batch; keeps sigmoid(z) in `probabilities`.
    public func forward(logits: Tensor<T>, labels: [Int32]) -> Double {
        precondition(logits.count == labels.count && labels.allSatisfy { $0 == 0 || $0 == 1 }, "labels must be 0 or 1, one per logit")
        self.labels = labels
        var losses = T.zeros(count: labels.count)
        probabilities = T.zeros(count: labels.count)
        logits.withPointer { z in
            labels.withUnsafeBufferPointer { l in
                losses.withUnsafeMutableBufferPointer { lp in
                    probabilities.withUnsafeMutableBufferPointer {
                        T.logisticLossForward(
                            probs: $0.baseAddress!, losses: lp.baseAddress!, logits: z, labels: l.baseAddress!, count: labels.count)
                    }
                }
            }
        }
        return losses.withUnsafeBufferPointer { T.sum($0.baseAddress!, count: $0.count) }
    }

    /// d(scale * summed loss)/dz, shape (B).
    public func backward(scale: T) -> Tensor<T> {
        Tensor.uninitialized([labels.count]) { d in
            probabilities.withUnsafeBufferPointer { p in
                labels.withUnsafeBufferPointer {
                    T.logisticLossBackward(d, probs: p.baseAddress!, labels: $0.baseAddress!, scale: scale, count: labels.count)
                }
            }
        }
    }

    /// Rows whose probability is on the side of their label.
    public func correctCount() -> Int { zip(probabilities, labels).filter { ($0 >= 0.5) == ($1 == 1) }.count }
}

/// Regression loss over (B, K) outputs and targets: per sample the mean over its K values of the squared
/// error (mse) or the absolute error (l1). Both errors are summed for the report (RMSE and MAE).
public final class RegressionLoss<T: Scalar> {
    public let squared: Bool
    private var outputs = Tensor<T>.zeros([0]), targets = Tensor<T>.zeros([0])
    /// The last forward's summed per-sample errors.
    public private(set) var squaredError = 0.0, absoluteError = 0.0
    public init(squared: Bool) { self.squared = squared }

    /// The summed per-sample losses.
    public func forward(outputs: Tensor<T>, targets: Tensor<T>) -> Double {
        precondition(outputs.shape == targets.shape && outputs.shape.count == 2, "outputs \(outputs.shape), targets \(targets.shape)")
        let (b, k) = (outputs.shape[0], outputs.shape[1])
        (self.outputs, self.targets) = (outputs, targets)
        var sq = T.zeros(count: b), ab = T.zeros(count: b)
        outputs.withPointer { y in
            targets.withPointer { t in
                sq.withUnsafeMutableBufferPointer { s in
                    ab.withUnsafeMutableBufferPointer {
                        T.regressionErrors(squared: s.baseAddress!, absolute: $0.baseAddress!, outputs: y, targets: t, rows: b, columns: k)
                    }
                }
            }
        }
        squaredError = sq.reduce(0) { $0 + Double($1) }
        absoluteError = ab.reduce(0) { $0 + Double($1) }
        return squared ? squaredError : absoluteError
    }

    public func backward(scale: T) -> Tensor<T> {
        let (b, k) = (outputs.shape[0], outputs.shape[1])
        return Tensor.uninitialized(outputs.shape) { d in
            outputs.withPointer { y in
                targets.withPointer {
                    T.regressionBackward(d, outputs: y, targets: $0, squared: squared, scale: scale, rows: b, columns: k)
                }
            }
        }
    }
}

/// Reconstruction loss: sigmoid of the logits against targets in [0, 1], mean squared error per value.
public final class SigmoidSquaredError<T: Scalar> {
    private var outputs = Tensor<T>.zeros([0])
    private var targets = Tensor<T>.zeros([0])
    public init() {}

    /// The loss of each row is the mean over its K values; returns the sum over rows.
    public func forward(logits: Tensor<T>, targets: Tensor<T>) -> Double {
        precondition(logits.shape == targets.shape && logits.shape.count == 2)
        let (b, k) = (logits.shape[0], logits.shape[1])
        self.targets = targets
        var losses = T.zeros(count: b)
        outputs = Tensor.uninitialized(logits.shape) { s in
            logits.withPointer { z in
                targets.withPointer { x in
                    losses.withUnsafeMutableBufferPointer {
                        T.sigmoidSquaredErrorForward(s, losses: $0.baseAddress!, logits: z, targets: x, rows: b, columns: k)
                    }
                }
            }
        }
        return losses.withUnsafeBufferPointer { T.sum($0.baseAddress!, count: b) }
    }

    public func backward(scale: T) -> Tensor<T> {
        let (b, k) = (outputs.shape[0], outputs.shape[1])
        return Tensor.uninitialized(outputs.shape) { d in
            outputs.withPointer { s in
                targets.withPointer { T.sigmoidSquaredErrorBackward(d, s: s, targets: $0, scale: scale, rows: b, columns: k) }
            }
        }
    }
}
