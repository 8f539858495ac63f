import TetherJobFile
import Testing
import Foundation
@testable import TetherNN
import TetherTensor

@Suite struct PoolingTieTests {
    @Test func tiesSendTheGradientToTheFirstMaximumInScanOrder() {
        // One 4x4 plane; every 2x2 window holds a tie of its maximum.
        let x = Tensor<Double>(
            shape: [1, 1, 4, 4],
            scalars: [
                1, 1, 0, 2,
                0, 0, 2, 2,
                3, 0, 5, 4,
                0, 3, 5, 5
            ])
        let pool = MaxPool2d<Double>(kernel: 2)
        let ctx = ModelContext(arena: ParameterArena<Double>(layout: ArenaLayout()), rng: RNG(seed: 0))
        let y = pool.forward(x, ctx)
        #expect(y.scalars == [1, 2, 3, 5])
        let dx = pool.backward(Tensor(shape: [1, 1, 2, 2], scalars: [10, 20, 30, 40]), ctx, needsInputGradient: true)!
        #expect(
            dx.scalars == [
                10, 0, 0, 20,
                0, 0, 0, 0,
                30, 0, 40, 0,
                0, 0, 0, 0
            ])
    }
}

@Suite struct WinogradConvolutionTests {
    /// A 3x3 or 5x5, stride-1 convolution by Winograd equals the same layer by im2col + GEMM: forward,
    /// dx and dw, in Double to 1e-12 and in Float to 1e-5 (Winograd rounds a little differently), on
    /// one thread and on two (the chunks, and so the bits, do not depend on the thread count).
    @Test(arguments: [
        (3, 1, 5, 9, 9), (3, 0, 3, 8, 11), (3, 2, 4, 1, 2), (3, 1, 40, 16, 16), (5, 2, 6, 14, 14), (5, 4, 3, 2, 3), (5, 1, 20, 9, 10)
    ])
    func winogradEqualsIm2col(kernel: Int, padding: Int, batch: Int, h: Int, w: Int) {
        func run<T: Scalar>(_: T.Type, winograd: Bool, threads: Int) -> (y: [T], dx: [T], grads: [T]) {
            var layout = ArenaLayout()
            let conv = Conv2d<T>(&layout, prefix: "", inChannels: 3, outChannels: 5, kernel: kernel, padding: padding, weightNorm: true)
            conv.winograd = winograd
            var rng = RNG(seed: 4)
            let arena = ParameterArena<T>(layout: layout)
            arena.initialize(rng: &rng)
            let ctx = ModelContext(arena: arena, rng: RNG(seed: 0))
            let x = Tensor<T>(shape: [3, batch, h, w], scalars: (0..<3 * batch * h * w).map { _ in T(rng.nextNormal()) })
            return Compute.withThreads(threads) {
                let y = conv.forward(x, ctx)
                let dy = Tensor<T>(shape: y.shape, scalars: y.scalars.map { _ in T(rng.nextNormal()) })
                arena.zeroGrads()
                let dx = conv.backward(dy, ctx, needsInputGradient: true)!
                return (y.scalars, dx.scalars, Array(UnsafeBufferPointer(start: arena.grads, count: arena.count)))
            }
        }
        func worst<T: Scalar>(_ a: [T], _ b: [T]) -> Double {
            #expect(a.count == b.count)
            return zip(a, b).map { abs(Double($0) - Double($1)) / max(1, abs(Double($1))) }.max() ?? 0
        }
        let reference = run(Double.self, winograd: false, threads: 1), fast = run(Double.self, winograd: true, threads: 1)
        #expect(worst(fast.y, reference.y) < 1e-12)
        #expect(worst(fast.dx, reference.dx) < 1e-12)
        #expect(worst(fast.grads, reference.grads) < 1e-12)
        let float = run(Float.self, winograd: true, threads: 1), floatReference = run(Float.self, winograd: false, threads: 1)
        #expect(worst(float.y, floatReference.y) < 1e-5)
        #expect(worst(float.dx, floatReference.dx) < 1e-5)
        let twoThreads = run(Float.self, winograd: true, threads: 2)
        #expect(twoThreads.y == float.y && twoThreads.dx == float.dx)
    }
}

