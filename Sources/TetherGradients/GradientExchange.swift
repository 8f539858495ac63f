import Foundation
import TetherComm
import TetherMessages
import TetherNN
import TetherTensor

/// One step's gradient exchange: dense gradients summed over the ring in buckets, the first ones while
/// backward is still running; then each sparse table's rows all-gathered and merged in rank order (or,
/// when that would move more bytes, all-reduced densely), so every replica holds the same rows in the
/// same order.
///
/// Overlap: a model that knows tells `ready(from:)` during backward that the gradients at arena offsets
/// >= `from` are final (a Sequential classifier, after each layer). Once at least a bucket's worth of
/// them is waiting, they go to the exchange thread as one bucket (the ring pipelines it in chunks),
/// from the end of the arena down, while backward goes on. `finish` sends the rest as one more bucket
/// (nothing is left to overlap with; two all-reduces cost mlp-wn 5-10% over one) and waits. Buckets
/// form from the same layers in the same order on every replica, so their numbers and bounds agree.
public final class GradientExchange: @unchecked Sendable {  // the exchange thread runs only between send and wait
    public let ring: Ring
    let model: any Model<Float>
    let bucketElements: Int
    private let thread = DispatchQueue(label: "tether.gradient-exchange")
    private let pending = DispatchGroup()
    private var step: UInt64 = 0
    private var nextBucket: UInt32 = 0
    /// Gradients at offsets >= sentFrom are handed to the exchange thread (0 between steps: nothing
    /// more to send, so the model's reports do nothing).
    private var sentFrom = 0
    /// Written on the exchange thread, read after `pending.wait()`.
    private var failure: Error?
    /// This rank's votes for the step (set before `begin`), carried by every all-reduce of the step;
    /// `agreed`, after `finish`, is what any rank voted: the same on every rank.
    public var vote: RingVotes = []
    private var votes: RingVotes = []
    public private(set) var agreed: RingVotes = []

    /// How the dense gradients travel: as f32; narrowed to f16/bf16 (`codec`); or as PowerSGD factors.
    let wire: ChunkHeader.DType
    private let codec: WireCodec?
    public let powerSGD: PowerSGD?
    /// Error feedback (nil: off): what this rank's compression took from each gradient element, added
    /// to it the next step. A step's exchanges read `errors` and write `nextErrors`; the two swap when
    /// the exchange finishes, so an abandoned step leaves the last completed step's.
    private var errors: UnsafeMutablePointer<Float>?, nextErrors: UnsafeMutablePointer<Float>?

    public init(
        ring: Ring, model: any Model<Float>, bucketBytes: Int, wire: ChunkHeader.DType = .f32, powerSGD: PowerSGD? = nil,
        errorFeedback: Bool = true
    ) {
        (self.ring, self.model, self.wire, self.powerSGD) = (ring, model, wire, powerSGD)
        codec = WireCodec(wire)
        if errorFeedback, codec != nil || powerSGD != nil {
            (errors, nextErrors) = (.allocate(capacity: model.arena.count), .allocate(capacity: model.arena.count))
            errors!.initialize(repeating: 0, count: model.arena.count)
            nextErrors!.initialize(repeating: 0, count: model.arena.count)
        }
        bucketElements = max(1, bucketBytes / MemoryLayout<Float>.stride)
        // Installed once; `begin` arms it for a step and `finish` (sentFrom = 0) disarms it.
        model.context.gradientsReady = { [weak self] offset in
            guard let self, sentFrom - offset >= bucketElements else { return }
            send(from: offset)
        }
    }

    deinit { errors?.deallocate(); nextErrors?.deallocate() }

    /// This rank's error feedback after the last completed step (arena order), or nil when off.
    public var errorFeedback: [Float]? { errors.map { Array(UnsafeBufferPointer(start: $0, count: model.arena.count)) } }

    /// Replaces this rank's error feedback (a checkpoint's, or what it carried through a re-formation);
    /// false when its length is not the arena's.
    public func restore(errorFeedback values: [Float]) -> Bool {
        guard let errors, values.count == model.arena.count else { return false }
        values.withUnsafeBufferPointer { errors.update(from: $0.baseAddress!, count: $0.count) }
        return true
    }

