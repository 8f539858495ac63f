#if canImport(Glibc)
    import Glibc
#elseif canImport(Darwin)
    import Darwin
#endif
import TetherTensor

/// Which optimizer and its hyper-parameters, with PyTorch's names and defaults.
public struct OptimizerConfig: Codable, Sendable, Equatable {
    public enum Kind: String, Codable, Sendable, CaseIterable { case sgd, adam, adamw, adagrad }
    public var kind: Kind = .adam
    public var momentum = 0.0
    public var dampening = 0.0
    public var nesterov = false
    public var weightDecay = 0.0
    public var beta1 = 0.9
    public var beta2 = 0.999
    public var epsilon = 1e-8
    /// AdaGrad's epsilon (torch.optim.Adagrad: 1e-10).
    public var adagradEpsilon = 1e-10
    /// Scale the gradients so their global L2 norm is at most this (0: off), as clip_grad_norm_.
    public var clipNorm = 0.0
    /// FTRL-Proximal, used for the parameters a model assigns to it (the wide part of wide-deep).
    public var ftrl = FTRLHyper(alpha: 0.05, beta: 1, l1: 0, l2: 0)
    public init() {}
}

/// Updates the parameters from their gradients. Dense parameters are updated a contiguous range at a
/// time (one kernel call for a whole network); tables with row-sparse gradients only on the rows a step
/// touched; parameters the model assigns to FTRL-Proximal with FTRL (row-sparse only). Its state
/// buffers have the arena's layout (calloc'd, so the rows of big tables never touched cost nothing) and
/// are checkpointed per parameter under PyTorch's names (exp_avg, momentum_buffer, sum...).
public final class Optimizer<T: Scalar> {
    public let config: OptimizerConfig
    public let layout: ArenaLayout
    /// Steps taken so far (Adam's bias corrections count from 1).
    public var stepCount = 0
    private let stateNames: [String]
    private var state: [String: UnsafeMutablePointer<T>] = [:]
    private let ftrlEntries: Set<Int>
    /// Merged offset ranges of the dense parameters that follow `config.kind`.
    private let denseRanges: [Range<Int>]

    /// `ftrlParameters` names the parameters updated with FTRL-Proximal; they must have sparse gradients.
    public init(_ config: OptimizerConfig, layout: ArenaLayout, ftrlParameters: Set<String> = []) throws {
        guard config.kind != .sgd || !config.nesterov || (config.momentum > 0 && config.dampening == 0) else {
            throw OptimizerError("Nesterov momentum needs momentum > 0 and zero dampening")
        }
        self.config = config
        self.layout = layout
        let ftrlEntries = Set(layout.entries.indices.filter { ftrlParameters.contains(layout.entries[$0].name) })
        self.ftrlEntries = ftrlEntries
        for i in ftrlEntries where !layout.entries[i].sparseGradient {
            throw OptimizerError("FTRL updates only row-sparse tables; \(layout.entries[i].name) has a dense gradient")
        }
        let sparse = layout.entries.indices.filter { layout.entries[$0].sparseGradient && !ftrlEntries.contains($0) }
        if let i = sparse.first {
            let ok = config.kind == .adagrad || (config.kind == .sgd && config.momentum == 0 && config.weightDecay == 0)
            guard ok else {
                throw OptimizerError(
                    "\(layout.entries[i].name) has a row-sparse gradient: use --optimizer adagrad, or sgd without momentum and weight decay"
                )
            }
        }
        switch config.kind {
        case .sgd: stateNames = config.momentum > 0 ? ["momentum_buffer"] : []
        case .adam, .adamw: stateNames = ["exp_avg", "exp_avg_sq"]
        case .adagrad: stateNames = ["sum"]
        }
        var ranges: [Range<Int>] = []
        for e in layout.entries where !e.sparseGradient {
            if let last = ranges.last, last.upperBound == e.offset {
                ranges[ranges.count - 1] = last.lowerBound..<e.offset + e.count
            } else {
                ranges.append(e.offset..<e.offset + e.count)
            }
        }
        denseRanges = ranges
        let n = max(layout.totalCount, 1)
        for name in stateNames + (ftrlEntries.isEmpty ? [] : ["ftrl_z", "ftrl_n"]) {
            state[name] = calloc(n, MemoryLayout<T>.stride)!.bindMemory(to: T.self, capacity: n)
        }
    }

    deinit { state.values.forEach { free($0) } }

