import Foundation
import TetherMessages

/// N ranks in a ring, the schedules of its collectives: each rank sends only to rank+1 and receives
/// only from rank-1 over its `RingLink`, which checks every chunk; this file only says which chunk goes
/// where, when.
///
/// All-reduce is reduce-scatter then all-gather (design: "Ring all-reduce"). Each segment moves in
/// chunks, and a chunk is passed on as soon as it is reduced, so the ring is a pipeline: while this
/// rank adds one chunk, libzmq's I/O thread is already receiving the next into its own buffer (the
/// double buffering), and sending the previous one.
///
/// Any mismatch of a received header fails the collective at once, and a failing rank sends an Abort
/// on around the ring so every rank reports the first cause. A ring that failed stays failed.
public final class Ring {
    public let rank: Int
    public let size: Int
    public let addresses: [String]
    public let options: RingOptions
    /// Where the time of the collectives went, since the ring was made.
    public var statistics: RingStatistics { link?.statistics ?? RingStatistics() }
    /// nil in a ring of one
    let link: RingLink?
    private(set) var sequence: UInt64 = 0
    private var failure: CollectiveError?
    /// With `AllReduceAlgorithm.auto` or `.bySize`: the links' latency and bandwidth, measured when the
    /// ring formed and the same on every rank (`measureLinks`), or by-size's as given
    /// (`RingOptions.link`); nil otherwise, or while they are measured.
    public private(set) var linkCost: CollectiveCost?
    /// The narrowed chunks a 16-bit all-reduce lends to libzmq (grown as needed, reused).
    private var wireStaging = UnsafeMutablePointer<UInt16>.allocate(capacity: 0)
    private var wireStagingCount = 0

    public var left: Int { wrapped(rank - 1) }
    public var right: Int { wrapped(rank + 1) }

    /// A rank index taken around the ring (any integer, negative too).
    func wrapped(_ i: Int) -> Int { (i % size + size) % size }

    /// Binds this rank's address, connects to the right neighbour's and waits (up to the timeout) for the
    /// left neighbour's handshake. `addresses[i]` is rank i's: tcp://HOST:PORT, ipc://PATH or inproc://NAME
    /// (inproc only between ranks sharing `context`). `listening` runs once this rank's address is
    /// bound, before it connects: a re-formed ring waits there until every member listens, because a
    /// connection made earlier could reach a neighbour's abandoned socket at the same address and its
    /// messages would be lost.
    public init(
        context: ZeroMQContext, rank: Int, addresses: [String], options: RingOptions = RingOptions(),
        listening: () throws -> Void = {}
    ) throws {
        guard !addresses.isEmpty, (0..<addresses.count).contains(rank) else {
            throw CollectiveError(message: "rank \(rank) is outside a ring of \(addresses.count)")
        }
        (self.rank, self.size, self.addresses, self.options) = (rank, addresses.count, addresses, options)
        guard addresses.count > 1 else { link = nil; return }
        link = try RingLink(context: context, rank: rank, addresses: addresses, options: options, listening: listening)
        try run(.handshake) {
            try send(
                header(.handshake, totalCount: 0), ringStep: 0, index: 0, offset: 0, .copied(UnsafeRawBufferPointer(start: nil, count: 0)))
            _ = try receive(ExpectedChunk(operation: .handshake, ringStep: 0, chunkIndex: 0, offset: 0, count: 0, totalCount: 0))
        }
        switch options.allReduce {
        case .auto: linkCost = try measureLinks()
        // a ring within one host (unix sockets, inproc) takes the nominal link: its links are memory,
        // and measuring them times the shared cores (4 ranks over ipc read 39 and 49 KB of latency x
        // bandwidth in two runs, either side of a boundary of the rule's grid)
        case .bySize: linkCost = try options.link ?? (addresses.contains { $0.hasPrefix("tcp://") } ? measureLinks() : nil)
        case .ring, .recursiveDoubling, .halvingDoubling, .tree: break
        }
    }

    /// The links' figures for the cost model, as NCCL's tuner and MPI's selection take theirs from the
    /// hardware, measured instead: the latency of one hop from the median of 5 barriers (N-1 hops
    /// each), the bandwidth from the faster of two 4 MiB ring all-reduces' time less its hops' latency
    /// (the first also makes the connections' buffers grow). Each rank's
    /// figures are averaged over the ring (a Double all-reduce), so every rank holds the same and
    /// chooses the same algorithm for every buffer. About 60 ms on 8 hosts at 1 Gbit/s, 5-10 ms on one
    /// host.
    private func measureLinks() throws -> CollectiveCost {
        let hops = Double(size - 1)
        var barriers: [Double] = []
        for _ in 0..<5 {
            let t = ContinuousClock.now
            try barrier()
            barriers.append(t.duration(to: .now).seconds)
        }
        let hop = barriers.sorted()[2] / hops
        var probe = [Float](repeating: 1, count: 1 << 20), ring = Double.infinity
        for _ in 0..<2 {
            let t = ContinuousClock.now
            _ = try probe.withUnsafeMutableBufferPointer {
                try allReduceElements($0, by: .ring, average: false, step: 0, bucket: 0, vote: [])
            }
            ring = min(ring, t.duration(to: .now).seconds)
        }
        var figures = [hop, ring]
        _ = try figures.withUnsafeMutableBufferPointer {
            try allReduceElements($0, by: .gatherSum, average: true, step: 0, bucket: 0, vote: [])
        }
        return Self.linkFigures(hop: figures[0], ring: figures[1], ranks: size, probeBytes: probe.count * 4)
    }

