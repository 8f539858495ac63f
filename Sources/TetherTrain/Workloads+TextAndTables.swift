import Foundation
import TetherData
import TetherNN
import TetherTensor

/// lm-tied on a text corpus: the training text as `batch` streams read `bptt` tokens at a time in order
/// (the state carried between steps, reset at each epoch start), validation on `evalStreams` streams.
final class LanguageModelling: Workload {
    static let vocabularyKey = "tether.vocabulary"
    let lm: LanguageModel<Float>
    let vocabulary: Vocabulary
    let train: TokenStreams, validation: TokenStreams
    let options: LanguageOptions
    var model: any Model<Float> { lm }
    var unit: String { "tokens" }

    /// A fresh run counts the vocabulary from the training split; a checkpoint's (in `metadata`) is reused.
    init(_ config: TrainingConfig, metadata: [String: String], rng: inout RNG) throws {
        options = config.language
        let corpus = try DataSource.text(config.data)
        if let saved = metadata[Self.vocabularyKey] {
            do { vocabulary = try JSONDecoder().decode(Vocabulary.self, from: Data(saved.utf8)) } catch {
                throw ConfigError(message: "checkpoint metadata \(Self.vocabularyKey) is not a vocabulary: \(error)")
            }
        } else {
            vocabulary = Vocabulary(counting: corpus.trainLines, size: options.vocabulary)
        }
        var trainTokens = vocabulary.encode(corpus.trainLines)
        if let n = config.trainLimit { trainTokens = Array(trainTokens.prefix(n)) }
        var validTokens = vocabulary.encode(corpus.validationLines)
        if let n = config.testLimit { validTokens = Array(validTokens.prefix(n)) }
        train = TokenStreams(trainTokens, columns: config.batch)
        validation = TokenStreams(validTokens, columns: min(options.evalStreams, max(1, validTokens.count / 2)))
        guard train.steps(bptt: options.bptt) > 0 else {
            throw ConfigError(message: "\(config.data): \(trainTokens.count) training tokens are too few for \(config.batch) streams (--batch)")
        }
        let shape = LanguageModelShape(vocabulary: vocabulary.count, size: options.size, layers: options.layers,
                                       dropout: options.dropout, tied: !options.untied, weightNorm: options.weightNorm)
        lm = LanguageModel(shape, trainStreams: config.batch, rng: &rng)
    }

    var stepsPerEpoch: Int { train.steps(bptt: options.bptt) }
    var sizeSummary: String {
        "vocabulary \(vocabulary.count), \(train.tokens.count) training / \(validation.tokens.count) validation tokens, "
            + "\(lm.shape.tied ? "tied" : "untied") output, \(lm.shape.weightNorm ? "weight-normalized" : "plain") LSTM"
    }
    var checkpointMetadata: [String: String] {
        [Self.vocabularyKey: String(data: try! JSONEncoder().encode(vocabulary), encoding: .utf8)!]
    }

    func initializeFromData() {}
    func startEpoch(_ epoch: Int) { lm.resetState() }

    func accumulateGradients(epoch: Int, step: Int) -> BatchStats {
        let w = train.window(step: step, bptt: options.bptt, streams: 0..<train.columns)
        return lm.accumulateGradients(inputs: w.inputs, targets: w.targets, steps: w.steps, scale: 1 / Float(w.inputs.count))
    }

    func evaluate() -> EvaluationReport {
        var state: [LSTMLayer<Float>.State]?
        var total = BatchStats()
        for s in 0..<validation.steps(bptt: options.bptt) {
            let w = validation.window(step: s, bptt: options.bptt, streams: 0..<validation.columns)
            let (stats, next) = lm.evaluate(inputs: w.inputs, targets: w.targets, steps: w.steps, streams: validation.columns, state: state)
            total = total + stats
            state = next
        }
        return EvaluationReport(kind: .languageModel, stats: total)
    }
}

/// wide-deep on tabular rows (synthetic-clicks, or csv: with a schema), shuffled each epoch.
final class ClickPrediction: Workload {
    let wideDeep: WideDeep<Float>
    let train: TabularDataset, test: TabularDataset
    let config: TrainingConfig
    let steps: ShuffledSteps
    var model: any Model<Float> { wideDeep }

    init(_ config: TrainingConfig, rng: inout RNG) throws {
        self.config = config
        let (train, test) = try DataSource.tabular(config.data, schema: config.schema, seed: config.seed)
        (self.train, self.test) = (train.prefix(config.trainLimit), test.prefix(config.testLimit))
        steps = ShuffledSteps(seed: config.seed, count: self.train.count, batch: config.batch)
        let o = config.wideDeep
        wideDeep = WideDeep(WideDeepShape(fields: train.fields, numeric: train.numericNames.count, crosses: train.crosses, buckets: o.buckets,
                                          wideBuckets: o.wideBuckets, embedding: o.embedding, hidden: o.hidden, parts: o.parts), rng: &rng)
    }

    var stepsPerEpoch: Int { steps.perEpoch }
    var sizeSummary: String {
        "\(train.count) training / \(test.count) test rows, \(train.fields) categorical + \(train.numericNames.count) numeric features, "
            + "\(train.crosses.count) crosses, parts: \(config.wideDeep.parts.rawValue)"
    }

    static func batch(_ data: TabularDataset, _ rows: ArraySlice<Int>) -> TabularBatch<Float> {
        let (c, x, y) = data.gather(rows)
        return TabularBatch(categorical: c, numeric: Tensor(shape: [y.count, data.numericNames.count], scalars: x), labels: y)
    }

    func initializeFromData() { wideDeep.initializeFromData(Self.batch(train, steps.samples(epoch: 0, step: 0)), reduce: { _ in }) }

    func accumulateGradients(epoch: Int, step: Int) -> BatchStats {
        let b = Self.batch(train, steps.samples(epoch: epoch, step: step))
        return wideDeep.accumulateGradients(b, scale: 1 / Float(b.count))
    }

    func evaluate() -> EvaluationReport {
        var scores: [Float] = []
        let stats = inBatches(test.count, of: 4096) { r in
            let (s, p) = wideDeep.evaluate(Self.batch(test, Array(r)[...]))
            scores += p
            return s
        }
        return EvaluationReport(kind: .clickPrediction, stats: stats, auc: areaUnderROC(scores: scores, labels: test.labels))
    }
}
