import Foundation
import Testing
@testable import TetherTrain
import TetherData
import TetherNN

@Suite struct ShardingTests {
    /// Over a grid of dataset sizes, batch sizes and worker counts: every sample exactly once per epoch,
    /// shards disjoint and within one of each other in size, the same plan from the same seed, and a
    /// plan rebuilt mid-epoch (as a resumed run does) gives the same remaining steps.
    @Test(arguments: [1, 2, 3, 5], [1, 7, 64, 100, 101])
    func everySampleExactlyOncePerEpoch(workers: Int, count: Int) {
        for batch in [1, 3, 16] {
            let shards = (0..<workers).map {
                ShuffledSteps(seed: 11, count: count, globalBatch: batch * workers, shard: Shard(rank: $0, count: workers))
            }
            for epoch in 0..<2 {
                var seen: [Int] = []
                for step in 0..<shards[0].perEpoch {
                    let parts = shards.map { $0.samples(epoch: epoch, step: step) }
                    #expect(Set(parts.map(\.global)).count == 1)
                    #expect(parts.map(\.local.count).reduce(0, +) == parts[0].global)
                    #expect(parts.map(\.local.count).max()! - parts.map(\.local.count).min()! <= 1)
                    seen += parts.flatMap(\.local)
                }
                #expect(seen.sorted() == Array(0..<count), "workers \(workers), count \(count), batch \(batch)")
                // The same seed gives the same plan; a fresh object (a resumed run) agrees mid-epoch.
                let again = ShuffledSteps(
                    seed: 11, count: count, globalBatch: batch * workers, shard: Shard(rank: workers - 1, count: workers))
                let mid = shards[0].perEpoch / 2
                #expect(
                    Array(again.samples(epoch: epoch, step: mid).local) == Array(shards[workers - 1].samples(epoch: epoch, step: mid).local)
                )
            }
            let otherSeed = ShuffledSteps(seed: 12, count: count, globalBatch: batch, shard: .whole)
            if count > 3 {
                #expect(
                    Array(otherSeed.samples(epoch: 0, step: 0).local)
                        != Array(ShuffledSteps(seed: 11, count: count, globalBatch: batch, shard: .whole).samples(epoch: 0, step: 0).local))
            }
        }
    }

    /// A run resumed with another number of workers keeps its global batch: dealt over any number of
    /// shards (more or fewer than the batch, dividing it or not), every step takes the same samples.
    @Test(arguments: [1, 2, 3, 5, 8], [7, 100, 101])
    func aGlobalBatchDealtOverAnyWorkerCountTakesTheSameSamples(workers: Int, count: Int) {
        let whole = ShuffledSteps(seed: 4, count: count, globalBatch: 6, shard: .whole)
        let shards = (0..<workers).map { ShuffledSteps(seed: 4, count: count, globalBatch: 6, shard: Shard(rank: $0, count: workers)) }
        #expect(shards[0].perEpoch == whole.perEpoch)
        for epoch in 0..<2 {
            for step in 0..<whole.perEpoch {
                let parts = shards.map { $0.samples(epoch: epoch, step: step) }
                #expect(parts.allSatisfy { $0.global == whole.samples(epoch: epoch, step: step).global })
                #expect(
                    parts.flatMap(\.local).sorted() == whole.samples(epoch: epoch, step: step).local.sorted(),
                    "workers \(workers), step \(step)")
            }
        }
    }

    @Test func evaluationIsShardedExactlyOnce() {
        for workers in [1, 3, 4] {
            var all: [Int] = []
            for r in 0..<workers {
                _ = inBatches(10, of: 3, shard: Shard(rank: r, count: workers)) {
                    all += $0; return BatchStats()
                }
            }
            #expect(all.sorted() == Array(0..<10))
        }
    }

    /// The sum of N shards' gradients (each scaled by 1 / the global count) equals the gradient of one
    /// process whose batch is the union: the arithmetic the cluster's all-reduce relies on.
    @Test(arguments: ["lm-tied", "wide-deep", "spec", "spec-tokens"])
    func shardsSumToTheWholeBatchGradient(model: String) throws {
        let corpus = try writeToyCorpus()
        defer { try? FileManager.default.removeItem(at: corpus) }
        var c = model == "lm-tied" ? languageConfig(corpus: corpus) : TrainingConfig.defaults(for: model)
        c.language.dropout = 0  // dropout masks are drawn per process; the cluster's equivalence test covers them
        if model == "wide-deep" {
            c.data = "synthetic-clicks:600"
            c.wideDeep.buckets = 100; c.wideDeep.wideBuckets = 1 << 10; c.wideDeep.hidden = [8]
            c.batch = 17
        }
        if model == "spec" {
            // a table's categories through a row-sparse embedding, its numbers beside them, to a regression
            var csv = ""
            for i in 0..<300 {
                csv += "\(["a", "b", "c", "d"][i % 4]),\(["x", "y"][i % 7 % 2]),\(Double(i % 13) / 3),\(Double(i % 11) - 5)\n"
            }
            try csv.write(to: corpus.appendingPathComponent("t.csv"), atomically: true, encoding: .utf8)
            c.data = "csv:" + corpus.appendingPathComponent("t.csv").path
            c.schemaText = "columns p, q, n, y\ncategorical p, q\nnumeric n\ntarget y\n"
            var embedding = LayerSpec(.embedding), hidden = LayerSpec(.dense), out = LayerSpec(.dense)
            (embedding.out, embedding.buckets, embedding.sparse, hidden.out, hidden.weightNorm, out.out) = (3, 8, true, 5, true, 1)
            c.spec = ModelSpec(
                name: "t", input: [], table: .init(categorical: 2, numeric: 1), layers: [embedding, hidden, LayerSpec(.tanh), out],
                loss: .mse)
            c.spec!.wide = .init(buckets: 64, crosses: [[0, 1]])  // and a wide tower
            c.batch = 9
        }
        if model == "spec-tokens" {
            // token ids through an embedding and two lstms (the first giving every step) to classes
            var x: [UInt8] = [], y: [UInt8] = []
            for i in 0..<200 {
                for t in 0..<6 { withUnsafeBytes(of: Int64((i * 7 + t * t) % 9).littleEndian) { x += $0 } }
                withUnsafeBytes(of: Int64(i % 3).littleEndian) { y += $0 }
            }
            let npz = NumPy.npz([
                ("x", NumPyArray(dtype: .int64, shape: [200, 6], bytes: x)), ("y", NumPyArray(dtype: .int64, shape: [200], bytes: y))
            ])
            try Data(npz).write(to: corpus.appendingPathComponent("t.npz"))
            c = TrainingConfig.defaults(for: "spec")
            c.model = "spec"
            c.data = "npz:" + corpus.appendingPathComponent("t.npz").path
            var embedding = LayerSpec(.embedding), first = LayerSpec(.lstm), second = LayerSpec(.lstm), out = LayerSpec(.dense)
            (embedding.out, first.out, first.sequences, first.weightNorm, second.out, out.out) = (4, 5, true, true, 3, 3)
            c.spec = ModelSpec(name: "t", input: [], tokens: .init(steps: 6, vocabulary: 9), layers: [embedding, first, second, out])
            c.batch = 7
        }
        let whole = try Workloads.make(
            {
                var w = c; w.batch = 3 * c.batch; return w
            }())
        let parts = try (0..<3).map { try Workloads.make(c, shard: Shard(rank: $0, count: 3)) }
        func gradient(_ w: any Workload, step: Int) -> [Float] {
            let m = w.model
            m.arena.zeroGrads()
            w.startEpoch(0)
            _ = w.accumulateGradients(epoch: 0, step: step)
            var g = Array(UnsafeBufferPointer(start: m.arena.grads, count: m.arena.count))
            g.withUnsafeMutableBufferPointer { p in
                for s in m.sparseGradients { s.addDense(into: p.baseAddress! + s.slot.offset); s.clear() }
            }
            return g
        }
        let reference = gradient(whole, step: 1)
        let summed = parts.map { gradient($0, step: 1) }.reduce([Float](repeating: 0, count: reference.count)) { zip($0, $1).map(+) }
        let scale = reference.map { abs($0) }.max()!
        let worst = zip(reference, summed).map { abs($0 - $1) }.max()!
        #expect(scale > 0 && worst <= 1e-5 * scale, "worst difference \(worst) of \(scale)")
    }
}

