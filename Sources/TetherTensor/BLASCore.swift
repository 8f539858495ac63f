import CBLAS
import Foundation
import CTetherKernels

#if canImport(Glibc)
    import Glibc
#endif

/// The kernels OpenBLAS runs on, and the one correction Tether makes to its choice.
///
/// OpenBLAS built with DYNAMIC_ARCH picks its kernels by the CPU's model number when the library loads.
/// A release older than the CPU does not know the model and falls back to a pre-AVX2 core: Debian 12's
/// 0.3.21 takes a Sapphire Rapids Xeon (AVX-512) for a Prescott and runs SSE3 kernels, 2.8x slower in
/// mlp-wn and cnn-wn training than its SkylakeX kernels on the same CPU (docs/ARCHITECTURE.md). The
/// choice is made before `main`, so the only way to change it is to start again with
/// OPENBLAS_CORETYPE set: `ProcessStart.restartIfNeeded` does that, once, at the start of the process.
/// An OPENBLAS_CORETYPE the user set is always kept.
public enum BLASCore {
    /// The core OpenBLAS chose (e.g. "Haswell", "SkylakeX", "Prescott").
    public static var name: String { String(cString: openblas_get_corename()) }

    /// `tether_cpu_vector_level`: 2 with AVX-512, 1 with AVX2 and FMA, 0 otherwise.
    public static var cpuVectorLevel: Int { Int(tether_cpu_vector_level()) }

    /// Set by `ProcessStart.restartIfNeeded` to the core OpenBLAS had taken, for `tether version` to say.
    public static let detectedVariable = "TETHER_OPENBLAS_DETECTED"

    /// OpenBLAS's cores whose kernels use AVX-512, and those whose kernels use AVX2 (lower-cased).
    static let avx512Cores: Set<String> = ["skylakex", "cooperlake", "sapphirerapids"]
    static let avx2Cores: Set<String> = ["haswell", "zen"]

    /// The OPENBLAS_CORETYPE to run with instead of `chosen`, or nil to keep it: SkylakeX on a CPU with
    /// AVX-512 (`vectorLevel` 2, as `tether_cpu_vector_level`) when OpenBLAS chose a core without it
    /// (0.3.21 takes a Zen 5 EPYC for Zen and runs AVX2 kernels, half the speed of its AVX-512 ones
    /// there); Haswell with AVX2 and FMA (1) when it chose a pre-AVX2 core; nothing when the
    /// environment chooses itself.
    public static func replacement(chosen: String, vectorLevel: Int, environment: [String: String]) -> String? {
        let core = chosen.lowercased()
        guard environment["OPENBLAS_CORETYPE"] == nil, !avx512Cores.contains(core) else { return nil }
        switch vectorLevel {
        case 2...: return "SkylakeX"
        case 1 where !avx2Cores.contains(core): return "Haswell"
        default: return nil
        }
    }
}

/// Huge pages for the heap. Where transparent huge pages are "madvise" (Debian's default), glibc's
/// malloc asks for them only with the tunable glibc.malloc.hugetlb=1. Without them a two-thread CNN
/// step on this VM ran in one of two modes from run to run, 1,100-1,200 or 1,800-1,900 samples/s: in
/// the slow one the kernels that stride across big buffers (im2col, GEMM's zeroing of C, pooling) took
/// 2-3x the cycles, the signature of TLB misses, which a VM's two-level page walk makes dear. With
/// the tunable, six runs out of six ran at 1,913-2,046 (docs/ARCHITECTURE.md, "Compute threads").
public enum HugePages {
    /// Opting out: TETHER_HUGE_PAGES=0.
    public static let optOutVariable = "TETHER_HUGE_PAGES"
    static let tunable = "glibc.malloc.hugetlb"

    /// The GLIBC_TUNABLES to run with instead of `existing`, or nil to keep it: the tunable added when
    /// the kernel gives huge pages on request (`mode` is /sys/kernel/mm/transparent_hugepage/enabled),
    /// unless the environment already sets it or opts out.
    public static func tunables(existing: String?, mode: String, environment: [String: String]) -> String? {
        guard environment[optOutVariable] != "0", mode.contains("[madvise]") else { return nil }
        let entries = (existing ?? "").split(separator: ":").map(String.init)
        guard !entries.contains(where: { $0.hasPrefix(tunable + "=") }) else { return nil }
        return (entries + [tunable + "=1"]).joined(separator: ":")
    }
}

/// The environment a Tether process runs in, settled before `main` does anything else.
public enum ProcessStart {
    /// Starts this program again (same process, same arguments) when the environment lacks what only
    /// a new start can apply: OPENBLAS_CORETYPE when OpenBLAS misdetected the CPU (`BLASCore`), and
    /// glibc's huge-page tunable (`HugePages`); returns if nothing is missing, or if the new start
    /// fails. Call first in `main`, before any thread of Tether's own. Processes this one starts
    /// inherit the settings, so they start once.
    public static func restartIfNeeded(environment: [String: String]) {
        #if os(Linux)
            let chosen = BLASCore.name
            let core = BLASCore.replacement(chosen: chosen, vectorLevel: BLASCore.cpuVectorLevel, environment: environment)
            let mode = (try? String(contentsOfFile: "/sys/kernel/mm/transparent_hugepage/enabled", encoding: .utf8)) ?? ""
            let tunables = HugePages.tunables(existing: environment["GLIBC_TUNABLES"], mode: mode, environment: environment)
            guard core != nil || tunables != nil else { return }
            if let core {
                setenv("OPENBLAS_CORETYPE", core, 1)
                setenv(BLASCore.detectedVariable, chosen, 1)
            }
            if let tunables { setenv("GLIBC_TUNABLES", tunables, 1) }
            // by the file's own path: the process's name (`ps`, `pkill tether`, `docker top`) is the
            // executed file's name, and /proc/self/exe's would be "exe"
            var path = [CChar](repeating: 0, count: Int(PATH_MAX) + 1)
            // SIGINT and SIGTERM blocked across the exec: one that comes while the new image starts stays
            // pending until StopSignal.install unblocks it, instead of ending it before it can say anything
            var stops = sigset_t(), before = sigset_t()
            sigemptyset(&stops)
            for s in [SIGINT, SIGTERM] { sigaddset(&stops, s) }
            pthread_sigmask(SIG_BLOCK, &stops, &before)
            if readlink("/proc/self/exe", &path, Int(PATH_MAX)) > 0 { execv(path, CommandLine.unsafeArgv) }
            execv("/proc/self/exe", CommandLine.unsafeArgv)  // the file is gone or renamed (rebuilt while running)
            pthread_sigmask(SIG_SETMASK, &before, nil)
            // still here: no /proc (a sandbox); run as we are, and so do our children
            for name in ["OPENBLAS_CORETYPE", BLASCore.detectedVariable, "GLIBC_TUNABLES"] where environment[name] == nil { unsetenv(name) }
            if let existing = environment["GLIBC_TUNABLES"] { setenv("GLIBC_TUNABLES", existing, 1) }
        #endif
    }
}
