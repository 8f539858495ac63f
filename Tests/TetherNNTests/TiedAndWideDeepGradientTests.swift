import Foundation
import Testing
@testable import TetherNN
import TetherTensor

/// Central finite differences of `loss` against the gradient `accumulate` leaves in the arena (dense
/// entries) and in the sparse tables (scattered densely), over `indices` of the arena.
func worstModelGradientError<T: Model>(_ model: T, indices: [Int]? = nil, loss: () -> Double, accumulate: () -> Void) -> Double
where T.T == Double {
    let arena = model.arena
    arena.zeroGrads()
    for s in model.sparseGradients { s.clear() }
    accumulate()
    var analytic = Array(UnsafeBufferPointer(start: arena.grads, count: arena.count))
    for e in arena.layout.entries where e.sparseGradient { for i in e.offset..<e.offset + e.count { analytic[i] = 0 } }
    analytic.withUnsafeMutableBufferPointer { a in for s in model.sparseGradients { s.addDense(into: a.baseAddress! + s.slot.offset) } }
    let h = 1e-5
    var worst = 0.0
    for i in indices ?? Array(0..<arena.count) {
        let old = arena.values[i]
        arena.values[i] = old + h; let lp = loss()
        arena.values[i] = old - h; let lm = loss()
        arena.values[i] = old
        let numeric = (lp - lm) / (2 * h)
        worst = max(worst, abs(analytic[i] - numeric) / max(1, abs(analytic[i]), abs(numeric)))
    }
    return worst
}

