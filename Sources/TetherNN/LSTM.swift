import TetherTensor

/// One LSTM layer over a sequence (PyTorch's nn.LSTM, one layer, gate order i, f, g, o):
///   gates_t = x_t W_ih^T + b_ih + h_{t-1} W_hh^T + b_hh;  c_t = f c_{t-1} + i g;  h_t = o tanh(c_t).
/// Input (T, B, I), output (T, B, H). W_ih (4H, I) and W_hh (4H, H) are plain or weight-normalized
/// with one g per gate row. The initial state is `state` (zeros when nil); after a forward,
/// `finalState` holds (h_T, c_T), which truncated BPTT carries into the next batch as a constant.
public final class LSTMLayer<T: Scalar>: Layer {
    public let inputSize: Int, hiddenSize: Int
    let weightIH: WeightParameterization<T>, weightHH: WeightParameterization<T>
    let biasIH: ParameterSlot, biasHH: ParameterSlot
    public var parameterSlots: [ParameterSlot] { weightIH.slots + weightHH.slots + [biasIH, biasHH] }

    /// (h, c), each (B, H).
    public struct State { public var h: [T]; public var c: [T] }
    public var state: State?
    public private(set) var finalState: State?

    // Caches of the last forward, for backward.
    private var input = Tensor<T>.zeros([0])
    private var steps = 0, batch = 0
    private var gates: [T] = []  // (T, B, 4H) activations
    private var hs: [T] = []  // (T+1, B, H): h_0 ... h_T
    private var cs: [T] = []  // (T+1, B, H)
    private var tanhCs: [T] = []  // (T, B, H)
    private var wih: UnsafePointer<T>?, whh: UnsafePointer<T>?
    /// W_hh packed once per pass for its T recurrent products (Float on AVX-512 CPUs; nil elsewhere,
    /// OpenBLAS then): forward's as (4H, H) for h W_hh^T, backward's as (H, 4H) for dG W_hh. At
    /// lm-tied's shapes (B 20, H 256) 2-2.3x OpenBLAS, which packs W_hh again at every step.
    private lazy var forwardWhh = PackedWeight<T>(outputs: 4 * hiddenSize, inputs: hiddenSize)
    private lazy var backwardWhh = PackedWeight<T>(outputs: hiddenSize, inputs: 4 * hiddenSize)

    /// Registers `weight_ih_l<index>` etc. (with `_g`/`_v` when normalized), PyTorch's names and init
    /// U(-1/sqrt(H), 1/sqrt(H)); normalized rows start with that init's expected norm.
    public init(_ layout: inout ArenaLayout, prefix: String, index: Int, inputSize: Int, hiddenSize: Int, weightNorm: Bool) {
        (self.inputSize, self.hiddenSize) = (inputSize, hiddenSize)
        let bound = 1 / Double(hiddenSize).squareRoot()
        func g(_ columns: Int) -> Double { bound * (Double(columns) / 3).squareRoot() }
        weightIH = WeightParameterization(
            &layout, prefix: prefix, name: "weight_ih_l\(index)", shape: [4 * hiddenSize, inputSize],
            normalized: weightNorm, plainBound: bound, initialG: g(inputSize))
        weightHH = WeightParameterization(
            &layout, prefix: prefix, name: "weight_hh_l\(index)", shape: [4 * hiddenSize, hiddenSize],
            normalized: weightNorm, plainBound: bound, initialG: g(hiddenSize))
        biasIH = layout.add(prefix + "bias_ih_l\(index)", shape: [4 * hiddenSize], initializer: .uniform(bound: bound))
        biasHH = layout.add(prefix + "bias_hh_l\(index)", shape: [4 * hiddenSize], initializer: .uniform(bound: bound))
    }

