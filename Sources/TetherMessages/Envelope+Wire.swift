import CProtobufC
import Foundation
import TetherWire

/// The envelope every message travels in, as a Swift value; converted to and from the protobuf-c
/// generated `Tether__V1__Envelope` here and nowhere else.
public struct Envelope: Equatable, Sendable {
    public static let currentProtocolVersion = UInt32(TETHER__V1__PROTOCOL_VERSION__PROTOCOL_VERSION_CURRENT.rawValue)

    public var protocolVersion: UInt32 = Envelope.currentProtocolVersion
    public var jobID: String
    /// -1: the coordinator, or a worker before it has a rank
    public var senderRank: Int32
    public var body: Body?

    public enum Body: Equatable, Sendable {
        case hello(Hello)
        case chunk(ChunkHeader)
        case abort(Abort)
        // cluster control (Control+Wire.swift)
        case assign(Assign)
        case ready(Ready)
        case start
        case stepReport(StepReport)
        case evalReport(EvalReport)
        case checkpoint(CheckpointData)
        case heartbeat
        case finish
        case dataRequest(DataRequest)
        case dataRows(DataRows)
        case stop(Stop)
        case reform(Reform)
        /// The coordinator holds no rank for the sender: the coordinator it knew is gone (Unassigned).
        case unassigned
    }

    public init(jobID: String, senderRank: Int32, body: Body?) {
        (self.jobID, self.senderRank, self.body) = (jobID, senderRank, body)
    }
}

/// A worker asking to join (or rejoin) a job.
public struct Hello: Equatable, Sendable {
    public var advertiseAddress: String
    public var tetherVersion: String
    public var threads: UInt32
    /// The state of a worker that outlived its coordinator: its steps and parameter hash (hash 0: none).
    public var carriedStep: UInt64 = 0
    public var carriedHash: UInt64 = 0
    /// Same-host ring links (Hello.host_key, ipc_folder); empty: TCP only.
    public var hostKey = "", ipcFolder = ""
    public init(advertiseAddress: String, tetherVersion: String, threads: UInt32) {
        (self.advertiseAddress, self.tetherVersion, self.threads) = (advertiseAddress, tetherVersion, threads)
    }
}

/// A collective or a job given up, with the first cause, passed on to every rank.
public struct Abort: Equatable, Sendable {
    public var originRank: Int32
    public var reason: String
    public init(originRank: Int32, reason: String) { (self.originRank, self.reason) = (originRank, reason) }
}

/// The header of one collective chunk (proto: tether.v1.ChunkHeader); its payload is the next frame.
/// What a rank may ask of all in a step's all-reduce, agreed without another message (ChunkHeader).
public struct RingVotes: OptionSet, Sendable, Equatable {
    public let rawValue: UInt8
    public init(rawValue: UInt8) { self.rawValue = rawValue }
    /// Stop after this step (a Stop or a signal).
    public static let stop = RingVotes(rawValue: 1)
    /// Re-form the ring after this step (a worker joins; Reform.at_boundary).
    public static let reform = RingVotes(rawValue: 2)
}

public struct ChunkHeader: Equatable, Sendable {
    public enum Operation: UInt32, Sendable, CustomStringConvertible {
        case allReduce = 1, broadcast, allGather, barrier, handshake
        public var description: String {
            switch self {
            case .allReduce: "all-reduce"
            case .broadcast: "broadcast"
            case .allGather: "all-gather"
            case .barrier: "barrier"
            case .handshake: "handshake"
            }
        }
    }
    /// The payload's element type on the wire. f16 and bf16 carry f32 values narrowed for the wire
    /// (reduced in f32 on arrival).
    public enum DType: UInt32, Sendable, CustomStringConvertible, CaseIterable {
        case f32 = 1, f64, bytes, f16, bf16
        public var size: Int {
            switch self {
            case .f32: 4
            case .f64: 8
            case .bytes: 1
            case .f16, .bf16: 2
            }
        }
        public var description: String {
            switch self {
            case .f32: "f32"
            case .f64: "f64"
            case .bytes: "bytes"
            case .f16: "f16"
            case .bf16: "bf16"
            }
        }
    }

