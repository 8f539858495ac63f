// Convolution (im2col + GEMM) and max pooling on Tether's conv layout (C, B, H, W): channels first,
// so one GEMM W (OC, C*KH*KW) x col (C*KH*KW, B*OH*OW) computes the whole batch and writes the
// output straight in the same layout.

import CTetherKernels

/// Shapes of one 2-D convolution over a (C, B, H, W) input.
public struct ConvGeometry: Sendable, Equatable {
    public var channels, batch, height, width: Int
    public var kernelHeight, kernelWidth, stride, padding: Int
    public init(channels: Int, batch: Int, height: Int, width: Int, kernelHeight: Int, kernelWidth: Int, stride: Int, padding: Int) {
        (self.channels, self.batch, self.height, self.width) = (channels, batch, height, width)
        (self.kernelHeight, self.kernelWidth, self.stride, self.padding) = (kernelHeight, kernelWidth, stride, padding)
    }
    public var outHeight: Int { (height + 2 * padding - kernelHeight) / stride + 1 }
    public var outWidth: Int { (width + 2 * padding - kernelWidth) / stride + 1 }
    /// rows of the col matrix: C * KH * KW
    public var patchSize: Int { channels * kernelHeight * kernelWidth }
    /// columns of the col matrix: B * OH * OW
    public var columns: Int { batch * outHeight * outWidth }

    /// The same shape for the C kernels (im2col, col2im).
    var cShape: tether_conv_shape {
        tether_conv_shape(
            channels: channels, batch: batch, height: height, width: width, kernel_h: kernelHeight,
            kernel_w: kernelWidth, stride: stride, padding: padding, out_h: outHeight, out_w: outWidth)
    }

    /// im2col or col2im of `samples` split across the compute pool by channels: channels c0..<c1 are
    /// one slab of x (C, B, H, W) and one slab of col's rows (c, ki, kj), so each slice is the same
    /// kernel on `shape` (those channels only) at the two offsets, and writes its own elements.
    func forEachChannelSlice(samples: Int, _ body: (_ shape: tether_conv_shape, _ imageOffset: Int, _ colOffset: Int) -> Void) {
        let rowsPerChannel = kernelHeight * kernelWidth, columns = samples * outHeight * outWidth
        Compute.forEachRange(count: channels, grain: Compute.elementGrain / max(1, rowsPerChannel * columns)) { slice in
            var shape = cShape
            shape.channels = slice.count
            body(shape, slice.lowerBound * batch * height * width, slice.lowerBound * rowsPerChannel * columns)
        }
    }
}

/// Shapes of a max pooling over P independent planes of H x W (P = C * B).
public struct PoolGeometry: Sendable, Equatable {
    public var planes, height, width, kernel, stride: Int
    public init(planes: Int, height: Int, width: Int, kernel: Int, stride: Int) {
        (self.planes, self.height, self.width, self.kernel, self.stride) = (planes, height, width, kernel, stride)
    }
    public var outHeight: Int { (height - kernel) / stride + 1 }
    public var outWidth: Int { (width - kernel) / stride + 1 }

    /// A pooling split across the compute pool by planes: body gets the slice's geometry and the
    /// offsets of its first plane in the input (H, W planes) and in the output (OH, OW planes).
    func forEachSlice(_ body: (_ slice: PoolGeometry, _ inputOffset: Int, _ outputOffset: Int) -> Void) {
        Compute.forEachRange(count: planes, grain: Compute.elementGrain / max(1, height * width)) { range in
            var slice = self
            slice.planes = range.count
            body(slice, range.lowerBound * height * width, range.lowerBound * outHeight * outWidth)
        }
    }
}

extension Scalar {
    public static func maxPoolForward(
        _ y: UnsafeMutablePointer<Self>, argmax: UnsafeMutablePointer<Int32>,
        _ x: UnsafePointer<Self>, _ g: PoolGeometry
    ) {
        g.forEachSlice { g, input, output in maxPoolForwardSlice(y + output, argmax: argmax + output, x + input, g) }
    }

    static func maxPoolForwardSlice(
        _ y: UnsafeMutablePointer<Self>, argmax: UnsafeMutablePointer<Int32>,
        _ x: UnsafePointer<Self>, _ g: PoolGeometry
    ) {
        let (oh, ow, hw) = (g.outHeight, g.outWidth, g.height * g.width)
        if g.kernel == 2 && g.stride == 2 { return maxPool2x2Forward(y, argmax: argmax, x, g) }
        for p in 0..<g.planes {
            let plane = x + p * hw
            for i in 0..<oh {
                for j in 0..<ow {
                    // Strict '>' from the window's first element keeps the first maximum in scan order on
                    // ties, as PyTorch does. (NaN is not propagated: the loss reports divergence.)
                    var at = (i * g.stride) * g.width + j * g.stride, best = plane[at]
                    for ki in 0..<g.kernel {
                        let r = (i * g.stride + ki) * g.width + j * g.stride
                        for kj in 0..<g.kernel where plane[r + kj] > best { best = plane[r + kj]; at = r + kj }
                    }
                    let o = (p * oh + i) * ow + j
                    y[o] = best; argmax[o] = Int32(at)
                }
            }
        }
    }

