import Testing
import Foundation
@testable import TetherTrain
import TetherNN
import TetherData

let fashionMNISTInstalled = FileManager.default.fileExists(atPath: FashionMNIST.defaultDirectory + "/train-images-idx3-ubyte.gz")

func freshRunDirectory(_ name: String) -> URL {
    let url = FileManager.default.temporaryDirectory.appendingPathComponent("tether-\(name)-\(UUID())")
    try? FileManager.default.removeItem(at: url)
    return url
}

func smallConfig(model: String = "mlp-wn") -> TrainingConfig {
    var c = TrainingConfig()
    c.model = model
    c.trainLimit = 320
    c.testLimit = 200
    c.batch = 32
    c.epochs = 3
    c.logEvery = 5
    c.seed = 7
    return c
}

/// A model spec on a CSV table of its own (written into `dir`): categories through an embedding, then
/// batch norm and dropout (a running buffer and random masks to carry through a resume), a regression.
func tableSpecConfig(in dir: URL) throws -> TrainingConfig {
    try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
    var csv = ""
    for i in 0..<400 { csv += "\(["a", "b", "c"][i % 3]),\(i % 7),\(Double(i % 11) / 4),\(Double(i % 5) + Double(i % 3))\n" }
    try csv.write(to: dir.appendingPathComponent("t.csv"), atomically: true, encoding: .utf8)
    var c = smallConfig(model: "spec")
    c.data = "csv:" + dir.appendingPathComponent("t.csv").path
    c.schemaText = "columns p, q, n, y\ncategorical p, q\nnumeric n\ntarget y\n"
    var embedding = LayerSpec(.embedding), hidden = LayerSpec(.dense), dropout = LayerSpec(.dropout), out = LayerSpec(.dense)
    (embedding.out, embedding.buckets, hidden.out, dropout.rate, out.out) = (4, 16, 16, 0.2, 1)
    c.spec = ModelSpec(
        name: "t", input: [], table: .init(categorical: 2, numeric: 1),
        layers: [embedding, hidden, LayerSpec(.batchNorm), LayerSpec(.relu), dropout, out], loss: .mse)
    return c
}

@Suite(.enabled(if: fashionMNISTInstalled, "needs Debian's dataset-fashion-mnist (scripts/test installs it)"))
struct TrainerTests {
    @Test func mlpWNOnAFewHundredSamplesDrivesTheLossDown() throws {
        let dir = freshRunDirectory("loss")
        defer { try? FileManager.default.removeItem(at: dir) }
        let trainer = try Trainer(config: smallConfig(), runDirectory: dir, resume: false, progress: ProgressDisplay(interactive: false))
        let before = trainer.evaluate()
        let summary = try trainer.run()
        #expect(summary.outcome == .finished)
        #expect(summary.state.globalStep == 30)
        let after = summary.lastTest!
        #expect(after.loss < 0.8 * before.loss, "test loss \(before.loss) -> \(after.loss)")
        #expect(after.accuracy! > before.accuracy! + 0.2)
        // metrics.jsonl: one object per line with the agreed fields
        let lines = try String(contentsOf: dir.appendingPathComponent("metrics.jsonl"), encoding: .utf8).split(separator: "\n")
        let events = try lines.map { try JSONDecoder().decode(MetricsEvent.self, from: Data($0.utf8)) }
        #expect(events.first?.event == "start" && events.last?.event == "end")
        let epochs = events.filter { $0.event == "epoch" }
        #expect(epochs.map(\.epoch) == [1, 2, 3])
        #expect(epochs.allSatisfy { $0.test_accuracy != nil && $0.loss != nil && $0.samples_per_sec != nil })
        #expect(events.filter { $0.event == "step" }.map(\.step) == [5, 10, 15, 20, 25, 30])
    }

    /// Stop mid-epoch, resume, and end bitwise where an uninterrupted run ends (parameters, optimizer
    /// state, data order and dropout all continue exactly).
    @Test(arguments: [("mlp-wn", 13), ("mlp", 10), ("table-spec", 11)])
    func resumedRunEqualsUninterruptedRun(model: String, stopAt: Int) throws {
        let whole = freshRunDirectory("whole"), split = freshRunDirectory("split"), data = freshRunDirectory("table")
        defer { for d in [whole, split, data] { try? FileManager.default.removeItem(at: d) } }
        var config = model == "table-spec" ? try tableSpecConfig(in: data) : smallConfig(model: model)
        config.optimizer.kind = .adamw
        config.optimizer.weightDecay = 0.01
        config.schedule.kind = .cosine
        let quiet = ProgressDisplay(interactive: false)
        let reference = try Trainer(config: config, runDirectory: whole, resume: false, progress: quiet).run()

        let first = try Trainer(config: config, runDirectory: split, resume: false, progress: quiet).run(stopAfterSteps: stopAt)
        #expect(first.outcome == .stoppedEarly && first.state.globalStep == stopAt)
        #expect(first.parameterHash != reference.parameterHash)
        let resumed = try Trainer(config: config, runDirectory: split, resume: true, progress: quiet).run()
        #expect(resumed.state == reference.state)
        #expect(resumed.parameterHash == reference.parameterHash)
        let a = try Safetensors.read(whole.appendingPathComponent(Checkpoint.fileName))
        let b = try Safetensors.read(split.appendingPathComponent(Checkpoint.fileName))
        #expect(a.tensors == b.tensors)
    }

