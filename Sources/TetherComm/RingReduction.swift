// The ring's reduction: what a rank does with a received chunk (add it to its own, or copy it; for a
import TetherMessages
// 16-bit wire, widen, add and narrow again), block by block through the link's verified `read`. The
// arithmetic is here and nowhere else; the link moves and checks bytes.

extension Ring {
    enum Consumption<T> {
        /// y += x, then y /= d if a divisor is given
        case add(divideBy: T?)
        /// y = x
        case copy
    }

    /// Block size of `consume`: the received block, the buffer's block and (when adding) the result's
    /// hash all stay in L1 between the passes.
    static let consumeBlockBytes = 16 << 10

    /// Adds or copies a received payload into `y`, verified on the way by the link, block by block.
    /// Adding also hashes the result (where the next link carries checksums), which it returns for the
    /// chunk's next send; copying returns nil.
    func consume<T: RingElement>(
        _ payload: RingLink.Payload, _ h: ChunkHeader, _ e: ExpectedChunk, into y: UnsafeMutableBufferPointer<T>, _ how: Consumption<T>
    ) throws -> UInt64? {
        let adding = if case .add = how { true } else { false }
        return try link!.read(
            payload, h, e, sequence: sequence, count: y.count, of: T.self, per: Self.consumeBlockBytes / MemoryLayout<T>.stride,
            hashingOutput: adding
        ) { x, lower, n in
            let ys = y.baseAddress! + lower
            switch how {
            case .add(let divisor):
                T.add(ys, x + lower, count: n)
                if let divisor { T.divide(ys, by: divisor, count: n) }
                return UnsafeRawBufferPointer(start: ys, count: n * MemoryLayout<T>.stride)
            case .copy:
                ys.update(from: x + lower, count: n)
                return nil
            }
        }
    }

    /// `consume` for f32 values that travel as 16-bit wire elements (`codec`): the payload is widened
    /// into `y` (added, or copied), the checksum taken over the wire bytes as they are read. Where the
    /// chunk goes on (`narrowInto`), `y` is narrowed there block by block and the returned checksum is
    /// of those wire bytes; `keepNarrowed` then also sets `y` to the narrowed values widened (the rank
    /// that finishes a segment holds what every other rank will).
    func consume(
        _ payload: RingLink.Payload, _ h: ChunkHeader, _ e: ExpectedChunk, into y: UnsafeMutableBufferPointer<Float>,
        wire codec: WireCodec, adding: Bool, divideBy divisor: Float?, narrowInto out: UnsafeMutablePointer<UInt16>?,
        keepNarrowed: Bool
    ) throws -> UInt64? {
        try link!.read(
            payload, h, e, sequence: sequence, count: y.count, of: UInt16.self, per: Self.consumeBlockBytes / MemoryLayout<Float>.stride,
            hashingOutput: out != nil
        ) { x, lower, n in
            let ys = y.baseAddress! + lower
            if adding { codec.add(ys, x + lower, count: n) } else { codec.widen(ys, x + lower, count: n) }
            if let divisor { Float.divide(ys, by: divisor, count: n) }
            guard let out else { return nil }
            codec.narrow(out + lower, ys, count: n)
            if keepNarrowed { codec.widen(ys, out + lower, count: n) }
            return UnsafeRawBufferPointer(start: out + lower, count: n * 2)
        }
    }
}
