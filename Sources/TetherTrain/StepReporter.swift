import Foundation
import TetherNN

/// Where a run's events go besides the terminal: metrics.jsonl always; Prometheus and TensorBoard
/// when asked. A sink sees every event in the order written.
public protocol MetricsSink: AnyObject {
    func record(_ e: MetricsEvent) throws
    /// Every step as it completes (events carry only every --log-every'th): for running totals.
    func stepCompleted(globalStep: Int, ranks: RankFigures?)
    /// The job's present state (the coordinator's view; refreshed about twice a second).
    func observe(_ status: JobStatus)
}

extension MetricsSink {
    public func stepCompleted(globalStep: Int, ranks: RankFigures?) {}
    public func observe(_ status: JobStatus) {}
}

/// What a cluster job looks like now, beyond its events.
public struct JobStatus: Sendable, Equatable {
    /// The members of the ring, and per rank the seconds since its last message.
    public var workersAlive: Int
    public var heartbeatAge: [Double]
    public init(workersAlive: Int, heartbeatAge: [Double]) { (self.workersAlive, self.heartbeatAge) = (workersAlive, heartbeatAge) }
}

/// A cluster step's per-rank figures: seconds of compute, of exchange (left after backward) and of it
/// waiting for a neighbour, of the optimizer; payload bytes sent, dense and sparse.
public struct RankFigures: Sendable, Equatable {
    public var compute: [Double], exchange: [Double], waiting: [Double], optimizer: [Double]
    public var denseBytes: [Double], sparseBytes: [Double]
    public init(
        compute: [Double], exchange: [Double], waiting: [Double], optimizer: [Double], denseBytes: [Double], sparseBytes: [Double]
    ) {
        (self.compute, self.exchange, self.waiting, self.optimizer, self.denseBytes, self.sparseBytes) = (
            compute, exchange, waiting, optimizer, denseBytes, sparseBytes
        )
    }
    /// The rank whose compute took longest (the others wait for it in the exchange).
    public var slowestRank: Int { compute.indices.max { compute[$0] < compute[$1] } ?? 0 }
}

/// A run's progress, one home for `train` and the coordinator: the throughput window since the last
/// step line, the ETA, the progress bar and log line, and every sink.
public final class StepReporter {
    public let progress: ProgressDisplay
    public private(set) var sinks: [any MetricsSink]
    let stepsPerEpoch: Int, totalSteps: Int, epochs: Int, logEvery: Int
    /// What the rate counts: samples, or tokens for a language model.
    public let unit: String
    private(set) var window = Window()

    struct Window {
        var stats = BatchStats(), since = Date(), steps = 0
        var compute = 0.0, exchange = 0.0, waiting = 0.0, bytesSent = 0.0
    }

    public init(
        progress: ProgressDisplay, sinks: [any MetricsSink], stepsPerEpoch: Int, totalSteps: Int, epochs: Int, logEvery: Int, unit: String
    ) {
        (self.progress, self.sinks, self.stepsPerEpoch, self.totalSteps) = (progress, sinks, stepsPerEpoch, totalSteps)
        (self.epochs, self.logEvery, self.unit) = (epochs, logEvery, unit)
    }

    public func add(_ sink: any MetricsSink) { sinks.append(sink) }

    /// An event to every sink, in order; the first sink's failure (a full disk) is the error.
    public func record(_ e: MetricsEvent) throws { for sink in sinks { try sink.record(e) } }

    public func observe(_ status: JobStatus) { for sink in sinks { sink.observe(status) } }

    /// Rates count from now (after start-up, a pause or a re-formation).
    public func restartWindow() { window = Window() }

    /// `globalStep` steps are done, the last in `epoch` (0-based) with `stats` at rate `lr`: the bar is
    /// redrawn, and every `logEvery` steps a `step` event goes to the sinks and a line to the log.
    public func stepCompleted(globalStep: Int, epoch: Int, stats: BatchStats, lr: Double, ranks: RankFigures? = nil) throws {
        for sink in sinks { sink.stepCompleted(globalStep: globalStep, ranks: ranks) }
        window.stats = window.stats + stats
        window.steps += 1
        if let ranks {
            window.compute += ranks.compute.max() ?? 0
            window.exchange += ranks.exchange.max() ?? 0
            window.waiting += ranks.waiting.max() ?? 0
            window.bytesSent += zip(ranks.denseBytes, ranks.sparseBytes).lazy.map(+).max() ?? 0
        }
        let elapsed = Date().timeIntervalSince(window.since)
        let rate = Double(window.stats.count) / max(elapsed, 1e-9)
        let remaining = Double(totalSteps - globalStep) * elapsed / Double(max(window.steps, 1))
        let stepInEpoch = (globalStep - 1) % stepsPerEpoch + 1
        progress.update(
            epoch: epoch, epochs: epochs, step: stepInEpoch, steps: stepsPerEpoch, loss: window.stats.meanLoss, rate: rate, unit: unit,
            eta: remaining)
        guard globalStep % logEvery == 0 else { return }
        var e = MetricsEvent(event: "step", step: globalStep, stepsPerEpoch: stepsPerEpoch)
        (e.loss, e.samples_per_sec, e.lr) = (window.stats.meanLoss, rate, lr)
        var line =
            "epoch \(epoch + 1) step \(stepInEpoch)/\(stepsPerEpoch) loss \(ProgressDisplay.fixed(window.stats.meanLoss, 4)) "
            + "\(ProgressDisplay.grouped(rate)) \(unit)/s"
        if let ranks {
            (e.compute_s, e.allreduce_s, e.wait_s, e.optimizer_s) = (ranks.compute, ranks.exchange, ranks.waiting, ranks.optimizer)
            (e.dense_bytes, e.sparse_bytes) = (ranks.denseBytes, ranks.sparseBytes)
            line += ", " + Self.perStep(window, slowestRank: ranks.slowestRank)
        }
        try record(e)
        progress.log(line + ", ETA \(ProgressDisplay.duration(remaining))")
        window = Window()
    }

    /// The step line's cluster part: the window's means per step, each the largest rank's (the busiest
    /// sender's bytes: what --compression changes).
    static func perStep(_ w: Window, slowestRank: Int) -> String {
        let per = Double(max(w.steps, 1))
        return "per step: compute \(ms(w.compute / per)), exchange \(ms(w.exchange / per)) (waiting \(ms(w.waiting / per))), "
            + "\(ProgressDisplay.bytes(w.bytesSent / per)) sent, slowest rank \(slowestRank)"
    }

    static func ms(_ seconds: Double) -> String { ProgressDisplay.fixed(seconds * 1000, 1) + " ms" }
}

extension MetricsLog: MetricsSink {
    public func record(_ e: MetricsEvent) throws { try write(e) }
}
