import TetherTensor

/// The weight matrix of a Dense or Conv2d layer, seen as (R, K) rows: either a plain parameter or
/// weight-normalized, w = g * v / ||v|| with one g per output row (Salimans & Kingma 2016).
final class WeightParameterization<T: Scalar> {
    enum Kind { case plain(ParameterSlot), normalized(g: ParameterSlot, v: ParameterSlot) }
    let kind: Kind
    var slots: [ParameterSlot] {
        switch kind {
        case .plain(let s): [s];
        case .normalized(let g, let v): [g, v]
        }
    }
    let rows: Int, columns: Int
    /// Scratch owned by this layer, used only when normalized: w (R, K), dL/dw (R, K), norms (R).
    private let w, dw, norms: UnsafeMutablePointer<T>
    static var epsilon: T { T(1e-12) }

    /// Registers `prefix.weight`, or `prefix.weight_g` and `prefix.weight_v` (PyTorch's weight_norm names;
    /// g has shape (R, 1, ...) as there). Plain weights use PyTorch's default init U(-1/sqrt(K), 1/sqrt(K));
    /// v ~ N(0, 0.05) and g = 1 as in the paper, before data-dependent init.
    /// `name` is the parameter's name after the prefix ("weight", or "weight_ih_l0" in an LSTM);
    /// `plainBound` overrides the plain init's bound and `initialG` the normalized g.
    init(
        _ layout: inout ArenaLayout, prefix: String, name: String = "weight", shape: [Int], normalized: Bool,
        plainBound: Double? = nil, initialG: Double = 1
    ) {
        rows = shape[0]
        columns = shape.dropFirst().reduce(1, *)
        let scratch = normalized ? rows * columns : 0
        (w, dw, norms) = (.allocate(capacity: scratch), .allocate(capacity: scratch), .allocate(capacity: normalized ? rows : 0))
        if normalized {
            let gShape = [rows] + Array(repeating: 1, count: shape.count - 1)
            kind = .normalized(
                g: layout.add(prefix + name + "_g", shape: gShape, initializer: .constant(initialG)),
                v: layout.add(prefix + name + "_v", shape: shape, initializer: .normal(std: 0.05)))
        } else {
            let bound = plainBound ?? 1 / Double(columns).squareRoot()
            kind = .plain(layout.add(prefix + name, shape: shape, initializer: .uniform(bound: bound)))
        }
    }

    /// A plain weight that is another layer's parameter (tied weights): reads and accumulates into `slot`.
    init(sharing slot: ParameterSlot, rows: Int, columns: Int) {
        precondition(slot.count == rows * columns, "a shared weight of \(slot.count) values cannot be (\(rows), \(columns))")
        (self.rows, self.columns) = (rows, columns)
        (w, dw, norms) = (.allocate(capacity: 0), .allocate(capacity: 0), .allocate(capacity: 0))
        kind = .plain(slot)
    }

    deinit { w.deallocate(); dw.deallocate(); norms.deallocate() }

    /// The freeze (`ModelContext.frozen`) under which `w` was last computed.
    private var computedWhileFrozen: Int?

    /// The effective weight (R, K); when normalized, recomputed from g and v (call once per forward),
    /// or kept from the last forward while the parameters are frozen.
    func weight(_ ctx: ModelContext<T>) -> UnsafePointer<T> {
        let arena = ctx.arena
        switch kind {
        case .plain(let s):
            return UnsafePointer(arena.value(s))
        case .normalized(let g, let v):
            if ctx.frozen == nil || ctx.frozen != computedWhileFrozen {
                T.weightNormForward(
                    w, norms: norms, g: arena.value(g), v: arena.value(v), epsilon: Self.epsilon, rows: rows, columns: columns)
                computedWhileFrozen = ctx.frozen
            }
            return UnsafePointer(w)
        }
    }

    /// The effective weight packed for inference (`PackedWeight`), made once per freeze of the
    /// parameters; nil while they are not frozen, or where T and the CPU have no packed kernel.
    func packedWeight(_ ctx: ModelContext<T>) -> PackedWeight<T>? {
        guard let frozen = ctx.frozen else { return nil }
        if let packed, packed.freeze == frozen { return packed.weight }
        let weight = PackedWeight(packing: weight(ctx), outputs: rows, inputs: columns)
        packed = weight.map { (frozen, $0) }
        return weight
    }
    private var packed: (freeze: Int, weight: PackedWeight<T>)?

    /// Runs `body(dW, beta)`, where body must write beta * dW + (its dL/dw): for plain weights that is the
    /// arena gradient itself (beta 1: accumulate); when normalized, a scratch buffer (beta 0) whose
    /// content is then routed into dg and dv. Uses the norms of the last `weight` call.
    func accumulateWeightGradient(_ arena: ParameterArena<T>, _ body: (UnsafeMutablePointer<T>, _ beta: T) -> Void) {
        switch kind {
        case .plain(let s):
            body(arena.grad(s), 1)
        case .normalized(let g, let v):
            body(dw, 0)
            T.weightNormBackward(
                arena.grad(g), arena.grad(v), dw, g: arena.value(g), v: arena.value(v),
                norms: norms, rows: rows, columns: columns)
        }
    }

    /// Data-dependent init (Salimans & Kingma 2016, section 3): with g = 1 and b = 0 the layer's output is
    /// t = v.x/||v||; from its statistics over one batch (summed over every replica by `reduce`) set
    /// g <- 1/std(t) and b <- -mean(t)/std(t), then return the output under the new parameters, whose
    /// rows have mean 0 and std 1. `moments` adds (sum, sum of squares) per row of the output into its
    /// argument and returns how many values each row saw. A plain weight just runs `forward`.
    func initializeFromData(
        _ arena: ParameterArena<T>, bias: ParameterSlot?, reduce: StatisticsReducer,
        forward: () -> Tensor<T>, moments: (Tensor<T>, UnsafeMutablePointer<Double>) -> Int
    ) -> Tensor<T> {
        guard case .normalized(let g, _) = kind, let bias else { return forward() }
        T.fill(arena.value(g), 1, count: rows)
        T.fill(arena.value(bias), 0, count: rows)
        let t = forward()
        var sums = [Double](repeating: 0, count: 2 * rows + 1)
        sums[2 * rows] = Double(sums.withUnsafeMutableBufferPointer { moments(t, $0.baseAddress!) })
        reduce(&sums)
        let count = sums[2 * rows], gp = arena.value(g), bp = arena.value(bias)
        for r in 0..<rows where count > 0 {  // once per run, R values: not a hot loop
            let mean = sums[2 * r] / count
            let std = (max(sums[2 * r + 1] / count - mean * mean, 0) + 1e-10).squareRoot()
            gp[r] = T(1 / std)
            bp[r] = T(-mean / std)
        }
        return forward()
    }

    var isNormalized: Bool { if case .normalized = kind { return true } else { return false } }
}
