import Foundation
import TetherNN

/// Everything that defines a training run. Stored in every checkpoint; a resumed run keeps it, except
/// its length (`epochs`, `maxSteps`) and what only observes or paces it (`logEvery`, `checkpointEvery`).
public struct TrainingConfig: Codable, Equatable, Sendable {
    public var model = "mlp-wn"
    /// The network, when `model` is "spec": declared in a model spec (a job file's `model:`, or
    /// `--model FILE.yaml`); it travels with the run (checkpoints, Assign).
    public var spec: ModelSpec?
    /// Reads the schema from `path` when the run starts (`withFilesResolved`), not the content it had.
    public mutating func useSchema(_ path: String) { (schema, schemaText) = (path, nil) }

    /// The model as logs name it: a family, or a spec's name ("my-cnn (spec)").
    public var modelName: String { spec.map { "\($0.name) (spec)" } ?? model }
    public var data = "fashion-mnist"
    /// The held-out samples, where they are other arrays than the training data's (npz:FILE, npy:DIR).
    public var testData: String?
    /// The share of `npz:` or `csv:` rows held out when there is no `testData` (nil: every tenth).
    public var testFraction: Double?
    public var epochs = 10
    /// The run's length in steps; overrides `epochs` (as Hugging Face's max_steps does num_train_epochs).
    public var maxSteps: Int?
    /// Samples per step (per worker, in a cluster).
    public var batch = 64
    /// Samples (lm-tied: streams) per step over all workers, when a cluster run was resumed with
    /// another number of workers than it started with, or is elastic: it keeps the global batch it
    /// had, dealt over the workers it has. nil: `batch` x workers.
    public var globalBatch: Int?
    public var optimizer = OptimizerConfig()
    public var schedule = LRSchedule()
    public var seed: UInt64 = 0
    /// Use only the first N training / test samples (for quick runs and tests).
    public var trainLimit: Int?
    public var testLimit: Int?
    /// Also checkpoint every K steps (0: only at epoch ends and at the end).
    public var checkpointEvery = 0
    /// A `step` line in metrics.jsonl (and the log) every K steps.
    public var logEvery = 50
    /// For `csv:` data: `adult` or the path of a schema file.
    public var schema: String?
    /// The schema file's content, read when the run starts (`withFilesResolved`): a checkpoint carries
    /// it, so evaluating or resuming needs no schema file, and every worker reads the same schema.
    public var schemaText: String?
    public var language = LanguageOptions()
    public var wideDeep = WideDeepOptions()
    /// A cluster's gradients on the wire (nil: f32, as they are).
    public var compression: Compression?
    /// How a cluster all-reduces its f32 gradients: "by-size" (nil), "ring", "recursive-doubling",
    /// "halving-doubling", "tree" or "auto"
    /// (TetherComm.AllReduceAlgorithm's names).
    public var collective: String?
    /// The links by-size chooses for, as `tether plan` takes them: bytes a second each way, and one
    /// message's latency in seconds (both nil: measured when the ring forms).
    public var linkBandwidth: Double?
    public var linkLatency: Double?
    /// PowerSGD's rank (nil: 4) and the step it starts at (nil: 1000; plain all-reduces before it, as
    /// DDP's start_powerSGD_iter).
    public var powerSGDRank: Int?
    public var powerSGDStartStep: Int?
    /// Error feedback with compression (nil: on).
    public var errorFeedback: Bool?
    /// A file a fresh run takes its starting weights from (`StartingWeights`: an ONNX graph's
    /// initializers, a checkpoint's parameters); nil: drawn, with data-dependent initialization.
    public var startFrom: String?

    /// How a cluster's gradients travel between workers: as they are (f32), narrowed to IEEE half or
    /// bfloat16 (half the bytes, summed in f32), or as PowerSGD's low-rank factors.
    public enum Compression: String, Codable, CaseIterable, Sendable {
        case none, fp16, bf16, powersgd
    }
    public static let defaultPowerSGDRank = 4, defaultPowerSGDStartStep = 1000
    /// The compression settings as they apply: an unset one is its default.
    public var resolvedCompression: Compression { compression ?? Compression.none }
    public var resolvedPowerSGDRank: Int { powerSGDRank ?? Self.defaultPowerSGDRank }
    public var resolvedPowerSGDStartStep: Int { powerSGDStartStep ?? Self.defaultPowerSGDStartStep }

    public init() {}

    /// A new run's configuration for `model`: its default data and the optimizer and schedule its
    /// reference setup uses (PyTorch's word_language_model for lm-tied; Cheng et al. for wide-deep).
    public static func defaults(for model: String) -> TrainingConfig {
        var c = TrainingConfig()
        c.model = model
        (try? ModelFamily.named(model))?.defaults(&c)
        return c
    }