    public var operation: Operation
    public var sequence: UInt64
    public var step: UInt64
    public var bucket: UInt32
    public var ringStep: UInt32
    public var chunkIndex: UInt32
    public var dtype: DType
    public var totalCount: UInt64
    public var offset: UInt64
    public var elementCount: UInt64
    public var checksum: UInt64
    public var layoutFingerprint: UInt64
    public var originRank: Int32
    /// All-reduce: a rank this chunk passed through asks to stop after this step.
    public var stopVote = false
    /// All-reduce: a rank this chunk passed through holds a Reform at a step boundary (a worker joins).
    public var reformVote = false
    /// Both votes as one value.
    public var votes: RingVotes {
        get { RingVotes().union(stopVote ? .stop : []).union(reformVote ? .reform : []) }
        set { (stopVote, reformVote) = (newValue.contains(.stop), newValue.contains(.reform)) }
    }
    /// The forming of the ring this chunk belongs to (elastic in place): an earlier ring's is dropped.
    public var ringEpoch: UInt32 = 0
    /// Same-host links: the payload is in slot number `laneSlot` (from 1) of the sender's shared-memory
    /// lane and the payload frame is empty; 0: the payload is the frame.
    public var laneSlot: UInt64 = 0

    public init(
        operation: Operation, sequence: UInt64, step: UInt64, bucket: UInt32, ringStep: UInt32, chunkIndex: UInt32,
        dtype: DType, totalCount: UInt64, offset: UInt64, elementCount: UInt64, checksum: UInt64,
        layoutFingerprint: UInt64, originRank: Int32, ringEpoch: UInt32 = 0
    ) {
        (self.operation, self.sequence, self.step, self.bucket) = (operation, sequence, step, bucket)
        (self.ringStep, self.chunkIndex, self.dtype, self.totalCount) = (ringStep, chunkIndex, dtype, totalCount)
        (self.offset, self.elementCount, self.checksum) = (offset, elementCount, checksum)
        (self.layoutFingerprint, self.originRank, self.ringEpoch) = (layoutFingerprint, originRank, ringEpoch)
    }
}

public enum WireFormat {
    public static var libraryVersion: String { String(cString: protobuf_c_version()) }
}

public struct WireError: Error, CustomStringConvertible, Equatable {
    public let message: String
    public var description: String { message }
}

extension Envelope {
    /// Serializes with protobuf-c.
    public func encoded() -> [UInt8] {
        var msg = Tether__V1__Envelope()
        tether__v1__envelope__init(&msg)
        msg.protocol_version = protocolVersion
        msg.sender_rank = senderRank
        func pack() -> [UInt8] {
            let size = tether__v1__envelope__get_packed_size(&msg)
            return [UInt8](unsafeUninitializedCapacity: size) { buf, count in
                count = tether__v1__envelope__pack(&msg, buf.baseAddress)
            }
        }
        return jobID.withCString { job in
            msg.job_id = UnsafeMutablePointer(mutating: job)
            let arena = PackArena()  // the C strings and arrays must outlive the packing
            let packed = withExtendedLifetime(arena) {
                body.flatMap { b in
                    Envelope.packControl(b, &msg, arena) { m in
                        let size = tether__v1__envelope__get_packed_size(&m)
                        return [UInt8](unsafeUninitializedCapacity: size) { buf, count in
                            count = tether__v1__envelope__pack(&m, buf.baseAddress)
                        }
                    }
                }
            }
            if let packed { return packed }
            switch body {
            case .none, .assign, .ready, .start, .stepReport, .evalReport, .checkpoint, .heartbeat, .finish, .dataRequest, .dataRows, .stop,
                .reform, .unassigned:
                return pack()
            case .hello(let h):
                var hello = Tether__V1__Hello()
                tether__v1__hello__init(&hello)
                return h.advertiseAddress.withCString { addr in
                    h.tetherVersion.withCString { ver in
                        h.hostKey.withCString { key in
                            h.ipcFolder.withCString { folder in
                                hello.advertise_address = UnsafeMutablePointer(mutating: addr)
                                hello.tether_version = UnsafeMutablePointer(mutating: ver)
                                (hello.host_key, hello.ipc_folder) = (
                                    UnsafeMutablePointer(mutating: key), UnsafeMutablePointer(mutating: folder)
                                )
                                hello.threads = h.threads
                                (hello.carried_step, hello.carried_hash) = (h.carriedStep, h.carriedHash)
                                return withUnsafeMutablePointer(to: &hello) { hp in
                                    msg.body_case = TETHER__V1__ENVELOPE__BODY_HELLO
                                    msg.hello = hp
                                    return pack()
                                }
                            }
                        }
                    }
                }
            case .chunk(let c):
                var chunk = Tether__V1__ChunkHeader()
                tether__v1__chunk_header__init(&chunk)
                chunk.operation = Tether__V1__Operation(rawValue: c.operation.rawValue)
                chunk.sequence = c.sequence
                chunk.step = c.step
                chunk.bucket = c.bucket
                chunk.ring_step = c.ringStep
                chunk.chunk_index = c.chunkIndex
                chunk.dtype = Tether__V1__DType(rawValue: c.dtype.rawValue)
                chunk.total_count = c.totalCount
                chunk.offset = c.offset
                chunk.element_count = c.elementCount
                chunk.checksum = c.checksum
                chunk.layout_fingerprint = c.layoutFingerprint
                chunk.origin_rank = c.originRank
                chunk.stop_vote = c.stopVote ? 1 : 0
                chunk.reform_vote = c.reformVote ? 1 : 0
                chunk.ring_epoch = c.ringEpoch
                chunk.lane_slot = c.laneSlot
                return withUnsafeMutablePointer(to: &chunk) { cp in
                    msg.body_case = TETHER__V1__ENVELOPE__BODY_CHUNK
                    msg.chunk = cp
                    return pack()
                }
            case .abort(let a):
                var abort = Tether__V1__Abort()
                tether__v1__abort__init(&abort)
                abort.origin_rank = a.originRank
                return a.reason.withCString { reason in
                    abort.reason = UnsafeMutablePointer(mutating: reason)
                    return withUnsafeMutablePointer(to: &abort) { ap in
                        msg.body_case = TETHER__V1__ENVELOPE__BODY_ABORT
                        msg.abort = ap
                        return pack()
                    }
                }
            }
        }
    }

