import Foundation
import TetherData
import TetherNN
import TetherTensor

/// How a training invocation ended.
public struct TrainingSummary: Sendable {
    public enum Outcome: Sendable, Equatable { case finished, stoppedEarly, interrupted }
    public var outcome: Outcome
    public var state: TrainingState
    public var lastTest: EvaluationReport?
    public var parameterHash: UInt64
}

/// Single-process training: the loop every Tether run follows, with checkpoints, metrics and progress.
///
/// Per step: the workload's batch for (epoch, step) -> forward/backward (gradients scaled to the batch
/// mean) -> one optimizer step at the schedule's rate. At each epoch end: the held-out split is
/// evaluated, a line goes to metrics.jsonl and the checkpoint is rewritten. Resuming reloads
/// parameters, optimizer state, buffers (a language model's carried state), the data cursor and the
/// dropout RNG, and continues bitwise as if never stopped.
public final class Trainer {
    public let config: TrainingConfig
    public let directory: RunDirectory
    public var runDirectory: URL { directory.url }
    public let workload: any Workload
    public var model: any Model<Float> { workload.model }
    public let optimizer: Optimizer<Float>
    public private(set) var state: TrainingState
    /// metrics.jsonl and any other sink, the throughput window and the progress view
    public let reporter: StepReporter
    var progress: ProgressDisplay { reporter.progress }
    let stepsPerEpoch: Int
    public let totalSteps: Int

    public var checkpointURL: URL { directory.checkpointURL }
    /// The metrics line of the last evaluation this run made (an epoch's end, or the run's end within one).
    public private(set) var lastEvaluation: MetricsEvent?

    /// Prepares a run in `runDirectory`: a fresh one (which must not already hold a checkpoint), or with
    /// `resume`, the continuation of the checkpoint there. `overrides` are the flags given on the
    /// command line; on resume only the run's length may change. Events go to metrics.jsonl, then `sinks`.
    public init(
        config given: TrainingConfig, runDirectory: URL, resume: Bool, force: Bool = false, progress: ProgressDisplay = ProgressDisplay(),
        sinks: [any MetricsSink] = []
    ) throws {
        let config = try given.withFilesResolved()
        try config.validate()
        directory = try RunDirectory(runDirectory, config: config, resume: resume, force: force, progress: progress)
        let loaded = directory.resumed
        ProcessMemory.keepFreedBuffers()
        do { workload = try Workloads.make(config, metadata: loaded?.file.metadata ?? [:]) } catch {
            directory.removeUnstarted()  // data that does not load: the directory as it was
            throw error
        }
        stepsPerEpoch = workload.stepsPerEpoch
        totalSteps = config.totalSteps(stepsPerEpoch: stepsPerEpoch)
        self.config = config
        let model = workload.model
        do {
            optimizer = try Optimizer(config.optimizer, layout: model.arena.layout, ftrlParameters: model.ftrlParameters)
        } catch { throw ConfigError(message: "\(config.modelName): \(error)") }
        reporter = StepReporter(
            progress: progress, sinks: [try directory.openMetrics()] + sinks, stepsPerEpoch: stepsPerEpoch, totalSteps: totalSteps,
            epochs: config.epochsSpanned(stepsPerEpoch: stepsPerEpoch), logEvery: config.logEvery, unit: workload.unit)
        if let loaded {
            if let line = try config.resumeLine(
                from: loaded.config, at: loaded.state.globalStep, stepsPerEpoch: stepsPerEpoch, runDirectory: runDirectory.path)
            {
                progress.line(line)
            }
            try loaded.restore(into: model, optimizer: optimizer)
            state = loaded.state
            model.context.rng = state.rng
        } else {
            state = TrainingState(rng: model.context.rng)
            if let path = config.startFrom {
                try StartingWeights.read(path).load(into: model)
                progress.line("starting from the weights in \(path)")
            } else {
                // Data-dependent init from the first batch the run will train on.
                workload.initializeFromData(reduce: { _ in })
            }
        }
    }