    /// The link of a hop's latency and a ring all-reduce's time of `probeBytes` over `ranks` (averages
    /// of every member's measurement): the bandwidth is the bytes a rank sends over the ring's time less
    /// its hops' latency. What is not a time (NaN, negative, absurd) is held to a range, not trusted:
    /// no member's figure can stop a rank.
    static func linkFigures(hop: Double, ring: Double, ranks: Int, probeBytes: Int) -> CollectiveCost {
        func clamped(_ x: Double, _ range: ClosedRange<Double>) -> Double {
            x.isNaN ? range.lowerBound : min(max(x, range.lowerBound), range.upperBound)
        }
        let hops = Double(ranks - 1), latency = clamped(hop, 0...10), ringSeconds = clamped(ring, 1e-6...100)
        let bytes = 2 * hops / Double(ranks) * Double(probeBytes)
        return CollectiveCost(latency: latency, bandwidth: clamped(bytes / max(ringSeconds - 2 * hops * latency, 1e-6), 1e3...1e13))
    }

    /// The schedule the last all-reduce took (of a 16-bit wire too).
    public private(set) var lastAllReduce: CollectiveCost.Algorithm = .ring

    /// The schedule an all-reduce of `bytes` takes (f32 or f64 on the wire); with `.auto`, the one
    /// chosen for that size, or (while it is being chosen) the next to be timed.
    public func schedule(bytes: Int) -> CollectiveCost.Algorithm {
        switch options.allReduce {
        case .halvingDoubling: return .halvingDoubling
        case .recursiveDoubling: return .recursiveDoubling
        case .tree: return .tree
        case .bySize: return (linkCost ?? .nominal).bySize(ranks: size, bytes: bytes)
        case .auto where linkCost != nil:
            let tuning = tuning[bytes] ?? AutoTuning(candidates: candidates(bytes: bytes))
            return tuning.chosen ?? tuning.candidates[tuning.calls % tuning.candidates.count]
        case .ring, .auto: return bytes <= min(options.gatherSumBytes, options.chunkBytes) ? .gatherSum : .ring
        }
    }

    /// --collective auto, per buffer size: the `candidates(bytes:)`, each timed `AutoTuning.rounds`
    /// times in turn on the first all-reduces of that size, then the fastest by their median time,
    /// averaged over the ranks (by an all-reduce, so every rank holds the same figures and chooses
    /// alike). The model alone misjudged small buffers on shaped links:
    /// a token bucket lets a burst through at line rate, and 8 ranks on 2 cores wait for a core, not
    /// the wire (docs/ARCHITECTURE.md, "Halving-doubling").
    struct AutoTuning {
        static let rounds = 3
        let candidates: [CollectiveCost.Algorithm]
        /// each candidate's times, in turn
        var seconds: [[Double]]
        var calls = 0
        var chosen: CollectiveCost.Algorithm?
        init(candidates: [CollectiveCost.Algorithm]) {
            self.candidates = candidates
            seconds = Array(repeating: [], count: candidates.count)
            if candidates.count == 1 { chosen = candidates[0] }
        }
    }
    private var tuning: [Int: AutoTuning] = [:]

    /// The schedules --collective auto times for `bytes`: a buffer of one chunk or less, every schedule
    /// (the model misjudges small messages on shaped links: on 8 emulated hosts it ranked the tree
    /// last at 64 KiB, where it was the fastest, 1.6 ms against the ring's 3.9); larger ones, the ring
    /// and halving-doubling within 2x of the model's best (the whole buffer goes as one chunk only).
    func candidates(bytes: Int) -> [CollectiveCost.Algorithm] {
        if bytes <= options.chunkBytes { return [.ring, .gatherSum, .recursiveDoubling, .halvingDoubling, .tree] }
        let all: [CollectiveCost.Algorithm] = [.ring, .halvingDoubling]
        guard let cost = linkCost else { return all }
        let best = all.map { cost.seconds($0, ranks: size, bytes: bytes) }.min()!
        return all.filter { cost.seconds($0, ranks: size, bytes: bytes) <= 2 * best }
    }

    /// The all-reduces of `bytes` still to be timed before --collective auto has chosen (0 after).
    public func tuningCalls(bytes: Int) -> Int {
        guard options.allReduce == .auto, linkCost != nil else { return 0 }
        let tuning = tuning[bytes] ?? AutoTuning(candidates: candidates(bytes: bytes))
        return tuning.chosen == nil ? tuning.candidates.count * AutoTuning.rounds - tuning.calls : 0
    }

    /// Counts an all-reduce of `bytes` by `schedule` that took `seconds` here, and chooses once every
    /// candidate has had its rounds.
    private func timed(_ schedule: CollectiveCost.Algorithm, bytes: Int, seconds: Double) throws {
        var t = tuning[bytes] ?? AutoTuning(candidates: candidates(bytes: bytes))
        defer { tuning[bytes] = t }
        guard t.chosen == nil, let i = t.candidates.firstIndex(of: schedule) else { return }
        t.seconds[i].append(seconds)
        t.calls += 1
        if t.calls == t.candidates.count * AutoTuning.rounds {
            // each candidate's median here (its first run also connects to new partners: measured on 8
            // emulated hosts, a mean chose the ring at 64 KiB where the tree took half its time),
            // averaged over the ranks so that all choose alike
            var medians = t.seconds.map { $0.sorted()[$0.count / 2] }
            _ = try medians.withUnsafeMutableBufferPointer {
                try allReduceElements($0, by: .gatherSum, average: true, step: 0, bucket: 0, vote: [])
            }
            t.chosen = t.candidates[medians.indices.min { medians[$0] < medians[$1] }!]
        }
    }

