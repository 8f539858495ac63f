import Foundation
import Logging
import TetherMessages
import Testing

@testable import TetherComm

/// Halving-doubling over real sockets (unix, loopback tcp, inproc; plaintext, sealed and under CURVE):
/// gloo's grid of ranks and counts, every rank bitwise equal and within rounding of the sum; a rank
/// that dies mid-collective fails every other rank within the deadline; a stranger's messages and a
/// partner's that comes early do not disturb it.
@Suite(.serialized) struct HalvingDoublingRingTests {
    struct Case: Sendable, CustomTestStringConvertible {
        var ranks: Int, count: Int, transport: Transport, algorithm: AllReduceAlgorithm
        var testDescription: String { "\(algorithm), \(ranks) ranks, \(count) elements, \(transport)" }
    }

    /// Halving-doubling and recursive doubling on every transport (recursive doubling adds into what it
    /// sends: inproc and plaintext tcp would read it in place); the tree (for the smallest buffers, but
    /// right at any size) on tcp.
    static let grid: [Case] = {
        var cases: [Case] = []
        for n in [2, 3, 5, 8] {
            for count in Set([0, 1, n - 1, 10 * n + 1, 1 << 20 | 3]).sorted() {
                for transport in Transport.allCases {
                    cases.append(Case(ranks: n, count: count, transport: transport, algorithm: .halvingDoubling))
                    if count < 1 << 20 || transport == .tcp {
                        cases.append(Case(ranks: n, count: count, transport: transport, algorithm: .recursiveDoubling))
                    }
                }
                cases.append(Case(ranks: n, count: count, transport: .tcp, algorithm: .tree))
            }
        }
        return cases
    }()

    /// Sums of `inputs` over a ring (each rank on a thread of its own) with halving-doubling; chunks
    /// are tiny, so every stage takes the many-chunk path.
    static func allReduce<T: RingElement & BinaryFloatingPoint>(
        _ ring: TestRing, _ inputs: [[T]], average: Bool = false, chunkBytes: Int? = nil,
        by algorithm: AllReduceAlgorithm = .halvingDoubling,
        _ configure: @escaping @Sendable (Int, inout RingOptions) -> Void = { _, _ in }
    ) throws -> [[T]] {
        let count = inputs[0].count
        let results = onRanks(inputs.count) { rank -> [T] in
            let r = try ring.ring(rank) {
                $0.allReduce = algorithm
                $0.chunkBytes = chunkBytes ?? (count > 100_000 ? 4096 : 12)
                configure(rank, &$0)
            }
            var x = inputs[rank]
            if T.self == Float.self {
                try x.withUnsafeMutableBytes { raw in
                    _ = try r.allReduce(raw.bindMemory(to: Float.self), average: average)
                }
            } else {
                try x.withUnsafeMutableBytes { raw in
                    _ = try r.allReduce(raw.bindMemory(to: Double.self), average: average)
                }
            }
            return x
        }
        return try results.map { try $0.get() }
    }

    @Test(arguments: grid)
    func everyRankEndsWithTheSameSum(_ c: Case) throws {
        let ring = try TestRing(c.ranks, c.transport)
        let inputs = (0..<c.ranks).map { input(rank: $0, count: c.count) }
        let outputs = try Self.allReduce(ring, inputs, by: c.algorithm)
        for (r, o) in outputs.enumerated().dropFirst() {
            #expect(zip(o, outputs[0]).allSatisfy { $0.bitPattern == $1.bitPattern }, "rank \(r) differs from rank 0")
        }
        var worst = 0.0
        for i in 0..<c.count {
            let exact = inputs.reduce(0.0) { $0 + Double($1[i]) }
            let scale = inputs.reduce(0.0) { $0 + abs(Double($1[i])) }
            worst = max(worst, abs(Double(outputs[0][i]) - exact) / max(scale, 1e-30))
        }
        #expect(worst <= 1e-6, "off by \(worst) of the magnitudes")
    }

