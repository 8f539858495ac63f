import CTetherProcess
import CBLAS
import CTetherKernels

/// The element type of every tensor: `Float` on the training path, `Double` in gradient checks.
///
/// Every loop over elements in Tether is a requirement of this protocol. The default implementations
/// (Kernels+*.swift) are generic, but because they are protocol requirements, the compiler emits a copy
/// specialized for `Float` and one for `Double` in this module, and generic callers (layers, models,
/// optimizers) reach those copies through the witness table. A loop written directly in generic layer
/// code would run unspecialized, about 700x slower (measured: docs/ARCHITECTURE.md). So layers only
/// orchestrate: shapes, offsets and calls into these kernels.
///
/// Conventions (after llm.c): arguments are outputs, then inputs, then parameters, then dimensions.
/// Shapes are given in named letters: B batch, I/O input/output features, C channels, N columns.
/// A kernel whose doc says "accumulates" adds into its output; all others overwrite it.
public protocol Scalar: BinaryFloatingPoint, Sendable, Codable where Self.RawSignificand: FixedWidthInteger {
    /// Row-major GEMM: C (M, N) = alpha * op(A) (M, K) * op(B) (K, N) + beta * C.
    static func gemm(
        transposeA: Bool, transposeB: Bool, m: Int, n: Int, k: Int, alpha: Self,
        a: UnsafePointer<Self>, lda: Int, b: UnsafePointer<Self>, ldb: Int,
        beta: Self, c: UnsafeMutablePointer<Self>, ldc: Int)
    /// The safetensors dtype name ("F32", "F64").
    static var safetensorsDType: String { get }
    /// The C kernels of this precision, which the wrappers of GEMM, dot, Adam, im2col and pooling call.
    static var kernels: PrecisionKernels<Self> { get }

    // MARK: memory
    static func zeros(count: Int) -> [Self]
    static func fill(_ y: UnsafeMutablePointer<Self>, _ value: Self, count: Int)
    static func convert(_ y: UnsafeMutablePointer<Self>, fromFloats x: UnsafePointer<Float>, count: Int)
    static func convert(_ y: UnsafeMutablePointer<Float>, toFloats x: UnsafePointer<Self>, count: Int)
    static func convert(_ y: UnsafeMutablePointer<Self>, fromBytes x: UnsafePointer<UInt8>, scale: Self, count: Int)

    // MARK: elementwise (Kernels+Elementwise.swift)
    /// y += alpha * x
    static func axpy(_ y: UnsafeMutablePointer<Self>, _ x: UnsafePointer<Self>, alpha: Self, count: Int)
    static func scale(_ y: UnsafeMutablePointer<Self>, by alpha: Self, count: Int)
    /// a . b (BLAS: vectorized for the CPU at run time)
    static func dot(_ a: UnsafePointer<Self>, _ b: UnsafePointer<Self>, count: Int) -> Self
    static func sumOfSquares(_ x: UnsafePointer<Self>, count: Int) -> Double
    static func sum(_ x: UnsafePointer<Self>, count: Int) -> Double
    /// y = x > 0 ? x : slope * x (slope 0: ReLU)
    static func leakyReLUForward(_ y: UnsafeMutablePointer<Self>, _ x: UnsafePointer<Self>, slope: Self, count: Int)
    /// dx = dy * (x > 0 ? 1 : slope)
    static func leakyReLUBackward(
        _ dx: UnsafeMutablePointer<Self>, _ dy: UnsafePointer<Self>, _ x: UnsafePointer<Self>, slope: Self, count: Int)
    /// y = x * mask
    static func multiply(_ y: UnsafeMutablePointer<Self>, _ x: UnsafePointer<Self>, _ mask: UnsafePointer<Self>, count: Int)
    /// mask[i] = u_i < p ? 0 : 1/(1-p), u_i uniform from rng (inverted dropout)
    static func dropoutMask(_ mask: UnsafeMutablePointer<Self>, dropProbability p: Double, rng: inout RNG, count: Int)
    static func fillNormal(_ y: UnsafeMutablePointer<Self>, mean: Double, std: Double, rng: inout RNG, count: Int)
    static func fillUniform(_ y: UnsafeMutablePointer<Self>, low: Double, high: Double, rng: inout RNG, count: Int)