    /// Abandons the links at once (nothing queued is delivered): a re-formed ring binds the same address.
    public func close() { link?.close() }

    deinit { wireStaging.deallocate() }

    // MARK: collectives

    /// Sums `buffer` over all ranks in place (or averages it: the sum divided by N). Every rank ends with
    /// bitwise the same values: each segment is reduced on one rank and then copied to the others.
    ///
    /// `vote` rides along in the chunk headers (a stop request, a re-formation at this step's end; ORed
    /// on the way): the result is what any rank voted, the same on every rank. Each segment's final vote is fixed where the segment is
    /// completed and every rank sees every segment's, so all ranks agree without another message.
    @discardableResult
    public func allReduce(
        _ buffer: UnsafeMutableBufferPointer<Float>, average: Bool = false, step: UInt64 = 0, bucket: UInt32 = 0, vote: RingVotes = []
    ) throws -> RingVotes {
        try allReduceElements(buffer, average: average, step: step, bucket: bucket, vote: vote)
    }

    @discardableResult
    public func allReduce(
        _ buffer: UnsafeMutableBufferPointer<Double>, average: Bool = false, step: UInt64 = 0, bucket: UInt32 = 0, vote: RingVotes = []
    ) throws -> RingVotes {
        try allReduceElements(buffer, average: average, step: step, bucket: bucket, vote: vote)
    }

    /// `allReduce` with the values on the wire as `wire`: f32 as they are, or f16/bf16 (compression).
    /// A 16-bit chunk is narrowed as it is sent and widened into f32 as it arrives, so every sum is
    /// taken in f32; the rank that finishes a segment narrows it once, and every rank, that one too,
    /// ends with those values widened: bitwise equal on all ranks. Checksums are of the wire bytes.
    @discardableResult
    public func allReduce(
        _ buffer: UnsafeMutableBufferPointer<Float>, wire: ChunkHeader.DType, average: Bool = false, step: UInt64 = 0,
        bucket: UInt32 = 0, vote: RingVotes = []
    ) throws -> RingVotes {
        guard wire != .f32 else { return try allReduceElements(buffer, average: average, step: step, bucket: bucket, vote: vote) }
        guard let codec = WireCodec(wire) else {
            throw CollectiveError(message: "rank \(rank): an f32 all-reduce cannot travel as \(wire)")
        }
        let n = buffer.count
        if wireStagingCount < n {
            wireStaging.deallocate()
            wireStaging = .allocate(capacity: n)
            wireStagingCount = n
        }
        let staging = wireStaging
        return try run(.allReduce) {
            guard let base = buffer.baseAddress, size > 1 else {
                // a ring of one rounds like any other, so a run's numbers do not depend on its size
                if let base = buffer.baseAddress { codec.round(base, count: n) }
                return vote
            }
            // halving-doubling where it is asked for or chosen by size (auto times f32 only); the ring otherwise
            let halving = options.allReduce != .auto && schedule(bytes: n * wire.size) == .halvingDoubling
            lastAllReduce = halving ? .halvingDoubling : .ring
            if halving {
                return try halvingDoubling(
                    buffer, staging: staging, codec: codec, average: average, step: step, bucket: bucket, vote: vote)
            }
            // Each position of `staging` is written once per collective (every segment leaves this rank
            // once, narrowed), and `run` waits until libzmq has sent it all before this returns.
            func lend(_ c: Range<Int>, checksum: UInt64?) -> RingLink.Outgoing {
                .lent(UnsafeRawBufferPointer(start: staging + c.lowerBound, count: c.count * 2), checksum: checksum)
            }
            return try reduceScatterAllGather(
                count: n, dtype: wire, step: step, bucket: bucket, vote: vote, perChunk: max(1, options.chunkBytes / 2),
                own: { c in
                    if !c.isEmpty { codec.narrow(staging + c.lowerBound, base + c.lowerBound, count: c.count) }
                    return lend(c, checksum: nil)
                },
                take: { payload, h, e, c, reducing, finishing in
                    try self.consume(
                        payload, h, e,
                        into: UnsafeMutableBufferPointer(start: base + c.lowerBound, count: c.count),
                        wire: codec, adding: reducing, divideBy: average && finishing ? Float(self.size) : nil,
                        narrowInto: reducing ? staging + c.lowerBound : nil, keepNarrowed: finishing)
                },
                onward: lend)
        }
    }

    /// Copies `root`'s buffer into every rank's, pipelined along the ring from the root.
    public func broadcast(_ buffer: UnsafeMutableBufferPointer<Float>, root: Int, step: UInt64 = 0) throws {
        try broadcastElements(buffer, root: root, step: step)
    }

    public func broadcast(_ buffer: UnsafeMutableBufferPointer<Double>, root: Int, step: UInt64 = 0) throws {
        try broadcastElements(buffer, root: root, step: step)
    }

