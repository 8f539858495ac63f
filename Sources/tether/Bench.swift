import ArgumentParser
import Foundation
import TetherData
import TetherNN
import TetherTensor
import TetherTrain

struct Bench: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Benchmarks.", subcommands: [BenchTrain.self, BenchAllReduce.self])
}

/// Training throughput of the full step (batch assembly, forward, backward, optimizer), measured over
/// several timed runs after a warm-up; reports the median.
struct BenchTrain: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "train", abstract: "Training throughput of one process.")

    @Option(help: "Model: \(ModelFactory.names.joined(separator: ", ")).") var model = "mlp-wn"
    @Option(help: "Samples per step.") var batch = 64
    @Option(help: "Optimizer: sgd, adam or adamw.") var optimizer: OptimizerConfig.Kind = .adam
    @Option(help: "Steps per timed run.") var steps: Int?
    @Option(help: "Timed runs; the median is reported.") var repeats = 5
    @Option(help: "Untimed warm-up steps.") var warmup = 5
    @Option(help: "Data: \(DataSourceHelp.text); random images of Fashion-MNIST's shape when absent.") var data = "fashion-mnist"
    @Flag(help: "Print one JSON object.") var json = false
    @OptionGroup var threads: ThreadOptions

    func validate() throws {
        guard batch > 0, repeats > 0, warmup >= 0 else { throw ValidationError("--batch and --repeats must be positive, --warmup not negative") }
        if let steps, steps < 1 { throw ValidationError("--steps must be at least 1") }
    }

    func run() throws {
        threads.apply()
        do {
            let dataset: ImageDataset
            var source = data
            do { dataset = try DataSource.load(data, split: .train) } catch {
                // Throughput does not depend on pixel values; say so rather than fail.
                var rng = RNG(seed: 1)
                let n = 4096
                dataset = ImageDataset(pixels: (0..<n * 784).map { _ in UInt8(rng.nextInt(below: 256)) },
                                       labels: (0..<n).map { _ in Int32(rng.nextInt(below: 10)) }, height: 28, width: 28, classes: 10)
                source = "random (\(error))"
            }
            let m = try ModelFactory.make(model, for: dataset, seed: 0)
            var config = OptimizerConfig()
            config.kind = optimizer
            let opt = Optimizer<Float>(config, parameterCount: m.arena.count)
            let stepsPerRun = steps ?? max(10, 20_000 / (batch * (model.hasPrefix("cnn") ? 20 : 1)))
            let plan = EpochPlan(seed: 0, epoch: 0, count: dataset.count, globalBatch: batch)
            var cursor = 0
            func step() {
                if cursor == plan.steps { cursor = 0 }
                let (x, y) = dataset.batch(plan.samples(step: cursor), as: Float.self)
                cursor += 1
                m.arena.zeroGrads()
                _ = m.accumulateGradients(Batch(inputs: x, labels: y), scale: 1 / Float(y.count))
                opt.step(m.arena, lr: 1e-3)
            }
            for _ in 0..<warmup { step() }
            var rates: [Double] = []
            var samples = 0
            for _ in 0..<repeats {
                let start = DispatchTime.now().uptimeNanoseconds
                samples = 0
                for _ in 0..<stepsPerRun { step(); samples += batch }
                rates.append(Double(samples) / (Double(DispatchTime.now().uptimeNanoseconds - start) / 1e9))
            }
            let median = rates.sorted()[rates.count / 2]
            if json {
                let out: [String: Any] = ["model": model, "batch": batch, "threads": BLAS.threads, "samples_per_sec": median,
                                          "runs": rates, "steps_per_run": stepsPerRun, "parameters": m.arena.count, "data": source]
                print(String(data: try JSONSerialization.data(withJSONObject: out, options: [.sortedKeys]), encoding: .utf8)!)
            } else {
                print("\(model) batch \(batch), \(BLAS.threads) thread(s), \(m.arena.count) parameters, data \(source)")
                print("samples/s per run: \(rates.map { String(format: "%.0f", $0) }.joined(separator: " "))")
                print(String(format: "median: %.0f samples/s", median))
            }
        } catch {
            exitWithError(error)
        }
    }
}
