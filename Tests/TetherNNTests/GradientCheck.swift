import TetherJobFile
import Testing
@testable import TetherNN
import TetherTensor

/// Central finite differences in Double against a layer's backward.
///
/// The loss is L = sum(y * R) for a fixed random R, so dL/dy = R. Every parameter of the arena and every
/// input element is perturbed by +-h; the analytic gradient must agree to `tolerance` relative to
/// max(1, |g|). Dropout and batch statistics see the same RNG state and batch on every evaluation.
struct GradientCheck {
    let layer: any Layer<Double>
    let arena: ParameterArena<Double>
    let ctx: ModelContext<Double>
    var input: Tensor<Double>
    let h = 1e-5

    init(
        layout: ArenaLayout, layer: any Layer<Double>, inputShape: [Int], seed: UInt64 = 1,
        perturbParameters: (ParameterArena<Double>, inout RNG) -> Void = { _, _ in }
    ) {
        var rng = RNG(seed: seed)
        arena = ParameterArena(layout: layout)
        arena.initialize(rng: &rng)
        // Move every parameter off its special init value (g = 1, b = 0) so no term hides.
        for e in layout.entries { for i in 0..<e.count { arena.values[e.offset + i] += 0.3 * rng.nextNormal() } }
        perturbParameters(arena, &rng)
        ctx = ModelContext(arena: arena, rng: RNG(seed: seed + 100))
        input = Tensor(shape: inputShape, scalars: (0..<inputShape.reduce(1, *)).map { _ in rng.nextNormal() })
        self.layer = layer
    }

    private func loss(_ r: Tensor<Double>) -> Double {
        let saved = ctx.rng
        defer { ctx.rng = saved }
        let y = layer.forward(input, ctx)
        return zip(y.scalars, r.scalars).reduce(0) { $0 + $1.0 * $1.1 }
    }

    /// Returns the largest relative error over parameters and inputs.
    mutating func maxError(checkInput: Bool = true) -> Double {
        let saved = ctx.rng
        let y = layer.forward(input, ctx)
        var rng = RNG(seed: 77)
        let r = Tensor(shape: y.shape, scalars: y.scalars.map { _ in rng.nextNormal() })
        ctx.rng = saved
        arena.zeroGrads()
        _ = layer.forward(input, ctx)
        let dx = layer.backward(r, ctx, needsInputGradient: checkInput)
        ctx.rng = saved
        var worst = 0.0
        func compare(_ analytic: Double, _ numeric: Double) {
            worst = max(worst, abs(analytic - numeric) / max(1, abs(analytic), abs(numeric)))
        }
        for i in 0..<arena.count {
            let old = arena.values[i]
            arena.values[i] = old + h; let lp = loss(r)
            arena.values[i] = old - h; let lm = loss(r)
            arena.values[i] = old
            compare(arena.grads[i], (lp - lm) / (2 * h))
        }
        if checkInput {
            let dx = dx!
            #expect(dx.shape == input.shape)
            for i in 0..<input.count {
                let old = input.scalars[i]
                input.scalars[i] = old + h; let lp = loss(r)
                input.scalars[i] = old - h; let lm = loss(r)
                input.scalars[i] = old
                compare(dx.scalars[i], (lp - lm) / (2 * h))
            }
        }
        return worst
    }
}

let tolerance = 1e-6

@Suite("Finite-difference checks of every layer, in Double")
struct LayerGradientTests {
    @Test(arguments: [false, true])
    func dense(weightNorm: Bool) {
        var layout = ArenaLayout()
        let l = Dense<Double>(&layout, prefix: "", inFeatures: 7, outFeatures: 5, weightNorm: weightNorm)
        var check = GradientCheck(layout: layout, layer: l, inputShape: [4, 7])
        #expect(check.maxError() < tolerance)
        #expect(layout.entries.map(\.name) == (weightNorm ? ["weight_g", "weight_v", "bias"] : ["weight", "bias"]))
    }

    @Test func denseWithoutBias() {
        var layout = ArenaLayout()
        let l = Dense<Double>(&layout, prefix: "", inFeatures: 3, outFeatures: 2, bias: false)
        var check = GradientCheck(layout: layout, layer: l, inputShape: [5, 3])
        #expect(check.maxError() < tolerance)
    }

    struct ConvCase: Sendable, CustomTestStringConvertible {
        var c, oc, h, w, k, stride, padding: Int
        var weightNorm: Bool
        var oneSamplePerChunk = false
        var testDescription: String {
            "C\(c)->\(oc) \(h)x\(w) k\(k) s\(stride) p\(padding)\(weightNorm ? " wn" : "")\(oneSamplePerChunk ? " chunked" : "")"
        }
    }