    // The generic bodies are internal so that the compiler specializes them for Float and Double here;
    // a public generic called from another module would run unspecialized.
    func allReduceElements<T: RingElement>(
        _ buffer: UnsafeMutableBufferPointer<T>, average: Bool, step: UInt64, bucket: UInt32, vote: RingVotes
    ) throws -> RingVotes {
        let bytes = buffer.count * MemoryLayout<T>.stride, schedule = schedule(bytes: bytes), started = ContinuousClock.now
        let votes = try allReduceElements(buffer, by: schedule, average: average, step: step, bucket: bucket, vote: vote)
        lastAllReduce = schedule
        if options.allReduce == .auto, linkCost != nil {
            try timed(schedule, bytes: bytes, seconds: started.duration(to: .now).seconds)
        }
        return votes
    }

    private func allReduceElements<T: RingElement>(
        _ buffer: UnsafeMutableBufferPointer<T>, by schedule: CollectiveCost.Algorithm, average: Bool, step: UInt64, bucket: UInt32,
        vote: RingVotes
    ) throws -> RingVotes {
        try run(.allReduce) {
            guard size > 1 else { return vote }
            switch schedule {
            case .halvingDoubling:
                let steps = HalvingDoubling.steps(rank: rank, size: size, count: buffer.count)
                return try exchanges(steps, buffer, average: average, step: step, bucket: bucket, vote: vote)
            case .recursiveDoubling:
                let steps = RecursiveDoubling.steps(rank: rank, size: size, count: buffer.count)
                return try exchanges(steps, buffer, average: average, step: step, bucket: bucket, vote: vote)
            case .gatherSum: return try gatherSum(buffer, average: average, step: step, bucket: bucket, vote: vote)
            case .tree: return try tree(buffer, average: average, step: step, bucket: bucket, vote: vote)
            case .ring: break
            }
            let base = buffer.baseAddress
            // Chunks leave straight from the buffer (libzmq reads them in place); a chunk's memory is not
            // written again before the right neighbour has received it, because everything this rank
            // receives later depends on it, and `run` waits for the last ones before returning.
            func lend(_ c: Range<Int>, checksum: UInt64?) -> RingLink.Outgoing {
                .lent(
                    UnsafeRawBufferPointer(start: base.map { $0 + c.lowerBound }, count: c.count * MemoryLayout<T>.stride),
                    checksum: checksum)
            }
            return try reduceScatterAllGather(
                count: buffer.count, dtype: T.dtype, step: step, bucket: bucket, vote: vote,
                perChunk: max(1, options.chunkBytes / MemoryLayout<T>.stride),
                own: { lend($0, checksum: nil) },
                take: { payload, h, e, c, reducing, finishing in
                    try self.consume(
                        payload, h, e, into: UnsafeMutableBufferPointer(start: base.map { $0 + c.lowerBound }, count: c.count),
                        reducing ? .add(divideBy: average && finishing ? T(self.size) : nil) : .copy)
                },
                onward: lend)
        }
    }

    /// The all-reduce schedule, whatever travels: N-1 ring steps of reduce-scatter, then N-1 of
    /// all-gather, each segment in chunks passed on as soon as they are ready. `own(c)` is this rank's
    /// chunk c as it first leaves; `take` consumes a received chunk into the buffer (adding while
    /// `reducing`; `finishing`: this rank completes the segment) and returns the checksum of what goes
    /// on; `onward(c, checksum)` is a reduced chunk as it goes on. In the all-gather the received payload
    /// itself is passed on. Votes: reducing adds this rank's to the chunk's; gathering passes a final
    /// vote on as it came.
    private func reduceScatterAllGather(
        count n: Int, dtype: ChunkHeader.DType, step: UInt64, bucket: UInt32, vote: RingVotes, perChunk: Int,
        own: (Range<Int>) throws -> RingLink.Outgoing,
        take: (RingLink.Payload, ChunkHeader, ExpectedChunk, Range<Int>, _ reducing: Bool, _ finishing: Bool) throws -> UInt64?,
        onward: (Range<Int>, UInt64?) -> RingLink.Outgoing
    ) throws -> RingVotes {
        var head = header(.allReduce, step: step, bucket: bucket, dtype: dtype, totalCount: n)
        head.votes = vote
        var anyVote = vote
        let segments = (0..<size).map { segment($0, of: n) }
        // This rank's own chunks (ring step 0) leave while the link's lane has room (all at once where
        // there is none): a burst past its slots would go over the socket. The rest go out after each
        // chunk received in ring step 0, and all before any of step 1, which waits for them; reduced
        // chunks made meanwhile are held (their memory is not written again before the right
        // neighbour has them) and follow in order. Waiting for room cannot deadlock: the right
        // neighbour is still receiving this rank's step-0 chunks, so it frees slots.
        let mine = chunks(segments[rank], perChunk)
        var ownSent = 0
        var held: [(header: ChunkHeader, index: Int, range: Range<Int>, made: UInt64?)] = []
        func sendOwn(waiting: Bool) throws {
            while ownSent < mine.count {
                if link?.laneHasRoom() == false {
                    guard waiting else { return }
                    try link?.waitForLaneRoom()
                }
                try send(head, ringStep: 0, index: ownSent, offset: mine[ownSent].lowerBound, try own(mine[ownSent]))
                ownSent += 1
            }
            for h in held { try send(h.header, ringStep: 1, index: h.index, offset: h.range.lowerBound, onward(h.range, h.made)) }
            held.removeAll()
        }
        try sendOwn(waiting: false)
        let lastStep = 2 * (size - 1) - 1
        for ringStep in 0...lastStep {
            let reducing = ringStep < size - 1
            let s = wrapped(reducing ? rank - ringStep - 1 : rank - (ringStep - (size - 1)))
            for (i, c) in chunks(segments[s], perChunk).enumerated() {
                let e = ExpectedChunk(
                    operation: .allReduce, step: step, bucket: bucket, ringStep: ringStep, chunkIndex: i,
                    dtype: dtype, offset: c.lowerBound, count: c.count, totalCount: n)
                let (payload, h) = try receive(e, verifying: false)
                let made = try take(payload, h, e, c, reducing, ringStep == size - 2)
                var next = head
                next.votes = reducing ? h.votes.union(vote) : h.votes
                anyVote.formUnion(next.votes)
                guard ringStep < lastStep else { continue }
                if ownSent < mine.count {  // ring step 0 only: a reduced chunk, its memory this rank's
                    held.append((next, i, c, made))
                    try sendOwn(waiting: false)
                    continue
                }
                try send(
                    next, ringStep: ringStep + 1, index: i, offset: c.lowerBound,
                    reducing ? onward(c, made) : .forwarded(payload, checksum: h.checksum))
            }
            if ringStep == 0 { try sendOwn(waiting: true) }
        }
        return anyVote
    }

