import Foundation
import Testing
@testable import TetherTrain
import TetherData
import TetherNN

/// A small structured corpus: sentences from a tiny grammar, so a language model can learn it.
func writeToyCorpus() throws -> URL {
    let dir = freshRunDirectory("corpus")
    try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
    let subjects = ["the cat", "a dog", "the bird", "my friend"], verbs = ["sees", "likes", "follows"],
        objects = ["the ball", "a tree", "the house", "the sea"]
    var lines: [String] = []
    for i in 0..<1200 { lines.append("\(subjects[i % 4]) \(verbs[i % 3]) \(objects[(i / 3) % 4]) .") }
    try lines.joined(separator: "\n").write(to: dir.appendingPathComponent("toy.txt"), atomically: true, encoding: .utf8)
    return dir
}

func languageConfig(corpus: URL) -> TrainingConfig {
    var c = TrainingConfig.defaults(for: "lm-tied")
    c.data = "text:" + corpus.path
    c.language.size = 16
    c.language.vocabulary = 40
    c.language.bptt = 6
    c.batch = 4
    c.epochs = 2
    c.schedule.baseLR = 5
    c.logEvery = 1000
    c.seed = 2
    return c
}

@Suite(.serialized) struct WorkloadTests {
    let quiet = ProgressDisplay(interactive: false)

    @Test func areaUnderROCCountsTiesAsHalf() {
        #expect(areaUnderROC(scores: [0.1, 0.4, 0.35, 0.8], labels: [0, 0, 1, 1]) == 0.75)
        #expect(areaUnderROC(scores: [0.5, 0.5, 0.5], labels: [1, 0, 1]) == 0.5)
        #expect(areaUnderROC(scores: [0.2, 0.9], labels: [0, 1]) == 1)
        #expect(areaUnderROC(scores: [0.2], labels: [1]).isNaN)
    }

    @Test func theLanguageModelLearnsAToyGrammar() throws {
        let corpus = try writeToyCorpus(), dir = freshRunDirectory("lm")
        defer { for d in [corpus, dir] { try? FileManager.default.removeItem(at: d) } }
        let trainer = try Trainer(config: languageConfig(corpus: corpus), runDirectory: dir, resume: false, progress: quiet)
        let before = trainer.evaluate().perplexity!
        let summary = try trainer.run()
        let after = summary.lastTest!.perplexity!
        #expect(after < before / 3, "validation perplexity \(before) -> \(after)")
        // The vocabulary travels with the checkpoint: a fresh workload rebuilt from it agrees.
        let loaded = try Checkpoint.Loaded(trainer.checkpointURL)
        #expect(loaded.file.metadata["tether.vocabulary"]?.contains("\"cat\"") == true)
    }

    /// Stopped mid-epoch and resumed, a language model ends bitwise where an uninterrupted run ends:
    /// the carried LSTM state is checkpointed with the parameters.
    @Test func aResumedLanguageModelEqualsAnUninterruptedOne() throws {
        let corpus = try writeToyCorpus(), whole = freshRunDirectory("lm-whole"), split = freshRunDirectory("lm-split")
        defer { for d in [corpus, whole, split] { try? FileManager.default.removeItem(at: d) } }
        let config = languageConfig(corpus: corpus)
        let reference = try Trainer(config: config, runDirectory: whole, resume: false, progress: quiet).run()
        let first = try Trainer(config: config, runDirectory: split, resume: false, progress: quiet)
        #expect(first.stepsPerEpoch > 20)
        _ = try first.run(stopAfterSteps: first.stepsPerEpoch / 2 + 3)
        let resumed = try Trainer(config: config, runDirectory: split, resume: true, progress: quiet).run()
        #expect(resumed.parameterHash == reference.parameterHash)
        #expect(resumed.state == reference.state)
    }

    func clicksConfig(parts: WideDeepShape.Parts = .both) -> TrainingConfig {
        var c = TrainingConfig.defaults(for: "wide-deep")
        c.data = "synthetic-clicks:6000"
        c.batch = 128
        c.wideDeep.buckets = 500
        c.wideDeep.wideBuckets = 1 << 14
        c.wideDeep.hidden = [32, 16]
        c.wideDeep.parts = parts
        c.schedule.baseLR = 0.05
        c.epochs = 2
        c.logEvery = 1000
        return c
    }

    @Test func wideAndDeepLearnsTheClicks() throws {
        let dir = freshRunDirectory("wd")
        defer { try? FileManager.default.removeItem(at: dir) }
        let trainer = try Trainer(config: clicksConfig(), runDirectory: dir, resume: false, progress: quiet)
        let before = trainer.evaluate()
        let after = try trainer.run().lastTest!
        #expect(abs(before.auc! - 0.5) < 0.1)
        #expect(after.auc! > 0.62, "held-out AUC \(after.auc!)")
        let events = try String(contentsOf: dir.appendingPathComponent("metrics.jsonl"), encoding: .utf8).split(separator: "\n")
            .map { try JSONDecoder().decode(MetricsEvent.self, from: Data($0.utf8)) }
        #expect(events.filter { $0.event == "epoch" }.allSatisfy { $0.test_auc != nil && $0.test_loss != nil })
    }

    /// The sparse optimizer state (FTRL's z and n, AdaGrad's sums) is checkpointed: resuming is exact.
    @Test func aResumedWideAndDeepRunEqualsAnUninterruptedOne() throws {
        let whole = freshRunDirectory("wd-whole"), split = freshRunDirectory("wd-split")
        defer { for d in [whole, split] { try? FileManager.default.removeItem(at: d) } }
        let reference = try Trainer(config: clicksConfig(), runDirectory: whole, resume: false, progress: quiet).run()
        _ = try Trainer(config: clicksConfig(), runDirectory: split, resume: false, progress: quiet).run(stopAfterSteps: 30)
        let resumed = try Trainer(config: clicksConfig(), runDirectory: split, resume: true, progress: quiet).run()
        #expect(resumed.parameterHash == reference.parameterHash)
        let file = try Safetensors.read(split.appendingPathComponent(Checkpoint.fileName))
        #expect(file.tensors["optimizer.ftrl_z.wide.weight"] != nil && file.tensors["optimizer.sum.deep.embedding.weight"] != nil)
    }

    @Test(.enabled(if: fashionMNISTInstalled, "needs Debian's dataset-fashion-mnist"))
    func theTiedAutoencoderReconstructsBetter() throws {
        let dir = freshRunDirectory("ae")
        defer { try? FileManager.default.removeItem(at: dir) }
        var c = smallConfig(model: "autoencoder-tied")
        c.trainLimit = 2000
        let trainer = try Trainer(config: c, runDirectory: dir, resume: false, progress: quiet)
        let before = trainer.evaluate().loss
        let after = try trainer.run().lastTest!.loss
        #expect(after < 0.6 * before, "reconstruction MSE \(before) -> \(after)")
    }

    @Test func csvDataNeedsASchema() {
        var c = TrainingConfig.defaults(for: "wide-deep")
        c.data = "csv:/tmp/whatever.csv"
        #expect { try Workloads.make(c) } throws: { "\($0)".contains("needs --schema adult or --schema FILE") }
        c.data = "fashion-mnist"
        #expect { try Workloads.make(c) } throws: { "\($0)".contains("is not tabular") }
    }
}