    /// Arms the exchange for `step`: from here the model's backward reports its progress to it.
    public func begin(step: UInt64) {
        (self.step, nextBucket, sentFrom, failure) = (step, 0, model.arena.count, nil)
        bytesAtBegin = ring.statistics.bytesSent
        spans.removeAll(keepingCapacity: true)
        (votes, agreed) = (vote, [])
        powerSGD?.discard()  // what an abandoned step computed
    }

    /// The payload bytes this rank sent in the last finished step: dense buckets (as the wire carries
    /// them: narrowed or PowerSGD factors under compression), and sparse tables.
    public private(set) var sent = (dense: 0, sparse: 0)
    private var bytesAtBegin = 0
    /// With --timeline: each collective of the last finished step (name, start, end: microseconds since
    /// the Unix epoch), appended by the exchange thread, read after `finish`.
    public var tracing = false
    public private(set) var spans: [(name: String, start: UInt64, end: UInt64)] = []
    public static func microsecondsNow() -> UInt64 { UInt64(max(0, Date().timeIntervalSince1970 * 1e6)) }

    /// Exchanges what backward has not already sent, waits for every bucket, then the sparse tables.
    public func finish() throws {
        send(from: 0)
        pending.wait()
        if let failure { throw failure }
        let afterDense = ring.statistics.bytesSent
        let sparseBegan = tracing && !model.sparseGradients.isEmpty ? Self.microsecondsNow() : 0
        try exchangeSparse()
        if sparseBegan > 0 { spans.append(("sparse tables", sparseBegan, Self.microsecondsNow())) }
        sent = (afterDense - bytesAtBegin, ring.statistics.bytesSent - afterDense)
        agreed = votes
        swap(&errors, &nextErrors)
        powerSGD?.commit()
    }

    /// Hands the dense gradients in offset..<sentFrom to the exchange thread: one bucket per dense range
    /// they cover (sparse tables lie between ranges), highest first.
    private func send(from offset: Int) {
        for range in model.arena.denseRanges.reversed() {
            let start = max(range.lowerBound, offset), end = min(range.upperBound, sentFrom)
            guard start < end else { continue }
            let (step, bucket) = (step, nextBucket)
            thread.async(group: pending) { [self] in
                guard failure == nil else { return }
                let grads = model.arena.grads, buffer = UnsafeMutableBufferPointer(start: grads + start, count: end - start)
                let began = tracing ? Self.microsecondsNow() : 0
                defer {
                    if tracing {
                        // the schedule the bucket took (PowerSGD's factors name their own spans)
                        let how = ring.lastAllReduce.rawValue
                        spans.append(("all-reduce bucket \(bucket) (\(end - start) values, \(how))", began, Self.microsecondsNow()))
                    }
                }
                do {
                    if let powerSGD, step >= powerSGD.startStep {
                        let feedback = errors.map { (read: UnsafePointer($0), written: nextErrors!) }
                        votes.formUnion(
                            try powerSGD.allReduce(
                                grads, range: start..<end, errors: feedback, ring: ring, step: step, bucket: bucket, vote: votes,
                                trace: tracing ? { [self] in spans.append(($0, $1, Self.microsecondsNow())) } : nil))
                        return
                    }
                    if let errors, let nextErrors {
                        if let codec {
                            // this rank's contribution is rounded here, carrying what it loses into the
                            // next step, so the ring's first narrowing of it is exact
                            (nextErrors + start).update(from: errors + start, count: end - start)
                            codec.round(buffer.baseAddress!, count: buffer.count, carry: nextErrors + start)
                        } else {
                            // PowerSGD before its start step: exact, so what is carried goes in whole
                            for k in start..<end { grads[k] += errors[k] }
                            (nextErrors + start).update(repeating: 0, count: end - start)
                        }
                    }
                    votes.formUnion(try ring.allReduce(buffer, wire: wire, step: step, bucket: bucket, vote: votes))
                } catch { failure = error }
            }
            nextBucket += 1
        }
        sentFrom = min(sentFrom, offset)
    }