    public func forward(_ x: Tensor<T>, _ ctx: ModelContext<T>) -> Tensor<T> {
        precondition(x.shape.count == 3 && x.shape[2] == inputSize, "LSTM expects (T, B, \(inputSize)), got \(x.shape)")
        let (t, b, n, arena) = (x.shape[0], x.shape[1], hiddenSize, ctx.arena)
        (input, steps, batch) = (x, t, b)
        let wih = weightIH.weight(ctx), whh = weightHH.weight(ctx)
        (self.wih, self.whh) = (wih, whh)
        let rows = t * b, width = 4 * n
        if gates.count != rows * width { gates = T.zeros(count: rows * width) }
        if hs.count != (t + 1) * b * n { hs = T.zeros(count: (t + 1) * b * n); cs = hs; tanhCs = T.zeros(count: rows * n) }
        if let s = state {
            precondition(s.h.count == b * n && s.c.count == b * n, "LSTM state is for another batch size")
            hs.withUnsafeMutableBufferPointer { $0.baseAddress!.update(from: s.h, count: b * n) }
            cs.withUnsafeMutableBufferPointer { $0.baseAddress!.update(from: s.c, count: b * n) }
        } else {
            hs.withUnsafeMutableBufferPointer { T.fill($0.baseAddress!, 0, count: b * n) }
            cs.withUnsafeMutableBufferPointer { T.fill($0.baseAddress!, 0, count: b * n) }
        }
        gates.withUnsafeMutableBufferPointer { gp in
            hs.withUnsafeMutableBufferPointer { hp in
                cs.withUnsafeMutableBufferPointer { cp in
                    tanhCs.withUnsafeMutableBufferPointer { tp in
                        let g = gp.baseAddress!, h = hp.baseAddress!, c = cp.baseAddress!, tc = tp.baseAddress!
                        // All input projections at once: G (T*B, 4H) = X W_ih^T + b_ih + b_hh.
                        x.withPointer {
                            T.gemm(
                                transposeA: false, transposeB: true, m: rows, n: width, k: inputSize, alpha: 1,
                                a: $0, lda: inputSize, b: wih, ldb: inputSize, beta: 0, c: g, ldc: width)
                        }
                        T.addPerFeature(g, arena.value(biasIH), alpha: 1, rows: rows, features: width)
                        T.addPerFeature(g, arena.value(biasHH), alpha: 1, rows: rows, features: width)
                        let packed = forwardWhh
                        packed?.pack(whh, transposed: true)
                        for s in 0..<t {
                            let gs = g + s * b * width
                            if let packed {
                                packed.apply(gs, h + s * b * n, rows: b, bias: nil, accumulate: true)
                            } else {
                                T.gemm(
                                    transposeA: false, transposeB: true, m: b, n: width, k: n, alpha: 1,
                                    a: h + s * b * n, lda: n, b: whh, ldb: n, beta: 1, c: gs, ldc: width)
                            }
                            T.lstmCellForward(
                                gates: gs, c: c + (s + 1) * b * n, tanhC: tc + s * b * n, h: h + (s + 1) * b * n,
                                cPrev: c + s * b * n, batch: b, hidden: n)
                        }
                    }
                }
            }
        }
        finalState = State(h: Array(hs[t * b * n..<(t + 1) * b * n]), c: Array(cs[t * b * n..<(t + 1) * b * n]))
        return Tensor(shape: [t, b, n], scalars: Array(hs[(b * n)..<hs.count]))
    }

    /// Backpropagation through the T steps of the last forward; the gradient reaching the initial state
    /// is dropped (truncated BPTT).
    public func backward(_ dy: Tensor<T>, _ ctx: ModelContext<T>, needsInputGradient: Bool) -> Tensor<T>? {
        let (t, b, n, arena) = (steps, batch, hiddenSize, ctx.arena)
        let rows = t * b, width = 4 * n
        precondition(dy.shape == [t, b, n])
        var dgates = T.zeros(count: rows * width)
        var dh = T.zeros(count: b * n), dc = T.zeros(count: b * n), dcPrev = T.zeros(count: b * n)
        dgates.withUnsafeMutableBufferPointer { dgp in
            let dg = dgp.baseAddress!
            gates.withUnsafeBufferPointer { g in
                cs.withUnsafeBufferPointer { c in
                    tanhCs.withUnsafeBufferPointer { tc in
                        dy.withPointer { dyp in
                            dh.withUnsafeMutableBufferPointer { dhp in
                                dc.withUnsafeMutableBufferPointer { dcp in
                                    dcPrev.withUnsafeMutableBufferPointer { dcpp in
                                        let dhv = dhp.baseAddress!
                                        let packed = backwardWhh
                                        packed?.pack(whh!, transposed: false)
                                        // dh holds dL/dh_t from later steps; add the output's own gradient.
                                        for s in stride(from: t - 1, through: 0, by: -1) {
                                            T.axpy(dhv, dyp + s * b * n, alpha: 1, count: b * n)
                                            T.lstmCellBackward(
                                                dgates: dg + s * b * width, dcPrev: dcpp.baseAddress!, dh: dhv, dc: dcp.baseAddress!,
                                                gates: g.baseAddress! + s * b * width, cPrev: c.baseAddress! + s * b * n,
                                                tanhC: tc.baseAddress! + s * b * n, batch: b, hidden: n)
                                            dcp.baseAddress!.update(from: dcpp.baseAddress!, count: b * n)
                                            // dL/dh_{t-1} = dG_t W_hh
                                            if let packed {
                                                packed.apply(dhv, dg + s * b * width, rows: b, bias: nil)
                                            } else {
                                                T.gemm(
                                                    transposeA: false, transposeB: false, m: b, n: n, k: width, alpha: 1,
                                                    a: dg + s * b * width, lda: width, b: whh!, ldb: n, beta: 0, c: dhv, ldc: n)
                                            }
                                        }
                                    }
                                }
                            }
                        }
                    }
                }
            }
            // Weight gradients over all steps at once: dW_hh = dG^T H_{0..T-1}, dW_ih = dG^T X.
            hs.withUnsafeBufferPointer { h in
                weightHH.accumulateWeightGradient(arena) { dw, beta in
                    T.gemm(
                        transposeA: true, transposeB: false, m: width, n: n, k: rows, alpha: 1,
                        a: dg, lda: width, b: h.baseAddress!, ldb: n, beta: beta, c: dw, ldc: n)
                }
            }
            input.withPointer { xp in
                weightIH.accumulateWeightGradient(arena) { dw, beta in
                    T.gemm(
                        transposeA: true, transposeB: false, m: width, n: inputSize, k: rows, alpha: 1,
                        a: dg, lda: width, b: xp, ldb: inputSize, beta: beta, c: dw, ldc: inputSize)
                }
            }
            T.sumPerFeature(arena.grad(biasIH), dg, rows: rows, features: width)
            T.sumPerFeature(arena.grad(biasHH), dg, rows: rows, features: width)
        }
        guard needsInputGradient else { return nil }
        return Tensor.uninitialized([t, b, inputSize]) { dx in
            dgates.withUnsafeBufferPointer {
                T.gemm(
                    transposeA: false, transposeB: false, m: rows, n: inputSize, k: width, alpha: 1,
                    a: $0.baseAddress!, lda: width, b: wih!, ldb: inputSize, beta: 0, c: dx, ldc: inputSize)
            }
        }
    }
}