    @Test(arguments: [
        ConvCase(c: 1, oc: 3, h: 6, w: 6, k: 5, stride: 1, padding: 2, weightNorm: false),
        ConvCase(c: 2, oc: 3, h: 7, w: 5, k: 3, stride: 2, padding: 1, weightNorm: false),
        ConvCase(c: 2, oc: 4, h: 6, w: 6, k: 5, stride: 1, padding: 2, weightNorm: true),
        ConvCase(c: 3, oc: 2, h: 8, w: 7, k: 3, stride: 2, padding: 0, weightNorm: true),
        // im2col and the GEMMs a sample at a time, backward recomputing col for all but the last chunk
        ConvCase(c: 2, oc: 4, h: 6, w: 6, k: 5, stride: 1, padding: 2, weightNorm: true, oneSamplePerChunk: true),
        ConvCase(c: 2, oc: 3, h: 7, w: 5, k: 3, stride: 2, padding: 1, weightNorm: false, oneSamplePerChunk: true),
        // 3x3 stride 1 (and 5x5 ones, above and below): forward and dx by Winograd (odd and even output sides, each padding it takes)
        ConvCase(c: 3, oc: 4, h: 6, w: 5, k: 3, stride: 1, padding: 1, weightNorm: false),
        ConvCase(c: 2, oc: 3, h: 7, w: 6, k: 3, stride: 1, padding: 0, weightNorm: true),
        ConvCase(c: 2, oc: 2, h: 3, w: 4, k: 3, stride: 1, padding: 2, weightNorm: false, oneSamplePerChunk: true),
        // 5x5 stride 1 by Winograd too: the first case above and these
        ConvCase(c: 2, oc: 3, h: 7, w: 6, k: 5, stride: 1, padding: 0, weightNorm: false),
        ConvCase(c: 1, oc: 2, h: 3, w: 5, k: 5, stride: 1, padding: 4, weightNorm: false)
    ])
    func conv2d(_ c: ConvCase) {
        var layout = ArenaLayout()
        let l = Conv2d<Double>(
            &layout, prefix: "", inChannels: c.c, outChannels: c.oc, kernel: c.k,
            stride: c.stride, padding: c.padding, weightNorm: c.weightNorm)
        if c.oneSamplePerChunk { l.chunkElements = 1 }
        var check = GradientCheck(layout: layout, layer: l, inputShape: [c.c, 3, c.h, c.w])
        #expect(check.maxError() < tolerance)
    }

    @Test(arguments: [(2, 2, 6, 6), (3, 2, 7, 7), (2, 1, 5, 4)])
    func maxPool(kernel: Int, stride: Int, h: Int, w: Int) {
        // Random continuous inputs have no ties, so the max is differentiable everywhere checked.
        var check = GradientCheck(layout: ArenaLayout(), layer: MaxPool2d<Double>(kernel: kernel, stride: stride), inputShape: [2, 3, h, w])
        #expect(check.maxError() < tolerance)
    }

    @Test(arguments: [0.0, 0.1])
    func activation(slope: Double) {
        var check = GradientCheck(layout: ArenaLayout(), layer: Activation<Double>(leakySlope: slope), inputShape: [4, 9])
        #expect(check.maxError() < tolerance)
    }

    @Test(arguments: [false, true])
    func meanOnlyBatchNorm(channelsFirst: Bool) {
        var layout = ArenaLayout()
        let l = MeanOnlyBatchNorm<Double>(&layout, prefix: "", features: 3, channelsFirst: channelsFirst)
        var check = GradientCheck(layout: layout, layer: l, inputShape: channelsFirst ? [3, 2, 4, 4] : [6, 3])
        #expect(check.maxError() < tolerance)
    }

    @Test func dropout() {
        var check = GradientCheck(layout: ArenaLayout(), layer: Dropout<Double>(probability: 0.4), inputShape: [5, 8])
        #expect(check.maxError() < tolerance)
    }

    @Test(arguments: [true, false])
    func layoutSwap(toConv: Bool) {
        let l = LayoutSwap<Double>(toConv: toConv, channels: 3, height: 2, width: 4)
        var check = GradientCheck(layout: ArenaLayout(), layer: l, inputShape: toConv ? [5, 24] : [3, 5, 2, 4])
        #expect(check.maxError() < tolerance)
    }

    @Test(arguments: ["mlp", "mlp-wn", "cnn-wn"])
    func wholeModelThroughLoss(name: String) {
        // The whole network and softmax cross-entropy, on 8x8 images so that every parameter can be perturbed.
        var rng = RNG(seed: 5)
        let model = try! ShippedSpecs.predictor(name, height: 8, width: 8, classes: 4, rng: &rng, as: Double.self)!
        let batch = Batch(inputs: Tensor(shape: [3, 64], scalars: (0..<192).map { _ in rng.nextUnitDouble() }), labels: [0, 3, 1])
        for i in 0..<model.arena.count { model.arena.values[i] += 0.1 * rng.nextNormal() }
        model.arena.zeroGrads()
        _ = model.accumulateGradients(batch, scale: 1.0 / 3)
        let analytic = Array(UnsafeBufferPointer(start: model.arena.grads, count: model.arena.count))
        let h = 1e-5
        var worst = 0.0
        // every parameter of the MLPs; a strided sample of cnn-wn's ~70k (each needs two full passes)
        let indices = Array(stride(from: 0, to: model.arena.count, by: max(1, model.arena.count / 1500)))
        for i in indices {
            let old = model.arena.values[i]
            model.arena.values[i] = old + h; let lp = model.evaluate(batch).meanLoss
            model.arena.values[i] = old - h; let lm = model.evaluate(batch).meanLoss
            model.arena.values[i] = old
            let numeric = (lp - lm) / (2 * h)
            worst = max(worst, abs(analytic[i] - numeric) / max(1, abs(analytic[i]), abs(numeric)))
        }
        #expect(worst < tolerance, "worst relative error \(worst)")
    }
}
