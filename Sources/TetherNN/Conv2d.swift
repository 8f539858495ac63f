import TetherTensor

/// 2-D convolution on Tether's conv layout: x (C, B, H, W) -> y (OC, B, OH, OW).
/// im2col turns a chunk of samples into col (C*KH*KW, n*OH*OW), and one GEMM w (OC, C*KH*KW) x col
/// writes those samples' columns of the output in its layout directly. Chunks are sized so that col
/// stays in cache between im2col and the GEMMs that read it; backward recomputes col per chunk rather
/// than keeping the whole batch's (40 MB for cnn-wn's second conv at batch 64), which measured faster
/// (docs/ARCHITECTURE.md). A 3x3 or 5x5, stride-1 convolution (padding below the kernel's side) runs its
/// forward and its dx by Winograd's F(2x2, rxr) instead (`WinogradPlan`: 2.25x and 2.78x fewer
/// multiply-adds); dw stays im2col + GEMM.
/// The weight (OC, C, KH, KW) is PyTorch's, plain or weight-normalized with one g per output channel.
public final class Conv2d<T: Scalar>: DataDependentInit {
    public let inChannels: Int, outChannels: Int, kernel: Int, stride: Int, padding: Int
    let weight: WeightParameterization<T>
    public var parameterSlots: [ParameterSlot] { weight.slots + (bias.map { [$0] } ?? []) }
    let bias: ParameterSlot?
    private let col = Scratch<T>()  // im2col of one chunk; in backward also its dcol
    private var input: Tensor<T>?
    private var colHolds: Range<Int>?  // the samples whose im2col `col` still holds
    private var geometry: ConvGeometry?
    private var w: UnsafePointer<T>?
    private let transformed = Scratch<T>()  // the weights' Winograd transform, forward's or the adjoint's
    private var transformedUnderFreeze: Int?  // the freeze under which `transformed` became forward's
    private let winogradWork = WorkerScratch<T>()
    /// Elements of col per chunk (measured: docs/ARCHITECTURE.md); at least one sample per chunk.
    var chunkElements = 1 << 18
    /// Whether a convolution Winograd can run does (tests turn it off to hold the two paths together).
    var winograd = true

    public init(
        _ layout: inout ArenaLayout, prefix: String, inChannels: Int, outChannels: Int, kernel: Int,
        stride: Int = 1, padding: Int = 0, bias: Bool = true, weightNorm: Bool = false
    ) {
        (self.inChannels, self.outChannels, self.kernel, self.stride, self.padding) = (inChannels, outChannels, kernel, stride, padding)
        weight = WeightParameterization(&layout, prefix: prefix, shape: [outChannels, inChannels, kernel, kernel], normalized: weightNorm)
        let bound = 1 / Double(inChannels * kernel * kernel).squareRoot()
        self.bias =
            bias ? layout.add(prefix + "bias", shape: [outChannels], initializer: weightNorm ? .zeros : .uniform(bound: bound)) : nil
    }

    /// The batch split into chunks of whole samples.
    private func chunks(_ g: ConvGeometry) -> [Range<Int>] {
        let perSample = max(1, g.patchSize * g.outHeight * g.outWidth)
        let size = max(1, chunkElements / perSample)
        return Swift.stride(from: 0, to: g.batch, by: size).map { $0..<min($0 + size, g.batch) }
    }

    private func geometry(of x: Tensor<T>) -> ConvGeometry {
        precondition(x.shape.count == 4 && x.shape[0] == inChannels, "Conv2d expects (\(inChannels), B, H, W), got \(x.shape)")
        return ConvGeometry(
            channels: inChannels, batch: x.shape[1], height: x.shape[2], width: x.shape[3],
            kernelHeight: kernel, kernelWidth: kernel, stride: stride, padding: padding)
    }

    /// This convolution then a 2x2, stride-2 max pool, then x > 0 ? x : slope x if a slope is given, in
    /// one pass over the output transform: the same bits as the layers one by one, with a quarter of
    /// the output written. nil unless the convolution runs by Winograd. For inference: what backward
    /// needs of the pool (its argmax) is not kept.
    public func forwardPooled(_ x: Tensor<T>, _ ctx: ModelContext<T>, activationSlope: T?) -> Tensor<T>? {
        let g = geometry(of: x)
        guard let plan = winogradPlan(g, channels: inChannels) else { return nil }
        return winogradForward(x, ctx, g, plan, output: .pooled(activationSlope: activationSlope))
    }