/// Rows a coordinator serves are checked as they arrive, as rows read from files are: a label beyond
/// the spec's classes, or a token id beyond its vocabulary, is an error naming the sample, not a trap in
/// the loss or the embedding.
@Suite struct ServedRowsTests {
    /// Serves one dataset's rows from memory (the worker's side of `--serve-data`, without the socket).
    final class Rows: SampleSource {
        let data: ArrayDataset
        init(_ data: ArrayDataset) { self.data = data }
        func describe(_ split: FashionMNIST.Split) throws -> (count: Int, shape: [UInt8]) { (data.count, data.encodedShape()) }
        func rows(_ split: FashionMNIST.Split, _ indices: [Int]) throws -> [UInt8] { data.encodedRows(indices) }
    }

    @Test(arguments: [false, true])
    func aServedRowTheSpecCannotIndexIsNamed(tokens: Bool) throws {
        var c = TrainingConfig.defaults(for: "spec")
        (c.model, c.data, c.batch) = ("spec", "npz:served", 4)
        var out = LayerSpec(.dense)
        out.out = 3
        if tokens {
            var embedding = LayerSpec(.embedding), lstm = LayerSpec(.lstm)
            (embedding.out, lstm.out) = (2, 2)
            c.spec = ModelSpec(name: "t", input: [], tokens: .init(steps: 2, vocabulary: 5), layers: [embedding, lstm, out])
        } else {
            c.spec = ModelSpec(name: "t", input: [2], layers: [out])
        }
        // 8 samples of 2 values; the last one's label (7) or its second value (9) is out of range
        let values: [Float] = (0..<16).map { Float($0 % 5) }.enumerated().map { $0.offset == 15 && tokens ? 9 : $0.element }
        let labels: [Int32] = (0..<8).map { $0 == 7 && !tokens ? 7 : Int32($0 % 3) }
        let data = ArrayDataset(values: values, labels: labels, sampleShape: [2], classes: 8)
        let workload = try Workloads.make(c, source: Rows(data))
        #expect { try workload.fetch(epoch: 0) } throws: {
            "\($0)".contains(tokens ? "fetched training sample " : "label 7 of fetched training sample ")
                && "\($0)".contains(tokens ? "position 1 holds 9.0, not a token id in 0..<5" : "is not in 0..<3")
        }
    }
}
