import Foundation
import TetherData

/// A test hook: with `TETHER_TEST_SAMPLE_LOG=DIR` in its environment, a process appends lines to
/// DIR/samples-PID.log that say which samples each step used, so a test can check that each one was
/// used exactly once per epoch across failures, joins and restarts:
///
///     start RING STEP NANOS      this process trains on ring RING from the state of global step STEP,
///                                from NANOS on the monotonic clock (one clock for every process of a host)
///     step RING STEP EPOCH IDS   its gradient for global step STEP (1-based) on RING is of these samples
///
/// A `step` line is written before the gradient is exchanged, so a process killed afterwards has
/// already said what it contributed. RING names one forming of the ring (the same on every member).
/// A step attempted on a ring counts when the ring's next forming starts after it (or, on the last
/// ring, when the job stopped after it); a step the next forming starts before was redone there.
/// Off (nil) unless the variable is set; never set in production.
public final class SampleAudit: @unchecked Sendable {
    public static let variable = "TETHER_TEST_SAMPLE_LOG"
    public static let shared: SampleAudit? = ProcessInfo.processInfo.environment[variable].flatMap { SampleAudit(directory: $0) }

    private let handle: FileHandle
    private let lock = NSLock()

    init?(directory: String) {
        let path = (directory as NSString).appendingPathComponent("samples-\(getpid()).log")
        guard FileManager.default.createFile(atPath: path, contents: nil), let h = FileHandle(forWritingAtPath: path) else { return nil }
        handle = h
    }

    /// This process starts training on `ring` from the state of `globalStep` steps done.
    public func start(ring: String, globalStep: Int) {
        write("start \(ring) \(globalStep) \(DispatchTime.now().uptimeNanoseconds)\n")
    }

    /// `globalStep`: the steps done once this one is (1-based); `samples`: this shard's of it.
    public func record(ring: String, globalStep: Int, epoch: Int, samples: [Int]) {
        write("step \(ring) \(globalStep) \(epoch) " + samples.map(String.init).joined(separator: ",") + "\n")
    }

    /// One write(2) per line: what is written survives a SIGKILL of the process right after.
    private func write(_ line: String) { lock.withLock { handle.write(Data(line.utf8)) } }
}

extension SampleAudit {
    public struct Step: Equatable, Sendable {
        public var epoch: Int
        /// Every shard's samples of the step, sorted.
        public var samples: [Int]
    }

    /// The samples of every step that counts in the run whose processes logged to `directory`, through
    /// global step `last` (the job's final one): the formings of the ring in the order they started,
    /// each counting the steps from its start to the next one's (the last: to `last`), every member's
    /// `step` lines of them together. A step no forming logged is missing from the result; a line that
    /// does not parse, or members that disagree on a forming's start, is an error.
    public static func steps(in directory: URL, through last: Int) throws -> [Int: Step] {
        struct Forming { var start: Int, began: UInt64 }
        var formings: [String: Forming] = [:], lines: [String: [Int: Step]] = [:]
        for file in try FileManager.default.contentsOfDirectory(atPath: directory.path).sorted() where file.hasPrefix("samples-") {
            let text = try String(contentsOf: directory.appendingPathComponent(file), encoding: .utf8)
            for line in text.split(separator: "\n") {
                let f = line.split(separator: " ", omittingEmptySubsequences: false).map(String.init)
                func bad() -> Error { DataError.invalid("\(file): a bad audit line: \(line)") }
                switch f.first {
                case "start":
                    guard f.count == 4, let step = Int(f[2]), let began = UInt64(f[3]) else { throw bad() }
                    if let known = formings[f[1]], known.start != step {
                        throw DataError.invalid("\(file): ring \(f[1]) starts at step \(step) here, at \(known.start) elsewhere")
                    }
                    formings[f[1], default: Forming(start: step, began: began)].began = min(formings[f[1]]?.began ?? began, began)
                case "step":
                    guard f.count == 5, let step = Int(f[2]), let epoch = Int(f[3]) else { throw bad() }
                    let samples = try f[4].split(separator: ",").map { try Int($0) ?? { throw bad() }() }
                    lines[f[1], default: [:]][step, default: Step(epoch: epoch, samples: [])].samples += samples
                default: throw bad()
                }
            }
        }
        let order = formings.sorted { $0.value.began < $1.value.began }
        var counted: [Int: Step] = [:]
        for (k, (ring, forming)) in order.enumerated() {
            let end = k + 1 < order.count ? order[k + 1].value.start : last
            // a later forming that starts before this one's steps redoes them
            for step in counted.keys where step > forming.start { counted[step] = nil }
            guard forming.start < end else { continue }
            for step in (forming.start + 1)...end {
                if var s = lines[ring]?[step] {
                    s.samples.sort()
                    counted[step] = s
                }
            }
        }
        return counted
    }
}
