import TetherTensor

/// The gradient of a table parameter (R, D) as the rows one step touched: their ids and summed
/// gradient rows. Optimizers update only these rows; a cluster all-gathers them (or reduces them
/// densely when that moves fewer bytes).
public final class SparseRows<T: Scalar> {
    public let slot: ParameterSlot
    public let width: Int
    public var tableRows: Int { slot.count / width }
    /// Distinct rows touched so far, in first-touch order.
    public private(set) var count = 0
    private var capacity = 0
    private var idStorage: UnsafeMutablePointer<Int32> = .allocate(capacity: 0)
    private var valueStorage: UnsafeMutablePointer<T> = .allocate(capacity: 0)
    /// Per table row: its position among the touched rows, or -1. Reset for the touched rows only.
    private let position: UnsafeMutablePointer<Int32>

    public init(slot: ParameterSlot, width: Int) {
        precondition(width > 0 && slot.count % width == 0)
        (self.slot, self.width) = (slot, width)
        position = .allocate(capacity: slot.count / width)
        position.initialize(repeating: -1, count: slot.count / width)
    }

    deinit { idStorage.deallocate(); valueStorage.deallocate(); position.deallocate() }

    /// The touched row ids (count) and their gradient rows (count, width), valid until the next change.
    public var idPointer: UnsafePointer<Int32> { UnsafePointer(idStorage) }
    public var valuePointer: UnsafeMutablePointer<T> { valueStorage }
    public var ids: [Int32] { Array(UnsafeBufferPointer(start: idStorage, count: count)) }
    public var values: [T] { Array(UnsafeBufferPointer(start: valueStorage, count: count * width)) }

    /// Adds the gradient row `grads[i]` to row `rowIDs[i]`, for i in 0..<n.
    public func accumulate(rowIDs: UnsafePointer<Int32>, grads: UnsafePointer<T>, count n: Int) {
        if count + n > capacity {
            let grown = max(count + n, 2 * capacity)
            let ids = UnsafeMutablePointer<Int32>.allocate(capacity: grown),
                values = UnsafeMutablePointer<T>.allocate(capacity: grown * width)
            ids.update(from: idStorage, count: count)
            values.update(from: valueStorage, count: count * width)
            idStorage.deallocate(); valueStorage.deallocate()
            (idStorage, valueStorage, capacity) = (ids, values, grown)
        }
        count = T.accumulateRows(
            valueStorage, touched: idStorage, distinct: count, position: position, ids: rowIDs, grads: grads, count: n, width: width)
    }

    public func scale(by factor: T) { T.scale(valueStorage, by: factor, count: count * width) }

    /// Forgets every touched row (after the optimizer step).
    public func clear() {
        for i in 0..<count { position[Int(idStorage[i])] = -1 }
        count = 0
    }

    /// The same gradient written densely into `dense` (the table's layout), for tests and the dense exchange.
    public func addDense(into dense: UnsafeMutablePointer<T>) {
        T.scatterAddRows(dense, valueStorage, dest: idStorage, count: count, width: width)
    }
}

/// A lookup table (R, D): y (N, D) = rows `ids` of the table. Its gradient goes either densely into the
/// arena (when another use of the same parameter makes it dense anyway, as a tied output projection
/// does) or into `SparseRows`.
public final class Embedding<T: Scalar> {
    public let slot: ParameterSlot
    public let rows: Int, width: Int
    public let sparseGradient: SparseRows<T>?
    private var ids: [Int32] = []

    /// Registers `prefix + "weight"` (R, D), initialized N(0, std) (PyTorch's nn.Embedding: std 1).
    public init(
        _ layout: inout ArenaLayout, prefix: String, rows: Int, width: Int, initializer: ParameterInit = .normal(std: 1),
        sparse: Bool = false
    ) {
        (self.rows, self.width) = (rows, width)
        slot = layout.add(prefix + "weight", shape: [rows, width], initializer: initializer, sparseGradient: sparse)
        sparseGradient = sparse ? SparseRows(slot: slot, width: width) : nil
    }

    public func forward(ids: [Int32], _ ctx: ModelContext<T>) -> Tensor<T> {
        precondition(ids.allSatisfy { $0 >= 0 && Int($0) < rows }, "embedding ids must be in 0..<\(rows)")
        self.ids = ids
        return Tensor.uninitialized([ids.count, width]) { y in
            ids.withUnsafeBufferPointer {
                T.gatherRows(y, table: ctx.arena.value(slot), ids: $0.baseAddress!, count: ids.count, width: width)
            }
        }
    }

