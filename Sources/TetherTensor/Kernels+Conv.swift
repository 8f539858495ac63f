// Convolution (im2col + GEMM) and max pooling on Tether's conv layout (C, B, H, W): channels first,
// so one GEMM W (OC, C*KH*KW) x col (C*KH*KW, B*OH*OW) computes the whole batch and writes the
// output straight in the same layout.

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

    /// The output columns j whose input column j*stride - padding + kj lies inside the image: lo..<hi.
    @inline(__always)
    func validColumns(_ kj: Int) -> (lo: Int, hi: Int) {
        let lo = max(0, (padding - kj + stride - 1) / stride)                  // first j with iw >= 0
        let hi = min(outWidth, (width + padding - kj + stride - 1) / stride)   // first j with iw >= width
        return (lo, hi)
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
}

extension Scalar {
    public static func im2col(_ col: UnsafeMutablePointer<Self>, _ x: UnsafePointer<Self>, _ g: ConvGeometry) {
        let (oh, ow, hw) = (g.outHeight, g.outWidth, g.height * g.width)
        let ncol = g.columns
        for c in 0..<g.channels {
            for ki in 0..<g.kernelHeight {
                for kj in 0..<g.kernelWidth {
                    let row = col + ((c * g.kernelHeight + ki) * g.kernelWidth + kj) * ncol
                    for b in 0..<g.batch {
                        let plane = x + (c * g.batch + b) * hw
                        for i in 0..<oh {
                            let dst = row + (b * oh + i) * ow
                            let ih = i * g.stride - g.padding + ki
                            if ih < 0 || ih >= g.height {
                                dst.update(repeating: 0, count: ow)
                                continue
                            }
                            let src = plane + ih * g.width
                            let (lo, hi) = g.validColumns(kj)
                            if g.stride == 1 {
                                // a contiguous run of the input row, zero-padded at both ends
                                dst.update(repeating: 0, count: lo)
                                if hi > lo { (dst + lo).update(from: src + (lo - g.padding + kj), count: hi - lo) }
                                (dst + max(hi, lo)).update(repeating: 0, count: ow - max(hi, lo))
                            } else {
                                for j in 0..<ow { dst[j] = (j >= lo && j < hi) ? src[j * g.stride - g.padding + kj] : 0 }
                            }
                        }
                    }
                }
            }
        }
    }

    public static func col2im(_ dx: UnsafeMutablePointer<Self>, _ dcol: UnsafePointer<Self>, _ g: ConvGeometry, samples: Range<Int>) {
        let (oh, ow, hw) = (g.outHeight, g.outWidth, g.height * g.width)
        let ncol = samples.count * oh * ow
        for c in 0..<g.channels {
            for ki in 0..<g.kernelHeight {
                for kj in 0..<g.kernelWidth {
                    let row = dcol + ((c * g.kernelHeight + ki) * g.kernelWidth + kj) * ncol - samples.lowerBound * oh * ow
                    for b in samples {
                        let plane = dx + (c * g.batch + b) * hw
                        for i in 0..<oh {
                            let ih = i * g.stride - g.padding + ki
                            if ih < 0 || ih >= g.height { continue }
                            let src = row + (b * oh + i) * ow, dst = plane + ih * g.width
                            let (lo, hi) = g.validColumns(kj)
                            if g.stride == 1 {
                                let shifted = dst + (kj - g.padding) // a contiguous run: vectorizes
                                for j in lo..<max(lo, hi) { shifted[j] += src[j] }
                            } else {
                                for j in lo..<max(lo, hi) { dst[j * g.stride - g.padding + kj] += src[j] }
                            }
                        }
                    }
                }
            }
        }
    }

    public static func maxPoolForward(_ y: UnsafeMutablePointer<Self>, argmax: UnsafeMutablePointer<Int32>,
                                      _ x: UnsafePointer<Self>, _ g: PoolGeometry) {
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

    /// The common 2x2, stride 2 window, unrolled; the same tie rule.
    static func maxPool2x2Forward(_ y: UnsafeMutablePointer<Self>, argmax: UnsafeMutablePointer<Int32>,
                                  _ x: UnsafePointer<Self>, _ g: PoolGeometry) {
        let (oh, ow, w, hw) = (g.outHeight, g.outWidth, g.width, g.height * g.width)
        var o = 0
        for p in 0..<g.planes {
            let plane = x + p * hw
            for i in 0..<oh {
                for j in 0..<ow {
                    let q0 = 2 * i * w + 2 * j, q1 = q0 + 1, q2 = q0 + w, q3 = q2 + 1
                    var best = plane[q0], at = q0
                    if plane[q1] > best { best = plane[q1]; at = q1 }
                    if plane[q2] > best { best = plane[q2]; at = q2 }
                    if plane[q3] > best { best = plane[q3]; at = q3 }
                    y[o] = best; argmax[o] = Int32(at)
                    o += 1
                }
            }
        }
    }

    public static func maxPoolBackward(_ dx: UnsafeMutablePointer<Self>, _ dy: UnsafePointer<Self>,
                                       argmax: UnsafePointer<Int32>, _ g: PoolGeometry) {
        let (outPlane, hw) = (g.outHeight * g.outWidth, g.height * g.width)
        for p in 0..<g.planes {
            let plane = dx + p * hw
            for o in 0..<outPlane { plane[Int(argmax[p * outPlane + o])] += dy[p * outPlane + o] }
        }
    }
}
