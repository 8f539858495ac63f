// Default implementations of Scalar's memory, elementwise and broadcast kernels.
// They are specialized for Float and Double at the conformances in Scalar.swift.

#if canImport(Glibc)
    import Glibc
#endif

extension Scalar {
    public static func zeros(count: Int) -> [Self] { [Self](repeating: 0, count: count) }

    public static func fill(_ y: UnsafeMutablePointer<Self>, _ value: Self, count: Int) {
        y.update(repeating: value, count: count)
    }

    public static func convert(_ y: UnsafeMutablePointer<Self>, fromFloats x: UnsafePointer<Float>, count: Int) {
        for i in 0..<count { y[i] = Self(x[i]) }
    }

    public static func convert(_ y: UnsafeMutablePointer<Float>, toFloats x: UnsafePointer<Self>, count: Int) {
        for i in 0..<count { y[i] = Float(x[i]) }
    }

    public static func convert(_ y: UnsafeMutablePointer<Self>, fromBytes x: UnsafePointer<UInt8>, scale: Self, count: Int) {
        for i in 0..<count { y[i] = Self(x[i]) * scale }
    }

    public static func axpy(_ y: UnsafeMutablePointer<Self>, _ x: UnsafePointer<Self>, alpha: Self, count: Int) {
        for i in 0..<count { y[i] += alpha * x[i] }
    }

    public static func scale(_ y: UnsafeMutablePointer<Self>, by alpha: Self, count: Int) {
        for i in 0..<count { y[i] *= alpha }
    }

    public static func sumOfSquares(_ x: UnsafePointer<Self>, count: Int) -> Double {
        var s: Double = 0
        for i in 0..<count { let v = Double(x[i]); s += v * v }
        return s
    }

    public static func sum(_ x: UnsafePointer<Self>, count: Int) -> Double {
        var s: Double = 0
        for i in 0..<count { s += Double(x[i]) }
        return s
    }

    public static func leakyReLUForward(_ y: UnsafeMutablePointer<Self>, _ x: UnsafePointer<Self>, slope: Self, count: Int) {
        Compute.forEachRange(count: count, grain: Compute.elementGrain) { range in
            for i in range { let v = x[i]; y[i] = v > 0 ? v : slope * v }
        }
    }

    public static func leakyReLUBackward(
        _ dx: UnsafeMutablePointer<Self>, _ dy: UnsafePointer<Self>, _ x: UnsafePointer<Self>,
        slope: Self, count: Int
    ) {
        Compute.forEachRange(count: count, grain: Compute.elementGrain) { range in
            for i in range { dx[i] = x[i] > 0 ? dy[i] : slope * dy[i] }
        }
    }

    public static func multiply(_ y: UnsafeMutablePointer<Self>, _ x: UnsafePointer<Self>, _ mask: UnsafePointer<Self>, count: Int) {
        for i in 0..<count { y[i] = x[i] * mask[i] }
    }

    public static func dropoutMask(_ mask: UnsafeMutablePointer<Self>, dropProbability p: Double, rng: inout RNG, count: Int) {
        let keep = Self(1 / (1 - p))
        for i in 0..<count { mask[i] = rng.nextUnitDouble() < p ? 0 : keep }
    }

    public static func fillNormal(_ y: UnsafeMutablePointer<Self>, mean: Double, std: Double, rng: inout RNG, count: Int) {
        for i in 0..<count { y[i] = Self(mean + std * rng.nextNormal()) }
    }

    public static func fillUniform(_ y: UnsafeMutablePointer<Self>, low: Double, high: Double, rng: inout RNG, count: Int) {
        for i in 0..<count { y[i] = Self(low + (high - low) * rng.nextUnitDouble()) }
    }

    public static func copyColumns(_ y: UnsafeMutablePointer<Self>, ldy: Int, _ x: UnsafePointer<Self>, ldx: Int, rows: Int, columns: Int) {
        for r in 0..<rows { (y + r * ldy).update(from: x + r * ldx, count: columns) }
    }

    public static func repeatPerRow(_ y: UnsafeMutablePointer<Self>, _ v: UnsafePointer<Self>, rows n: Int, columns k: Int) {
        for r in 0..<n { (y + r * k).update(repeating: v[r], count: k) }
    }

    public static func addPerFeature(_ y: UnsafeMutablePointer<Self>, _ v: UnsafePointer<Self>, alpha: Self, rows n: Int, features f: Int) {
        for r in 0..<n {
            let row = y + r * f
            for j in 0..<f { row[j] += alpha * v[j] }
        }
    }

    /// Cut by features, each slice summing its columns over the rows in order: the same bits on any
    /// number of threads.
    public static func sumPerFeature(_ out: UnsafeMutablePointer<Self>, _ x: UnsafePointer<Self>, rows n: Int, features f: Int) {
        Compute.forEachRange(count: f, grain: Compute.elementGrain / max(1, n)) { features in
            for r in 0..<n {
                let row = x + r * f
                for j in features { out[j] += row[j] }
            }
        }
    }

    public static func addPerChannel(
        _ y: UnsafeMutablePointer<Self>, _ v: UnsafePointer<Self>, alpha: Self, channels c: Int, columns n: Int
    ) {
        Compute.forEachRange(count: c, grain: Compute.elementGrain / max(1, n)) { channels in
            for ch in channels {
                let row = y + ch * n, add = alpha * v[ch]
                for j in 0..<n { row[j] += add }
            }
        }
    }

