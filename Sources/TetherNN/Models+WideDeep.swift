import TetherTensor

/// One batch of tabular rows: F categorical value hashes and M numbers per row, a label in {0, 1}.
public struct TabularBatch<T: Scalar> {
    public var categorical: [UInt64]  // (B, F)
    public var numeric: Tensor<T>  // (B, M)
    public var labels: [Int32]
    public var count: Int { labels.count }
    public init(categorical: [UInt64], numeric: Tensor<T>, labels: [Int32]) {
        (self.categorical, self.numeric, self.labels) = (categorical, numeric, labels)
    }
}

/// The features and sizes of a wide & deep model.
public struct WideDeepShape: Codable, Sendable, Equatable {
    public enum Parts: String, Codable, Sendable, CaseIterable { case both = "wide-deep", wide, deep }
    public var fields: Int
    public var numeric: Int
    /// Pairs of fields crossed for the wide part.
    public var crosses: [[Int]]
    /// Hash buckets per categorical field in the deep part's embedding table.
    public var buckets: Int
    /// Hash buckets of the wide part (raw values and crosses share them).
    public var wideBuckets: Int
    public var embedding: Int
    public var hidden: [Int]
    public var parts: Parts
    public init(
        fields: Int, numeric: Int, crosses: [[Int]], buckets: Int = 100_000, wideBuckets: Int = 1 << 20,
        embedding: Int = 16, hidden: [Int] = [256, 128, 64], parts: Parts = .both
    ) {
        (self.fields, self.numeric, self.crosses, self.buckets, self.wideBuckets) = (fields, numeric, crosses, buckets, wideBuckets)
        (self.embedding, self.hidden, self.parts) = (embedding, hidden, parts)
    }
    public var deepInputs: Int { fields * embedding + numeric }
}

/// `wide-deep` (Cheng et al. 2016): logit = wide(x) + deep(x) + b, logistic loss.
/// - wide: a linear model over hashed raw values and hashed crosses: one weight per bucket of
///   `wide.weight` (W, 1), updated by FTRL-Proximal from row-sparse gradients.
/// - deep: each field's value embedded (`deep.embedding.weight` (F * buckets, E), field f owning rows
///   f * buckets ..< (f + 1) * buckets, row-sparse gradients), concatenated with the numbers, into a
///   weight-normalized ReLU MLP (`deep.layers.*`) ending in one unit.
/// `parts` keeps only one side for the paper's comparison.
public final class WideDeep<T: Scalar>: Model {
    public let kind = "wide-deep"
    public let shape: WideDeepShape
    public let arena: ParameterArena<T>
    public let context: ModelContext<T>
    let wide: Embedding<T>?
    let embeddings: Embedding<T>?
    let mlp: Sequential<T>?
    let bias: ParameterSlot
    let loss = LogisticLoss<T>()

    public init(_ shape: WideDeepShape, rng: inout RNG) {
        self.shape = shape
        var layout = ArenaLayout()
        let useWide = shape.parts != .deep, useDeep = shape.parts != .wide
        wide = useWide ? Embedding(&layout, prefix: "wide.", rows: shape.wideBuckets, width: 1, initializer: .zeros, sparse: true) : nil
        if useDeep {
            embeddings = Embedding(
                &layout, prefix: "deep.embedding.", rows: shape.fields * shape.buckets, width: shape.embedding,
                initializer: .normal(std: 1 / Double(shape.embedding).squareRoot()), sparse: true)
            var layers: [any Layer<T>] = [], width = shape.deepInputs
            for (i, h) in shape.hidden.enumerated() {
                layers += [
                    Dense<T>(&layout, prefix: "deep.layers.\(2 * i).", inFeatures: width, outFeatures: h, weightNorm: true),
                    Activation<T>.relu()
                ]
                width = h
            }
            layers.append(
                Dense<T>(
                    &layout, prefix: "deep.layers.\(2 * shape.hidden.count).", inFeatures: width, outFeatures: 1, bias: false,
                    weightNorm: true))
            mlp = Sequential(layers)
        } else {
            (embeddings, mlp) = (nil, nil)
        }
        bias = layout.add("bias", shape: [1], initializer: .zeros)
        arena = ParameterArena(layout: layout)
        arena.initialize(rng: &rng)
        context = ModelContext(arena: arena, rng: rng)
    }

