import TetherTensor

/// y (B, O) = x (B, I) w^T + b, w (O, I) plain or weight-normalized.
public final class Dense<T: Scalar>: DataDependentInit {
    public let inFeatures: Int, outFeatures: Int
    let weight: WeightParameterization<T>
    public var hasParameters: Bool { true }
    let bias: ParameterSlot?
    private var input = Tensor<T>.zeros([0])       // cache: x (B, I)
    private var w: UnsafePointer<T>?               // the effective weight used by the last forward

    public init(_ layout: inout ArenaLayout, prefix: String, inFeatures: Int, outFeatures: Int, bias: Bool = true, weightNorm: Bool = false) {
        (self.inFeatures, self.outFeatures) = (inFeatures, outFeatures)
        weight = WeightParameterization(&layout, prefix: prefix, shape: [outFeatures, inFeatures], normalized: weightNorm)
        let bound = 1 / Double(inFeatures).squareRoot()
        self.bias = bias ? layout.add(prefix + "bias", shape: [outFeatures], initializer: weightNorm ? .zeros : .uniform(bound: bound)) : nil
    }

    public func forward(_ x: Tensor<T>, _ ctx: ModelContext<T>) -> Tensor<T> {
        precondition(x.shape.count == 2 && x.shape[1] == inFeatures, "Dense expects (B, \(inFeatures)), got \(x.shape)")
        let b = x.shape[0], arena = ctx.arena
        input = x
        let w = weight.weight(arena)
        self.w = w
        return Tensor.uninitialized([b, outFeatures]) { y in
            x.withPointer { xp in
                T.gemm(transposeA: false, transposeB: true, m: b, n: outFeatures, k: inFeatures, alpha: 1,
                       a: xp, lda: inFeatures, b: w, ldb: inFeatures, beta: 0, c: y, ldc: outFeatures)
            }
            if let bias { T.addPerFeature(y, arena.value(bias), alpha: 1, rows: b, features: outFeatures) }
            else if b * outFeatures > 0 && inFeatures == 0 { T.fill(y, 0, count: b * outFeatures) }
        }
    }

    public func backward(_ dy: Tensor<T>, _ ctx: ModelContext<T>, needsInputGradient: Bool) -> Tensor<T>? {
        let b = dy.shape[0], arena = ctx.arena
        dy.withPointer { dyp in
            input.withPointer { xp in
                // dw (O, I) = dy^T (O, B) x (B, I)
                weight.accumulateWeightGradient(arena) { dw, beta in
                    T.gemm(transposeA: true, transposeB: false, m: outFeatures, n: inFeatures, k: b, alpha: 1,
                           a: dyp, lda: outFeatures, b: xp, ldb: inFeatures, beta: beta, c: dw, ldc: inFeatures)
                }
            }
            if let bias { T.sumPerFeature(arena.grad(bias), dyp, rows: b, features: outFeatures) }
        }
        guard needsInputGradient, let w else { return nil }
        // dx (B, I) = dy (B, O) w (O, I)
        return Tensor.uninitialized([b, inFeatures]) { dx in
            dy.withPointer { dyp in
                T.gemm(transposeA: false, transposeB: false, m: b, n: inFeatures, k: outFeatures, alpha: 1,
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
