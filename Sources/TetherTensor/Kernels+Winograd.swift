// 3x3 and 5x5 stride-1 convolutions by Winograd's F(2x2, rxr) (CTetherKernels' winograd.c): (r+1)^2
// GEMMs of (O, C) x (C, tiles) in place of one of (O, r^2 C) x (r^2 C, 4 tiles), 2.25x (3x3) and 2.78x
// (5x5) fewer multiply-adds, with transforms of additions around them.

import CTetherKernels

/// How a 3x3 or 5x5, stride-1 convolution runs by Winograd: the batch cut into chunks of whole images, each
/// chunk's transforms and GEMMs one task of the compute pool with work areas of its thread's own.
/// Chunks depend on the shapes only, so every thread count computes the same bits.
public struct WinogradPlan: Sendable, Equatable {
    public let geometry: ConvGeometry
    public let tilesHigh: Int, tilesWide: Int
    /// Images per chunk: about `tilesPerChunk` tiles, at least one image.
    public let imagesPerChunk: Int
    /// Tiles per chunk aimed at: the GEMMs' operands stay in L2 (measured: docs/ARCHITECTURE.md).
    public static let tilesPerChunk = 256

    /// nil unless g is a square 3x3 or 5x5, stride-1 convolution with padding 0...r-1 (so that its
    /// adjoint, which carries dy back to dx, is one too) and a non-empty output.
    public init?(_ g: ConvGeometry) {
        guard [3, 5].contains(g.kernelHeight), g.kernelWidth == g.kernelHeight, g.stride == 1, (0..<g.kernelHeight).contains(g.padding),
            g.outHeight > 0, g.outWidth > 0
        else { return nil }
        geometry = g
        (tilesHigh, tilesWide) = ((g.outHeight + 1) / 2, (g.outWidth + 1) / 2)
        imagesPerChunk = max(1, Self.tilesPerChunk / (tilesHigh * tilesWide))
    }

    public var tilesPerImage: Int { tilesHigh * tilesWide }
    /// Positions of a transformed tile, (r + 1)^2: the number of GEMMs.
    public var positions: Int { (geometry.kernelHeight + 1) * (geometry.kernelHeight + 1) }
    public var chunks: [Range<Int>] {
        Swift.stride(from: 0, to: geometry.batch, by: imagesPerChunk).map { $0..<min($0 + imagesPerChunk, geometry.batch) }
    }

    /// The plan of the adjoint convolution: dy (outChannels, B, OH, OW) to dx (C, B, H, W), padding r - 1 - p.
    public func adjoint(outChannels: Int) -> WinogradPlan {
        let g = geometry, r = g.kernelHeight
        return WinogradPlan(
            ConvGeometry(
                channels: outChannels, batch: g.batch, height: g.outHeight, width: g.outWidth, kernelHeight: r, kernelWidth: r, stride: 1,
                padding: r - 1 - g.padding))!
    }

    /// The distance between consecutive matrices of V or M, `rows` x `tiles` each: one cache line (of
    /// floats) more than their size, so the 16 streams a transform reads or writes at once do not all
    /// fall in one L1 set. Packed, they did when the size was a multiple of 4 KiB, and the output
    /// transform took half of a CNN's time (measured: docs/ARCHITECTURE.md).
    static func matrixStride(rows: Int, tiles: Int) -> Int { rows * tiles + 16 }

    /// Elements of one thread's work area for `outs` output channels: V, M, the padded plane (and a
    /// row of tiles' transformed columns below it), the tiles' outputs.
    func workArea(outs: Int) -> (v: Int, m: Int, pad: Int, corners: Int) {
        let tiles = imagesPerChunk * tilesPerImage
        return (
            positions * Self.matrixStride(rows: geometry.channels, tiles: tiles), positions * Self.matrixStride(rows: outs, tiles: tiles),
            (2 * tilesHigh + 2 * geometry.kernelHeight) * (2 * tilesWide + geometry.kernelHeight - 1), 4 * tiles
        )
    }
}

/// What a Winograd convolution writes: its whole output, or (inference) its 2x2, stride-2 max pool
/// then x > 0 ? x : slope x if a slope is given, in one pass: the same bits as the layers one after
/// another, a quarter of the output written and no pass of the pool or the activation.
public enum WinogradOutput<T: Scalar>: Sendable {
    case whole
    case pooled(activationSlope: T?)
}

/// Work areas for a kernel split across the compute pool: one buffer per thread, and one that every
/// thread reads, each grown to the largest size asked of it and reused, so a step does not allocate
/// and fault them anew.
public final class WorkerScratch<T: Scalar> {
    private var buffers: [UnsafeMutablePointer<T>] = []
    private var capacity = 0
    private var shared = UnsafeMutablePointer<T>.allocate(capacity: 0), sharedCapacity = 0

    public init() {}

