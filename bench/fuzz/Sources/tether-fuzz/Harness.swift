import CFuzzer
import Foundation
import TetherFuzz

// libFuzzer's entry points. TETHER_FUZZ_TARGET names the target; with TETHER_FUZZ_SEEDS=DIR the
// binary writes that target's seeds (real messages and files) into DIR and exits.
nonisolated(unsafe) var target = FuzzTarget.envelope

@_cdecl("LLVMFuzzerInitialize")
public func initialize(_ argc: UnsafeMutablePointer<Int32>, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?>) -> Int32 {
    let env = ProcessInfo.processInfo.environment
    guard let name = env["TETHER_FUZZ_TARGET"], let t = FuzzTarget(rawValue: name) else {
        FileHandle.standardError.write(Data("tether-fuzz: set TETHER_FUZZ_TARGET to one of \(FuzzTarget.allCases.map(\.rawValue).joined(separator: ", "))\n".utf8))
        exit(2)
    }
    target = t
    if let dir = env["TETHER_FUZZ_SEEDS"] {
        try? FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        for (i, seed) in t.seeds.enumerated() { FileManager.default.createFile(atPath: "\(dir)/seed-\(i)", contents: Data(seed)) }
        exit(0)
    }
    return 0
}

@_cdecl("LLVMFuzzerTestOneInput")
public func testOneInput(_ data: UnsafePointer<UInt8>?, _ size: Int) -> Int32 {
    target.run(size == 0 ? [] : Array(UnsafeBufferPointer(start: data, count: size)))
    return 0
}

/// SwiftPM gives an executable an entry point of its own, so libFuzzer's main is not linked in:
/// this one hands the command line to libFuzzer's driver.
@main struct Harness {
    static func main() {
        var argc = CommandLine.argc
        var argv: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>? = CommandLine.unsafeArgv
        exit(LLVMFuzzerRunDriver(&argc, &argv) { data, size in testOneInput(data, size) })
    }
}