    /// A spec's layers are compared field by field: the same spec resumes (a layer's settings in any
    /// order), a changed one is refused naming the setting.
    @Test func aResumedSpecRunComparesItsLayersByField() throws {
        let data = freshRunDirectory("table")
        defer { try? FileManager.default.removeItem(at: data) }
        let stored = try tableSpecConfig(in: data)
        for _ in 0..<3 { #expect(try stored.checkResume(from: stored, path: "p") == nil) }
        var wider = stored
        wider.spec!.layers[1].out = 32
        #expect { try wider.checkResume(from: stored, path: "p") } throws: {
            "\($0)".contains("--model (its spec's layers[1].out) 32 (the run has 16)")
        }
    }

    @Test func aResumedRunKeepsItsConfiguration() throws {
        let dir = freshRunDirectory("conflict")
        defer { try? FileManager.default.removeItem(at: dir) }
        let quiet = ProgressDisplay(interactive: false)
        _ = try Trainer(config: smallConfig(), runDirectory: dir, resume: false, progress: quiet).run(stopAfterSteps: 3)
        var changed = smallConfig()
        changed.batch = 16
        changed.schedule.baseLR = 0.1
        #expect { try Trainer(config: changed, runDirectory: dir, resume: true, progress: quiet) } throws: {
            "\($0)".contains("this command gives --batch 16 (the run has 32), --lr 0.1 (the run has 0.001)")
        }
        var longer = smallConfig()
        longer.epochs = 5  // the run's length may change, and what only observes or paces it
        (longer.logEvery, longer.checkpointEvery) = (1, 2)
        #expect(
            try longer.checkResume(from: smallConfig(), path: "p")
                == "resuming with --checkpoint-every 2 (the run has 0), --log-every 1 (the run has 5)")
        _ = try Trainer(config: longer, runDirectory: dir, resume: true, progress: quiet)
        // Starting afresh over an existing run is refused rather than overwriting it.
        #expect { try Trainer(config: smallConfig(), runDirectory: dir, resume: false, progress: quiet) } throws: {
            "\($0)".contains("--resume")
        }
    }

    @Test func aCheckpointOfAnotherModelIsRefused() throws {
        let dir = freshRunDirectory("other")
        defer { try? FileManager.default.removeItem(at: dir) }
        _ = try Trainer(config: smallConfig(model: "mlp"), runDirectory: dir, resume: false, progress: ProgressDisplay(interactive: false))
            .run(stopAfterSteps: 1)
        let loaded = try Checkpoint.Loaded(dir.appendingPathComponent(Checkpoint.fileName))
        var config = smallConfig(model: "mlp-wn")
        config.testLimit = 10
        let other = try Workloads.make(config)
        #expect { try loaded.restore(into: other.model, optimizer: nil) } throws: { "\($0)".contains("holds a mlp model, not mlp-wn") }
    }
}

@Suite struct CheckpointFileTests {
    @Test func aSafetensorsFileThatIsNotATetherCheckpointIsRefused() throws {
        let dir = freshRunDirectory("foreign")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: dir) }
        let url = dir.appendingPathComponent("model.safetensors")
        try Safetensors.write(.init(tensors: ["w": .init(floats: [1], shape: [1])], metadata: ["format": "pt"]), to: url)
        #expect { try Checkpoint.Loaded(url) } throws: { "\($0)".contains("not a Tether checkpoint") && "\($0)".contains(url.path) }
    }

    @Test func configValidationNamesTheFlag() {
        var c = TrainingConfig()
        c.batch = 0
        #expect { try c.validate() } throws: { "\($0)".contains("--batch") }
        c = TrainingConfig()
        c.optimizer.nesterov = true
        #expect { try c.validate() } throws: { "\($0)".contains("--nesterov needs --optimizer sgd") }
        c = TrainingConfig()
        c.errorFeedback = false
        #expect { try c.validate() } throws: { "\($0)".contains("--no-error-feedback needs --compression") }
        c.compression = TrainingConfig.Compression.none
        #expect { try c.validate() } throws: { "\($0)".contains("--no-error-feedback needs --compression") }
        c.compression = .fp16
        #expect(throws: Never.self) { try c.validate() }
    }
}
