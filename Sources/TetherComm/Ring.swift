import CTetherKernels
import CXXHash
import CZeroMQ
import Foundation

/// An element type the ring can reduce.
public protocol RingElement: BinaryFloatingPoint {
    static var dtype: ChunkHeader.DType { get }
    /// y[i] += x[i]
    static func add(_ y: UnsafeMutablePointer<Self>, _ x: UnsafePointer<Self>, count: Int)
    /// y[i] /= d
    static func divide(_ y: UnsafeMutablePointer<Self>, by d: Self, count: Int)
}

// Concrete loops: a loop in generic code would run unspecialized (a witness call per element).
extension Float: RingElement {
    public static var dtype: ChunkHeader.DType { .f32 }
    public static func add(_ y: UnsafeMutablePointer<Float>, _ x: UnsafePointer<Float>, count: Int) { tether_add_f32(y, x, count) }
    public static func divide(_ y: UnsafeMutablePointer<Float>, by d: Float, count: Int) { for i in 0..<count { y[i] /= d } }
}

extension Double: RingElement {
    public static var dtype: ChunkHeader.DType { .f64 }
    public static func add(_ y: UnsafeMutablePointer<Double>, _ x: UnsafePointer<Double>, count: Int) { tether_add_f64(y, x, count) }
    public static func divide(_ y: UnsafeMutablePointer<Double>, by d: Double, count: Int) { for i in 0..<count { y[i] /= d } }
}

public struct RingOptions: Sendable {
    /// Messages for another job are foreign and refused.
    public var jobID = "tether"
    /// The longest any receive waits before the ring fails naming the silent neighbour.
    public var timeout: Duration = .seconds(30)
    /// Bytes per chunk: the unit of pipelining (measured: docs/ARCHITECTURE.md).
    public var chunkBytes = 1 << 20
    /// Hash of the parameter layout; ranks that disagree fail at the first message.
    public var layoutFingerprint: UInt64 = 0
    /// CURVE on the links (nil: plaintext, any peer may connect).
    public var curve: RingCurve?
    /// The largest payload an all-gather accepts from one rank (sparse gradient rows, replica state).
    public var maxGatherBytes = 1 << 30
    /// The forming of the ring (elastic in place: 1, 2, ... after each re-formation): in every header;
    /// a message of another epoch (a late one of an earlier ring) is dropped, never summed.
    public var epoch: UInt32 = 0
    /// Asked while a collective waits (every `abandonPoll`): true when the ring is to be given up (the
    /// coordinator re-forms it); the collective then fails with an `abandoned` error.
    public var abandon: (@Sendable () -> Bool)?
    /// Where messages that were dropped (malformed, foreign, from a rank other than the left
    /// neighbour) are reported, a few a second at most.
    public var log: @Sendable (String) -> Void = { FileHandle.standardError.write(Data(("tether: " + $0 + "\n").utf8)) }
    public init() {}
}

/// A rank's ring keys: its own pair (its link's server key and its client key towards the right
/// neighbour) and its neighbours' public keys. Its link admits only the left neighbour's key.
public struct RingCurve: Sendable {
    public var keys: CurveKeyPair
    public var leftPublicKey: String, rightPublicKey: String
    public var authenticator: Authenticator
    public init(keys: CurveKeyPair, leftPublicKey: String, rightPublicKey: String, authenticator: Authenticator) {
        (self.keys, self.leftPublicKey, self.rightPublicKey, self.authenticator) = (keys, leftPublicKey, rightPublicKey, authenticator)
    }
}

public struct CollectiveError: Error, CustomStringConvertible, Equatable {
    public let message: String
    /// When this error relays another rank's Abort: the rank that gave up first.
    public let abortOrigin: Int32?
    /// The ring was given up on purpose (`RingOptions.abandon`), not for a fault of its own.
    public var abandoned = false
    public init(message: String, abortOrigin: Int32? = nil, abandoned: Bool = false) {
        (self.message, self.abortOrigin, self.abandoned) = (message, abortOrigin, abandoned)
    }
    public var description: String { message }
}

