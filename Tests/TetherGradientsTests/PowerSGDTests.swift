import Foundation
import Testing
@testable import TetherGradients
import TetherComm
import TetherNN
import TetherTensor
import TetherTrain

/// What each rank's thread returned.
private final class Slots<R>: @unchecked Sendable {
    var results: [Result<R, Error>?]; init(_ n: Int) { results = Array(repeating: nil, count: n) }
}

/// PowerSGD over real rings (inproc and tcp loopback), one thread per rank.
@Suite struct PowerSGDTests {
    /// A layout with matrices of both orientations, a 4-D convolution's filters, and 1-D parameters
    /// between them (summed as they are).
    static let layout: ArenaLayout = {
        var l = ArenaLayout()
        _ = l.add("a.weight", shape: [12, 7], initializer: .constant(0))
        _ = l.add("a.bias", shape: [12], initializer: .constant(0))
        _ = l.add("b.weight", shape: [5, 16], initializer: .constant(0))
        _ = l.add("conv.weight", shape: [6, 2, 3, 3], initializer: .constant(0))
        _ = l.add("conv.bias", shape: [6], initializer: .constant(0))
        return l
    }()

    /// Runs `body(rank, ring)` on `n` ranks of a ring at once and returns what each returned.
    static func onRing<R>(_ n: Int, _ transport: Transport, _ body: @escaping @Sendable (Int, Ring) throws -> R) throws -> [R] {
        let addresses = try transport.localAddresses(n)
        defer { Transport.removeLocalAddresses(addresses) }
        let shared = try ZeroMQContext()
        let contexts = try (0..<n).map { _ in transport == .inproc ? shared : try ZeroMQContext() }
        let slots = Slots<R>(n), lock = NSLock(), done = DispatchGroup()
        for rank in 0..<n {
            done.enter()
            Thread {
                var options = RingOptions()
                options.timeout = .seconds(10)
                let r = Result { try body(rank, try Ring(context: contexts[rank], rank: rank, addresses: addresses, options: options)) }
                lock.withLock { slots.results[rank] = r }
                done.leave()
            }.start()
        }
        done.wait()
        return try slots.results.map { try $0!.get() }
    }

    /// Rank `rank`'s gradient at `step`: normal draws, different on every rank and step.
    static func gradient(rank: Int, step: Int) -> [Float] {
        var rng = RNG(seed: UInt64(step), stream: UInt64(rank))
        return (0..<layout.totalCount).map { _ in Float(rng.nextNormal()) }
    }