@Suite struct LSTMPrecisionTests {
    /// In Float an LSTM's recurrent products run by W_hh packed once per pass (PackedWeight, on AVX-512
    /// CPUs), forward (accumulated onto the gates) and backward; in Double by OpenBLAS. The two agree to
    /// Float's rounding: outputs, dx and every parameter's gradient, over a carried state, a batch past a
    /// block of 12 rows and 4H = 80 (panels of 32, 32 and 16), on one thread and two (the same bits).
    @Test func aFloatLSTMIsTheDoubleOneToRounding() {
        func run<T: Scalar>(_: T.Type, threads: Int) -> (y: [T], dx: [T], grads: [T]) {
            var layout = ArenaLayout()
            let lstm = LSTMLayer<T>(&layout, prefix: "", index: 0, inputSize: 7, hiddenSize: 20, weightNorm: true)
            var rng = RNG(seed: 12)
            let arena = ParameterArena<T>(layout: layout)
            arena.initialize(rng: &rng)
            let ctx = ModelContext(arena: arena, rng: RNG(seed: 0))
            lstm.state = .init(h: (0..<13 * 20).map { _ in T(0.5 * rng.nextNormal()) }, c: (0..<13 * 20).map { _ in T(rng.nextNormal()) })
            let x = Tensor<T>(shape: [5, 13, 7], scalars: (0..<5 * 13 * 7).map { _ in T(rng.nextNormal()) })
            let dy = Tensor<T>(shape: [5, 13, 20], scalars: (0..<5 * 13 * 20).map { _ in T(rng.nextNormal()) })
            return Compute.withThreads(threads) {
                let y = lstm.forward(x, ctx)
                arena.zeroGrads()
                let dx = lstm.backward(dy, ctx, needsInputGradient: true)!
                return (y.scalars, dx.scalars, Array(UnsafeBufferPointer(start: arena.grads, count: arena.count)))
            }
        }
        func worst<T: Scalar>(_ a: [T], _ b: [Double]) -> Double {
            #expect(a.count == b.count)
            return zip(a, b).map { abs(Double($0) - $1) / max(1, abs($1)) }.max() ?? .infinity
        }
        let reference = run(Double.self, threads: 1), float = run(Float.self, threads: 1)
        #expect(worst(float.y, reference.y) < 1e-5)
        #expect(worst(float.dx, reference.dx) < 1e-5)
        #expect(worst(float.grads, reference.grads) < 1e-4)
        let twoThreads = run(Float.self, threads: 2)
        #expect(twoThreads.y == float.y && twoThreads.dx == float.dx)
    }
}

@Suite struct DataDependentInitTests {
    /// Salimans & Kingma's init: after it, each unit's pre-activation over the init batch has mean 0, std 1.
    @Test(arguments: ["mlp-wn", "cnn-wn"])
    func preActivationsAreStandardized(name: String) {
        var rng = RNG(seed: 9)
        let model = try! ShippedSpecs.predictor(name, height: 12, width: 12, classes: 10, rng: &rng, as: Double.self)!
        let inputs = Tensor(shape: [32, 144], scalars: (0..<32 * 144).map { _ in rng.nextUnitDouble() })
        model.initializeFromData(Batch(inputs: inputs, labels: Array(repeating: 0, count: 32)), reduce: { _ in })
        // Run the network again, and look at the output of every weight-normalized layer.
        var x = inputs
        var checked = 0
        for layer in model.network.layers {
            x = layer.forward(x, model.context)
            let perUnit: [[Double]]
            if layer is Dense<Double> {
                let (b, f) = (x.shape[0], x.shape[1])
                perUnit = (0..<f).map { j in (0..<b).map { x.scalars[$0 * f + j] } }
            } else if layer is Conv2d<Double> {
                let n = x.count / x.shape[0]
                perUnit = (0..<x.shape[0]).map { Array(x.scalars[$0 * n..<($0 + 1) * n]) }
            } else {
                continue
            }
            for values in perUnit {
                let mean = values.reduce(0, +) / Double(values.count)
                let std = (values.map { ($0 - mean) * ($0 - mean) }.reduce(0, +) / Double(values.count)).squareRoot()
                #expect(abs(mean) < 1e-6)
                #expect(abs(std - 1) < 1e-4)
            }
            checked += 1
        }
        #expect(checked == (name == "mlp-wn" ? 3 : 4))
    }

