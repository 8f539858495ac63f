import CTetherKernels

/// A weight packed once for the many products y (rows, N) = x (rows, K) W' (+ bias) made with it
/// (CTetherKernels' packed_gemm.c: an AVX-512 kernel that reads x in place and W' in the order it
/// multiplies). W' is a dense layer's weight transposed (W (N, K)), or a weight used as it is (W
/// (K, N)). Inference packs each dense layer's weight once per freeze; an LSTM packs W_hh once per
/// pass for its T steps' recurrent products (and once more, the other way, for backward's). Packing
/// on every call is what a BLAS does; for predict's shapes it was a tenth of OpenBLAS's GEMM time, and
/// the kernel itself runs 1.1-1.3x OpenBLAS's on this machine's shapes (docs/ARCHITECTURE.md,
/// "Inference: packed weights and fused passes").
///
/// Only Float on a CPU with AVX-512 gets one (the initializers are nil elsewhere: there OpenBLAS is
/// faster than the kernel's scalar fallback). Each element of y is its start (the bias, 0, or y itself
/// when accumulating) plus its products in k order, so a row's result does not depend on the rows
/// around it or on the thread count.
public final class PackedWeight<T: Scalar> {
    public let outputs: Int, inputs: Int
    private let packed: UnsafeMutablePointer<Float>

    /// Room for a weight of `outputs` (N) x `inputs` (K); nil where there is no packed kernel for T on this CPU.
    public init?(outputs: Int, inputs: Int) {
        guard T.self == Float.self, tether_gemm_packed_fast() != 0 else { return nil }
        (self.outputs, self.inputs) = (outputs, inputs)
        packed = .allocate(capacity: tether_gemm_packed_b_size(outputs, inputs))
    }

    /// A dense layer's weight W (outputs, inputs) row-major, packed for y = x W^T.
    public convenience init?(packing w: UnsafePointer<T>, outputs: Int, inputs: Int) {
        self.init(outputs: outputs, inputs: inputs)
        pack(w, transposed: true)
    }

    deinit { packed.deallocate() }

    /// Packs w, replacing what was packed: W (outputs, inputs) for y = x W^T when `transposed`, else
    /// W (inputs, outputs) for y = x W.
    public func pack(_ w: UnsafePointer<T>, transposed: Bool) {
        tether_gemm_packed_b_pack(packed, Float.rebound(w), outputs, inputs, transposed ? 1 : 0)
    }

    /// y (rows, outputs) = x (rows, inputs) W' + bias (outputs; nil: none), or y += x W' when
    /// `accumulate` (no bias then), then y > 0 ? y : slope y if an activation slope is given (the
    /// activation layer after, fused: the same bits); the rows cut across the compute pool in blocks of
    /// the kernel's 12.
    public func apply(
        _ y: UnsafeMutablePointer<T>, _ x: UnsafePointer<T>, rows: Int, bias: UnsafePointer<T>?, accumulate: Bool = false,
        activationSlope: T? = nil
    ) {
        precondition(!(accumulate && bias != nil), "an accumulating product starts from y, not a bias")
        let (activate, slope): (Int32, Float) = activationSlope.map { (1, Float($0)) } ?? (0, 0)
        let (n, k) = (outputs, inputs), y = Float.rebound(y), x = Float.rebound(x), bias = bias.map { Float.rebound($0) }
        let blocks = (rows + 11) / 12
        // a block of 12 rows is 24 n k flops; split only where each thread gets a GEMM's worth
        let grain = max(1, Compute.gemmSplitThreshold / max(1, 12 * n * k))
        Compute.forEachRange(count: blocks, grain: grain) { part in
            let first = part.lowerBound * 12, last = min(rows, part.upperBound * 12)
            tether_gemm_packed_b(y + first * n, n, x + first * k, k, packed, bias, last - first, n, k, accumulate ? 1 : 0, activate, slope)
        }
    }
}

extension Float {
    /// A tensor's pointer as the Float pointer the packed kernels take; T must be Float (their callers
    /// have checked), so the memory is bound to Float already.
    static func rebound<T: Scalar>(_ p: UnsafeMutablePointer<T>) -> UnsafeMutablePointer<Float> {
        precondition(T.self == Float.self)
        return UnsafeMutableRawPointer(p).assumingMemoryBound(to: Float.self)
    }
    static func rebound<T: Scalar>(_ p: UnsafePointer<T>) -> UnsafePointer<Float> {
        precondition(T.self == Float.self)
        return UnsafeRawPointer(p).assumingMemoryBound(to: Float.self)
    }
}