    /// Every state tensor, as "optimizer.<state>.<parameter>" with the parameter's shape, for checkpoints.
    public var stateTensors: [(key: String, shape: [Int], values: UnsafeMutablePointer<T>, count: Int)] {
        layout.entries.indices.flatMap { i -> [(key: String, shape: [Int], values: UnsafeMutablePointer<T>, count: Int)] in
            let e = layout.entries[i]
            let names = ftrlEntries.contains(i) ? ["ftrl_z", "ftrl_n"] : stateNames
            return names.map { ("optimizer.\($0).\(e.name)", e.shape, state[$0]! + e.offset, e.count) }
        }
    }

    /// One step with learning rate `lr` from the gradients in the arena and the row-sparse gradients of
    /// the model's tables.
    public func step(_ arena: ParameterArena<T>, lr: Double, sparse: [SparseRows<T>] = []) {
        precondition(arena.layout == layout, "optimizer built for another parameter layout")
        stepCount += 1
        let c = config
        if c.clipNorm > 0 { clip(arena, sparse: sparse, maxNorm: c.clipNorm) }
        for r in denseRanges {
            let p = arena.values + r.lowerBound, g = arena.grads + r.lowerBound
            switch c.kind {
            case .sgd:
                let h = SGDHyper(
                    lr: lr, momentum: c.momentum, dampening: c.dampening, weightDecay: c.weightDecay,
                    nesterov: c.nesterov, firstStep: stepCount == 1)
                T.sgdStep(p, momentumBuffer: (state["momentum_buffer"] ?? arena.grads) + r.lowerBound, grad: g, h, count: r.count)
            case .adam, .adamw:
                let h = AdamHyper(
                    lr: lr, beta1: c.beta1, beta2: c.beta2, epsilon: c.epsilon, weightDecay: c.weightDecay,
                    decoupled: c.kind == .adamw, step: stepCount)
                T.adamStep(p, m: state["exp_avg"]! + r.lowerBound, v: state["exp_avg_sq"]! + r.lowerBound, grad: g, h, count: r.count)
            case .adagrad:
                T.adagradStep(p, sum: state["sum"]! + r.lowerBound, grad: g, lr: T(lr), epsilon: T(c.adagradEpsilon), count: r.count)
            }
        }
        for rows in sparse {
            let base = rows.slot.offset, table = arena.values + base
            let (i, v, n, d) = (rows.idPointer, UnsafePointer(rows.valuePointer), rows.count, rows.width)
            guard n > 0 else { continue }
            if ftrlEntries.contains(rows.slot.index) {
                T.ftrlRows(table, z: state["ftrl_z"]! + base, n: state["ftrl_n"]! + base, ids: i, grads: v, c.ftrl, count: n, width: d)
            } else if c.kind == .adagrad {
                T.adagradRows(
                    table, sum: state["sum"]! + base, ids: i, grads: v, lr: T(lr), epsilon: T(c.adagradEpsilon), count: n, width: d)
            } else {
                T.sgdRows(table, ids: i, grads: v, lr: T(lr), count: n, width: d)
            }
        }
    }

    /// Scales every gradient, dense and sparse, by min(1, maxNorm / (norm + 1e-6)) (clip_grad_norm_).
    private func clip(_ arena: ParameterArena<T>, sparse: [SparseRows<T>], maxNorm: Double) {
        var total = denseRanges.reduce(0.0) { $0 + T.sumOfSquares(arena.grads + $1.lowerBound, count: $1.count) }
        for rows in sparse { total += T.sumOfSquares(rows.valuePointer, count: rows.count * rows.width) }
        let factor = maxNorm / (total.squareRoot() + 1e-6)
        guard factor < 1 else { return }
        for r in denseRanges { T.scale(arena.grads + r.lowerBound, by: T(factor), count: r.count) }
        for rows in sparse { rows.scale(by: T(factor)) }
    }
}

public struct OptimizerError: Error, CustomStringConvertible {
    public let description: String
    init(_ d: String) { description = d }
}

/// The learning rate as a function of the step: an optional linear warm-up from 0, then constant,
/// step decay (x gamma every `stepSize` steps) or cosine annealing to `minLR` at `totalSteps`.
public struct LRSchedule: Codable, Sendable, Equatable {
    /// plateau: the trainer multiplies the rate by gamma after each epoch whose validation loss did not
    /// improve (ReduceLROnPlateau with patience 0; word_language_model's divide-by-4).
    public enum Kind: String, Codable, Sendable, CaseIterable { case constant, step, cosine, plateau }
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
        case .constant, .plateau:
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
