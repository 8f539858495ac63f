import Foundation
import TetherData

/// A test hook: with `TETHER_TEST_SAMPLE_LOG=DIR` in its environment, a process appends lines to
/// DIR/samples-PID.log that say which samples each step used, so a test can check that each one was
/// used exactly once per epoch across failures, joins and restarts:
///
///     start RING STEP NANOS PARENT  this process trains on ring RING from the state of global step STEP,
///                                   from NANOS on the monotonic clock (one clock for every process of
///                                   a host); the state came from ring PARENT ("-": a fresh run)
///     step RING STEP EPOCH IDS      its gradient for global step STEP (1-based) on RING is of these samples
///     checkpoint RING STEP          (the coordinator) it wrote the checkpoint of STEP, trained on RING
///
/// A `step` line is written before the gradient is exchanged, so a process killed afterwards has
/// already said what it contributed. RING names one forming of the ring (the same on every member).
/// The run's lineage is a chain of formings, each taking its state from its parent: a re-formation's
/// from the member furthest along, a restarted coordinator's from a checkpoint or from what the
/// workers kept. A forming counts the steps from its start to its child's start; a forming outside the
/// chain (one that trained on while its coordinator was being replaced) counts nothing.
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

    /// This process starts training on `ring` from the state of `globalStep` steps done, which the ring
    /// `parent` trained ("-": none).
    public func start(ring: String, globalStep: Int, parent: String) {
        write("start \(ring) \(globalStep) \(DispatchTime.now().uptimeNanoseconds) \(parent)\n")
    }

    /// The coordinator wrote the checkpoint of `globalStep`, trained on `ring`.
    public func checkpoint(ring: String, globalStep: Int) { write("checkpoint \(ring) \(globalStep)\n") }

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
    /// global step `last` (the job's final one). The last forming is the one the last checkpoint came
    /// from (else the latest to start among those that logged step `last`); from it the chain of
    /// parents is followed back, and each forming of the chain counts its steps from its start to its
    /// child's start (the last: to `last`), every member's `step` lines of them together. A step no
    /// forming of the chain logged is missing from the result; a line that does not parse, members that
    /// disagree on a forming's start or parent, or a cycle of parents, is an error.
    public static func steps(in directory: URL, through last: Int) throws -> [Int: Step] {
        struct Forming { var start: Int, began: UInt64, parent: String }
        var formings: [String: Forming] = [:], lines: [String: [Int: Step]] = [:]
        var checkpoints: [(ring: String, step: Int)] = []
        for file in try FileManager.default.contentsOfDirectory(atPath: directory.path).sorted() where file.hasPrefix("samples-") {
            let text = try String(contentsOf: directory.appendingPathComponent(file), encoding: .utf8)
            for line in text.split(separator: "\n") {
                let f = line.split(separator: " ", omittingEmptySubsequences: false).map(String.init)
                func bad() -> Error { DataError.invalid("\(file): a bad audit line: \(line)") }
                switch f.first {
                case "start":
                    guard f.count == 5, let step = Int(f[2]), let began = UInt64(f[3]) else { throw bad() }
                    if let known = formings[f[1]], known.start != step || known.parent != f[4] {
                        throw DataError.invalid(
                            "\(file): ring \(f[1]) starts at step \(step) from \(f[4]) here, at \(known.start) from \(known.parent) elsewhere"
                        )
                    }
                    formings[f[1]] = Forming(start: step, began: min(formings[f[1]]?.began ?? began, began), parent: f[4])
                case "step":
                    guard f.count == 5, let step = Int(f[2]), let epoch = Int(f[3]) else { throw bad() }
                    let samples = try f[4].split(separator: ",").map { try Int($0) ?? { throw bad() }() }
                    lines[f[1], default: [:]][step, default: Step(epoch: epoch, samples: [])].samples += samples
                case "checkpoint":
                    guard f.count == 3, let step = Int(f[2]) else { throw bad() }
                    checkpoints.append((f[1], step))
                default: throw bad()
                }
            }
        }
        let finalRing =
            checkpoints.last(where: { $0.step == last && formings[$0.ring] != nil })?.ring
            ?? formings.filter { lines[$0.key]?[last] != nil || $0.value.start == last }.max { $0.value.began < $1.value.began }?.key
        guard var ring = finalRing else { return [:] }
        var chain = [ring]
        while let parent = formings[ring]?.parent, formings[parent] != nil {
            guard !chain.contains(parent) else { throw DataError.invalid("the audit's rings form a cycle of parents at \(parent)") }
            chain.insert(parent, at: 0)
            ring = parent
        }
        var counted: [Int: Step] = [:]
        for (k, ring) in chain.enumerated() {
            let start = formings[ring]!.start, end = k + 1 < chain.count ? formings[chain[k + 1]]!.start : last
            guard start < end else { continue }
            for step in (start + 1)...end {
                if var s = lines[ring]?[step] {
                    s.samples.sort()
                    counted[step] = s
                }
            }
        }
        return counted
    }
}