    /// The all-reduce of a buffer small enough that the ring's hops, not its bytes, bound it (PowerSGD's
    /// factors, a model's biases): each rank's whole buffer goes round the ring in one chunk, N-1 steps
    /// instead of the ring schedule's 2(N-1), and every rank adds the N buffers in rank order: the same
    /// additions, so the same bits, on every rank. Each rank sends (N-1) x n elements instead of
    /// 2(N-1)/N x n, which is why it is kept to buffers under `RingOptions.gatherSumBytes`.
    /// Votes: each origin's buffer carries its rank's; every rank unites all N.
    private func gatherSum<T: RingElement>(
        _ buffer: UnsafeMutableBufferPointer<T>, average: Bool, step: UInt64, bucket: UInt32, vote: RingVotes
    ) throws -> RingVotes {
        let n = buffer.count
        var head = header(.allReduce, step: step, bucket: bucket, dtype: T.dtype, totalCount: n)
        (head.votes, head.originRank) = (vote, Int32(rank))
        var anyVote = vote
        // rank r's buffer at r * n, this rank's too (`buffer` is overwritten by the sum)
        let slots = UnsafeMutableBufferPointer<T>.allocate(capacity: max(n * size, 1))
        defer { slots.deallocate() }
        let slot = { (r: Int) in UnsafeMutableBufferPointer(rebasing: slots[r * n..<(r + 1) * n]) }
        if let base = buffer.baseAddress { slot(rank).baseAddress!.initialize(from: base, count: n) }
        // copied into the message, not lent: the slots are freed when this returns, and the frame goes
        // on round the ring (read in place over inproc) after that
        try send(head, ringStep: 0, index: 0, offset: 0, .copied(UnsafeRawBufferPointer(slot(rank))))
        for ringStep in 0..<(size - 1) {
            let origin = wrapped(rank - ringStep - 1)
            let e = ExpectedChunk(
                operation: .allReduce, step: step, bucket: bucket, ringStep: ringStep, chunkIndex: 0, dtype: T.dtype,
                offset: 0, count: n, totalCount: n, origin: origin)
            let (payload, h) = try receive(e, verifying: false)
            _ = try consume(payload, h, e, into: slot(origin), .copy)
            anyVote.formUnion(h.votes)
            guard ringStep < size - 2 else { continue }
            var next = head
            (next.votes, next.originRank) = (h.votes, Int32(origin))
            try send(next, ringStep: ringStep + 1, index: 0, offset: 0, .forwarded(payload, checksum: h.checksum))
        }
        guard let base = buffer.baseAddress else { return anyVote }
        base.update(from: slot(0).baseAddress!, count: n)
        for r in 1..<size { T.add(base, slot(r).baseAddress!, count: n) }
        if average { T.divide(base, by: T(size), count: n) }
        return anyVote
    }

    /// The all-reduce by exchanges with partners (`HalvingDoubling`, `RecursiveDoubling`): in each
    /// stage this rank sends one range to its partner, in chunks, and receives another, adding it or
    /// copying it. Halving-doubling completes a segment's sum on one rank, in the last halving stage
    /// (where an average divides it), and copies it to the others; recursive doubling completes the
    /// whole sum on every rank at once, in that same last adding stage, from the same two vectors. Either
    /// way every rank ends bitwise equal. Votes: every chunk carries the union this rank has seen; after
    /// the adding stages each rank has seen every rank's (a butterfly), and a folded rank gets it with
    /// the result.
    /// Halving-doubling lends what it sends from the buffer: a range sent is not written again before
    /// the partner has it, since what this rank receives later into it is the partner's sum, which
    /// needs it. Recursive doubling adds into the range it sends, so its chunks leave as copies.
    private func exchanges<T: RingElement>(
        _ steps: [HalvingDoubling.Step], _ buffer: UnsafeMutableBufferPointer<T>, average: Bool, step: UInt64, bucket: UInt32,
        vote: RingVotes
    ) throws -> RingVotes {
        var exchange = PeerExchange(ring: self, count: buffer.count, dtype: T.dtype, step: step, bucket: bucket, vote: vote)
        let levels = HalvingDoubling.participants(size).trailingZeroBitCount, base = UnsafeRawPointer(buffer.baseAddress)
        for s in steps {
            let how: Consumption<T> = s.adds ? .add(divideBy: average && s.stage == levels ? T(size) : nil) : .copy
            try exchange.exchange(sending: s.send, of: base, receiving: s.receive, stage: s.stage, with: s.peer) { payload, h, e, c in
                _ = try consume(payload, h, e, into: UnsafeMutableBufferPointer(rebasing: buffer[c]), how)
            }
        }
        return exchange.seen
    }

