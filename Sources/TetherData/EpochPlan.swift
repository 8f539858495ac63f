import TetherTensor

/// The order in which one epoch visits a dataset: a permutation of 0..<N drawn from the run's seed and
/// the epoch number alone, so any process (a resumed run, a coordinator, a worker) computes the same one.
/// Steps take consecutive runs of `globalBatch` positions; the last step of an epoch takes what is left,
/// so every sample is used exactly once per epoch and nothing is padded.
public struct EpochPlan: Sendable, Equatable {
    public let epoch: Int
    public let order: [Int]
    public let globalBatch: Int

    public init(seed: UInt64, epoch: Int, count: Int, globalBatch: Int, shuffle: Bool = true) {
        precondition(globalBatch > 0)
        self.epoch = epoch
        self.globalBatch = globalBatch
        var rng = RNG(seed: seed, stream: 0x5348_5546 &+ UInt64(epoch))  // "SHUF" + epoch
        order = shuffle ? rng.permutation(count) : Array(0..<count)
    }

    public var steps: Int { (order.count + globalBatch - 1) / globalBatch }

    /// The sample indices of step `s` (0-based within the epoch).
    public func samples(step s: Int) -> ArraySlice<Int> {
        let start = s * globalBatch
        return order[start..<min(start + globalBatch, order.count)]
    }
}

/// The rows of a dataset of `count` (2 or more) held out for evaluation when no test split is given:
/// every tenth (rows 9, 19, ...), or, with `fraction` f, h = f x count rows (rounded; at least one,
/// never all) spread evenly, row (j + 1) x count / h - 1 for j in 0..<h (f = 0.1 gives every tenth).
public func heldOutRows(count: Int, fraction: Double? = nil) -> [Int] {
    precondition(count >= 2)
    guard let fraction else {
        let tenth = Array(stride(from: 9, to: count, by: 10))
        return tenth.isEmpty ? [count - 1] : tenth
    }
    let h = min(max(Int((fraction * Double(count)).rounded()), 1), count - 1)
    return (0..<h).map { ($0 + 1) * count / h - 1 }
}
