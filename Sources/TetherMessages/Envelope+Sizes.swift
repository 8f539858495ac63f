/// The sizes of an encoded envelope's top-level fields, read from the protobuf framing alone, before
/// protobuf-c unpacks anything: a receiver checks them against its bounds so that a well-formed message
/// cannot make it allocate more than a body of that kind needs (protobuf-c sizes its allocations by what
/// the bytes declare: a repeated field's count, a string's length, unknown fields kept whole).
extension Envelope {
    /// The envelope's body fields by their field numbers (tether.proto's `oneof body`).
    public enum BodyField: UInt32, CaseIterable, Sendable {
        case hello = 10, chunk, abort, assign, ready, start, stepReport, evalReport, checkpoint, heartbeat, finish, dataRequest,
            dataRows, stop, reform, unassigned
    }

    /// Bytes per field number after each occurrence's key (a length prefix included), summed over
    /// repeated occurrences; nil when the framing is malformed (the decoder refuses it too).
    public static func fieldSizes(_ bytes: UnsafeRawBufferPointer) -> [UInt32: Int]? {
        var sizes: [UInt32: Int] = [:]
        var at = 0
        func varint() -> UInt64? {
            var value: UInt64 = 0
            for shift in stride(from: 0, to: 64, by: 7) {
                guard at < bytes.count else { return nil }
                let byte = bytes[at]
                at += 1
                value |= UInt64(byte & 0x7F) << UInt64(shift)
                if byte & 0x80 == 0 { return value }
            }
            return nil
        }
        while at < bytes.count {
            guard let key = varint(), key >> 3 <= UInt64(UInt32.max) else { return nil }
            let field = UInt32(key >> 3), start = at
            switch key & 7 {
            case 0: guard varint() != nil else { return nil }
            case 1: at += 8
            case 2:
                guard let length = varint(), length <= UInt64(bytes.count - at) else { return nil }
                at += Int(length)
            case 5: at += 4
            default: return nil  // groups are not proto3
            }
            guard at <= bytes.count else { return nil }
            sizes[field, default: 0] += at - start
        }
        return sizes
    }
}
