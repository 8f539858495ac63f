import Foundation
import TetherMessages

/// What a rank expects of the next chunk at its point in a collective, and the check of a received
/// header against it: every field, before the payload is touched. Pure (no socket), so the fuzz
/// targets run it on any bytes.
public struct ExpectedChunk: Sendable {
    public var operation: ChunkHeader.Operation
    public var step: UInt64 = 0
    public var bucket: UInt32 = 0
    public var ringStep: Int
    public var chunkIndex: Int
    public var dtype: ChunkHeader.DType = .bytes
    public var offset: Int
    /// Elements in this chunk and in the whole buffer, when this rank knows them (an all-gather learns
    /// the total from the first chunk).
    public var count: Int?
    public var totalCount: Int?
    public var origin: Int = -1

    public init(
        operation: ChunkHeader.Operation, step: UInt64 = 0, bucket: UInt32 = 0, ringStep: Int, chunkIndex: Int,
        dtype: ChunkHeader.DType = .bytes, offset: Int, count: Int? = nil, totalCount: Int? = nil, origin: Int = -1
    ) {
        (self.operation, self.step, self.bucket, self.ringStep, self.chunkIndex) = (operation, step, bucket, ringStep, chunkIndex)
        (self.dtype, self.offset, self.count, self.totalCount, self.origin) = (dtype, offset, count, totalCount, origin)
    }

    /// The first field of `h` that is not what this rank expects (its name, the expected value, the
    /// value found), or nil. `payloadBytes` is the payload frame's length.
    public func mismatch(
        _ h: ChunkHeader, sequence: UInt64, layoutFingerprint: UInt64, payloadBytes: Int
    )
        -> (field: String, expected: String, found: String)?
    {
        if h.layoutFingerprint != layoutFingerprint {
            return (
                "parameter layout fingerprint", String(format: "%016llx", layoutFingerprint), String(format: "%016llx", h.layoutFingerprint)
            )
        }
        if h.operation != operation || h.sequence != sequence {
            return ("collective", "\(operation) #\(sequence)", "\(h.operation) #\(h.sequence)")
        }
        if h.step != step || h.bucket != bucket {
            return ("step and bucket", "step \(step) bucket \(bucket)", "step \(h.step) bucket \(h.bucket)")
        }
        if h.dtype != dtype { return ("dtype", "\(dtype)", "\(h.dtype)") }
        if let totalCount, h.totalCount != UInt64(totalCount) { return ("element count", "\(totalCount)", "\(h.totalCount)") }
        if h.originRank != Int32(origin) { return ("origin rank", "\(origin)", "\(h.originRank)") }
        if h.ringStep != UInt32(ringStep) || h.chunkIndex != UInt32(chunkIndex) || h.offset != UInt64(offset) {
            return (
                "position", "ring step \(ringStep) chunk \(chunkIndex) offset \(offset)",
                "ring step \(h.ringStep) chunk \(h.chunkIndex) offset \(h.offset)"
            )
        }
        if let count, h.elementCount != UInt64(count) { return ("chunk length", "\(count)", "\(h.elementCount)") }
        // the element count is from the wire: its byte length is computed only once it is known small
        guard h.elementCount <= UInt64(Int.max / 8), payloadBytes == Int(h.elementCount) * h.dtype.size else {
            return ("payload length", "\(h.elementCount) \(h.dtype) elements", "\(payloadBytes) bytes")
        }
        return nil
    }
}