    /// Halving-doubling with 16-bit values on the wire: what leaves in the halving stages (partial sums)
    /// is narrowed into `staging` as it goes; what comes is widened and added in f32; the rank that
    /// completes a segment narrows it once and keeps those values widened, as the ring does; what the
    /// doubling stages copy in is kept narrowed in `staging` too, for the stages that send it on.
    /// Every position of `staging` is written before it is lent and not again while it is.
    private func halvingDoubling(
        _ buffer: UnsafeMutableBufferPointer<Float>, staging: UnsafeMutablePointer<UInt16>, codec: WireCodec, average: Bool,
        step: UInt64, bucket: UInt32, vote: RingVotes
    ) throws -> RingVotes {
        var exchange = PeerExchange(ring: self, count: buffer.count, dtype: codec.dtype, step: step, bucket: bucket, vote: vote)
        let levels = HalvingDoubling.participants(size).trailingZeroBitCount, base = buffer.baseAddress!
        for s in HalvingDoubling.steps(rank: rank, size: size, count: buffer.count) {
            // a range sent while summing (folding in, halving) holds f32 partial sums; later ones, the
            // narrowed results already in `staging`
            if s.adds || s.stage == 0, !s.send.isEmpty {
                codec.narrow(staging + s.send.lowerBound, base + s.send.lowerBound, count: s.send.count)
            }
            let finishing = s.adds && s.stage == levels
            try exchange.exchange(sending: s.send, of: UnsafeRawPointer(staging), receiving: s.receive, stage: s.stage, with: s.peer) {
                payload, h, e, c in
                _ = try consume(
                    payload, h, e, into: UnsafeMutableBufferPointer(rebasing: buffer[c]), wire: codec, adding: s.adds,
                    divideBy: average && finishing ? Float(size) : nil, narrowInto: s.adds && !finishing ? nil : staging + c.lowerBound,
                    keepNarrowed: finishing)
            }
        }
        return exchange.seen
    }

    /// The all-reduce up and down a binomial tree (`BinomialTree`): the whole buffer in chunks, lent
    /// from it, to the parent; the children's added in; rank 0 divides for an average and its result is
    /// copied down, so every rank ends bitwise equal. Votes go up with the sums and down with the result.
    /// A rank's buffer is not written again before its parent has it: the result that comes down
    /// needs it.
    private func tree<T: RingElement>(
        _ buffer: UnsafeMutableBufferPointer<T>, average: Bool, step: UInt64, bucket: UInt32, vote: RingVotes
    ) throws -> RingVotes {
        var exchange = PeerExchange(ring: self, count: buffer.count, dtype: T.dtype, step: step, bucket: bucket, vote: vote)
        let levels = BinomialTree.levels(size), whole = 0..<buffer.count, base = UnsafeRawPointer(buffer.baseAddress)
        for s in BinomialTree.steps(rank: rank, size: size) {
            // rank 0's sum is whole once it starts sending it down
            if rank == 0, average, s.stage == levels, let base = buffer.baseAddress { T.divide(base, by: T(size), count: buffer.count) }
            if s.sends {
                try exchange.send(whole, of: base, stage: s.stage, to: s.peer)
                continue
            }
            try exchange.receive(whole, stage: s.stage, from: s.peer, resultVotes: s.stage >= levels) { payload, h, e, c in
                _ = try consume(
                    payload, h, e, into: UnsafeMutableBufferPointer(rebasing: buffer[c]), s.stage < levels ? .add(divideBy: nil) : .copy)
            }
        }
        return exchange.seen
    }

    /// One all-reduce's messages to and from any peer (halving-doubling, the tree): a range of elements
    /// in chunks lent from where they lie, the header's stage and votes (those this rank has seen) set;
    /// a range received in chunks, each handed to `take` and its votes taken.
    struct PeerExchange {
        let ring: Ring, count: Int, step: UInt64, bucket: UInt32, dtype: ChunkHeader.DType
        var head: ChunkHeader
        private(set) var seen: RingVotes
        var per: Int { max(1, min(ring.options.chunkBytes, ring.options.exchangeChunkBytes) / dtype.size) }

        init(ring: Ring, count: Int, dtype: ChunkHeader.DType, step: UInt64, bucket: UInt32, vote: RingVotes) {
            (self.ring, self.count, self.dtype, self.step, self.bucket, seen) = (ring, count, dtype, step, bucket, vote)
            head = ring.header(.allReduce, step: step, bucket: bucket, dtype: dtype, totalCount: count)
        }

        typealias Take = (RingLink.Payload, ChunkHeader, ExpectedChunk, Range<Int>) throws -> Void

        /// Sends elements `range` of the ones at `base` (wire elements of `dtype`).
        mutating func send(_ range: Range<Int>, of base: UnsafeRawPointer?, stage: Int, to peer: Int) throws {
            for (i, c) in ring.chunks(range, per).enumerated() { try sendChunk(i, c, of: base, stage: stage, to: peer) }
        }

