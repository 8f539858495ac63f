import Testing
@testable import TetherNN
@testable import TetherTensor

/// The compute pool: every task run once, nested jobs inline, split GEMMs that compute the product, and
/// a CNN step that is the same bitwise on the same number of threads and to rounding on any other.
/// Each test sets its own thread's count (`Compute.withThreads`), so suites running beside it keep theirs.
@Suite struct ComputeThreadsTests {
    static func with<R>(threads: Int, _ body: () throws -> R) rethrows -> R { try Compute.withThreads(threads, body) }

    @Test(arguments: [1, 2, 3, 5])
    func everyTaskRunsOnceOnAWorkerOfThePool(threads: Int) {
        Self.with(threads: threads) {
            #expect(Compute.threads == threads)
            for tasks in [0, 1, 2, 3, 7, 100, 1000] {
                var runs = [Int](repeating: 0, count: tasks), workers = [Int](repeating: -1, count: tasks)
                runs.withUnsafeMutableBufferPointer { runs in
                    workers.withUnsafeMutableBufferPointer { workers in
                        Compute.run(tasks: tasks) { task, worker in
                            runs[task] += 1
                            workers[task] = worker
                        }
                    }
                }
                #expect(runs.allSatisfy { $0 == 1 }, "\(tasks) tasks on \(threads) threads: \(runs)")
                #expect(workers.allSatisfy { (0..<threads).contains($0) })
            }
        }
    }

    @Test func aJobStartedInATaskRunsInlineOnThatTasksWorker() {
        Self.with(threads: 3) {
            var inner = [[Int]](repeating: [], count: 6)
            inner.withUnsafeMutableBufferPointer { inner in
                Compute.run(tasks: 6) { task, worker in
                    var seen: [Int] = []
                    Compute.run(tasks: 4) { _, w in seen.append(w) }
                    inner[task] = seen.map { $0 == worker ? 1 : 0 }
                }
            }
            #expect(inner.allSatisfy { $0 == [1, 1, 1, 1] }, "\(inner)")
        }
    }

    @Test func rangesSplitEvenlyAndCoverTheCount() {
        Self.with(threads: 3) {
            #expect(Compute.ranges(count: 10, grain: 1) == [0..<3, 3..<6, 6..<10])
            #expect(Compute.ranges(count: 10, grain: 4) == [0..<5, 5..<10])
            #expect(Compute.ranges(count: 3, grain: 4) == [0..<3])
            #expect(Compute.ranges(count: 0, grain: 1) == [0..<0])
        }
    }

    /// One block per thread, tiling C exactly along its longer side, cut at multiples of 16; a small
    /// GEMM, or one on one thread, stays whole.
    @Test func gemmBlocksTileTheOutputOnePerThread() {
        for (m, n, k) in [(64, 1000, 27), (1000, 64, 27), (128, 448, 576), (2048, 20, 4096), (20, 1024, 256)] {
            for threads in [2, 3] {
                let blocks = Self.with(threads: threads) { Compute.gemmBlocks(m: m, n: n, k: k) }
                #expect(blocks.count == threads, "\(m)x\(n)x\(k)")
                let along = n >= m ? blocks.map(\.columns) : blocks.map(\.rows), whole = n >= m ? 0..<m : 0..<n
                #expect((n >= m ? blocks.map(\.rows) : blocks.map(\.columns)).allSatisfy { $0 == whole })
                #expect(along.first?.lowerBound == 0 && along.last?.upperBound == max(m, n))
                #expect(zip(along, along.dropFirst()).allSatisfy { $0.upperBound == $1.lowerBound && $1.lowerBound % 16 == 0 })
                #expect(along.allSatisfy { $0.count >= 16 })
            }
            #expect(Self.with(threads: 1) { Compute.gemmBlocks(m: m, n: n, k: k) }.count == 1)
        }
        #expect(Self.with(threads: 3) { Compute.gemmBlocks(m: 8, n: 8, k: 8) }.count == 1)
        #expect(Self.with(threads: 3) { Compute.gemmBlocks(m: 4, n: 40, k: 4096) }.count == 2)  // 40 columns: two of 16 or more
    }