    /// Samples per step over `workers` workers.
    public func globalBatch(workers: Int) -> Int { globalBatch ?? batch * workers }

    /// Steps in the whole run: `maxSteps` if set, else `epochs` of `stepsPerEpoch`.
    public func totalSteps(stepsPerEpoch: Int) -> Int { maxSteps ?? epochs * stepsPerEpoch }

    /// The epochs the run's steps touch (the last may be partial): what progress lines count to.
    public func epochsSpanned(stepsPerEpoch: Int) -> Int {
        let total = totalSteps(stepsPerEpoch: stepsPerEpoch), per = max(stepsPerEpoch, 1)
        return max(1, (total + per - 1) / per)
    }

    /// "120 steps (2.5 epochs)": the run's length as a person reads it.
    public func lengthDescription(stepsPerEpoch: Int) -> String {
        let total = totalSteps(stepsPerEpoch: stepsPerEpoch)
        let epochs = Double(total) / Double(max(stepsPerEpoch, 1))
        let e = epochs == epochs.rounded() ? String(Int(epochs)) : String(format: "%.2f", epochs)
        return "\(total) steps (\(e) epoch\(epochs == 1 ? "" : "s"))"
    }

    /// What a resume says of the run's length: nothing if unchanged; the new total and the old.
    /// Throws when the run has already finished (nothing to resume), saying how to extend it.
    public func resumeLine(from stored: TrainingConfig, at step: Int, stepsPerEpoch: Int, runDirectory: String) throws -> String? {
        let total = totalSteps(stepsPerEpoch: stepsPerEpoch), was = stored.totalSteps(stepsPerEpoch: stepsPerEpoch)
        if step >= total {
            let nextEpochs = step / max(stepsPerEpoch, 1) + 1
            throw ConfigError(
                message: "the run in \(runDirectory) has finished: \(step) of \(lengthDescription(stepsPerEpoch: stepsPerEpoch)); "
                    + "extend it with --resume --epochs \(nextEpochs) (or --max-steps N above \(step))")
        }
        return total == was
            ? nil : "resuming at step \(step): the run is now \(lengthDescription(stepsPerEpoch: stepsPerEpoch)) long (it was \(was) steps)"
    }

    /// A setting a resume changes: the flag that sets it, and its value in the checkpoint and now.
    public struct Change: Equatable, Sendable, CustomStringConvertible {
        public var flag: String, stored: String, given: String
        public var description: String { "\(flag) \(given) (the run has \(stored))" }
    }

    /// Settings that only observe or pace a run (what is logged, how often a checkpoint is written): a
    /// resume may change them. The run's length (epochs, maxSteps) may change too, and is said apart.
    static let observingFields = ["logEvery", "checkpointEvery"]
    static let lengthFields = ["epochs", "maxSteps"]
    /// The flag of each field whose name does not follow from it (`--` + the field in kebab case).
    static let flagOfField = [
        "schedule.baseLR": "--lr", "schedule.kind": "--schedule", "schedule.stepSize": "--lr-step-size",
        "schedule.gamma": "--lr-gamma", "schedule.minLR": "--min-lr", "optimizer.kind": "--optimizer",
        "optimizer.ftrl.alpha": "--ftrl-alpha", "optimizer.ftrl.l1": "--ftrl-l1", "optimizer.ftrl.l2": "--ftrl-l2",
        "language.weightNorm": "--weight-norm", "linkBandwidth": "--link", "linkLatency": "--latency"
    ]

