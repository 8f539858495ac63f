import TetherTensor

/// 2-D convolution on Tether's conv layout: x (C, B, H, W) -> y (OC, B, OH, OW).
/// im2col turns the whole batch into col (C*KH*KW, B*OH*OW), so one GEMM w (OC, C*KH*KW) x col does the
/// batch and lands in the output layout directly. The weight (OC, C, KH, KW) is PyTorch's, plain or
/// weight-normalized with one g per output channel.
public final class Conv2d<T: Scalar>: DataDependentInit {
    public let inChannels: Int, outChannels: Int, kernel: Int, stride: Int, padding: Int
    let weight: WeightParameterization<T>
    public var hasParameters: Bool { true }
    let bias: ParameterSlot?
    private let col = Scratch<T>()          // cache: im2col of the last input, (C*KH*KW, B*OH*OW)
    private let dcol = Scratch<T>()
    private var geometry: ConvGeometry?
    private var w: UnsafePointer<T>?
    /// Columns of dcol per backward chunk (measured: see docs/ARCHITECTURE.md).
    static var chunkColumns: Int { 256 }

    public init(_ layout: inout ArenaLayout, prefix: String, inChannels: Int, outChannels: Int, kernel: Int,
                stride: Int = 1, padding: Int = 0, bias: Bool = true, weightNorm: Bool = false) {
        (self.inChannels, self.outChannels, self.kernel, self.stride, self.padding) = (inChannels, outChannels, kernel, stride, padding)
        weight = WeightParameterization(&layout, prefix: prefix, shape: [outChannels, inChannels, kernel, kernel], normalized: weightNorm)
        let bound = 1 / Double(inChannels * kernel * kernel).squareRoot()
        self.bias = bias ? layout.add(prefix + "bias", shape: [outChannels], initializer: weightNorm ? .zeros : .uniform(bound: bound)) : nil
    }

    public func forward(_ x: Tensor<T>, _ ctx: ModelContext<T>) -> Tensor<T> {
        precondition(x.shape.count == 4 && x.shape[0] == inChannels, "Conv2d expects (\(inChannels), B, H, W), got \(x.shape)")
        let g = ConvGeometry(channels: inChannels, batch: x.shape[1], height: x.shape[2], width: x.shape[3],
                             kernelHeight: kernel, kernelWidth: kernel, stride: stride, padding: padding)
        geometry = g
        let colp = col.reserve(g.patchSize * g.columns)
        x.withPointer { T.im2col(colp, $0, g) }
        let w = weight.weight(ctx.arena)
        self.w = w
        return Tensor.uninitialized([outChannels, g.batch, g.outHeight, g.outWidth]) { y in
            T.gemm(transposeA: false, transposeB: false, m: outChannels, n: g.columns, k: g.patchSize, alpha: 1,
                   a: w, lda: g.patchSize, b: colp, ldb: g.columns, beta: 0, c: y, ldc: g.columns)
            if let bias { T.addPerChannel(y, ctx.arena.value(bias), alpha: 1, channels: outChannels, columns: g.columns) }
        }
    }

    public func backward(_ dy: Tensor<T>, _ ctx: ModelContext<T>, needsInputGradient: Bool) -> Tensor<T>? {
        guard let g = geometry, let w else { preconditionFailure("Conv2d.backward before forward") }
        let arena = ctx.arena, colp = col.pointer
        dy.withPointer { dyp in
            // dw (OC, K) = dy (OC, N) col^T (N, K)
            weight.accumulateWeightGradient(arena) { dw, beta in
                T.gemm(transposeA: false, transposeB: true, m: outChannels, n: g.patchSize, k: g.columns, alpha: 1,
                       a: dyp, lda: g.columns, b: colp, ldb: g.columns, beta: beta, c: dw, ldc: g.patchSize)
            }
            if let bias { T.sumPerChannel(arena.grad(bias), dyp, channels: outChannels, columns: g.columns) }
        }
        guard needsInputGradient else { return nil }
        // dcol (K, n) = w^T (K, OC) dy (OC, n); dx += col2im(dcol), a few samples (n columns) at a time so
        // that dcol stays in cache between the GEMM that writes it and col2im that reads it.
        let plane = g.outHeight * g.outWidth
        let samplesPerChunk = max(1, Self.chunkColumns / max(plane, 1))
        let dcolp = dcol.reserve(g.patchSize * min(g.batch, samplesPerChunk) * plane)
        var dx = Tensor<T>.zeros([inChannels, g.batch, g.height, g.width])
        dx.withMutablePointer { dxp in
            dy.withPointer { dyp in
                for first in Swift.stride(from: 0, to: g.batch, by: samplesPerChunk) {
                    let samples = first ..< min(first + samplesPerChunk, g.batch), n = samples.count * plane
                    T.gemm(transposeA: true, transposeB: false, m: g.patchSize, n: n, k: outChannels, alpha: 1,
                           a: w, lda: g.patchSize, b: dyp + first * plane, ldb: g.columns, beta: 0, c: dcolp, ldc: n)
                    T.col2im(dxp, dcolp, g, samples: samples)
                }
            }
        }
        return dx
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
        precondition(x.shape.count == 4, "MaxPool2d expects (C, B, H, W), got \(x.shape)")
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
        var dx = Tensor<T>.zeros(inputShape)
        dx.withMutablePointer { dxp in
            dy.withPointer { dyp in argmax.withUnsafeBufferPointer { T.maxPoolBackward(dxp, dyp, argmax: $0.baseAddress!, g) } }
        }
        return dx
    }
}
