import TetherTensor

/// y (B, O) = x (B, I) w^T + b, w (O, I) plain or weight-normalized.
public final class Dense<T: Scalar>: DataDependentInit {
    public let inFeatures: Int, outFeatures: Int
    let weight: WeightParameterization<T>
    let bias: ParameterSlot?
    public var parameterSlots: [ParameterSlot] { weight.slots + (bias.map { [$0] } ?? []) }
    /// The plain weight's slot (nil when weight-normalized), for layers that tie to it.
    public var weightSlot: ParameterSlot? { if case .plain(let s) = weight.kind { return s } else { return nil } }
    private var input = Tensor<T>.zeros([0])  // cache: x (B, I)
    private var w: UnsafePointer<T>?  // the effective weight used by the last forward

    public init(_ layout: inout ArenaLayout, prefix: String, inFeatures: Int, outFeatures: Int, bias: Bool = true, weightNorm: Bool = false)
    {
        (self.inFeatures, self.outFeatures) = (inFeatures, outFeatures)
        weight = WeightParameterization(&layout, prefix: prefix, shape: [outFeatures, inFeatures], normalized: weightNorm)
        let bound = 1 / Double(inFeatures).squareRoot()
        self.bias =
            bias ? layout.add(prefix + "bias", shape: [outFeatures], initializer: weightNorm ? .zeros : .uniform(bound: bound)) : nil
    }

    /// A layer whose weight (O, I) is an existing parameter, e.g. an embedding table (V, d) used as the
    /// output projection (Press & Wolf 2016). Both uses accumulate into the one gradient; the bias is its own.
    public init(
        _ layout: inout ArenaLayout, prefix: String, sharedWeight: ParameterSlot, inFeatures: Int, outFeatures: Int, bias: Bool = true
    ) {
        (self.inFeatures, self.outFeatures) = (inFeatures, outFeatures)
        weight = WeightParameterization(sharing: sharedWeight, rows: outFeatures, columns: inFeatures)
        self.bias = bias ? layout.add(prefix + "bias", shape: [outFeatures], initializer: .zeros) : nil
    }

    public func forward(_ x: Tensor<T>, _ ctx: ModelContext<T>) -> Tensor<T> {
        precondition(x.shape.count == 2 && x.shape[1] == inFeatures, "Dense expects (B, \(inFeatures)), got \(x.shape)")
        let b = x.shape[0], arena = ctx.arena
        input = x
        if let y = forwardActivated(x, ctx, activationSlope: nil) { return y }
        let w = weight.weight(ctx)
        self.w = w
        return Tensor.uninitialized([b, outFeatures]) { y in
            // y starts as the bias in every row and the GEMM adds to it: one pass fewer over y than
            // zeroing (which GEMM does for beta 0) and adding the bias after.
            if let bias {
                T.copyColumns(y, ldy: outFeatures, arena.value(bias), ldx: 0, rows: b, columns: outFeatures)
            } else {
                T.fill(y, 0, count: b * outFeatures)
            }
            x.withPointer { xp in
                T.gemm(
                    transposeA: false, transposeB: true, m: b, n: outFeatures, k: inFeatures, alpha: 1,
                    a: xp, lda: inFeatures, b: w, ldb: inFeatures, beta: 1, c: y, ldc: outFeatures)
            }
        }
    }

    /// Inference over frozen parameters: y = x W^T + b by the weight packed once per freeze, then
    /// y > 0 ? y : slope y if a slope is given (the activation layer after, in the same pass: the same
    /// bits). nil where there is no packed weight (not frozen, Double, or a CPU without AVX-512).
    public func forwardActivated(_ x: Tensor<T>, _ ctx: ModelContext<T>, activationSlope: T?) -> Tensor<T>? {
        precondition(x.shape.count == 2 && x.shape[1] == inFeatures, "Dense expects (B, \(inFeatures)), got \(x.shape)")
        guard let packed = weight.packedWeight(ctx) else { return nil }
        let b = x.shape[0], arena = ctx.arena
        (input, w) = (x, nil)
        return Tensor.uninitialized([b, outFeatures]) { y in
            x.withPointer {
                packed.apply(y, $0, rows: b, bias: bias.map { UnsafePointer(arena.value($0)) }, activationSlope: activationSlope)
            }
        }
    }