    // MARK: per-feature and per-channel broadcasts (Kernels+Elementwise.swift)
    /// y (N, F) += alpha * v (F): features last, as in dense activations
    static func addPerFeature(_ y: UnsafeMutablePointer<Self>, _ v: UnsafePointer<Self>, alpha: Self, rows n: Int, features f: Int)
    /// out (F) += sum over rows of x (N, F)
    static func sumPerFeature(_ out: UnsafeMutablePointer<Self>, _ x: UnsafePointer<Self>, rows n: Int, features f: Int)
    /// y (C, N) += alpha * v (C): channels first, as in conv activations (C, B*H*W)
    static func addPerChannel(_ y: UnsafeMutablePointer<Self>, _ v: UnsafePointer<Self>, alpha: Self, channels c: Int, columns n: Int)
    /// out (C) += sum over columns of x (C, N)
    static func sumPerChannel(_ out: UnsafeMutablePointer<Self>, _ x: UnsafePointer<Self>, channels c: Int, columns n: Int)
    /// out (2F) += per feature f: (sum, sum of squares) over the rows of x (N, F), in Double
    static func momentsPerFeature(_ out: UnsafeMutablePointer<Double>, _ x: UnsafePointer<Self>, rows n: Int, features f: Int)
    /// out (2C) += per channel c: (sum, sum of squares) over the columns of x (C, N), in Double
    static func momentsPerChannel(_ out: UnsafeMutablePointer<Double>, _ x: UnsafePointer<Self>, channels c: Int, columns n: Int)
    /// y (B, C, P) = x (C, B, P), and back with `inverse`: between conv layout and PyTorch's NCHW
    static func swapLeadingAxes(_ y: UnsafeMutablePointer<Self>, _ x: UnsafePointer<Self>, outer a: Int, inner b: Int, plane p: Int)

    // MARK: weight normalization (Kernels+WeightNorm.swift)
    /// norms (R) = sqrt(|v_r|^2 + eps); w (R, K) = g_r * v_r / norms_r
    static func weightNormForward(
        _ w: UnsafeMutablePointer<Self>, norms: UnsafeMutablePointer<Self>,
        g: UnsafePointer<Self>, v: UnsafePointer<Self>, epsilon: Self, rows r: Int, columns k: Int)
    /// Given G = dL/dw (R, K): accumulates dg (R) += (G_r . v_r) / n_r and
    /// dv (R, K) += (g_r / n_r) (G_r - ((G_r . v_r) / n_r) v_r / n_r).
    static func weightNormBackward(
        _ dg: UnsafeMutablePointer<Self>, _ dv: UnsafeMutablePointer<Self>,
        _ dw: UnsafePointer<Self>, g: UnsafePointer<Self>, v: UnsafePointer<Self>,
        norms: UnsafePointer<Self>, rows r: Int, columns k: Int)

    // MARK: convolution and pooling on the (C, B, H, W) layout (Kernels+Conv.swift)
    /// col (C*KH*KW, |samples|*OH*OW) = im2col of the batch entries in `samples` of x (C, B, H, W)
    static func im2col(_ col: UnsafeMutablePointer<Self>, _ x: UnsafePointer<Self>, _ g: ConvGeometry, samples: Range<Int>)
    /// accumulates dx (C, B, H, W) += col2im(dcol) for the batch entries in `samples`, whose columns
    /// dcol (C*KH*KW, |samples|*OH*OW) holds; dcol's elements outside the image become 0
    static func col2im(_ dx: UnsafeMutablePointer<Self>, _ dcol: UnsafeMutablePointer<Self>, _ g: ConvGeometry, samples: Range<Int>)
    /// y (P, OH, OW) = max over each window of x (P, H, W); argmax holds the winner's index in its plane
    static func maxPoolForward(
        _ y: UnsafeMutablePointer<Self>, argmax: UnsafeMutablePointer<Int32>,
        _ x: UnsafePointer<Self>, _ g: PoolGeometry)
    /// sets dx (P, H, W): dy at argmax (summed where windows overlap), 0 elsewhere
    static func maxPoolBackward(
        _ dx: UnsafeMutablePointer<Self>, _ dy: UnsafePointer<Self>,
        argmax: UnsafePointer<Int32>, _ g: PoolGeometry)
    /// maxPoolForward and maxPoolBackward for the 2x2, stride 2 window (C kernels)
    static func maxPool2x2Forward(
        _ y: UnsafeMutablePointer<Self>, argmax: UnsafeMutablePointer<Int32>, _ x: UnsafePointer<Self>, _ g: PoolGeometry)
    static func maxPool2x2Backward(
        _ dx: UnsafeMutablePointer<Self>, _ dy: UnsafePointer<Self>, argmax: UnsafePointer<Int32>, _ g: PoolGeometry)

