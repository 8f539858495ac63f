// Weight normalization (Salimans & Kingma 2016): w = g * v / ||v||, one g per output row.

extension Scalar {
    public static func weightNormForward(
        _ w: UnsafeMutablePointer<Self>, norms: UnsafeMutablePointer<Self>,
        g: UnsafePointer<Self>, v: UnsafePointer<Self>, epsilon: Self, rows r: Int, columns k: Int
    ) {
        for row in 0..<r {
            let vr = v + row * k, wr = w + row * k
            let ss = dot(vr, vr, count: k)
            // The epsilon sits inside the root so the norm stays smooth (and finite-difference checkable).
            let n = (ss + epsilon).squareRoot()
            norms[row] = n
            let s = g[row] / n
            for j in 0..<k { wr[j] = s * vr[j] }
        }
    }

    public static func weightNormBackward(
        _ dg: UnsafeMutablePointer<Self>, _ dv: UnsafeMutablePointer<Self>,
        _ dw: UnsafePointer<Self>, g: UnsafePointer<Self>, v: UnsafePointer<Self>,
        norms: UnsafePointer<Self>, rows r: Int, columns k: Int
    ) {
        for row in 0..<r {
            let vr = v + row * k, gr = dw + row * k, dvr = dv + row * k
            let n = norms[row]
            let gradG = dot(gr, vr, count: k) / n  // term 1: dL/dg = (G . v) / ||v||
            dg[row] += gradG
            let a = g[row] / n, b = gradG / n  // term 2: dL/dv = (g/||v||) (G - dL/dg * v/||v||)
            for j in 0..<k { dvr[j] += a * (gr[j] - b * vr[j]) }
        }
    }
}