    /// How `self`, a resuming command's settings, differs from the checkpoint's `stored`: the settings
    /// that define the run (which a resume must keep) and those that only observe or pace it. Another
    /// --model is one change, not the defaults it brings.
    public func changes(from stored: TrainingConfig) -> (defining: [Change], observing: [Change]) {
        func flat(_ c: TrainingConfig) -> [String: String] {
            var out: [String: String] = [:]
            func walk(_ v: Any, _ path: String) {
                if let nested = v as? [String: Any] {
                    for (k, v2) in nested { walk(v2, path.isEmpty ? k : "\(path).\(k)") }
                } else if let list = v as? [Any], list.contains(where: { $0 is [String: Any] }) {
                    // a spec's layers: each a mapping, compared by field (a dictionary's description has no order)
                    for (i, e) in list.enumerated() { walk(e, "\(path)[\(i)]") }
                } else if let list = v as? [Any] {
                    out[path] = list.map { "\($0)" }.joined(separator: ",")
                } else {
                    out[path] = "\(v)"
                }
            }
            walk(try! JSONSerialization.jsonObject(with: JSONEncoder().encode(c)), "")
            return out
        }
        func flag(_ field: String) -> String {
            if field.hasPrefix("spec.") { return "--model (its spec's \(field.dropFirst(5)))" }
            return Self.flagOfField[field] ?? "--"
                + (field.split(separator: ".").last.map(String.init) ?? field).reduce(into: "") { out, ch in
                    if ch.isUppercase { out += "-" + ch.lowercased() } else { out.append(ch) }
                }
        }
        if model != stored.model { return ([Change(flag: "--model", stored: stored.model, given: model)], []) }
        let (a, b) = (flat(self), flat(stored))
        var defining: [Change] = [], observing: [Change] = []
        for field in Set(a.keys).union(b.keys).sorted() where a[field] != b[field] && !Self.lengthFields.contains(field) {
            let change = Change(flag: flag(field), stored: b[field] ?? "none", given: a[field] ?? "none")
            if Self.observingFields.contains(field) { observing.append(change) } else { defining.append(change) }
        }
        return (defining, observing)
    }

    /// Checks a resuming command's settings against the checkpoint's (at `path`): a change to what
    /// defines the run is refused, naming each flag with both values; changes that only observe or pace
    /// it are allowed and returned as a line to say.
    public func checkResume(from stored: TrainingConfig, path: String) throws -> String? {
        let (defining, observing) = changes(from: stored)
        if !defining.isEmpty {
            throw ConfigError(
                message: "a resumed run keeps the settings that define it, but this command gives "
                    + defining.map(\.description).joined(separator: ", ") + " (\(path)). Leave "
                    + (defining.count == 1 ? "it" : "them") + " out to resume, or start a new run in another --run-dir; "
                    + "a resume may change only --epochs, --max-steps, --log-every and --checkpoint-every")
        }
        return observing.isEmpty ? nil : "resuming with " + observing.map(\.description).joined(separator: ", ")
    }

    /// The largest value each size-giving setting may take, whatever the host: a configuration
    /// arrives from a job file or from the coordinator, and a number within these keeps every product
    /// the engine forms of them (steps x batch, rows x width) far from overflow. What they multiply to is
    /// checked against the memory a process may use (`MemoryEstimate`).
    public static let bounds: [(flag: String, value: KeyPath<TrainingConfig, Int>, max: Int)] = [
        ("--batch", \.batch, 1 << 20), ("--epochs", \.epochs, 1_000_000), ("--max-steps", \.maxStepsOrZero, 1 << 40),
        ("the global batch", \.globalBatchOrZero, 1 << 24), ("--checkpoint-every", \.checkpointEvery, 1 << 40),
        ("--log-every", \.logEvery, 1 << 40), ("--vocabulary", \.language.vocabulary, 1 << 31),
        ("--size", \.language.size, 1 << 20), ("--layers", \.language.layers, 64), ("--bptt", \.language.bptt, 1 << 16),
        ("--eval-streams", \.language.evalStreams, 1 << 16), ("--embedding", \.wideDeep.embedding, 1 << 16),
        ("--hidden (each width)", \.wideDeep.widestHidden, 1 << 20), ("--hidden (layers)", \.wideDeep.hidden.count, 64)
    ]
    var maxStepsOrZero: Int { maxSteps ?? 0 }
    var globalBatchOrZero: Int { globalBatch ?? 0 }