    // MARK: losses (Kernels+Loss.swift)
    /// probs (B, K) = softmax(logits); losses (B) = -log probs[label]
    static func softmaxCrossEntropyForward(
        probs: UnsafeMutablePointer<Self>, losses: UnsafeMutablePointer<Self>,
        logits: UnsafePointer<Self>, labels: UnsafePointer<Int32>, batch b: Int, classes k: Int)
    /// dlogits (B, K) = scale * (probs - onehot(labels))
    static func softmaxCrossEntropyBackward(
        _ dlogits: UnsafeMutablePointer<Self>, probs: UnsafePointer<Self>,
        labels: UnsafePointer<Int32>, scale: Self, batch b: Int, classes k: Int)
    /// index of the largest entry of each row of x (B, K)
    static func argmaxRows(_ out: UnsafeMutablePointer<Int32>, _ x: UnsafePointer<Self>, rows b: Int, columns k: Int)
    /// losses (B) = log(1 + e^z) - y z and probs (B) = sigmoid(z) for logits z (B) and labels y in {0, 1}
    static func logisticLossForward(
        probs: UnsafeMutablePointer<Self>, losses: UnsafeMutablePointer<Self>,
        logits: UnsafePointer<Self>, labels: UnsafePointer<Int32>, count b: Int)

    // MARK: recurrent cells and lookups (Kernels+Recurrent.swift)
    /// One LSTM step's pointwise part, gate order (i, f, g, o): gates (B, 4H) pre-activations in,
    /// activations out; c = f c_prev + i g, tanhC = tanh(c), h = o tanhC
    static func lstmCellForward(
        gates: UnsafeMutablePointer<Self>, c: UnsafeMutablePointer<Self>, tanhC: UnsafeMutablePointer<Self>,
        h: UnsafeMutablePointer<Self>, cPrev: UnsafePointer<Self>, batch b: Int, hidden: Int)
    /// dgates (B, 4H) and dcPrev (B, H) from dh, dc (B, H) reaching this step and its forward's caches
    static func lstmCellBackward(
        dgates: UnsafeMutablePointer<Self>, dcPrev: UnsafeMutablePointer<Self>, dh: UnsafePointer<Self>,
        dc: UnsafePointer<Self>, gates: UnsafePointer<Self>, cPrev: UnsafePointer<Self>,
        tanhC: UnsafePointer<Self>, batch b: Int, hidden: Int)
    /// y (N, D) = table rows ids (N) of table (*, D)
    static func gatherRows(
        _ y: UnsafeMutablePointer<Self>, table: UnsafePointer<Self>, ids: UnsafePointer<Int32>, count n: Int, width d: Int)
    /// Sums gradient rows by row id into a compact list: for each i, the row for ids[i] += grads[i];
    /// a first-touched id gets the next position (written to position[id] and touched[]) and a zeroed
    /// row. `distinct` rows exist on entry; returns the count after. values and touched need room for
    /// distinct + n rows.
    static func accumulateRows(
        _ values: UnsafeMutablePointer<Self>, touched: UnsafeMutablePointer<Int32>, distinct: Int,
        position: UnsafeMutablePointer<Int32>, ids: UnsafePointer<Int32>, grads: UnsafePointer<Self>,
        count n: Int, width d: Int
    ) -> Int
    /// accumulates table rows: table[dest[i]] += x[i] for x (N, D)
    static func scatterAddRows(
        _ table: UnsafeMutablePointer<Self>, _ x: UnsafePointer<Self>, dest: UnsafePointer<Int32>, count n: Int, width d: Int)