/// An LSTM over each sample's sequence, as a layer of a Sequential (PyTorch's nn.LSTM with
/// batch_first=True, one layer, from a zero state): x (B, T*F) step-major per sample; y (B, H), the last
/// step's hidden state, or with `sequences` every step's, (B, T*H). Rearranges to the time-major
/// (T, B, F) `LSTMLayer` runs on, and back.
public final class SequenceLSTM<T: Scalar>: Layer {
    public let lstm: LSTMLayer<T>
    public let steps: Int, sequences: Bool
    public var parameterSlots: [ParameterSlot] { lstm.parameterSlots }
    private var batch = 0

    public init(_ layout: inout ArenaLayout, prefix: String, steps: Int, inputSize: Int, hiddenSize: Int, weightNorm: Bool, sequences: Bool)
    {
        (self.steps, self.sequences) = (steps, sequences)
        lstm = LSTMLayer(&layout, prefix: prefix, index: 0, inputSize: inputSize, hiddenSize: hiddenSize, weightNorm: weightNorm)
    }

    /// (A, B, W) -> (B, A, W): batch-major and time-major swap the same way.
    static func swapLeading(_ x: Tensor<T>, _ a: Int, _ b: Int, _ w: Int) -> Tensor<T> {
        Tensor.uninitialized([b, a, w]) { y in
            x.withPointer { p in for i in 0..<a { for j in 0..<b { (y + (j * a + i) * w).update(from: p + (i * b + j) * w, count: w) } } }
        }
    }

    public func forward(_ x: Tensor<T>, _ ctx: ModelContext<T>) -> Tensor<T> {
        let b = x.shape[0], (t, f, h) = (steps, lstm.inputSize, lstm.hiddenSize)
        precondition(x.shape == [b, t * f], "a sequence of \(t) x \(f) a sample, got \(x.shape)")
        batch = b
        lstm.state = nil
        let out = lstm.forward(Self.swapLeading(x.reshaped([b, t, f]), b, t, f), ctx)  // (T, B, H)
        if sequences { return Self.swapLeading(out, t, b, h).reshaped([b, t * h]) }
        return Tensor.uninitialized([b, h]) { y in out.withPointer { y.update(from: $0 + (t - 1) * b * h, count: b * h) } }
    }

    public func backward(_ dy: Tensor<T>, _ ctx: ModelContext<T>, needsInputGradient: Bool) -> Tensor<T>? {
        let (b, t, f, h) = (batch, steps, lstm.inputSize, lstm.hiddenSize)
        let dOut: Tensor<T>
        if sequences {
            dOut = Self.swapLeading(dy.reshaped([b, t, h]), b, t, h)
        } else {
            dOut = Tensor.uninitialized([t, b, h]) { d in
                T.fill(d, 0, count: (t - 1) * b * h)
                dy.withPointer { (d + (t - 1) * b * h).update(from: $0, count: b * h) }
            }
        }
        guard let dx = lstm.backward(dOut, ctx, needsInputGradient: needsInputGradient) else { return nil }
        return Self.swapLeading(dx, t, b, f).reshaped([b, t * f])
    }
}