/// Where the time of the collectives went, summed since the ring was made.
public struct RingStatistics: Sendable, Codable {
    /// waiting for the left neighbour's next message (transfer, and the neighbour's own work)
    public var waiting: Duration = .zero
    /// encoding headers and handing frames to libzmq (zero-copy, except all-gather's own payload)
    public var sending: Duration = .zero
    /// adding received chunks into the buffer, or copying them in (all-gather, broadcast), with their
    /// checksums and the reduced chunk's (taken in the same pass)
    public var reducing: Duration = .zero
    /// XXH3 of payloads sent as they are (a rank's own first chunks) and received as bytes (all-gather
    /// of payloads, barrier)
    public var checksumming: Duration = .zero
    public init() {}

    /// The time spent between two snapshots.
    public static func - (a: RingStatistics, b: RingStatistics) -> RingStatistics {
        var d = RingStatistics()
        (d.waiting, d.sending) = (a.waiting - b.waiting, a.sending - b.sending)
        (d.reducing, d.checksumming) = (a.reducing - b.reducing, a.checksumming - b.checksumming)
        return d
    }

    public static func += (a: inout RingStatistics, b: RingStatistics) {
        (a.waiting, a.sending) = (a.waiting + b.waiting, a.sending + b.sending)
        (a.reducing, a.checksumming) = (a.reducing + b.reducing, a.checksumming + b.checksumming)
    }
}

/// N ranks in a ring: each binds a PULL socket at its own address and connects a PUSH socket to its right
/// neighbour's, so every rank sends only to rank+1 and receives only from rank-1.
///
/// All-reduce is reduce-scatter then all-gather (design: "Ring all-reduce"). Each segment moves in
/// chunks, and a chunk is passed on as soon as it is reduced, so the ring is a pipeline: while this
/// rank adds one chunk, libzmq's I/O thread is already receiving the next into its own buffer (the
/// double buffering), and sending the previous one.
///
/// Every message is an Envelope with a ChunkHeader, then the payload frame. The receiver checks every
/// header field against what it expects at that point; any mismatch fails the collective at once, and a
/// failing rank sends an Abort on around the ring so every rank reports the first cause. A ring that
/// failed stays failed.
public final class Ring {
    public let rank: Int
    public let size: Int
    public let addresses: [String]
    public let options: RingOptions
    public var statistics = RingStatistics()
    private let pull: ZeroMQSocket?
    private let push: ZeroMQSocket?
    private var sequence: UInt64 = 0
    private let lent = LentBuffers()
    private var failure: CollectiveError?
    private var scratch: UnsafeMutableRawPointer = .allocate(byteCount: 0, alignment: 64)
    private var scratchBytes = 0
    private var dropped = RateLimiter(perSecond: 2)
    /// XXH3 of a received payload and of the chunk made from it, taken block by block as they are used
    private let inputHash = StreamingChecksum(), outputHash = StreamingChecksum()

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
    public init(context: ZeroMQContext, rank: Int, addresses: [String], options: RingOptions = RingOptions(),
                listening: () throws -> Void = {}) throws {
        guard !addresses.isEmpty, (0..<addresses.count).contains(rank) else {
            throw CollectiveError(message: "rank \(rank) is outside a ring of \(addresses.count)")
        }
        (self.rank, self.size, self.addresses, self.options) = (rank, addresses.count, addresses, options)
        guard addresses.count > 1 else { (pull, push) = (nil, nil); return }
        _ = Self.keepChunkMemory
        let pull = try ZeroMQSocket(context, .pull), push = try ZeroMQSocket(context, .push)
        // Every message on a link is one chunk header and at most one chunk.
        try pull.setMaxMessageSize(options.chunkBytes + 64 << 10)
        if let curve = options.curve {
            curve.authenticator.allow([curve.leftPublicKey], domain: "ring")
            try pull.secure(.server(curve.keys, domain: "ring", curve.authenticator))
            try push.secure(.client(curve.keys, serverKey: curve.rightPublicKey))
        }
        // A re-formed ring binds the address the abandoned one just closed, which libzmq releases a
        // moment later: a taken address is tried again for a second.
        let bindDeadline = ContinuousClock.now + .seconds(1)
        while true {
            do { try pull.bind(addresses[rank]); break } catch let e as ZeroMQError where e.code == EADDRINUSE && ContinuousClock.now < bindDeadline {
                usleep(20_000)
            } catch {
                throw CollectiveError(message: "rank \(rank) cannot listen on \(addresses[rank]): \(error)")
            }
        }
        (self.pull, self.push) = (pull, push)
        try listening()
        try push.connect(addresses[right])
        try push.setSendTimeout(options.timeout)
        try run(.handshake) {
            try sendChunk(header(.handshake, totalCount: 0), ringStep: 0, index: 0, offset: 0, .copied(UnsafeRawBufferPointer(start: nil, count: 0)))
            _ = try receive(Expected(operation: .handshake, ringStep: 0, chunkIndex: 0, offset: 0, count: 0, totalCount: 0))
        }
    }