        /// `resultVotes`: the chunks carry the final votes (a result copied down), which replace these.
        mutating func receive(_ range: Range<Int>, stage: Int, from peer: Int, resultVotes: Bool = false, _ take: Take) throws {
            for (i, c) in ring.chunks(range, per).enumerated() {
                try receiveChunk(i, c, stage: stage, from: peer, resultVotes: resultVotes, take)
            }
        }

        /// Chunks this rank sends ahead of those it has received in an `exchange`: two of the ring's
        /// chunks' worth (2 MiB), at least two. A window of bytes, not chunks: with a link's latency
        /// what is in flight must cover its bandwidth-delay product (1 Gbit/s at a 2 ms round trip:
        /// 250 KB), and two 128 KiB chunks did not (halving-doubling at 64 MiB with 1 ms of latency
        /// took 1,403-1,614 ms against the ring's 1,071-1,375).
        var ahead: Int { max(2, 2 * ring.options.chunkBytes / max(1, per * dtype.size)) }

        /// Sends `sending` to `peer` and receives `receiving` from it, `ahead` chunks apart: the next
        /// chunk is sealed (or hashed) and on its way while this rank reduces the one before, instead of
        /// the whole range leaving first. The partner does the same, so neither waits for more than
        /// `ahead` of the other's chunks before it sends. Where the two ranges overlap, what is received
        /// lands where chunks were sent from, so those leave as copies (chunk i is sent before chunk i
        /// is received, the same cuts of the same range).
        mutating func exchange(
            sending: Range<Int>, of base: UnsafeRawPointer?, receiving: Range<Int>, stage: Int, with peer: Int, _ take: Take
        ) throws {
            let out = ring.chunks(sending, per), into = ring.chunks(receiving, per), copying = sending.overlaps(receiving)
            let window = ahead
            var (sent, received) = (0, 0)
            while sent < out.count || received < into.count {
                if sent < out.count, sent - received < window || received == into.count {
                    try sendChunk(sent, out[sent], of: base, stage: stage, to: peer, copying: copying)
                    sent += 1
                } else {
                    try receiveChunk(received, into[received], stage: stage, from: peer, resultVotes: false, take)
                    received += 1
                }
            }
        }

        private mutating func sendChunk(
            _ i: Int, _ c: Range<Int>, of base: UnsafeRawPointer?, stage: Int, to peer: Int, copying: Bool = false
        ) throws {
            head.votes = seen
            let bytes = UnsafeRawBufferPointer(start: base.map { $0 + c.lowerBound * dtype.size }, count: c.count * dtype.size)
            let payload: RingLink.Outgoing = copying ? .copied(bytes) : .lent(bytes, checksum: nil)
            try ring.link!.send(head, ringStep: stage, index: i, offset: c.lowerBound, payload, to: peer)
        }

        private mutating func receiveChunk(
            _ i: Int, _ c: Range<Int>, stage: Int, from peer: Int, resultVotes: Bool, _ take: Take
        ) throws {
            let e = ExpectedChunk(
                operation: .allReduce, step: step, bucket: bucket, ringStep: stage, chunkIndex: i, dtype: dtype,
                offset: c.lowerBound, count: c.count, totalCount: count)
            let (payload, h) = try ring.link!.receive(e, sequence: ring.sequence, verifying: false, from: peer)
            if resultVotes { seen = h.votes } else { seen.formUnion(h.votes) }
            try take(payload, h, e, c)
        }
    }

    func broadcastElements<T: RingElement>(_ buffer: UnsafeMutableBufferPointer<T>, root: Int, step: UInt64) throws {
        guard (0..<size).contains(root) else { throw CollectiveError(message: "broadcast root \(root) is outside a ring of \(size)") }
        try run(.broadcast) {
            guard size > 1 else { return }
            let n = buffer.count, base = buffer.baseAddress
            var head = header(.broadcast, step: step, dtype: T.dtype, totalCount: n)
            head.originRank = Int32(root)
            let pieces = chunks(0..<n, max(1, options.chunkBytes / MemoryLayout<T>.stride))
            for (i, c) in pieces.enumerated() {
                if rank == root {
                    try send(
                        head, ringStep: 0, index: i, offset: c.lowerBound,
                        .lent(
                            UnsafeRawBufferPointer(start: base.map { $0 + c.lowerBound }, count: c.count * MemoryLayout<T>.stride),
                            checksum: nil))
                    continue
                }
                let e = ExpectedChunk(
                    operation: .broadcast, step: step, ringStep: 0, chunkIndex: i, dtype: T.dtype,
                    offset: c.lowerBound, count: c.count, totalCount: n, origin: root)
                let (payload, h) = try receive(e, verifying: false)
                _ = try consume(
                    payload, h, e, into: UnsafeMutableBufferPointer(start: base.map { $0 + c.lowerBound }, count: c.count), .copy)
                if right != root { try send(head, ringStep: 0, index: i, offset: c.lowerBound, .forwarded(payload, checksum: h.checksum)) }
            }
        }
    }

    /// Every rank's bytes, indexed by rank; payloads may differ in length (sparse gradients: indices and
    /// values). Ring all-gather: N-1 steps, each passing on the payload received in the step before.
    public func allGather(_ mine: [UInt8], step: UInt64 = 0) throws -> [[UInt8]] {
        try run(.allGather) { try gather(mine, operation: .allGather, step: step) }
    }

    /// Returns once every rank has entered the barrier.
    public func barrier() throws {
        try run(.barrier) { _ = try gather([], operation: .barrier, step: 0) }
    }

    // MARK: pieces

