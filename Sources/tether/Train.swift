import ArgumentParser
import Foundation
import TetherTrain

struct Train: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Train a model in this process.")

    @OptionGroup var training: TrainingOptions
    @OptionGroup var threads: ThreadOptions
    @Option(help: "Run directory for metrics.jsonl and checkpoint.safetensors.") var runDir = "runs/train"
    @Flag(help: "Continue the run in --run-dir from its checkpoint.") var resume = false
    @Option(help: "Stop this invocation after N global steps, leaving a checkpoint to --resume.") var stopAfterSteps: Int?

    func run() throws {
        threads.apply()
        StopSignal.install()
        do {
            let dir = URL(fileURLWithPath: runDir)
            var base = TrainingConfig()
            if resume { base = try Checkpoint.Loaded(dir.appendingPathComponent(Checkpoint.fileName)).config }
            let trainer = try Trainer(config: training.applied(to: base), runDirectory: dir, resume: resume)
            let summary = try trainer.run(stopAfterSteps: stopAfterSteps)
            if summary.outcome == .interrupted { throw ExitCode(130) }
        } catch let e as ExitCode {
            throw e
        } catch {
            exitWithError(error)
        }
    }
}

struct Eval: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Evaluate a checkpoint on a test set.")

    @Option(help: "The checkpoint file (a run directory's checkpoint.safetensors).") var checkpoint: String
    @Option(help: "Data: \(DataSourceHelp.text) (default: the data the run trained on).") var data: String?
    @Option(help: "Use only the first N test samples.") var testLimit: Int?
    @Flag(help: "Print one JSON object.") var json = false
    @OptionGroup var threads: ThreadOptions

    func run() throws {
        threads.apply()
        do {
            let loaded = try Checkpoint.Loaded(URL(fileURLWithPath: checkpoint))
            let test = try DataSource.load(data ?? loaded.config.data, split: .test, limit: testLimit)
            let model = try ModelFactory.make(loaded.model, for: test, seed: loaded.config.seed)
            try loaded.restore(into: model, optimizer: nil)
            let stats = Evaluation.run(model, on: test)
            if json {
                let out: [String: Any] = ["model": loaded.model, "samples": stats.count, "test_accuracy": stats.accuracy,
                                          "test_loss": stats.meanLoss, "epoch": loaded.state.epoch, "step": loaded.state.globalStep]
                print(String(data: try JSONSerialization.data(withJSONObject: out, options: [.sortedKeys]), encoding: .utf8)!)
            } else {
                print("\(loaded.model) at step \(loaded.state.globalStep): test accuracy \(String(format: "%.2f", 100 * stats.accuracy))%, "
                      + "test loss \(String(format: "%.4f", stats.meanLoss)) on \(stats.count) samples")
            }
        } catch {
            exitWithError(error)
        }
    }
}