    /// Sets all of dx (P, H, W): each window's dy at its argmax (summed where windows overlap), 0
    /// elsewhere.
    public static func maxPoolBackward(
        _ dx: UnsafeMutablePointer<Self>, _ dy: UnsafePointer<Self>,
        argmax: UnsafePointer<Int32>, _ g: PoolGeometry
    ) {
        g.forEachSlice { g, input, output in maxPoolBackwardSlice(dx + input, dy + output, argmax: argmax + output, g) }
    }

    static func maxPoolBackwardSlice(
        _ dx: UnsafeMutablePointer<Self>, _ dy: UnsafePointer<Self>,
        argmax: UnsafePointer<Int32>, _ g: PoolGeometry
    ) {
        if g.kernel == 2 && g.stride == 2 { return maxPool2x2Backward(dx, dy, argmax: argmax, g) }
        let (outPlane, hw) = (g.outHeight * g.outWidth, g.height * g.width)
        dx.update(repeating: 0, count: g.planes * hw)
        for p in 0..<g.planes {
            let plane = dx + p * hw
            for o in 0..<outPlane { plane[Int(argmax[p * outPlane + o])] += dy[p * outPlane + o] }
        }
    }
}

// im2col and col2im are C (CTetherKernels): short contiguous runs with zero fill, which Swift's
// optimizer does not vectorize without restrict (measured: docs/ARCHITECTURE.md). So is 2x2 pooling:
// branch-free selects over each window, which clang vectorizes and Swift's optimizer did not.
extension Scalar {
    public static func im2col(_ col: UnsafeMutablePointer<Self>, _ x: UnsafePointer<Self>, _ g: ConvGeometry, samples: Range<Int>) {
        g.forEachChannelSlice(samples: samples.count) { shape, image, rows in
            var shape = shape
            kernels.im2col(col + rows, x + image, &shape, samples.lowerBound, samples.count)
        }
    }
    public static func col2im(
        _ dx: UnsafeMutablePointer<Self>, _ dcol: UnsafeMutablePointer<Self>, _ g: ConvGeometry, samples: Range<Int>
    ) {
        g.forEachChannelSlice(samples: samples.count) { shape, image, rows in
            var shape = shape
            kernels.col2im(dx + image, dcol + rows, &shape, samples.lowerBound, samples.count)
        }
    }
    public static func maxPool2x2Forward(
        _ y: UnsafeMutablePointer<Self>, argmax: UnsafeMutablePointer<Int32>, _ x: UnsafePointer<Self>, _ g: PoolGeometry
    ) {
        kernels.maxPool2x2(y, argmax, x, g.planes, g.height, g.width)
    }
    public static func maxPool2x2Backward(
        _ dx: UnsafeMutablePointer<Self>, _ dy: UnsafePointer<Self>, argmax: UnsafePointer<Int32>, _ g: PoolGeometry
    ) {
        kernels.maxPool2x2Backward(dx, dy, argmax, g.planes, g.height, g.width)
    }
}

/// Average pooling over each (H, W) plane of x (planes, H, W), no padding: every output is the mean of
/// its kernel x kernel window, and backward spreads dy / (kernel^2) over the same window.
extension Scalar {
    public static func avgPoolForward(_ y: UnsafeMutablePointer<Self>, _ x: UnsafePointer<Self>, _ g: PoolGeometry) {
        let (oh, ow, hw) = (g.outHeight, g.outWidth, g.height * g.width), area = Self(g.kernel * g.kernel)
        for p in 0..<g.planes {
            let xp = x + p * hw, yp = y + p * oh * ow
            for i in 0..<oh {
                for j in 0..<ow {
                    var sum: Self = 0
                    for a in 0..<g.kernel { for b in 0..<g.kernel { sum += xp[(i * g.stride + a) * g.width + j * g.stride + b] } }
                    yp[i * ow + j] = sum / area
                }
            }
        }
    }

    /// dx (planes, H, W) from dy (planes, OH, OW); positions no window covers get 0.
    public static func avgPoolBackward(_ dx: UnsafeMutablePointer<Self>, _ dy: UnsafePointer<Self>, _ g: PoolGeometry) {
        let (oh, ow, hw) = (g.outHeight, g.outWidth, g.height * g.width), area = Self(g.kernel * g.kernel)
        fill(dx, 0, count: g.planes * hw)
        for p in 0..<g.planes {
            let dxp = dx + p * hw, dyp = dy + p * oh * ow
            for i in 0..<oh {
                for j in 0..<ow {
                    let share = dyp[i * ow + j] / area
                    for a in 0..<g.kernel { for b in 0..<g.kernel { dxp[(i * g.stride + a) * g.width + j * g.stride + b] += share } }
                }
            }
        }
    }
}