    public func backward(_ dy: Tensor<T>, _ ctx: ModelContext<T>, needsInputGradient: Bool) -> Tensor<T>? {
        let b = dy.shape[0], arena = ctx.arena
        dy.withPointer { dyp in
            input.withPointer { xp in
                // dw (O, I) = dy^T (O, B) x (B, I)
                weight.accumulateWeightGradient(arena) { dw, beta in
                    T.gemm(
                        transposeA: true, transposeB: false, m: outFeatures, n: inFeatures, k: b, alpha: 1,
                        a: dyp, lda: outFeatures, b: xp, ldb: inFeatures, beta: beta, c: dw, ldc: inFeatures)
                }
            }
            if let bias { T.sumPerFeature(arena.grad(bias), dyp, rows: b, features: outFeatures) }
        }
        guard needsInputGradient, let w else { return nil }
        // dx (B, I) = dy (B, O) w (O, I)
        return Tensor.uninitialized([b, inFeatures]) { dx in
            dy.withPointer { dyp in
                T.gemm(
                    transposeA: false, transposeB: false, m: b, n: inFeatures, k: outFeatures, alpha: 1,
                    a: dyp, lda: outFeatures, b: w, ldb: inFeatures, beta: 0, c: dx, ldc: inFeatures)
            }
        }
    }

    public func initializeFromData(_ x: Tensor<T>, _ ctx: ModelContext<T>, reduce: StatisticsReducer) -> Tensor<T> {
        weight.initializeFromData(ctx.arena, bias: bias, reduce: reduce, forward: { forward(x, ctx) }) { t, sums in
            t.withPointer { T.momentsPerFeature(sums, $0, rows: t.shape[0], features: outFeatures) }
            return t.shape[0]
        }
    }
}

/// The transpose of a Dense layer's weight, shared with it (a tied autoencoder's decoder):
/// y (B, I) = x (B, O) W + b for the encoder's W (O, I); its own bias b (I).
public final class TransposedDense<T: Scalar>: Layer {
    public let weight: ParameterSlot
    public let inFeatures: Int, outFeatures: Int  // of this layer: O in, I out
    let bias: ParameterSlot
    public var parameterSlots: [ParameterSlot] { [weight, bias] }
    private var input = Tensor<T>.zeros([0])

    /// `weight` is the (encoderOut, encoderIn) parameter of the layer being mirrored.
    public init(_ layout: inout ArenaLayout, prefix: String, transposing weight: ParameterSlot, encoderIn: Int, encoderOut: Int) {
        precondition(weight.count == encoderIn * encoderOut)
        (self.weight, inFeatures, outFeatures) = (weight, encoderOut, encoderIn)
        bias = layout.add(prefix + "bias", shape: [encoderIn], initializer: .zeros)
    }

    public func forward(_ x: Tensor<T>, _ ctx: ModelContext<T>) -> Tensor<T> {
        precondition(x.shape.count == 2 && x.shape[1] == inFeatures, "TransposedDense expects (B, \(inFeatures)), got \(x.shape)")
        let b = x.shape[0], arena = ctx.arena
        input = x
        return Tensor.uninitialized([b, outFeatures]) { y in
            x.withPointer {
                T.gemm(
                    transposeA: false, transposeB: false, m: b, n: outFeatures, k: inFeatures, alpha: 1,
                    a: $0, lda: inFeatures, b: arena.value(weight), ldb: outFeatures, beta: 0, c: y, ldc: outFeatures)
            }
            T.addPerFeature(y, arena.value(bias), alpha: 1, rows: b, features: outFeatures)
        }
    }

    public func backward(_ dy: Tensor<T>, _ ctx: ModelContext<T>, needsInputGradient: Bool) -> Tensor<T>? {
        let b = dy.shape[0], arena = ctx.arena
        dy.withPointer { dyp in
            // dW (O, I) += x^T (O, B) dy (B, I)
            input.withPointer {
                T.gemm(
                    transposeA: true, transposeB: false, m: inFeatures, n: outFeatures, k: b, alpha: 1,
                    a: $0, lda: inFeatures, b: dyp, ldb: outFeatures, beta: 1, c: arena.grad(weight), ldc: outFeatures)
            }
            T.sumPerFeature(arena.grad(bias), dyp, rows: b, features: outFeatures)
        }
        guard needsInputGradient else { return nil }
        // dx (B, O) = dy (B, I) W^T
        return Tensor.uninitialized([b, inFeatures]) { dx in
            dy.withPointer {
                T.gemm(
                    transposeA: false, transposeB: true, m: b, n: inFeatures, k: outFeatures, alpha: 1,
                    a: $0, lda: outFeatures, b: arena.value(weight), ldb: outFeatures, beta: 0, c: dx, ldc: inFeatures)
            }
        }
    }
}
