import ArgumentParser
import Foundation
import TetherCluster
import TetherComm
import TetherMessages
import TetherObservability
import TetherTrain

/// `tether bench sinks`: what each observability sink costs a step, measured directly (the machine's
/// noise in a whole run's samples/s is several times the figure sought). Each sink is fed what a
/// 2-worker job gives it per step, STEPS times: Prometheus its per-step totals, a step event every
/// --log-every steps and a scrape every `scrapeEvery` steps; TensorBoard the step events; the
/// timeline each rank's spans, including encoding them into the step report on the worker and
/// decoding them on the coordinator. Prints microseconds per step for each, and as a share of
/// `--step-ms` (a step of `simulate --workers 2` mlp-wn here).
struct BenchSinks: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "sinks", abstract: "Measure what each observability sink costs a training step.")

    @Option(help: "Steps fed to each sink (median of --repeats).") var steps = 20_000
    @Option(help: "Repeats.") var repeats = 5
    @Option(help: "Ranks.") var ranks = 2
    @Option(help: "A step's time to compare with, in milliseconds.") var stepMs = 7.6
    @Option(help: "Steps between metrics lines (the run's --log-every).") var logEvery = 50
    @Option(help: "Steps between Prometheus scrapes (130 steps/s scraped every 15 s: ~2000; every second: 130).") var scrapeEvery = 130

    func run() throws {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("tether-bench-sinks-\(getpid())")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: dir) }
        let figures = RankFigures(
            compute: Array(repeating: 0.005, count: ranks), exchange: Array(repeating: 0.002, count: ranks),
            waiting: Array(repeating: 0.001, count: ranks), optimizer: Array(repeating: 0.0005, count: ranks),
            denseBytes: Array(repeating: 1e6, count: ranks),
            sparseBytes: Array(repeating: 0, count: ranks))
        func stepEvent(_ s: Int) -> MetricsEvent {
            var e = MetricsEvent(event: "step", step: s, stepsPerEpoch: 1000)
            (e.loss, e.samples_per_sec, e.lr, e.compute_s, e.allreduce_s, e.wait_s, e.optimizer_s) = (
                0.5, 16000, 0.001, figures.compute, figures.exchange, figures.waiting, figures.optimizer
            )
            (e.dense_bytes, e.sparse_bytes) = (figures.denseBytes, figures.sparseBytes)
            return e
        }
        /// Median seconds per step of `body(step)` over `repeats` runs of `steps` steps.
        func timed(_ body: (Int) throws -> Void) rethrows -> Double {
            var runs: [Double] = []
            for _ in 0..<repeats {
                let t = ContinuousClock.now
                for s in 1...steps { try body(s) }
                let d = t.duration(to: .now).components
                runs.append((Double(d.seconds) + Double(d.attoseconds) * 1e-18) / Double(steps))
            }
            return runs.sorted()[runs.count / 2]
        }
        var results: [(String, Double)] = []
        let exporter = try PrometheusExporter(listen: "127.0.0.1:0")
        defer { exporter.stop() }
        results.append(
            (
                "prometheus",
                try timed { s in
                    exporter.stepCompleted(globalStep: s, ranks: figures)
                    if s % logEvery == 0 { try exporter.record(stepEvent(s)) }
                    if s % scrapeEvery == 0 { _ = exporter.exposition() }
                }
            ))
        let board = try TensorBoardWriter(directory: dir.appendingPathComponent("tb").path)
        results.append(("tensorboard", try timed { s in if s % logEvery == 0 { try board.record(stepEvent(s)) } }))
        let timeline = try Timeline(path: dir.appendingPathComponent("trace.json").path)
        var times = StepTimes()
        (times.compute, times.exchange, times.optimizer) = (0.005, 0.002, 0.0005)
        let buckets = [("all-reduce bucket 0 (262144 values)", UInt64(0), UInt64(900)), ("all-reduce bucket 1 (7700 values)", 900, 1000)]
        var plain = StepReport(
            globalStep: 1, epoch: 0, lossSum: 40, count: 64, correct: 50, computeSeconds: 0.005,
            allreduceSeconds: 0.002, optimizerSeconds: 0.0005, parameterHash: 0, waitSeconds: 0.001)
        plain.learningRate = 0.001
        let withSpans = try timed { s in
            for rank in 0..<ranks {
                // the worker: its spans, into its report; the coordinator: the report decoded, the spans written
                var report = plain
                report.spans = Timeline.stepSpans(began: 1_796_000_000_000_000 + UInt64(s) * 7600, times: times, collectives: buckets)
                let decoded = try Envelope(decoding: Envelope(jobID: "bench", senderRank: Int32(rank), body: .stepReport(report)).encoded())
                guard case .stepReport(let r)? = decoded.body else { continue }
                try timeline.add(rank: rank, globalStep: s, spans: r.spans)
            }
        }
        // what a step report costs without spans (subtracted: every job pays it)
        let without = try timed { _ in
            for rank in 0..<ranks {
                _ = try Envelope(decoding: Envelope(jobID: "bench", senderRank: Int32(rank), body: .stepReport(plain)).encoded())
            }
        }
        results.append(("timeline", withSpans - without))
        timeline.close()
        for (name, seconds) in results {
            let us = seconds * 1e6
            print(
                String(
                    format: "%-12@ %8.2f us per step  %6.3f%% of a %.1f ms step", name as NSString, us, us / (stepMs * 1000) * 100, stepMs))
        }
    }
}
