import CTetherKernels
import TetherMessages

/// How f32 values travel as 16-bit wire elements (`ChunkHeader.DType` f16 or bf16): narrowed as they
/// are sent (round to nearest even), widened as they arrive, and added into f32 in the same pass.
/// The C kernels use F16C/AVX-512 where the CPU has them, a scalar loop elsewhere.
public struct WireCodec: Sendable {
    public let dtype: ChunkHeader.DType
    let narrowing: @Sendable (UnsafeMutablePointer<UInt16>, UnsafePointer<Float>, Int) -> Void
    let widening: @Sendable (UnsafeMutablePointer<Float>, UnsafePointer<UInt16>, Int) -> Void
    let adding: @Sendable (UnsafeMutablePointer<Float>, UnsafePointer<UInt16>, Int) -> Void

    /// nil for a dtype that is not a 16-bit float.
    public init?(_ dtype: ChunkHeader.DType) {
        self.dtype = dtype
        switch dtype {
        case .f16:
            (narrowing, widening, adding) = (
                { tether_f32_to_f16($0, $1, $2) }, { tether_f16_to_f32($0, $1, $2) }, { tether_add_f16_to_f32($0, $1, $2) }
            )
        case .bf16:
            (narrowing, widening, adding) = (
                { tether_f32_to_bf16($0, $1, $2) }, { tether_bf16_to_f32($0, $1, $2) }, { tether_add_bf16_to_f32($0, $1, $2) }
            )
        default: return nil
        }
    }

    /// y = narrow(x)
    public func narrow(_ y: UnsafeMutablePointer<UInt16>, _ x: UnsafePointer<Float>, count: Int) { narrowing(y, x, count) }
    /// y = widen(x)
    public func widen(_ y: UnsafeMutablePointer<Float>, _ x: UnsafePointer<UInt16>, count: Int) { widening(y, x, count) }
    /// y += widen(x), in f32
    public func add(_ y: UnsafeMutablePointer<Float>, _ x: UnsafePointer<UInt16>, count: Int) { adding(y, x, count) }

    /// Rounds `x` in place to what the wire holds, widen(narrow(x)). With `carry` (error feedback, as in
    /// EF-SGD): first x += carry, then carry = what the rounding took away, so it goes into the next
    /// call instead of being lost.
    public func round(_ x: UnsafeMutablePointer<Float>, count: Int, carry: UnsafeMutablePointer<Float>? = nil) {
        withUnsafeTemporaryAllocation(of: UInt16.self, capacity: 4096) { wire in
            for lower in stride(from: 0, to: count, by: 4096) {
                let n = min(4096, count - lower), xs = x + lower
                if let carry {
                    let c = carry + lower
                    for i in 0..<n { xs[i] += c[i] }
                    narrowing(wire.baseAddress!, xs, n)
                    for i in 0..<n { c[i] = xs[i] }
                    widening(xs, wire.baseAddress!, n)
                    for i in 0..<n { c[i] -= xs[i] }
                } else {
                    narrowing(wire.baseAddress!, xs, n)
                    widening(xs, wire.baseAddress!, n)
                }
            }
        }
    }

    /// The largest relative rounding error of one narrowing (half an ulp): 2^-11 for f16, 2^-8 for bf16.
    public var unitRoundoff: Double { dtype == .f16 ? 0x1p-11 : 0x1p-8 }
}
