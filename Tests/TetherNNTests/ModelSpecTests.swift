import Testing
@testable import TetherNN
import TetherTensor

/// Model specs: shapes inferred through every layer kind, the errors that name a layer that does not fit,
/// the new layers' backward against central differences, and a network using every kind at once.
@Suite struct ModelSpecTests {
    static func layer(_ kind: LayerSpec.Kind, _ set: (inout LayerSpec) -> Void = { _ in }) -> LayerSpec {
        var l = LayerSpec(kind)
        set(&l)
        return l
    }

    /// One spec with every kind, in Double: the shapes each layer gives.
    static let everyKind = ModelSpec(
        name: "every", input: [2, 9, 9],
        layers: [
            layer(.conv2d) { ($0.out, $0.kernel, $0.padding, $0.weightNorm) = (4, 3, 1, true) },  // (4, 9, 9)
            layer(.batchNorm),
            layer(.leakyRelu) { $0.slope = 0.1 },
            layer(.maxPool) { ($0.kernel, $0.stride) = (3, 2) },  // (4, 4, 4)
            layer(.conv2d) { ($0.out, $0.kernel, $0.stride) = (3, 2, 2) },  // (3, 2, 2)
            layer(.gelu),
            layer(.avgPool) { $0.kernel = 2 },  // (3, 1, 1)
            layer(.flatten),  // (3)
            layer(.dense) { ($0.out, $0.weightNorm) = (5, true) },
            layer(.batchNorm) { $0.meanOnly = true },
            layer(.tanh),
            layer(.dropout) { $0.rate = 0.3 },
            layer(.dense) { ($0.out, $0.bias) = (6, false) },
            layer(.sigmoid),
            layer(.relu),
            layer(.dense) { $0.out = 4 }
        ])

