import TetherTensor

/// ReLU (slope 0) or LeakyReLU: y = x > 0 ? x : slope * x, any shape.
public final class Activation<T: Scalar>: Layer {
    public let slope: T
    private var input = Tensor<T>.zeros([0])

    public init(leakySlope: Double = 0) { slope = T(leakySlope) }
    public static func relu() -> Activation { Activation() }

    public func forward(_ x: Tensor<T>, _ ctx: ModelContext<T>) -> Tensor<T> {
        input = x
        return Tensor.uninitialized(x.shape) { y in x.withPointer { T.leakyReLUForward(y, $0, slope: slope, count: x.count) } }
    }

    public func backward(_ dy: Tensor<T>, _ ctx: ModelContext<T>, needsInputGradient: Bool) -> Tensor<T>? {
        guard needsInputGradient else { return nil }
        return Tensor.uninitialized(dy.shape) { dx in
            dy.withPointer { dyp in input.withPointer { T.leakyReLUBackward(dx, dyp, $0, slope: slope, count: dy.count) } }
        }
    }
}

/// Inverted dropout: in training, zero each element with probability p and scale the rest by 1/(1-p);
/// identity in evaluation. The mask comes from the run's RNG, so runs are reproducible.
public final class Dropout<T: Scalar>: Layer {
    public let probability: Double
    private var mask: [T] = []

    public init(probability: Double) {
        precondition((0..<1).contains(probability), "dropout probability must be in [0, 1)")
        self.probability = probability
    }

    public func forward(_ x: Tensor<T>, _ ctx: ModelContext<T>) -> Tensor<T> {
        guard ctx.training, probability > 0 else { mask = []; return x }
        if mask.count != x.count { mask = T.zeros(count: x.count) }
        mask.withUnsafeMutableBufferPointer { T.dropoutMask($0.baseAddress!, dropProbability: probability, rng: &ctx.rng, count: x.count) }
        return Tensor.uninitialized(x.shape) { y in
            x.withPointer { xp in mask.withUnsafeBufferPointer { T.multiply(y, xp, $0.baseAddress!, count: x.count) } }
        }
    }

    public func backward(_ dy: Tensor<T>, _ ctx: ModelContext<T>, needsInputGradient: Bool) -> Tensor<T>? {
        guard needsInputGradient else { return nil }
        guard !mask.isEmpty else { return dy }
        return Tensor.uninitialized(dy.shape) { dx in
            dy.withPointer { dyp in mask.withUnsafeBufferPointer { T.multiply(dx, dyp, $0.baseAddress!, count: dy.count) } }
        }
    }
}

/// Between the two layouts: (B, C*H*W), PyTorch's flattened NCHW, and (C, B, H, W), Tether's conv layout.
/// `toConv` goes (B, C*H*W) -> (C, B, H, W) (the network's image input); otherwise the reverse (Flatten).
public final class LayoutSwap<T: Scalar>: Layer {
    public let toConv: Bool
    public let channels: Int, height: Int, width: Int

    public init(toConv: Bool, channels: Int, height: Int, width: Int) {
        (self.toConv, self.channels, self.height, self.width) = (toConv, channels, height, width)
    }

    private func swap(_ x: Tensor<T>, toConv: Bool) -> Tensor<T> {
        let plane = height * width
        let b = toConv ? x.shape[0] : x.shape[1]
        let (outer, inner) = toConv ? (b, channels) : (channels, b)
        let shape = toConv ? [channels, b, height, width] : [b, channels * plane]
        precondition(x.count == b * channels * plane, "LayoutSwap: \(x.shape) does not hold \(channels)x\(height)x\(width) images")
        return Tensor.uninitialized(shape) { y in x.withPointer { T.swapLeadingAxes(y, $0, outer: outer, inner: inner, plane: plane) } }
    }

    public func forward(_ x: Tensor<T>, _ ctx: ModelContext<T>) -> Tensor<T> { swap(x, toConv: toConv) }

    public func backward(_ dy: Tensor<T>, _ ctx: ModelContext<T>, needsInputGradient: Bool) -> Tensor<T>? {
        needsInputGradient ? swap(dy, toConv: !toConv) : nil
    }
}