    /// Cross-field checks, with a message that says what to do.
    public func validate() throws {
        func fail(_ s: String) -> ConfigError { ConfigError(message: s) }
        for (flag, value, bound) in Self.bounds where self[keyPath: value] > bound {
            throw fail("\(flag) \(self[keyPath: value]) is above its bound of \(bound)")
        }
        guard batch > 0 else { throw fail("--batch must be at least 1 (got \(batch))") }
        guard epochs > 0 else { throw fail("--epochs must be at least 1 (got \(epochs))") }
        if let m = maxSteps, m <= 0 { throw fail("--max-steps must be at least 1 (got \(m))") }
        guard schedule.baseLR > 0, schedule.baseLR.isFinite else { throw fail("--lr must be a positive number (got \(schedule.baseLR))") }
        guard checkpointEvery >= 0 else { throw fail("--checkpoint-every must be 0 (epoch ends only) or more") }
        guard logEvery > 0 else { throw fail("--log-every must be at least 1") }
        if linkBandwidth != nil || linkLatency != nil {
            guard let b = linkBandwidth, let l = linkLatency, b.isFinite, b > 0, b < 1e15, l.isFinite, l >= 0, l < 10 else {
                throw fail(
                    "--link and --latency go together, the rate positive and under 1e15 bytes/s, the latency in [0, 10) s (got \(linkBandwidth.map { "\($0)" } ?? "none") and \(linkLatency.map { "\($0)" } ?? "none"))"
                )
            }
        }
        if optimizer.nesterov && (optimizer.kind != .sgd || optimizer.momentum <= 0) {
            throw fail("--nesterov needs --optimizer sgd and --momentum > 0")
        }
        if let n = trainLimit, n <= 0 { throw fail("--train-limit must be at least 1") }
        if let n = testLimit, n <= 0 { throw fail("--test-limit must be at least 1") }
        if let f = testFraction {
            guard f > 0, f < 1 else { throw fail("--test-fraction must be above 0 and below 1 (got \(f))") }
            guard DataSource.isArrays(data) || data.hasPrefix("csv:") else {
                throw fail("--test-fraction applies to npz:, npy: and csv: data; \(data) has a test split of its own")
            }
            guard testData == nil else { throw fail("--test-fraction or --test-data, not both") }
        }
        if optimizer.clipNorm < 0 { throw fail("--clip-norm must be 0 (off) or positive") }
        try ModelFamily.named(model).validate(self)
        if let r = powerSGDRank, !(1...1024).contains(r) { throw fail("--powersgd-rank must be in 1...1024 (got \(r))") }
        if let s = powerSGDStartStep, s < 0 { throw fail("--powersgd-start-step must be 0 or more (got \(s))") }
        if compression != .powersgd, powerSGDRank != nil || powerSGDStartStep != nil {
            throw fail("--powersgd-rank and --powersgd-start-step need --compression powersgd")
        }
        if errorFeedback == false, resolvedCompression == .none {
            throw fail("--no-error-feedback needs --compression fp16, bf16 or powersgd (uncompressed gradients lose nothing to feed back)")
        }
        try MemoryEstimate(self).check(limit: MemoryLimit.bytes, who: MemoryLimit.holder)
    }
}

public struct ConfigError: Error, CustomStringConvertible {
    public let message: String
    public init(message: String) { self.message = message }
    public var description: String { message }
}

public enum TextCorpusDefaults {
    /// Debian's fortunes package: plain UTF-8 text, a real corpus every Debian machine can install.
    public static let fortunes = "/usr/share/games/fortunes"
}

/// lm-tied's shape and truncated-BPTT settings.
public struct LanguageOptions: Codable, Equatable, Sendable {
    /// Vocabulary size, including <eos> and <unk>.
    public var vocabulary = 10_000
    /// Embedding and hidden size.
    public var size = 256
    public var layers = 1
    /// Steps of backpropagation through time per batch.
    public var bptt = 35
    public var dropout = 0.2
    /// A separate output matrix instead of the tied embedding.
    public var untied = false
    /// Weight-normalized LSTM weights.
    public var weightNorm = true
    /// Streams of the validation batches (word_language_model: 10).
    public var evalStreams = 10
    public init() {}

    func validate() throws {
        func fail(_ s: String) -> ConfigError { ConfigError(message: s) }
        guard vocabulary >= 3 else { throw fail("--vocabulary must be at least 3 (<eos>, <unk> and one word)") }
        guard size > 0, layers > 0, bptt > 0, evalStreams > 0 else { throw fail("--size, --layers, --bptt must be at least 1") }
        guard (0..<1).contains(dropout) else { throw fail("--dropout must be in [0, 1) (got \(dropout))") }
    }
}

/// wide-deep's feature columns and network.
public struct WideDeepOptions: Codable, Equatable, Sendable {
    public var buckets = 10_000
    public var wideBuckets = 1 << 20
    public var embedding = 16
    public var hidden = [256, 128, 64]
    public var parts = WideDeepShape.Parts.both
    public init() {}
    var widestHidden: Int { hidden.max() ?? 0 }

    func validate() throws {
        func fail(_ s: String) -> ConfigError { ConfigError(message: s) }
        guard buckets > 0, wideBuckets > 0, embedding > 0 else {
            throw fail("--buckets, --wide-buckets and --embedding must be at least 1")
        }
        guard buckets < Int(Int32.max) / 64, wideBuckets <= Int(Int32.max) else { throw fail("--buckets or --wide-buckets is too large") }
        guard !hidden.isEmpty, hidden.allSatisfy({ $0 > 0 }) else {
            throw fail("--hidden needs one or more positive widths, e.g. 256,128,64")
        }
    }
}
