import Foundation
import Logging
import Testing
@testable import TetherComm
import TetherMessages
import CZeroMQ

/// Runs `body` for ranks 0..<n, each on a thread of its own (ranks block on each other, so a thread
/// pool the size of the machine would deadlock), and returns each rank's result.
final class ResultsBox<R>: @unchecked Sendable {
    var results: [Result<R, Error>?]
    init(_ n: Int) { results = Array(repeating: nil, count: n) }
}

func onRanks<R>(_ n: Int, _ body: @escaping @Sendable (Int) throws -> R) -> [Result<R, Error>] {
    let box = ResultsBox<R>(n)
    let lock = NSLock(), group = DispatchGroup()
    for rank in 0..<n {
        group.enter()
        let t = Thread {
            let r = Result { try body(rank) }
            lock.lock(); box.results[rank] = r; lock.unlock()
            group.leave()
        }
        t.stackSize = 1 << 22
        t.start()
    }
    group.wait()
    return box.results.map { $0! }
}

/// A ring of n ranks on `transport`: inproc ranks share one context, the others get one each, as
/// separate processes would.
final class TestRing: Sendable {
    let addresses: [String]
    let contexts: [ZeroMQContext]
    let transport: Transport

    init(_ n: Int, _ transport: Transport) throws {
        self.transport = transport
        addresses = try transport.localAddresses(n)
        if transport == .inproc {
            let shared = try ZeroMQContext()
            contexts = Array(repeating: shared, count: n)
        } else {
            contexts = try (0..<n).map { _ in try ZeroMQContext() }
        }
    }

    /// A ring whose links alternate: even ranks listen on unix sockets, odd ones on loopback tcp (as two
    /// workers a host ring), so every chunk goes from a link without checksums to one with them and back.
    init(mixed n: Int) throws {
        transport = .ipc
        let (ipc, tcp) = (try Transport.ipc.localAddresses(n), try Transport.tcp.localAddresses(n))
        addresses = (0..<n).map { $0 % 2 == 0 ? ipc[$0] : tcp[$0] }
        contexts = try (0..<n).map { _ in try ZeroMQContext() }
    }

    deinit { Transport.removeLocalAddresses(addresses) }

    func ring(_ rank: Int, _ configure: (inout RingOptions) -> Void = { _ in }) throws -> Ring {
        var options = RingOptions()
        options.timeout = .seconds(10)
        configure(&options)
        return try Ring(context: contexts[rank], rank: rank, addresses: addresses, options: options)
    }
}

/// Rank r's input: varied magnitudes and signs, different on every rank.
func input(rank: Int, count: Int) -> [Float] {
    (0..<count).map { i in Float(sin(Double(i) * 0.37 + Double(rank) * 1.3)) * Float(1 + (i + rank) % 7) }
}

/// The inputs of `ranks` ranks summed in rank order, in f32: what an all-reduce comes within rounding of.
func inputSum(ranks: Int, count: Int) -> [Float] {
    (0..<ranks).map { input(rank: $0, count: count) }.reduce([Float](repeating: 0, count: count)) { zip($0, $1).map(+) }
}

@Suite(.serialized) struct RingTests {
    @Test func linksTheRealZeroMQ() {
        #expect(ZeroMQ.version.hasPrefix("4."))
    }

    struct Case: Sendable, CustomTestStringConvertible {
        var ranks: Int, count: Int, transport: Transport
        var testDescription: String { "\(ranks) ranks, \(count) elements, \(transport)" }
    }

    static let grid: [Case] = [1, 2, 3, 5].flatMap { n in
        Set([0, 1, max(n - 1, 0), 10 * n + 1, 1 << 20 | 3]).sorted().flatMap { count in
            Transport.allCases.map { Case(ranks: n, count: count, transport: $0) }
        }
    }

