import TetherTensor

/// The size and options of a word-level language model.
public struct LanguageModelShape: Codable, Sendable, Equatable {
    public var vocabulary: Int
    /// Embedding and hidden size (equal, so the embedding can be the output projection).
    public var size: Int
    public var layers: Int
    public var dropout: Double
    /// The output projection is the embedding (Press & Wolf 2016); false gives it its own matrix.
    public var tied: Bool
    /// Weight-normalized W_ih and W_hh, one g per gate row.
    public var weightNorm: Bool
    public init(vocabulary: Int, size: Int, layers: Int = 1, dropout: Double = 0.2, tied: Bool = true, weightNorm: Bool = true) {
        (self.vocabulary, self.size, self.layers, self.dropout, self.tied, self.weightNorm) = (
            vocabulary, size, layers, dropout, tied, weightNorm
        )
    }
}

/// `lm-tied`, after PyTorch's word_language_model: embedding (V, d) -> dropout -> LSTM layers (dropout
/// between) -> dropout -> output projection (V, d) + bias. When tied, the projection's weight is the
/// embedding's arena entry `encoder.weight`: one parameter, whose gradient sums both uses.
///
/// Batches are time-major: T steps of B streams, ids (T*B). The LSTM state after a training batch is
/// carried into the next as a constant (truncated BPTT); it is a checkpoint buffer, so a resumed run
/// continues exactly.
public final class LanguageModel<T: Scalar>: Model, BufferOwner {
    public let kind = "lm-tied"
    public let shape: LanguageModelShape
    public let arena: ParameterArena<T>
    public let context: ModelContext<T>
    let encoder: Embedding<T>
    let rnn: [LSTMLayer<T>]
    let dropouts: [Dropout<T>]  // before layer 0, between layers, after the last
    let decoder: Dense<T>
    let loss = SoftmaxCrossEntropy<T>()
    /// Streams of a training batch: the size of the carried state.
    public let trainStreams: Int
    private var carried: [LSTMLayer<T>.State]

    public init(_ shape: LanguageModelShape, trainStreams: Int, rng: inout RNG) {
        self.shape = shape
        self.trainStreams = trainStreams
        var layout = ArenaLayout()
        let (v, d) = (shape.vocabulary, shape.size)
        encoder = Embedding(&layout, prefix: "encoder.", rows: v, width: d, initializer: .uniform(bound: 0.1))
        rnn = (0..<shape.layers).map {
            LSTMLayer(&layout, prefix: "rnn.", index: $0, inputSize: d, hiddenSize: d, weightNorm: shape.weightNorm)
        }
        decoder =
            shape.tied
            ? Dense(&layout, prefix: "decoder.", sharedWeight: encoder.slot, inFeatures: d, outFeatures: v)
            : Dense(&layout, prefix: "decoder.", inFeatures: d, outFeatures: v)
        dropouts = (0...shape.layers).map { _ in Dropout(probability: shape.dropout) }
        arena = ParameterArena(layout: layout)
        arena.initialize(rng: &rng)
        context = ModelContext(arena: arena, rng: rng)
        carried = Self.zeroState(layers: shape.layers, streams: trainStreams, size: d)
    }

    static func zeroState(layers: Int, streams: Int, size: Int) -> [LSTMLayer<T>.State] {
        (0..<layers).map { _ in .init(h: T.zeros(count: streams * size), c: T.zeros(count: streams * size)) }
    }

    /// Forgets the carried state (at the start of each epoch, as word_language_model does).
    public func resetState() { carried = Self.zeroState(layers: shape.layers, streams: trainStreams, size: shape.size) }

    /// Logits (T*B, V) of the batch, starting from `state`; returns the state after it.
    private func logits(_ inputs: [Int32], steps t: Int, streams b: Int, state: [LSTMLayer<T>.State]) -> (Tensor<T>, [LSTMLayer<T>.State]) {
        var x = dropouts[0].forward(encoder.forward(ids: inputs, context), context).reshaped([t, b, shape.size])
        var final: [LSTMLayer<T>.State] = []
        for (l, layer) in rnn.enumerated() {
            layer.state = state[l]
            x = dropouts[l + 1].forward(layer.forward(x, context), context)
            final.append(layer.finalState!)
        }
        return (decoder.forward(x.reshaped([t * b, shape.size]), context), final)
    }