    /// Trains until the run's end, `stopAfterSteps` global steps, or a stop signal; always leaves a
    /// checkpoint of the last complete step.
    public func run(stopAfterSteps: Int? = nil) throws -> TrainingSummary {
        func event(_ name: String) -> MetricsEvent { MetricsEvent(event: name, step: state.globalStep, stepsPerEpoch: stepsPerEpoch) }
        var start = event("start")
        start.parameters = model.arena.count
        start.model = config.model
        try reporter.record(start)
        progress.line(
            "\(config.modelName): \(model.arena.count.formatted()) parameters, \(workload.sizeSummary), "
                + "\(stepsPerEpoch) steps per epoch, \(totalSteps) steps in all, compute threads \(Compute.threads)")
        var lastTest: EvaluationReport?
        let runStart = Date()
        var outcome = TrainingSummary.Outcome.finished
        StopSignal.lossNote(checkpointStep: state.globalStep > 0 ? state.globalStep : nil, runDirectory: runDirectory.path)
        let epochs = config.epochsSpanned(stepsPerEpoch: stepsPerEpoch)
        // this invocation's training loss and time in the current epoch (a resumed epoch counts from the resume)
        var epochStats = BatchStats(), epochStart = Date()

        training: while state.globalStep < totalSteps {
            if state.stepInEpoch == 0 { workload.startEpoch(state.epoch) }
            while state.stepInEpoch < stepsPerEpoch && state.globalStep < totalSteps {
                if let stop = stopAfterSteps, state.globalStep >= stop { outcome = .stoppedEarly; break training }
                if StopSignal.requested {
                    outcome = .interrupted
                    progress.line(
                        "\(StopSignal.name(StopSignal.signal!)): writing the checkpoint of step \(state.globalStep) (interrupt again to exit at once)"
                    )
                    break training
                }
                let stats = try step()
                epochStats = epochStats + stats
                state.stepInEpoch += 1
                state.globalStep += 1
                try reporter.stepCompleted(
                    globalStep: state.globalStep, epoch: state.epoch, stats: stats, lr: learningRate(at: state.globalStep - 1))
                // the run's last step is checkpointed after its evaluation (below)
                if config.checkpointEvery > 0 && state.globalStep % config.checkpointEvery == 0 && state.globalStep < totalSteps {
                    try saveCheckpoint(keepsGoing: true)
                }
            }
            // An epoch's end, or the run's end within an epoch (--max-steps): evaluate and report.
            let epochEnds = state.stepInEpoch == stepsPerEpoch
            let report = evaluate()
            lastTest = report
            let seconds = Date().timeIntervalSince(epochStart)
            var e = event(epochEnds ? "epoch" : "eval")
            (e.loss, e.samples_per_sec, e.elapsed_s, e.lr) = (
                epochStats.meanLoss, Double(epochStats.count) / seconds, seconds, learningRate(at: state.globalStep - 1)
            )
            report.write(into: &e)
            try reporter.record(e)
            lastEvaluation = e
            let which = ProgressDisplay.evaluated(step: state.globalStep, stepsPerEpoch: stepsPerEpoch, epochs: epochs)
            progress.line(
                "\(which): train loss \(ProgressDisplay.fixed(epochStats.meanLoss, 4)), \(report.summary) (\(ProgressDisplay.fixed(seconds, 1)) s)"
            )
            (epochStats, epochStart) = (BatchStats(), Date())
            guard epochEnds else { break }  // a partial epoch's evaluation leaves the schedule alone
            if let best = state.recordValidation(loss: report.loss, schedule: config.schedule) {
                progress.line(
                    "validation loss did not improve on \(ProgressDisplay.fixed(best, 4)): learning rate now \(learningRate(at: state.globalStep))"
                )
            }
            state.epoch += 1
            state.stepInEpoch = 0
            try saveCheckpoint(keepsGoing: state.globalStep < totalSteps)
        }
        try saveCheckpoint(keepsGoing: false)
        var end = event(outcome == .interrupted ? "interrupted" : "end")
        end.elapsed_s = Date().timeIntervalSince(runStart)
        try reporter.record(end)
        switch outcome {
        case .finished: progress.line("done: \(ProgressDisplay.count(state.globalStep, "step")); checkpoint \(checkpointURL.path)")
        case .stoppedEarly, .interrupted:
            progress.line("stopped after step \(state.globalStep); continue with --resume --run-dir \(runDirectory.path)")
        }
        return TrainingSummary(outcome: outcome, state: state, lastTest: lastTest, parameterHash: model.arena.valueHash())
    }

    /// The rate of global step `t`: the schedule's, times the plateau factor.
    func learningRate(at t: Int) -> Double { state.learningRate(config.schedule, at: t, totalSteps: totalSteps) }

    /// One optimizer step: the workload's batch for the current cursor.
    func step() throws -> BatchStats {
        try workload.train(epoch: state.epoch, step: state.stepInEpoch, optimizer: optimizer, lr: learningRate(at: state.globalStep)).stats
    }

    /// The held-out evaluation (every sample once).
    public func evaluate() -> EvaluationReport { workload.evaluate() }

    /// Writes the checkpoint of this step (atomically: the last one stays whole until the new one is).
    /// A full disk while training `keepsGoing` costs only this checkpoint: it is said, with the space it
    /// needed, and training goes on; at the run's end it is an error naming the checkpoint kept.
    func saveCheckpoint(keepsGoing: Bool) throws {
        state.rng = model.context.rng
        do {
            try Safetensors.write(
                Checkpoint.file(
                    model: model, optimizer: optimizer, config: config, state: state,
                    metadata: workload.checkpointMetadata), to: checkpointURL)
        } catch let error as AtomicFileError where error.isOutOfSpace {
            let kept = keptCheckpoint.map { "the checkpoint of step \($0) is kept" } ?? "no checkpoint of this run is on disk yet"
            guard keepsGoing else {
                throw CheckpointError(
                    path: checkpointURL.path,
                    reason: "the run ended at step \(state.globalStep), but its checkpoint was not written (\(error.reason)); \(kept)")
            }
            progress.line("checkpoint of step \(state.globalStep) not written: \(error); \(kept); training goes on")
            var failed = MetricsEvent(event: "checkpoint_failed", step: state.globalStep, stepsPerEpoch: stepsPerEpoch)
            failed.error = "\(error)"
            try? reporter.record(failed)  // the same disk may refuse the line too
            return
        }
        keptCheckpoint = state.globalStep
        StopSignal.lossNote(checkpointStep: state.globalStep, runDirectory: runDirectory.path)
        if recordedCheckpoint != state.globalStep {
            try reporter.record(MetricsEvent(event: "checkpoint", step: state.globalStep, stepsPerEpoch: stepsPerEpoch))
            recordedCheckpoint = state.globalStep
        }
    }
    /// The step of the last checkpoint event written (an epoch's end and the run's may be one step).
    private var recordedCheckpoint: Int?
    /// The step of the checkpoint on disk: this run's last written, or the one it resumed from.
    private lazy var keptCheckpoint: Int? = directory.resumed?.state.globalStep
}
