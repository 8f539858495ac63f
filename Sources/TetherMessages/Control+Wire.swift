import CProtobufC
import Foundation
import TetherWire

// The cluster's control messages (proto: Assign, Ready, Start, StepReport, EvalReport, CheckpointData,
// Heartbeat, Stop, Reform) as Swift values, and their conversion to and from protobuf-c.

public struct Assign: Equatable, Sendable {
    public var rank: UInt32
    public var worldSize: UInt32
    public var ring: [String]
    public var configJSON: [UInt8]
    public var resumeCheckpoint: [UInt8]
    public var hashEvery: UInt32
    public var checkpointEvery: UInt32
    public var bucketBytes: UInt32
    public var dataServed = false
    /// The ring links' CURVE keys (Z85): this rank's secret key and every rank's public key; empty
    /// when the job runs --insecure.
    public var ringSecretKey = ""
    public var ringPublicKeys: [String] = []
    /// Elastic in place: a lost member re-forms the ring of the survivors (Reform).
    public var reformInPlace = false
    /// Joining a running job: the re-formed ring's epoch (0: the job's first ring).
    public var ringEpoch: UInt32 = 0
    /// Continue from the state the workers carried through a lost coordinator, not the checkpoint.
    public var useCarriedState = false
    /// Report each step's spans (StepReport.spans) for the job's Chrome trace.
    public var timeline = false
    /// A fresh run's starting weights (a safetensors file), when it does not draw them.
    public var startingWeights: [UInt8] = []
    public init(
        rank: UInt32, worldSize: UInt32, ring: [String], configJSON: [UInt8], resumeCheckpoint: [UInt8] = [],
        hashEvery: UInt32, checkpointEvery: UInt32, bucketBytes: UInt32
    ) {
        (self.rank, self.worldSize, self.ring, self.configJSON) = (rank, worldSize, ring, configJSON)
        (self.resumeCheckpoint, self.hashEvery, self.checkpointEvery, self.bucketBytes) = (
            resumeCheckpoint, hashEvery, checkpointEvery, bucketBytes
        )
    }
}

public struct Ready: Equatable, Sendable {
    public var parameterHash: UInt64
    public var layoutFingerprint: UInt64
    /// The steps the replica's parameters hold.
    public var globalStep: UInt64
    /// After a re-formation: the step this worker was computing when its ring gave up (0: none).
    public var abandonedStep: UInt64 = 0
    public init(parameterHash: UInt64, layoutFingerprint: UInt64, globalStep: UInt64 = 0, abandonedStep: UInt64 = 0) {
        (self.parameterHash, self.layoutFingerprint, self.globalStep, self.abandonedStep) = (
            parameterHash, layoutFingerprint, globalStep, abandonedStep
        )
    }
}

/// Elastic in place: the ring re-formed without lost members; this survivor's new rank in it.
public struct Reform: Equatable, Sendable {
    public var ringEpoch: UInt32
    public var rank: UInt32
    public var ring: [String]
    /// The new ring's public keys by new rank (CURVE), or empty.
    public var ringPublicKeys: [String]
    public var reason: String
    /// A worker joins: re-form after a step agreed in its exchange, redoing nothing (else at once).
    public var atBoundary = false
    public init(
        ringEpoch: UInt32, rank: UInt32, ring: [String], ringPublicKeys: [String] = [], reason: String, atBoundary: Bool = false
    ) {
        (self.ringEpoch, self.rank, self.ring, self.ringPublicKeys, self.reason) = (ringEpoch, rank, ring, ringPublicKeys, reason)
        self.atBoundary = atBoundary
    }
}

