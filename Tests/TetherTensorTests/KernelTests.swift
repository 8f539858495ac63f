import Testing
@testable import TetherTensor

@Suite struct GemmTests {
    @Test(arguments: [(false, false), (true, false), (false, true), (true, true)])
    func matchesNaiveProduct(transposeA: Bool, transposeB: Bool) {
        let (m, n, k) = (5, 7, 3)
        var rng = RNG(seed: 1)
        let a = (0..<m * k).map { _ in rng.nextNormal() }, b = (0..<k * n).map { _ in rng.nextNormal() }
        var c = (0..<m * n).map { _ in rng.nextNormal() }
        let c0 = c
        // stored shapes: A is (M, K) or, transposed, (K, M); likewise B
        func A(_ i: Int, _ p: Int) -> Double { transposeA ? a[p * m + i] : a[i * k + p] }
        func B(_ p: Int, _ j: Int) -> Double { transposeB ? b[j * k + p] : b[p * n + j] }
        Double.gemm(
            transposeA: transposeA, transposeB: transposeB, m: m, n: n, k: k, alpha: 2, a: a, lda: transposeA ? m : k,
            b: b, ldb: transposeB ? k : n, beta: 0.5, c: &c, ldc: n)
        for i in 0..<m {
            for j in 0..<n {
                let expected = 2 * (0..<k).reduce(0.0) { $0 + A(i, $1) * B($1, j) } + 0.5 * c0[i * n + j]
                #expect(abs(c[i * n + j] - expected) < 1e-12)
            }
        }
    }
}

@Suite struct ConvKernelTests {
    /// im2col against the definition, over strides, paddings and shapes where the fast paths and the
    /// general path differ.
    /// (5, 1, 2), (3, 1, 1) and (1, 1, 0) keep the width: the kernels' whole-plane path.
    @Test(arguments: [(5, 1, 2), (3, 1, 1), (1, 1, 0), (3, 1, 0), (3, 2, 1), (2, 3, 2), (5, 1, 4)])
    func im2colMatchesTheDefinition(kernel: Int, stride: Int, padding: Int) {
        let g = ConvGeometry(
            channels: 2, batch: 3, height: 7, width: 6, kernelHeight: kernel, kernelWidth: kernel, stride: stride, padding: padding)
        let x = (0..<2 * 3 * 7 * 6).map { Double($0 + 1) }
        var col = [Double](repeating: .nan, count: g.patchSize * g.columns)
        col.withUnsafeMutableBufferPointer { Double.im2col($0.baseAddress!, x, g, samples: 0..<3) }
        for c in 0..<2 {
            for ki in 0..<kernel {
                for kj in 0..<kernel {
                    for b in 0..<3 {
                        for i in 0..<g.outHeight {
                            for j in 0..<g.outWidth {
                                let (ih, iw) = (i * stride - padding + ki, j * stride - padding + kj)
                                let inside = ih >= 0 && ih < 7 && iw >= 0 && iw < 6
                                let expected = inside ? x[((c * 3 + b) * 7 + ih) * 6 + iw] : 0
                                let row = (c * kernel + ki) * kernel + kj, column = (b * g.outHeight + i) * g.outWidth + j
                                #expect(col[row * g.columns + column] == expected)
                            }
                        }
                    }
                }
            }
        }
        // a chunk of samples is the same columns of the whole batch's col
        let plane = g.outHeight * g.outWidth
        var chunk = [Double](repeating: .nan, count: g.patchSize * 2 * plane)
        chunk.withUnsafeMutableBufferPointer { Double.im2col($0.baseAddress!, x, g, samples: 1..<3) }
        for row in 0..<g.patchSize {
            #expect(Array(chunk[row * 2 * plane..<(row + 1) * 2 * plane]) == Array(col[row * g.columns + plane..<(row + 1) * g.columns]))
        }
        // col2im is its adjoint: <im2col(x), y> == <x, col2im(y)>
        var rng = RNG(seed: 2)
        var y = (0..<col.count).map { _ in rng.nextNormal() }  // nonzero outside the image too
        let lhs = zip(col, y).reduce(0) { $0 + $1.0 * $1.1 }
        var back = [Double](repeating: 0, count: x.count)
        back.withUnsafeMutableBufferPointer { Double.col2im($0.baseAddress!, &y, g, samples: 0..<3) }
        let rhs = zip(x, back).reduce(0) { $0 + $1.0 * $1.1 }
        #expect(abs(lhs - rhs) < 1e-9 * abs(lhs))
    }