    public var sparseGradients: [SparseRows<T>] { [wide?.sparseGradient, embeddings?.sparseGradient].compactMap { $0 } }
    public var ftrlParameters: Set<String> { wide == nil ? [] : ["wide.weight"] }

    // Feature hashing. splitmix64's finalizer spreads any 64-bit input over all bits.
    @inline(__always) static func mix(_ x: UInt64) -> UInt64 {
        var z = x &+ 0x9E37_79B9_7F4A_7C15
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }

    /// Wide bucket ids (B, F + crosses): each raw value, then each cross, hashed with its field(s).
    func wideIDs(_ categorical: [UInt64], rows b: Int) -> [Int32] {
        let f = shape.fields, k = f + shape.crosses.count, w = UInt64(shape.wideBuckets)
        var ids = [Int32](repeating: 0, count: b * k)
        for r in 0..<b {
            let row = r * f
            for j in 0..<f { ids[r * k + j] = Int32(Self.mix(categorical[row + j] ^ (UInt64(j + 1) &* 0x51_7CC1_B727_220A)) % w) }
            for (c, pair) in shape.crosses.enumerated() {
                let h = Self.mix(
                    categorical[row + pair[0]] &* 0x2545_F491_4F6C_DD1D ^ Self.mix(categorical[row + pair[1]]) ^ UInt64(1000 + c))
                ids[r * k + f + c] = Int32(h % w)
            }
        }
        return ids
    }

    /// Deep embedding rows (B, F): field f's bucket of its value.
    func deepIDs(_ categorical: [UInt64], rows b: Int) -> [Int32] {
        let f = shape.fields, n = UInt64(shape.buckets)
        return (0..<b * f).map { i in Int32((i % f) * shape.buckets + Int(Self.mix(categorical[i] ^ UInt64(i % f)) % n)) }
    }

    /// The deep part's input (B, F*E + M): the field embeddings, then the numbers.
    private func deepInput(_ batch: TabularBatch<T>) -> Tensor<T> {
        let b = batch.count, fe = shape.fields * shape.embedding, m = shape.numeric, width = fe + m
        let e = embeddings!.forward(ids: deepIDs(batch.categorical, rows: b), context)
        return Tensor.uninitialized([b, width]) { x in
            e.withPointer { T.copyColumns(x, ldy: width, $0, ldx: fe, rows: b, columns: fe) }
            batch.numeric.withPointer { T.copyColumns(x + fe, ldy: width, $0, ldx: m, rows: b, columns: m) }
        }
    }

    private func logits(_ batch: TabularBatch<T>) -> Tensor<T> {
        precondition(
            batch.categorical.count == batch.count * shape.fields && batch.numeric.shape == [batch.count, shape.numeric],
            "a batch of \(batch.count) rows needs \(shape.fields) categorical and \(shape.numeric) numeric features per row")
        let b = batch.count, k = shape.fields + shape.crosses.count
        var z = Tensor<T>(shape: [b], scalars: [T](repeating: arena.value(bias)[0], count: b))
        z.withMutablePointer { zp in
            if let wide {
                wide.forward(ids: wideIDs(batch.categorical, rows: b), context).withPointer {
                    T.sumPerChannel(zp, $0, channels: b, columns: k)
                }
            }
            if let mlp { mlp.forward(deepInput(batch), context).withPointer { T.axpy(zp, $0, alpha: 1, count: b) } }
        }
        return z
    }

    /// Accumulates `scale` x the gradient of the summed losses (sparse rows for the two tables).
    public func accumulateGradients(_ batch: TabularBatch<T>, scale: T) -> BatchStats {
        context.training = true
        let lossSum = loss.forward(logits: logits(batch), labels: batch.labels)
        let dz = loss.backward(scale: scale), b = batch.count
        dz.withPointer { arena.grad(bias)[0] += T(T.sum($0, count: b)) }
        if let wide {
            let k = shape.fields + shape.crosses.count
            wide.backward(Tensor.uninitialized([b * k, 1]) { d in dz.withPointer { T.repeatPerRow(d, $0, rows: b, columns: k) } }, context)
        }
        if let mlp, let embeddings {
            let dx = mlp.backward(dz.reshaped([b, 1]), context, needsInputGradient: true)!
            let fe = shape.fields * shape.embedding, width = shape.deepInputs
            embeddings.backward(
                Tensor.uninitialized([b * shape.fields, shape.embedding]) { d in
                    dx.withPointer { T.copyColumns(d, ldy: fe, $0, ldx: width, rows: b, columns: fe) }
                }, context)
        }
        return BatchStats(lossSum: lossSum, correct: loss.correctCount(), count: b)
    }