    // MARK: optimizers over arena ranges (Kernels+Optimizers.swift)
    static func sgdStep(
        _ p: UnsafeMutablePointer<Self>, momentumBuffer: UnsafeMutablePointer<Self>, grad: UnsafePointer<Self>,
        _ h: SGDHyper, count: Int)
    static func adamStep(
        _ p: UnsafeMutablePointer<Self>, m: UnsafeMutablePointer<Self>, v: UnsafeMutablePointer<Self>,
        grad: UnsafePointer<Self>, _ h: AdamHyper, count: Int)
    /// AdaGrad (torch.optim.Adagrad): sum += g^2; p -= lr g / (sqrt(sum) + eps)
    static func adagradStep(
        _ p: UnsafeMutablePointer<Self>, sum: UnsafeMutablePointer<Self>, grad: UnsafePointer<Self>,
        lr: Self, epsilon: Self, count: Int)

    // MARK: row-sparse updates of a table (R, D) from the rows one step touched (Kernels+Optimizers.swift)
    /// p[ids[i]] -= lr * grads[i]
    static func sgdRows(
        _ table: UnsafeMutablePointer<Self>, ids: UnsafePointer<Int32>, grads: UnsafePointer<Self>,
        lr: Self, count n: Int, width d: Int)
    /// AdaGrad on the rows ids[i] only, with the gradient rows grads (N, D)
    static func adagradRows(
        _ table: UnsafeMutablePointer<Self>, sum: UnsafeMutablePointer<Self>, ids: UnsafePointer<Int32>,
        grads: UnsafePointer<Self>, lr: Self, epsilon: Self, count n: Int, width d: Int)
    /// FTRL-Proximal (McMahan et al. 2013, algorithm 1) on the rows ids[i]: per coordinate
    /// sigma = (sqrt(n + g^2) - sqrt(n)) / alpha; z += g - sigma w; n += g^2;
    /// w = |z| <= l1 ? 0 : -(z - sign(z) l1) / ((beta + sqrt(n)) / alpha + l2)
    static func ftrlRows(
        _ table: UnsafeMutablePointer<Self>, z: UnsafeMutablePointer<Self>, n: UnsafeMutablePointer<Self>,
        ids: UnsafePointer<Int32>, grads: UnsafePointer<Self>, _ h: FTRLHyper, count: Int, width d: Int)

    // MARK: tabular models (Kernels+Elementwise.swift)
    /// y[r, 0..<columns] = x[r, 0..<columns] for r in 0..<rows, with row strides ldy and ldx
    static func copyColumns(_ y: UnsafeMutablePointer<Self>, ldy: Int, _ x: UnsafePointer<Self>, ldx: Int, rows: Int, columns: Int)
    /// y (N, K) = v[r] in every column of row r
    static func repeatPerRow(_ y: UnsafeMutablePointer<Self>, _ v: UnsafePointer<Self>, rows n: Int, columns k: Int)
    /// dlogits (B) = scale * (probs - labels)
    static func logisticLossBackward(
        _ dlogits: UnsafeMutablePointer<Self>, probs: UnsafePointer<Self>, labels: UnsafePointer<Int32>,
        scale: Self, count b: Int)
    /// s = sigmoid(z) (B, K); losses (B) = mean over the K columns of (s - x)^2
    static func sigmoidSquaredErrorForward(
        _ s: UnsafeMutablePointer<Self>, losses: UnsafeMutablePointer<Self>, logits: UnsafePointer<Self>,
        targets: UnsafePointer<Self>, rows b: Int, columns k: Int)
    /// dz = scale * 2 (s - x) s (1 - s) / K
    static func sigmoidSquaredErrorBackward(
        _ dz: UnsafeMutablePointer<Self>, s: UnsafePointer<Self>, targets: UnsafePointer<Self>,
        scale: Self, rows b: Int, columns k: Int)
}

