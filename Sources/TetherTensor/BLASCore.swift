import CBLAS
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
/// OPENBLAS_CORETYPE set: `chooseAgainIfMisdetected()` does that, once, at the start of the process.
/// An OPENBLAS_CORETYPE the user set is always kept.
public enum BLASCore {
    /// The core OpenBLAS chose (e.g. "Haswell", "SkylakeX", "Prescott").
    public static var name: String { String(cString: openblas_get_corename()) }

    /// `tether_cpu_vector_level`: 2 with AVX-512, 1 with AVX2 and FMA, 0 otherwise.
    public static var cpuVectorLevel: Int { Int(tether_cpu_vector_level()) }

    /// Set by `chooseAgainIfMisdetected` to the core OpenBLAS had taken, for `tether version` to say.
    public static let detectedVariable = "TETHER_OPENBLAS_DETECTED"

    /// OpenBLAS's cores whose kernels use AVX2 or AVX-512 (lower-cased): a choice among them is kept.
    static let vectorCores: Set<String> = ["haswell", "zen", "skylakex", "cooperlake", "sapphirerapids"]

    /// The OPENBLAS_CORETYPE to run with instead of `chosen`, or nil to keep it: SkylakeX on a CPU with
    /// AVX-512 (`vectorLevel` 2, as `tether_cpu_vector_level`), Haswell with AVX2 and FMA (1), when
    /// OpenBLAS chose a core without them and the environment does not choose one itself.
    public static func replacement(chosen: String, vectorLevel: Int, environment: [String: String]) -> String? {
        guard environment["OPENBLAS_CORETYPE"] == nil, !vectorCores.contains(chosen.lowercased()) else { return nil }
        switch vectorLevel {
        case 2...: return "SkylakeX"
        case 1: return "Haswell"
        default: return nil
        }
    }

    /// Starts this program again (same process, same arguments) with OPENBLAS_CORETYPE set when
    /// `replacement` says so; returns if it does not, or if the new start fails. Call first in `main`,
    /// before any thread of Tether's own. Processes this one starts inherit the setting.
    public static func chooseAgainIfMisdetected(environment: [String: String]) {
        #if os(Linux)
            let chosen = name
            guard let core = replacement(chosen: chosen, vectorLevel: cpuVectorLevel, environment: environment) else {
                return
            }
            setenv("OPENBLAS_CORETYPE", core, 1)
            setenv(detectedVariable, chosen, 1)
            // by the file's own path: the process's name (`ps`, `pkill tether`, `docker top`) is the
            // executed file's name, and /proc/self/exe's would be "exe"
            var path = [CChar](repeating: 0, count: Int(PATH_MAX) + 1)
            if readlink("/proc/self/exe", &path, Int(PATH_MAX)) > 0 { execv(path, CommandLine.unsafeArgv) }
            execv("/proc/self/exe", CommandLine.unsafeArgv)  // the file is gone or renamed (rebuilt while running)
            // still here: no /proc (a sandbox); run on what OpenBLAS chose, and so do our children
            unsetenv("OPENBLAS_CORETYPE")
            unsetenv(detectedVariable)
        #endif
    }
}