    /// Every transpose, both types, shapes cut by columns and by rows, odd sizes: the product of the
    /// definition on 1, 2 and 3 threads.
    @Test(arguments: [(false, false), (true, false), (false, true), (true, true)])
    func aSplitGemmIsTheProductOnAnyNumberOfThreads(transposeA: Bool, transposeB: Bool) {
        func product<T: Scalar>(_: T.Type, m: Int, n: Int, k: Int, threads: Int) -> (a: [T], b: [T], c0: [T], c: [T]) {
            var rng = RNG(seed: UInt64(m * 7 + n * 3 + k))
            let a = (0..<m * k).map { _ in T(rng.nextNormal()) }, b = (0..<k * n).map { _ in T(rng.nextNormal()) }
            let c0 = (0..<m * n).map { _ in T(rng.nextNormal()) }
            var c = c0
            Self.with(threads: threads) {
                T.gemm(
                    transposeA: transposeA, transposeB: transposeB, m: m, n: n, k: k, alpha: 0.7, a: a, lda: transposeA ? m : k,
                    b: b, ldb: transposeB ? k : n, beta: 0.25, c: &c, ldc: n)
            }
            return (a, b, c0, c)
        }
        for (m, n, k) in [(32, 4096, 27), (64, 1000, 288), (577, 129, 600), (1000, 37, 100), (256, 256, 256)] {
            #expect(Self.with(threads: 3) { Compute.gemmBlocks(m: m, n: n, k: k) }.count == 3)
            let whole = product(Float.self, m: m, n: n, k: k, threads: 1), three = product(Float.self, m: m, n: n, k: k, threads: 3).c
            // A block may sum an element's k products in another order than the whole (other kernels):
            // the two differ by rounding, which is relative to the products' magnitudes (0.7 sum |a||b|
            // + 0.25 |c0|), not to the result, which cancels (on AVX2 kernels 1.5e-5 of max(1, |c|)).
            var magnitude = [Double](repeating: 0, count: m * n)
            Double.gemm(
                transposeA: transposeA, transposeB: transposeB, m: m, n: n, k: k, alpha: 0.7, a: whole.a.map { Double(abs($0)) },
                lda: transposeA ? m : k, b: whole.b.map { Double(abs($0)) }, ldb: transposeB ? k : n, beta: 0, c: &magnitude, ldc: n)
            let bounds = zip(magnitude, whole.c0).map { 1e-5 * ($0 + 0.25 * Double(abs($1))) }
            #expect(zip(zip(whole.c, three), bounds).allSatisfy { Double(abs($0.0 - $0.1)) <= $1 }, "\(m)x\(n)x\(k)")
            let (a, b, c0, c) = product(Double.self, m: m, n: n, k: k, threads: 3)
            var worst = 0.0
            for i in Swift.stride(from: 0, to: m, by: 7) {
                for j in Swift.stride(from: 0, to: n, by: 5) {
                    var sum = 0.0
                    for p in 0..<k { sum += (transposeA ? a[p * m + i] : a[i * k + p]) * (transposeB ? b[j * k + p] : b[p * n + j]) }
                    worst = max(worst, abs(c[i * n + j] - (0.7 * sum + 0.25 * c0[i * n + j])))
                }
            }
            #expect(worst < 1e-10, "\(m)x\(n)x\(k): \(worst)")
        }
    }

    /// A CNN's loss and every gradient: on 2 and 3 threads the same as on 1 to rounding (a split GEMM's
    /// blocks may take other OpenBLAS kernels than the whole), and bitwise the same on the same count
    /// twice (which thread runs which block does not matter).
    @Test func aCNNStepAgreesOnAnyNumberOfThreads() throws {
        let spec = ModelSpec(
            name: "threads", input: [3, 16, 16],
            layers: [
                ModelSpecTests.layer(.conv2d) { ($0.out, $0.kernel, $0.padding, $0.weightNorm) = (16, 3, 1, true) },
                ModelSpecTests.layer(.relu), ModelSpecTests.layer(.maxPool) { $0.kernel = 2 },
                ModelSpecTests.layer(.conv2d) { ($0.out, $0.kernel, $0.padding) = (32, 3, 1) },
                ModelSpecTests.layer(.leakyRelu) { $0.slope = 0.1 }, ModelSpecTests.layer(.maxPool) { ($0.kernel, $0.stride) = (3, 2) },
                ModelSpecTests.layer(.flatten), ModelSpecTests.layer(.dense) { $0.out = 64 }, ModelSpecTests.layer(.relu),
                ModelSpecTests.layer(.dense) { $0.out = 10 }
            ])
        func step(threads: Int) throws -> (loss: Double, grads: [Float]) {
            try Self.with(threads: threads) {
                var rng = RNG(seed: 5)
                let model: Predictor<Float> = try spec.predictor(kind: "spec", rng: &rng)
                let batch = Batch(
                    inputs: Tensor(shape: [48, 3 * 16 * 16], scalars: (0..<48 * 768).map { _ in Float(rng.nextNormal()) }),
                    labels: (0..<48).map { Int32($0 % 10) })
                model.initializeFromData(batch, reduce: { _ in })
                model.arena.zeroGrads()
                let stats = model.accumulateGradients(batch, scale: 1 / 48)
                return (stats.lossSum, Array(UnsafeBufferPointer(start: model.arena.grads, count: model.arena.count)))
            }
        }
        let one = try step(threads: 1)
        #expect(one.grads.contains { $0 != 0 })
        for threads in [2, 3] {
            let many = try step(threads: threads)
            #expect(abs(many.loss - one.loss) <= 1e-5 * abs(one.loss), "\(threads) threads")
            let scale = one.grads.map { abs($0) }.max()!
            let worst = zip(many.grads, one.grads).map { abs($0 - $1) }.max()!
            #expect(worst <= 1e-4 * scale, "\(threads) threads: \(worst) of \(scale)")
            let again = try step(threads: threads)
            #expect(again.loss == many.loss && again.grads == many.grads, "\(threads) threads twice")
        }
    }
}