    /// `workers` buffers of at least `count` elements each; contents unspecified.
    public func reserve(_ count: Int, workers: Int) -> [UnsafeMutablePointer<T>] {
        if count > capacity {
            for b in buffers { b.deallocate() }
            buffers = []
            capacity = count
        }
        while buffers.count < workers { buffers.append(.allocate(capacity: capacity)) }
        return buffers
    }

    /// The buffer every thread reads, of at least `count` elements; contents unspecified.
    public func reserveShared(_ count: Int) -> UnsafeMutablePointer<T> {
        if count > sharedCapacity {
            shared.deallocate()
            (shared, sharedCapacity) = (.allocate(capacity: count), count)
        }
        return shared
    }

    deinit {
        for b in buffers { b.deallocate() }
        shared.deallocate()
    }
}

extension Scalar {
    /// u ((r+1)^2, outs, ins) from w (outs, ins, r, r), r = `plan`'s kernel; `transposed`: from w (ins, outs,
    /// r, r), the filters of the adjoint convolution (channels swapped, each filter turned 180 degrees).
    public static func winogradWeights(
        _ u: UnsafeMutablePointer<Self>, _ w: UnsafePointer<Self>, _ plan: WinogradPlan, outs: Int, ins: Int, transposed: Bool
    ) {
        kernels.winogradWeights(u, w, plan.geometry.kernelHeight, outs, ins, transposed ? 1 : 0)
    }

    /// u's matrix of each position packed for tether_gemm_packed_a (Float on a CPU with AVX-512: 1.0-1.25x
    /// OpenBLAS on these GEMMs, and every chunk's product the same bits whatever its size), in the
    /// scratch's shared buffer; nil elsewhere (OpenBLAS's GEMM then). Packing is one pass over u, against
    /// the `tiles` times its size in multiply-adds that use it.
    static func packedWinogradWeights(
        _ u: UnsafePointer<Self>, _ plan: WinogradPlan, outs: Int, ins: Int, scratch: WorkerScratch<Self>
    ) -> (weights: UnsafePointer<Float>, stride: Int)? {
        guard Self.self == Float.self, tether_gemm_packed_fast() != 0 else { return nil }
        let stride = tether_gemm_packed_a_size(outs, ins)
        let packed = Float.rebound(scratch.reserveShared(plan.positions * stride))
        let weights = Float.rebound(u)
        for e in 0..<plan.positions { tether_gemm_packed_a_pack(packed + e * stride, weights + e * outs * ins, outs, ins) }
        return (UnsafePointer(packed), stride)
    }

    /// y (outs, B, OH, OW) = the convolution `plan` describes of x (C, B, H, W) with the transformed
    /// weights u (positions, outs, C), plus bias (outs) if given. Every element of y is written.
    /// `output` .pooled: y (outs, B, OH / 2, OW / 2) is that convolution's 2x2 max pool instead.
    public static func winogradConvolution(
        _ y: UnsafeMutablePointer<Self>, _ x: UnsafePointer<Self>, _ plan: WinogradPlan, u: UnsafePointer<Self>, outs: Int,
        bias: UnsafePointer<Self>?, scratch: WorkerScratch<Self>, output: WinogradOutput<Self> = .whole
    ) {
        let c = plan.geometry.channels, area = plan.workArea(outs: outs), chunks = plan.chunks
        let buffers = scratch.reserve(area.v + area.m + area.pad + area.corners, workers: Compute.threads)
        let packed = packedWinogradWeights(u, plan, outs: outs, ins: c, scratch: scratch)
        withUnsafePointer(to: plan.geometry.cShape) { shape in
            Compute.run(tasks: chunks.count) { task, worker in
                let images = chunks[task], n = images.count * plan.tilesPerImage
                let v = buffers[worker], m = v + area.v, pad = m + area.m, corners = pad + area.pad
                let vStride = WinogradPlan.matrixStride(rows: c, tiles: n), mStride = WinogradPlan.matrixStride(rows: outs, tiles: n)
                kernels.winogradInput(v, vStride, x, shape, images.lowerBound, images.count, pad)
                for e in 0..<plan.positions {
                    if let packed {
                        tether_gemm_packed_a(
                            Float.rebound(m + e * mStride), n, packed.weights + e * packed.stride, Float.rebound(v + e * vStride), n, outs,
                            n, c)
                    } else {
                        gemm(
                            transposeA: false, transposeB: false, m: outs, n: n, k: c, alpha: 1, a: u + e * outs * c, lda: c,
                            b: v + e * vStride, ldb: n, beta: 0, c: m + e * mStride, ldc: n)
                    }
                }
                switch output {
                case .whole: kernels.winogradOutput(y, m, mStride, bias, outs, shape, images.lowerBound, images.count, corners)
                case .pooled(let slope):
                    kernels.winogradOutputPooled(
                        y, m, mStride, bias, outs, shape, images.lowerBound, images.count, corners, slope == nil ? 0 : 1, slope ?? 0)
                }
            }
        }
    }
}
