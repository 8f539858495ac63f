import ArgumentParser
import Foundation
import TetherNN
import TetherTensor
import TetherTrain

struct Bench: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Benchmarks.", subcommands: [BenchTrain.self, BenchPredict.self, BenchAllReduce.self, BenchSinks.self])
}

/// `tether predict`'s throughput (its forward passes over the samples, as predict times them) measured
/// as ONNX Runtime's is by bench/peers/ort_predict.py: a warm-up pass, then the median of timed passes.
struct BenchPredict: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "predict", abstract: "Inference throughput of a checkpoint's network.")

    @Option(help: "The checkpoint file.") var checkpoint: String
    @Option(help: "The samples, as for tether predict (default: the run's held-out split).") var data: String?
    @Option(help: "Samples per forward pass.") var batch = 256
    @Option(help: "Timed passes over the samples; the median is reported.") var repeats = 5
    @Flag(help: "Print one JSON object.") var json = false
    @OptionGroup var threads: ResourceOptions

    func validate() throws {
        guard repeats > 0, (1...65_536).contains(batch) else { throw ValidationError("--repeats must be positive, --batch in 1...65536") }
    }

    func run() throws {
        threads.apply(holder: "this process")
        ProcessMemory.keepFreedBuffers()
        do {
            let predicting = try Predict.network(checkpoint: checkpoint, data: data, schema: nil)
            func pass() -> Double {
                let start = DispatchTime.now().uptimeNanoseconds
                predicting.predictions(inBatchesOf: batch) { _ in }
                return Double(predicting.predictionCount) / (Double(DispatchTime.now().uptimeNanoseconds - start) / 1e9)
            }
            _ = pass()
            let rates = (0..<repeats).map { _ in pass() }, median = rates.sorted()[rates.count / 2]
            if json {
                let out: [String: Any] = [
                    "samples": predicting.predictionCount, "batch": batch, "threads": Compute.threads, "samples_per_sec": median,
                    "runs": rates
                ]
                print(String(data: try JSONSerialization.data(withJSONObject: out, options: [.sortedKeys]), encoding: .utf8)!)
            } else {
                print(
                    String(
                        format: "%d samples, batch %d, %d thread(s): median %.0f samples/s", predicting.predictionCount, batch,
                        Compute.threads, median))
            }
        } catch {
            exitWithError(error)
        }
    }
}

/// Training throughput of the full step (batch assembly, forward, backward, optimizer) of any model,
/// with the same flags as `tether train`, measured over several timed runs after a warm-up; reports
/// the median. Throughput counts samples, or tokens for lm-tied.
/// One process training a job's workload step after step with nothing exchanged, for the commands that
/// time it (`bench train`, `plan`): data-dependent init done, epochs rolled over as they end.
struct Stepper {
    let config: TrainingConfig
    let workload: any Workload
    let optimizer: Optimizer<Float>
    private var epoch = 0, cursor = 0

    init(_ training: TrainingOptions) throws {
        config = try training.applied(to: TrainingConfig())
        try config.validate()
        ProcessMemory.keepFreedBuffers()
        workload = try Workloads.make(config)
        let model = workload.model
        optimizer = try Optimizer<Float>(config.optimizer, layout: model.arena.layout, ftrlParameters: model.ftrlParameters)
        workload.initializeFromData(reduce: { _ in })
        workload.startEpoch(0)
    }

    /// The next step: the samples it trained on and where its time went.
    mutating func step() throws -> (count: Int, times: StepTimes) {
        if cursor == workload.stepsPerEpoch { (epoch, cursor) = (epoch + 1, 0); workload.startEpoch(epoch) }
        defer { cursor += 1 }
        let r = try workload.train(epoch: epoch, step: cursor, optimizer: optimizer, lr: config.schedule.baseLR)
        return (r.stats.count, r.times)
    }
}

struct BenchTrain: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "train", abstract: "Training throughput of one process.")

    @OptionGroup var training: TrainingOptions
    @Option(help: "Steps per timed run (default: about 20,000 samples' worth, at least 10).") var steps: Int?
    @Option(help: "Timed runs; the median is reported.") var repeats = 5
    @Option(help: "Untimed warm-up steps.") var warmup = 5
    @Flag(help: "Print one JSON object.") var json = false
    @OptionGroup var threads: ResourceOptions

    func validate() throws {
        guard repeats > 0, warmup >= 0 else { throw ValidationError("--repeats must be positive, --warmup not negative") }
        if let steps, steps < 1 { throw ValidationError("--steps must be at least 1") }
    }

    func run() throws {
        threads.apply(holder: "this process")
        do {
            var stepper = try Stepper(training)
            let (config, workload, model) = (stepper.config, stepper.workload, stepper.workload.model)
            let perStep = try ModelFamily.named(config.model).itemsPerStep(config)
            let stepsPerRun = steps ?? max(10, 20_000 / (perStep * (config.model.hasPrefix("cnn") ? 20 : 1)))
            for _ in 0..<warmup { _ = try stepper.step() }
            var rates: [Double] = []
            for _ in 0..<repeats {
                let start = DispatchTime.now().uptimeNanoseconds
                var items = 0
                for _ in 0..<stepsPerRun { items += try stepper.step().count }
                rates.append(Double(items) / (Double(DispatchTime.now().uptimeNanoseconds - start) / 1e9))
            }
            let median = rates.sorted()[rates.count / 2]
            if json {
                // DESIGN.md's contract: samples_per_sec always (for lm-tied a sample is a predicted token), tokens_per_sec for lm-tied.
                var out: [String: Any] = [
                    "model": config.model, "batch": config.batch, "threads": Compute.threads, "samples_per_sec": median,
                    "runs": rates, "steps_per_run": stepsPerRun, "parameters": model.arena.count, "data": config.data,
                    "optimizer": config.optimizer.kind.rawValue, "blas_core": BLASCore.name
                ]
                if workload.unit == "tokens" { out["tokens_per_sec"] = median }
                print(String(data: try JSONSerialization.data(withJSONObject: out, options: [.sortedKeys]), encoding: .utf8)!)
            } else {
                print(
                    "\(config.modelName) batch \(config.batch), \(Compute.threads) thread(s) (OpenBLAS \(BLASCore.name)), \(model.arena.count) parameters, \(workload.sizeSummary)"
                )
                print("\(workload.unit)/s per run: \(rates.map { String(format: "%.0f", $0) }.joined(separator: " "))")
                print(String(format: "median: %.0f \(workload.unit)/s", median))
            }
        } catch {
            exitWithError(error)
        }
    }
}
