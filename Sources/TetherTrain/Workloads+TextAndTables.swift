import Foundation
import TetherData
import TetherNN
import TetherTensor

/// lm-tied on a text corpus: the training text as `batch` x shards streams read `bptt` tokens at a time
/// in order (the state carried between steps, reset at each epoch start), each shard taking `batch`
/// contiguous streams; validation on `evalStreams` streams, shared out likewise.
final class LanguageModelling: Workload {
    static let vocabularyKey = "tether.vocabulary"
    let lm: LanguageModel<Float>
    let vocabulary: Vocabulary
    let train: TokenStreams, validation: TokenStreams
    let options: LanguageOptions
    let trainStreams: Range<Int>, validationStreams: Range<Int>
    /// Streams of all shards together (the gradient's divisor counts every shard's tokens).
    let globalColumns: Int
    var model: any Model<Float> { lm }
    var unit: String { "tokens" }
    /// Each held-out line's tokens after an `<eos>` (as it follows one in the stream), without its own:
    /// what `predictions` continues. Empty when the text is served (a worker never predicts).
    private(set) var heldOutLines: [[Int32]] = []

    /// A fresh run counts the vocabulary from the training split; a checkpoint's (in `metadata`) is reused.
    /// Served (`source`): the coordinator's vocabulary and, of each split, only this shard's streams
    /// (a contiguous run of tokens), fetched once.
    init(_ config: TrainingConfig, shard: Shard, metadata: [String: String], source: SampleSource?, rng: inout RNG) throws {
        options = config.language
        globalColumns = config.globalBatch(workers: shard.count)
        let evalColumns = { (tokens: Int) in min(config.language.evalStreams, max(1, tokens / 2)) }
        if let source {
            func streams(_ split: FashionMNIST.Split, columns: (Int) -> Int) throws -> (TokenSequence, Range<Int>, Int) {
                let (count, shape) = try source.describe(split)
                let all = columns(count), length = count / all, part = shard.part(of: all)
                let rows = try source.rows(split, Array(part.lowerBound * length..<part.upperBound * length))
                return (try TokenSequence(shape: shape, rows: rows), part, length)
            }
            let (t, tPart, tLength) = try streams(.train) { [globalColumns] _ in globalColumns }
            let (v, vPart, _) = try streams(.test, columns: evalColumns)
            vocabulary = t.vocabulary
            guard tLength > 1 else {
                throw ConfigError(message: "\(config.data): too few training tokens for \(globalColumns) streams (--batch x workers)")
            }
            train = TokenStreams(t.tokens, columns: tPart.count)
            validation = TokenStreams(v.tokens, columns: max(vPart.count, 1))
            (trainStreams, validationStreams) = (0..<tPart.count, 0..<vPart.count)
        } else {
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
            heldOutLines = corpus.validationLines.map { [vocabulary] line in [0] + vocabulary.encode([line]).dropLast() }
            var validTokens = vocabulary.encode(corpus.validationLines)
            if let n = config.testLimit { validTokens = Array(validTokens.prefix(n)) }
            train = TokenStreams(trainTokens, columns: globalColumns)
            validation = TokenStreams(validTokens, columns: evalColumns(validTokens.count))
            guard train.steps(bptt: options.bptt) > 0 else {
                throw ConfigError(
                    message:
                        "\(config.data): \(trainTokens.count) training tokens are too few for \(train.columns) streams (--batch x workers)")
            }
            trainStreams = shard.part(of: train.columns)
            validationStreams = shard.part(of: validation.columns)
        }
        let shape = LanguageModelShape(
            vocabulary: vocabulary.count, size: options.size, layers: options.layers,
            dropout: options.dropout, tied: !options.untied, weightNorm: options.weightNorm)
        lm = LanguageModel(shape, trainStreams: trainStreams.count, rng: &rng)
    }

    var stepsPerEpoch: Int { train.steps(bptt: options.bptt) }
    var sizeSummary: String {
        "vocabulary \(vocabulary.count), \(train.tokens.count) training / \(validation.tokens.count) validation tokens, "
            + "\(lm.shape.tied ? "tied" : "untied") output, \(lm.shape.weightNorm ? "weight-normalized" : "plain") LSTM"
    }
    var checkpointMetadata: [String: String] {
        [Self.vocabularyKey: String(data: try! JSONEncoder().encode(vocabulary), encoding: .utf8)!]
    }

    func initializeFromData(reduce: StatisticsReducer) {}
    func startEpoch(_ epoch: Int) { lm.resetState() }
    var servedSplits: (train: any ServableDataset, test: any ServableDataset) {
        (TokenSequence(vocabulary: vocabulary, tokens: train.tokens), TokenSequence(vocabulary: vocabulary, tokens: validation.tokens))
    }

    func accumulateGradients(epoch: Int, step: Int) -> BatchStats {
        let w = train.window(step: step, bptt: options.bptt, streams: trainStreams)
        return lm.accumulateGradients(inputs: w.inputs, targets: w.targets, steps: w.steps, scale: 1 / Float(w.steps * globalColumns))
    }

    func evaluate() -> EvaluationReport {
        var state: [LSTMLayer<Float>.State]?
        var total = BatchStats()
        for s in 0..<validation.steps(bptt: options.bptt) where !validationStreams.isEmpty {
            let w = validation.window(step: s, bptt: options.bptt, streams: validationStreams)
            let (stats, next) = lm.evaluate(
                inputs: w.inputs, targets: w.targets, steps: w.steps, streams: validationStreams.count, state: state)
            total = total + stats
            state = next
        }
        return EvaluationReport(kind: .languageModel, stats: total)
    }
}