/// Mean-only batch normalization (Salimans & Kingma 2016, section 2.2): y = x - mean_batch(x) + b, per
/// feature of (B, F) or per channel of (C, B, H, W). Evaluation subtracts the running mean instead.
public final class MeanOnlyBatchNorm<T: Scalar>: Layer, BufferOwner {
    public let features: Int
    public let channelsFirst: Bool
    public let momentum: Double
    let bias: ParameterSlot
    public var parameterSlots: [ParameterSlot] { [bias] }
    private(set) var runningMean: [T]
    private var sums: [T]

    public init(_ layout: inout ArenaLayout, prefix: String, features: Int, channelsFirst: Bool, momentum: Double = 0.1) {
        (self.features, self.channelsFirst, self.momentum) = (features, channelsFirst, momentum)
        bias = layout.add(prefix + "bias", shape: [features], initializer: .zeros)
        runningMean = T.zeros(count: features)
        sums = T.zeros(count: features)
    }

    /// per-feature sums of x, into `sums`; returns how many values each feature saw
    private func featureSums(_ x: UnsafePointer<T>, count: Int) -> Int {
        let n = count / features
        sums.withUnsafeMutableBufferPointer { s in
            T.fill(s.baseAddress!, 0, count: features)
            if channelsFirst {
                T.sumPerChannel(s.baseAddress!, x, channels: features, columns: n)
            } else {
                T.sumPerFeature(s.baseAddress!, x, rows: n, features: features)
            }
        }
        return n
    }

    /// y += alpha * v, broadcast per feature
    private func add(_ y: UnsafeMutablePointer<T>, _ v: UnsafePointer<T>, alpha: T, count: Int) {
        if channelsFirst {
            T.addPerChannel(y, v, alpha: alpha, channels: features, columns: count / features)
        } else {
            T.addPerFeature(y, v, alpha: alpha, rows: count / features, features: features)
        }
    }

    public func forward(_ x: Tensor<T>, _ ctx: ModelContext<T>) -> Tensor<T> {
        precondition((channelsFirst ? x.shape[0] : x.shape.last!) == features, "MeanOnlyBatchNorm(\(features)): input \(x.shape)")
        var y = x
        y.withMutablePointer { yp in
            if ctx.training {
                let n = featureSums(yp, count: x.count)
                sums.withUnsafeBufferPointer { add(yp, $0.baseAddress!, alpha: -1 / T(n), count: x.count) }
                runningMean.withUnsafeMutableBufferPointer { r in
                    T.scale(r.baseAddress!, by: T(1 - momentum), count: features)
                    sums.withUnsafeBufferPointer { T.axpy(r.baseAddress!, $0.baseAddress!, alpha: T(momentum) / T(n), count: features) }
                }
            } else {
                runningMean.withUnsafeBufferPointer { add(yp, $0.baseAddress!, alpha: -1, count: x.count) }
            }
            add(yp, ctx.arena.value(bias), alpha: 1, count: x.count)
        }
        return y
    }

    public func backward(_ dy: Tensor<T>, _ ctx: ModelContext<T>, needsInputGradient: Bool) -> Tensor<T>? {
        var dx = dy
        let n = dy.withPointer { featureSums($0, count: dy.count) }
        sums.withUnsafeBufferPointer { T.axpy(ctx.arena.grad(bias), $0.baseAddress!, alpha: 1, count: features) }
        guard needsInputGradient else { return nil }
        // dx = dy - mean_batch(dy): the mean's own dependence on x
        dx.withMutablePointer { dxp in sums.withUnsafeBufferPointer { add(dxp, $0.baseAddress!, alpha: -1 / T(n), count: dy.count) } }
        return dx
    }

    public var bufferNames: [String] { ["running_mean"] }
    public func buffer(named name: String) -> [Float]? {
        name == "running_mean" ? runningMean.map { Float($0) } : nil
    }
    public func loadBuffer(named name: String, _ values: [Float]) -> Bool {
        guard name == "running_mean", values.count == features else { return false }
        runningMean = values.map { T($0) }
        return true
    }
}

