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

    public static func adamStep(_ p: UnsafeMutablePointer<Self>, m: UnsafeMutablePointer<Self>, v: UnsafeMutablePointer<Self>,
                                grad: UnsafePointer<Self>, _ h: AdamHyper, count: Int) {
        let b1 = Self(h.beta1), b2 = Self(h.beta2), eps = Self(h.epsilon), wd = Self(h.weightDecay)
        let t = Double(h.step)
        let bc1 = 1 - pow(h.beta1, t), bc2 = 1 - pow(h.beta2, t)
        let stepSize = Self(h.lr / bc1), rootBC2 = Self(bc2.squareRoot())
        let decay = h.decoupled ? 1 - Self(h.lr) * wd : 1
        let coupledWD = h.decoupled ? 0 : wd
        for i in 0..<count {
            let gi = grad[i] + coupledWD * p[i]
            let mi = b1 * m[i] + (1 - b1) * gi
            let vi = b2 * v[i] + (1 - b2) * gi * gi
            m[i] = mi; v[i] = vi
            p[i] = p[i] * decay - stepSize * mi / (vi.squareRoot() / rootBC2 + eps)
        }
    }
}

