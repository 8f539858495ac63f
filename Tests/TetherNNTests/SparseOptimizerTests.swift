import Testing
@testable import TetherNN
import TetherTensor

@Suite struct SparseOptimizerTests {
    /// A table (4, 2) with a row-sparse gradient touching rows 2 and 0 (row 2 twice).
    func touched(_ slot: ParameterSlot) -> SparseRows<Double> {
        let rows = SparseRows<Double>(slot: slot, width: 2)
        let ids: [Int32] = [2, 0, 2], grads: [Double] = [0.5, -1, 2, 0.25, 0.5, 0.5]
        rows.accumulate(rowIDs: ids, grads: grads, count: 3)
        return rows
    }

    @Test func sparseRowsMergeRepeatedRows() {
        var layout = ArenaLayout()
        let rows = touched(layout.add("t", shape: [4, 2], initializer: .zeros, sparseGradient: true))
        #expect(rows.ids == [2, 0])
        #expect(rows.values == [1, -0.5, 2, 0.25])
        rows.clear()
        #expect(rows.ids.isEmpty)
        rows.accumulate(rowIDs: [3], grads: [1, 1], count: 1)
        #expect(rows.ids == [3] && rows.values == [1, 1])
    }

    @Test func adagradMatchesTheHandComputedUpdate() {
        var layout = ArenaLayout()
        _ = layout.add("p", shape: [1], initializer: .zeros)
        let arena = ParameterArena<Double>(layout: layout)
        arena.values[0] = 1
        var c = OptimizerConfig(); c.kind = .adagrad
        let opt = try! Optimizer<Double>(c, layout: layout)
        for g in [0.5, -1.0] { arena.grads[0] = g; opt.step(arena, lr: 0.1) }
        // sum 0.25 -> p = 1 - 0.1 * 0.5 / 0.5 = 0.9; sum 1.25 -> p = 0.9 + 0.1 / sqrt(1.25)
        #expect(abs(arena.values[0] - (0.9 + 0.1 / 1.25.squareRoot())) < 1e-9)
    }

    /// The sparse update equals the dense one: rows without gradient keep their values and state.
    @Test(arguments: [OptimizerConfig.Kind.adagrad, .sgd])
    func sparseEqualsDense(kind: OptimizerConfig.Kind) {
        var sparseLayout = ArenaLayout(), denseLayout = ArenaLayout()
        let slot = sparseLayout.add("t", shape: [4, 2], initializer: .normal(std: 1), sparseGradient: true)
        _ = denseLayout.add("t", shape: [4, 2], initializer: .normal(std: 1))
        var c = OptimizerConfig(); c.kind = kind
        let sparse = ParameterArena<Double>(layout: sparseLayout), dense = ParameterArena<Double>(layout: denseLayout)
        var r1 = RNG(seed: 1), r2 = RNG(seed: 1)
        sparse.initialize(rng: &r1); dense.initialize(rng: &r2)
        let os = try! Optimizer<Double>(c, layout: sparseLayout), od = try! Optimizer<Double>(c, layout: denseLayout)
        for _ in 0..<3 {
            let rows = touched(slot)
            dense.zeroGrads()
            rows.addDense(into: dense.grads)
            os.step(sparse, lr: 0.1, sparse: [rows])
            od.step(dense, lr: 0.1)
        }
        #expect(Array(UnsafeBufferPointer(start: sparse.values, count: 8)) == Array(UnsafeBufferPointer(start: dense.values, count: 8)))
    }

    @Test func sparseTablesRefuseAdam() {
        var layout = ArenaLayout()
        _ = layout.add("t", shape: [4, 2], initializer: .zeros, sparseGradient: true)
        #expect { try Optimizer<Double>(OptimizerConfig(), layout: layout) } throws: { "\($0)".contains("t has a row-sparse gradient") }
    }

    /// FTRL-Proximal (McMahan et al. 2013, algorithm 1) by hand on two coordinates: one whose |z|
    /// stays under l1 (its weight is exactly 0), one that crosses it.
    @Test func ftrlMatchesTheHandComputedUpdateAndClipsToZero() {
        var layout = ArenaLayout()
        let slot = layout.add("wide.weight", shape: [2, 1], initializer: .zeros, sparseGradient: true)
        let arena = ParameterArena<Double>(layout: layout)
        var c = OptimizerConfig(); c.kind = .adagrad
        c.ftrl = FTRLHyper(alpha: 0.5, beta: 1, l1: 1, l2: 0.1)
        let opt = try! Optimizer<Double>(c, layout: layout, ftrlParameters: ["wide.weight"])
        let rows = SparseRows<Double>(slot: slot, width: 1)
        // step 1: g = (0.6, 3): n = g^2, sigma = |g| / alpha, z = g (w was 0)
        rows.accumulate(rowIDs: [0, 1], grads: [0.6, 3], count: 2)
        opt.step(arena, lr: 123, sparse: [rows])  // lr is not FTRL's: alpha is
        rows.clear()
        #expect(arena.values[0] == 0)  // |z| = 0.6 <= l1
        let w1: Double = -2.0 / (4.0 / 0.5 + 0.1)  // -(z - l1) / ((beta + sqrt(n)) / alpha + l2)
        #expect(abs(arena.values[1] - w1) < 1e-12)
        // step 2 on coordinate 1 only: g = -1
        rows.accumulate(rowIDs: [1], grads: [-1], count: 1)
        opt.step(arena, lr: 123, sparse: [rows])
        let n2: Double = 10
        let sigma: Double = (n2.squareRoot() - 3) / 0.5
        let z2: Double = 2 - sigma * w1
        let shrunk: Double = z2 - (z2 < 0 ? -1 : 1)
        let w2: Double = abs(z2) <= 1 ? 0 : -shrunk / ((1 + n2.squareRoot()) / 0.5 + 0.1)
        #expect(abs(arena.values[1] - w2) < 1e-12)
        #expect(arena.values[0] == 0)
        let names = opt.stateTensors.map(\.key)
        #expect(names == ["optimizer.ftrl_z.wide.weight", "optimizer.ftrl_n.wide.weight"])
    }

    @Test func gradientClippingScalesToTheMaximumNorm() {
        var layout = ArenaLayout()
        _ = layout.add("p", shape: [2], initializer: .zeros)
        let arena = ParameterArena<Double>(layout: layout)
        var c = OptimizerConfig(); c.kind = .sgd; c.clipNorm = 1
        let opt = try! Optimizer<Double>(c, layout: layout)
        arena.grads[0] = 3; arena.grads[1] = 4  // norm 5 -> scaled by 1/5
        opt.step(arena, lr: 1)
        #expect(abs(arena.values[0] + 0.6) < 1e-6 && abs(arena.values[1] + 0.8) < 1e-6)
        arena.grads[0] = 0.3; arena.grads[1] = 0.4  // under the limit: untouched
        opt.step(arena, lr: 1)
        #expect(abs(arena.values[0] + 0.9) < 1e-6)
    }
}