public struct StepReport: Equatable, Sendable {
    public var globalStep: UInt64
    public var epoch: UInt32
    public var lossSum: Double
    public var count: UInt64
    public var correct: UInt64
    public var computeSeconds: Double
    public var allreduceSeconds: Double
    public var optimizerSeconds: Double
    /// 0 when this step does not report it.
    public var parameterHash: UInt64
    /// Of allreduceSeconds: waiting for a neighbour's data.
    public var waitSeconds: Double
    /// The ranks agreed to stop after this step (Stop): the job ends here, with a checkpoint.
    public var stopping = false
    /// The rate this step's optimizer update used.
    public var learningRate = 0.0
    /// Payload bytes this rank sent in the step: dense buckets (as the wire carried them), sparse tables.
    public var denseBytesSent: UInt64 = 0, sparseBytesSent: UInt64 = 0
    /// With Assign.timeline: what the rank did in the step, when (at most `TraceSpan.limit`).
    public var spans: [TraceSpan] = []
    public init(
        globalStep: UInt64, epoch: UInt32, lossSum: Double, count: UInt64, correct: UInt64, computeSeconds: Double,
        allreduceSeconds: Double, optimizerSeconds: Double, parameterHash: UInt64, waitSeconds: Double
    ) {
        (self.globalStep, self.epoch, self.lossSum, self.count, self.correct) = (globalStep, epoch, lossSum, count, correct)
        (self.computeSeconds, self.allreduceSeconds, self.optimizerSeconds, self.parameterHash) = (
            computeSeconds, allreduceSeconds, optimizerSeconds, parameterHash
        )
        self.waitSeconds = waitSeconds
    }
}

/// A span of a rank's step: microseconds since the Unix epoch by the worker's clock.
public struct TraceSpan: Equatable, Sendable {
    public var name: String
    public var startMicroseconds: UInt64
    public var durationMicroseconds: UInt64
    /// Spans a step report may carry, and the longest name: what a decoder accepts.
    public static let limit = 4096, nameLimit = 64
    public init(name: String, startMicroseconds: UInt64, durationMicroseconds: UInt64) {
        (self.name, self.startMicroseconds, self.durationMicroseconds) = (name, startMicroseconds, durationMicroseconds)
    }
}

public struct EvalReport: Equatable, Sendable {
    public var epoch: UInt32
    public var lossSum: Double
    public var count: UInt64
    public var correct: UInt64
    public var scores: [Float]
    public var labels: [Int32]
    /// Regression: the summed per-sample mean squared and absolute errors.
    public var squaredErrorSum: Double, absoluteErrorSum: Double
    public init(
        epoch: UInt32, lossSum: Double, count: UInt64, correct: UInt64, scores: [Float], labels: [Int32], squaredErrorSum: Double = 0,
        absoluteErrorSum: Double = 0
    ) {
        (self.epoch, self.lossSum, self.count, self.correct, self.scores, self.labels) = (
            epoch, lossSum, count, correct, scores, labels
        )
        (self.squaredErrorSum, self.absoluteErrorSum) = (squaredErrorSum, absoluteErrorSum)
    }
}

/// Split 0 is training, 1 test.
public struct DataRequest: Equatable, Sendable {
    public var split: UInt32
    public var indices: [UInt32]
    public init(split: UInt32, indices: [UInt32]) { (self.split, self.indices) = (split, indices) }
}

/// The requested rows of a split (encoded by the dataset's type, in request order), with the
/// split's size and encoded shape; or why they cannot be served.
public struct DataRows: Equatable, Sendable {
    public var split: UInt32, count: UInt32
    public var shape: [UInt8], rows: [UInt8]
    public var error: String
    public init(split: UInt32, count: UInt32 = 0, shape: [UInt8] = [], rows: [UInt8] = [], error: String = "") {
        (self.split, self.count, self.shape, self.rows, self.error) = (split, count, shape, rows, error)
    }
}

/// A graceful stop: coordinator -> worker "stop after the step in progress"; worker -> coordinator
/// "this worker received `signal` and votes to stop".
public struct Stop: Equatable, Sendable {
    public var signal: Int32
    public var reason: String
    public init(signal: Int32, reason: String) { (self.signal, self.reason) = (signal, reason) }
}

public struct CheckpointData: Equatable, Sendable {
    public var globalStep: UInt64
    public var safetensors: [UInt8]
    public init(globalStep: UInt64, safetensors: [UInt8]) { (self.globalStep, self.safetensors) = (globalStep, safetensors) }
}

/// C strings and buffers that live until the message is packed.
final class PackArena {
    private var strings: [UnsafeMutablePointer<CChar>] = []
    private var blocks: [UnsafeMutableRawPointer] = []
    deinit { strings.forEach { free($0) }; blocks.forEach { $0.deallocate() } }