extension Float: Scalar {
    public static var safetensorsDType: String { "F32" }
    public static let kernels = PrecisionKernels<Float>(
        gemm: cblas_sgemm, dot: cblas_sdot, adam: tether_adam_f32, im2col: tether_im2col_f32, col2im: tether_col2im_f32,
        maxPool2x2: tether_maxpool2x2_f32, maxPool2x2Backward: tether_maxpool2x2_backward_f32,
        winogradWeights: tether_winograd_weights_f32, winogradInput: tether_winograd_input_f32,
        winogradOutput: tether_winograd_output_f32, winogradOutputPooled: tether_winograd_output_pooled_f32)
}

extension Float {
    public static func sumOfSquares(_ x: UnsafePointer<Float>, count: Int) -> Double { tether_sum_squares_f32(x, count) }
    // The two exp-heavy loops, in C with a vectorized exp (the generic versions call libm per element).
    public static func softmaxCrossEntropyForward(
        probs: UnsafeMutablePointer<Float>, losses: UnsafeMutablePointer<Float>,
        logits: UnsafePointer<Float>, labels: UnsafePointer<Int32>, batch b: Int, classes k: Int
    ) {
        // rows are independent: cut by rows, each slice the same C loop (the same bits on any thread count)
        Compute.forEachRange(count: b, grain: Compute.elementGrain / max(1, k)) { rows in
            tether_softmax_xent_f32(
                probs + rows.lowerBound * k, losses + rows.lowerBound, logits + rows.lowerBound * k, labels + rows.lowerBound, rows.count, k
            )
        }
    }
    public static func lstmCellForward(
        gates: UnsafeMutablePointer<Float>, c: UnsafeMutablePointer<Float>, tanhC: UnsafeMutablePointer<Float>,
        h: UnsafeMutablePointer<Float>, cPrev: UnsafePointer<Float>, batch b: Int, hidden: Int
    ) {
        tether_lstm_cell_forward_f32(gates, c, tanhC, h, cPrev, b, hidden)
    }
    public static func lstmCellBackward(
        dgates: UnsafeMutablePointer<Float>, dcPrev: UnsafeMutablePointer<Float>, dh: UnsafePointer<Float>,
        dc: UnsafePointer<Float>, gates: UnsafePointer<Float>, cPrev: UnsafePointer<Float>,
        tanhC: UnsafePointer<Float>, batch b: Int, hidden: Int
    ) {
        tether_lstm_cell_backward_f32(dgates, dcPrev, dh, dc, gates, cPrev, tanhC, b, hidden)
    }
}

extension Double: Scalar {
    public static var safetensorsDType: String { "F64" }
    public static let kernels = PrecisionKernels<Double>(
        gemm: cblas_dgemm, dot: cblas_ddot, adam: tether_adam_f64, im2col: tether_im2col_f64, col2im: tether_col2im_f64,
        maxPool2x2: tether_maxpool2x2_f64, maxPool2x2Backward: tether_maxpool2x2_backward_f64,
        winogradWeights: tether_winograd_weights_f64, winogradInput: tether_winograd_input_f64,
        winogradOutput: tether_winograd_output_f64, winogradOutputPooled: tether_winograd_output_pooled_f64)
}

