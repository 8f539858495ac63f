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
            (
                ModelSpec(name: "m", input: [2, 2, 2, 2], layers: [layer(.relu)]),
                "give (C, H, W) for images, (T, F) for sequences or (F) for features"
            ),
            (ModelSpec(name: "m", input: [6], layers: []), "0 layers")
        ] as [(ModelSpec, String)])
    func aLayerThatDoesNotFitIsNamedWithBothShapes(spec: ModelSpec, message: String) {
        #expect { try spec.shapes() } throws: { "\($0)".contains(message) }
    }

    /// Inception-like: a concat of a 3x3 conv, the input itself and a weight-normalized 1x1 conv with a
    /// batch norm, then a dense layer.
    static let branching = ModelSpec(
        name: "branching", input: [2, 5, 5],
        layers: [
            layer(.concat) {
                $0.branches = [
                    [layer(.conv2d) { ($0.out, $0.kernel, $0.padding) = (3, 3, 1) }, layer(.relu)],
                    [],
                    [layer(.conv2d) { ($0.out, $0.kernel, $0.weightNorm) = (2, 1, true) }, layer(.batchNorm)]
                ]
            },
            layer(.flatten),
            layer(.concat) { $0.branches = [[layer(.dense) { $0.out = 4 }, layer(.tanh)], [layer(.dense) { $0.out = 3 }]] },
            layer(.dense) { $0.out = 2 }
        ])

    @Test func aConcatJoinsItsBranchesAlongChannelsOrFeatures() throws {
        #expect(try Self.branching.shapes() == [.image(channels: 7, height: 5, width: 5), .features(175), .features(7), .features(2)])
        // conv 3*2*9 + 3, conv 2*2 + 2 + 2 (g), bn 2 + 2; dense 4*175 + 4, dense 3*175 + 3; dense 2*7 + 2
        #expect(try Self.branching.parameterCounts() == [57 + 8 + 4, 0, 704 + 528, 16])
        var layout = ArenaLayout()
        let network = try Self.branching.network(&layout, as: Double.self)
        let names = layout.entries.map(\.name)
        #expect(names.contains("layers.0.branches.0.0.weight") && names.contains("layers.0.branches.2.0.weight_g"))
        #expect(names.contains("layers.2.branches.1.0.bias") && names.contains("layers.3.weight"))
        #expect(layout.entries.reduce(0) { $0 + $1.count } == (try Self.branching.parameterCount()))
        let concat = try #require(network.layers.compactMap { $0 as? Concat<Double> }.first)
        #expect(concat.bufferNames.contains("branches.2.1.running_mean"))
        let buffers = network.bufferOwners.flatMap { o in o.owner.bufferNames.map { o.prefix + $0 } }
        #expect(buffers.contains("layers.0.branches.2.1.running_mean") && buffers.allSatisfy { $0.hasPrefix("layers.0.branches.2.1.") })
    }

    @Test(
        arguments: [
            (
                [[layer(.conv2d) { ($0.out, $0.kernel) = (3, 3) }], []],
                "layer 0 (concat) gets (2, 5, 5): branch 1 gives (2, 5, 5), which does not join (3, 3, 3)"
            ),
            ([[layer(.dense) { $0.out = 3 }]], "model spec m layer 0 branch 0: layer 0 (dense) gets (2, 5, 5): dense takes features"),
            ([[layer(.concat) { $0.branches = [[]] }]], "branch 0: layer 0 (concat) is not taken inside a branch"),
            ([], "give its branches, 1 to 16 lists of layers")
        ] as [([[LayerSpec]], String)])
    func aConcatWhoseBranchesDoNotJoinIsRefused(branches: [[LayerSpec]], message: String) {
        let spec = ModelSpec(name: "m", input: [2, 5, 5], layers: [Self.layer(.concat) { $0.branches = branches }, Self.layer(.flatten)])
        #expect { try spec.shapes() } throws: { "\($0)".contains(message) }
    }

    /// Both concats' backward against central differences: their branches' parameters and the input.
    @Test(arguments: [0, 2])
    func concatBackwardMatchesFiniteDifferences(layer index: Int) throws {
        var layout = ArenaLayout()
        let network = try Self.branching.network(&layout, as: Double.self)
        let concats = network.layers.compactMap { $0 as? Concat<Double> }
        var check = GradientCheck(layout: layout, layer: concats[index == 0 ? 0 : 1], inputShape: index == 0 ? [2, 3, 5, 5] : [3, 175])
        #expect(check.maxError() < tolerance)
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
        let model = Predictor(kind: "spec", layout: layout, network: network, objective: .binary, rng: &rng)
        #expect(model.arena.count == 5 * 4 + 4 + 4 + 4 + 1)
        let batch = Batch(inputs: Tensor(shape: [4, 5], scalars: (0..<20).map { _ in rng.nextNormal() }), labels: [0, 1, 1, 0])
        for i in 0..<model.arena.count { model.arena.values[i] += 0.2 * rng.nextNormal() }
        let worst = Self.worstGradientError(model, batch)
        #expect(worst < tolerance, "worst relative error \(worst)")
    }

    /// The largest relative error of the model's gradient of its mean loss on `batch` (dense and
    /// row-sparse) against central differences, over every parameter.
    static func worstGradientError(_ model: Predictor<Double>, _ batch: Batch<Double>) -> Double {
        model.arena.zeroGrads()
        _ = model.accumulateGradients(batch, scale: 1.0 / Double(batch.count))
        var analytic = Array(UnsafeBufferPointer(start: model.arena.grads, count: model.arena.count))
        analytic.withUnsafeMutableBufferPointer { p in
            for s in model.sparseGradients { s.addDense(into: p.baseAddress! + s.slot.offset); s.clear() }
        }
        var worst = 0.0
        for i in 0..<model.arena.count {
            let old = model.arena.values[i], h = 1e-5
            model.arena.values[i] = old + h; let lp = model.evaluate(batch).meanLoss
            model.arena.values[i] = old - h; let lm = model.evaluate(batch).meanLoss
            model.arena.values[i] = old
            let numeric = (lp - lm) / (2 * h)
            worst = max(worst, abs(analytic[i] - numeric) / max(1, abs(numeric)))
        }
        return worst
    }

    /// A table through an embedding (dense and row-sparse gradients) into an MLP with two outputs,
    /// trained with mse and with l1: the gradients of the mean loss against central differences, and
    /// the summed errors the report turns into RMSE and MAE against a direct computation.
    @Test(arguments: [(ModelSpec.Loss.mse, false), (.l1, true), (.mse, true)])
    func regressionOnATableHasTheGradientsOfItsLoss(loss: ModelSpec.Loss, sparse: Bool) throws {
        let spec = ModelSpec(
            name: "r", input: [], table: .init(categorical: 3, numeric: 2),
            layers: [
                Self.layer(.embedding) { ($0.out, $0.buckets, $0.sparse) = (2, 5, sparse) },  // (3*2 + 2)
                Self.layer(.dense) { ($0.out, $0.weightNorm) = (4, true) }, Self.layer(.tanh), Self.layer(.dense) { $0.out = 2 }
            ], loss: loss)
        #expect(try spec.shapes() == [.features(8), .features(4), .features(4), .features(2)])
        #expect(try spec.classes() == 2 && spec.parameterCount() == 3 * 5 * 2 + 8 * 4 + 4 + 4 + 4 * 2 + 2)
        var layout = ArenaLayout(), rng = RNG(seed: 5)
        let network = try spec.network(&layout, as: Double.self)
        let model = Predictor(kind: "spec", layout: layout, network: network, objective: spec.objective, rng: &rng)
        #expect(model.arena.count == (try spec.parameterCount()) && model.sparseGradients.count == (sparse ? 1 : 0))
        // hashes (as the data gives them: whole numbers below 2^24; 7 and 12 share field 0's bucket 2), numbers
        let rows: [[Double]] = [[7, 9, 1, 0.5, -1], [12, 3, 1, 1.5, 0.2], [4, 9, 16_777_215, -0.3, 0.8], [0, 0, 2, 0, 0]]
        let x = Tensor(shape: [4, 5], scalars: rows.flatMap { $0 })
        let targets = Tensor(shape: [4, 2], scalars: (0..<8).map { _ in 2 * rng.nextNormal() })
        let batch = Batch(inputs: x, targets: targets)
        for i in 0..<model.arena.count { model.arena.values[i] += 0.2 * rng.nextNormal() }
        let worst = Self.worstGradientError(model, batch)
        #expect(worst < tolerance, "worst relative error \(worst)")
        // field f's value h is row f*5 + h mod 5 of the table: row 0 takes rows 2, 9 and 11
        let embedded = model.network.layers[0].forward(x, model.context), table = model.arena.values
        for (column, row) in [(0, 2), (2, 9), (4, 11)] {
            #expect(embedded.scalars[column] == table[2 * row] && embedded.scalars[column + 1] == table[2 * row + 1], "column \(column)")
        }
        #expect(Array(embedded.scalars[6..<8]) == [0.5, -1])
        let stats = model.evaluate(batch)
        let y = model.network.forward(x, model.context)
        var squared = 0.0, absolute = 0.0
        for r in 0..<4 {
            let e0: Double = y.scalars[2 * r] - targets.scalars[2 * r], e1: Double = y.scalars[2 * r + 1] - targets.scalars[2 * r + 1]
            squared += (e0 * e0 + e1 * e1) / 2
            absolute += (abs(e0) + abs(e1)) / 2
        }
        #expect(abs(stats.squaredError - squared) < 1e-12 && abs(stats.absoluteError - absolute) < 1e-12)
        #expect(abs(stats.lossSum - (loss == .mse ? squared : absolute)) < 1e-12)
        #expect(abs(stats.rootMeanSquaredError - (squared / 4).squareRoot()) < 1e-12)
    }

    /// Tied weights: a decoder that is the encoder's transpose and a layer that reuses another's weight as
    /// it is, one arena entry each, against central differences of an mse reconstruction (both uses'
    /// gradients summed into the one parameter).
    @Test func tiedLayersShareOneWeightAndItsGradient() throws {
        let spec = ModelSpec(
            name: "tied", input: [6],
            layers: [
                Self.layer(.dense) { $0.out = 4 },  // layers.0: (4, 6)
                Self.layer(.tanh),
                Self.layer(.dense) { $0.out = 4 },  // layers.2: (4, 4)
                Self.layer(.tanh),
                Self.layer(.dense) { ($0.out, $0.tie) = (4, 2) },  // the same (4, 4)
                Self.layer(.sigmoid),
                Self.layer(.dense) { ($0.out, $0.tie) = (6, 0) }  // the transpose (6, 4)
            ], loss: .mse)
        #expect(try spec.parameterCounts() == [28, 0, 20, 0, 4, 0, 6])
        var layout = ArenaLayout(), rng = RNG(seed: 9)
        let network = try spec.network(&layout, as: Double.self)
        #expect(
            layout.entries.map(\.name) == [
                "layers.0.weight", "layers.0.bias", "layers.2.weight", "layers.2.bias", "layers.4.bias", "layers.6.bias"
            ])
        let model = Predictor(kind: "spec", layout: layout, network: network, objective: spec.objective, rng: &rng)
        for i in 0..<model.arena.count { model.arena.values[i] += 0.3 * rng.nextNormal() }
        let x = Tensor(shape: [3, 6], scalars: (0..<18).map { _ in rng.nextNormal() })
        let worst = Self.worstGradientError(model, Batch(inputs: x, targets: x))
        #expect(worst < tolerance, "worst relative error \(worst)")
        for (tie, message) in [
            (1, "tie: 1 is not an earlier dense layer"), (6, "tie: 6 is not an earlier dense layer"),
            (2, "tie: 2: its weight is not 6 x 4 or its transpose")
        ] {
            var bad = spec
            bad.layers[6].tie = tie
            do { _ = try bad.shapes(); Issue.record("tie \(tie) was taken") } catch { #expect("\(error)".contains(message), "\(error)") }
        }
    }

    /// An lstm over each sample's sequence (batch-first, the last step's state or every step's), plain
    /// and weight-normalized, against central differences through its parameters and input.
    @Test(arguments: [(false, false), (true, false), (false, true), (true, true)])
    func sequenceLSTM(sequences: Bool, weightNorm: Bool) {
        var layout = ArenaLayout()
        let l = SequenceLSTM<Double>(
            &layout, prefix: "", steps: 4, inputSize: 3, hiddenSize: 5, weightNorm: weightNorm, sequences: sequences)
        var check = GradientCheck(layout: layout, layer: l, inputShape: [2, 4 * 3])
        #expect(check.maxError() < tolerance)
    }

    /// Tokens through an embedding into a stack of two lstms (the first giving every step) and a
    /// classifier: the shapes, PyTorch's names, and the gradients of the loss (a row-sparse embedding's
    /// too) against central differences.
    @Test(arguments: [false, true])
    func aTokenSequenceSpecHasTheGradientsOfItsLoss(sparse: Bool) throws {
        let spec = ModelSpec(
            name: "seq", input: [], tokens: .init(steps: 5, vocabulary: 7),
            layers: [
                Self.layer(.embedding) { ($0.out, $0.sparse) = (3, sparse) },
                Self.layer(.lstm) { ($0.out, $0.sequences, $0.weightNorm) = (4, true, true) },
                Self.layer(.dropout) { $0.rate = 0 },  // (training's masks would differ from evaluation's)
                Self.layer(.lstm) { $0.out = 4 },
                Self.layer(.dense) { $0.out = 3 }
            ])
        #expect(
            try spec.shapes() == [
                .sequence(steps: 5, features: 3), .sequence(steps: 5, features: 4), .sequence(steps: 5, features: 4), .features(4),
                .features(3)
            ])
        #expect(try spec.parameterCounts() == [21, 16 * 7 + 32 + 32, 0, 16 * 8 + 32, 15])
        var layout = ArenaLayout(), rng = RNG(seed: 8)
        let network = try spec.network(&layout, as: Double.self)
        #expect(
            layout.entries.map(\.name).contains("layers.1.weight_hh_l0_g") && layout.entries.map(\.name).contains("layers.3.bias_ih_l0"))
        let model = Predictor(kind: "spec", layout: layout, network: network, objective: spec.objective, rng: &rng)
        #expect(model.arena.count == (try spec.parameterCount()))
        for i in 0..<model.arena.count { model.arena.values[i] += 0.2 * rng.nextNormal() }
        let ids: [Double] = [0, 3, 6, 1, 1, 2, 2, 5, 4, 0, 6, 6, 0, 3, 1]
        let batch = Batch(inputs: Tensor(shape: [3, 5], scalars: ids), labels: [2, 0, 1])
        let worst = Self.worstGradientError(model, batch)
        #expect(worst < tolerance, "worst relative error \(worst)")
        var wrong = spec
        wrong.layers[4] = Self.layer(.dense) { $0.out = 3 }
        wrong.layers.remove(at: 3)
        do { _ = try wrong.shapes(); Issue.record("a dense layer on a sequence was taken") } catch {
            #expect("\(error)".contains("layer 3 (dense) gets (5 steps, 4): a sequence goes through an lstm"), "\(error)")
        }
    }

    /// Wide & Deep as a spec: a wide tower over the table's hashed values and a cross beside the deep
    /// layers, one logit, binary cross-entropy: the wide weights are the arena's last entry, FTRL's, and
    /// the two towers' gradients (dense and row-sparse) agree with central differences.
    @Test func aWideAndDeepSpecHasTheGradientsOfItsLoss() throws {
        var spec = ModelSpec(
            name: "wd", input: [], table: .init(categorical: 3, numeric: 1),
            layers: [
                Self.layer(.embedding) { ($0.out, $0.buckets, $0.sparse) = (2, 4, true) }, Self.layer(.dense) { $0.out = 3 },
                Self.layer(.tanh), Self.layer(.dense) { $0.out = 1 }
            ], loss: .binaryCrossEntropy)
        spec.wide = .init(buckets: 11, crosses: [[0, 2], [1, 2]])
        #expect(try spec.parameterCount() == 24 + 7 * 3 + 3 + 4 + 11)
        var rng = RNG(seed: 12)
        let model: Predictor<Double> = try spec.predictor(kind: "spec", rng: &rng)
        #expect(model.arena.layout.entries.last?.name == "wide.weight" && model.ftrlParameters == ["wide.weight"])
        #expect(model.sparseGradients.count == 2)
        for i in 0..<model.arena.count { model.arena.values[i] += 0.3 * rng.nextNormal() }
        let rows: [[Double]] = [[5, 9, 1, 0.3], [5, 2, 1, -1], [700, 9, 16_777_215, 0.8], [3, 3, 3, 0], [5, 9, 2, 1.1]]
        let batch = Batch(inputs: Tensor(shape: [5, 4], scalars: rows.flatMap { $0 }), labels: [1, 0, 1, 0, 1])
        let worst = Self.worstGradientError(model, batch)
        #expect(worst < tolerance, "worst relative error \(worst)")
        // the wide logit is the sum of its row's 5 weights (3 values, 2 crosses); rows 0 and 4 share the
        // first two values' and so their weights
        let wide = model.wide!, w = model.arena.layout.entries.last!.offset
        let z = wide.forward(batch.inputs, model.context)
        let ids = wide.ids(batch.inputs)
        for r in 0..<5 { #expect(abs(z.scalars[r] - (0..<5).map { model.arena.values[w + Int(ids[r * 5 + $0])] }.reduce(0, +)) < 1e-12) }
        #expect(ids[0] == ids[20] && ids[1] == ids[21])
        var bad = spec
        bad.wide!.crosses = [[0, 3]]
        do { _ = try bad.shapes(); Issue.record("a cross of a numeric column was taken") } catch {
            #expect("\(error)".contains("pairs of categorical column positions in 0..<3"), "\(error)")
        }
        bad = spec
        bad.layers[3].out = 2
        do { _ = try bad.shapes(); Issue.record("two outputs beside a wide tower were taken") } catch {
            #expect("\(error)".contains("with a wide tower the last layer gives one value (1)"), "\(error)")
        }
    }

    @Test func aTableInputNeedsAnEmbeddingFirst() throws {
        let dense = ModelSpec(
            name: "t", input: [], table: .init(categorical: 2, numeric: 1), layers: [Self.layer(.dense) { $0.out = 1 }], loss: .mse)
        do { _ = try dense.shapes(); Issue.record("a dense layer on a table was taken") } catch {
            #expect(
                "\(error)".contains(
                    "layer 0 (dense) gets a table of 2 categorical and 1 numeric columns: a table's categorical columns go through an embedding first"
                ))
        }
        let late = ModelSpec(name: "t", input: [4], layers: [Self.layer(.embedding) { $0.out = 2 }], loss: .mse)
        do { _ = try late.shapes(); Issue.record("an embedding on features was taken") } catch {
            #expect("\(error)".contains("embedding is the first layer of a table input"), "\(error)")
        }
        // numbers only: the table is features
        let numbers = ModelSpec(
            name: "n", input: [], table: .init(categorical: 0, numeric: 3), layers: [Self.layer(.dense) { $0.out = 1 }], loss: .l1)
        #expect(try numbers.shapes() == [.features(1)])
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
