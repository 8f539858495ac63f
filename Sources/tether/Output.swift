import ArgumentParser
import Foundation
import TetherCluster
import TetherTrain

/// What `train`, `simulate` and `coordinator` print: progress lines (or nothing, --quiet), one final
/// JSON object on stdout (--json, progress going to stderr), or the settings they would run with
/// (--print-config).
struct OutputOptions: ParsableArguments {
    @Flag(help: "Print nothing but errors and warnings.") var quiet = false
    @Flag(help: "Print one JSON object on stdout when the run ends (the end event with the last evaluation); progress goes to stderr.")
    var json = false
    @Flag(
        help:
            "Print the settings this command would run with (after the job file, TETHER_ variables and flags; on --resume, the checkpoint's) as JSON, and exit."
    )
    var printConfig = false

    var progress: ProgressDisplay { ProgressDisplay(toStandardError: json, quiet: quiet) }

    /// With --print-config: the settings, as one JSON object, and true (the command then exits).
    func printedConfig(_ command: String, _ config: TrainingConfig, _ settings: [String: Any]) throws -> Bool {
        guard printConfig else { return false }
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys]
        var object = settings
        object["command"] = command
        object["config"] = try JSONSerialization.jsonObject(with: encoder.encode(config))
        print(
            String(
                decoding: try JSONSerialization.data(
                    withJSONObject: object, options: [.sortedKeys, .prettyPrinted, .withoutEscapingSlashes]), as: UTF8.self))
        return true
    }

    /// With --json: how a cluster job ended.
    func printSummary(_ coordinator: Coordinator) throws {
        guard let end = coordinator.endEvent else { return }
        try printSummary(end, lastEvaluation: coordinator.lastEvaluation, runDirectory: coordinator.runDirectory.path)
    }

    /// With --json: `end` (and the last evaluation's metrics, the run directory and checkpoint) as one object.
    func printSummary(_ end: MetricsEvent, lastEvaluation: MetricsEvent?, runDirectory: String) throws {
        guard json else { return }
        var summary = end
        if let e = lastEvaluation {
            (summary.test_accuracy, summary.test_loss, summary.test_perplexity, summary.test_auc) = (
                e.test_accuracy, e.test_loss, e.test_perplexity, e.test_auc
            )
            summary.loss = e.loss
        }
        var object = try JSONSerialization.jsonObject(with: MetricsLog.encode(summary)) as! [String: Any]
        object["run_dir"] = runDirectory
        object["checkpoint"] = URL(fileURLWithPath: runDirectory).appendingPathComponent(Checkpoint.fileName).path
        print(
            String(
                decoding: try JSONSerialization.data(withJSONObject: object, options: [.sortedKeys, .withoutEscapingSlashes]), as: UTF8.self
            ))
    }
}

/// `tether models`: the model families, what each is, and the defaults a new run of it takes.
struct Models: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "List the model families, their defaults and their data.")

    @Flag(help: "Print one JSON object.") var json = false

    func run() throws {
        let rows = ModelFamily.all.map { family -> [String: Any] in
            let c = TrainingConfig.defaults(for: family.name)
            return [
                "model": family.name, "description": family.summary, "data": c.data, "batch": c.batch, "epochs": c.epochs,
                "optimizer": c.optimizer.kind.rawValue, "lr": c.schedule.baseLR, "schedule": c.schedule.kind.rawValue
            ]
        }
        if json {
            print(
                String(
                    decoding: try JSONSerialization.data(withJSONObject: ["models": rows], options: [.sortedKeys, .withoutEscapingSlashes]),
                    as: UTF8.self))
            return
        }
        for row in rows {
            print(
                "\(row["model"]!)\n  \(row["description"]!)\n  data \(row["data"]!), batch \(row["batch"]!), epochs \(row["epochs"]!), "
                    + "\(row["optimizer"]!) lr \(row["lr"]!) (\(row["schedule"]!) schedule)")
        }
        print("\nData: \(DataSource.help). Any default can be changed by its flag (tether train --help).")
    }
}