    /// The 2x2 kernels against the definition, written out: forward takes the first maximum of each
    /// window in scan order; backward sets every element of dx (an odd last row or column, in no
    /// window, to 0), dy at each winner.
    @Test(arguments: [(8, 6), (7, 5)])
    func twoByTwoPoolingMatchesTheDefinition(height h: Int, width w: Int) {
        var rng = RNG(seed: 4)
        let planes = 3, (oh, ow) = (h / 2, w / 2), outCount = planes * oh * ow
        let x = (0..<planes * h * w).map { _ in Float(rng.nextInt(below: 4)) }  // small integers: plenty of ties
        let g = PoolGeometry(planes: planes, height: h, width: w, kernel: 2, stride: 2)
        var (y1, y2) = ([Float](repeating: 0, count: outCount), [Float](repeating: 0, count: outCount))
        var (a1, a2) = ([Int32](repeating: 0, count: outCount), [Int32](repeating: 0, count: outCount))
        Float.maxPool2x2Forward(&y1, argmax: &a1, x, g)
        for p in 0..<planes {
            for i in 0..<oh {
                for j in 0..<ow {
                    var at = (2 * i) * w + 2 * j, best = x[p * h * w + at]
                    for (di, dj) in [(0, 1), (1, 0), (1, 1)] where x[p * h * w + (2 * i + di) * w + 2 * j + dj] > best {
                        at = (2 * i + di) * w + 2 * j + dj; best = x[p * h * w + at]
                    }
                    y2[(p * oh + i) * ow + j] = best; a2[(p * oh + i) * ow + j] = Int32(at)
                }
            }
        }
        #expect(y1 == y2)
        #expect(a1 == a2)
        let dy = (0..<outCount).map { _ in Float(rng.nextNormal()) }
        var (dx1, dx2) = ([Float](repeating: .nan, count: x.count), [Float](repeating: 0, count: x.count))
        Float.maxPool2x2Backward(&dx1, dy, argmax: a1, g)
        for o in 0..<outCount { dx2[o / (oh * ow) * h * w + Int(a2[o])] += dy[o] }
        #expect(dx1 == dx2)
    }
}

@Suite struct RNGTests {
    @Test func sameSeedSameStream() {
        var a = RNG(seed: 9), b = RNG(seed: 9), c = RNG(seed: 10)
        let (xa, xb, xc) = ((0..<100).map { _ in a.next() }, (0..<100).map { _ in b.next() }, (0..<100).map { _ in c.next() })
        #expect(xa == xb && xa != xc)
        #expect(RNG(seed: 9, stream: 1) != RNG(seed: 9, stream: 2))
    }

    @Test func restoredStateContinuesTheStream() throws {
        var a = RNG(seed: 3)
        _ = (0..<17).map { _ in a.next() }
        var b = try RNG(state: a.state)
        #expect((0..<50).map { _ in a.next() } == (0..<50).map { _ in b.next() })
        #expect(throws: TensorError.self) { try RNG(state: [0, 0, 0, 0]) }
    }

    @Test func normalsHaveMeanZeroAndUnitVariance() {
        var r = RNG(seed: 5)
        let x = (0..<200_000).map { _ in r.nextNormal() }
        let mean = x.reduce(0, +) / Double(x.count)
        let variance = x.map { ($0 - mean) * ($0 - mean) }.reduce(0, +) / Double(x.count)
        #expect(abs(mean) < 0.01 && abs(variance - 1) < 0.01)
    }

