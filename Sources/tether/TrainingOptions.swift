import ArgumentParser
import Foundation
import TetherJobFile
import TetherNN
import TetherONNX
import TetherTensor
import TetherTrain

extension OptimizerConfig.Kind: ExpressibleByArgument {}
extension LRSchedule.Kind: ExpressibleByArgument {}
extension WideDeepShape.Parts: ExpressibleByArgument {}
extension ModelSpec.Loss: ExpressibleByArgument {}

/// The flags that define a training run. Every one is optional: unset flags take the defaults of a new
/// run, or the checkpoint's values when resuming.
struct TrainingOptions: ParsableArguments {
    @Option(
        help:
            "Model: \(ModelFamily.names.filter { $0 != "spec" }.joined(separator: ", ")) (default \(TrainingConfig().model); tether models lists what each is), or a model spec: FILE.yaml (a job file's model: gives one inline), or FILE.onnx (a forward-only graph read as a spec, starting from its initializers)."
    )
    var model: String?
    @Option(
        name: .customLong("init"),
        help:
            "Where a new run's weights come from: fresh (drawn, with data-dependent initialization), FILE.onnx (its initializers) or FILE.safetensors (an earlier run's checkpoint; its parameters only) (default: --model FILE.onnx's initializers, else fresh)."
    ) var initFrom: String?
    @Option(
        help:
            "A model spec's loss: cross-entropy, binary-cross-entropy, mse or l1 (default: the spec's; an ONNX graph's is cross-entropy)."
    ) var loss: ModelSpec.Loss?
    @Option(help: "Data: \(DataSource.help) (default: the model's).") var data: String?
    @Option(help: "Held-out samples in other arrays than --data's: npz:FILE or npy:DIR (default: every tenth sample of --data).")
    var testData: String?
    @Option(help: "The share of npz:, npy: or csv: samples held out for evaluation, spread evenly (default 0.1: every tenth).")
    var testFraction: Double?
    @Option(
        help:
            "For csv: data: adult (the UCI Adult census preset) or a schema file (its columns: categorical, numeric, a label or a regression target)."
    ) var schema: String?
    @Option(
        help:
            "Epochs to train (default \(TrainingConfig().epochs)). On --resume: the run's new length (a --max-steps of before no longer applies)."
    ) var epochs: Int?
    @Option(help: "The run's length in steps, whatever --epochs says (the last epoch may be partial).") var maxSteps: Int?
    @Option(help: "Samples per step (per worker; default \(TrainingConfig().batch)).") var batch: Int?
    @Option(help: "Optimizer: sgd, adam, adamw or adagrad (default: adam; lm-tied sgd; wide-deep adagrad for the deep part).")
    var optimizer: OptimizerConfig.Kind?
    @Option(
        help:
            "Learning rate (default \(TrainingConfig().schedule.baseLR); lm-tied \(TrainingConfig.defaults(for: "lm-tied").schedule.baseLR), wide-deep \(TrainingConfig.defaults(for: "wide-deep").schedule.baseLR))."
    ) var lr: Double?
    @Option(help: "SGD momentum.") var momentum: Double?
    @Flag(help: "Nesterov momentum (SGD).") var nesterov = false
    @Option(help: "Weight decay (coupled for sgd/adam, decoupled for adamw).") var weightDecay: Double?
    @Option(
        help:
            "Clip the global gradient norm to this (lm-tied default \(TrainingConfig.defaults(for: "lm-tied").optimizer.clipNorm); 0 is off)."
    ) var clipNorm: Double?
    @Option(help: "Learning-rate schedule: constant, step, cosine or plateau (x gamma when validation loss stalls; lm-tied's default).")
    var schedule: LRSchedule.Kind?
    @Option(help: "Linear warm-up steps.") var warmupSteps: Int?
    @Option(help: "Step schedule: decay every N steps.") var lrStepSize: Int?
    @Option(help: "Step and plateau schedules: decay factor.") var lrGamma: Double?
    @Option(help: "Cosine schedule: final learning rate.") var minLr: Double?
    @Option(help: "Seed of initialization, shuffling and dropout (default \(TrainingConfig().seed)).") var seed: UInt64?
    @Option(help: "Use only the first N training samples.") var trainLimit: Int?
    @Option(help: "Use only the first N test samples.") var testLimit: Int?
    @Option(help: "Also checkpoint every N steps (default: at epoch ends only).") var checkpointEvery: Int?
    @Option(
        help:
            "A log and metrics line every N steps (default \(TrainingConfig().logEvery); lm-tied \(TrainingConfig.defaults(for: "lm-tied").logEvery), wide-deep \(TrainingConfig.defaults(for: "wide-deep").logEvery))."
    ) var logEvery: Int?