    func string(_ s: String) -> UnsafeMutablePointer<CChar> { let p = strdup(s)!; strings.append(p); return p }
    func strings(_ list: [String]) -> UnsafeMutablePointer<UnsafeMutablePointer<CChar>?> {
        let p = UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>.allocate(capacity: max(list.count, 1))
        for (i, s) in list.enumerated() { p[i] = string(s) }
        blocks.append(UnsafeMutableRawPointer(p))
        return p
    }
    func copy<T>(_ values: [T]) -> UnsafeMutablePointer<T> {
        let p = UnsafeMutablePointer<T>.allocate(capacity: max(values.count, 1))
        p.initialize(from: values, count: values.count)
        blocks.append(UnsafeMutableRawPointer(p))
        return p
    }
    func binary(_ bytes: [UInt8]) -> ProtobufCBinaryData { ProtobufCBinaryData(len: bytes.count, data: copy(bytes)) }
}

extension Envelope {
    /// Fills the control bodies into `msg` (pointers into `arena` and into the structs `body` passes to
    /// `pack`); nil for the bodies Envelope+Wire.swift handles.
    static func packControl(
        _ body: Body, _ msg: inout Tether__V1__Envelope, _ arena: PackArena, _ pack: (inout Tether__V1__Envelope) -> [UInt8]
    ) -> [UInt8]? {
        switch body {
        case .assign(let a):
            var m = Tether__V1__Assign()
            tether__v1__assign__init(&m)
            (m.rank, m.world_size, m.hash_every, m.checkpoint_every, m.bucket_bytes) = (
                a.rank, a.worldSize, a.hashEvery, a.checkpointEvery, a.bucketBytes
            )
            (m.n_ring, m.ring) = (a.ring.count, arena.strings(a.ring))
            m.config_json = arena.binary(a.configJSON)
            m.resume_checkpoint = arena.binary(a.resumeCheckpoint)
            m.data_served = a.dataServed ? 1 : 0
            m.ring_secret_key = arena.string(a.ringSecretKey)
            (m.n_ring_public_keys, m.ring_public_keys) = (a.ringPublicKeys.count, arena.strings(a.ringPublicKeys))
            m.reform_in_place = a.reformInPlace ? 1 : 0
            m.ring_epoch = a.ringEpoch
            m.use_carried_state = a.useCarriedState ? 1 : 0
            m.timeline = a.timeline ? 1 : 0
            m.starting_weights = arena.binary(a.startingWeights)
            return withUnsafeMutablePointer(to: &m) {
                msg.body_case = TETHER__V1__ENVELOPE__BODY_ASSIGN; msg.assign = $0; return pack(&msg)
            }
        case .ready(let r):
            var m = Tether__V1__Ready()
            tether__v1__ready__init(&m)
            (m.parameter_hash, m.layout_fingerprint, m.global_step, m.abandoned_step) = (
                r.parameterHash, r.layoutFingerprint, r.globalStep, r.abandonedStep
            )
            return withUnsafeMutablePointer(to: &m) {
                msg.body_case = TETHER__V1__ENVELOPE__BODY_READY; msg.ready = $0; return pack(&msg)
            }
        case .start:
            var m = Tether__V1__Start()
            tether__v1__start__init(&m)
            return withUnsafeMutablePointer(to: &m) {
                msg.body_case = TETHER__V1__ENVELOPE__BODY_START; msg.start = $0; return pack(&msg)
            }
        case .finish:
            var m = Tether__V1__Finish()
            tether__v1__finish__init(&m)
            return withUnsafeMutablePointer(to: &m) {
                msg.body_case = TETHER__V1__ENVELOPE__BODY_FINISH; msg.finish = $0; return pack(&msg)
            }
        case .unassigned:
            var m = Tether__V1__Unassigned()
            tether__v1__unassigned__init(&m)
            return withUnsafeMutablePointer(to: &m) {
                msg.body_case = TETHER__V1__ENVELOPE__BODY_UNASSIGNED; msg.unassigned = $0; return pack(&msg)
            }
        case .heartbeat:
            var m = Tether__V1__Heartbeat()
            tether__v1__heartbeat__init(&m)
            return withUnsafeMutablePointer(to: &m) {
                msg.body_case = TETHER__V1__ENVELOPE__BODY_HEARTBEAT; msg.heartbeat = $0; return pack(&msg)
            }
        case .stepReport(let s):
            var m = Tether__V1__StepReport()
            tether__v1__step_report__init(&m)
            (m.global_step, m.epoch, m.loss_sum, m.count, m.correct) = (s.globalStep, s.epoch, s.lossSum, s.count, s.correct)
            (m.compute_seconds, m.allreduce_seconds, m.optimizer_seconds, m.parameter_hash) = (
                s.computeSeconds, s.allreduceSeconds, s.optimizerSeconds, s.parameterHash
            )
            m.wait_seconds = s.waitSeconds
            m.stopping = s.stopping ? 1 : 0
            m.learning_rate = s.learningRate
            (m.dense_bytes_sent, m.sparse_bytes_sent) = (s.denseBytesSent, s.sparseBytesSent)
            let spans: [Tether__V1__TraceSpan] = s.spans.map { span in
                var t = Tether__V1__TraceSpan()
                tether__v1__trace_span__init(&t)
                (t.name, t.start_us, t.duration_us) = (arena.string(span.name), span.startMicroseconds, span.durationMicroseconds)
                return t
            }
            let spanStructs = arena.copy(spans)
            (m.n_spans, m.spans) = (spans.count, arena.copy((0..<spans.count).map { Optional(spanStructs + $0) }))
            return withUnsafeMutablePointer(to: &m) {
                msg.body_case = TETHER__V1__ENVELOPE__BODY_STEP_REPORT; msg.step_report = $0; return pack(&msg)
            }
        case .evalReport(let e):
            var m = Tether__V1__EvalReport()
            tether__v1__eval_report__init(&m)
            (m.epoch, m.loss_sum, m.count, m.correct) = (e.epoch, e.lossSum, e.count, e.correct)
            (m.squared_error_sum, m.absolute_error_sum) = (e.squaredErrorSum, e.absoluteErrorSum)
            (m.n_scores, m.scores) = (e.scores.count, arena.copy(e.scores))
            (m.n_labels, m.labels) = (e.labels.count, arena.copy(e.labels))
            return withUnsafeMutablePointer(to: &m) {
                msg.body_case = TETHER__V1__ENVELOPE__BODY_EVAL_REPORT; msg.eval_report = $0; return pack(&msg)
            }
        case .checkpoint(let c):
            var m = Tether__V1__CheckpointData()
            tether__v1__checkpoint_data__init(&m)
            m.global_step = c.globalStep
            m.safetensors = arena.binary(c.safetensors)
            return withUnsafeMutablePointer(to: &m) {
                msg.body_case = TETHER__V1__ENVELOPE__BODY_CHECKPOINT; msg.checkpoint = $0; return pack(&msg)
            }
        case .dataRequest(let d):
            var m = Tether__V1__DataRequest()
            tether__v1__data_request__init(&m)
            m.split = d.split
            (m.n_indices, m.indices) = (d.indices.count, arena.copy(d.indices))
            return withUnsafeMutablePointer(to: &m) {
                msg.body_case = TETHER__V1__ENVELOPE__BODY_DATA_REQUEST; msg.data_request = $0; return pack(&msg)
            }
        case .dataRows(let d):
            var m = Tether__V1__DataRows()
            tether__v1__data_rows__init(&m)
            (m.split, m.count) = (d.split, d.count)
            (m.shape, m.rows, m.error) = (arena.binary(d.shape), arena.binary(d.rows), arena.string(d.error))
            return withUnsafeMutablePointer(to: &m) {
                msg.body_case = TETHER__V1__ENVELOPE__BODY_DATA_ROWS; msg.data_rows = $0; return pack(&msg)
            }
        case .stop(let s):
            var m = Tether__V1__Stop()
            tether__v1__stop__init(&m)
            (m.signal, m.reason) = (s.signal, arena.string(s.reason))
            return withUnsafeMutablePointer(to: &m) {
                msg.body_case = TETHER__V1__ENVELOPE__BODY_STOP; msg.stop = $0; return pack(&msg)
            }
        case .reform(let r):
            var m = Tether__V1__Reform()
            tether__v1__reform__init(&m)
            (m.ring_epoch, m.rank, m.reason, m.at_boundary) = (r.ringEpoch, r.rank, arena.string(r.reason), r.atBoundary ? 1 : 0)
            (m.n_ring, m.ring) = (r.ring.count, arena.strings(r.ring))
            (m.n_ring_public_keys, m.ring_public_keys) = (r.ringPublicKeys.count, arena.strings(r.ringPublicKeys))
            return withUnsafeMutablePointer(to: &m) {
                msg.body_case = TETHER__V1__ENVELOPE__BODY_REFORM; msg.reform = $0; return pack(&msg)
            }
        case .hello, .chunk, .abort:
            return nil
        }
    }