    @Test func statisticsGoThroughTheReducer() {
        // A reducer that doubles every sum (as if a second replica saw the same batch) changes nothing;
        // one that reports other statistics changes g, so the reducer is really what decides.
        func gAfterInit(_ reduce: StatisticsReducer) -> [Double] {
            var rng = RNG(seed: 3)
            let m = try! ShippedSpecs.predictor("mlp-wn", height: 4, width: 4, classes: 3, rng: &rng, as: Double.self)!
            let x = Tensor(shape: [8, 16], scalars: (0..<128).map { _ in rng.nextUnitDouble() })
            m.initializeFromData(Batch(inputs: x, labels: Array(repeating: 0, count: 8)), reduce: reduce)
            let g = m.arena.layout.slot(named: "layers.0.weight_g")!
            return Array(UnsafeBufferPointer(start: m.arena.value(g), count: g.count))
        }
        let alone = gAfterInit { _ in }
        let doubled = gAfterInit { s in for i in s.indices { s[i] *= 2 } }
        let skewed = gAfterInit { s in for i in stride(from: 1, to: s.count - 1, by: 2) { s[i] *= 1.5 } }
        #expect(zip(alone, doubled).allSatisfy { abs($0 - $1) < 1e-9 })
        #expect(zip(alone, skewed).contains { abs($0 - $1) > 1e-3 })
    }
}

@Suite struct OptimizerTests {
    func run(_ config: OptimizerConfig, lr: Double, grads: [[Double]], start: [Double]) -> [Double] {
        var layout = ArenaLayout()
        _ = layout.add("p", shape: [start.count], initializer: .zeros)
        let arena = ParameterArena<Double>(layout: layout)
        for i in start.indices { arena.values[i] = start[i] }
        let opt = try! Optimizer<Double>(config, layout: layout)
        for g in grads {
            for i in g.indices { arena.grads[i] = g[i] }
            opt.step(arena, lr: lr)
        }
        return (0..<start.count).map { arena.values[$0] }
    }

    @Test func adamMatchesTheHandComputedUpdate() {
        var c = OptimizerConfig(); c.kind = .adam
        let p = run(c, lr: 0.1, grads: [[0.5], [-1]], start: [1])
        // step 1: m = 0.05, v = 0.00025, mhat = 0.5, vhat = 0.25 -> p = 1 - 0.1 * 0.5 / (0.5 + eps)
        // step 2: m = -0.055, v = 0.00124975, mhat = -0.055/0.19, vhat = 0.00124975/0.001999
        let p1 = 1 - 0.1 * 0.5 / (0.5 + 1e-8)
        let expected = p1 + 0.1 * (0.055 / 0.19) / ((0.00124975 / 0.001999).squareRoot() + 1e-8)
        #expect(abs(p[0] - expected) < 1e-12)
    }

    @Test func adamWDecaysTheWeightsDirectly() {
        var c = OptimizerConfig(); c.kind = .adamw; c.weightDecay = 0.5
        let p = run(c, lr: 0.1, grads: [[0.5]], start: [2])
        #expect(abs(p[0] - (2 * (1 - 0.05) - 0.1)) < 1e-7)
        c.kind = .adam  // coupled: the decay enters the gradient, then Adam normalizes it away on step 1
        #expect(abs(run(c, lr: 0.1, grads: [[0.5]], start: [2])[0] - 1.9) < 1e-7)
    }

    @Test func sgdWithNesterovMomentumAndWeightDecay() {
        var c = OptimizerConfig(); c.kind = .sgd; c.momentum = 0.9; c.nesterov = true; c.weightDecay = 0.1
        let p = run(c, lr: 0.5, grads: [[1], [2]], start: [1])
        // step 1: d = 1 + 0.1 = 1.1, buf = 1.1, p = 1 - 0.5 (1.1 + 0.99) = -0.045
        // step 2: d = 2 - 0.0045 = 1.9955, buf = 0.99 + 1.9955 = 2.9855, p = -0.045 - 0.5 (1.9955 + 2.68695)
        #expect(abs(p[0] - (-0.045 - 0.5 * (1.9955 + 0.9 * 2.9855))) < 1e-12)
    }