    private func winogradForward(
        _ x: Tensor<T>, _ ctx: ModelContext<T>, _ g: ConvGeometry, _ plan: WinogradPlan, output: WinogradOutput<T>
    ) -> Tensor<T> {
        let w = weight.weight(ctx)
        (geometry, input, self.w, colHolds) = (g, x, w, nil)
        let u = transformed.reserve(plan.positions * outChannels * inChannels)
        // frozen parameters (inference): transformed once per freeze
        if ctx.frozen == nil || ctx.frozen != transformedUnderFreeze {
            T.winogradWeights(u, w, plan, outs: outChannels, ins: inChannels, transposed: false)
            transformedUnderFreeze = ctx.frozen
        }
        let shape: [Int]
        switch output {
        case .whole: shape = [outChannels, g.batch, g.outHeight, g.outWidth]
        case .pooled: shape = [outChannels, g.batch, g.outHeight / 2, g.outWidth / 2]
        }
        return Tensor.uninitialized(shape) { y in
            x.withPointer {
                T.winogradConvolution(
                    y, $0, plan, u: u, outs: outChannels, bias: bias.map { ctx.arena.value($0) }, scratch: winogradWork, output: output)
            }
        }
    }

    public func forward(_ x: Tensor<T>, _ ctx: ModelContext<T>) -> Tensor<T> {
        let g = geometry(of: x)
        if let plan = winogradPlan(g, channels: inChannels) { return winogradForward(x, ctx, g, plan, output: .whole) }
        let w = weight.weight(ctx)
        let plane = g.outHeight * g.outWidth, chunks = chunks(g)
        let colp = col.reserve(g.patchSize * chunks[0].count * plane)
        (geometry, input, self.w, colHolds) = (g, x, w, chunks.last)
        return Tensor.uninitialized([outChannels, g.batch, g.outHeight, g.outWidth]) { y in
            x.withPointer { xp in
                for samples in chunks {
                    T.im2col(colp, xp, g, samples: samples)
                    T.gemm(
                        transposeA: false, transposeB: false, m: outChannels, n: samples.count * plane, k: g.patchSize, alpha: 1,
                        a: w, lda: g.patchSize, b: colp, ldb: samples.count * plane, beta: 0,
                        c: y + samples.lowerBound * plane, ldc: g.columns)
                }
            }
            if let bias { T.addPerChannel(y, ctx.arena.value(bias), alpha: 1, channels: outChannels, columns: g.columns) }
        }
    }

    public func backward(_ dy: Tensor<T>, _ ctx: ModelContext<T>, needsInputGradient: Bool) -> Tensor<T>? {
        guard let g = geometry, let w, let x = input else { preconditionFailure("Conv2d.backward before forward") }
        let arena = ctx.arena, plane = g.outHeight * g.outWidth
        let adjoint = winogradPlan(g, channels: outChannels)?.adjoint(outChannels: outChannels)
        let colp = col.reserve(g.patchSize * chunks(g)[0].count * plane)
        // dx by im2col's adjoint, chunk by chunk below, or after dw by Winograd
        var dx = needsInputGradient && adjoint == nil ? Tensor<T>.zeros([inChannels, g.batch, g.height, g.width]) : nil
        dy.withPointer { dyp in
            if let bias { T.sumPerChannel(arena.grad(bias), dyp, channels: outChannels, columns: g.columns) }
            weight.accumulateWeightGradient(arena) { dw, beta in
                // Last chunk first: forward left its col in the buffer.
                for (index, samples) in chunks(g).reversed().enumerated() {
                    let n = samples.count * plane, dys = dyp + samples.lowerBound * plane
                    if samples != colHolds { x.withPointer { T.im2col(colp, $0, g, samples: samples) } }
                    colHolds = nil
                    // dw (OC, K) += dy (OC, n) col^T (n, K)
                    T.gemm(
                        transposeA: false, transposeB: true, m: outChannels, n: g.patchSize, k: n, alpha: 1,
                        a: dys, lda: g.columns, b: colp, ldb: n, beta: index == 0 ? beta : 1, c: dw, ldc: g.patchSize)
                    // dcol (K, n) = w^T (K, OC) dy (OC, n), into the same buffer; dx += col2im(dcol)
                    guard dx != nil else { continue }
                    T.gemm(
                        transposeA: true, transposeB: false, m: g.patchSize, n: n, k: outChannels, alpha: 1,
                        a: w, lda: g.patchSize, b: dys, ldb: g.columns, beta: 0, c: colp, ldc: n)
                    dx!.withMutablePointer { T.col2im($0, colp, g, samples: samples) }
                }
            }
        }
        guard let adjoint, needsInputGradient else { return dx }
        let u = transformed.reserve(adjoint.positions * inChannels * outChannels)
        T.winogradWeights(u, w, adjoint, outs: inChannels, ins: outChannels, transposed: true)
        transformedUnderFreeze = nil
        return Tensor.uninitialized([inChannels, g.batch, g.height, g.width]) { dxp in
            dy.withPointer { T.winogradConvolution(dxp, $0, adjoint, u: u, outs: inChannels, bias: nil, scratch: winogradWork) }
        }
    }