    /// Parses and validates: bytes protobuf-c cannot unpack, another protocol version, or a body with
    /// values this build does not know, are errors.
    public init(decoding bytes: UnsafeRawBufferPointer) throws {
        guard let m = tether__v1__envelope__unpack(nil, bytes.count, bytes.baseAddress?.assumingMemoryBound(to: UInt8.self)) else {
            throw WireError(message: "malformed envelope: \(bytes.count) bytes that do not parse as tether.v1.Envelope")
        }
        defer { tether__v1__envelope__free_unpacked(m, nil) }
        let env = m.pointee
        guard env.protocol_version == Envelope.currentProtocolVersion else {
            throw WireError(
                message:
                    "protocol version \(env.protocol_version) from rank \(env.sender_rank), this build speaks \(Envelope.currentProtocolVersion)"
            )
        }
        self.init(jobID: String(cString: env.job_id), senderRank: env.sender_rank, body: nil)
        switch env.body_case {
        case TETHER__V1__ENVELOPE__BODY_HELLO:
            guard let h = env.hello?.pointee else { break }
            var hello = Hello(
                advertiseAddress: String(cString: h.advertise_address),
                tetherVersion: String(cString: h.tether_version), threads: h.threads)
            (hello.carriedStep, hello.carriedHash) = (h.carried_step, h.carried_hash)
            (hello.hostKey, hello.ipcFolder) = (String(cString: h.host_key), String(cString: h.ipc_folder))
            body = .hello(hello)
        case TETHER__V1__ENVELOPE__BODY_CHUNK:
            guard let c = env.chunk?.pointee else { break }
            guard let operation = ChunkHeader.Operation(rawValue: c.operation.rawValue) else {
                throw WireError(message: "chunk from rank \(env.sender_rank) has unknown operation \(c.operation.rawValue)")
            }
            guard let dtype = ChunkHeader.DType(rawValue: c.dtype.rawValue) else {
                throw WireError(message: "chunk from rank \(env.sender_rank) has unknown dtype \(c.dtype.rawValue)")
            }
            var header = ChunkHeader(
                operation: operation, sequence: c.sequence, step: c.step, bucket: c.bucket,
                ringStep: c.ring_step, chunkIndex: c.chunk_index, dtype: dtype, totalCount: c.total_count,
                offset: c.offset, elementCount: c.element_count, checksum: c.checksum,
                layoutFingerprint: c.layout_fingerprint, originRank: c.origin_rank)
            header.stopVote = c.stop_vote != 0
            header.reformVote = c.reform_vote != 0
            header.ringEpoch = c.ring_epoch
            header.laneSlot = c.lane_slot
            body = .chunk(header)
        case TETHER__V1__ENVELOPE__BODY_ABORT:
            guard let a = env.abort?.pointee else { break }
            body = .abort(Abort(originRank: a.origin_rank, reason: String(cString: a.reason)))
        default:
            body = try Envelope.unpackControl(env)
        }
    }

    public init(decoding bytes: [UInt8]) throws {
        self = try bytes.withUnsafeBytes { try Envelope(decoding: $0) }
    }
}