    @Test func shapesAreInferredThroughEveryKind() throws {
        #expect(
            try Self.everyKind.shapes() == [
                .image(channels: 4, height: 9, width: 9), .image(channels: 4, height: 9, width: 9),
                .image(channels: 4, height: 9, width: 9), .image(channels: 4, height: 4, width: 4),
                .image(channels: 3, height: 2, width: 2), .image(channels: 3, height: 2, width: 2),
                .image(channels: 3, height: 1, width: 1), .features(3), .features(5), .features(5), .features(5), .features(5),
                .features(6), .features(6), .features(6), .features(4)
            ])
        #expect(try Self.everyKind.classes() == 4)
        // conv 4*2*9 + 4 + 4 (g), full bn 4 + 4, conv 3*4*4 + 3, dense 5*3 + 5 + 5, mean-only bn 5, dense 6*5, dense 4*6 + 4
        #expect(try Self.everyKind.parameterCount() == 80 + 8 + 51 + 25 + 5 + 30 + 28)
        var layout = ArenaLayout()
        let network = try Self.everyKind.network(&layout, as: Double.self)
        // buffers are named by the spec's index too (the network puts a layout swap of its own first)
        #expect(network.bufferOwners.map(\.prefix) == ["layers.1.", "layers.9."])
        #expect(layout.entries.reduce(0) { $0 + $1.count } == (try Self.everyKind.parameterCount()))
        #expect(layout.entries.map(\.name).contains("layers.0.weight_g") && layout.entries.map(\.name).contains("layers.15.bias"))
    }

    @Test(
        arguments: [
            (
                ModelSpec(name: "m", input: [784], layers: [layer(.conv2d) { ($0.out, $0.kernel) = (4, 3) }]),
                "layer 0 (conv2d) gets (784): conv2d takes an image (C, H, W)"
            ),
            (
                ModelSpec(name: "m", input: [1, 8, 8], layers: [layer(.dense) { $0.out = 4 }]),
                "layer 0 (dense) gets (1, 8, 8): dense takes features (F); put a flatten before it"
            ),
            (
                ModelSpec(name: "m", input: [1, 4, 4], layers: [layer(.relu), layer(.maxPool) { $0.kernel = 5 }]),
                "layer 1 (max-pool) gets (1, 4, 4): a 5x5 window does not fit 4x4"
            ),
            (
                ModelSpec(name: "m", input: [3, 4, 4], layers: [layer(.conv2d) { $0.out = 2 }]),
                "layer 0 (conv2d) gets (3, 4, 4): give its kernel"
            ),
            (
                ModelSpec(name: "m", input: [3, 4, 4], layers: [layer(.conv2d) { ($0.out, $0.kernel) = (2, 7) }]),
                "a 7x7 kernel does not fit 4x4 with padding 0"
            ),
            (
                ModelSpec(name: "m", input: [6], layers: [layer(.dropout) { $0.rate = 1 }]),
                "layer 0 (dropout) gets (6): rate 1.0 is not in [0, 1)"
            ),
            (ModelSpec(name: "m", input: [6], layers: [layer(.dense) { $0.out = 1 << 40 }]), "out 1099511627776 is not in 1...16777216"),
            (
                ModelSpec(name: "m", input: [6, 1 << 30, 1], layers: [layer(.flatten)]),
                "input [6, 1073741824, 1]: each size must be in 1...16777216"
            ),
            (ModelSpec(name: "m", input: [2, 2], layers: [layer(.relu)]), "give (C, H, W) for images or (F) for features"),
            (ModelSpec(name: "m", input: [6], layers: []), "0 layers")
        ] as [(ModelSpec, String)])
    func aLayerThatDoesNotFitIsNamedWithBothShapes(spec: ModelSpec, message: String) {
        #expect { try spec.shapes() } throws: { "\($0)".contains(message) }
    }

    @Test func crossEntropyNeedsClassScoresLast() {
        let spec = ModelSpec(name: "m", input: [1, 4, 4], layers: [Self.layer(.relu)])
        #expect { try spec.classes() } throws: { "\($0)".contains("the last layer gives the classes' scores (F >= 2); it gives (1, 4, 4)") }
    }

    @Test(arguments: [true, false])
    func batchNorm(channelsFirst: Bool) {
        var layout = ArenaLayout()
        let l = BatchNorm<Double>(&layout, prefix: "", features: 3, channelsFirst: channelsFirst)
        var check = GradientCheck(layout: layout, layer: l, inputShape: channelsFirst ? [3, 4, 2, 2] : [5, 3])
        #expect(check.maxError() < tolerance)
    }

    @Test(arguments: Pointwise<Double>.Function.allCases)
    func pointwise(function: Pointwise<Double>.Function) {
        var check = GradientCheck(layout: ArenaLayout(), layer: Pointwise<Double>(function), inputShape: [4, 9])
        #expect(check.maxError() < tolerance)
    }

    @Test(arguments: [(2, 2, 6, 6), (3, 2, 7, 8), (2, 1, 5, 4), (3, 3, 3, 3)])
    func avgPool(kernel: Int, stride: Int, h: Int, w: Int) {
        var check = GradientCheck(layout: ArenaLayout(), layer: AvgPool2d<Double>(kernel: kernel, stride: stride), inputShape: [2, 3, h, w])
        #expect(check.maxError() < tolerance)
    }

    /// Binary cross-entropy on one logit: the classifier's gradients through the spec network and the
    /// logistic loss against central differences of its mean loss.
    @Test func binaryCrossEntropyHasTheGradientsOfItsLoss() throws {
        let spec = ModelSpec(
            name: "b", input: [5],
            layers: [Self.layer(.dense) { ($0.out, $0.weightNorm) = (4, true) }, Self.layer(.tanh), Self.layer(.dense) { $0.out = 1 }],
            loss: .binaryCrossEntropy)
        #expect(try spec.classes() == 2)
        var layout = ArenaLayout(), rng = RNG(seed: 3)
        let network = try spec.network(&layout, as: Double.self)
        let model = Classifier(kind: "spec", layout: layout, network: network, binary: true, rng: &rng)
        #expect(model.arena.count == 5 * 4 + 4 + 4 + 4 + 1)
        let batch = Batch(inputs: Tensor(shape: [4, 5], scalars: (0..<20).map { _ in rng.nextNormal() }), labels: [0, 1, 1, 0])
        for i in 0..<model.arena.count { model.arena.values[i] += 0.2 * rng.nextNormal() }
        model.arena.zeroGrads()
        _ = model.accumulateGradients(batch, scale: 1.0 / 4)
        var worst = 0.0
        for i in 0..<model.arena.count {
            let old = model.arena.values[i], h = 1e-5
            model.arena.values[i] = old + h; let lp = model.evaluate(batch).meanLoss
            model.arena.values[i] = old - h; let lm = model.evaluate(batch).meanLoss
            model.arena.values[i] = old
            let numeric = (lp - lm) / (2 * h)
            worst = max(worst, abs(model.arena.grads[i] - numeric) / max(1, abs(numeric)))
        }
        #expect(worst < tolerance, "worst relative error \(worst)")
    }

    /// The whole spec network, as the Sequential it builds (dropout's mask and batch statistics the same
    /// on every evaluation), against central differences, through parameters and input.
    @Test func aSpecUsingEveryKindHasTheGradientsOfItsLoss() throws {
        var layout = ArenaLayout()
        let network = try Self.everyKind.network(&layout, as: Double.self)
        var check = GradientCheck(layout: layout, layer: NetworkLayer(network), inputShape: [3, 2 * 9 * 9])
        #expect(check.maxError() < tolerance)
    }
}

/// A Sequential network as one layer, for GradientCheck.
final class NetworkLayer: Layer {
    let network: Sequential<Double>
    init(_ network: Sequential<Double>) { self.network = network }
    var parameterSlots: [ParameterSlot] { [] }
    func forward(_ x: Tensor<Double>, _ ctx: ModelContext<Double>) -> Tensor<Double> { network.forward(x, ctx) }
    func backward(_ dy: Tensor<Double>, _ ctx: ModelContext<Double>, needsInputGradient: Bool) -> Tensor<Double>? {
        network.backward(dy, ctx, needsInputGradient: needsInputGradient)
    }
}
