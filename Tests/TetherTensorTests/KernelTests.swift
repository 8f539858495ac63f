import CTetherKernels
import Foundation
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

/// The packed-weight GEMM of inference (packed_gemm.c): y = x W^T + bias with W packed once.
@Suite struct PackedGemmTests {
    /// Shapes over every tail: rows past a block of 12, columns past a panel of 32 and of 16, k of 1.
    static let shapes = [(1, 1, 1), (12, 32, 8), (13, 33, 5), (25, 17, 64), (7, 10, 256), (30, 70, 3), (256, 48, 1)]

    static func operands(m: Int, n: Int, k: Int, seed: UInt64) -> (x: [Float], w: [Float], bias: [Float]) {
        var rng = RNG(seed: seed)
        return (
            (0..<m * k).map { _ in Float(rng.nextNormal()) }, (0..<n * k).map { _ in Float(rng.nextNormal()) },
            (0..<n).map { _ in Float(rng.nextNormal()) }
        )
    }

    /// (m, n) of y from the C kernel on `packed`, by its AVX-512 path or its scalar loop. x and y are
    /// given with rows longer than they are (lda k + 1, ldc n + 2), and what lies between and after
    /// y's rows must be left as it was: a store past a row's end would be overwritten by the next row's
    /// own store in a dense y, and go unseen. `accumulate`: y starts as 0.5 in each element and the
    /// product is added to it (bias unused).
    static func run(
        fast: Bool, _ x: [Float], _ packed: [Float], _ bias: [Float]?, m: Int, n: Int, k: Int, accumulate: Bool = false,
        activate: Bool = false
    ) -> [Float] {
        let (lda, ldc) = (k + 1, n + 2)
        let strided = (0..<m * lda).map { $0 % lda < k ? x[$0 / lda * k + $0 % lda] : .nan }
        var y = [Float](repeating: -7, count: m * ldc + 5)
        if accumulate { for i in 0..<m { for j in 0..<n { y[i * ldc + j] = 0.5 } } }
        y.withUnsafeMutableBufferPointer { y in
            if fast {
                tether_gemm_packed_b(y.baseAddress, ldc, strided, lda, packed, bias, m, n, k, accumulate ? 1 : 0, activate ? 1 : 0, 0.25)
            } else {
                tether_gemm_packed_b_scalar(
                    y.baseAddress, ldc, strided, lda, packed, bias, m, n, k, accumulate ? 1 : 0, activate ? 1 : 0, 0.25)
            }
        }
        let untouched = y.indices.filter { $0 >= m * ldc || $0 % ldc >= n }
        #expect(untouched.allSatisfy { y[$0] == -7 }, "wrote outside y's rows (\(m)x\(n)x\(k))")
        return (0..<m * n).map { y[$0 / n * ldc + $0 % n] }
    }

    /// Where two results first differ in their bits (nil: nowhere), for a short failure message.
    static func firstDifference(_ a: [Float], _ b: [Float]) -> Int? {
        a.count != b.count ? -1 : a.indices.first { a[$0].bitPattern != b[$0].bitPattern }
    }

    static func pack(_ b: [Float], n: Int, k: Int, transposed: Bool) -> [Float] {
        var packed = [Float](repeating: .nan, count: tether_gemm_packed_b_size(n, k))
        packed.withUnsafeMutableBufferPointer { tether_gemm_packed_b_pack($0.baseAddress, b, n, k, transposed ? 1 : 0) }
        return packed
    }

    @Test(arguments: shapes)
    func theProductIsTheDefinitionFromABiasZeroOrY(m: Int, n: Int, k: Int) {
        let (x, w, bias) = Self.operands(m: m, n: n, k: k, seed: 7)
        let packed = Self.pack(w, n: n, k: k, transposed: true)
        for start in ["bias", "zero", "y"] {
            let y = Self.run(fast: true, x, packed, start == "bias" ? bias : nil, m: m, n: n, k: k, accumulate: start == "y")
            for i in 0..<m {
                for j in 0..<n {
                    var exact = start == "bias" ? Double(bias[j]) : start == "y" ? 0.5 : 0, magnitude = abs(exact)
                    for p in 0..<k {
                        exact += Double(x[i * k + p]) * Double(w[j * k + p])
                        magnitude += abs(Double(x[i * k + p]) * Double(w[j * k + p]))
                    }
                    // the rounding of k float additions
                    #expect(abs(Double(y[i * n + j]) - exact) <= 1e-6 * magnitude * Double(k + 1), "y[\(i), \(j)] of \(m)x\(n)x\(k)")
                }
            }
        }
    }

