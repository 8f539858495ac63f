import CTetherKernels
import TetherComm
import TetherMessages
import TetherNN
import TetherTensor

/// PowerSGD (Vogels, Karimireddy & Jaggi 2019), as PyTorch DDP's `powerSGD_hook` runs it: each
/// compressible gradient matrix M (rows x cols: a dense layer's weight, a convolution's filters as
/// out x in*k*k, an LSTM's gate weights) travels as two thin factors summed over the ring,
///     P = M Q (rows x r), orthonormalized to P̂ on every rank,    then Q = Mᵀ P̂ (cols x r),
/// and every replica applies P̂ Qᵀ. Q is the last step's (warm start: one step of power iteration per
/// training step). What a worker's own matrix loses, M - P̂ Q_ownᵀ, is added to its next step's
/// (error feedback): summed over the workers, that is exactly what the approximation dropped.
/// The rest of a bucket (biases, weight_g, matrices whose factors would not be at least
/// `minCompressionRate` times smaller, as DDP decides) is summed as it is, in one more all-reduce.
///
/// Replicas stay bitwise equal: P̂ and P̂ Qᵀ are computed from the summed factors by the same loops
/// on every rank, without fused multiply-adds (never BLAS, whose kernels differ from CPU to CPU).
///
/// Q and the error feedback change only when a step's exchange has finished (`commit`): a step
/// abandoned part-way (a lost worker) leaves them as the last completed step left them.
public final class PowerSGD {
    public struct Matrix: Equatable {
        public let name: String
        public let offset, rows, cols, rank: Int
        var count: Int { rows * cols }
    }

    public let rank: Int
    /// Steps before this one are plain all-reduces (DDP's start_powerSGD_iter).
    public let startStep: Int
    /// The compressed matrices, in arena order.
    public let matrices: [Matrix]
    /// Each matrix's Q (cols x rank, row-major) one after another: the same on every replica.
    public private(set) var factors: [Float]
    private var nextFactors: [Float]
    private let factorOffsets: [Int]

    /// `minCompressionRate`: a matrix is compressed when rows x cols >= rate x (rows + cols) x rank (DDP's
    /// default 2; 0 compresses every matrix, even at full rank). Q starts as the same normal draw on
    /// every rank (`seed`).
    public init(layout: ArenaLayout, rank: Int, startStep: Int, seed: UInt64, minCompressionRate: Int = 2) {
        (self.rank, self.startStep) = (rank, startStep)
        var matrices: [Matrix] = []
        for e in layout.entries where !e.sparseGradient && e.shape.count >= 2 {
            let rows = e.shape[0], cols = e.count / max(rows, 1), r = min(rank, rows, cols)
            guard r > 0, rows * cols >= minCompressionRate * (rows + cols) * r else { continue }
            matrices.append(Matrix(name: e.name, offset: e.offset, rows: rows, cols: cols, rank: r))
        }
        self.matrices = matrices
        var offsets: [Int] = [], total = 0
        for m in matrices { offsets.append(total); total += m.cols * m.rank }
        factorOffsets = offsets
        var rng = RNG(seed: seed, stream: 0x9057_45CD)
        factors = (0..<total).map { _ in Float(rng.nextNormal()) }
        nextFactors = factors
    }

    /// Replaces Q (a checkpoint's, or the state a re-formed ring shares); false if the count differs.
    public func restore(factors q: [Float]) -> Bool {
        guard q.count == factors.count else { return false }
        (factors, nextFactors) = (q, q)
        return true
    }

    /// Makes the Q computed by the step's exchanges the one the next step starts from.
    func commit() { factors = nextFactors }
    /// Forgets what an abandoned step computed.
    func discard() { nextFactors = factors }