    /// Loss and accuracy of the batch, and each row's predicted probability (for AUC).
    public func evaluate(_ batch: TabularBatch<T>) -> (BatchStats, [T]) {
        context.training = false
        defer { context.training = true }
        let lossSum = loss.forward(logits: logits(batch), labels: batch.labels)
        return (BatchStats(lossSum: lossSum, correct: loss.correctCount(), count: batch.count), loss.probabilities)
    }

    /// Data-dependent init of the weight-normalized MLP from one batch.
    public func initializeFromData(_ batch: TabularBatch<T>, reduce: StatisticsReducer) {
        guard let mlp else { return }
        context.training = true
        _ = mlp.initializeFromData(deepInput(batch), context, reduce: reduce)
    }
}

/// A model spec's wide tower (Cheng et al.'s wide part): a linear model over a table's hashed
/// categorical values and crosses, one weight per bucket of `wide.weight` (W, 1), zeros at first, with
/// row-sparse gradients (FTRL-Proximal updates it when the spec says so). x (B, F + M) is the table
/// tensor a spec's input gets (each value's hash cut to 24 bits first); y (B, 1) is the sum of the row's
/// F + crosses weights, added to the deep tower's one output.
public final class WideLinear<T: Scalar> {
    public let table: Embedding<T>
    public let fields: Int, numeric: Int, buckets: Int
    /// Pairs of categorical columns whose value combinations get weights of their own.
    public let crosses: [[Int]]
    private var rows = 0

    public init(_ layout: inout ArenaLayout, fields: Int, numeric: Int, buckets: Int, crosses: [[Int]]) {
        precondition(crosses.allSatisfy { $0.count == 2 && $0.allSatisfy { (0..<fields).contains($0) } })
        (self.fields, self.numeric, self.buckets, self.crosses) = (fields, numeric, buckets, crosses)
        table = Embedding(&layout, prefix: "wide.", rows: buckets, width: 1, initializer: .zeros, sparse: true)
    }

    /// Bucket ids (B, F + crosses): each value hashed with its column, then each cross's pair.
    func ids(_ x: Tensor<T>) -> [Int32] {
        let b = x.shape[0], (f, m) = (fields, numeric), k = f + crosses.count, w = UInt64(buckets)
        var ids = [Int32](repeating: 0, count: b * k)
        x.withPointer { p in
            for r in 0..<b {
                func h(_ j: Int) -> UInt64 { UInt64(Double(p[r * (f + m) + j])) }
                for j in 0..<f { ids[r * k + j] = Int32(WideDeep<T>.mix(h(j) ^ (UInt64(j + 1) &* 0x51_7CC1_B727_220A)) % w) }
                for (c, pair) in crosses.enumerated() {
                    let v = WideDeep<T>.mix(h(pair[0]) &* 0x2545_F491_4F6C_DD1D ^ WideDeep<T>.mix(h(pair[1])) ^ UInt64(1000 + c))
                    ids[r * k + f + c] = Int32(v % w)
                }
            }
        }
        return ids
    }

    public func forward(_ x: Tensor<T>, _ ctx: ModelContext<T>) -> Tensor<T> {
        precondition(x.shape.count == 2 && x.shape[1] == fields + numeric, "a table of \(fields) + \(numeric) columns, got \(x.shape)")
        rows = x.shape[0]
        let k = fields + crosses.count, weights = table.forward(ids: ids(x), ctx)  // (B*k, 1)
        return Tensor.uninitialized([rows, 1]) { y in
            T.fill(y, 0, count: rows)
            weights.withPointer { T.sumPerChannel(y, $0, channels: rows, columns: k) }
        }
    }

    /// dy (B, 1): each of a row's weights gets its gradient.
    public func backward(_ dy: Tensor<T>, _ ctx: ModelContext<T>) {
        let k = fields + crosses.count
        table.backward(Tensor.uninitialized([rows * k, 1]) { d in dy.withPointer { T.repeatPerRow(d, $0, rows: rows, columns: k) } }, ctx)
    }
}
