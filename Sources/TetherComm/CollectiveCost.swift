import Foundation

/// The time an all-reduce algorithm takes on N ranks for n bytes, by the latency-bandwidth (alpha-beta)
/// model of Thakur, Rabenseifner and Gropp (2005) that MPI implementations and NCCL's tuner choose by:
/// each step costs the link's latency plus its bytes over the link's bandwidth, and a rank sends and
/// receives at once. Pure: the link's figures are arguments (measured when a ring forms).
public struct CollectiveCost: Sendable, Equatable {
    /// Seconds a message takes before its first byte arrives (one way), and bytes a second after that.
    public var latency: Double
    public var bandwidth: Double
    public init(latency: Double, bandwidth: Double) {
        precondition(latency >= 0 && bandwidth > 0)
        (self.latency, self.bandwidth) = (latency, bandwidth)
    }

    public enum Algorithm: String, CaseIterable, Sendable {
        /// Reduce-scatter then all-gather around the ring: 2(N-1) steps of n/N bytes.
        case ring
        /// Each rank's whole vector around the ring, summed in rank order by all (`Ring.gatherSum`):
        /// N-1 steps of n bytes.
        case gatherSum = "gather-sum"
        /// Recursive halving then doubling (`HalvingDoubling`): 2 log2(P) steps, n/2 + n/4 + ... bytes
        /// each way, and two steps of n bytes when N is not a power of two.
        case halvingDoubling = "halving-doubling"
        /// Partners across the ring exchange and add whole vectors (`RecursiveDoubling`): log2(P) steps
        /// of n bytes, and two more when N is not a power of two.
        case recursiveDoubling = "recursive-doubling"
        /// Reduced up a binomial tree to rank 0 and copied down (`BinomialTree`): 2 ceil(log2 N) steps
        /// of n bytes.
        case tree
    }

    /// Seconds for an all-reduce of `bytes` over `ranks` ranks with `algorithm`.
    public func seconds(_ algorithm: Algorithm, ranks: Int, bytes: Int) -> Double {
        precondition(ranks >= 1 && bytes >= 0)
        guard ranks > 1 else { return 0 }
        let n = Double(bytes), size = Double(ranks)
        func steps(_ count: Double, of stepBytes: Double) -> Double { count * (latency + stepBytes / bandwidth) }
        switch algorithm {
        case .ring:
            return steps(2 * (size - 1), of: n / size)
        case .gatherSum:
            return steps(size - 1, of: n)
        case .halvingDoubling:
            let p = HalvingDoubling.participants(ranks), levels = Double(p.trailingZeroBitCount)
            // each level moves half of the block before it: n/2, n/4, ... n/P, once each way
            let moved = 2 * n * (1 - 1 / Double(p))
            let folding = ranks == p ? 0 : steps(2, of: n)
            return 2 * levels * latency + moved / bandwidth + folding
        case .recursiveDoubling:
            let p = HalvingDoubling.participants(ranks)
            return steps(Double(p.trailingZeroBitCount + (ranks == p ? 0 : 2)), of: n)
        case .tree:
            return steps(2 * Double(BinomialTree.levels(ranks)), of: n)
        }
    }

    /// The link the default schedule (`AllReduceAlgorithm.bySize`) is chosen for where none is known
    /// or measured: 10 Gbit/s and 50 us a hop. The choice depends on a link only through latency x
    /// bandwidth (`product`, the bytes a step's latency is worth): 20-160 KB on the links Tether runs
    /// over (1 Gbit/s at 180 us, the emulated hosts' hop; 10 Gbit/s at 50-100 us; 25 Gbit/s at 50 us);
    /// this one's is 62.5 KB.
    public static let nominal = CollectiveCost(latency: 50e-6, bandwidth: 1.25e9)

    /// The bytes a step's latency is worth on this link: latency x bandwidth.
    public var product: Double { latency * bandwidth }

    /// This link as the default rule takes it (a measured one, a described one): its `product` moved to the nearest of the
    /// nominal link's times a power of two (in ratio), the bandwidth kept. A measurement's few percent
    /// of noise then changes no choice unless the link lies near the midpoint of two grid points, and a
    /// link within 1.41x of the nominal's product chooses as the nominal does.
    public func rounded() -> CollectiveCost {
        guard product > 0 else { return self }
        let nominalProduct = Self.nominal.product
        let grid = nominalProduct * exp2((log2(product / nominalProduct)).rounded())
        return CollectiveCost(latency: grid / bandwidth, bandwidth: bandwidth)
    }

    /// How much faster than the ring by the model another schedule must be to be taken by default. The
    /// ring overlaps its chunks and steps in ways the model does not count: on 8 emulated hosts
    /// halving-doubling, 9% ahead by the model at 1 MiB and level at 64 MiB, was 4% and 5% behind.
    public static let ringMargin = 1.25

    /// The default schedule for `bytes` over `ranks` ranks on this link, `rounded`: the fastest of the whole buffers round the ring, recursive doubling and
    /// halving-doubling, unless the ring is within `ringMargin` of it. A rule of the two and the link
    /// alone, so a job on the same links takes the same schedules on every run and ends with the same
    /// bits.
    public func bySize(ranks: Int, bytes: Int) -> Algorithm {
        let link = rounded(), others: [Algorithm] = [.recursiveDoubling, .halvingDoubling, .gatherSum]
        let best = link.fastest(ranks: ranks, bytes: bytes, among: others)
        let ring = link.seconds(.ring, ranks: ranks, bytes: bytes)
        return ring > Self.ringMargin * link.seconds(best, ranks: ranks, bytes: bytes) ? best : .ring
    }

    /// The fastest of `among` for this size and ring (the first of equals, in `among`'s order).
    public func fastest(ranks: Int, bytes: Int, among: [Algorithm] = Algorithm.allCases) -> Algorithm {
        precondition(!among.isEmpty)
        return among.min { seconds($0, ranks: ranks, bytes: bytes) < seconds($1, ranks: ranks, bytes: bytes) }!
    }
}
