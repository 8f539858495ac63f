import TetherTensor

/// Which optimizer and its hyper-parameters, with PyTorch's names and defaults.
public struct OptimizerConfig: Codable, Sendable, Equatable {
    public enum Kind: String, Codable, Sendable, CaseIterable { case sgd, adam, adamw }
    public var kind: Kind = .adam
    public var momentum = 0.0
    public var dampening = 0.0
    public var nesterov = false
    public var weightDecay = 0.0
    public var beta1 = 0.9
    public var beta2 = 0.999
    public var epsilon = 1e-8
    public init() {}
}

/// Updates the whole arena in one pass of one kernel (the parameters are contiguous). Its state buffers
/// have the arena's layout and are checkpointed by name (PyTorch's names: exp_avg, momentum_buffer...).
public final class Optimizer<T: Scalar> {
    public let config: OptimizerConfig
    /// Steps taken so far (Adam's bias corrections count from 1).
    public var stepCount = 0
    public let stateNames: [String]
    private let state: [UnsafeMutablePointer<T>]
    private let count: Int

    public init(_ config: OptimizerConfig, parameterCount: Int) {
        precondition(config.kind != .sgd || !config.nesterov || (config.momentum > 0 && config.dampening == 0),
                     "Nesterov momentum needs momentum > 0 and zero dampening")
        self.config = config
        count = parameterCount
        switch config.kind {
        case .sgd: stateNames = config.momentum > 0 ? ["momentum_buffer"] : []
        case .adam, .adamw: stateNames = ["exp_avg", "exp_avg_sq"]
        }
        state = stateNames.map { _ in
            let p = UnsafeMutablePointer<T>.allocate(capacity: max(parameterCount, 1))
            T.fill(p, 0, count: parameterCount)
            return p
        }
    }

    deinit { state.forEach { $0.deallocate() } }

    /// One step with learning rate `lr` from the gradients in the arena.
    public func step(_ arena: ParameterArena<T>, lr: Double) {
        precondition(arena.count == count, "optimizer built for \(count) parameters, arena has \(arena.count)")
        stepCount += 1
        let c = config
        switch c.kind {
        case .sgd:
            let h = SGDHyper(lr: lr, momentum: c.momentum, dampening: c.dampening, weightDecay: c.weightDecay,
                             nesterov: c.nesterov, firstStep: stepCount == 1)
            T.sgdStep(arena.values, momentumBuffer: state.first ?? arena.grads, grad: arena.grads, h, count: count)
        case .adam, .adamw:
            let h = AdamHyper(lr: lr, beta1: c.beta1, beta2: c.beta2, epsilon: c.epsilon, weightDecay: c.weightDecay,
                              decoupled: c.kind == .adamw, step: stepCount)
            T.adamStep(arena.values, m: state[0], v: state[1], grad: arena.grads, h, count: count)
        }
    }

    /// A state buffer (the arena's layout) by name, for checkpoints.
    public func state(named name: String) -> UnsafeMutablePointer<T>? {
        stateNames.firstIndex(of: name).map { state[$0] }
    }
}

/// The learning rate as a function of the step: an optional linear warm-up from 0, then constant,
/// step decay (x gamma every `stepSize` steps) or cosine annealing to `minLR` at `totalSteps`.
public struct LRSchedule: Codable, Sendable, Equatable {
    public enum Kind: String, Codable, Sendable, CaseIterable { case constant, step, cosine }
    public var kind: Kind = .constant
    public var baseLR = 1e-3
    public var warmupSteps = 0
    public var stepSize = 1000
    public var gamma = 0.1
    public var minLR = 0.0
    public init() {}

    /// The rate for step `t` (0-based) of a run of `totalSteps` steps (cosine anneals over them).
    public func lr(at t: Int, totalSteps: Int) -> Double {
        if t < warmupSteps { return baseLR * Double(t + 1) / Double(warmupSteps) }
        let s = t - warmupSteps
        switch kind {
        case .constant:
            return baseLR
        case .step:
            return baseLR * pow(gamma, Double(s / max(stepSize, 1)))
        case .cosine:
            let span = max(totalSteps - warmupSteps, 1)
            let progress = min(Double(s) / Double(span), 1)
            return minLR + (baseLR - minLR) * (1 + cos(Double.pi * progress)) / 2
        }
    }
}

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif
