import TetherData
import TetherJobFile
import TetherNN
import TetherTensor

/// A model family: what `--model NAME` trains. The one list of them: `--model`'s help, `tether
/// models`, a new run's defaults, the evaluation a coordinator merges, the throughput's unit, the
/// report and the workload factory all read it here.
public struct ModelFamily: Sendable {
    public let name: String
    /// What it is, in a line.
    public let summary: String
    let evaluation: EvaluationReport.Kind
    /// What the throughput counts: samples, or tokens for a language model.
    public let unit: String
    /// A new run's settings where they differ from `TrainingConfig()`'s: its data, and the optimizer
    /// and schedule of its reference setup.
    let defaults: @Sendable (inout TrainingConfig) -> Void
    /// The family's own settings, checked.
    let validate: @Sendable (TrainingConfig) throws -> Void
    let make:
        @Sendable (_ config: TrainingConfig, _ shard: Shard, _ metadata: [String: String], _ source: SampleSource?, _ rng: inout RNG) throws
            -> any Workload

    /// What the held-out evaluation of a run of `config` reports: the family's, or a spec's by its loss.
    public func evaluation(_ config: TrainingConfig) -> EvaluationReport.Kind {
        guard let loss = config.spec?.loss else { return evaluation }
        return loss.isRegression ? .regression : loss == .binaryCrossEntropy ? .clickPrediction : .classification
    }

    /// The items one process's step trains on (samples; tokens for a language model).
    public func itemsPerStep(_ config: TrainingConfig) -> Int { unit == "tokens" ? config.batch * config.language.bptt : config.batch }

    public static let all: [ModelFamily] =
        images + [
            ModelFamily(
                name: "autoencoder-tied", summary: "an autoencoder whose decoder is the encoder's transpose (tied weights)",
                evaluation: .reconstruction, unit: "samples", defaults: { _ in }, validate: { _ in },
                make: { c, shard, _, source, rng in try ImageReconstruction(c, shard: shard, source: source, rng: &rng) }),
            // PyTorch's word_language_model
            ModelFamily(
                name: "lm-tied", summary: "an LSTM language model with tied input/output embeddings (Press & Wolf 2016)",
                evaluation: .languageModel, unit: "tokens",
                defaults: { c in
                    c.data = "text:" + TextCorpusDefaults.fortunes
                    (c.batch, c.epochs, c.logEvery) = (20, 6, 200)
                    (c.optimizer.kind, c.optimizer.clipNorm) = (.sgd, 0.25)
                    (c.schedule.baseLR, c.schedule.kind, c.schedule.gamma) = (20, .plateau, 0.25)
                },
                validate: { try $0.language.validate() },
                make: { c, shard, metadata, source, rng in
                    try LanguageModelling(c, shard: shard, metadata: metadata, source: source, rng: &rng)
                }),
            // Cheng et al. 2016
            ModelFamily(
                name: "wide-deep", summary: "Wide & Deep click prediction (Cheng et al. 2016): FTRL wide part, AdaGrad deep part",
                evaluation: .clickPrediction, unit: "samples",
                defaults: { c in
                    c.data = "synthetic-clicks"
                    (c.batch, c.epochs, c.logEvery) = (512, 2, 100)
                    (c.optimizer.kind, c.schedule.baseLR, c.optimizer.ftrl.alpha) = (.adagrad, 0.01, 0.2)
                },
                validate: { try $0.wideDeep.validate() },
                make: { c, shard, _, source, rng in try ClickPrediction(c, shard: shard, source: source, rng: &rng) })
        ] + [spec]

    /// The image families: each is its spec in models/ (built into the binary as `ShippedSpecs`), fitted
    /// to the images' size and classes (Fashion-MNIST's 28x28 and 10 are the file's own).
    static let images: [ModelFamily] = [
        ("mlp", "a 784-256-256-10 ReLU MLP on images (the baseline)"),
        ("mlp-wn", "the MLP with weight normalization (Salimans & Kingma 2016)"),
        ("cnn-wn", "a weight-normalized ConvNet on images: two 5x5 conv + pool stages, dense 256")
    ].map { name, summary in
        precondition(ShippedSpecs.text[name] != nil, "models/\(name).yaml")
        return ModelFamily(
            name: name, summary: summary + " (models/\(name).yaml)", evaluation: .classification, unit: "samples", defaults: { _ in },
            validate: { _ in },
            make: { c, shard, _, source, rng in
                let spec = try ShippedSpecs.spec(name)!
                return try SpecTraining<ImageDataset>(
                    c, fit: { spec.forImages(height: $0.height, width: $0.width, classes: $0.classes) }, shard: shard, source: source,
                    files: imageFiles(c), rng: &rng)
            })
    }

    public static var names: [String] { all.map(\.name) }

    /// The family `name` names; an unknown one is an error listing them.
    public static func named(_ name: String) throws -> ModelFamily {
        guard let f = all.first(where: { $0.name == name }) else {
            throw ConfigError(message: "unknown --model \"\(name.prefix(64))\": choose one of \(names.joined(separator: ", "))")
        }
        return f
    }
}