    /// libzmq allocates every message's buffer with malloc, and chunks (1 MB) are above glibc's mmap
    /// threshold: each one would be a fresh mapping, zero-filled page by page by the kernel and unmapped
    /// again (measured: 8% of an all-reduce in page faults). Raising the threshold and the trim limit
    /// lets the heap keep and reuse that memory. Process-wide, once.
    static let keepChunkMemory: Void = {
        tether_keep_heap_memory(32 << 20, 256 << 20)
    }()

    /// Messages still queued are delivered for a moment (the sockets' linger): a rank that ends its
    /// last collective first must not take its neighbour's last chunks with it.
    deinit {
        scratch.deallocate()
        push?.close()
        pull?.close()
    }

    /// Abandons the links at once (nothing queued is delivered): a re-formed ring binds the same address.
    public func close() {
        try? push?.setLinger(.zero)
        try? pull?.setLinger(.zero)
        push?.close()
        pull?.close()
    }

    /// How often a waiting collective asks `RingOptions.abandon`.
    static let abandonPoll: Duration = .milliseconds(50)

    // MARK: collectives

    /// Sums `buffer` over all ranks in place (or averages it: the sum divided by N). Every rank ends with
    /// bitwise the same values: each segment is reduced on one rank and then copied to the others.
    ///
    /// `vote` rides along in the chunk headers (a stop request, a re-formation at this step's end; ORed
    /// on the way): the result is what any rank voted, the same on every rank. Each segment's final vote is fixed where the segment is
    /// completed and every rank sees every segment's, so all ranks agree without another message.
    @discardableResult
    public func allReduce(_ buffer: UnsafeMutableBufferPointer<Float>, average: Bool = false, step: UInt64 = 0, bucket: UInt32 = 0, vote: RingVotes = []) throws -> RingVotes {
        try allReduceElements(buffer, average: average, step: step, bucket: bucket, vote: vote)
    }

