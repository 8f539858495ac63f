import Foundation
import TetherData
import TetherNN
import TetherTensor

/// How a training invocation ended.
public struct TrainingSummary: Sendable {
    public enum Outcome: Sendable, Equatable { case finished, stoppedEarly, interrupted }
    public var outcome: Outcome
    public var state: TrainingState
    public var lastTest: BatchStats?
    public var parameterHash: UInt64
}

/// Single-process training: the loop every Tether run follows, with checkpoints, metrics and progress.
///
/// Per step: the next `batch` samples of the epoch plan -> forward/backward (gradients scaled by 1/B
/// so they are the batch mean) -> one optimizer step at the schedule's rate. At each epoch end: the
/// test set is evaluated, a line goes to metrics.jsonl and the checkpoint is rewritten. Resuming reloads
/// parameters, optimizer state, the data cursor and the dropout RNG, and continues bitwise as if never
/// stopped.
public final class Trainer {
    public let config: TrainingConfig
    public let runDirectory: URL
    public let model: Classifier<Float>
    public let optimizer: Optimizer<Float>
    public private(set) var state: TrainingState
    let train: ImageDataset
    let test: ImageDataset
    let metrics: MetricsLog
    let progress: ProgressDisplay
    let stepsPerEpoch: Int
    public let totalSteps: Int

    public var checkpointURL: URL { runDirectory.appendingPathComponent(Checkpoint.fileName) }

    /// Prepares a run in `runDirectory`: a fresh one (which must not already hold a checkpoint), or with
    /// `resume`, the continuation of the checkpoint there. `overrides` are the flags given on the
    /// command line; on resume only the run's length may change.
    public init(config given: TrainingConfig, runDirectory: URL, resume: Bool, progress: ProgressDisplay = ProgressDisplay()) throws {
        self.runDirectory = runDirectory
        self.progress = progress
        try FileManager.default.createDirectory(at: runDirectory, withIntermediateDirectories: true)
        let checkpointPath = runDirectory.appendingPathComponent(Checkpoint.fileName)
        var loaded: Checkpoint.Loaded?
        if resume {
            let l = try Checkpoint.Loaded(checkpointPath)
            let changed = given.fieldsDiffering(from: l.config)
            guard changed.isEmpty else {
                throw ConfigError(message: "a resumed run keeps its configuration, but \(changed.joined(separator: ", ")) differ from \(l.path) (only --epochs and --max-steps may change)")
            }
            loaded = l
        } else if FileManager.default.fileExists(atPath: checkpointPath.path) {
            throw ConfigError(message: "\(checkpointPath.path) exists: pass --resume to continue that run, or choose another --run-dir")
        }
        let config = given
        try config.validate()
        train = try DataSource.load(config.data, split: .train, limit: config.trainLimit)
        test = try DataSource.load(config.data, split: .test, limit: config.testLimit)
        stepsPerEpoch = (train.count + config.batch - 1) / config.batch
        totalSteps = min(config.epochs * stepsPerEpoch, config.maxSteps ?? .max)
        self.config = config

        model = try ModelFactory.make(config.model, for: train, seed: config.seed)
        optimizer = Optimizer(config.optimizer, parameterCount: model.arena.count)
        metrics = try MetricsLog(path: runDirectory.appendingPathComponent("metrics.jsonl").path)
        if let loaded {
            try loaded.restore(into: model, optimizer: optimizer)
            state = loaded.state
            model.context.rng = state.rng
        } else {
            state = TrainingState(rng: model.context.rng)
            // Data-dependent init from the first batch the run will train on.
            let first = EpochPlan(seed: config.seed, epoch: 0, count: train.count, globalBatch: config.batch).samples(step: 0)
            let (x, y) = train.batch(first, as: Float.self)
            model.initializeFromData(Batch(inputs: x, labels: y), reduce: { _ in })
        }
    }

