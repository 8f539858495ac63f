/// Recursive halving-doubling all-reduce (Rabenseifner; gloo's AllreduceHalvingDoubling, MPICH's
/// reduce_scatter + allgather for medium messages) as a schedule: which peer each step exchanges
/// with, which elements go and which come, and whether they are added or copied. Pure: it says what
/// moves where; a link moves it. 2 log2(P) steps instead of the ring's 2(N-1), the same bytes per
/// rank (2 (P-1)/P x n), where P is the largest power of two not above N.
///
/// N = P + r ranks: first the r extra ones fold in: of ranks 0..<2r, each even one sends its whole
/// vector to the odd one above it, which adds it and takes part for both; the P taking part (virtual
/// ranks 0..<P) reduce-scatter by recursive halving (in step k, partner = v XOR P/2^(k+1); each keeps
/// the half of its block of segments that its bit says, sends the other half, and adds what comes)
/// until each holds one of the P segments summed over all N, then all-gather by recursive doubling
/// (the same partners in reverse order, copying); last, each odd rank below 2r sends the whole result
/// to the even one below it. Each segment's sum is made on one rank and copied to the others: every
/// rank ends with bitwise the same values.
public enum HalvingDoubling {
    /// One exchange with `peer`: this rank sends `send` and receives `receive` (either may be empty;
    /// both are element ranges of the vector), adding what it receives or copying it.
    public struct Step: Equatable, Sendable {
        /// Where the step lies in the whole schedule, the same number on both partners: 0 folding in,
        /// 1...L halving, L+1...2L doubling, 2L+1 sending the result back (L = log2 P).
        public var stage: Int
        public var peer: Int
        public var send: Range<Int>
        public var receive: Range<Int>
        public var adds: Bool
    }

    /// The largest power of two not above `size` (1 for a ring of one).
    public static func participants(_ size: Int) -> Int {
        precondition(size >= 1)
        var p = 1
        while p * 2 <= size { p *= 2 }
        return p
    }

    /// Folding N = P + r ranks into P: the virtual rank of `rank` among the P taking part, or nil for
    /// an even rank below 2r (folded into the odd one above it).
    static func virtualRank(_ rank: Int, size: Int) -> Int? {
        let extra = size - participants(size)
        if rank < 2 * extra { return rank % 2 == 0 ? nil : rank / 2 }
        return rank - extra
    }

    /// The rank of virtual rank `v`.
    static func realRank(_ v: Int, size: Int) -> Int {
        let extra = size - participants(size)
        return v < extra ? 2 * v + 1 : v + extra
    }

    /// Rank `rank`'s steps in an all-reduce of `count` elements over `size` ranks, in order.
    public static func steps(rank: Int, size: Int, count: Int) -> [Step] {
        precondition((0..<size).contains(rank) && count >= 0)
        let p = participants(size), extra = size - p, levels = p.trailingZeroBitCount
        let whole = 0..<count
        func real(_ v: Int) -> Int { realRank(v, size: size) }
        guard let v = virtualRank(rank, size: size) else {
            // folded in: its vector goes to the odd rank above, the result comes back from it
            return [
                Step(stage: 0, peer: rank + 1, send: whole, receive: 0..<0, adds: false),
                Step(stage: 2 * levels + 1, peer: rank + 1, send: 0..<0, receive: whole, adds: false)
            ]
        }
        var out: [Step] = []
        if rank < 2 * extra { out.append(Step(stage: 0, peer: rank - 1, send: 0..<0, receive: whole, adds: true)) }
        // Reduce-scatter: `block` is the segments this rank still reduces, halved each step.
        var block = 0..<p
        var partners: [(peer: Int, kept: Range<Int>, given: Range<Int>)] = []
        var distance = p / 2
        while distance >= 1 {
            let middle = block.lowerBound + block.count / 2
            let lower = block.lowerBound..<middle, upper = middle..<block.upperBound
            let keepsLower = v & distance == 0
            let (kept, given) = keepsLower ? (lower, upper) : (upper, lower)
            let peer = real(v ^ distance)
            out.append(
                Step(
                    stage: out.count + (rank < 2 * extra ? 0 : 1), peer: peer, send: elements(given, of: count, in: p),
                    receive: elements(kept, of: count, in: p), adds: true))
            partners.append((peer, kept, given))
            block = kept
            distance /= 2
        }
        // All-gather: the same partners in reverse; what this rank kept goes, what it gave comes back summed.
        for (j, (peer, kept, given)) in partners.reversed().enumerated() {
            out.append(
                Step(
                    stage: levels + 1 + j, peer: peer, send: elements(kept, of: count, in: p), receive: elements(given, of: count, in: p),
                    adds: false))
        }
        if rank < 2 * extra { out.append(Step(stage: 2 * levels + 1, peer: rank - 1, send: whole, receive: 0..<0, adds: false)) }
        return out
    }

    /// The elements of segments `segments` when `count` elements are cut into `p` segments.
    static func elements(_ segments: Range<Int>, of count: Int, in p: Int) -> Range<Int> {
        Ring.segment(segments.lowerBound, of: count, parts: p)
            .lowerBound..<Ring.segment(segments.upperBound, of: count, parts: p).lowerBound
    }
}

/// Recursive doubling (MPICH's all-reduce for short messages) as a schedule: log2(P) exchanges of the
/// whole vector, half halving-doubling's steps at more bytes (n each way in each), so it wins where a
/// step's latency is the cost. In step k (stages 1...L) virtual rank v exchanges with v XOR 2^(k-1)
/// and adds what comes to what it holds; both partners add the same two vectors, and IEEE addition is
/// commutative, so both hold the same bits, and after L steps every rank holds the same sum. N = P + r:
/// the r extra ranks fold in first and get the result last, as in `HalvingDoubling` (stage 0 folding
/// in, L+1 the result back). Pure, like `HalvingDoubling`: the same `Step`s, every one of which both
/// sends and receives the whole vector, so what is sent must leave as a copy (it is added into while
/// on its way).
public enum RecursiveDoubling {
    /// Rank `rank`'s steps in an all-reduce of `count` elements over `size` ranks, in order.
    public static func steps(rank: Int, size: Int, count: Int) -> [HalvingDoubling.Step] {
        precondition((0..<size).contains(rank) && count >= 0)
        let p = HalvingDoubling.participants(size), extra = size - p, levels = p.trailingZeroBitCount
        let whole = 0..<count
        guard let v = HalvingDoubling.virtualRank(rank, size: size) else {
            return [
                .init(stage: 0, peer: rank + 1, send: whole, receive: 0..<0, adds: false),
                .init(stage: levels + 1, peer: rank + 1, send: 0..<0, receive: whole, adds: false)
            ]
        }
        var out: [HalvingDoubling.Step] = []
        if rank < 2 * extra { out.append(.init(stage: 0, peer: rank - 1, send: 0..<0, receive: whole, adds: true)) }
        for k in 0..<levels {
            out.append(
                .init(stage: k + 1, peer: HalvingDoubling.realRank(v ^ (1 << k), size: size), send: whole, receive: whole, adds: true))
        }
        if rank < 2 * extra { out.append(.init(stage: levels + 1, peer: rank - 1, send: whole, receive: 0..<0, adds: false)) }
        return out
    }
}