    /// The control body of an unpacked envelope, validated; nil for the bodies Envelope+Wire.swift handles.
    static func unpackControl(_ env: Tether__V1__Envelope) throws -> Body? {
        func bytes(_ b: ProtobufCBinaryData) -> [UInt8] { b.len == 0 ? [] : Array(UnsafeBufferPointer(start: b.data, count: b.len)) }
        switch env.body_case {
        case TETHER__V1__ENVELOPE__BODY_ASSIGN:
            guard let a = env.assign?.pointee else { return nil }
            guard a.world_size > 0, a.rank < a.world_size, a.n_ring == Int(a.world_size) else {
                throw WireError(
                    message: "assign from rank \(env.sender_rank): rank \(a.rank) of \(a.world_size) with \(a.n_ring) ring addresses")
            }
            let ring = (0..<a.n_ring).map { String(cString: a.ring[$0]!) }
            var assign = Assign(
                rank: a.rank, worldSize: a.world_size, ring: ring, configJSON: bytes(a.config_json),
                resumeCheckpoint: bytes(a.resume_checkpoint), hashEvery: a.hash_every, checkpointEvery: a.checkpoint_every,
                bucketBytes: a.bucket_bytes)
            assign.dataServed = a.data_served != 0
            assign.ringSecretKey = a.ring_secret_key.map { String(cString: $0) } ?? ""
            guard a.n_ring_public_keys == 0 || a.n_ring_public_keys == a.n_ring else {
                throw WireError(message: "assign: \(a.n_ring_public_keys) ring keys for \(a.n_ring) ranks")
            }
            assign.ringPublicKeys = (0..<a.n_ring_public_keys).map { String(cString: a.ring_public_keys[$0]!) }
            assign.reformInPlace = a.reform_in_place != 0
            assign.ringEpoch = a.ring_epoch
            assign.useCarriedState = a.use_carried_state != 0
            assign.timeline = a.timeline != 0
            assign.startingWeights = bytes(a.starting_weights)
            return .assign(assign)
        case TETHER__V1__ENVELOPE__BODY_REFORM:
            guard let r = env.reform?.pointee else { return nil }
            guard r.n_ring > 0, Int(r.rank) < r.n_ring, r.n_ring_public_keys == 0 || r.n_ring_public_keys == r.n_ring else {
                throw WireError(
                    message:
                        "reform from rank \(env.sender_rank): rank \(r.rank) of \(r.n_ring) ring addresses and \(r.n_ring_public_keys) keys"
                )
            }
            return .reform(
                Reform(
                    ringEpoch: r.ring_epoch, rank: r.rank, ring: (0..<r.n_ring).map { String(cString: r.ring[$0]!) },
                    ringPublicKeys: (0..<r.n_ring_public_keys).map { String(cString: r.ring_public_keys[$0]!) },
                    reason: r.reason.map { String(cString: $0) } ?? "", atBoundary: r.at_boundary != 0))
        case TETHER__V1__ENVELOPE__BODY_DATA_REQUEST:
            guard let d = env.data_request?.pointee else { return nil }
            guard d.split <= 1 else {
                throw WireError(message: "data request from rank \(env.sender_rank): split \(d.split) (0 training, 1 test)")
            }
            return .dataRequest(DataRequest(split: d.split, indices: Array(UnsafeBufferPointer(start: d.indices, count: d.n_indices))))
        case TETHER__V1__ENVELOPE__BODY_DATA_ROWS:
            guard let d = env.data_rows?.pointee else { return nil }
            // The rows are checked against their shape where they are decoded (ServableDataset).
            return .dataRows(
                DataRows(
                    split: d.split, count: d.count, shape: bytes(d.shape), rows: bytes(d.rows),
                    error: d.error.map { String(cString: $0) } ?? ""))
        case TETHER__V1__ENVELOPE__BODY_READY:
            guard let r = env.ready?.pointee else { return nil }
            return .ready(
                Ready(
                    parameterHash: r.parameter_hash, layoutFingerprint: r.layout_fingerprint, globalStep: r.global_step,
                    abandonedStep: r.abandoned_step))
        case TETHER__V1__ENVELOPE__BODY_START:
            return .start
        case TETHER__V1__ENVELOPE__BODY_HEARTBEAT:
            return .heartbeat
        case TETHER__V1__ENVELOPE__BODY_FINISH:
            return .finish
        case TETHER__V1__ENVELOPE__BODY_UNASSIGNED:
            return .unassigned
        case TETHER__V1__ENVELOPE__BODY_STEP_REPORT:
            guard let s = env.step_report?.pointee else { return nil }
            guard s.loss_sum.isFinite || s.count == 0 else {
                throw WireError(message: "step report from rank \(env.sender_rank): loss \(s.loss_sum) at step \(s.global_step)")
            }
            var report = StepReport(
                globalStep: s.global_step, epoch: s.epoch, lossSum: s.loss_sum, count: s.count, correct: s.correct,
                computeSeconds: s.compute_seconds, allreduceSeconds: s.allreduce_seconds,
                optimizerSeconds: s.optimizer_seconds, parameterHash: s.parameter_hash, waitSeconds: s.wait_seconds)
            report.stopping = s.stopping != 0
            report.learningRate = s.learning_rate
            (report.denseBytesSent, report.sparseBytesSent) = (s.dense_bytes_sent, s.sparse_bytes_sent)
            guard s.n_spans <= TraceSpan.limit else {
                throw WireError(message: "step report from rank \(env.sender_rank): \(s.n_spans) trace spans, at most \(TraceSpan.limit)")
            }
            report.spans = try (0..<s.n_spans).map { i in
                guard let t = s.spans[i]?.pointee else {
                    throw WireError(message: "step report from rank \(env.sender_rank): trace span \(i) missing")
                }
                let name = t.name.map { String(cString: $0) } ?? ""
                guard name.utf8.count <= TraceSpan.nameLimit, t.duration_us <= UInt64(Int64.max), t.start_us <= UInt64(Int64.max) else {
                    throw WireError(
                        message:
                            "step report from rank \(env.sender_rank): trace span \(i) (\(name.prefix(TraceSpan.nameLimit))) out of range")
                }
                return TraceSpan(name: name, startMicroseconds: t.start_us, durationMicroseconds: t.duration_us)
            }
            return .stepReport(report)
        case TETHER__V1__ENVELOPE__BODY_STOP:
            guard let s = env.stop?.pointee else { return nil }
            return .stop(Stop(signal: s.signal, reason: s.reason.map { String(cString: $0) } ?? ""))
        case TETHER__V1__ENVELOPE__BODY_EVAL_REPORT:
            guard let e = env.eval_report?.pointee else { return nil }
            guard e.n_scores == e.n_labels else {
                throw WireError(message: "eval report from rank \(env.sender_rank): \(e.n_scores) scores for \(e.n_labels) labels")
            }
            return .evalReport(
                EvalReport(
                    epoch: e.epoch, lossSum: e.loss_sum, count: e.count, correct: e.correct,
                    scores: Array(UnsafeBufferPointer(start: e.scores, count: e.n_scores)),
                    labels: Array(UnsafeBufferPointer(start: e.labels, count: e.n_labels)), squaredErrorSum: e.squared_error_sum,
                    absoluteErrorSum: e.absolute_error_sum))
        case TETHER__V1__ENVELOPE__BODY_CHECKPOINT:
            guard let c = env.checkpoint?.pointee else { return nil }
            return .checkpoint(CheckpointData(globalStep: c.global_step, safetensors: bytes(c.safetensors)))
        default:
            return nil
        }
    }
}
