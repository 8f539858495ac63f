import CTetherKernels
import TetherMessages

/// An element type the ring can reduce.
public protocol RingElement: BinaryFloatingPoint {
    static var dtype: ChunkHeader.DType { get }
    /// y[i] += x[i]
    static func add(_ y: UnsafeMutablePointer<Self>, _ x: UnsafePointer<Self>, count: Int)
    /// y[i] /= d
    static func divide(_ y: UnsafeMutablePointer<Self>, by d: Self, count: Int)
}

// Concrete loops: a loop in generic code would run unspecialized (a witness call per element).
extension Float: RingElement {
    public static var dtype: ChunkHeader.DType { .f32 }
    public static func add(_ y: UnsafeMutablePointer<Float>, _ x: UnsafePointer<Float>, count: Int) { tether_add_f32(y, x, count) }
    public static func divide(_ y: UnsafeMutablePointer<Float>, by d: Float, count: Int) { for i in 0..<count { y[i] /= d } }
}

extension Double: RingElement {
    public static var dtype: ChunkHeader.DType { .f64 }
    public static func add(_ y: UnsafeMutablePointer<Double>, _ x: UnsafePointer<Double>, count: Int) { tether_add_f64(y, x, count) }
    public static func divide(_ y: UnsafeMutablePointer<Double>, by d: Double, count: Int) { for i in 0..<count { y[i] /= d } }
}