    /// Double, and the average: the sum divided once, where each segment is completed.
    @Test(arguments: [
        (3, AllReduceAlgorithm.halvingDoubling), (8, .halvingDoubling), (3, .tree), (8, .tree), (3, .recursiveDoubling),
        (8, .recursiveDoubling)
    ])
    func doublesAverageToTheReference(ranks: Int, algorithm: AllReduceAlgorithm) throws {
        let ring = try TestRing(ranks, .ipc)
        let inputs = (0..<ranks).map { r in input(rank: r, count: 1001).map(Double.init) }
        let outputs = try Self.allReduce(ring, inputs, average: true, by: algorithm)
        for i in 0..<1001 {
            let exact = inputs.reduce(0.0) { $0 + $1[i] } / Double(ranks)
            #expect(abs(outputs[0][i] - exact) <= 1e-14 * max(1, abs(exact)), "element \(i)")
            #expect(outputs.allSatisfy { $0[i].bitPattern == outputs[0][i].bitPattern }, "element \(i)")
        }
    }

    /// Secure rings (every member's key known): sealed and CURVE links give the bits an --insecure ring
    /// gives, and the sealed one spends time sealing.
    @Test(arguments: [3, 5], [AllReduceAlgorithm.halvingDoubling, .tree, .recursiveDoubling])
    func secureRingsSumAsPlainOnes(ranks: Int, algorithm: AllReduceAlgorithm) throws {
        let inputs = (0..<ranks).map { input(rank: $0, count: 30_001) }
        let plain = try Self.allReduce(try TestRing(ranks, .tcp), inputs, chunkBytes: 4096, by: algorithm)
        for protection in RingPayloadProtection.allCases {
            let ring = try TestRing(ranks, .tcp)
            let keys = try (0..<ranks).map { _ in try CurveKeyPair.generate() }
            let authenticators = try (0..<ranks).map { try Authenticator(context: ring.contexts[$0], logger: Logger(label: "test")) }
            defer { authenticators.forEach { $0.stop() } }
            let curves = (0..<ranks).map { r in
                RingCurve(
                    keys: keys[r], leftPublicKey: keys[(r + ranks - 1) % ranks].publicKey, rightPublicKey: keys[(r + 1) % ranks].publicKey,
                    memberPublicKeys: keys.map(\.publicKey), authenticator: authenticators[r])
            }
            let secured = try Self.allReduce(ring, inputs, chunkBytes: 4096, by: algorithm) { r, o in
                o.curve = curves[r]
                o.payloadProtection = protection
            }
            #expect(secured == plain, "\(protection): the same bits as plaintext links")
        }
    }

    /// Votes: every rank learns any rank's in the same all-reduce, in steps of one chunk and of several
    /// (16 floats a chunk), and with empty segments (3 elements).
    @Test(arguments: [2, 3, 5, 8], [AllReduceAlgorithm.halvingDoubling, .tree, .recursiveDoubling])
    func everyRankLearnsTheVotes(ranks: Int, algorithm: AllReduceAlgorithm) throws {
        for chunkBytes in [1 << 20, 64] {
            let ring = try TestRing(ranks, .ipc)
            let results = onRanks(ranks) { rank -> [RingVotes] in
                let r = try ring.ring(rank) {
                    $0.allReduce = algorithm
                    $0.chunkBytes = chunkBytes
                }
                return try [3, 100].flatMap { count in (0..<ranks).map { voter in (count, voter) } }.map { count, voter in
                    var x = input(rank: rank, count: count)
                    return try x.withUnsafeMutableBufferPointer { try r.allReduce($0, vote: rank == voter ? .stop : []) }
                }
            }
            for (rank, learnt) in results.enumerated() {
                #expect(try learnt.get() == [RingVotes](repeating: .stop, count: 2 * ranks), "rank \(rank), \(chunkBytes)-byte chunks")
            }
        }
    }

    /// Collectives of both kinds in turn on one ring: a partner that runs ahead (its next all-reduce's
    /// chunks arrive while this rank still waits for another's) is kept for its turn.
    @Test func consecutiveCollectivesStayInStep() throws {
        let ranks = 5, ring = try TestRing(ranks, .tcp)
        let results = onRanks(ranks) { rank -> [[Float]] in
            let r = try ring.ring(rank) {
                $0.allReduce = .halvingDoubling
                $0.chunkBytes = 64
            }
            var out: [[Float]] = []
            for i in 0..<6 {
                var x = input(rank: rank + i, count: 500 + 97 * i)
                _ = try x.withUnsafeMutableBufferPointer { try r.allReduce($0) }
                out.append(x)
                if i % 2 == 1 { out.append([Float](try r.allGather([UInt8(rank)]).flatMap { $0 }.map(Float.init))) }
            }
            return out
        }
        let outputs = try results.map { try $0.get() }
        #expect(outputs.allSatisfy { $0 == outputs[0] })
        #expect(outputs[0][2] == (0..<ranks).map(Float.init))
    }