    /// A parameter of 100,003 values (3 slices of the element grain and a ragged end): each optimizer's
    /// update is the same bits on 1 and 3 threads, two steps in, and each element's update is its own
    /// (the same as a parameter of that one value).
    @Test(arguments: [OptimizerConfig.Kind.adam, .adamw, .sgd, .adagrad])
    func anUpdateIsTheSameOnAnyThreadCount(kind: OptimizerConfig.Kind) {
        var c = OptimizerConfig()
        (c.kind, c.momentum, c.weightDecay) = (kind, kind == .sgd ? 0.9 : 0, 0.01)
        let n = 100_003
        let start = (0..<n).map { sin(Double($0)) }, grads = [(0..<n).map { cos(Double($0) * 0.7) }, (0..<n).map { sin(Double($0) * 1.3) }]
        let one = Compute.withThreads(1) { run(c, lr: 0.05, grads: grads, start: start) }
        let three = Compute.withThreads(3) { run(c, lr: 0.05, grads: grads, start: start) }
        #expect(one.indices.first { one[$0] != three[$0] } == nil, "\(kind): the first index where 1 and 3 threads differ")
        for i in [0, 33_334, n - 1] {
            #expect(run(c, lr: 0.05, grads: grads.map { [$0[i]] }, start: [start[i]]) == [one[i]], "\(kind), element \(i)")
        }
    }

    @Test func plainSGD() {
        var c = OptimizerConfig(); c.kind = .sgd
        #expect(run(c, lr: 0.1, grads: [[1, -2], [1, -2]], start: [0, 0]) == [-0.2, 0.4])
    }

    @Test func learningRateSchedules() {
        var s = LRSchedule(); s.baseLR = 1; s.warmupSteps = 4
        #expect((0..<5).map { s.lr(at: $0, totalSteps: 14) } == [0.25, 0.5, 0.75, 1, 1])
        s.kind = .step; s.stepSize = 2; s.gamma = 0.5
        #expect((4..<10).map { s.lr(at: $0, totalSteps: 14) } == [1, 1, 0.5, 0.5, 0.25, 0.25])
        s.kind = .cosine; s.minLR = 0.1
        #expect(s.lr(at: 4, totalSteps: 14) == 1)
        #expect(abs(s.lr(at: 9, totalSteps: 14) - 0.55) < 1e-12)
        #expect(abs(s.lr(at: 14, totalSteps: 14) - 0.1) < 1e-12)
        #expect(abs(s.lr(at: 100, totalSteps: 14) - 0.1) < 1e-12)
    }
}

/// A cluster worker all-reduces the gradients a model reports final while backward goes on, so a report
/// must never come before the last write to the gradients it covers.
@Suite struct GradientsReadyTests {
    /// Runs `backward`, snapshotting the reported final gradients at each report; checks they did not change
    /// afterwards and that the last report covers the whole arena.
    func checkReports(arena: ParameterArena<Double>, context: ModelContext<Double>, _ backward: () -> Void) {
        var snapshots: [(offset: Int, values: [Double])] = []
        context.gradientsReady = { offset in
            snapshots.append((offset, Array(UnsafeBufferPointer(start: arena.grads + offset, count: arena.count - offset))))
        }
        arena.zeroGrads()
        backward()
        context.gradientsReady = nil
        #expect(snapshots.count >= 2)
        #expect(snapshots.last?.offset == 0)
        #expect(zip(snapshots, snapshots.dropFirst()).allSatisfy { $0.offset >= $1.offset }, "reports go down the arena")
        for s in snapshots {
            let changed = s.values.indices.filter { arena.grads[s.offset + $0] != s.values[$0] }.count
            #expect(changed == 0, "\(changed) gradients at offsets >= \(s.offset) changed after they were reported final")
        }
    }

    @Test(arguments: ["mlp-wn", "cnn-wn"])
    func aClassifierReportsOnlyFinalGradients(name: String) {
        var rng = RNG(seed: 4)
        let model = try! ShippedSpecs.predictor(name, height: 12, width: 12, classes: 10, rng: &rng, as: Double.self)!
        let batch = Batch(
            inputs: Tensor(shape: [8, 144], scalars: (0..<8 * 144).map { _ in rng.nextUnitDouble() }), labels: (0..<8).map { Int32($0) })
        checkReports(arena: model.arena, context: model.context) { _ = model.accumulateGradients(batch, scale: 1) }
    }