/// The C kernels of one precision: OpenBLAS's s or d functions and CTetherKernels' _f32 or _f64 ones.
/// Each wrapper below is written once, generically, and calls through its type's table.
public struct PrecisionKernels<T: Scalar>: Sendable {
    let gemm:
        @Sendable (
            CBLAS_ORDER, CBLAS_TRANSPOSE, CBLAS_TRANSPOSE, blasint, blasint, blasint, T, UnsafePointer<T>?, blasint, UnsafePointer<T>?,
            blasint, T, UnsafeMutablePointer<T>?, blasint
        ) -> Void
    let dot: @Sendable (blasint, UnsafePointer<T>?, blasint, UnsafePointer<T>?, blasint) -> T
    let adam:
        @Sendable (
            UnsafeMutablePointer<T>?, UnsafeMutablePointer<T>?, UnsafeMutablePointer<T>?, UnsafePointer<T>?, Int, T, T, T, T, T, T, T
        ) -> Void
    let im2col: @Sendable (UnsafeMutablePointer<T>?, UnsafePointer<T>?, UnsafePointer<tether_conv_shape>?, Int, Int) -> Void
    let col2im: @Sendable (UnsafeMutablePointer<T>?, UnsafeMutablePointer<T>?, UnsafePointer<tether_conv_shape>?, Int, Int) -> Void
    let maxPool2x2: @Sendable (UnsafeMutablePointer<T>?, UnsafeMutablePointer<Int32>?, UnsafePointer<T>?, Int, Int, Int) -> Void
    let maxPool2x2Backward: @Sendable (UnsafeMutablePointer<T>?, UnsafePointer<T>?, UnsafePointer<Int32>?, Int, Int, Int) -> Void
    let winogradWeights: @Sendable (UnsafeMutablePointer<T>?, UnsafePointer<T>?, Int, Int, Int, Int32) -> Void
    let winogradInput:
        @Sendable (UnsafeMutablePointer<T>?, Int, UnsafePointer<T>?, UnsafePointer<tether_conv_shape>?, Int, Int, UnsafeMutablePointer<T>?)
            ->
            Void
    let winogradOutput:
        @Sendable (
            UnsafeMutablePointer<T>?, UnsafePointer<T>?, Int, UnsafePointer<T>?, Int, UnsafePointer<tether_conv_shape>?, Int, Int,
            UnsafeMutablePointer<T>?
        ) -> Void
    let winogradOutputPooled:
        @Sendable (
            UnsafeMutablePointer<T>?, UnsafePointer<T>?, Int, UnsafePointer<T>?, Int, UnsafePointer<tether_conv_shape>?, Int, Int,
            UnsafeMutablePointer<T>?, Int32, T
        ) -> Void
}

extension Scalar {
    public static func dot(_ a: UnsafePointer<Self>, _ b: UnsafePointer<Self>, count: Int) -> Self {
        kernels.dot(blasint(count), a, 1, b, 1)
    }
    public static func adamStep(
        _ p: UnsafeMutablePointer<Self>, m: UnsafeMutablePointer<Self>, v: UnsafeMutablePointer<Self>,
        grad: UnsafePointer<Self>, _ h: AdamHyper, count: Int
    ) {
        let c = h.coefficients
        // each element's update alone: cut by elements, the same bits on any number of threads
        Compute.forEachRange(count: count, grain: Compute.elementGrain) { r in
            let o = r.lowerBound
            kernels.adam(
                p + o, m + o, v + o, grad + o, r.count, Self(h.beta1), Self(h.beta2), Self(h.epsilon), Self(c.stepSize),
                Self(c.rootBiasCorrection2), Self(c.decay), Self(c.coupledWeightDecay))
        }
    }
    @inline(__always)
    public static func gemm(
        transposeA: Bool, transposeB: Bool, m: Int, n: Int, k: Int, alpha: Self,
        a: UnsafePointer<Self>, lda: Int, b: UnsafePointer<Self>, ldb: Int,
        beta: Self, c: UnsafeMutablePointer<Self>, ldc: Int
    ) {
        guard m > 0, n > 0 else { return }
        Compute.splitGemm(transposeA: transposeA, transposeB: transposeB, m: m, n: n, k: k, lda: lda, ldb: ldb, ldc: ldc) {
            rows, columns, aOffset, bOffset, cOffset in
            kernels.gemm(
                CblasRowMajor, transposeA ? CblasTrans : CblasNoTrans, transposeB ? CblasTrans : CblasNoTrans,
                blasint(rows), blasint(columns), blasint(k), alpha, a + aOffset, blasint(lda), b + bOffset, blasint(ldb), beta,
                c + cOffset, blasint(ldc))
        }
    }
}

/// The process's allocator: big per-step buffers (logits of a large vocabulary) are freed and
/// allocated again every step; kept on the heap instead of returned to the kernel, they are not
/// page-faulted and zero-filled anew each time.
public enum ProcessMemory {
    public static func keepFreedBuffers() { tether_keep_heap_memory(64 << 20, 512 << 20) }
}

/// What OpenBLAS is; its threads are `Compute`'s.
public enum BLAS {
    public static var configuration: String { String(cString: openblas_get_config()) }
}
