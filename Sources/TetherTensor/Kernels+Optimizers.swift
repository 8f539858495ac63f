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
        return (lr / (1 - pow(beta1, t)), (1 - pow(beta2, t)).squareRoot(),
                decoupled ? 1 - lr * weightDecay : 1, decoupled ? 0 : weightDecay)
    }
}

extension Scalar {
    public static func sgdStep(_ p: UnsafeMutablePointer<Self>, momentumBuffer: UnsafeMutablePointer<Self>, grad: UnsafePointer<Self>,
                               _ h: SGDHyper, count: Int) {
        let lr = Self(h.lr), mu = Self(h.momentum), damp = Self(1 - h.dampening), wd = Self(h.weightDecay)
        if h.momentum == 0 {
            for i in 0..<count { p[i] -= lr * (grad[i] + wd * p[i]) }
            return
        }
        for i in 0..<count {
            let d = grad[i] + wd * p[i]
            let buf = h.firstStep ? d : mu * momentumBuffer[i] + damp * d
            momentumBuffer[i] = buf
            p[i] -= lr * (h.nesterov ? d + mu * buf : buf)
        }
    }
}