/// Tanh, sigmoid or GELU (tanh approximation), any shape. Keeps what its backward reads: the output
/// for tanh and sigmoid, the input for GELU.
public final class Pointwise<T: Scalar>: Layer {
    public enum Function: String, Sendable, CaseIterable { case tanh, sigmoid, gelu }
    public let function: Function
    private var kept = Tensor<T>.zeros([0])

    public init(_ function: Function) { self.function = function }

    public func forward(_ x: Tensor<T>, _ ctx: ModelContext<T>) -> Tensor<T> {
        let y = Tensor<T>.uninitialized(x.shape) { y in
            x.withPointer { xp in
                switch function {
                case .tanh: T.tanhForward(y, xp, count: x.count)
                case .sigmoid: T.sigmoidForward(y, xp, count: x.count)
                case .gelu: T.geluForward(y, xp, count: x.count)
                }
            }
        }
        kept = function == .gelu ? x : y
        return y
    }

    public func backward(_ dy: Tensor<T>, _ ctx: ModelContext<T>, needsInputGradient: Bool) -> Tensor<T>? {
        guard needsInputGradient else { return nil }
        return Tensor.uninitialized(dy.shape) { dx in
            dy.withPointer { dyp in
                kept.withPointer { k in
                    switch function {
                    case .tanh: T.tanhBackward(dx, dyp, k, count: dy.count)
                    case .sigmoid: T.sigmoidBackward(dx, dyp, k, count: dy.count)
                    case .gelu: T.geluBackward(dx, dyp, k, count: dy.count)
                    }
                }
            }
        }
    }
}

/// Batch normalization as PyTorch's BatchNorm1d/2d (Ioffe & Szegedy 2015), per feature of (B, F) or
/// per channel of (C, B, H, W): y = gamma (x - mean) / sqrt(var + eps) + beta with the batch's mean and
/// biased variance in training, the running ones (momentum 0.1, the unbiased variance) in evaluation.
/// Backward, with xhat = (x - mean) / s and n values per feature:
///   dbeta = sum dy                                      // term 1
///   dgamma = sum dy xhat                                // term 2
///   dx = gamma / s (dy - mean(dy) - xhat mean(dy xhat)) // term 3
public final class BatchNorm<T: Scalar>: Layer, BufferOwner {
    public let features: Int
    public let channelsFirst: Bool
    public let momentum: Double, epsilon: Double
    let weight: ParameterSlot, bias: ParameterSlot
    public var parameterSlots: [ParameterSlot] { [weight, bias] }
    /// Float values (what checkpoints keep), held as Double
    private(set) var runningMean: [Double], runningVar: [Double]
    /// what backward needs of the last training forward: xhat and 1/s per feature
    private var normalized: Tensor<T>?
    private var inverseStd: [Double] = []

    public init(
        _ layout: inout ArenaLayout, prefix: String, features: Int, channelsFirst: Bool, momentum: Double = 0.1, epsilon: Double = 1e-5
    ) {
        (self.features, self.channelsFirst, self.momentum, self.epsilon) = (features, channelsFirst, momentum, epsilon)
        weight = layout.add(prefix + "weight", shape: [features], initializer: .constant(1))
        bias = layout.add(prefix + "bias", shape: [features], initializer: .zeros)
        (runningMean, runningVar) = ([Double](repeating: 0, count: features), [Double](repeating: 1, count: features))
    }

    /// The index of value i of feature f among `count` values: (C, B*H*W) contiguous per channel, or
    /// (B, F) strided by F.
    @inline(__always) private func at(_ f: Int, _ i: Int, perFeature n: Int) -> Int { channelsFirst ? f * n + i : i * features + f }