    @discardableResult
    public func allReduce(_ buffer: UnsafeMutableBufferPointer<Double>, average: Bool = false, step: UInt64 = 0, bucket: UInt32 = 0, vote: RingVotes = []) throws -> RingVotes {
        try allReduceElements(buffer, average: average, step: step, bucket: bucket, vote: vote)
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
    func allReduceElements<T: RingElement>(_ buffer: UnsafeMutableBufferPointer<T>, average: Bool, step: UInt64, bucket: UInt32, vote: RingVotes) throws -> RingVotes {
        try run(.allReduce) {
            guard size > 1 else { return vote }
            let n = buffer.count, base = buffer.baseAddress
            var head = header(.allReduce, step: step, bucket: bucket, dtype: T.dtype, totalCount: n)
            head.votes = vote
            var anyVote = vote
            let segments = (0..<size).map { segment($0, of: n) }
            let perChunk = max(1, options.chunkBytes / MemoryLayout<T>.stride)
            // Chunks leave straight from the buffer (libzmq reads them in place); a chunk's memory is not
            // written again before the right neighbour has received it, because everything this rank
            // receives later depends on it, and `run` waits for the last ones before returning.
            func lend(_ c: Range<Int>, checksum: UInt64? = nil) -> Outgoing {
                .lent(UnsafeRawBufferPointer(start: base.map { $0 + c.lowerBound }, count: c.count * MemoryLayout<T>.stride), checksum: checksum)
            }
            for (i, c) in chunks(segments[rank], perChunk).enumerated() { try sendChunk(head, ringStep: 0, index: i, offset: c.lowerBound, lend(c)) }
            let lastStep = 2 * (size - 1) - 1
            for ringStep in 0...lastStep {
                let reducing = ringStep < size - 1
                let s = wrapped(reducing ? rank - ringStep - 1 : rank - (ringStep - (size - 1)))
                for (i, c) in chunks(segments[s], perChunk).enumerated() {
                    let e = Expected(operation: .allReduce, step: step, bucket: bucket, ringStep: ringStep, chunkIndex: i,
                                     dtype: T.dtype, offset: c.lowerBound, count: c.count, totalCount: n)
                    let (frame, h) = try receive(e, verifying: false)
                    let y = UnsafeMutableBufferPointer(start: base.map { $0 + c.lowerBound }, count: c.count)
                    let made = try consume(frame, h, e, into: y, reducing ? .add(divideBy: average && ringStep == size - 2 ? T(size) : nil) : .copy)
                    // Reducing adds this rank's vote to the chunk's; gathering passes a final vote on as it came.
                    var next = head
                    next.votes = reducing ? h.votes.union(vote) : h.votes
                    anyVote.formUnion(next.votes)
                    guard ringStep < lastStep else { continue }
                    // Reduced chunks go on from the buffer; all-gather passes the received frame itself on.
                    try sendChunk(next, ringStep: ringStep + 1, index: i, offset: c.lowerBound,
                                  reducing ? lend(c, checksum: made) : .forwarded(frame, checksum: h.checksum))
                }
            }
            return anyVote
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
                    try sendChunk(head, ringStep: 0, index: i, offset: c.lowerBound,
                                  .lent(UnsafeRawBufferPointer(start: base.map { $0 + c.lowerBound }, count: c.count * MemoryLayout<T>.stride), checksum: nil))
                    continue
                }
                let e = Expected(operation: .broadcast, step: step, ringStep: 0, chunkIndex: i, dtype: T.dtype,
                                 offset: c.lowerBound, count: c.count, totalCount: n, origin: root)
                let (frame, h) = try receive(e, verifying: false)
                _ = try consume(frame, h, e, into: UnsafeMutableBufferPointer(start: base.map { $0 + c.lowerBound }, count: c.count), .copy)
                if right != root { try sendChunk(head, ringStep: 0, index: i, offset: c.lowerBound, .forwarded(frame, checksum: h.checksum)) }
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
        func send(_ origin: Int, _ ringStep: Int) throws {
            var head = header(operation, step: step, dtype: .bytes, totalCount: out[origin].count)
            head.originRank = Int32(origin)
            try out[origin].withUnsafeBytes { bytes in
                for (i, c) in chunks(0..<bytes.count, perChunk).enumerated() {
                    try sendChunk(head, ringStep: ringStep, index: i, offset: c.lowerBound, .copied(UnsafeRawBufferPointer(rebasing: bytes[c])))
                }
            }
        }
        try send(rank, 0)
        for ringStep in 0..<(size - 1) {
            let origin = wrapped(rank - ringStep - 1)
            // The first chunk tells the payload's length; the rest must agree with it.
            var total: Int?
            var received: [UInt8] = []
            var index = 0
            repeat {
                let offset = index * perChunk
                let count = total.map { min(perChunk, $0 - offset) }
                let (frame, header) = try receive(Expected(operation: operation, step: step, ringStep: ringStep, chunkIndex: index,
                                                                       dtype: .bytes, offset: offset, count: count, totalCount: total, origin: origin))
                if total == nil {
                    guard header.totalCount <= UInt64(options.maxGatherBytes) else {
                        throw mismatch("payload length of rank \(origin)", "at most \(options.maxGatherBytes) bytes", "\(header.totalCount)")
                    }
                    total = Int(header.totalCount)
                    guard header.elementCount == min(UInt64(perChunk), header.totalCount) else {
                        throw mismatch("chunk 0 of rank \(origin)'s payload", "\(min(UInt64(perChunk), header.totalCount)) bytes", "\(header.elementCount)")
                    }
                    // grows with what arrives, not with what the header claims
                    received.reserveCapacity(min(total!, 4 * perChunk))
                }
                withExtendedLifetime(frame) { received.append(contentsOf: frame.bytes) }
                index += 1
            } while received.count < total!
            out[origin] = received
            if ringStep < size - 2 { try send(origin, ringStep + 1) }
        }
        return out
    }

    /// Segment i of n elements: n/N each, the remainder spread over the first segments.
    func segment(_ i: Int, of n: Int) -> Range<Int> {
        let q = n / size, r = n % size
        let start = i * q + min(i, r)
        return start ..< start + q + (i < r ? 1 : 0)
    }

    /// A range cut into chunks of at most `per`; an empty range is one empty chunk, so every ring step
    /// sends at least one header and a disagreement about sizes shows at once.
    func chunks(_ range: Range<Int>, _ per: Int) -> [Range<Int>] {
        guard !range.isEmpty else { return [range] }
        return stride(from: range.lowerBound, to: range.upperBound, by: per).map { $0 ..< min($0 + per, range.upperBound) }
    }

    private func header(_ operation: ChunkHeader.Operation, step: UInt64 = 0, bucket: UInt32 = 0,
                        dtype: ChunkHeader.DType = .bytes, totalCount: Int) -> ChunkHeader {
        ChunkHeader(operation: operation, sequence: sequence, step: step, bucket: bucket, ringStep: 0, chunkIndex: 0, dtype: dtype,
                    totalCount: UInt64(totalCount), offset: 0, elementCount: 0, checksum: 0,
                    layoutFingerprint: options.layoutFingerprint, originRank: -1, ringEpoch: options.epoch)
    }

    /// Runs one collective: refuses to start on a failed ring, counts it, and on failure tells the right
    /// neighbour (who tells the next) before rethrowing.
    private func run<R>(_ operation: ChunkHeader.Operation, _ body: () throws -> R) throws -> R {
        if let failure { throw failure }
        defer { sequence += 1 }
        do {
            let result = try body()
            guard lent.waitForAll(deadline: .now + options.timeout) else {
                throw CollectiveError(message: "rank \(rank): cannot send to rank \(right) (\(addresses[right])) within \(options.timeout): it did not take this rank's last \(lent.outstanding) messages")
            }
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

    private func drop(_ message: String, _ waitingFor: String) {
        if let line = dropped.admit("rank \(rank): dropped \(message) on its ring link while waiting for \(waitingFor)", now: .now) { options.log(line) }
    }

    private func fail(_ error: CollectiveError) {
        failure = error
        // An abandoned ring tells nobody: every member is abandoning it, and an Abort could reach the
        // re-formed ring bound at the same address.
        guard let push, !error.abandoned else { return }
        // Best effort: the neighbour may be the one that is gone.
        let origin = error.abortOrigin ?? Int32(rank)
        guard origin != Int32(right) else { return }
        let abort = Envelope(jobID: options.jobID, senderRank: Int32(rank), body: .abort(.init(originRank: origin, reason: error.message)))
        let bytes = abort.encoded()
        try? bytes.withUnsafeBytes { try push.send([$0], wait: false) }
        // Buffers lent to libzmq belong to the caller, who may free them once this throws: close the
        // socket (queued messages are dropped after a short linger) and wait until libzmq lets go.
        try? push.setOption(ZMQ_LINGER, 200, "ZMQ_LINGER")
        push.close()
        _ = lent.waitForAll(deadline: .now + .seconds(2))
    }

    /// A chunk's payload on its way out.
    enum Outgoing {
        /// libzmq copies it at once
        case copied(UnsafeRawBufferPointer)
        /// libzmq reads it in place, later; counted in `lent`. The checksum, if already taken while
        /// the chunk was made.
        case lent(UnsafeRawBufferPointer, checksum: UInt64?)
        /// a received frame passed on as it is, with the checksum it came with (already verified)
        case forwarded(ZeroMQFrame, checksum: UInt64)
    }

    private func sendChunk(_ base: ChunkHeader, ringStep: Int, index: Int, offset: Int, _ payload: Outgoing) throws {
        guard let push else { return }
        let t0 = ContinuousClock.now
        var h = base
        (h.ringStep, h.chunkIndex, h.offset) = (UInt32(ringStep), UInt32(index), UInt64(offset))
        let count: Int
        switch payload {
        case .copied(let bytes), .lent(let bytes, nil):
            count = bytes.count
            h.checksum = Self.checksum(bytes)
        case .lent(let bytes, let checksum?):
            count = bytes.count
            h.checksum = checksum
        case .forwarded(let frame, let checksum):
            count = frame.count
            h.checksum = checksum
        }
        h.elementCount = UInt64(count / h.dtype.size)
        let t1 = ContinuousClock.now
        let envelope = Envelope(jobID: options.jobID, senderRank: Int32(rank), body: .chunk(h)).encoded()
        do {
            try envelope.withUnsafeBytes { head in
                switch payload {
                case .copied(let bytes): try push.send([head, bytes])
                case .lent(let bytes, _): try push.send(header: head, lending: bytes, lent)
                case .forwarded(let frame, _): try push.send(header: head, forwarding: frame)
                }
            }
        } catch let e as ZeroMQError where e.code == EAGAIN {
            throw CollectiveError(message: "rank \(rank): cannot send to rank \(right) (\(addresses[right])) within \(options.timeout): it takes no messages")
        }
        statistics.checksumming += t0.duration(to: t1)
        statistics.sending += t1.duration(to: .now)
    }

    static func checksum(_ bytes: UnsafeRawBufferPointer) -> UInt64 {
        guard let p = bytes.baseAddress, bytes.count > 0 else { return XXH3_64bits(nil, 0) }
        #if arch(x86_64)
        return XXH3_64bits_dispatch(p, bytes.count)
        #else
        return XXH3_64bits(p, bytes.count)
        #endif
    }

    /// What the next message from the left neighbour must be; nil fields are learned from it.
    typealias Expected = ExpectedChunk

    /// The next message from the left neighbour, checked against `e`: its payload frame and header.
    /// `verifying: false` leaves the payload's checksum to `consume`, which takes it as it reads.
    private func receive(_ e: Expected, verifying: Bool = true) throws -> (ZeroMQFrame, ChunkHeader) {
        guard let pull else { throw CollectiveError(message: "rank \(rank): receive in a ring of one") }
        // built only for an error message, not per chunk
        var what: String { "\(e.operation) #\(sequence) ring step \(e.ringStep) chunk \(e.chunkIndex)" }
        let t0 = ContinuousClock.now
        let deadline = t0 + options.timeout
        var frames: [ZeroMQFrame] = [], envelope: Envelope
        // Only the left neighbour may speak. What cannot be its message (it does not decode, it is for
        // another job or claims another sender) is dropped and reported, and the wait goes on: on an
        // --insecure ring anyone may connect, and a stranger's bytes must not stop the job.
        while true {
            if let abandon = options.abandon, abandon() {
                throw CollectiveError(message: "rank \(rank): the ring was abandoned (waiting for \(what))", abandoned: true)
            }
            let slice = options.abandon == nil ? deadline : min(deadline, .now + Self.abandonPoll)
            guard let next = try pull.receive(deadline: slice) else {
                if ContinuousClock.now < deadline { continue }
                throw CollectiveError(message: "rank \(rank): no message from rank \(left) (\(addresses[left])) within \(options.timeout) (waiting for \(what))")
            }
            frames = next
            do { envelope = try withExtendedLifetime(frames) { try Envelope(decoding: frames[0].bytes) } } catch {
                drop("a malformed message (\(error))", what)
                continue
            }
            guard envelope.jobID == options.jobID else {
                drop("a message for job \"\(envelope.jobID.prefix(64))\" (this ring runs job \"\(options.jobID)\")", what)
                continue
            }
            guard envelope.senderRank == Int32(left) else {
                drop("a message claiming to be from rank \(envelope.senderRank) (only rank \(left) sends here)", what)
                continue
            }
            if case .chunk(let h) = envelope.body, h.ringEpoch != options.epoch {
                drop("a message of ring epoch \(h.ringEpoch) (this ring is epoch \(options.epoch))", what)
                continue
            }
            break
        }
        let t1 = ContinuousClock.now
        statistics.waiting += t0.duration(to: t1)
        if case .abort(let a) = envelope.body {
            throw CollectiveError(message: "rank \(rank): rank \(a.originRank) gave up on the ring: \(a.reason)", abortOrigin: a.originRank)
        }
        guard case .chunk(let h) = envelope.body else {
            throw CollectiveError(message: "rank \(rank): rank \(left) sent a message that is not a collective chunk (waiting for \(what))")
        }
        let from = "rank \(left)"
        guard frames.count == 2 else {
            throw CollectiveError(message: "rank \(rank): \(what) from \(from) has \(frames.count) frames, expected a header and a payload")
        }
        let payload = frames[1].bytes
        if let m = e.mismatch(h, sequence: sequence, layoutFingerprint: options.layoutFingerprint, payloadBytes: payload.count) {
            if m.field == "payload length" {
                throw CollectiveError(message: "rank \(rank): truncated payload from \(from) in \(what): the header says \(h.elementCount) \(h.dtype) elements, the frame has \(payload.count) bytes")
            }
            throw mismatch(m.field, m.expected, m.found)
        }
        if verifying {
            let t2 = ContinuousClock.now
            let sum = Self.checksum(payload)
            statistics.checksumming += t2.duration(to: .now)
            try check(sum, h, e)
        }
        return (frames[1], h)
    }

    private func check(_ sum: UInt64, _ h: ChunkHeader, _ e: Expected) throws {
        guard sum != h.checksum else { return }
        throw CollectiveError(message: "rank \(rank): corrupt payload from rank \(left) in \(e.operation) #\(sequence) ring step \(e.ringStep) chunk \(e.chunkIndex): checksum \(String(format: "%016llx", sum)), header says \(String(format: "%016llx", h.checksum))")
    }

    enum Consumption<T> {
        /// y += x, then y /= d if a divisor is given
        case add(divideBy: T?)
        /// y = x
        case copy
    }

    /// Block size of `consume`: the received block, the buffer's block and (when adding) the result's
    /// hash all stay in L1 between the passes.
    static let consumeBlockBytes = 16 << 10

    /// Adds or copies a received payload (already checked by `receive(_:verifying: false)` but for its
    /// checksum) into `y`, verifying the checksum on the way, block by block: each block is hashed just
    /// before it is used, so it is read from memory once. Adding also hashes the result, which it returns
    /// for the chunk's next send; copying returns nil. On a bad checksum `y` holds garbage and the
    /// collective fails.
    private func consume<T: RingElement>(_ frame: ZeroMQFrame, _ h: ChunkHeader, _ e: Expected,
                                         into y: UnsafeMutableBufferPointer<T>, _ how: Consumption<T>) throws -> UInt64? {
        guard let yBase = y.baseAddress, !y.isEmpty else {
            try check(Self.checksum(frame.bytes), h, e)
            return nil
        }
        let start = ContinuousClock.now
        // The frame owns the bytes x points into: keep it alive until they are read.
        let made: UInt64? = withExtendedLifetime(frame) {
            let x = aligned(frame.bytes, as: T.self)
            let per = Self.consumeBlockBytes / MemoryLayout<T>.stride
            inputHash.reset()
            if case .add = how { outputHash.reset() }
            for lower in stride(from: 0, to: y.count, by: per) {
                let n = min(per, y.count - lower), bytes = n * MemoryLayout<T>.stride
                inputHash.update(x + lower, bytes)
                switch how {
                case .add(let divisor):
                    T.add(yBase + lower, x + lower, count: n)
                    if let divisor { T.divide(yBase + lower, by: divisor, count: n) }
                    outputHash.update(yBase + lower, bytes)
                case .copy:
                    (yBase + lower).update(from: x + lower, count: n)
                }
            }
            if case .add = how { return outputHash.digest() }
            return nil
        }
        statistics.reducing += start.duration(to: .now)
        try check(inputHash.digest(), h, e)
        return made
    }

    private func mismatch(_ field: String, _ here: String, _ there: String) -> CollectiveError {
        CollectiveError(message: "rank \(rank) and rank \(left) disagree on the \(field): \(here) on rank \(rank), \(there) from rank \(left)")
    }

    /// The payload as T elements: libzmq's buffers are malloc'd (aligned), except very small messages,
    /// which live inside the message struct and are copied out first.
    private func aligned<T>(_ payload: UnsafeRawBufferPointer, as: T.Type) -> UnsafePointer<T> {
        let p = payload.baseAddress!
        if Int(bitPattern: p) % MemoryLayout<T>.alignment == 0 { return p.assumingMemoryBound(to: T.self) }
        if scratchBytes < payload.count {
            scratch.deallocate()
            scratch = .allocate(byteCount: payload.count, alignment: 64)
            scratchBytes = payload.count
        }
        scratch.copyMemory(from: p, byteCount: payload.count)
        return UnsafePointer(scratch.assumingMemoryBound(to: T.self))
    }
}

/// XXH3-64 taken piece by piece; the same value as `Ring.checksum` of the pieces joined.
final class StreamingChecksum {
    private let state: OpaquePointer

    init() {
        guard let state = XXH3_createState() else { fatalError("XXH3_createState: out of memory") }
        self.state = state
    }

    deinit { XXH3_freeState(state) }

    func reset() { XXH3_64bits_reset(state) }

    func update(_ p: UnsafeRawPointer, _ count: Int) {
        #if arch(x86_64)
        XXH3_64bits_update_dispatch(state, p, count)
        #else
        XXH3_64bits_update(state, p, count)
        #endif
    }

    func digest() -> UInt64 { XXH3_64bits_digest(state) }
}
