/// A dense, row-major tensor: a shape and its scalars. A value type; layers keep their own scratch
/// buffers and hand out fresh outputs, so no buffer is ever shared and written (no hidden copies).
public struct Tensor<T: Scalar>: Sendable {
    public var shape: [Int]
    public var scalars: [T]

    public init(shape: [Int], scalars: [T]) {
        precondition(shape.reduce(1, *) == scalars.count, "shape \(shape) does not hold \(scalars.count) scalars")
        self.shape = shape
        self.scalars = scalars
    }

    public static func zeros(_ shape: [Int]) -> Tensor {
        Tensor(shape: shape, scalars: T.zeros(count: shape.reduce(1, *)))
    }

    /// A tensor whose scalars the caller writes before reading (no zeroing pass).
    public static func uninitialized(_ shape: [Int], _ body: (UnsafeMutablePointer<T>) -> Void) -> Tensor {
        let n = shape.reduce(1, *)
        let s = [T](unsafeUninitializedCapacity: n) { buf, count in
            if n > 0 { body(buf.baseAddress!) }
            count = n
        }
        return Tensor(shape: shape, scalars: s)
    }

    public var count: Int { scalars.count }

    /// The same scalars under another shape of the same size.
    public func reshaped(_ newShape: [Int]) -> Tensor { Tensor(shape: newShape, scalars: scalars) }

    @inline(__always)
    public func withPointer<R>(_ body: (UnsafePointer<T>) throws -> R) rethrows -> R {
        try scalars.withUnsafeBufferPointer { try body($0.baseAddress ?? UnsafePointer(bitPattern: 8)!) }
    }

    @inline(__always)
    public mutating func withMutablePointer<R>(_ body: (UnsafeMutablePointer<T>) throws -> R) rethrows -> R {
        try scalars.withUnsafeMutableBufferPointer { try body($0.baseAddress ?? UnsafeMutablePointer(bitPattern: 8)!) }
    }
}

public enum TensorError: Error, CustomStringConvertible {
    case invalidRNGState
    public var description: String {
        switch self {
        case .invalidRNGState: return "RNG state must be four words, not all zero"
        }
    }
}