    private func gather(_ mine: [UInt8], operation: ChunkHeader.Operation, step: UInt64) throws -> [[UInt8]] {
        var out = [[UInt8]](repeating: [], count: size)
        out[rank] = mine
        guard size > 1 else { return out }
        let perChunk = max(1, options.chunkBytes)
        func pass(_ origin: Int, _ ringStep: Int) throws {
            var head = header(operation, step: step, dtype: .bytes, totalCount: out[origin].count)
            head.originRank = Int32(origin)
            try out[origin].withUnsafeBytes { bytes in
                for (i, c) in chunks(0..<bytes.count, perChunk).enumerated() {
                    try send(head, ringStep: ringStep, index: i, offset: c.lowerBound, .copied(UnsafeRawBufferPointer(rebasing: bytes[c])))
                }
            }
        }
        try pass(rank, 0)
        for ringStep in 0..<(size - 1) {
            let origin = wrapped(rank - ringStep - 1)
            // The first chunk tells the payload's length; the rest must agree with it.
            var total: Int?
            var received: [UInt8] = []
            var index = 0
            repeat {
                let offset = index * perChunk
                let count = total.map { min(perChunk, $0 - offset) }
                let (payload, header) = try receive(
                    ExpectedChunk(
                        operation: operation, step: step, ringStep: ringStep, chunkIndex: index,
                        dtype: .bytes, offset: offset, count: count, totalCount: total, origin: origin))
                if total == nil {
                    guard header.totalCount <= UInt64(options.maxGatherBytes) else {
                        throw mismatch(
                            "payload length of rank \(origin)", "at most \(options.maxGatherBytes) bytes", "\(header.totalCount)")
                    }
                    total = Int(header.totalCount)
                    guard header.elementCount == min(UInt64(perChunk), header.totalCount) else {
                        throw mismatch(
                            "chunk 0 of rank \(origin)'s payload", "\(min(UInt64(perChunk), header.totalCount)) bytes",
                            "\(header.elementCount)")
                    }
                    // grows with what arrives, not with what the header claims
                    received.reserveCapacity(min(total!, 4 * perChunk))
                }
                withExtendedLifetime(payload) { received.append(contentsOf: payload.bytes) }
                index += 1
            } while received.count < total!
            out[origin] = received
            if ringStep < size - 2 { try pass(origin, ringStep + 1) }
        }
        return out
    }

    /// Segment i of n elements: n/N each, the remainder spread over the first segments.
    func segment(_ i: Int, of n: Int) -> Range<Int> { Self.segment(i, of: n, parts: size) }

    /// Segment i (0...parts: `parts` is the empty one at the end) of n elements cut into `parts`, as
    /// every collective cuts them.
    static func segment(_ i: Int, of n: Int, parts: Int) -> Range<Int> {
        let q = n / parts, r = n % parts
        let start = i * q + min(i, r)
        return start..<start + (i < parts ? q + (i < r ? 1 : 0) : 0)
    }

    /// A range cut into chunks of at most `per`; an empty range is one empty chunk, so every ring step
    /// sends at least one header and a disagreement about sizes shows at once.
    func chunks(_ range: Range<Int>, _ per: Int) -> [Range<Int>] {
        guard !range.isEmpty else { return [range] }
        return stride(from: range.lowerBound, to: range.upperBound, by: per).map { $0..<min($0 + per, range.upperBound) }
    }

    func header(
        _ operation: ChunkHeader.Operation, step: UInt64 = 0, bucket: UInt32 = 0,
        dtype: ChunkHeader.DType = .bytes, totalCount: Int
    ) -> ChunkHeader {
        ChunkHeader(
            operation: operation, sequence: sequence, step: step, bucket: bucket, ringStep: 0, chunkIndex: 0, dtype: dtype,
            totalCount: UInt64(totalCount), offset: 0, elementCount: 0, checksum: 0,
            layoutFingerprint: options.layoutFingerprint, originRank: -1, ringEpoch: options.epoch)
    }

    /// Runs one collective: refuses to start on a failed ring, counts it, waits for its last sends, and
    /// on failure tells the right neighbour (who tells the next) before rethrowing.
    private func run<R>(_ operation: ChunkHeader.Operation, _ body: () throws -> R) throws -> R {
        if let failure { throw failure }
        defer { sequence += 1 }
        do {
            let result = try body()
            try link?.finishSends()
            return result
        } catch let error as CollectiveError {
            fail(error)
            throw error
        } catch {
            let e = CollectiveError(message: "rank \(rank): \(operation) failed: \(error)")
            fail(e)
            throw e
        }
    }

    private func fail(_ error: CollectiveError) {
        failure = error
        link?.giveUp(error)
    }

    // The link's operations at this collective's sequence number.
    private func send(_ base: ChunkHeader, ringStep: Int, index: Int, offset: Int, _ payload: RingLink.Outgoing) throws {
        try link?.send(base, ringStep: ringStep, index: index, offset: offset, payload)
    }

    private func receive(_ e: ExpectedChunk, verifying: Bool = true) throws -> (RingLink.Payload, ChunkHeader) {
        guard let link else { throw CollectiveError(message: "rank \(rank): receive in a ring of one") }
        return try link.receive(e, sequence: sequence, verifying: verifying)
    }

    private func mismatch(_ field: String, _ here: String, _ there: String) -> CollectiveError {
        link?.mismatch(field, here, there) ?? CollectiveError(message: "rank \(rank): \(field): \(here), \(there)")
    }
}
