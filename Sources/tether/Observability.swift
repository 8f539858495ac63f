import ArgumentParser
import Foundation
import TetherObservability
import TetherTrain

/// Where `train`, `simulate` and `coordinator` show a run besides metrics.jsonl: Prometheus and
/// TensorBoard. The sinks live as long as the process, across a job's restarts.
struct ObservabilityOptions: ParsableArguments {
    @Option(
        help:
            "Serve Prometheus metrics at http://HOST:PORT/metrics while the run lasts (a port alone: loopback, e.g. 9400; 0.0.0.0:9400 for a scraper on another host)."
    )
    var metricsListen: String?
    @Option(
        help:
            "Write the run's scalars (loss, throughput, held-out metrics, per-rank times and bytes) as TensorBoard event files into this folder."
    )
    var tensorboard: String?

    /// The sinks asked for; a note of each address or file goes to `progress`.
    func sinks(progress: ProgressDisplay) throws -> [any MetricsSink] {
        var sinks: [any MetricsSink] = []
        if let metricsListen {
            let exporter = try PrometheusExporter(listen: metricsListen)
            progress.line("metrics: http://\(exporter.boundAddress)/metrics")
            sinks.append(exporter)
        }
        if let tensorboard {
            let writer = try TensorBoardWriter(directory: tensorboard)
            progress.line("tensorboard: \(writer.path) (tensorboard --logdir \(tensorboard))")
            sinks.append(writer)
        }
        return sinks
    }
}
