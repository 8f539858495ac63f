#if canImport(Glibc)
    import Glibc
#elseif canImport(Darwin)
    import Darwin
#endif

// Softmax cross-entropy over (B, K) logits.

extension Scalar {
    public static func softmaxCrossEntropyForward(
        probs: UnsafeMutablePointer<Self>, losses: UnsafeMutablePointer<Self>,
        logits: UnsafePointer<Self>, labels: UnsafePointer<Int32>, batch b: Int, classes k: Int
    ) {
        // rows are independent: cut by rows, the same bits on any number of threads
        Compute.forEachRange(count: b, grain: Compute.elementGrain / max(1, k)) { rows in
            for i in rows {
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
    }

    public static func softmaxCrossEntropyBackward(
        _ dlogits: UnsafeMutablePointer<Self>, probs: UnsafePointer<Self>,
        labels: UnsafePointer<Int32>, scale: Self, batch b: Int, classes k: Int
    ) {
        Compute.forEachRange(count: b, grain: Compute.elementGrain / max(1, k)) { rows in
            for i in rows {
                let d = dlogits + i * k, p = probs + i * k
                for j in 0..<k { d[j] = scale * p[j] }
                d[Int(labels[i])] -= scale
            }
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

    public static func logisticLossForward(
        probs: UnsafeMutablePointer<Self>, losses: UnsafeMutablePointer<Self>,
        logits: UnsafePointer<Self>, labels: UnsafePointer<Int32>, count b: Int
    ) {
        for i in 0..<b {
            let z = Double(logits[i])
            // log(1 + e^z) = max(z, 0) + log1p(e^-|z|): no overflow for large |z|
            let softplus = max(z, 0) + log1p(exp(-abs(z)))
            losses[i] = Self(softplus - Double(labels[i]) * z)
            probs[i] = Self(1 / (1 + exp(-z)))
        }
    }

    public static func logisticLossBackward(
        _ dlogits: UnsafeMutablePointer<Self>, probs: UnsafePointer<Self>, labels: UnsafePointer<Int32>,
        scale: Self, count b: Int
    ) {
        for i in 0..<b { dlogits[i] = scale * (probs[i] - Self(labels[i])) }
    }

    public static func sigmoidSquaredErrorForward(
        _ s: UnsafeMutablePointer<Self>, losses: UnsafeMutablePointer<Self>, logits: UnsafePointer<Self>,
        targets: UnsafePointer<Self>, rows b: Int, columns k: Int
    ) {
        for r in 0..<b {
            var total = 0.0
            for j in 0..<k {
                let i = r * k + j
                let v = Self(1 / (1 + exp(-Double(logits[i]))))
                s[i] = v
                total += Double((v - targets[i]) * (v - targets[i]))
            }
            losses[r] = Self(total / Double(k))
        }
    }

    public static func sigmoidSquaredErrorBackward(
        _ dz: UnsafeMutablePointer<Self>, s: UnsafePointer<Self>, targets: UnsafePointer<Self>,
        scale: Self, rows b: Int, columns k: Int
    ) {
        let c = 2 * scale / Self(k)
        for i in 0..<b * k { dz[i] = c * (s[i] - targets[i]) * s[i] * (1 - s[i]) }
    }
}

// Regression losses over (B, K) outputs and targets: per row the mean over its K values of the squared
// error (MSE) or the absolute error (L1), as PyTorch's MSELoss and L1Loss average them.

extension Scalar {
    /// Per row: `squared[r]` and `absolute[r]`, the mean squared and mean absolute error of its K values.
    public static func regressionErrors(
        squared: UnsafeMutablePointer<Self>, absolute: UnsafeMutablePointer<Self>, outputs: UnsafePointer<Self>,
        targets: UnsafePointer<Self>, rows b: Int, columns k: Int
    ) {
        for r in 0..<b {
            var sq = 0.0, ab = 0.0
            for j in 0..<k {
                let e = Double(outputs[r * k + j]) - Double(targets[r * k + j])
                sq += e * e
                ab += abs(e)
            }
            (squared[r], absolute[r]) = (Self(sq / Double(k)), Self(ab / Double(k)))
        }
    }

    /// d(scale * summed row losses)/doutputs: 2 (y - t) / K for squared errors, sign(y - t) / K (0 at a
    /// tie, as PyTorch's) for absolute ones.
    public static func regressionBackward(
        _ d: UnsafeMutablePointer<Self>, outputs: UnsafePointer<Self>, targets: UnsafePointer<Self>, squared: Bool, scale: Self,
        rows b: Int, columns k: Int
    ) {
        let perValue = scale / Self(k)
        for i in 0..<b * k {
            let e = outputs[i] - targets[i]
            d[i] = squared ? 2 * perValue * e : (e > 0 ? perValue : e < 0 ? -perValue : 0)
        }
    }
}