    public static func sumPerChannel(_ out: UnsafeMutablePointer<Self>, _ x: UnsafePointer<Self>, channels c: Int, columns n: Int) {
        Compute.forEachRange(count: c, grain: Compute.elementGrain / max(1, n)) { channels in
            for ch in channels { out[ch] += rowSum(x + ch * n, count: n) }
        }
    }

    public static func momentsPerFeature(_ out: UnsafeMutablePointer<Double>, _ x: UnsafePointer<Self>, rows n: Int, features f: Int) {
        for r in 0..<n {
            let row = x + r * f
            for j in 0..<f { let v = Double(row[j]); out[2 * j] += v; out[2 * j + 1] += v * v }
        }
    }

    public static func momentsPerChannel(_ out: UnsafeMutablePointer<Double>, _ x: UnsafePointer<Self>, channels c: Int, columns n: Int) {
        for ch in 0..<c {
            let row = x + ch * n
            var s = 0.0, ss = 0.0
            for j in 0..<n { let v = Double(row[j]); s += v; ss += v * v }
            out[2 * ch] += s; out[2 * ch + 1] += ss
        }
    }

    /// Sum of a row with eight independent accumulators: the compiler keeps a single Float sum in order
    /// (no vectors), but packs independent ones into one vector register.
    @inline(__always) static func rowSum(_ x: UnsafePointer<Self>, count n: Int) -> Self {
        var (a0, a1, a2, a3, a4, a5, a6, a7): (Self, Self, Self, Self, Self, Self, Self, Self) = (0, 0, 0, 0, 0, 0, 0, 0)
        var j = 0
        while j + 8 <= n {
            a0 += x[j]; a1 += x[j + 1]; a2 += x[j + 2]; a3 += x[j + 3]
            a4 += x[j + 4]; a5 += x[j + 5]; a6 += x[j + 6]; a7 += x[j + 7]
            j += 8
        }
        var s = ((a0 + a1) + (a2 + a3)) + ((a4 + a5) + (a6 + a7))
        while j < n { s += x[j]; j += 1 }
        return s
    }

    public static func swapLeadingAxes(_ y: UnsafeMutablePointer<Self>, _ x: UnsafePointer<Self>, outer a: Int, inner b: Int, plane p: Int)
    {
        // x (A, B, P) -> y (B, A, P)
        for i in 0..<a {
            for j in 0..<b {
                (y + (j * a + i) * p).update(from: x + (i * b + j) * p, count: p)
            }
        }
    }
}

/// Pointwise activations of a model spec, forward and backward over n values. Backward takes the
/// forward's output y where the derivative is cheapest from it (tanh: 1 - y^2; sigmoid: y (1 - y)),
/// the input x where not (GELU).
extension Scalar {
    public static func tanhForward(_ y: UnsafeMutablePointer<Self>, _ x: UnsafePointer<Self>, count n: Int) {
        for i in 0..<n { y[i] = Self(Glibc.tanh(Double(x[i]))) }
    }
    /// dx = dy (1 - y^2)
    public static func tanhBackward(_ dx: UnsafeMutablePointer<Self>, _ dy: UnsafePointer<Self>, _ y: UnsafePointer<Self>, count n: Int) {
        for i in 0..<n { dx[i] = dy[i] * (1 - y[i] * y[i]) }
    }
    public static func sigmoidForward(_ y: UnsafeMutablePointer<Self>, _ x: UnsafePointer<Self>, count n: Int) {
        for i in 0..<n { y[i] = Self(1 / (1 + Glibc.exp(-Double(x[i])))) }
    }
    /// dx = dy y (1 - y)
    public static func sigmoidBackward(_ dx: UnsafeMutablePointer<Self>, _ dy: UnsafePointer<Self>, _ y: UnsafePointer<Self>, count n: Int)
    {
        for i in 0..<n { dx[i] = dy[i] * y[i] * (1 - y[i]) }
    }
    /// GELU with the tanh approximation (PyTorch's approximate="tanh", as GPT-2 and llm.c use):
    /// y = x/2 (1 + tanh(s (x + 0.044715 x^3))), s = sqrt(2/pi).
    public static func geluForward(_ y: UnsafeMutablePointer<Self>, _ x: UnsafePointer<Self>, count n: Int) {
        let s = (2 / Double.pi).squareRoot()
        for i in 0..<n {
            let v = Double(x[i])
            y[i] = Self(0.5 * v * (1 + Glibc.tanh(s * (v + 0.044715 * v * v * v))))
        }
    }
    /// dx = dy (1/2 (1 + t) + x/2 (1 - t^2) s (1 + 3 * 0.044715 x^2)), t = tanh(s (x + 0.044715 x^3))
    public static func geluBackward(_ dx: UnsafeMutablePointer<Self>, _ dy: UnsafePointer<Self>, _ x: UnsafePointer<Self>, count n: Int) {
        let s = (2 / Double.pi).squareRoot()
        for i in 0..<n {
            let v = Double(x[i]), t = Glibc.tanh(s * (v + 0.044715 * v * v * v))
            let local = 0.5 * (1 + t) + 0.5 * v * (1 - t * t) * s * (1 + 3 * 0.044715 * v * v)
            dx[i] = dy[i] * Self(local)
        }
    }
}