@Suite("Finite-difference checks of the tied-weight and Wide & Deep parts, in Double")
struct TiedAndWideDeepGradientTests {
    @Test(arguments: [false, true])
    func lstmLayer(weightNorm: Bool) {
        var layout = ArenaLayout()
        let l = LSTMLayer<Double>(&layout, prefix: "rnn.", index: 0, inputSize: 3, hiddenSize: 4, weightNorm: weightNorm)
        // A non-zero carried state, so the c_prev and h_prev paths of the first step are exercised.
        var rng = RNG(seed: 9)
        l.state = .init(h: (0..<8).map { _ in 0.5 * rng.nextNormal() }, c: (0..<8).map { _ in 0.5 * rng.nextNormal() })
        var check = GradientCheck(layout: layout, layer: l, inputShape: [5, 2, 3])
        #expect(check.maxError() < tolerance)
        let names = layout.entries.map(\.name)
        #expect(
            names
                == (weightNorm
                    ? [
                        "rnn.weight_ih_l0_g", "rnn.weight_ih_l0_v", "rnn.weight_hh_l0_g", "rnn.weight_hh_l0_v", "rnn.bias_ih_l0",
                        "rnn.bias_hh_l0"
                    ]
                    : ["rnn.weight_ih_l0", "rnn.weight_hh_l0", "rnn.bias_ih_l0", "rnn.bias_hh_l0"]))
    }

    /// The embedding alone, dense and row-sparse: L = sum(y * R) over a batch that repeats a row.
    @Test(arguments: [false, true])
    func embedding(sparse: Bool) {
        var layout = ArenaLayout()
        let e = Embedding<Double>(&layout, prefix: "", rows: 5, width: 3, sparse: sparse)
        let arena = ParameterArena<Double>(layout: layout)
        var rng = RNG(seed: 8)
        arena.initialize(rng: &rng)
        let ctx = ModelContext(arena: arena, rng: rng)
        let ids: [Int32] = [4, 1, 4, 0]
        let r = Tensor<Double>(shape: [4, 3], scalars: (0..<12).map { _ in rng.nextNormal() })
        func loss() -> Double { zip(e.forward(ids: ids, ctx).scalars, r.scalars).reduce(0) { $0 + $1.0 * $1.1 } }
        arena.zeroGrads()
        _ = e.forward(ids: ids, ctx)
        e.backward(r, ctx)
        var analytic = sparse ? [Double](repeating: 0, count: 15) : Array(UnsafeBufferPointer(start: arena.grads, count: 15))
        if let rows = e.sparseGradient {
            #expect(rows.ids == [4, 1, 0])
            analytic.withUnsafeMutableBufferPointer { rows.addDense(into: $0.baseAddress!) }
        }
        var worst = 0.0
        for i in 0..<15 {
            let old = arena.values[i]
            arena.values[i] = old + 1e-5; let lp = loss()
            arena.values[i] = old - 1e-5; let lm = loss()
            arena.values[i] = old
            worst = max(worst, abs(analytic[i] - (lp - lm) / 2e-5))
        }
        #expect(worst < tolerance)
        #expect(analytic[6...8].allSatisfy { $0 == 0 } && analytic[9...11].allSatisfy { $0 == 0 })  // rows 2, 3 untouched
    }

    @Test func transposedDense() {
        var layout = ArenaLayout()
        let w = layout.add("w", shape: [4, 6], initializer: .normal(std: 0.5))
        let l = TransposedDense<Double>(&layout, prefix: "", transposing: w, encoderIn: 6, encoderOut: 4)
        var check = GradientCheck(layout: layout, layer: l, inputShape: [3, 4])
        #expect(check.maxError() < tolerance)
    }

    static func smallLanguageModel(tied: Bool, weightNorm: Bool, layers: Int = 1) -> LanguageModel<Double> {
        var rng = RNG(seed: 3)
        let shape = LanguageModelShape(vocabulary: 7, size: 4, layers: layers, dropout: 0, tied: tied, weightNorm: weightNorm)
        let m = LanguageModel<Double>(shape, trainStreams: 2, rng: &rng)
        for i in 0..<m.arena.count { m.arena.values[i] += 0.3 * rng.nextNormal() }
        return m
    }

    static let tokens: (inputs: [Int32], targets: [Int32]) = ([1, 2, 3, 0, 6, 5, 2, 2], [2, 3, 0, 6, 5, 4, 2, 1])  // T=4, B=2

    /// Embedding, LSTM(s) and the (tied or untied) output projection through the softmax loss.
    @Test(arguments: [(true, true, 1), (true, false, 1), (false, true, 1), (true, true, 2)])
    func languageModelThroughLoss(tied: Bool, weightNorm: Bool, layers: Int) {
        let m = Self.smallLanguageModel(tied: tied, weightNorm: weightNorm, layers: layers)
        let (x, y) = Self.tokens
        let worst = worstModelGradientError(
            m,
            loss: {
                m.evaluate(inputs: x, targets: y, steps: 4, streams: 2, state: nil).0.lossSum
            },
            accumulate: {
                m.resetState()
                _ = m.accumulateGradients(inputs: x, targets: y, steps: 4, scale: 1)
            })
        #expect(worst < tolerance, "worst relative error \(worst)")
    }

    /// One parameter serves the embedding and the output projection: its gradient is the sum of the
    /// two uses' gradients, which the untied model computes separately from the same values.
    @Test func tiedGradientIsTheSumOfBothUses() {
        let tied = Self.smallLanguageModel(tied: true, weightNorm: false)
        let untied = Self.smallLanguageModel(tied: false, weightNorm: false)
        #expect(
            tied.arena.layout.entries.filter { $0.name.hasSuffix("weight") && !$0.name.hasPrefix("rnn") }.map(\.name) == ["encoder.weight"])
        // Copy every tied value into the untied model; its decoder.weight gets the embedding too.
        for e in tied.arena.layout.entries {
            let u = untied.arena.layout.slot(named: e.name)!
            untied.arena.value(u).update(from: tied.arena.values + e.offset, count: e.count)
        }
        let enc = tied.arena.layout.slot(named: "encoder.weight")!
        untied.arena.value(untied.arena.layout.slot(named: "decoder.weight")!).update(from: tied.arena.value(enc), count: enc.count)
        let (x, y) = Self.tokens
        for m in [tied, untied] { m.arena.zeroGrads(); _ = m.accumulateGradients(inputs: x, targets: y, steps: 4, scale: 1) }
        let ue = untied.arena.grad(untied.arena.layout.slot(named: "encoder.weight")!)
        let ud = untied.arena.grad(untied.arena.layout.slot(named: "decoder.weight")!)
        let te = tied.arena.grad(enc)
        var worst = 0.0, decoderShare = 0.0
        for i in 0..<enc.count { worst = max(worst, abs(te[i] - (ue[i] + ud[i]))); decoderShare = max(decoderShare, abs(ud[i])) }
        #expect(worst < 1e-12)
        #expect(decoderShare > 1e-3)  // both uses contribute
    }

    @Test func tiedAutoencoderThroughLoss() {
        var rng = RNG(seed: 4)
        let m = TiedAutoencoder<Double>(features: 6, hidden: [4, 3], rng: &rng)
        #expect(
            m.arena.layout.entries.map(\.name) == [
                "encoder.0.weight", "encoder.0.bias", "encoder.2.weight", "encoder.2.bias", "decoder.0.bias", "decoder.2.bias"
            ])
        for i in 0..<m.arena.count { m.arena.values[i] += 0.3 * rng.nextNormal() }
        let x = Tensor<Double>(shape: [3, 6], scalars: (0..<18).map { _ in rng.nextUnitDouble() })
        let worst = worstModelGradientError(m, loss: { m.evaluate(x).lossSum }, accumulate: { _ = m.accumulateGradients(x, scale: 1) })
        #expect(worst < tolerance, "worst relative error \(worst)")
    }

    static func smallWideDeep(_ parts: WideDeepShape.Parts) -> (WideDeep<Double>, TabularBatch<Double>) {
        var rng = RNG(seed: 6)
        let shape = WideDeepShape(
            fields: 3, numeric: 2, crosses: [[0, 1], [1, 2]], buckets: 5, wideBuckets: 11, embedding: 2, hidden: [4, 3], parts: parts)
        let m = WideDeep<Double>(shape, rng: &rng)
        for i in 0..<m.arena.count { m.arena.values[i] += 0.3 * rng.nextNormal() }
        // Four rows; rows 0 and 2 share values, so sparse rows are touched more than once.
        let values: [UInt64] = [1, 2, 3, 4, 5, 6, 1, 2, 9, 7, 8, 3]
        let batch = TabularBatch(
            categorical: values, numeric: Tensor(shape: [4, 2], scalars: (0..<8).map { _ in rng.nextNormal() }), labels: [1, 0, 0, 1])
        return (m, batch)
    }

    @Test(arguments: WideDeepShape.Parts.allCases)
    func wideAndDeepThroughLogisticLoss(parts: WideDeepShape.Parts) {
        let (m, batch) = Self.smallWideDeep(parts)
        let worst = worstModelGradientError(
            m, loss: { m.evaluate(batch).0.lossSum }, accumulate: { _ = m.accumulateGradients(batch, scale: 1) })
        #expect(worst < tolerance, "worst relative error \(worst)")
        #expect(m.sparseGradients.count == (parts == .both ? 2 : 1))
    }

    @Test func logisticLossValuesAndGradient() {
        let loss = LogisticLoss<Double>()
        let z: [Double] = [-40, -1, 0, 2.5, 40]
        let y: [Int32] = [1, 0, 1, 1, 0]
        let total = loss.forward(logits: Tensor(shape: [5], scalars: z), labels: y)
        var expected = 0.0
        for i in 0..<5 { expected += log(1 + exp(z[i])) - Double(y[i]) * z[i] }
        #expect(abs(total - expected) < 1e-9 && total.isFinite)
        let d = loss.backward(scale: 0.5).scalars
        for i in 0..<5 { #expect(abs(d[i] - 0.5 * (1 / (1 + exp(-z[i])) - Double(y[i]))) < 1e-12) }
    }
}