    /// Forward and backward on T steps of the `trainStreams` streams; accumulates `scale` x the gradient of
    /// the summed token losses and carries the state on. `count` of the result is tokens.
    public func accumulateGradients(inputs: [Int32], targets: [Int32], steps t: Int, scale: T) -> BatchStats {
        let b = trainStreams
        precondition(inputs.count == t * b && targets.count == t * b)
        context.training = true
        let (z, final) = logits(inputs, steps: t, streams: b, state: carried)
        let lossSum = loss.forward(logits: z, labels: targets)
        var g = decoder.backward(loss.backward(scale: scale), context, needsInputGradient: true)!.reshaped([t, b, shape.size])
        for (l, layer) in rnn.enumerated().reversed() {
            g = layer.backward(dropouts[l + 1].backward(g, context, needsInputGradient: true)!, context, needsInputGradient: true)!
        }
        encoder.backward(dropouts[0].backward(g, context, needsInputGradient: true)!.reshaped([t * b, shape.size]), context)
        carried = final
        return BatchStats(lossSum: lossSum, count: t * b)  // (next-token accuracy is not reported: it costs a pass over the logits)
    }

    /// Evaluation of T steps of B streams from `state` (nil: zeros); returns the stats and the next state.
    public func evaluate(
        inputs: [Int32], targets: [Int32], steps t: Int, streams b: Int,
        state: [LSTMLayer<T>.State]?
    ) -> (BatchStats, [LSTMLayer<T>.State]) {
        context.training = false
        defer { context.training = true }
        let (z, final) = logits(
            inputs, steps: t, streams: b, state: state ?? Self.zeroState(layers: shape.layers, streams: b, size: shape.size))
        let lossSum = loss.forward(logits: z, labels: targets)
        return (BatchStats(lossSum: lossSum, correct: loss.correctCount(), count: t * b), final)
    }

    /// The distribution of the token after each of B sequences of T tokens, read from a zero state:
    /// ids (T*B) time-major, probabilities (B, V). Only the last step goes through the projection.
    public func nextTokenProbabilities(_ ids: [Int32], steps t: Int, streams b: Int) -> Tensor<T> {
        precondition(t > 0 && b > 0 && ids.count == t * b)
        context.training = false
        defer { context.training = true }
        let d = shape.size
        var x = encoder.forward(ids: ids, context).reshaped([t, b, d])
        for layer in rnn {
            layer.state = Self.zeroState(layers: 1, streams: b, size: d)[0]
            x = layer.forward(x, context)
        }
        let last = Tensor<T>.uninitialized([b, d]) { y in x.withPointer { y.update(from: $0 + (t - 1) * b * d, count: b * d) } }
        let z = decoder.forward(last, context), v = shape.vocabulary
        var losses = T.zeros(count: b)
        return Tensor.uninitialized([b, v]) { p in
            z.withPointer {
                T.softmaxCrossEntropyForward(
                    probs: p, losses: &losses, logits: $0, labels: [Int32](repeating: 0, count: b), batch: b, classes: v)
            }
        }
    }

    public var bufferOwners: [(prefix: String, owner: any BufferOwner)] { [("rnn.", self)] }
    public var bufferNames: [String] { (0..<shape.layers).flatMap { ["carried_h_l\($0)", "carried_c_l\($0)"] } }
    public func buffer(named name: String) -> [Float]? {
        guard let (l, isH) = parseBuffer(name) else { return nil }
        return (isH ? carried[l].h : carried[l].c).map { Float($0) }
    }
    /// The carried state is [streams x size], a row per stream.
    public func bufferRowLength(named name: String) -> Int? { parseBuffer(name) == nil ? nil : shape.size }
    public func loadBuffer(named name: String, _ values: [Float]) -> Bool {
        guard let (l, isH) = parseBuffer(name), values.count == trainStreams * shape.size else { return false }
        if isH { carried[l].h = values.map { T($0) } } else { carried[l].c = values.map { T($0) } }
        return true
    }
    private func parseBuffer(_ name: String) -> (Int, Bool)? {
        for l in 0..<shape.layers {
            if name == "carried_h_l\(l)" { return (l, true) }
            if name == "carried_c_l\(l)" { return (l, false) }
        }
        return nil
    }
}
