import Foundation

/// A test hook: with `TETHER_TEST_SAMPLE_LOG=DIR` in its environment, a process appends one line per
/// step it completes (its exchange done, its update applied) to DIR/samples-PID.log: the global step
/// and this shard's sample indices. Over every process of a run, the lines show which samples each
/// step used, so a test can check each one was used exactly once per epoch across failures and joins.
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

    /// `globalStep`: the steps done once this one is (1-based); `samples`: this shard's of it.
    public func record(globalStep: Int, epoch: Int, samples: [Int]) {
        let line = "\(globalStep) \(epoch) " + samples.map(String.init).joined(separator: ",") + "\n"
        lock.withLock { handle.write(Data(line.utf8)) }
    }
}