    /// auto: every rank holds the same measured link figures; for each size it times every schedule
    /// the model leaves in, in turn, then every rank takes the same one (the fastest on average over
    /// the ranks); every call's sum is bitwise equal on every rank and right.
    @Test func autoTimesTheCandidatesAndEveryRankChoosesAlike() throws {
        let ranks = 5, ring = try TestRing(ranks, .tcp), counts = [10, 5000, 300_000], chunkBytes = 64 << 10
        struct Seen: Sendable {
            var cost: CollectiveCost?
            var candidates: [[CollectiveCost.Algorithm]] = [], taken: [[CollectiveCost.Algorithm]] = []
            var chosen: [CollectiveCost.Algorithm] = [], outputs: [[[Float]]] = []
        }
        let results = onRanks(ranks) { rank -> Seen in
            let r = try ring.ring(rank) {
                $0.allReduce = .auto
                $0.chunkBytes = chunkBytes
            }
            var seen = Seen(cost: r.linkCost)
            for count in counts {
                seen.candidates.append(r.candidates(bytes: 4 * count))
                var taken: [CollectiveCost.Algorithm] = [], outputs: [[Float]] = []
                for _ in 0..<(r.tuningCalls(bytes: 4 * count) + 2) {
                    var x = input(rank: rank, count: count)
                    _ = try x.withUnsafeMutableBufferPointer { try r.allReduce($0) }
                    (taken, outputs) = (taken + [r.lastAllReduce], outputs + [x])
                }
                seen.taken.append(taken)
                seen.outputs.append(outputs)
                seen.chosen.append(r.schedule(bytes: 4 * count))
            }
            return seen
        }
        let values = try results.map { try $0.get() }
        let cost = try #require(values[0].cost, "the links were measured")
        #expect(cost.latency > 0 && cost.latency < 0.1 && cost.bandwidth > 1e6, "\(cost)")
        for (i, count) in counts.enumerated() {
            let candidates = values[0].candidates[i], rounds = Ring.AutoTuning.rounds
            #expect(!candidates.isEmpty && values.allSatisfy { $0.candidates[i] == candidates && $0.chosen[i] == values[0].chosen[i] })
            #expect(candidates.contains(values[0].chosen[i]), "\(count) elements: chose \(values[0].chosen[i]) of \(candidates)")
            // each candidate in turn, its rounds, then the choice on the two calls after
            let expected = candidates.count == 1 ? [] : (0..<candidates.count * rounds).map { candidates[$0 % candidates.count] }
            #expect(values[0].taken[i] == expected + [values[0].chosen[i], values[0].chosen[i]], "\(count) elements: \(values[0].taken[i])")
            let exact = inputSum(ranks: ranks, count: count)
            for (call, output) in values[0].outputs[i].enumerated() {
                #expect(
                    values.allSatisfy { $0.outputs[i][call] == output }, "\(count) elements, call \(call): every rank holds the same sum")
                #expect(zip(output, exact).allSatisfy { abs($0 - $1) <= 1e-4 * max(1, abs($1)) }, "\(count) elements, call \(call)")
            }
        }
    }

    /// A partner exchange goes in chunks of `exchangeChunkBytes` (128 KiB) however large `chunkBytes`
    /// is: 8 ranks, 1 MiB of floats. Halving-doubling sends 512, 256 and 128 KiB each way, 14 chunks;
    /// recursive doubling the whole 1 MiB three times, 24. Every rank's sum is right and alike.
    @Test(arguments: [(AllReduceAlgorithm.halvingDoubling, 14), (.recursiveDoubling, 24)])
    func partnerExchangesGoInChunksOfTheirOwnSize(algorithm: AllReduceAlgorithm, chunks: Int) throws {
        let ranks = 8, count = 262_144, ring = try TestRing(ranks, .tcp)
        let results = onRanks(ranks) { rank -> (Int, [Float]) in
            let r = try ring.ring(rank) { $0.allReduce = algorithm }
            #expect(r.options.chunkBytes == 1 << 20 && r.options.exchangeChunkBytes == 128 << 10)
            var x = input(rank: rank, count: count)
            let before = r.statistics.chunksSent
            _ = try x.withUnsafeMutableBufferPointer { try r.allReduce($0) }
            return (r.statistics.chunksSent - before, x)
        }
        let values = try results.map { try $0.get() }
        #expect(values.allSatisfy { $0.0 == chunks }, "chunks sent by each rank: \(values.map(\.0))")
        #expect(values.allSatisfy { $0.1 == values[0].1 })
        let exact = inputSum(ranks: ranks, count: count)
        #expect(zip(values[0].1, exact).allSatisfy { abs($0 - $1) <= 1e-4 * max(1, abs($1)) })
    }

    /// by-size: over tcp every rank measures the same link figures when the ring forms and takes the
    /// rule's schedule for them at every size, the same on every rank; a link given in the options is
    /// taken as it is, unmeasured (a slow one: halving-doubling for 1 MiB on 8 ranks, where the nominal
    /// takes the ring); a ring within one host (ipc) takes the nominal link.
    @Test func bySizeChoosesForTheMeasuredLinkAlikeOnEveryRank() throws {
        let counts = [10, 16_384, 262_144]
        for (given, transport) in [(nil, .tcp), (CollectiveCost(latency: 1e-3, bandwidth: 1.25e8), .tcp), (nil, Transport.ipc)] {
            let ranks = 8, ring = try TestRing(ranks, transport)
            let results = onRanks(ranks) { rank -> (CollectiveCost?, [CollectiveCost.Algorithm], [[Float]]) in
                let r = try ring.ring(rank) {
                    $0.allReduce = .bySize
                    $0.link = given
                }
                var taken: [CollectiveCost.Algorithm] = [], outputs: [[Float]] = []
                for count in counts {
                    var x = input(rank: rank, count: count)
                    _ = try x.withUnsafeMutableBufferPointer { try r.allReduce($0) }
                    (taken, outputs) = (taken + [r.lastAllReduce], outputs + [x])
                }
                return (r.linkCost, taken, outputs)
            }
            let values = try results.map { try $0.get() }
            let cost = try #require(transport == .ipc ? .nominal : values[0].0, "by-size over tcp has its link")
            if transport == .ipc { #expect(values[0].0 == nil, "a ring on one host measures nothing") }
            if let given {
                #expect(cost == given)
            } else if transport == .tcp {
                #expect(cost.latency > 0 && cost.latency < 0.1 && cost.bandwidth > 1e6, "\(cost)")
            }
            #expect(
                values.allSatisfy { $0.0 == values[0].0 && $0.1 == values[0].1 && $0.2 == values[0].2 },
                "every rank measured and chose alike")
            #expect(values[0].1 == counts.map { cost.bySize(ranks: ranks, bytes: 4 * $0) }, "\(values[0].1) for \(cost)")
            if given != nil { #expect(values[0].1.last == .halvingDoubling) }
            for (i, count) in counts.enumerated() {
                let exact = inputSum(ranks: ranks, count: count)
                #expect(zip(values[0].2[i], exact).allSatisfy { abs($0 - $1) <= 1e-4 * max(1, abs($1)) }, "\(count) elements")
            }
        }
    }

    /// A rank that dies in the middle (its sockets closed after its first stage) fails every other rank
    /// within the ring's deadline, each naming a rank.
    @Test(arguments: [AllReduceAlgorithm.halvingDoubling, .tree, .recursiveDoubling])
    func aRankThatDiesMidCollectiveFailsEveryOther(algorithm: AllReduceAlgorithm) throws {
        let ranks = 8, ring = try TestRing(ranks, .tcp)
        let started = ContinuousClock.now
        let results = onRanks(ranks) { rank -> Void in
            let r = try ring.ring(rank) {
                $0.allReduce = algorithm
                $0.timeout = .seconds(3)
            }
            var x = input(rank: rank, count: 4096)
            if rank == 5 {
                r.close()  // gone before its first send
                return
            }
            _ = try x.withUnsafeMutableBufferPointer { try r.allReduce($0) }
        }
        let elapsed = started.duration(to: .now)
        for (rank, result) in results.enumerated() where rank != 5 {
            guard case .failure(let error) = result else {
                Issue.record("rank \(rank) finished an all-reduce that rank 5 never joined")
                continue
            }
            #expect("\(error)".contains("rank"), "rank \(rank): \(error)")
        }
        #expect(elapsed < .seconds(12), "every rank failed within its deadline (3 s a wait): \(elapsed)")
    }
}