    private func exchangeSparse() throws {
        let arena = model.arena
        for (table, rows) in model.sparseGradients.enumerated() {
            let n = rows.count, width = rows.width
            // All-gather moves every rank's rows to every rank; a dense all-reduce of the whole table
            // moves 2(N-1)/N of it. The ranks agree on the choice from the total row count.
            var total = [Double(n)]
            votes.formUnion(
                try total.withUnsafeMutableBufferPointer {
                    try ring.allReduce($0, step: step, bucket: BucketID.sparseRowCount(table: table), vote: votes)
                })
            if 2 * Double(rows.tableRows * width) < total[0] * Double(1 + width) {
                try exchangeDensely(rows, bucket: BucketID.sparseDense(table: table))
                continue
            }
            // row ids as they are; values as f32, or narrowed to the wire's 16-bit type (no error
            // feedback: the rows differ from step to step)
            let valueBytes = codec == nil ? 4 : 2
            var payload = [UInt8](repeating: 0, count: n * 4 + n * width * valueBytes)
            payload.withUnsafeMutableBytes { p in
                p.baseAddress!.copyMemory(from: rows.idPointer, byteCount: n * 4)
                let values = p.baseAddress! + n * 4
                if let codec {
                    codec.narrow(values.assumingMemoryBound(to: UInt16.self), rows.valuePointer, count: n * width)
                } else {
                    values.copyMemory(from: rows.valuePointer, byteCount: n * width * 4)
                }
            }
            let all = try ring.allGather(payload, step: step)
            rows.clear()
            var widened: [Float] = []
            for (r, bytes) in all.enumerated() {
                guard bytes.count % (4 + valueBytes * width) == 0 else {
                    throw GradientError(
                        "rank \(r)'s sparse gradient for \(arena.layout.entries[rows.slot.index].name) has \(bytes.count) bytes, not whole rows of \(width)"
                    )
                }
                let m = bytes.count / (4 + valueBytes * width)
                try bytes.withUnsafeBytes { p in
                    let ids = p.baseAddress!.assumingMemoryBound(to: Int32.self)
                    if let bad = (0..<m).first(where: { ids[$0] < 0 || Int(ids[$0]) >= rows.tableRows }) {
                        throw GradientError("rank \(r) sent row \(ids[bad]) of a table with \(rows.tableRows) rows")
                    }
                    guard let codec else {
                        rows.accumulate(rowIDs: ids, grads: (p.baseAddress! + m * 4).assumingMemoryBound(to: Float.self), count: m)
                        return
                    }
                    widened = [Float](repeating: 0, count: m * width)
                    widened.withUnsafeMutableBufferPointer {
                        codec.widen($0.baseAddress!, (p.baseAddress! + m * 4).assumingMemoryBound(to: UInt16.self), count: m * width)
                    }
                    rows.accumulate(rowIDs: ids, grads: widened, count: m)
                }
            }
        }
    }

    /// A sparse table's gradient summed as a dense all-reduce; the rows that end up non-zero become its
    /// rows again (a row whose summed gradient is exactly zero is a no-op for AdaGrad, FTRL and SGD).
    private func exchangeDensely(_ rows: SparseRows<Float>, bucket: UInt32) throws {
        let width = rows.width, tableRows = rows.tableRows
        var dense = [Float](repeating: 0, count: tableRows * width)
        try dense.withUnsafeMutableBufferPointer { d in
            rows.addDense(into: d.baseAddress!)
            try ring.allReduce(d, wire: wire, step: step, bucket: bucket)
            rows.clear()
            var ids: [Int32] = [], values: [Float] = []
            for r in 0..<tableRows {
                let row = d.baseAddress! + r * width
                if (0..<width).contains(where: { row[$0] != 0 }) {
                    ids.append(Int32(r))
                    values.append(contentsOf: UnsafeBufferPointer(start: row, count: width))
                }
            }
            rows.accumulate(rowIDs: ids, grads: values, count: ids.count)
        }
    }
}

/// A peer's gradient that cannot be taken (malformed or out of range): this worker's fault to report,
/// never a ring failure to re-form around.
public struct GradientError: Error, CustomStringConvertible {
    public let description: String
    public init(_ d: String) { description = d }
}
