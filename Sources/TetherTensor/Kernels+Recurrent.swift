#if canImport(Glibc)
    import Glibc
#elseif canImport(Darwin)
    import Darwin
#endif

// The LSTM cell's pointwise arithmetic and row lookups. Float overrides the two cell kernels with C
// (Scalar.swift); these generic versions are the Double reference the gradient checks run.

extension Scalar {
    @inline(__always) static func sigmoid(_ x: Self) -> Self { Self(1 / (1 + exp(-Double(x)))) }

    public static func lstmCellForward(
        gates: UnsafeMutablePointer<Self>, c: UnsafeMutablePointer<Self>, tanhC: UnsafeMutablePointer<Self>,
        h: UnsafeMutablePointer<Self>, cPrev: UnsafePointer<Self>, batch b: Int, hidden n: Int
    ) {
        for r in 0..<b {
            let gi = gates + r * 4 * n, gf = gi + n, gg = gf + n, go = gg + n
            for j in 0..<n {
                let i = sigmoid(gi[j]), f = sigmoid(gf[j]), g = Self(tanh(Double(gg[j]))), o = sigmoid(go[j])
                (gi[j], gf[j], gg[j], go[j]) = (i, f, g, o)
                let cj = f * cPrev[r * n + j] + i * g, t = Self(tanh(Double(cj)))
                (c[r * n + j], tanhC[r * n + j], h[r * n + j]) = (cj, t, o * t)
            }
        }
    }

    public static func lstmCellBackward(
        dgates: UnsafeMutablePointer<Self>, dcPrev: UnsafeMutablePointer<Self>, dh: UnsafePointer<Self>,
        dc: UnsafePointer<Self>, gates: UnsafePointer<Self>, cPrev: UnsafePointer<Self>,
        tanhC: UnsafePointer<Self>, batch b: Int, hidden n: Int
    ) {
        for r in 0..<b {
            let g4 = gates + r * 4 * n, d4 = dgates + r * 4 * n
            for j in 0..<n {
                let (i, f, g, o) = (g4[j], g4[n + j], g4[2 * n + j], g4[3 * n + j])
                let k = r * n + j, t = tanhC[k]
                let total = dc[k] + dh[k] * o * (1 - t * t)
                d4[3 * n + j] = dh[k] * t * o * (1 - o)
                d4[j] = total * g * i * (1 - i)
                d4[n + j] = total * cPrev[k] * f * (1 - f)
                d4[2 * n + j] = total * i * (1 - g * g)
                dcPrev[k] = total * f
            }
        }
    }

    public static func gatherRows(
        _ y: UnsafeMutablePointer<Self>, table: UnsafePointer<Self>, ids: UnsafePointer<Int32>, count n: Int, width d: Int
    ) {
        for i in 0..<n { (y + i * d).update(from: table + Int(ids[i]) * d, count: d) }
    }

    public static func scatterAddRows(
        _ table: UnsafeMutablePointer<Self>, _ x: UnsafePointer<Self>, dest: UnsafePointer<Int32>, count n: Int, width d: Int
    ) {
        for i in 0..<n {
            let row = table + Int(dest[i]) * d, xr = x + i * d
            for j in 0..<d { row[j] += xr[j] }
        }
    }

    public static func accumulateRows(
        _ values: UnsafeMutablePointer<Self>, touched: UnsafeMutablePointer<Int32>, distinct: Int,
        position: UnsafeMutablePointer<Int32>, ids: UnsafePointer<Int32>, grads: UnsafePointer<Self>,
        count n: Int, width d: Int
    ) -> Int {
        var distinct = distinct
        for i in 0..<n {
            let id = Int(ids[i])
            var p = Int(position[id])
            if p < 0 {
                p = distinct
                position[id] = Int32(p)
                touched[p] = Int32(id)
                (values + p * d).update(repeating: 0, count: d)
                distinct += 1
            }
            let row = values + p * d, g = grads + i * d
            for j in 0..<d { row[j] += g[j] }
        }
        return distinct
    }
}
