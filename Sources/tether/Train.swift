import ArgumentParser
import Foundation
import TetherTensor
import TetherTrain

struct Train: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Train a model in this process.")

    @OptionGroup var training: TrainingOptions
    @OptionGroup var threads: ResourceOptions
    @OptionGroup var jobFile: JobFileOption
    @Option(help: "Run directory for metrics.jsonl and checkpoint.safetensors.") var runDir = "runs/train"
    @Flag(help: "Continue the run in --run-dir from its checkpoint.") var resume = false
    @Flag(help: "Start a new run in a --run-dir that holds one, deleting its checkpoint and metrics.") var force = false
    @Option(help: "Stop this invocation after N global steps, leaving a checkpoint to --resume.") var stopAfterSteps: Int?
    @OptionGroup var output: OutputOptions
    @OptionGroup var observability: ObservabilityOptions

    func run() throws {
        threads.apply(holder: "this process")
        StopSignal.install()
        do {
            let dir = URL(fileURLWithPath: runDir)
            var base = TrainingConfig()
            if resume { base = try Checkpoint.Loaded(dir.appendingPathComponent(Checkpoint.fileName)).config }
            let config = try training.applied(to: base)
            if try output.printedConfig("train", config, ["run_dir": runDir, "resume": resume, "threads": Compute.threads]) { return }
            let started = Date()
            let progress = output.progress
            let trainer = try Trainer(
                config: config, runDirectory: dir, resume: resume, force: force, progress: progress,
                sinks: try observability.sinks(progress: progress))
            let summary = try trainer.run(stopAfterSteps: stopAfterSteps)
            var end = MetricsEvent(
                event: summary.outcome == .finished ? "end" : summary.outcome == .interrupted ? "interrupted" : "stopped",
                step: summary.state.globalStep, stepsPerEpoch: trainer.workload.stepsPerEpoch)
            (end.model, end.elapsed_s) = (config.model, Date().timeIntervalSince(started))
            try output.printSummary(end, lastEvaluation: trainer.lastEvaluation, runDirectory: runDir)
            if summary.outcome == .interrupted { throw ExitCode(StopSignal.exitStatus) }
        } catch let e as ExitCode {
            throw e
        } catch {
            exitWithError(error)
        }
    }
}

struct Eval: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Evaluate a checkpoint on its held-out split.")

    @Option(help: "The checkpoint file (a run directory's checkpoint.safetensors).") var checkpoint: String
    @Option(help: "Data: \(DataSource.help) (default: the data the run trained on).") var data: String?
    @Option(
        help: "For csv: data, the schema: adult or a schema file (default: the one the run trained with, which the checkpoint carries).")
    var schema: String?
    @Option(help: "Use only the first N held-out samples (tokens for lm-tied).") var testLimit: Int?
    @Flag(help: "Print one JSON object.") var json = false
    @OptionGroup var threads: ResourceOptions
    @OptionGroup var jobFile: JobFileOption

    func run() throws {
        threads.apply(holder: "this process")
        do {
            let loaded = try Checkpoint.Loaded(URL(fileURLWithPath: checkpoint))
            var config = loaded.config
            if let data { config.data = data }
            if let schema { config.useSchema(schema) }
            config.testLimit = testLimit
            config = try config.withFilesResolved()
            let workload = try Workloads.make(config, metadata: loaded.file.metadata)
            try loaded.restore(into: workload.model, optimizer: nil)
            let report = workload.evaluate()
            if json {
                var e = MetricsEvent(event: "eval", step: loaded.state.globalStep, stepsPerEpoch: workload.stepsPerEpoch)
                // the run's own epoch (a cluster's epoch has fewer, larger steps than this one process's)
                let s = loaded.state
                e.epoch = s.stepInEpoch == 0 ? max(s.epoch, 1) : s.epoch + 1
                (e.model, e.samples) = (loaded.model, report.stats.count)
                report.write(into: &e)
                print(String(decoding: try MetricsLog.encode(e), as: UTF8.self))
            } else {
                print(
                    "\(loaded.config.modelName) at step \(loaded.state.globalStep): \(report.summary) on \(report.stats.count) \(workload.unit)"
                )
            }
        } catch {
            exitWithError(error)
        }
    }
}