    /// B given (K, N) packs to the same panels as its transpose given (N, K).
    @Test func bothLayoutsPackAlike() {
        let (n, k) = (45, 9)
        let (_, w, _) = Self.operands(m: 1, n: n, k: k, seed: 3)
        let transposed = (0..<k * n).map { w[($0 % n) * k + $0 / n] }  // (K, N)
        let packed = Self.pack(w, n: n, k: k, transposed: true)
        #expect(packed.count == 48 * k && !packed.contains { $0.isNaN }, "two panels, of 32 and 16, every value written")
        #expect(Self.firstDifference(packed, Self.pack(transposed, n: n, k: k, transposed: false)) == nil)
    }

    /// The AVX-512 kernel and the scalar loop it falls back to are the same sums in the same order.
    @Test(
        .enabled(if: tether_gemm_packed_fast() != 0, "this CPU has no AVX-512: tether_gemm_packed_b runs the scalar loop itself"),
        arguments: shapes)
    func theAVX512KernelIsTheScalarLoopBitForBit(m: Int, n: Int, k: Int) throws {
        let (x, w, bias) = Self.operands(m: m, n: n, k: k, seed: 11)
        let packed = Self.pack(w, n: n, k: k, transposed: true)
        let fast = Self.run(fast: true, x, packed, bias, m: m, n: n, k: k)
        #expect(Self.firstDifference(fast, Self.run(fast: false, x, packed, bias, m: m, n: n, k: k)) == nil)
        // the activation fused after: the layer's expression on the same sums, on either path
        let activated = Self.run(fast: true, x, packed, bias, m: m, n: n, k: k, activate: true)
        #expect(Self.firstDifference(activated, fast.map { $0 > 0 ? $0 : 0.25 * $0 }) == nil)
        #expect(Self.firstDifference(activated, Self.run(fast: false, x, packed, bias, m: m, n: n, k: k, activate: true)) == nil)
        let accumulated = Self.run(fast: true, x, packed, nil, m: m, n: n, k: k, accumulate: true)
        #expect(Self.firstDifference(accumulated, Self.run(fast: false, x, packed, nil, m: m, n: n, k: k, accumulate: true)) == nil)
    }

    /// (m, n) of C = A B from the packed-A kernel, A (m, k) packed, B (k, n) given with rows longer than
    /// they are (ldb n + 3) and C's rows too (ldc n + 2), nothing written outside C's rows.
    static func runPackedA(fast: Bool, _ a: [Float], _ b: [Float], m: Int, n: Int, k: Int) -> [Float] {
        let (ldb, ldc) = (n + 3, n + 2)
        var packed = [Float](repeating: .nan, count: tether_gemm_packed_a_size(m, k))
        packed.withUnsafeMutableBufferPointer { tether_gemm_packed_a_pack($0.baseAddress, a, m, k) }
        #expect(!packed.contains { $0.isNaN }, "every packed value written")
        let strided = (0..<k * ldb).map { $0 % ldb < n ? b[$0 / ldb * n + $0 % ldb] : .nan }
        var c = [Float](repeating: -7, count: m * ldc + 5)
        c.withUnsafeMutableBufferPointer { c in
            if fast {
                tether_gemm_packed_a(c.baseAddress, ldc, packed, strided, ldb, m, n, k)
            } else {
                tether_gemm_packed_a_scalar(c.baseAddress, ldc, packed, strided, ldb, m, n, k)
            }
        }
        #expect(c.indices.allSatisfy { $0 < m * ldc && $0 % ldc < n || c[$0] == -7 }, "wrote outside C's rows (\(m)x\(n)x\(k))")
        return (0..<m * n).map { c[$0 / n * ldc + $0 % n] }
    }

    /// The packed-A GEMM of a Winograd convolution: the definition, and its AVX-512 kernel the scalar
    /// loop bit for bit, over rows past a panel of 12 and columns past a block of 32 and of 16.
    @Test(arguments: shapes)
    func thePackedAProductIsTheDefinitionOnEitherPath(m: Int, n: Int, k: Int) throws {
        let (a, b, _) = Self.operands(m: m, n: n, k: k, seed: 13)  // a (m, k), b read as (k, n)
        let c = Self.runPackedA(fast: true, a, b, m: m, n: n, k: k)
        for i in 0..<m {
            for j in 0..<n {
                let terms = (0..<k).map { Double(a[i * k + $0]) * Double(b[$0 * n + j]) }
                let exact = terms.reduce(0, +), magnitude = terms.reduce(0) { $0 + abs($1) }
                #expect(abs(Double(c[i * n + j]) - exact) <= 1e-6 * magnitude * Double(k + 1), "C[\(i), \(j)] of \(m)x\(n)x\(k)")
            }
        }
        // without AVX-512 tether_gemm_packed_a runs the scalar loop itself: the definition above is the test
        guard tether_gemm_packed_fast() != 0 else { return }
        #expect(Self.firstDifference(c, Self.runPackedA(fast: false, a, b, m: m, n: n, k: k)) == nil)
    }