/// lm-tied's prediction per held-out line: the distribution of the token that follows it.
extension LanguageModelling: Predicting {
    var objective: Objective { .classes }
    var classNames: [String]? { vocabulary.words }
    var predictionCount: Int { heldOutLines.count }
    /// Lines of equal length in a batch run together, as streams of one window; rows stay in line order.
    func predictions(inBatchesOf size: Int, _ body: (Tensor<Float>) throws -> Void) rethrows {
        let v = vocabulary.count
        for start in stride(from: 0, to: heldOutLines.count, by: size) {
            let lines = heldOutLines[start..<min(start + size, heldOutLines.count)]
            var out = [Float](repeating: 0, count: lines.count * v)
            for (t, rows) in Dictionary(grouping: lines.indices, by: { lines[$0].count }) {
                var ids = [Int32](repeating: 0, count: t * rows.count)  // time-major (T, B)
                for (j, r) in rows.enumerated() { for (s, id) in lines[r].enumerated() { ids[s * rows.count + j] = id } }
                let p = lm.nextTokenProbabilities(ids, steps: t, streams: rows.count)
                p.withPointer { p in
                    for (j, r) in rows.enumerated() {
                        out.withUnsafeMutableBufferPointer { ($0.baseAddress! + (r - start) * v).update(from: p + j * v, count: v) }
                    }
                }
            }
            try body(Tensor(shape: [lines.count, v], scalars: out))
        }
    }
}

/// wide-deep on tabular rows (synthetic-clicks, or csv: with a schema), shuffled each epoch.
final class ClickPrediction: ShuffledWorkload {
    let wideDeep: WideDeep<Float>
    let splits: ShuffledSplits<TabularDataset>
    let config: TrainingConfig
    var model: any Model<Float> { wideDeep }

    init(_ config: TrainingConfig, shard: Shard, source: SampleSource?, rng: inout RNG) throws {
        self.config = config
        if let source {
            splits = ShuffledSplits(
                train: try SplitSamples(source: source, split: .train), test: try SplitSamples(source: source, split: .test),
                config: config, shard: shard)
        } else {
            let (train, test) = try DataSource.tabular(
                config.data, schema: DataSource.schema(config), seed: config.seed, testFraction: config.testFraction)
            splits = ShuffledSplits(
                train: SplitSamples(files: train.prefix(config.trainLimit), split: .train),
                test: SplitSamples(files: test.prefix(config.testLimit), split: .test), config: config, shard: shard)
        }
        guard splits.train.dataset.target == nil else {
            throw ConfigError(
                message:
                    "\(config.data): wide-deep predicts a label (0 or 1); the schema names a target column: train a model spec with loss: mse"
            )
        }
        let train = splits.train.dataset, o = config.wideDeep
        wideDeep = WideDeep(
            WideDeepShape(
                fields: train.fields, numeric: train.numericNames.count, crosses: train.crosses, buckets: o.buckets,
                wideBuckets: o.wideBuckets, embedding: o.embedding, hidden: o.hidden, parts: o.parts), rng: &rng)
    }

    var sizeSummary: String {
        let d = splits.train.dataset
        return
            "\(splits.train.count) training / \(splits.test.count) test rows, \(d.fields) categorical + \(d.numericNames.count) numeric features, "
            + "\(ProgressDisplay.count(d.crosses.count, "cross")), parts: \(config.wideDeep.parts.rawValue)"
    }

    static func batch(_ samples: SplitSamples<TabularDataset>, _ indices: ArraySlice<Int>) -> TabularBatch<Float> {
        let data = samples.dataset
        let (c, x, y) = data.gather(samples.rows(indices))
        return TabularBatch(categorical: c, numeric: Tensor(shape: [y.count, data.numericNames.count], scalars: x), labels: y)
    }

    func initializeFromData(reduce: StatisticsReducer) {
        wideDeep.initializeFromData(Self.batch(splits.train, splits.steps.samples(epoch: 0, step: 0).local), reduce: reduce)
    }

    func accumulateGradients(epoch: Int, step: Int) -> BatchStats {
        let (local, global) = splits.steps.samples(epoch: epoch, step: step)
        return wideDeep.accumulateGradients(Self.batch(splits.train, local), scale: 1 / Float(global))
    }

    func evaluate() -> EvaluationReport {
        var scores: [Float] = [], labels: [Int32] = []
        let stats = splits.evaluate(inBatchesOf: 4096) { r in
            let b = Self.batch(splits.test, r)
            let (s, p) = wideDeep.evaluate(b)
            scores += p
            labels += b.labels
            return s
        }
        return EvaluationReport(
            kind: .clickPrediction, stats: stats, auc: areaUnderROC(scores: scores, labels: labels), scores: scores, labels: labels)
    }
}

extension ClickPrediction: Predicting {
    var objective: Objective { .binary }
    var predictionCount: Int { splits.test.count }
    /// Each held-out row's click probability, (B, 1).
    func predictions(inBatchesOf size: Int, _ body: (Tensor<Float>) throws -> Void) rethrows {
        for positions in splits.heldOutInOrder(inBatchesOf: size) {
            let p = wideDeep.evaluate(Self.batch(splits.test, positions)).1
            try body(Tensor(shape: [p.count, 1], scalars: p))
        }
    }
}
