import TetherComm

/// What a data-parallel job will do on N hosts, from what one step measures on this host and what the
/// links are (`tether plan`). Pure arithmetic, so it is tested on figures given by hand.
///
/// One step is the replica's compute (forward and backward, then the optimizer) plus the part of the
/// gradient exchange that backward does not hide. The exchange is the all-reduce of each bucket by the
/// job's `collective`; the ring's is 2(R-1) dependent steps of one link's latency each, and 2(R-1)/R
/// of the bucket's bytes over the slowest link, for R ranks (a host's ranks beside each other on the
/// ring: only the host's one link out carries ring traffic, and every ring step waits for it); the
/// others' by `CollectiveCost`, auto's the fastest of them for the bucket. Gradients become final at an even rate
/// (by bytes) through backward; each bucket goes out once a bucket's worth is final and the one before
/// it has gone, the last (partial) one at backward's end, as `GradientExchange` sends them; what shows
/// is how long the last bucket finishes after backward.
public struct ScalingModel: Sendable, Equatable {
    /// One worker's step measured on this host, in seconds: forward and backward together, and the
    /// optimizer after the exchange.
    public var forwardBackward: Double, optimizer: Double
    /// The share of forward-and-backward that is backward (the exchange's cover): about 2/3 for the
    /// layers here (backward computes two products per forward one).
    public var backwardShare = 2.0 / 3
    /// Samples one worker trains on per step.
    public var batch: Int
    /// The gradient bytes on the wire per step (after compression) and the bucket size.
    public var gradientBytes: Double, bucketBytes: Double
    /// Each host's link: bytes per second each way, and one message's latency in seconds.
    public var bandwidth: Double, latency: Double
    /// Threads each worker computes on, and the cores of a host (workers beyond them share cores).
    public var threadsPerWorker = 1, coresPerHost = 1
    /// How buckets are all-reduced (`--collective`).
    public var collective = AllReduceAlgorithm.bySize

    public init(
        forwardBackward: Double, optimizer: Double, batch: Int, gradientBytes: Double, bucketBytes: Double, bandwidth: Double,
        latency: Double
    ) {
        (self.forwardBackward, self.optimizer, self.batch) = (forwardBackward, optimizer, batch)
        (self.gradientBytes, self.bucketBytes, self.bandwidth, self.latency) = (gradientBytes, bucketBytes, bandwidth, latency)
    }

    /// The ring all-reduce of `bytes` over `ranks`: 2(R-1) latencies and 2(R-1)/R of the bytes
    /// (`CollectiveCost`'s, as every schedule's).
    public func ringSeconds(_ bytes: Double, ranks: Int) -> Double {
        link.seconds(.ring, ranks: ranks, bytes: Int(bytes.rounded(.up)))
    }

    /// The all-reduce of one bucket of `bytes` over `ranks` by `collective` (by size: the schedule the
    /// rule takes, at these links' figures; auto: the model's fastest, the whole buffer round the ring,
    /// recursive doubling and the tree only for buckets of one 1 MB chunk, as a ring times them).
    public func allReduceSeconds(_ bytes: Double, ranks: Int) -> Double {
        guard ranks > 1 else { return 0 }
        return link.seconds(schedule(bytes, ranks: ranks), ranks: ranks, bytes: Int(bytes.rounded(.up)))
    }

    /// Each host's link, for the cost model.
    var link: CollectiveCost { CollectiveCost(latency: latency, bandwidth: bandwidth) }

    /// The schedule a bucket of `bytes` takes over `ranks` by `collective`.
    public func schedule(_ bytes: Double, ranks: Int) -> CollectiveCost.Algorithm {
        let n = Int(bytes.rounded(.up))
        switch collective {
        case .ring: return .ring
        case .halvingDoubling: return .halvingDoubling
        case .recursiveDoubling: return .recursiveDoubling
        case .tree: return .tree
        case .bySize: return link.bySize(ranks: ranks, bytes: n)
        case .auto:
            let among: [CollectiveCost.Algorithm] =
                n <= RingOptions().chunkBytes ? CollectiveCost.Algorithm.allCases : [.ring, .halvingDoubling]
            return link.fastest(ranks: ranks, bytes: n, among: among)
        }
    }

    /// One step's gradients in buckets: the size of each but the last (the rest), and how many.
    var bucketing: (size: Double, count: Int) {
        let bucket = max(1, min(bucketBytes, gradientBytes))
        return (bucket, max(1, Int((gradientBytes / bucket).rounded(.up))))
    }

    /// The schedules one step's buckets take over `ranks`: the full buckets' and then, where it differs,
    /// the last one's (what `tether plan` shows for by-size and auto); none for one rank.
    public func schedules(ranks: Int) -> [CollectiveCost.Algorithm] {
        guard ranks > 1 else { return [] }
        let (bucket, buckets) = bucketing
        let full = schedule(bucket, ranks: ranks), last = schedule(gradientBytes - Double(buckets - 1) * bucket, ranks: ranks)
        return last == full ? [full] : [full, last]
    }

    public struct Prediction: Sendable, Equatable {
        public var hosts: Int, ranks: Int
        /// Seconds of one step: compute (slowed where workers share cores), and exchange not hidden.
        public var compute: Double, exposedExchange: Double
        public var samplesPerSecond: Double
        /// Samples per second against R times one undisturbed worker's (no exchange, a core of its own).
        public var efficiency: Double
    }

    /// Seconds from backward's end until the last bucket has gone round the ring: bucket i (of
    /// `bucketBytes`, the last one the rest) is final at its bytes' share of `backward` and starts when
    /// the one before it is done.
    func exchangeAfterBackward(ranks: Int, backward: Double) -> Double {
        let (bucket, buckets) = bucketing
        let whole = allReduceSeconds(bucket, ranks: ranks)
        var done = 0.0
        for i in 0..<buckets {
            let end = min(gradientBytes, Double(i + 1) * bucket), ready = i == buckets - 1 ? backward : backward * end / gradientBytes
            done = max(done, ready) + (i == buckets - 1 ? allReduceSeconds(gradientBytes - Double(i) * bucket, ranks: ranks) : whole)
        }
        return max(0, done - backward)
    }

    /// The step on `hosts` hosts of `workersPerHost` workers each.
    public func predict(hosts: Int, workersPerHost: Int = 1) -> Prediction {
        let ranks = max(1, hosts * workersPerHost)
        let sharing = max(1, Double(workersPerHost * threadsPerWorker) / Double(max(1, coresPerHost)))
        let forwardBackward = self.forwardBackward * sharing, optimizer = self.optimizer * sharing
        let exposed = ranks > 1 ? exchangeAfterBackward(ranks: ranks, backward: forwardBackward * backwardShare) : 0
        let step = forwardBackward + optimizer + exposed
        let samples = Double(ranks * batch) / step
        let alone = Double(batch) / (self.forwardBackward + self.optimizer)
        return Prediction(
            hosts: hosts, ranks: ranks, compute: forwardBackward + optimizer, exposedExchange: exposed, samplesPerSecond: samples,
            efficiency: samples / (Double(ranks) * alone))
    }
}