    // lm-tied
    @Option(help: "lm-tied: vocabulary size, with <eos> and <unk> (default \(LanguageOptions().vocabulary)).") var vocabulary: Int?
    @Option(help: "lm-tied: embedding and LSTM size (default \(LanguageOptions().size)).") var size: Int?
    @Option(help: "lm-tied: LSTM layers (default \(LanguageOptions().layers)).") var layers: Int?
    @Option(help: "lm-tied: steps of backpropagation through time (default \(LanguageOptions().bptt)).") var bptt: Int?
    @Option(help: "lm-tied: dropout (default \(LanguageOptions().dropout)).") var dropout: Double?
    @Flag(help: "lm-tied: a separate output matrix instead of the tied embedding.") var untied = false
    @Flag(inversion: .prefixedNo, help: "lm-tied: weight-normalized LSTM weights (default on).") var weightNorm: Bool?

    // wide-deep
    @Option(help: "wide-deep: hash buckets per categorical field of the deep embeddings (default \(WideDeepOptions().buckets)).")
    var buckets: Int?
    @Option(help: "wide-deep: hash buckets of the wide part (default \(WideDeepOptions().wideBuckets)).") var wideBuckets: Int?
    @Option(help: "wide-deep: embedding size per field (default \(WideDeepOptions().embedding)).") var embedding: Int?
    @Option(help: "wide-deep: widths of the deep MLP, e.g. 256,128,64.") var hidden: String?
    @Option(help: "wide-deep: wide-deep, wide or deep (the paper's comparison).") var parts: WideDeepShape.Parts?
    @Option(
        help:
            "wide-deep and a spec's wide tower: FTRL learning rate alpha of the wide part (default \(TrainingConfig.defaults(for: "wide-deep").optimizer.ftrl.alpha))."
    ) var ftrlAlpha: Double?
    @Option(help: "wide-deep and a spec's wide tower: FTRL L1 strength.") var ftrlL1: Double?
    @Option(help: "wide-deep and a spec's wide tower: FTRL L2 strength.") var ftrlL2: Double?

    /// No silent options: a setting that means nothing to the model being trained is refused, naming
    /// what it applies to (`--hidden` shapes wide-deep's network, not mlp-wn's).
    func refuseOptionsOfOtherModels(_ c: TrainingConfig) throws {
        let byModel: [(models: [String], what: String, given: [(String, Bool)])] = [
            (
                ["lm-tied"], "lm-tied",
                [
                    ("--vocabulary", vocabulary != nil), ("--size", size != nil), ("--layers", layers != nil), ("--bptt", bptt != nil),
                    ("--dropout", dropout != nil), ("--untied", untied), ("--weight-norm", weightNorm != nil)
                ]
            ),
            (
                ["wide-deep"], "wide-deep",
                [
                    ("--buckets", buckets != nil), ("--wide-buckets", wideBuckets != nil), ("--embedding", embedding != nil),
                    ("--hidden", hidden != nil), ("--parts", parts != nil)
                ]
            ),
            (
                ["wide-deep", "spec"], "a wide part (wide-deep, or a model spec's wide tower)",
                [("--ftrl-alpha", ftrlAlpha != nil), ("--ftrl-l1", ftrlL1 != nil), ("--ftrl-l2", ftrlL2 != nil)]
            ),
            (["wide-deep", "spec"], "csv: data (wide-deep, or a model spec with a table input)", [("--schema", schema != nil)]),
            (["spec"], "a model spec (--model FILE.yaml)", [("--test-data", testData != nil), ("--loss", loss != nil)])
        ]
        for (models, what, given) in byModel where !models.contains(c.model) {
            if let (flag, _) = given.first(where: \.1) {
                let spec = c.model == "spec" ? "; a spec declares its own layers" : ""
                throw ValidationError("\(flag) applies to \(what), not to \(c.modelName)\(spec)")
            }
        }
    }

    /// The spec `--model` gives: a YAML file's (FILE.yaml, FILE.yml), an ONNX graph's (FILE.onnx, its
    /// architecture; its initializers are `--init`'s default), or inline YAML or JSON (a job file's model:
    /// mapping); nil for a family's name.
    static func spec(_ model: String) throws -> ModelSpec? {
        if model.hasSuffix(".yaml") || model.hasSuffix(".yml") { return try ModelSpecFile.read(model) }
        if model.hasSuffix(".onnx") { return try ONNXImport.read(model).spec }
        guard model.contains(":") else { return nil }
        return try ModelSpecFile.parse(model, name: "inline", source: "--model (inline spec)")
    }

    func validate() throws {
        if let hidden, hidden.split(separator: ",").contains(where: { Int($0) == nil }) {
            throw ValidationError("--hidden takes comma-separated widths, e.g. 256,128,64 (got \"\(hidden)\")")
        }
        if let initFrom, initFrom != "fresh", !initFrom.hasSuffix(".onnx"), !initFrom.hasSuffix(".safetensors") {
            throw ValidationError("--init takes fresh, FILE.onnx or FILE.safetensors (got \"\(initFrom)\")")
        }
    }