    /// The decoder writes into the encoder's weights: those must not be reported before the encoder is done.
    @Test func theTiedAutoencoderReportsSharedWeightsLast() {
        var rng = RNG(seed: 5)
        let model = TiedAutoencoder<Double>(features: 20, hidden: [8, 4], rng: &rng)
        let images = Tensor(shape: [6, 20], scalars: (0..<120).map { _ in rng.nextUnitDouble() })
        checkReports(arena: model.arena, context: model.context) { _ = model.accumulateGradients(images, scale: 1) }
    }
}

@Suite struct FrozenParameterTests {
    /// Frozen, a weight-normalized layer keeps the weight it computed under this freeze (a changed g is
    /// not seen); thawed, or frozen anew, it computes it again.
    @Test func aFrozenWeightNormalizedLayerComputesItsWeightOncePerFreeze() {
        var layout = ArenaLayout()
        let dense = Dense<Double>(&layout, prefix: "", inFeatures: 3, outFeatures: 2, weightNorm: true)
        let arena = ParameterArena<Double>(layout: layout)
        var rng = RNG(seed: 3)
        arena.initialize(rng: &rng)
        let ctx = ModelContext(arena: arena, rng: rng)
        let x = Tensor<Double>(shape: [1, 3], scalars: [1, 2, 3])
        let g = arena.value(layout.slot(named: "weight_g")!)
        let before = dense.forward(x, ctx).scalars
        ctx.freezeParameters()
        #expect(dense.forward(x, ctx).scalars == before)
        g[0] *= 2
        #expect(dense.forward(x, ctx).scalars == before)  // computed once under this freeze
        ctx.freezeParameters()
        let refrozen = dense.forward(x, ctx).scalars
        #expect(refrozen != before)
        g[0] /= 2
        ctx.thawParameters()
        #expect(dense.forward(x, ctx).scalars == before)
    }

    /// Frozen, a Winograd convolution transforms its weights once per freeze: a plain weight changed
    /// under the freeze is not seen (the arena is read again only when frozen anew or thawed).
    @Test func aFrozenWinogradConvolutionTransformsItsWeightsOncePerFreeze() {
        var layout = ArenaLayout()
        let conv = Conv2d<Double>(&layout, prefix: "", inChannels: 2, outChannels: 3, kernel: 3, padding: 1)
        let arena = ParameterArena<Double>(layout: layout)
        var rng = RNG(seed: 6)
        arena.initialize(rng: &rng)
        let ctx = ModelContext(arena: arena, rng: rng)
        let x = Tensor<Double>(shape: [2, 1, 4, 4], scalars: (0..<32).map { Double($0 % 7) - 3 })
        let before = conv.forward(x, ctx).scalars
        ctx.freezeParameters()
        #expect(conv.forward(x, ctx).scalars == before)
        arena.value(layout.slot(named: "weight")!)[0] += 1
        #expect(conv.forward(x, ctx).scalars == before)  // transformed once under this freeze
        ctx.freezeParameters()
        let refrozen = conv.forward(x, ctx).scalars
        #expect(refrozen != before)
        ctx.thawParameters()
        #expect(conv.forward(x, ctx).scalars == refrozen)
    }