    /// Every rank ends with bitwise the same buffer, within 1e-6 of a Double reference sum relative to
    /// the sum of magnitudes. Chunks are tiny (a few elements, or 4 KB for the large count), so every
    /// segment takes the many-chunk path.
    @Test(arguments: grid)
    func allReduceSums(_ c: Case) throws {
        let ring = try TestRing(c.ranks, c.transport)
        let chunkBytes = c.count > 100_000 ? 4096 : 12
        let results = onRanks(c.ranks) { rank -> [Float] in
            let r = try ring.ring(rank) { $0.chunkBytes = chunkBytes }
            var x = input(rank: rank, count: c.count)
            _ = try x.withUnsafeMutableBufferPointer { try r.allReduce($0) }
            return x
        }
        let outputs = try results.map { try $0.get() }
        for o in outputs.dropFirst() { #expect(zip(o, outputs[0]).allSatisfy { $0.bitPattern == $1.bitPattern }, "ranks disagree") }
        let inputs = (0..<c.ranks).map { input(rank: $0, count: c.count) }
        var worst = 0.0
        for i in 0..<c.count {
            let exact = inputs.reduce(0.0) { $0 + Double($1[i]) }
            let scale = inputs.reduce(0.0) { $0 + abs(Double($1[i])) }
            worst = max(worst, abs(Double(outputs[0][i]) - exact) / max(scale, 1e-30))
        }
        #expect(worst <= 1e-6)
    }

    /// Only plaintext tcp links carry checksums (`RingLink.checksummed`); in a ring that mixes them with
    /// unix sockets and lanes, a chunk that came without one goes on to a tcp link with one taken on the
    /// way, or its receiver refuses it as corrupt: every collective, both schedules and a 16-bit wire
    /// end right and bitwise equal on every rank.
    @Test func aRingMixingUnixSocketsAndTcpLinksChecksumsWhatCrossesTcp() throws {
        let ranks = 4, plain = RingOptions()
        var curve = plain
        let keys = try CurveKeyPair.generate(), context = try ZeroMQContext()
        let authenticator = try Authenticator(context: context, logger: Logger(label: "test"))
        defer { authenticator.stop() }
        curve.curve = RingCurve(keys: keys, leftPublicKey: keys.publicKey, rightPublicKey: keys.publicKey, authenticator: authenticator)
        #expect(RingLink.checksummed("tcp://10.0.0.1:7071", plain) && !RingLink.checksummed("tcp://10.0.0.1:7071", curve))
        #expect(!RingLink.checksummed("ipc:///run/tether/rank0", plain) && !RingLink.checksummed("inproc://tether-rank0", plain))
        for (count, wire) in [(70_003, ChunkHeader.DType.f32), (70_003, .f16), (1000, .f32)] {
            let ring = try TestRing(mixed: ranks)
            let results = onRanks(ranks) { rank -> ([Float], [[UInt8]], [Float], UInt64) in
                let r = try ring.ring(rank) { $0.chunkBytes = 4096 }
                var x = input(rank: rank, count: count)
                _ = try x.withUnsafeMutableBufferPointer { try r.allReduce($0, wire: wire) }
                let gathered = try r.allGather([UInt8](repeating: UInt8(rank), count: 5000 + rank))
                var b = input(rank: rank, count: 9000)
                try b.withUnsafeMutableBufferPointer { try r.broadcast($0, root: 1) }
                return (x, gathered, b, UInt64(r.statistics.laneBytesSent))
            }
            let outputs = try results.map { try $0.get() }
            let inputs = (0..<ranks).map { input(rank: $0, count: count) }
            for (rank, o) in outputs.enumerated() {
                let differing = zip(o.0, outputs[0].0).filter { $0.bitPattern != $1.bitPattern }.count
                #expect(differing == 0, "\(wire), \(count): rank \(rank) disagrees with rank 0 in \(differing) values")
                #expect(o.1 == (0..<ranks).map { [UInt8](repeating: UInt8($0), count: 5000 + $0) }, "rank \(rank)'s all-gather")
                #expect(o.2 == input(rank: 1, count: 9000), "rank \(rank)'s broadcast")
            }
            let bound = Double(ranks + 1) * (WireCodec(wire)?.unitRoundoff ?? 1e-7) + 1e-6
            var worst = 0.0
            for i in 0..<count {
                let exact = inputs.reduce(0.0) { $0 + Double($1[i]) }, scale = inputs.reduce(0.0) { $0 + abs(Double($1[i])) }
                worst = max(worst, abs(Double(outputs[0].0[i]) - exact) / max(scale, 1e-30))
            }
            #expect(worst <= bound, "\(wire), \(count): worst relative error \(worst)")
            // the unix sockets' chunks went through lanes (the path without checksums)
            #expect(count < 10_000 || outputs[1].3 > 0, "rank 1 (into rank 2's unix socket) sent nothing through a lane")
        }
    }

    struct WireCase: Sendable, CustomTestStringConvertible {
        var ranks: Int, count: Int, transport: Transport, wire: ChunkHeader.DType, algorithm = AllReduceAlgorithm.ring
        var testDescription: String { "\(algorithm), \(ranks) ranks, \(count) elements, \(transport), \(wire)" }
    }

    /// The ring on every transport; halving-doubling on tcp, with 8 ranks too, and chosen by size.
    static let wireGrid: [WireCase] = {
        var cases: [WireCase] = []
        for n in [1, 2, 3, 5, 8] {
            for count in Set([0, 1, max(n - 1, 0), 10 * n + 1, 70_003]).sorted() {
                for wire in [ChunkHeader.DType.f16, .bf16] {
                    if n < 8 { cases += Transport.allCases.map { WireCase(ranks: n, count: count, transport: $0, wire: wire) } }
                    if n > 1 { cases.append(WireCase(ranks: n, count: count, transport: .tcp, wire: wire, algorithm: .halvingDoubling)) }
                }
            }
        }
        // by size: halving-doubling for 400 KB of 16-bit values on 8 ranks
        cases.append(WireCase(ranks: 8, count: 200_003, transport: .tcp, wire: .bf16, algorithm: .bySize))
        return cases
    }()

    /// On a 16-bit wire (compression): every rank ends bitwise equal, and each sum is within the
    /// format's bound of a Double reference: the inputs rounded once, each partial sum once per hop,
    /// the result once (N + 1 roundings of at most the sum of magnitudes), sums taken in f32. The
    /// average divides before the one final rounding.
    @Test(arguments: wireGrid)
    func allReduceOnA16BitWireIsEqualEverywhereAndWithinTheFormatsBound(_ c: WireCase) throws {
        let chunkBytes = c.count > 10_000 ? 4096 : 6
        for average in [false, true] where !average || c.count == 10 * c.ranks + 1 {
            let ring = try TestRing(c.ranks, c.transport)  // a ring of its own (addresses are not reused at once)
            let results = onRanks(c.ranks) { rank -> [Float] in
                let r = try ring.ring(rank) {
                    $0.chunkBytes = chunkBytes
                    $0.allReduce = c.algorithm
                    $0.link = .nominal  // by size: the nominal link's choice, not a measured one's
                }
                var x = input(rank: rank, count: c.count)
                _ = try x.withUnsafeMutableBufferPointer { try r.allReduce($0, wire: c.wire, average: average) }
                if c.algorithm == .bySize { #expect(r.lastAllReduce == .halvingDoubling) }
                return x
            }
            let outputs = try results.map { try $0.get() }
            // counted, not compared as arrays: a failing == on 70,000 elements makes the test library diff them for hours
            for (rank, o) in outputs.enumerated().dropFirst() {
                let differing = zip(o, outputs[0]).filter { $0.bitPattern != $1.bitPattern }.count
                #expect(differing == 0, "rank \(rank) disagrees with rank 0 in \(differing) of \(c.count) values")
            }
            let inputs = (0..<c.ranks).map { input(rank: $0, count: c.count) }
            let bound = Double(c.ranks + 1) * WireCodec(c.wire)!.unitRoundoff + 1e-6
            var worst = 0.0
            for i in 0..<c.count {
                let divisor = average ? Double(c.ranks) : 1
                let exact = inputs.reduce(0.0) { $0 + Double($1[i]) } / divisor
                let scale = inputs.reduce(0.0) { $0 + abs(Double($1[i])) } / divisor
                worst = max(worst, abs(Double(outputs[0][i]) - exact) / max(scale, 1e-30))
            }
            #expect(worst <= bound, "worst relative error \(worst), bound \(bound)\(average ? " (average)" : "")")
            // and the values are the wire's: narrowing them again changes nothing
            var again = outputs[0]
            again.withUnsafeMutableBufferPointer { WireCodec(c.wire)!.round($0.baseAddress!, count: $0.count) }
            #expect(zip(again, outputs[0]).allSatisfy { $0.bitPattern == $1.bitPattern }, "the results are not all \(c.wire) values")
        }
    }

    /// Error feedback: a value the wire cannot hold (1 + 2^-13 is between two f16 values, and rounds
    /// down every time) sent K times: without feedback the sum loses K x 2^-13; with it, what was sent
    /// sums to the true total within one rounding. bf16 likewise with 1 + 2^-10.
    @Test func errorFeedbackLosesNothingOverSteps() {
        for (wire, tiny) in [(ChunkHeader.DType.f16, Float(0x1p-13)), (.bf16, Float(0x1p-10))] {
            let codec = WireCodec(wire)!, steps = 1000
            var carry: [Float] = [0], sentWith = 0.0, sentWithout = 0.0
            for _ in 0..<steps {
                var g: [Float] = [1 + tiny], h: [Float] = [1 + tiny]
                g.withUnsafeMutableBufferPointer { x in
                    carry.withUnsafeMutableBufferPointer { codec.round(x.baseAddress!, count: 1, carry: $0.baseAddress!) }
                }
                h.withUnsafeMutableBufferPointer { codec.round($0.baseAddress!, count: 1) }
                (sentWith, sentWithout) = (sentWith + Double(g[0]), sentWithout + Double(h[0]))
            }
            let truth = Double(steps) * Double(1 + tiny)
            #expect(abs(sentWith - truth) <= codec.unitRoundoff * 2, "\(wire) with feedback: \(sentWith) vs \(truth)")
            #expect(abs(sentWithout - truth) >= Double(steps) * Double(tiny) * 0.99, "\(wire) without feedback loses every rounding")
        }
    }

    /// A buffer under `RingOptions.gatherSumBytes` travels whole and every rank adds the N buffers in
    /// rank order: bitwise the Float sum ((x0 + x1) + x2) + ..., then one division for the average (the
    /// ring schedule adds in another order, so this fails if the small path is not taken).
    @Test(arguments: [2, 3, 5])
    func smallAllReducesSumInRankOrderOnEveryRank(ranks: Int) throws {
        for transport in Transport.allCases {
            for (count, average) in [(0, false), (1, false), (1000, false), (1000, true)] {
                let ring = try TestRing(ranks, transport)
                let results = onRanks(ranks) { rank -> [Float] in
                    var x = input(rank: rank, count: count)
                    _ = try x.withUnsafeMutableBufferPointer { try ring.ring(rank).allReduce($0, average: average) }
                    return x
                }
                let inputs = (0..<ranks).map { input(rank: $0, count: count) }
                var expected = inputs[0]
                for r in 1..<ranks { for i in 0..<count { expected[i] += inputs[r][i] } }
                if average { for i in 0..<count { expected[i] /= Float(ranks) } }
                for (rank, result) in results.enumerated() {
                    let o = try result.get()
                    let differing = zip(o, expected).filter { $0.bitPattern != $1.bitPattern }.count
                    #expect(
                        o.count == count && differing == 0,
                        "rank \(rank) of \(ranks), \(transport), \(count) elements\(average ? " averaged" : ""): \(differing) differ")
                }
            }
        }
    }

    @Test(arguments: [2, 3])
    func allReduceAveragesInDouble(ranks: Int) throws {
        let ring = try TestRing(ranks, .inproc)
        let results = onRanks(ranks) { rank -> [Double] in
            let r = try ring.ring(rank) { $0.chunkBytes = 16 }
            var x = (0..<11).map { Double($0 * (rank + 1)) }
            _ = try x.withUnsafeMutableBufferPointer { try r.allReduce($0, average: true) }
            return x
        }
        let mean = Double((1...ranks).reduce(0, +)) / Double(ranks)
        for r in results { #expect(try r.get() == (0..<11).map { Double($0) * mean }) }
    }

    /// Several collectives in a row on one ring, with steps and buckets: sequence numbers advance alike.
    @Test func consecutiveCollectivesStayInStep() throws {
        let ring = try TestRing(3, .ipc)
        let results = onRanks(3) { rank -> [Float] in
            let r = try ring.ring(rank) { $0.chunkBytes = 8 }
            var last: [Float] = []
            for step in 0..<4 {
                var x = [Float](repeating: Float(rank + step), count: 7)
                _ = try x.withUnsafeMutableBufferPointer { try r.allReduce($0, step: UInt64(step), bucket: UInt32(step % 2)) }
                try r.barrier()
                last = x
            }
            return last
        }
        for r in results { #expect(try r.get() == [Float](repeating: 0 + 1 + 2 + 3 * 3, count: 7)) }
    }

    /// Votes ride in the all-reduce's headers: with one rank voting stop and the next voting to re-form
    /// (each rank in turn) every rank learns both in the same collective, with none nobody does; the
    /// sums are untouched. Several chunks per segment and an empty segment (fewer elements than ranks) included.
    @Test(arguments: [1, 2, 3, 5])
    func everyRankLearnsTheVotesInTheSameAllReduce(ranks: Int) throws {
        // (40, 1 MiB): one chunk, so the small path (whole buffers gathered)
        for (count, chunkBytes) in [(3, 8), (40, 8), (40, 1 << 20)] {
            for voter in [nil] + Array(0..<ranks) {
                let ring = try TestRing(ranks, .inproc)
                let results = onRanks(ranks) { rank -> (RingVotes, [Float]) in
                    let r = try ring.ring(rank) { $0.chunkBytes = chunkBytes }
                    var x = [Float](repeating: Float(rank + 1), count: count)
                    let vote: RingVotes = voter == nil ? [] : rank == voter ? .stop : rank == (voter! + 1) % ranks ? .reform : []
                    let agreed = try x.withUnsafeMutableBufferPointer { try r.allReduce($0, vote: vote) }
                    return (agreed, x)
                }
                for (rank, result) in results.enumerated() {
                    let (agreed, sums) = try result.get()
                    let expected: RingVotes = voter == nil ? [] : ranks == 1 ? .stop : [.stop, .reform]
                    #expect(agreed == expected, "rank \(rank) of \(ranks), voter \(voter.map(String.init) ?? "none"), \(count) elements")
                    #expect(sums == [Float](repeating: Float(ranks * (ranks + 1) / 2), count: count))
                }
            }
        }
    }

    @Test(arguments: [(1, 5), (2, 0), (3, 1), (5, 1003)])
    func broadcastFromTheLastRank(ranks: Int, count: Int) throws {
        for transport in Transport.allCases {
            let ring = try TestRing(ranks, transport)
            let root = ranks - 1
            let results = onRanks(ranks) { rank -> [Float] in
                let r = try ring.ring(rank) { $0.chunkBytes = 40 }
                var x = rank == root ? input(rank: 9, count: count) : [Float](repeating: .nan, count: count)
                try x.withUnsafeMutableBufferPointer { try r.broadcast($0, root: root) }
                return x
            }
            for r in results { #expect(try r.get() == input(rank: 9, count: count), "\(transport)") }
        }
    }

    @Test(arguments: [1, 2, 3, 5])
    func allGatherOfPayloadsOfDifferentLengths(ranks: Int) throws {
        for transport in Transport.allCases {
            let ring = try TestRing(ranks, transport)
            // lengths 0, 13, 26, ... bytes over chunks of 5: empty, single and multi-chunk payloads
            let payload = { (rank: Int) in (0..<(rank * 13)).map { UInt8(truncatingIfNeeded: $0 * 7 + rank) } }
            let results = onRanks(ranks) { rank in
                try ring.ring(rank) { $0.chunkBytes = 5 }.allGather(payload(rank))
            }
            for r in results { #expect(try r.get() == (0..<ranks).map(payload), "\(transport)") }
        }
    }

    @Test func barrierWaitsForTheLastRank() throws {
        let ring = try TestRing(3, .tcp)
        let arrived = LockedLines()
        let results = onRanks(3) { rank -> [String] in
            let r = try ring.ring(rank)
            if rank == 1 {
                Thread.sleep(forTimeInterval: 0.3)  // the others reach the barrier first (what it is tested on, not a time it asserts)
                arrived.append("rank 1")
            }
            try r.barrier()
            return arrived.lines
        }
        // no rank leaves the barrier before the last has reached it
        for r in results { #expect(try r.get() == ["rank 1"]) }
    }
}

@Suite(.serialized) struct RingFaultTests {
    /// Runs until every rank has ended and returns each one's error text ("" if it succeeded).
    func errors(_ results: [Result<Void, Error>]) -> [String] {
        results.map { if case .failure(let e) = $0 { "\(e)" } else { "" } }
    }

    @Test func aPeerThatNeverStartsIsNamed() throws {
        let ring = try TestRing(2, .tcp)
        #expect { _ = try ring.ring(0) { $0.timeout = .milliseconds(300) } } throws: {
            "\($0)".contains("rank 0: no message from rank 1 (\(ring.addresses[1])) within")
        }
    }

    /// At once: the ranks' 20 s time-out would fail them with "no message from", not this.
    @Test func aLayoutFingerprintMismatchFailsAtOnceNamingBothRanks() throws {
        let ring = try TestRing(2, .ipc)
        let e = errors(
            onRanks(2) { rank in
                _ = try ring.ring(rank) {
                    $0.layoutFingerprint = UInt64(rank + 1); $0.timeout = .seconds(20)
                }
            })
        #expect(
            e[0].contains(
                "rank 0 and rank 1 disagree on the parameter layout fingerprint: 0000000000000001 on rank 0, 0000000000000002 from rank 1"))
        #expect(e[1].contains("rank 1 and rank 0 disagree on the parameter layout fingerprint"))
    }

    @Test func aSizeMismatchFailsNamingBothRanks() throws {
        let ring = try TestRing(2, .inproc)
        let e = errors(
            onRanks(2) { rank in
                let r = try ring.ring(rank)
                var x = [Float](repeating: 1, count: rank == 0 ? 10 : 12)
                _ = try x.withUnsafeMutableBufferPointer { try r.allReduce($0) }
            })
        #expect(e[0].contains("rank 0 and rank 1 disagree on the element count: 10 on rank 0, 12 from rank 1"))
        #expect(e[1].contains("rank 1 and rank 0 disagree on the element count: 12 on rank 1, 10 from rank 0"))
    }

    @Test func aStepMismatchFails() throws {
        let ring = try TestRing(2, .inproc)
        let e = errors(
            onRanks(2) { rank in
                let r = try ring.ring(rank)
                var x = [Float](repeating: 1, count: 4)
                _ = try x.withUnsafeMutableBufferPointer { try r.allReduce($0, step: UInt64(7 + rank)) }
            })
        #expect(e[0].contains("disagree on the step and bucket: step 7 bucket 0 on rank 0, step 8 bucket 0 from rank 1"))
    }

    /// A hand-driven rank 1: raw sockets speaking the wire protocol, so the test controls every frame.
    struct FakeNeighbour {
        let push: ZeroMQSocket, pull: ZeroMQSocket
        init(_ ring: TestRing) throws {
            pull = try ZeroMQSocket(ring.contexts[1], .pull)
            try pull.bind(ring.addresses[1])
            push = try ZeroMQSocket(ring.contexts[1], .push)
            try push.connect(ring.addresses[0])
        }
        func send(_ h: ChunkHeader, payload: [UInt8], jobID: String = "tether") throws {
            var h = h
            if h.checksum == 0 { h.checksum = payload.withUnsafeBytes { RingLink.checksum($0) } }
            let env = Envelope(jobID: jobID, senderRank: 1, body: .chunk(h)).encoded()
            try env.withUnsafeBytes { e in try payload.withUnsafeBytes { p in try push.send([e, p]) } }
        }
        func header(_ op: ChunkHeader.Operation, sequence: UInt64, total: Int, offset: Int, count: Int) -> ChunkHeader {
            ChunkHeader(
                operation: op, sequence: sequence, step: 0, bucket: 0, ringStep: 0, chunkIndex: 0, dtype: op == .handshake ? .bytes : .f32,
                totalCount: UInt64(total), offset: UInt64(offset), elementCount: UInt64(count), checksum: 0,
                layoutFingerprint: 0, originRank: -1)
        }
        func handshake() throws { try send(header(.handshake, sequence: 0, total: 0, offset: 0, count: 0), payload: []) }
    }

    /// Rank 0 of a 2-ring, all-reducing 8 floats, first receives segment 1 (offset 4, 4 elements); with
    /// `gathered`, rank 1's whole buffer (offset 0, 8 elements, origin 1).
    func rank0AllReduce(
        _ ring: TestRing, gathered: Bool = false, after feed: @escaping @Sendable (FakeNeighbour) throws -> Void
    ) throws -> String {
        let fake = try FakeNeighbour(ring)
        try fake.handshake()
        let r = try ring.ring(0) {
            $0.timeout = .seconds(2)
            if !gathered { $0.gatherSumBytes = 0 }
        }
        try feed(fake)
        var x = [Float](repeating: 1, count: 8)
        do { _ = try x.withUnsafeMutableBufferPointer { try r.allReduce($0) } } catch { return "\(error)" }
        return ""
    }

    @Test func aTruncatedPayloadIsAnError() throws {
        let ring = try TestRing(2, .tcp)
        let e = try rank0AllReduce(ring) { fake in
            try fake.send(fake.header(.allReduce, sequence: 1, total: 8, offset: 4, count: 4), payload: [UInt8](repeating: 0, count: 10))
        }
        #expect(
            e.contains(
                "truncated payload from rank 1 in all-reduce #1 ring step 0 chunk 0: the header says 4 f32 elements, the frame has 10 bytes"
            ))
    }

    @Test func aCorruptPayloadIsAnError() throws {
        let ring = try TestRing(2, .tcp)
        let e = try rank0AllReduce(ring) { fake in
            var h = fake.header(.allReduce, sequence: 1, total: 8, offset: 4, count: 4)
            h.checksum = 12345
            try fake.send(h, payload: [UInt8](repeating: 0, count: 16))
        }
        #expect(e.contains("corrupt payload from rank 1"))
    }

    /// A small all-reduce gathers whole buffers, each naming its origin: a chunk of the ring schedule
    /// (no origin), one claiming another origin, or a corrupt one is refused before it is summed.
    @Test func aGatheredBufferFromTheWrongOriginOrCorruptIsRefused() throws {
        for (origin, checksum, refusal): (Int32, UInt64, String) in [
            (-1, 0, "origin rank: 1 on rank 0, -1 from rank 1"), (0, 0, "origin rank: 1 on rank 0, 0 from rank 1"),
            (1, 12345, "corrupt payload from rank 1 in all-reduce #1 ring step 0 chunk 0")
        ] {
            let ring = try TestRing(2, .tcp)
            let e = try rank0AllReduce(ring, gathered: true) { fake in
                var h = fake.header(.allReduce, sequence: 1, total: 8, offset: 0, count: 8)
                (h.originRank, h.checksum) = (origin, checksum)
                try fake.send(h, payload: [UInt8](repeating: 0, count: 32))
            }
            #expect(e.contains(refusal), "\(e)")
        }
    }

    /// The all-gather half copies chunks in while it checks them: a bad one still fails the collective.
    @Test func aCorruptPayloadInTheAllGatherIsAnError() throws {
        let ring = try TestRing(2, .tcp)
        let e = try rank0AllReduce(ring) { fake in
            try fake.send(fake.header(.allReduce, sequence: 1, total: 8, offset: 4, count: 4), payload: [UInt8](repeating: 0, count: 16))
            var h = fake.header(.allReduce, sequence: 1, total: 8, offset: 0, count: 4)
            (h.ringStep, h.checksum) = (1, 12345)
            try fake.send(h, payload: [UInt8](repeating: 0, count: 16))
        }
        #expect(e.contains("corrupt payload from rank 1 in all-reduce #1 ring step 1 chunk 0"), "\(e)")
    }

    /// The checksum taken block by block while reducing is the one-shot XXH3 of the whole payload, for
    /// lengths around XXH3's internal boundaries and the reduce's block size, split at any block size.
    @Test(arguments: [0, 1, 16, 128, 129, 240, 241, 1024, 1025, 16383, 16384, 16385, 100_003])
    func aChecksumTakenInPiecesIsTheWholeOnes(count: Int) {
        var g = SystemRandomNumberGenerator()
        let bytes = (0..<count).map { _ in UInt8.random(in: 0...255, using: &g) }
        let whole = bytes.withUnsafeBytes { RingLink.checksum($0) }
        let streaming = StreamingChecksum()
        for piece in [1, 7, 64, 16384] {
            streaming.reset()
            bytes.withUnsafeBytes { b in
                for lower in stride(from: 0, to: count, by: piece) { streaming.update(b.baseAddress! + lower, min(piece, count - lower)) }
            }
            #expect(streaming.digest() == whole, "\(count) bytes in pieces of \(piece)")
        }
    }

    /// What cannot be the left neighbour's message (garbage, another job's, a message claiming another
    /// sender) is dropped and reported, and the collective goes on with the neighbour's real chunks:
    /// on an --insecure ring anyone may connect, and a stranger must not be able to stop the job.
    @Test func strangersMessagesAreDroppedAndTheCollectiveGoesOn() throws {
        let ring = try TestRing(2, .tcp)
        let fake = try FakeNeighbour(ring)
        try fake.handshake()
        let logged = LockedLines()
        let r = try ring.ring(0) {
            $0.timeout = .seconds(5); $0.logger = logged.logger
            $0.gatherSumBytes = 0  // the ring schedule's chunks
        }
        // Rank 0 waits in its all-reduce; the stranger's messages arrive first (each is read and
        // dropped as it comes, the only data there is), then the neighbour's real chunks.
        let result = LockedLines()
        let done = DispatchSemaphore(value: 0)
        Thread {
            var x = [Float](repeating: 1, count: 8)
            do { _ = try x.withUnsafeMutableBufferPointer { try r.allReduce($0) }; result.append("\(x)") } catch {
                result.append("\(error)")
            }
            done.signal()
        }.start()
        let stranger = try ZeroMQSocket(ring.contexts[1], .push)
        defer { stranger.close() }
        try stranger.connect(ring.addresses[0])
        try [UInt8]([0xDE, 0xAD, 0xBE, 0xEF, 0xFF, 0xFF, 0xFF, 0xFF, 0x0F]).withUnsafeBytes { try stranger.send([$0]) }
        let abort = Envelope(jobID: "other", senderRank: 1, body: .abort(.init(originRank: 1, reason: "foreign"))).encoded()
        try abort.withUnsafeBytes { try stranger.send([$0]) }
        let impostor = Envelope(jobID: "tether", senderRank: 5, body: .abort(.init(originRank: 5, reason: "not a neighbour"))).encoded()
        try impostor.withUnsafeBytes { try stranger.send([$0]) }
        // the neighbour's chunks only once the stranger's messages are read and dropped
        #expect(waitUntil(seconds: 10) { logged.lines.filter { $0.contains("dropped") }.count >= 2 }, "\(logged.lines)")
        let ones = [Float](repeating: 1, count: 4).withUnsafeBytes { Array($0) }
        try fake.send(fake.header(.allReduce, sequence: 1, total: 8, offset: 4, count: 4), payload: ones)
        var reduced = fake.header(.allReduce, sequence: 1, total: 8, offset: 0, count: 4)
        reduced.ringStep = 1
        try fake.send(reduced, payload: [Float](repeating: 2, count: 4).withUnsafeBytes { Array($0) })
        done.wait()
        #expect(result.lines == ["\([Float](repeating: 2, count: 8))"])
        let lines = logged.lines.joined(separator: "\n")
        #expect(lines.contains("rank 0: dropped a malformed message"), "\(lines)")
        #expect(lines.contains("dropped a message for job \"other\""), "\(lines)")
    }

    /// Elastic in place: a chunk of an earlier ring (another epoch) that reaches the re-formed ring is
    /// dropped, never summed, and the collective completes with the current ring's chunks.
    @Test func aChunkOfAnEarlierRingIsDroppedNeverSummed() throws {
        let ring = try TestRing(2, .tcp)
        let fake = try FakeNeighbour(ring)
        var hello = fake.header(.handshake, sequence: 0, total: 0, offset: 0, count: 0)
        hello.ringEpoch = 2
        try fake.send(hello, payload: [])
        let logged = LockedLines()
        let r = try ring.ring(0) {
            $0.timeout = .seconds(5); $0.epoch = 2; $0.logger = logged.logger
            $0.gatherSumBytes = 0  // the ring schedule's chunks
        }
        let ones = [Float](repeating: 1, count: 4).withUnsafeBytes { Array($0) }
        var stale = fake.header(.allReduce, sequence: 1, total: 8, offset: 4, count: 4)
        stale.ringEpoch = 1
        try fake.send(stale, payload: [Float](repeating: 100, count: 4).withUnsafeBytes { Array($0) })
        var current = fake.header(.allReduce, sequence: 1, total: 8, offset: 4, count: 4)
        current.ringEpoch = 2
        try fake.send(current, payload: ones)
        var reduced = fake.header(.allReduce, sequence: 1, total: 8, offset: 0, count: 4)
        (reduced.ringStep, reduced.ringEpoch) = (1, 2)
        try fake.send(reduced, payload: [Float](repeating: 2, count: 4).withUnsafeBytes { Array($0) })
        var x = [Float](repeating: 1, count: 8)
        _ = try x.withUnsafeMutableBufferPointer { try r.allReduce($0) }
        #expect(x == [Float](repeating: 2, count: 8))
        #expect(logged.lines.contains { $0.contains("dropped a message of ring epoch 1 (this ring is epoch 2)") }, "\(logged.lines)")
    }

    /// A ring asked to abandon (the coordinator re-forms it) ends a waiting collective with an
    /// `abandoned` error, not its 20 s time-out's; it sends no Abort on (everyone is leaving).
    @Test func anAbandonedRingEndsTheWaitingCollectiveAtOnce() throws {
        let ring = try TestRing(2, .tcp)
        let fake = try FakeNeighbour(ring)
        try fake.handshake()
        let flag = StopFlag()
        let r = try ring.ring(0) {
            $0.timeout = .seconds(20); $0.abandon = { flag.isSet }
        }
        DispatchQueue.global().asyncAfter(deadline: .now() + 0.3) { flag.set() }
        var x = [Float](repeating: 1, count: 8)
        #expect { _ = try x.withUnsafeMutableBufferPointer { try r.allReduce($0) } } throws: { ($0 as? CollectiveError)?.abandoned == true }
        // the neighbour got rank 0's own chunk of the all-reduce, and no Abort after it
        var bodies: [String] = []
        while let frames = try fake.pull.receive(deadline: .now + .milliseconds(300)) {
            bodies.append(
                withExtendedLifetime(frames) {
                    (try? Envelope(decoding: frames[0].bytes))?.body.map { "\($0)".prefix(5) }.map(String.init) ?? "?"
                })
        }
        #expect(!bodies.contains { $0.hasPrefix("abort") }, "\(bodies)")
    }

    /// An all-gather payload whose announced length is absurd is refused before anything is reserved.
    @Test func anAllGatherOfAnAbsurdLengthIsRefused() throws {
        let ring = try TestRing(2, .tcp)
        let fake = try FakeNeighbour(ring)
        try fake.handshake()
        let r = try ring.ring(0) { $0.timeout = .seconds(2) }
        var h = fake.header(.allGather, sequence: 1, total: 1 << 62, offset: 0, count: 4)
        (h.dtype, h.originRank) = (.bytes, 1)
        try fake.send(h, payload: [1, 2, 3, 4])
        #expect { try r.allGather([9]) } throws: {
            "\($0)".contains(
                "disagree on the payload length of rank 1: at most \(RingOptions().maxGatherBytes) bytes on rank 0, 4611686018427387904 from rank 1"
            )
        }
    }

    /// A rank that stops answering mid-collective: its right neighbour times out naming it, and passes
    /// the cause on, so a rank whose own deadline is later reports the same culprit instead of a time-out
    /// of its own. (Ranks whose deadlines fall together each report their own silent neighbour: from
    /// inside one rank, a dead neighbour and a neighbour stuck behind a dead one look the same.)
    @Test func aSilentPeerIsNamedByEveryRank() throws {
        let ring = try TestRing(3, .inproc)
        let e = errors(
            onRanks(3) { rank in
                let r = try ring.ring(rank) {
                    $0.timeout = .milliseconds(rank == 0 ? 3000 : 500); $0.chunkBytes = 8
                }
                var x = [Float](repeating: 1, count: 30)
                _ = try x.withUnsafeMutableBufferPointer { try r.allReduce($0) }
                if rank == 1 { return }  // rank 1 leaves before the second collective
                _ = try x.withUnsafeMutableBufferPointer { try r.allReduce($0) }
            })
        #expect(e[1] == "")
        #expect(e[2].contains("rank 2: no message from rank 1"))
        // rank 0 names rank 1 too: through rank 2's relayed cause, or because its own send to rank 1
        // (whose socket is gone) found no taker
        #expect(
            e[0].contains("rank 0: rank 2 gave up on the ring: rank 2: no message from rank 1")
                || e[0].contains("rank 0: cannot send to rank 1"), "\(e[0])")
    }
}

/// Lines logged from another thread.
/// Whether `condition` held within `seconds` (checked every 10 ms): a test waits for what it needs,
/// never for a time.
func waitUntil(seconds: Double, _ condition: () -> Bool) -> Bool {
    let deadline = Date().addingTimeInterval(seconds)
    while !condition() {
        guard Date() < deadline else { return false }
        usleep(10_000)
    }
    return true
}

final class LockedLines: @unchecked Sendable {
    private let lock = NSLock()
    private var stored: [String] = []
    func append(_ line: String) { lock.lock(); stored.append(line); lock.unlock() }
    var lines: [String] { lock.lock(); defer { lock.unlock() }; return stored }
    /// A logger whose every message lands here.
    var logger: Logger { Logger(label: "test") { _ in Capture(lines: self) } }

    struct Capture: LogHandler {
        let lines: LockedLines
        var logLevel: Logger.Level = .trace
        var metadata: Logger.Metadata = [:]
        subscript(metadataKey key: String) -> Logger.Metadata.Value? {
            get { metadata[key] }
            set { metadata[key] = newValue }
        }
        func log(event: LogEvent) { lines.append(event.message.description) }
    }
}