    /// Sums the gradients `grads[range]` over the ring: the compressed matrices that lie wholly in
    /// `range` as their factors, the rest as they are. `errors` (this rank's error feedback, arena
    /// order, or nil) is read from `errors.read` and written to `errors.written`. Two collectives: the
    /// P factors with the rest behind them (`bucket`), then the Q factors (`BucketID.powerSGDQ(bucket)`);
    /// the same on every rank, since the split into matrices and rest depends only on the layout and
    /// range. `trace` (--timeline) is told of each of the five phases as it ends.
    func allReduce(
        _ grads: UnsafeMutablePointer<Float>, range: Range<Int>,
        errors: (read: UnsafePointer<Float>, written: UnsafeMutablePointer<Float>)?,
        ring: Ring, step: UInt64, bucket: UInt32, vote: RingVotes, trace: ((_ phase: String, _ began: UInt64) -> Void)? = nil
    ) throws -> RingVotes {
        // each phase's name and when it began (microseconds since the Unix epoch), as it ends
        var began = trace != nil ? GradientExchange.microsecondsNow() : 0
        func phase(_ name: String) {
            guard let trace else { return }
            trace(name, began)
            began = GradientExchange.microsecondsNow()
        }
        let chosen = matrices.indices.filter {
            range.contains(matrices[$0].offset) && matrices[$0].offset + matrices[$0].count <= range.upperBound
        }
        var rest: [Range<Int>] = [], start = range.lowerBound
        for i in chosen {
            if start < matrices[i].offset { rest.append(start..<matrices[i].offset) }
            start = matrices[i].offset + matrices[i].count
        }
        if start < range.upperBound { rest.append(start..<range.upperBound) }

        // [P = M Q of each matrix (M with this rank's error feedback added) | the rest], summed.
        var pOffsets: [Int] = [], pTotal = 0
        for i in chosen { pOffsets.append(pTotal); pTotal += matrices[i].rows * matrices[i].rank }
        var p = [Float](repeating: 0, count: pTotal + rest.reduce(0) { $0 + $1.count })
        var q = [Float](repeating: 0, count: chosen.reduce(0) { $0 + matrices[$1].cols * matrices[$1].rank })
        for (j, i) in chosen.enumerated() {
            let m = matrices[i], a = grads + m.offset
            if let errors { Float.add(a, errors.read + m.offset, count: m.count) }
            factors.withUnsafeBufferPointer { qs in
                p.withUnsafeMutableBufferPointer { ps in
                    Float.gemm(
                        transposeA: false, transposeB: false, m: m.rows, n: m.rank, k: m.cols, alpha: 1, a: a, lda: m.cols,
                        b: qs.baseAddress! + factorOffsets[i], ldb: m.rank, beta: 0, c: ps.baseAddress! + pOffsets[j], ldc: m.rank)
                }
            }
        }
        // the rest is summed exactly: what the error feedback carries into it (from another compression) goes in whole
        if let errors { for r in rest { for k in r { grads[k] += errors.read[k]; errors.written[k] = 0 } } }
        p.withUnsafeMutableBufferPointer { ps in
            var at = pTotal
            for r in rest { (ps.baseAddress! + at).update(from: grads + r.lowerBound, count: r.count); at += r.count }
        }
        phase("PowerSGD: P = M Q")
        var votes = try p.withUnsafeMutableBufferPointer { try ring.allReduce($0, step: step, bucket: bucket, vote: vote) }
        phase("PowerSGD: P and the rest summed")
        p.withUnsafeBufferPointer { ps in
            var at = pTotal
            for r in rest { (grads + r.lowerBound).update(from: ps.baseAddress! + at, count: r.count); at += r.count }
        }
        guard !chosen.isEmpty else { return votes }

        // P̂, then this rank's Q = Mᵀ P̂ and what its own matrix loses; Q summed; M = P̂ Qᵀ.
        var qOffsets: [Int] = [], qTotal = 0
        for i in chosen { qOffsets.append(qTotal); qTotal += matrices[i].cols * matrices[i].rank }
        try p.withUnsafeMutableBufferPointer { ps in
            try q.withUnsafeMutableBufferPointer { qs in
                for (j, i) in chosen.enumerated() {
                    let m = matrices[i], a = grads + m.offset, pHat = ps.baseAddress! + pOffsets[j], own = qs.baseAddress! + qOffsets[j]
                    Self.orthonormalizeColumns(pHat, rows: m.rows, cols: m.rank)
                    Float.gemm(
                        transposeA: true, transposeB: false, m: m.cols, n: m.rank, k: m.rows, alpha: 1, a: a, lda: m.cols,
                        b: pHat, ldb: m.rank, beta: 0, c: own, ldc: m.rank)
                    if let errors {  // what this rank's own matrix loses: M - P̂ Q_ownᵀ
                        Self.product(
                            pHat, own, rows: m.rows, cols: m.cols, rank: m.rank, into: errors.written + m.offset, subtractedFrom: a)
                    }
                }
                phase("PowerSGD: Q = M^T P, error")
                votes.formUnion(try ring.allReduce(qs, step: step, bucket: BucketID.powerSGDQ(bucket), vote: vote))
                phase("PowerSGD: Q summed")
                for (j, i) in chosen.enumerated() {
                    let m = matrices[i]
                    Self.product(
                        ps.baseAddress! + pOffsets[j], qs.baseAddress! + qOffsets[j], rows: m.rows, cols: m.cols, rank: m.rank,
                        into: grads + m.offset)
                    nextFactors.withUnsafeMutableBufferPointer {
                        $0.baseAddress!.advanced(by: factorOffsets[i]).update(from: qs.baseAddress! + qOffsets[j], count: m.cols * m.rank)
                    }
                }
            }
        }
        phase("PowerSGD: M = P Q^T")
        return votes
    }

    /// Gram-Schmidt on the columns of `a` (rows x cols, row-major), in place: orthonormal columns
    /// spanning what `a`'s span (a column that vanishes becomes zero). Dot products in Double, in a
    /// fixed order: the same bits on every CPU.
    static func orthonormalizeColumns(_ a: UnsafeMutablePointer<Float>, rows: Int, cols: Int) {
        for k in 0..<cols {
            for j in 0..<k {
                var dot = 0.0
                for i in 0..<rows { dot += Double(a[i * cols + j]) * Double(a[i * cols + k]) }
                let d = Float(dot)
                for i in 0..<rows { a[i * cols + k] -= d * a[i * cols + j] }
            }
            var squares = 0.0
            for i in 0..<rows { squares += Double(a[i * cols + k]) * Double(a[i * cols + k]) }
            let scale = squares > 0 ? Float(1 / squares.squareRoot()) : 0
            for i in 0..<rows { a[i * cols + k] *= scale }
        }
    }

    /// out (rows x cols) = p (rows x rank) times qᵀ (q: cols x rank), summing over the rank in order,
    /// or `subtractedFrom` (rows x cols) minus that (tether_low_rank_product_f32: the same bits on every CPU).
    static func product(
        _ p: UnsafePointer<Float>, _ q: UnsafePointer<Float>, rows: Int, cols: Int, rank: Int, into out: UnsafeMutablePointer<Float>,
        subtractedFrom from: UnsafePointer<Float>? = nil
    ) {
        // qᵀ (rank x cols): the kernel runs along a row of it, so along the output's row
        withUnsafeTemporaryAllocation(of: Float.self, capacity: rank * cols) { qt in
            for j in 0..<cols { for k in 0..<rank { qt[k * cols + j] = q[j * rank + k] } }
            tether_low_rank_product_f32(out, from, p, qt.baseAddress!, rows, cols, rank)
        }
    }
}