    @Test(arguments: [0, 1, 2, 97])
    func permutationIsAPermutation(n: Int) {
        var r = RNG(seed: 6)
        #expect(r.permutation(n).sorted() == Array(0..<n))
    }
}

/// The Float kernels in C (vectorized exp, sigmoid, tanh) against the generic Double reference.
@Suite struct FloatKernelsAgainstDoubleTests {
    func random(_ n: Int, scale: Double, seed: UInt64) -> [Double] {
        var rng = RNG(seed: seed)
        return (0..<n).map { _ in scale * rng.nextNormal() }
    }
    func worst(_ a: [Float], _ b: [Double]) -> Double { zip(a, b).map { abs(Double($0) - $1) / max(1, abs($1)) }.max() ?? 0 }

    @Test func softmaxCrossEntropy() {
        let (b, k) = (7, 1003)  // not a multiple of the vector width
        let z = random(b * k, scale: 8, seed: 1), labels = (0..<b).map { Int32($0 * 97 % k) }
        var pd = [Double](repeating: 0, count: b * k), ld = [Double](repeating: 0, count: b)
        var pf = [Float](repeating: 0, count: b * k), lf = [Float](repeating: 0, count: b)
        Double.softmaxCrossEntropyForward(probs: &pd, losses: &ld, logits: z, labels: labels, batch: b, classes: k)
        Float.softmaxCrossEntropyForward(probs: &pf, losses: &lf, logits: z.map(Float.init), labels: labels, batch: b, classes: k)
        #expect(worst(pf, pd) < 1e-6)
        #expect(worst(lf, ld) < 1e-5)
    }

    @Test func lstmCell() {
        let (b, n) = (3, 37)
        let gates = random(b * 4 * n, scale: 3, seed: 2), cPrev = random(b * n, scale: 1, seed: 3)
        let dh = random(b * n, scale: 1, seed: 4), dc = random(b * n, scale: 1, seed: 5)
        var gd = gates, cd = [Double](repeating: 0, count: b * n), td = cd, hd = cd
        var gf = gates.map(Float.init), cf = [Float](repeating: 0, count: b * n), tf = cf, hf = cf
        Double.lstmCellForward(gates: &gd, c: &cd, tanhC: &td, h: &hd, cPrev: cPrev, batch: b, hidden: n)
        Float.lstmCellForward(gates: &gf, c: &cf, tanhC: &tf, h: &hf, cPrev: cPrev.map(Float.init), batch: b, hidden: n)
        for (f, d) in [(gf, gd), (cf, cd), (tf, td), (hf, hd)] { #expect(worst(f, d) < 1e-6) }
        var dgd = [Double](repeating: 0, count: b * 4 * n), dcpd = [Double](repeating: 0, count: b * n)
        var dgf = [Float](repeating: 0, count: b * 4 * n), dcpf = [Float](repeating: 0, count: b * n)
        Double.lstmCellBackward(dgates: &dgd, dcPrev: &dcpd, dh: dh, dc: dc, gates: gd, cPrev: cPrev, tanhC: td, batch: b, hidden: n)
        Float.lstmCellBackward(
            dgates: &dgf, dcPrev: &dcpf, dh: dh.map(Float.init), dc: dc.map(Float.init), gates: gf,
            cPrev: cPrev.map(Float.init), tanhC: tf, batch: b, hidden: n)
        #expect(worst(dgf, dgd) < 1e-5)
        #expect(worst(dcpf, dcpd) < 1e-5)
    }

    @Test func sumOfSquares() {
        let x = random(1001, scale: 2, seed: 6)
        let d = Double.sumOfSquares(x, count: x.count), f = Float.sumOfSquares(x.map(Float.init), count: x.count)
        #expect(abs(f - d) / d < 1e-6)
    }
}