    /// Input channels below which a convolution stays im2col + GEMM: Winograd's GEMMs are (O, C) x (C,
    /// tiles), and with one input channel (cnn-wn's first conv) they are outer products that memory
    /// bounds (measured: docs/ARCHITECTURE.md).
    static var winogradMinimumChannels: Int { 2 }

    /// The Winograd plan of `g` when its `channels` (the input's: the forward's, or dy's for dx) are
    /// enough and Winograd takes its shape.
    private func winogradPlan(_ g: ConvGeometry, channels: Int) -> WinogradPlan? {
        winograd && channels >= Self.winogradMinimumChannels ? WinogradPlan(g) : nil
    }

    public func initializeFromData(_ x: Tensor<T>, _ ctx: ModelContext<T>, reduce: StatisticsReducer) -> Tensor<T> {
        weight.initializeFromData(ctx.arena, bias: bias, reduce: reduce, forward: { forward(x, ctx) }) { t, sums in
            let columns = t.count / outChannels
            t.withPointer { T.momentsPerChannel(sums, $0, channels: outChannels, columns: columns) }
            return columns
        }
    }
}

/// Max pooling over each (H, W) plane of x (C, B, H, W), no padding. On ties the first maximum in scan
/// order takes the gradient, as in PyTorch.
public final class MaxPool2d<T: Scalar>: Layer {
    public let kernel: Int, stride: Int
    private var argmax: [Int32] = []
    private var geometry: PoolGeometry?
    private var inputShape: [Int] = []

    public init(kernel: Int, stride: Int? = nil) {
        self.kernel = kernel
        self.stride = stride ?? kernel
    }

    public func forward(_ x: Tensor<T>, _ ctx: ModelContext<T>) -> Tensor<T> {
        precondition(x.shape.count == 4 && x.shape[2] * x.shape[3] <= Int(Int32.max), "MaxPool2d expects (C, B, H, W), got \(x.shape)")
        let g = PoolGeometry(planes: x.shape[0] * x.shape[1], height: x.shape[2], width: x.shape[3], kernel: kernel, stride: stride)
        (geometry, inputShape) = (g, x.shape)
        let outCount = g.planes * g.outHeight * g.outWidth
        if argmax.count != outCount { argmax = [Int32](repeating: 0, count: outCount) }
        return Tensor.uninitialized([x.shape[0], x.shape[1], g.outHeight, g.outWidth]) { y in
            x.withPointer { xp in argmax.withUnsafeMutableBufferPointer { T.maxPoolForward(y, argmax: $0.baseAddress!, xp, g) } }
        }
    }

    public func backward(_ dy: Tensor<T>, _ ctx: ModelContext<T>, needsInputGradient: Bool) -> Tensor<T>? {
        guard needsInputGradient, let g = geometry else { return nil }
        return Tensor.uninitialized(inputShape) { dxp in
            dy.withPointer { dyp in argmax.withUnsafeBufferPointer { T.maxPoolBackward(dxp, dyp, argmax: $0.baseAddress!, g) } }
        }
    }
}

/// Average pooling over each (H, W) plane of x (C, B, H, W), no padding, as PyTorch's AvgPool2d.
public final class AvgPool2d<T: Scalar>: Layer {
    public let kernel: Int, stride: Int
    private var geometry: PoolGeometry?
    private var inputShape: [Int] = []

    public init(kernel: Int, stride: Int? = nil) {
        self.kernel = kernel
        self.stride = stride ?? kernel
    }

    public func forward(_ x: Tensor<T>, _ ctx: ModelContext<T>) -> Tensor<T> {
        precondition(x.shape.count == 4, "AvgPool2d expects (C, B, H, W), got \(x.shape)")
        let g = PoolGeometry(planes: x.shape[0] * x.shape[1], height: x.shape[2], width: x.shape[3], kernel: kernel, stride: stride)
        (geometry, inputShape) = (g, x.shape)
        return Tensor.uninitialized([x.shape[0], x.shape[1], g.outHeight, g.outWidth]) { y in x.withPointer { T.avgPoolForward(y, $0, g) } }
    }

    public func backward(_ dy: Tensor<T>, _ ctx: ModelContext<T>, needsInputGradient: Bool) -> Tensor<T>? {
        guard needsInputGradient, let g = geometry else { return nil }
        return Tensor.uninitialized(inputShape) { dx in dy.withPointer { T.avgPoolBackward(dx, $0, g) } }
    }
}