    /// `base` with every given flag applied.
    func applied(to base: TrainingConfig) throws -> TrainingConfig {
        // Another model starts from that model's defaults (its data, optimizer and schedule); a model
        // spec (a file, or a job file's model: mapping, which arrives as its text) is the "spec" family's.
        var c: TrainingConfig
        if let model, var spec = try Self.spec(model) {
            if let loss { spec.loss = loss }  // before the comparison: a resume that repeats both is the same run
            c = base.spec == spec ? base : TrainingConfig.defaults(for: "spec")
            c.spec = spec
        } else {
            c = model.map { $0 == base.model ? base : TrainingConfig.defaults(for: $0) } ?? base
        }
        try refuseOptionsOfOtherModels(c)
        if let model, model.hasSuffix(".onnx") { c.startFrom = model }
        if let initFrom { c.startFrom = initFrom == "fresh" ? nil : initFrom }
        if let loss { c.spec?.loss = loss }
        if let schema { c.useSchema(schema) }
        // The run's length is what this command says: --epochs alone ends a --max-steps given before
        // (a smoke test with --max-steps, then --resume --epochs N, trains on).
        if epochs != nil { c.maxSteps = maxSteps }
        for field in fields { field.apply(&c) }
        return c
    }

    /// Every flag that sets one field as it is given (an unset flag leaves the field as it was).
    var fields: [Field] {
        [
            Field(testData, \.testData), Field(testFraction, \.testFraction), Field(data, \.data), Field(clipNorm, \.optimizer.clipNorm),
            Field(vocabulary, \.language.vocabulary), Field(size, \.language.size), Field(layers, \.language.layers),
            Field(bptt, \.language.bptt), Field(dropout, \.language.dropout), Field(untied ? true : nil, \.language.untied),
            Field(weightNorm, \.language.weightNorm), Field(buckets, \.wideDeep.buckets), Field(wideBuckets, \.wideDeep.wideBuckets),
            Field(embedding, \.wideDeep.embedding), Field(hidden?.split(separator: ",").compactMap { Int($0) }, \.wideDeep.hidden),
            Field(parts, \.wideDeep.parts), Field(ftrlAlpha, \.optimizer.ftrl.alpha), Field(ftrlL1, \.optimizer.ftrl.l1),
            Field(ftrlL2, \.optimizer.ftrl.l2), Field(epochs, \.epochs), Field(maxSteps, \.maxSteps), Field(batch, \.batch),
            Field(optimizer, \.optimizer.kind), Field(lr, \.schedule.baseLR), Field(momentum, \.optimizer.momentum),
            Field(nesterov ? true : nil, \.optimizer.nesterov), Field(weightDecay, \.optimizer.weightDecay),
            Field(schedule, \.schedule.kind), Field(warmupSteps, \.schedule.warmupSteps), Field(lrStepSize, \.schedule.stepSize),
            Field(lrGamma, \.schedule.gamma), Field(minLr, \.schedule.minLR), Field(seed, \.seed), Field(trainLimit, \.trainLimit),
            Field(testLimit, \.testLimit), Field(checkpointEvery, \.checkpointEvery), Field(logEvery, \.logEvery)
        ]
    }

    /// A flag's value (nil: not given) and the config field it sets.
    struct Field {
        let apply: (inout TrainingConfig) -> Void
        init<T>(_ value: T?, _ field: WritableKeyPath<TrainingConfig, T>) {
            apply = { c in if let value { c[keyPath: field] = value } }
        }
        /// An optional field: set to the value when one is given, never to nil.
        init<T>(_ value: T?, _ field: WritableKeyPath<TrainingConfig, T?>) {
            apply = { c in if let value { c[keyPath: field] = value } }
        }
    }
}

/// What a process may use: `--threads` sizes the compute pool (every split GEMM and parallel kernel;
/// OpenBLAS runs single-threaded inside it), `--max-memory` what a job's configuration may ask of this process's memory.
struct ResourceOptions: ParsableArguments {
    @Option(help: "Compute threads (default: OPENBLAS_NUM_THREADS, else all cores).") var threads: Int?
    @Option(
        help:
            "The memory a job may ask of this process, e.g. 12G or 512M; a configuration that needs more is refused before anything is allocated (default: three quarters of the host's or its cgroup's memory)."
    )
    var maxMemory: String?

    func validate() throws {
        if let threads, !(1...256).contains(threads) { throw ValidationError("--threads must be in 1...256, got \(threads)") }
        if let maxMemory { _ = try MemoryLimit.parse(maxMemory) }
    }

    /// Applies both limits to this process; `holder` names it in a refusal ("this worker").
    func apply(holder: String) {
        if let threads { Compute.setThreads(threads) }
        MemoryLimit.set(maxMemory.flatMap { try? MemoryLimit.parse($0) }, holder: holder)
    }
}
