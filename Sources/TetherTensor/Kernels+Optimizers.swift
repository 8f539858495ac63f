#if canImport(Glibc)
    import Glibc
#elseif canImport(Darwin)
    import Darwin
#endif

// Optimizer updates over a contiguous range of the parameter arena.

/// One SGD step's hyper-parameters, with PyTorch's semantics (torch.optim.SGD).
public struct SGDHyper: Sendable {
    public var lr, momentum, dampening, weightDecay: Double
    public var nesterov: Bool
    /// The first step copies the gradient into the momentum buffer instead of blending it.
    public var firstStep: Bool
    public init(lr: Double, momentum: Double, dampening: Double, weightDecay: Double, nesterov: Bool, firstStep: Bool) {
        (self.lr, self.momentum, self.dampening, self.weightDecay, self.nesterov, self.firstStep) =
            (lr, momentum, dampening, weightDecay, nesterov, firstStep)
    }
}

/// One Adam/AdamW step's hyper-parameters, with PyTorch's semantics (torch.optim.Adam / AdamW).
public struct AdamHyper: Sendable {
    public var lr, beta1, beta2, epsilon, weightDecay: Double
    /// AdamW: decay the weights directly (decoupled); Adam: add weightDecay * p to the gradient.
    public var decoupled: Bool
    /// 1-based step count, for the bias corrections.
    public var step: Int
    public init(lr: Double, beta1: Double, beta2: Double, epsilon: Double, weightDecay: Double, decoupled: Bool, step: Int) {
        (self.lr, self.beta1, self.beta2, self.epsilon, self.weightDecay, self.decoupled, self.step) =
            (lr, beta1, beta2, epsilon, weightDecay, decoupled, step)
    }

    /// The per-step constants of the update (the kernel is in CTetherKernels: tether_adam_*).
    public var coefficients: (stepSize: Double, rootBiasCorrection2: Double, decay: Double, coupledWeightDecay: Double) {
        let t = Double(step)
        return (
            lr / (1 - pow(beta1, t)), (1 - pow(beta2, t)).squareRoot(),
            decoupled ? 1 - lr * weightDecay : 1, decoupled ? 0 : weightDecay
        )
    }
}

/// FTRL-Proximal's hyper-parameters (McMahan et al. 2013): alpha (the learning rate), beta, l1, l2.
public struct FTRLHyper: Sendable, Codable, Equatable {
    public var alpha, beta, l1, l2: Double
    public init(alpha: Double, beta: Double = 1, l1: Double = 0, l2: Double = 0) {
        (self.alpha, self.beta, self.l1, self.l2) = (alpha, beta, l1, l2)
    }
}

extension Scalar {
    public static func adagradStep(
        _ p: UnsafeMutablePointer<Self>, sum: UnsafeMutablePointer<Self>, grad: UnsafePointer<Self>,
        lr: Self, epsilon: Self, count: Int
    ) {
        Compute.forEachRange(count: count, grain: Compute.elementGrain) { range in
            for i in range {
                let g = grad[i], s = sum[i] + g * g
                sum[i] = s
                p[i] -= lr * g / (s.squareRoot() + epsilon)
            }
        }
    }

    public static func sgdRows(
        _ table: UnsafeMutablePointer<Self>, ids: UnsafePointer<Int32>, grads: UnsafePointer<Self>,
        lr: Self, count n: Int, width d: Int
    ) {
        for i in 0..<n { axpy(table + Int(ids[i]) * d, grads + i * d, alpha: -lr, count: d) }
    }

    public static func adagradRows(
        _ table: UnsafeMutablePointer<Self>, sum: UnsafeMutablePointer<Self>, ids: UnsafePointer<Int32>,
        grads: UnsafePointer<Self>, lr: Self, epsilon: Self, count n: Int, width d: Int
    ) {
        for i in 0..<n {
            let offset = Int(ids[i]) * d
            adagradStep(table + offset, sum: sum + offset, grad: grads + i * d, lr: lr, epsilon: epsilon, count: d)
        }
    }

    public static func ftrlRows(
        _ table: UnsafeMutablePointer<Self>, z: UnsafeMutablePointer<Self>, n: UnsafeMutablePointer<Self>,
        ids: UnsafePointer<Int32>, grads: UnsafePointer<Self>, _ h: FTRLHyper, count: Int, width d: Int
    ) {
        let alpha = Self(h.alpha), beta = Self(h.beta), l1 = Self(h.l1), l2 = Self(h.l2)
        for i in 0..<count {
            let offset = Int(ids[i]) * d
            for j in 0..<d {
                let k = offset + j, g = grads[i * d + j]
                let nOld = n[k], nNew = nOld + g * g
                let sigma = (nNew.squareRoot() - nOld.squareRoot()) / alpha
                let zNew = z[k] + g - sigma * table[k]
                (z[k], n[k]) = (zNew, nNew)
                table[k] = abs(zNew) <= l1 ? 0 : -(zNew - (zNew < 0 ? -l1 : l1)) / ((beta + nNew.squareRoot()) / alpha + l2)
            }
        }
    }

    public static func sgdStep(
        _ p: UnsafeMutablePointer<Self>, momentumBuffer: UnsafeMutablePointer<Self>, grad: UnsafePointer<Self>,
        _ h: SGDHyper, count: Int
    ) {
        let lr = Self(h.lr), mu = Self(h.momentum), damp = Self(1 - h.dampening), wd = Self(h.weightDecay)
        // each element's update alone: cut by elements, the same bits on any number of threads
        Compute.forEachRange(count: count, grain: Compute.elementGrain) { range in
            if h.momentum == 0 {
                for i in range { p[i] -= lr * (grad[i] + wd * p[i]) }
                return
            }
            for i in range {
                let d = grad[i] + wd * p[i]
                let buf = h.firstStep ? d : mu * momentumBuffer[i] + damp * d
                momentumBuffer[i] = buf
                p[i] -= lr * (h.nesterov ? d + mu * buf : buf)
            }
        }
    }
}