    /// Rank r = the full rank of every matrix reproduces the exact sum (to f32 rounding of the
    /// factorization), through the factors: every matrix is compressed (rate 0). Every rank ends with
    /// the same bits.
    @Test(arguments: [(2, Transport.inproc), (3, .inproc), (3, .tcp)])
    func fullRankReproducesTheExactAllReduce(ranks: Int, transport: Transport) throws {
        let results = try Self.onRing(ranks, transport) { rank, ring -> [Float] in
            let p = PowerSGD(layout: Self.layout, rank: 64, startStep: 0, seed: 1, minCompressionRate: 0)
            #expect(p.matrices.map(\.name) == ["a.weight", "b.weight", "conv.weight"] && p.matrices.map(\.rank) == [7, 5, 6])
            var g = Self.gradient(rank: rank, step: 0)
            _ = try g.withUnsafeMutableBufferPointer {
                try p.allReduce($0.baseAddress!, range: 0..<$0.count, errors: nil, ring: ring, step: 0, bucket: 0, vote: [])
            }
            return g
        }
        let exact = (0..<Self.layout.totalCount).map { i in (0..<ranks).reduce(0.0) { $0 + Double(Self.gradient(rank: $1, step: 0)[i]) } }
        let worst = zip(results[0], exact).map { abs(Double($0) - $1) }.max()!
        #expect(worst < 1e-4, "largest difference from the exact sum: \(worst)")
        for r in 1..<ranks {
            #expect(zip(results[r], results[0]).filter { $0.bitPattern != $1.bitPattern }.count == 0, "rank \(r) differs from rank 0")
        }
        // the 1-D parameters travel as they are: exactly the ring's f32 sum, which is within a rounding of the exact one
        for e in Self.layout.entries where e.shape.count == 1 {
            #expect(
                (e.offset..<e.offset + e.count).allSatisfy { abs(Double(results[0][$0]) - exact[$0]) <= 1e-5 * max(1, abs(exact[$0])) },
                "\(e.name)")
        }
    }

    /// Rank 1 over 40 steps: replicas bitwise equal every step, and with error feedback nothing is lost:
    /// what was applied plus what the ranks still carry equals the sum of every true gradient (to f32
    /// rounding), while without feedback the shortfall is of the gradients' own size (checked).
    @Test func lowRankKeepsReplicasEqualAndErrorFeedbackLosesNothing() throws {
        let ranks = 3, steps = 40, n = Self.layout.totalCount
        let outcome = try Self.onRing(ranks, .inproc) {
            rank, ring -> (applied: [Double], carried: [Float], plainApplied: [Double], sums: [UInt64]) in
            let withFeedback = PowerSGD(layout: Self.layout, rank: 1, startStep: 0, seed: 7),
                without = PowerSGD(layout: Self.layout, rank: 1, startStep: 0, seed: 7)
            var errors = [Float](repeating: 0, count: n), next = errors
            var applied = [Double](repeating: 0, count: n), plainApplied = applied, sums: [UInt64] = []
            for step in 0..<steps {
                var g = Self.gradient(rank: rank, step: step), h = g
                _ = try g.withUnsafeMutableBufferPointer { gs in
                    try errors.withUnsafeBufferPointer { e in
                        try next.withUnsafeMutableBufferPointer { w in
                            try withFeedback.allReduce(
                                gs.baseAddress!, range: 0..<n, errors: (e.baseAddress!, w.baseAddress!), ring: ring, step: UInt64(step),
                                bucket: 0, vote: [])
                        }
                    }
                }
                swap(&errors, &next)
                withFeedback.commit()
                _ = try h.withUnsafeMutableBufferPointer {
                    try without.allReduce($0.baseAddress!, range: 0..<n, errors: nil, ring: ring, step: UInt64(step), bucket: 1, vote: [])
                }
                without.commit()
                for i in 0..<n { applied[i] += Double(g[i]); plainApplied[i] += Double(h[i]) }
                sums.append(g.withUnsafeBytes { b in b.reduce(UInt64(0xCBF2_9CE4_8422_2325)) { ($0 ^ UInt64($1)) &* 0x100_0000_01B3 } })
            }
            return (applied, errors, plainApplied, sums)
        }
        for r in 1..<ranks {
            #expect(outcome[r].sums == outcome[0].sums, "rank \(r)'s applied gradients differ from rank 0's in some step")
        }
        let truth = (0..<n).map { i in
            (0..<steps).reduce(0.0) { s, step in s + (0..<ranks).reduce(0.0) { $0 + Double(Self.gradient(rank: $1, step: step)[i]) } }
        }
        let matrixElements = PowerSGD(layout: Self.layout, rank: 1, startStep: 0, seed: 7).matrices.flatMap {
            $0.offset..<$0.offset + $0.rows * $0.cols
        }
        let kept = matrixElements.map { i in
            abs(outcome[0].applied[i] + (0..<ranks).reduce(0.0) { $0 + Double(outcome[$1].carried[i]) } - truth[i])
        }.max()!
        let lost = matrixElements.map { i in abs(outcome[0].plainApplied[i] - truth[i]) }.max()!
        #expect(kept < 1e-3, "with error feedback, applied + carried differs from the true sum by \(kept)")
        #expect(lost > 1, "without error feedback the approximation should lose gradient mass (lost \(lost))")
    }

    /// --timeline's view of a step: every phase of the exchange, in order, each beginning where the one
    /// before it ended.
    @Test func theTimelineSeesEachPhase() throws {
        let traces = try Self.onRing(2, .inproc) { rank, ring -> [(String, UInt64, UInt64)] in
            let p = PowerSGD(layout: Self.layout, rank: 2, startStep: 0, seed: 1)
            var g = Self.gradient(rank: rank, step: 0), phases: [(String, UInt64, UInt64)] = []
            _ = try g.withUnsafeMutableBufferPointer {
                try p.allReduce(
                    $0.baseAddress!, range: 0..<$0.count, errors: nil, ring: ring, step: 0, bucket: 0, vote: [],
                    trace: { phases.append(($0, $1, GradientExchange.microsecondsNow())) })
            }
            return phases
        }
        for phases in traces {
            #expect(
                phases.map(\.0) == [
                    "PowerSGD: P = M Q", "PowerSGD: P and the rest summed", "PowerSGD: Q = M^T P, error", "PowerSGD: Q summed",
                    "PowerSGD: M = P Q^T"
                ])
            #expect(phases.allSatisfy { $0.1 <= $0.2 } && zip(phases, phases.dropFirst()).allSatisfy { $0.2 <= $1.1 })
        }
    }

    /// P̂ has orthonormal columns; a vanishing column becomes zero, not NaN.
    @Test func orthonormalizedColumnsAreOrthonormal() {
        var a: [Float] = [3, 1, 0, 4, 2, 0, 0, 5, 0, 1, 1, 0]  // 4 x 3, the last column zero
        a.withUnsafeMutableBufferPointer { PowerSGD.orthonormalizeColumns($0.baseAddress!, rows: 4, cols: 3) }
        func dot(_ i: Int, _ j: Int) -> Float { (0..<4).reduce(0) { $0 + a[$1 * 3 + i] * a[$1 * 3 + j] } }
        #expect(abs(dot(0, 0) - 1) < 1e-6 && abs(dot(1, 1) - 1) < 1e-6 && abs(dot(0, 1)) < 1e-6)
        #expect((0..<4).allSatisfy { a[$0 * 3 + 2] == 0 })
    }

    /// P̂ Qᵀ (and M - P̂ Qᵀ, the error feedback) is the same bits as the ordered scalar sum, each
    /// product rounded before it is added (no fused multiply-add, whichever clone of the kernel this
    /// CPU runs): what keeps replicas on different CPUs equal.
    @Test(arguments: [1, 4, 5])
    func theLowRankProductIsTheOrderedScalarSum(rank: Int) {
        let (rows, cols) = (19, 37)
        var rng = RNG(seed: UInt64(rank), stream: 7)
        let p = (0..<rows * rank).map { _ in Float(rng.nextNormal()) }, q = (0..<cols * rank).map { _ in Float(rng.nextNormal()) }
        let m = (0..<rows * cols).map { _ in Float(rng.nextNormal()) }
        var product = [Float](repeating: .nan, count: rows * cols), residual = product
        p.withUnsafeBufferPointer { ps in
            q.withUnsafeBufferPointer { qs in
                product.withUnsafeMutableBufferPointer {
                    PowerSGD.product(ps.baseAddress!, qs.baseAddress!, rows: rows, cols: cols, rank: rank, into: $0.baseAddress!)
                }
                m.withUnsafeBufferPointer { ms in
                    residual.withUnsafeMutableBufferPointer {
                        PowerSGD.product(
                            ps.baseAddress!, qs.baseAddress!, rows: rows, cols: cols, rank: rank, into: $0.baseAddress!,
                            subtractedFrom: ms.baseAddress!)
                    }
                }
            }
        }
        var differing = (product: 0, residual: 0)
        for i in 0..<rows {
            for j in 0..<cols {
                var sum = p[i * rank] * q[j * rank]
                for k in 1..<max(rank, 1) {
                    let term = p[i * rank + k] * q[j * rank + k]
                    sum = sum + term
                }
                if sum.bitPattern != product[i * cols + j].bitPattern { differing.product += 1 }
                if (m[i * cols + j] - sum).bitPattern != residual[i * cols + j].bitPattern { differing.residual += 1 }
            }
        }
        #expect(differing.product == 0 && differing.residual == 0, "of \(rows * cols) elements, \(differing) differ")
    }

    /// DDP's rule: a matrix is compressed only when its factors are at least twice smaller.
    @Test func smallMatricesTravelAsTheyAre() {
        let p = PowerSGD(layout: Self.layout, rank: 4, startStep: 0, seed: 0)
        // a: 84 vs 2 x 19 x 4 = 152 no; b: 80 vs 168 no; conv: 108 vs 2 x 24 x 4 = 192 no
        #expect(p.matrices.isEmpty)
        #expect(
            PowerSGD(layout: Self.layout, rank: 1, startStep: 0, seed: 0).matrices.map(\.name) == ["a.weight", "b.weight", "conv.weight"])
    }

    /// A checkpoint's error feedback: each rank its own row when resumed on as many ranks; on another
    /// number, rank 0 carries the rows' sum and the others none (nothing lost).
    @Test func errorFeedbackResumesPerRankOrFolded() throws {
        var file = Safetensors.File()
        file.tensors["compression.error_feedback"] = .init(floats: [1, 2, 3, 10, 20, 30], shape: [2, 3])
        file.metadata = [
            "tether.format": "tether-checkpoint-1", "tether.model": "mlp",
            "tether.config": String(decoding: try JSONEncoder().encode(TrainingConfig()), as: UTF8.self),
            "tether.state": String(decoding: try JSONEncoder().encode(TrainingState(rng: RNG(seed: 0))), as: UTF8.self)
        ]
        let loaded = try Checkpoint.Loaded(bytes: Safetensors.encode(file), source: "test")
        #expect(try loaded.errorFeedback(Shard(rank: 1, count: 2), count: 3) == [10, 20, 30])
        #expect(try loaded.errorFeedback(Shard(rank: 0, count: 3), count: 3) == [11, 22, 33])
        #expect(try loaded.errorFeedback(Shard(rank: 2, count: 3), count: 3) == [0, 0, 0])
        #expect(throws: CheckpointError.self) { try loaded.errorFeedback(.whole, count: 4) }
    }
}