    /// A row's result is the same bits alone, in a batch, and on any number of threads.
    @Test(.enabled(if: tether_gemm_packed_fast() != 0, "this CPU has no AVX-512: no packed weight"))
    func aRowsResultDependsOnNothingAroundIt() throws {
        let (m, n, k) = (100, 70, 300)
        let (x, w, bias) = Self.operands(m: m, n: n, k: k, seed: 5)
        let packed = try #require(PackedWeight<Float>(packing: w, outputs: n, inputs: k))
        func apply(rows: Range<Int>, threads: Int) -> [Float] {
            var y = [Float](repeating: .nan, count: rows.count * n)
            Compute.withThreads(threads) {
                y.withUnsafeMutableBufferPointer { y in
                    Array(x[rows.lowerBound * k..<rows.upperBound * k]).withUnsafeBufferPointer {
                        packed.apply(y.baseAddress!, $0.baseAddress!, rows: rows.count, bias: bias)
                    }
                }
            }
            return y
        }
        let whole = apply(rows: 0..<m, threads: 1)
        #expect(Self.firstDifference(apply(rows: 0..<m, threads: 3), whole) == nil)
        for row in [0, 11, 12, 57, 99] {
            #expect(Self.firstDifference(apply(rows: row..<row + 1, threads: 1), Array(whole[row * n..<(row + 1) * n])) == nil)
        }
        #expect(PackedWeight<Double>(packing: [1, 2], outputs: 1, inputs: 2) == nil, "Double keeps OpenBLAS's GEMM")
    }

    /// The softmax cross-entropy (forward and backward) and the bias gradient cut their rows or
    /// features across threads: the same bits on 1 and 3 threads, at sizes that split into 3, in
    /// Float (the C softmax) and Double (the generic one); and the one-thread result is the definition.
    @Test func lossAndBiasGradientAreTheSameOnAnyThreadCount() {
        let (b, k) = (48, 2000)  // 16 rows a slice at the element grain: 3 slices
        var rng = RNG(seed: 9)
        let logits = (0..<b * k).map { _ in Float(rng.nextNormal() * 2) }
        let labels = (0..<b).map { Int32($0 * 37 % k) }
        func softmax<T: Scalar>(_ z: [T], threads: Int) -> (probs: [T], losses: [T], grad: [T]) {
            var (probs, losses, grad) = (
                [T](repeating: .nan, count: b * k), [T](repeating: .nan, count: b), [T](repeating: .nan, count: b * k)
            )
            Compute.withThreads(threads) {
                T.softmaxCrossEntropyForward(probs: &probs, losses: &losses, logits: z, labels: labels, batch: b, classes: k)
                T.softmaxCrossEntropyBackward(&grad, probs: probs, labels: labels, scale: 0.5, batch: b, classes: k)
            }
            return (probs, losses, grad)
        }
        for threads in [1, 3] {
            let one = softmax(logits, threads: 1), many = softmax(logits, threads: threads)
            #expect(one.probs == many.probs && one.losses == many.losses && one.grad == many.grad, "Float on \(threads) threads")
            let oneD = softmax(logits.map(Double.init), threads: 1), manyD = softmax(logits.map(Double.init), threads: threads)
            #expect(oneD.probs == manyD.probs && oneD.losses == manyD.losses && oneD.grad == manyD.grad, "Double on \(threads) threads")
        }
        let d = softmax(logits.map(Double.init), threads: 3)
        for i in [0, 17, 47] {
            let z = logits[i * k..<(i + 1) * k].map(Double.init), top = z.max()!, label = Int(labels[i])
            let total: Double = z.reduce(0) { $0 + exp($1 - top) }
            let loss: Double = top + log(total) - z[label], grad: Double = 0.5 * (exp(z[label] - top) / total - 1)
            #expect(abs(d.losses[i] - loss) < 1e-12 && abs(d.grad[i * k + label] - grad) < 1e-12)
        }
        let (n, f) = (20, 5000)  // 1,638 features a slice: 3 slices
        let x = (0..<n * f).map { _ in Float(rng.nextNormal()) }
        func biasGradient(threads: Int) -> [Float] {
            var out = [Float](repeating: 1, count: f)
            Compute.withThreads(threads) { Float.sumPerFeature(&out, x, rows: n, features: f) }
            return out
        }
        let sums = biasGradient(threads: 1)
        #expect(Self.firstDifference(biasGradient(threads: 3), sums) == nil)
        for j in [0, 1637, 1638, 4999] {
            #expect(abs(Double(sums[j]) - (1 + (0..<n).reduce(0.0) { $0 + Double(x[$1 * f + j]) })) < 1e-5)
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