    public func forward(_ x: Tensor<T>, _ ctx: ModelContext<T>) -> Tensor<T> {
        precondition((channelsFirst ? x.shape[0] : x.shape.last!) == features, "BatchNorm(\(features)): input \(x.shape)")
        let n = x.count / features
        let gamma = ctx.arena.value(weight), beta = ctx.arena.value(bias)
        var means = [Double](repeating: 0, count: features), inverse = [Double](repeating: 0, count: features)
        x.withPointer { xp in
            for f in 0..<features {
                if ctx.training {
                    var sum = 0.0, squares = 0.0
                    for i in 0..<n { sum += Double(xp[at(f, i, perFeature: n)]) }
                    let mean = sum / Double(n)
                    for i in 0..<n {
                        let d = Double(xp[at(f, i, perFeature: n)]) - mean
                        squares += d * d
                    }
                    let variance = squares / Double(n)
                    (means[f], inverse[f]) = (mean, 1 / (variance + epsilon).squareRoot())
                    // rounded to Float as they are kept (PyTorch's float32 buffers): a checkpoint holds them
                    // exactly, so a resumed run updates the same values an unbroken one does
                    runningMean[f] = Double(Float((1 - momentum) * runningMean[f] + momentum * mean))
                    runningVar[f] = Double(Float((1 - momentum) * runningVar[f] + momentum * (n > 1 ? squares / Double(n - 1) : variance)))
                } else {
                    (means[f], inverse[f]) = (runningMean[f], 1 / (runningVar[f] + epsilon).squareRoot())
                }
            }
        }
        let xhat = Tensor<T>.uninitialized(x.shape) { h in
            x.withPointer { xp in
                for f in 0..<features {
                    for i in 0..<n { let k = at(f, i, perFeature: n); h[k] = T((Double(xp[k]) - means[f]) * inverse[f]) }
                }
            }
        }
        (normalized, inverseStd) = ctx.training ? (xhat, inverse) : (nil, [])
        return Tensor.uninitialized(x.shape) { y in
            xhat.withPointer { h in
                for f in 0..<features { for i in 0..<n { let k = at(f, i, perFeature: n); y[k] = gamma[f] * h[k] + beta[f] } }
            }
        }
    }

    public func backward(_ dy: Tensor<T>, _ ctx: ModelContext<T>, needsInputGradient: Bool) -> Tensor<T>? {
        guard let xhat = normalized else { preconditionFailure("BatchNorm.backward without a training forward") }
        let n = dy.count / features
        let gamma = ctx.arena.value(weight), dgamma = ctx.arena.grad(weight), dbeta = ctx.arena.grad(bias)
        var meanDy = [Double](repeating: 0, count: features), meanDyXhat = [Double](repeating: 0, count: features)
        dy.withPointer { d in
            xhat.withPointer { h in
                for f in 0..<features {
                    var sum = 0.0, dot = 0.0
                    for i in 0..<n {
                        let k = at(f, i, perFeature: n)
                        sum += Double(d[k])
                        dot += Double(d[k]) * Double(h[k])
                    }
                    dbeta[f] += T(sum)  // term 1
                    dgamma[f] += T(dot)  // term 2
                    (meanDy[f], meanDyXhat[f]) = (sum / Double(n), dot / Double(n))
                }
            }
        }
        guard needsInputGradient else { return nil }
        return Tensor.uninitialized(dy.shape) { dx in  // term 3
            dy.withPointer { d in
                xhat.withPointer { h in
                    for f in 0..<features {
                        let scale = Double(gamma[f]) * inverseStd[f]
                        for i in 0..<n {
                            let k = at(f, i, perFeature: n)
                            dx[k] = T(scale * (Double(d[k]) - meanDy[f] - Double(h[k]) * meanDyXhat[f]))
                        }
                    }
                }
            }
        }
    }

    public var bufferNames: [String] { ["running_mean", "running_var"] }
    public func buffer(named name: String) -> [Float]? {
        name == "running_mean" ? runningMean.map { Float($0) } : name == "running_var" ? runningVar.map { Float($0) } : nil
    }
    public func loadBuffer(named name: String, _ values: [Float]) -> Bool {
        guard values.count == features, bufferNames.contains(name) else { return false }
        if name == "running_mean" { runningMean = values.map(Double.init) } else { runningVar = values.map(Double.init) }
        return true
    }
}