    /// Frozen, a Winograd convolution, the 2x2 max pool after it and the activation after that run as
    /// one pass (Conv2d.forwardPooled): the same bits as the three layers one by one, in Float and
    /// Double, for 3x3 and 5x5, even and odd sides (the pool drops an odd side's last row), with a
    /// leaky ReLU, a ReLU or no activation after the pool.
    @Test(arguments: [(3, 8, 0.0), (3, 7, 0.1), (5, 9, -1.0), (5, 6, 0.0)])
    func aFrozenConvolutionPoolAndActivationRunAsOnePassWithTheSameBits(kernel: Int, side: Int, slope: Double) {
        func outputs<T: Scalar>(_: T.Type) -> (layers: [T], fused: [T]) {
            var layout = ArenaLayout()
            let conv = Conv2d<T>(&layout, prefix: "", inChannels: 3, outChannels: 13, kernel: kernel, padding: kernel / 2, weightNorm: true)
            let tail: [any Layer<T>] = slope < 0 ? [] : [Activation<T>(leakySlope: slope)]
            let pool = MaxPool2d<T>(kernel: 2)
            let network = Sequential<T>([conv, pool] + tail)
            let arena = ParameterArena<T>(layout: layout)
            var rng = RNG(seed: 8)
            arena.initialize(rng: &rng)
            arena.value(layout.slot(named: "bias")!).update(repeating: T(-0.05), count: 13)
            let ctx = ModelContext(arena: arena, rng: rng)
            let x = Tensor<T>(shape: [3, 5, side, side], scalars: (0..<3 * 5 * side * side).map { _ in T(rng.nextNormal()) })
            ctx.freezeParameters()
            let fused = network.forward(x, ctx)
            // the pool layer never ran: it has no forward for a backward to follow
            #expect(pool.backward(fused, ctx, needsInputGradient: true) == nil)
            ctx.thawParameters()
            let layers = network.forward(x, ctx)
            #expect(fused.shape == layers.shape && layers.shape == [13, 5, side / 2, side / 2])
            return (layers.scalars, fused.scalars)
        }
        let float = outputs(Float.self), double = outputs(Double.self)
        #expect(float.fused.map(\.bitPattern) == float.layers.map(\.bitPattern))
        #expect(double.fused.map(\.bitPattern) == double.layers.map(\.bitPattern))
        #expect(float.layers.contains { $0 < 0 } == (slope != 0), "a ReLU leaves no negative value; a leaky one and none do")
    }

    /// Frozen, a Float dense layer multiplies by its weight packed once per freeze (PackedWeight, where
    /// the CPU has AVX-512): the same outputs as OpenBLAS's GEMM to rounding, with and without a bias
    /// and weight norm, and a weight changed and frozen anew is packed anew.
    @Test(
        .enabled(if: PackedWeight<Float>(packing: [1], outputs: 1, inputs: 1) != nil, "this CPU has no AVX-512: no packed weight"),
        arguments: [(true, true), (false, true), (true, false)])
    func aFrozenDenseLayerMultipliesByItsPackedWeight(weightNorm: Bool, bias: Bool) throws {
        var layout = ArenaLayout()
        let dense = Dense<Float>(&layout, prefix: "", inFeatures: 70, outFeatures: 45, bias: bias, weightNorm: weightNorm)
        let arena = ParameterArena<Float>(layout: layout)
        var rng = RNG(seed: 4)
        arena.initialize(rng: &rng)
        if bias { arena.value(layout.slot(named: "bias")!).update(repeating: 0.25, count: 45) }
        let ctx = ModelContext(arena: arena, rng: rng)
        let x = Tensor<Float>(shape: [13, 70], scalars: (0..<13 * 70).map { _ in Float(rng.nextNormal()) })
        func agree(_ a: [Float], _ b: [Float]) -> Bool { zip(a, b).allSatisfy { abs($0 - $1) <= 1e-5 * max(1, abs($1)) } }
        let unpacked = dense.forward(x, ctx).scalars
        ctx.freezeParameters()
        let packed = dense.forward(x, ctx).scalars
        #expect(agree(packed, unpacked))
        let weight = arena.value(layout.slot(named: weightNorm ? "weight_g" : "weight")!)
        weight[0] *= 2
        // packed once under this freeze (a plain weight is read from the arena on the unpacked path)
        #expect(dense.forward(x, ctx).scalars == packed)
        ctx.freezeParameters()
        let repacked = dense.forward(x, ctx).scalars
        // a network of the layer and a leaky ReLU runs them as one pass: the same bits as one by one
        let activation = Activation<Float>(leakySlope: 0.1)
        let oneByOne = activation.forward(dense.forward(x, ctx), ctx).scalars
        #expect(Sequential<Float>([dense, activation]).forward(x, ctx).scalars.map(\.bitPattern) == oneByOne.map(\.bitPattern))
        ctx.thawParameters()
        #expect(agree(repacked, dense.forward(x, ctx).scalars) && repacked[0] != packed[0])
    }
}
