import CBLAS
import CTetherKernels

/// The process's compute threads: one pool (CTetherKernels' pool.c) that runs every parallel kernel
/// and every GEMM big enough to split. OpenBLAS is kept at one thread and called from inside the pool:
/// with its own threads beside ours, its idle worker spun in sched_yield against our kernels
/// (docs/ARCHITECTURE.md, "Compute threads").
public enum Compute {
    /// The pool at first use takes over OpenBLAS's count (OPENBLAS_NUM_THREADS, else the cores).
    private static let started: Void = {
        let threads = openblas_get_num_threads()
        openblas_set_num_threads(1)
        tether_pool_set_threads(threads)
    }()

    /// Threads taking part in a parallel kernel, the caller's counted.
    public static var threads: Int {
        _ = started
        return Int(tether_pool_threads())
    }

    /// Sets the pool's size (`--threads`), at most 256, for every thread of the process.
    public static func setThreads(_ n: Int) {
        _ = started
        tether_pool_set_threads(Int32(min(max(1, n), 256)))
    }

    /// Runs body with the calling thread's kernels on `n` threads (at most 256), whatever the process's
    /// size; other threads keep theirs. For tests that compare thread counts side by side.
    public static func withThreads<R>(_ n: Int, _ body: () throws -> R) rethrows -> R {
        _ = started
        let before = tether_pool_use_threads_here(Int32(min(max(1, n), 256)))
        defer { tether_pool_use_threads_here(before) }
        return try body()
    }

    /// Calls body(task, worker) once for each task in 0..<tasks across the pool and returns when all
    /// are done. `worker` (0..<threads) names the thread, for scratch of its own; which thread runs
    /// which task varies, so results must not depend on it (disjoint outputs per task).
    public static func run(tasks: Int, _ body: (_ task: Int, _ worker: Int) -> Void) {
        _ = started
        guard tasks > 1, tether_pool_threads() > 1 else {
            for task in 0..<max(0, tasks) { body(task, 0) }
            return
        }
        withoutActuallyEscaping(body) { body in
            var job = body
            withUnsafeMutablePointer(to: &job) { job in
                tether_pool_run(
                    tasks,
                    { context, task, worker in
                        context!.assumingMemoryBound(to: ((Int, Int) -> Void).self).pointee(task, worker)
                    }, job)
            }
        }
    }

    /// 0..<count cut into contiguous ranges, one per thread, none shorter than `grain` (fewer ranges
    /// when count is small); the cuts depend on the pool's size only.
    public static func ranges(count: Int, grain: Int) -> [Range<Int>] {
        let parts = rangeCount(count: count, grain: grain)
        return (0..<parts).map { range($0, of: parts, count: count) }
    }

    static func rangeCount(count: Int, grain: Int) -> Int { max(1, min(threads, count / max(1, grain))) }
    static func range(_ p: Int, of parts: Int, count: Int) -> Range<Int> { (p * count / parts)..<((p + 1) * count / parts) }

    /// body(range) for each of `ranges(count:grain:)`, across the pool: an elementwise kernel split.
    /// Called by every elementwise kernel, so it allocates nothing.
    public static func forEachRange(count: Int, grain: Int, _ body: (Range<Int>) -> Void) {
        let parts = rangeCount(count: count, grain: grain)
        if parts == 1 { return body(0..<count) }
        run(tasks: parts) { task, _ in body(range(task, of: parts, count: count)) }
    }

    /// Elements below which an elementwise kernel is not worth a second thread (a wake-up costs about
    /// as much as a pass over this many).
    public static let elementGrain = 1 << 15

    /// Multiply-adds below which a GEMM runs on one thread (OpenBLAS's own threshold, 65536 x 4).
    static let gemmSplitThreshold = 1 << 18

    /// How a GEMM of C (M, N) and depth K is cut, one block per thread: column blocks when N >= M, else
    /// row blocks (the operand every block packs again is then the smaller one), cut at multiples of 16.
    /// Each block is one OpenBLAS call over the whole K. OpenBLAS picks its kernel (small-matrix, direct
    /// or packed) by a call's shape, so a block's elements can round differently from the same elements
    /// of the whole: results on different numbers of threads agree to rounding, and on the same number
    /// bitwise. Inside a pool task, or small, one block.
    static func gemmSplit(m: Int, n: Int, k: Int) -> (blocks: Int, columns: Bool) {
        let columns = n >= m
        guard tether_pool_in_task() == 0, Double(m) * Double(n) * Double(k) >= Double(gemmSplitThreshold) else { return (1, columns) }
        return (max(1, min(threads, (columns ? n : m) / 16)), columns)
    }

    /// Block `p` of `split`: its rows and columns of C.
    static func gemmBlock(_ p: Int, of split: (blocks: Int, columns: Bool), m: Int, n: Int) -> (rows: Range<Int>, columns: Range<Int>) {
        let length = split.columns ? n : m
        func cut(_ q: Int) -> Int { q == split.blocks ? length : (q * length / split.blocks) / 16 * 16 }
        return split.columns ? (0..<m, cut(p)..<cut(p + 1)) : (cut(p)..<cut(p + 1), 0..<n)
    }

    /// Every block of a GEMM's split (for tests and tools; `splitGemm` computes each where it runs it).
    static func gemmBlocks(m: Int, n: Int, k: Int) -> [(rows: Range<Int>, columns: Range<Int>)] {
        let split = gemmSplit(m: m, n: n, k: k)
        return (0..<split.blocks).map { gemmBlock($0, of: split, m: m, n: n) }
    }

    /// A row-major GEMM run as `gemmSplit` says: `block` gets one block's rows and columns and the
    /// offsets into A, B and C where that block's operands start. Called for every GEMM, so an unsplit
    /// one allocates nothing and goes straight to `block`.
    @inline(__always)
    static func splitGemm(
        transposeA: Bool, transposeB: Bool, m: Int, n: Int, k: Int, lda: Int, ldb: Int, ldc: Int,
        _ block: (_ rows: Int, _ columns: Int, _ aOffset: Int, _ bOffset: Int, _ cOffset: Int) -> Void
    ) {
        let split = gemmSplit(m: m, n: n, k: k)
        if split.blocks == 1 { return block(m, n, 0, 0, 0) }
        Compute.run(tasks: split.blocks) { p, _ in
            let (rows, columns) = gemmBlock(p, of: split, m: m, n: n)
            let (i, j) = (rows.lowerBound, columns.lowerBound)
            block(rows.count, columns.count, transposeA ? i : i * lda, transposeB ? j * ldb : j, i * ldc + j)
        }
    }
}
