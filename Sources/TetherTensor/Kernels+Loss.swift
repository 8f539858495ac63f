#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

// Softmax cross-entropy over (B, K) logits.

extension Scalar {
    public static func softmaxCrossEntropyForward(probs: UnsafeMutablePointer<Self>, losses: UnsafeMutablePointer<Self>,
                                                  logits: UnsafePointer<Self>, labels: UnsafePointer<Int32>, batch b: Int, classes k: Int) {
        for i in 0..<b {
            let z = logits + i * k, p = probs + i * k
            var maxZ = -Self.infinity
            for j in 0..<k where z[j] > maxZ { maxZ = z[j] }
            var total: Self = 0
            for j in 0..<k { let e = Self(exp(Double(z[j] - maxZ))); p[j] = e; total += e }
            let inv = 1 / total
            for j in 0..<k { p[j] *= inv }
            // -log softmax computed from the logits, not from p, so a tiny probability loses no precision.
            losses[i] = Self(Double(maxZ) + log(Double(total)) - Double(z[Int(labels[i])]))
        }
    }

    public static func softmaxCrossEntropyBackward(_ dlogits: UnsafeMutablePointer<Self>, probs: UnsafePointer<Self>,
                                                   labels: UnsafePointer<Int32>, scale: Self, batch b: Int, classes k: Int) {
        for i in 0..<b {
            let d = dlogits + i * k, p = probs + i * k
            for j in 0..<k { d[j] = scale * p[j] }
            d[Int(labels[i])] -= scale
        }
    }

    public static func argmaxRows(_ out: UnsafeMutablePointer<Int32>, _ x: UnsafePointer<Self>, rows b: Int, columns k: Int) {
        for i in 0..<b {
            let r = x + i * k
            var best = 0
            for j in 1..<max(k, 1) where r[j] > r[best] { best = j }
            out[i] = Int32(best)
        }
    }
}

