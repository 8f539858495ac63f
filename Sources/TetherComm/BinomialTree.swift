/// A binomial-tree all-reduce as a schedule (MPICH's reduce + broadcast for the smallest messages):
/// the whole buffer is summed up the tree to rank 0 in L = ceil(log2 N) rounds (in round k, a rank
/// whose lowest set bit is k sends to rank - 2^k and is done; one with bits 0...k clear receives from
/// rank + 2^k, if there is one, and adds), then copied down in the rounds in reverse. 2L steps of
/// the whole buffer: as few as halving-doubling's when N is a power of two and fewer when it is not
/// (no folding), at more bytes, so only worth it where the latencies are all there is. Rank 0 makes
/// every sum: every rank ends bitwise equal. Pure: it says who sends to whom; a link moves it.
public enum BinomialTree {
    /// One message of the whole buffer: this rank sends it to `peer`, or receives it from `peer`
    /// (adding it in the reduce stages 0..<L, copying it in the broadcast stages L..<2L).
    public struct Step: Equatable, Sendable {
        /// the same number on both ends: round k up is stage k, round k down is stage 2L - 1 - k
        public var stage: Int
        public var peer: Int
        public var sends: Bool
    }

    /// The rounds: ceil(log2 size).
    public static func levels(_ size: Int) -> Int {
        precondition(size >= 1)
        return size == 1 ? 0 : Int.bitWidth - (size - 1).leadingZeroBitCount
    }

    /// Rank `rank`'s steps in an all-reduce over `size` ranks, in order.
    public static func steps(rank: Int, size: Int) -> [Step] {
        precondition((0..<size).contains(rank))
        let levels = levels(size)
        var up: [Step] = []
        for k in 0..<levels {
            let mask = 1 << k
            if rank & mask != 0 {
                up.append(Step(stage: k, peer: rank - mask, sends: true))
                break
            }
            if rank + mask < size { up.append(Step(stage: k, peer: rank + mask, sends: false)) }
        }
        // down: the same edges in reverse order and direction
        let down = up.reversed().map { Step(stage: 2 * levels - 1 - $0.stage, peer: $0.peer, sends: !$0.sends) }
        return up + down
    }
}
