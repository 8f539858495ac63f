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