    /// Trains until the run's end, `stopAfterSteps` global steps, or a stop signal; always leaves a
    /// checkpoint of the last complete step.
    public func run(stopAfterSteps: Int? = nil) throws -> TrainingSummary {
        var start = MetricsEvent(event: "start", epoch: state.epoch, step: state.globalStep)
        start.parameters = model.arena.count
        start.model = config.model
        try metrics.write(start)
        progress.line("\(config.model): \(model.arena.count.formatted()) parameters, \(train.count) training / \(test.count) test samples, "
                      + "\(stepsPerEpoch) steps per epoch, \(totalSteps) steps in all, BLAS threads \(BLAS.threads)")
        var lastTest: BatchStats?
        let runStart = Date()
        var window = (stats: BatchStats(), since: Date(), steps: 0)
        var outcome = TrainingSummary.Outcome.finished

        training: while state.globalStep < totalSteps {
            let plan = EpochPlan(seed: config.seed, epoch: state.epoch, count: train.count, globalBatch: config.batch)
            var epochStats = BatchStats()
            let epochStart = Date()
            while state.stepInEpoch < plan.steps && state.globalStep < totalSteps {
                if let stop = stopAfterSteps, state.globalStep >= stop { outcome = .stoppedEarly; break training }
                if StopSignal.requested { outcome = .interrupted; break training }
                let stats = step(plan.samples(step: state.stepInEpoch))
                epochStats = epochStats + stats
                window.stats = window.stats + stats
                window.steps += 1
                state.stepInEpoch += 1
                state.globalStep += 1

                let elapsed = Date().timeIntervalSince(window.since)
                let rate = Double(window.stats.count) / max(elapsed, 1e-9)
                let remaining = Double(totalSteps - state.globalStep) * elapsed / Double(max(window.steps, 1))
                progress.update(epoch: state.epoch, epochs: config.epochs, step: state.stepInEpoch, steps: plan.steps,
                                loss: window.stats.meanLoss, samplesPerSec: rate, eta: remaining)
                if state.globalStep % config.logEvery == 0 {
                    var e = MetricsEvent(event: "step", epoch: state.epoch, step: state.globalStep)
                    (e.loss, e.samples_per_sec, e.lr) = (window.stats.meanLoss, rate, config.schedule.lr(at: state.globalStep - 1, totalSteps: totalSteps))
                    try metrics.write(e)
                    progress.log("epoch \(state.epoch + 1) step \(state.stepInEpoch)/\(plan.steps) loss \(ProgressDisplay.fixed(window.stats.meanLoss, 4)) "
                                 + "\(ProgressDisplay.grouped(rate)) samples/s ETA \(ProgressDisplay.duration(remaining))")
                    window = (BatchStats(), Date(), 0)
                }
                if config.checkpointEvery > 0 && state.globalStep % config.checkpointEvery == 0 { try saveCheckpoint() }
            }
            if state.stepInEpoch == plan.steps {
                // Epoch complete: evaluate, report, checkpoint at the start of the next epoch.
                let testStats = evaluate()
                lastTest = testStats
                let seconds = Date().timeIntervalSince(epochStart)
                var e = MetricsEvent(event: "epoch", epoch: state.epoch, step: state.globalStep)
                (e.loss, e.samples_per_sec, e.test_accuracy, e.test_loss, e.elapsed_s) =
                    (epochStats.meanLoss, Double(epochStats.count) / seconds, testStats.accuracy, testStats.meanLoss, seconds)
                try metrics.write(e)
                progress.line("epoch \(state.epoch + 1)/\(config.epochs): train loss \(ProgressDisplay.fixed(epochStats.meanLoss, 4)), "
                              + "test accuracy \(ProgressDisplay.fixed(100 * testStats.accuracy, 2))%, test loss \(ProgressDisplay.fixed(testStats.meanLoss, 4)) "
                              + "(\(ProgressDisplay.fixed(seconds, 1)) s)")
                state.epoch += 1
                state.stepInEpoch = 0
                try saveCheckpoint()
            }
        }
        try saveCheckpoint()
        var end = MetricsEvent(event: outcome == .interrupted ? "interrupted" : "end", epoch: state.epoch, step: state.globalStep)
        end.elapsed_s = Date().timeIntervalSince(runStart)
        try metrics.write(end)
        switch outcome {
        case .finished: progress.line("done: \(state.globalStep) steps; checkpoint \(checkpointURL.path)")
        case .stoppedEarly, .interrupted:
            progress.line("stopped after step \(state.globalStep); continue with --resume --run-dir \(runDirectory.path)")
        }
        return TrainingSummary(outcome: outcome, state: state, lastTest: lastTest, parameterHash: model.arena.valueHash())
    }

    /// One optimizer step on the given samples.
    func step(_ samples: ArraySlice<Int>) -> BatchStats {
        let (x, y) = train.batch(samples, as: Float.self)
        model.arena.zeroGrads()
        let stats = model.accumulateGradients(Batch(inputs: x, labels: y), scale: 1 / Float(samples.count))
        optimizer.step(model.arena, lr: config.schedule.lr(at: state.globalStep, totalSteps: totalSteps))
        return stats
    }

    /// Loss and accuracy over the whole test set.
    public func evaluate() -> BatchStats { Evaluation.run(model, on: test) }

    func saveCheckpoint() throws {
        state.rng = model.context.rng
        try Safetensors.write(Checkpoint.file(model: model, optimizer: optimizer, config: config, state: state), to: checkpointURL)
    }
}

public enum Evaluation {
    /// Evaluates every sample of `data` exactly once, in batches of `batch`.
    public static func run(_ model: Classifier<Float>, on data: ImageDataset, batch: Int = 1000) -> BatchStats {
        stride(from: 0, to: data.count, by: batch).reduce(BatchStats()) { total, start in
            let (x, y) = data.batch(Array(start ..< min(start + batch, data.count))[...], as: Float.self)
            return total + model.evaluate(Batch(inputs: x, labels: y))
        }
    }
}
