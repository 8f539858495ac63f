import ArgumentParser
import Foundation
import TetherNN
import TetherTensor
import TetherTrain

extension OptimizerConfig.Kind: ExpressibleByArgument {}
extension LRSchedule.Kind: ExpressibleByArgument {}

/// The flags that define a training run. Every one is optional: unset flags take the defaults of a new
/// run, or the checkpoint's values when resuming.
struct TrainingOptions: ParsableArguments {
    @Option(help: "Model: \(ModelFactory.names.joined(separator: ", ")).") var model: String?
    @Option(help: "Data: \(DataSourceHelp.text).") var data: String?
    @Option(help: "Epochs to train (default 10).") var epochs: Int?
    @Option(help: "End the run after this many steps.") var maxSteps: Int?
    @Option(help: "Samples per step (per worker; default 64).") var batch: Int?
    @Option(help: "Optimizer: sgd, adam or adamw (default adam).") var optimizer: OptimizerConfig.Kind?
    @Option(help: "Learning rate (default 1e-3).") var lr: Double?
    @Option(help: "SGD momentum.") var momentum: Double?
    @Flag(help: "Nesterov momentum (SGD).") var nesterov = false
    @Option(help: "Weight decay (coupled for sgd/adam, decoupled for adamw).") var weightDecay: Double?
    @Option(help: "Learning-rate schedule: constant, step or cosine.") var schedule: LRSchedule.Kind?
    @Option(help: "Linear warm-up steps.") var warmupSteps: Int?
    @Option(help: "Step schedule: decay every N steps.") var lrStepSize: Int?
    @Option(help: "Step schedule: decay factor.") var lrGamma: Double?
    @Option(help: "Cosine schedule: final learning rate.") var minLr: Double?
    @Option(help: "Seed of initialization, shuffling and dropout (default 0).") var seed: UInt64?
    @Option(help: "Use only the first N training samples.") var trainLimit: Int?
    @Option(help: "Use only the first N test samples.") var testLimit: Int?
    @Option(help: "Also checkpoint every N steps (default: at epoch ends only).") var checkpointEvery: Int?
    @Option(help: "A log and metrics line every N steps (default 50).") var logEvery: Int?

    /// `base` with every given flag applied.
    func applied(to base: TrainingConfig) -> TrainingConfig {
        var c = base
        if let model { c.model = model }
        if let data { c.data = data }
        if let epochs { c.epochs = epochs }
        if let maxSteps { c.maxSteps = maxSteps }
        if let batch { c.batch = batch }
        if let optimizer { c.optimizer.kind = optimizer }
        if let lr { c.schedule.baseLR = lr }
        if let momentum { c.optimizer.momentum = momentum }
        if nesterov { c.optimizer.nesterov = true }
        if let weightDecay { c.optimizer.weightDecay = weightDecay }
        if let schedule { c.schedule.kind = schedule }
        if let warmupSteps { c.schedule.warmupSteps = warmupSteps }
        if let lrStepSize { c.schedule.stepSize = lrStepSize }
        if let lrGamma { c.schedule.gamma = lrGamma }
        if let minLr { c.schedule.minLR = minLr }
        if let seed { c.seed = seed }
        if let trainLimit { c.trainLimit = trainLimit }
        if let testLimit { c.testLimit = testLimit }
        if let checkpointEvery { c.checkpointEvery = checkpointEvery }
        if let logEvery { c.logEvery = logEvery }
        return c
    }
}

/// `--threads`: bounds every compute thread (OpenBLAS's; Tether's own compute is single-threaded).
struct ThreadOptions: ParsableArguments {
    @Option(help: "Compute threads (default: OPENBLAS_NUM_THREADS, else all cores).") var threads: Int?

    func validate() throws {
        if let threads, threads < 1 { throw ValidationError("--threads must be at least 1") }
    }

    func apply() { if let threads { BLAS.setThreads(threads) } }
}