    /// Accumulates the gradient of the last forward's rows.
    public func backward(_ dy: Tensor<T>, _ ctx: ModelContext<T>) {
        precondition(dy.shape == [ids.count, width])
        dy.withPointer { d in
            ids.withUnsafeBufferPointer { i in
                if let sparseGradient {
                    sparseGradient.accumulate(rowIDs: i.baseAddress!, grads: d, count: ids.count)
                } else {
                    T.scatterAddRows(ctx.arena.grad(slot), d, dest: i.baseAddress!, count: ids.count, width: width)
                }
            }
        }
    }
}

/// A table's categorical columns through one embedding each, beside its numbers. x (B, F + M): the
/// first F columns hold each field's value hash cut to 24 bits (a whole number, exact in Float), the
/// last M its numbers; y (B, F*D + M) = [E_0[h_0 mod R], ..., E_{F-1}[h_{F-1} mod R], numbers]. The F
/// tables are the row blocks of one parameter (F*R, D): field f's bucket r is row f*R + r, as one
/// PyTorch nn.Embedding indexed with per-field offsets. Gradients go to the table only: hashes and
/// numbers come from the data, so the layer is a network's first and passes no input gradient.
public final class TableEmbedding<T: Scalar>: Layer {
    public let table: Embedding<T>
    public let fields: Int, numeric: Int, buckets: Int
    public var parameterSlots: [ParameterSlot] { [table.slot] }

    public init(_ layout: inout ArenaLayout, prefix: String, fields: Int, numeric: Int, buckets: Int, width: Int, sparse: Bool) {
        (self.fields, self.numeric, self.buckets) = (fields, numeric, buckets)
        table = Embedding(&layout, prefix: prefix, rows: fields * buckets, width: width, sparse: sparse)
    }

    public func forward(_ x: Tensor<T>, _ ctx: ModelContext<T>) -> Tensor<T> {
        let b = x.shape[0], (f, m, d) = (fields, numeric, table.width)
        precondition(x.shape == [b, f + m], "a table of \(f) categorical and \(m) numeric columns, got \(x.shape)")
        var ids = [Int32](repeating: 0, count: b * f)
        x.withPointer { p in
            for r in 0..<b { for j in 0..<f { ids[r * f + j] = Int32(j * buckets + Int(p[r * (f + m) + j]) % buckets) } }
        }
        let looked = table.forward(ids: ids, ctx)  // (B*F, D)
        return Tensor.uninitialized([b, f * d + m]) { y in
            looked.withPointer { e in
                x.withPointer { p in
                    for r in 0..<b {
                        (y + r * (f * d + m)).update(from: e + r * f * d, count: f * d)
                        (y + r * (f * d + m) + f * d).update(from: p + r * (f + m) + f, count: m)
                    }
                }
            }
        }
    }

    public func backward(_ dy: Tensor<T>, _ ctx: ModelContext<T>, needsInputGradient: Bool) -> Tensor<T>? {
        let b = dy.shape[0], (f, m, d) = (fields, numeric, table.width)
        let rows = Tensor<T>.uninitialized([b * f, d]) { g in
            dy.withPointer { p in for r in 0..<b { (g + r * f * d).update(from: p + r * (f * d + m), count: f * d) } }
        }
        table.backward(rows, ctx)
        return nil
    }
}

/// Token ids through an embedding (PyTorch's nn.Embedding): x (B, T) holds whole numbers in 0..<V (the
/// data checks them), y (B, T*D) their rows, step-major per sample: a sequence (T, D).
public final class TokenEmbedding<T: Scalar>: Layer {
    public let table: Embedding<T>
    public let steps: Int
    public var parameterSlots: [ParameterSlot] { [table.slot] }

    public init(_ layout: inout ArenaLayout, prefix: String, steps: Int, vocabulary: Int, width: Int, sparse: Bool) {
        self.steps = steps
        table = Embedding(&layout, prefix: prefix, rows: vocabulary, width: width, sparse: sparse)
    }

    public func forward(_ x: Tensor<T>, _ ctx: ModelContext<T>) -> Tensor<T> {
        precondition(x.shape.count == 2 && x.shape[1] == steps, "\(steps) token ids a sample, got \(x.shape)")
        let ids = x.scalars.map { Int32(Double($0)) }
        return table.forward(ids: ids, ctx).reshaped([x.shape[0], steps * table.width])
    }

    public func backward(_ dy: Tensor<T>, _ ctx: ModelContext<T>, needsInputGradient: Bool) -> Tensor<T>? {
        table.backward(dy.reshaped([dy.shape[0] * steps, table.width]), ctx)
        return nil
    }
}
