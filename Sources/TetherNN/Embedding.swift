import TetherTensor

/// The gradient of a table parameter (R, D) as the rows one step touched: their ids and summed
/// gradient rows. Optimizers update only these rows; a cluster all-gathers them (or reduces them
/// densely when that moves fewer bytes).
public final class SparseRows<T: Scalar> {
    public let slot: ParameterSlot
    public let width: Int
    public var tableRows: Int { slot.count / width }
    /// Distinct row ids in first-touch order, and their gradients (ids.count, width).
    public private(set) var ids: [Int32] = []
    public private(set) var values: [T] = []
    /// Per table row: its position in `ids`, or -1. Reset for the touched rows only.
    private var position: [Int32]

    public init(slot: ParameterSlot, width: Int) {
        precondition(width > 0 && slot.count % width == 0)
        (self.slot, self.width) = (slot, width)
        position = [Int32](repeating: -1, count: slot.count / width)
    }

    /// Adds `scale` x the gradient row `grads[i]` to row `rowIDs[i]`, for i in 0..<count.
    public func accumulate(rowIDs: UnsafePointer<Int32>, grads: UnsafePointer<T>, count: Int) {
        for i in 0..<count {
            let r = Int(rowIDs[i])
            var p = Int(position[r])
            if p < 0 {
                p = ids.count
                position[r] = Int32(p)
                ids.append(Int32(r))
                values.append(contentsOf: repeatElement(0, count: width))
            }
            values.withUnsafeMutableBufferPointer { T.axpy($0.baseAddress! + p * width, grads + i * width, alpha: 1, count: width) }
        }
    }

    public func scale(by factor: T) {
        values.withUnsafeMutableBufferPointer { T.scale($0.baseAddress!, by: factor, count: $0.count) }
    }

    /// Forgets every touched row (after the optimizer step).
    public func clear() {
        for r in ids { position[Int(r)] = -1 }
        ids.removeAll(keepingCapacity: true)
        values.removeAll(keepingCapacity: true)
    }

    /// The same gradient written densely into `dense` (the table's layout), for tests and the dense exchange.
    public func addDense(into dense: UnsafeMutablePointer<T>) {
        values.withUnsafeBufferPointer { v in ids.withUnsafeBufferPointer { T.scatterAddRows(dense, v.baseAddress!, dest: $0.baseAddress!, count: ids.count, width: width) } }
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
    public init(_ layout: inout ArenaLayout, prefix: String, rows: Int, width: Int, initializer: ParameterInit = .normal(std: 1), sparse: Bool = false) {
        (self.rows, self.width) = (rows, width)
        slot = layout.add(prefix + "weight", shape: [rows, width], initializer: initializer, sparseGradient: sparse)
        sparseGradient = sparse ? SparseRows(slot: slot, width: width) : nil
    }

    public func forward(ids: [Int32], _ ctx: ModelContext<T>) -> Tensor<T> {
        precondition(ids.allSatisfy { $0 >= 0 && Int($0) < rows }, "embedding ids must be in 0..<\(rows)")
        self.ids = ids
        return Tensor.uninitialized([ids.count, width]) { y in
            ids.withUnsafeBufferPointer { T.gatherRows(y, table: ctx.arena.value(slot), ids: $0.baseAddress!, count: ids.count, width: width) }
        }
    }

    /// Accumulates the gradient of the last forward's rows.
    public func backward(_ dy: Tensor<T>, _ ctx: ModelContext<T>) {
        precondition(dy.shape == [ids.count, width])
        dy.withPointer { d in ids.withUnsafeBufferPointer { i in
            if let sparseGradient { sparseGradient.accumulate(rowIDs: i.baseAddress!, grads: d, count: ids.count) }
            else { T.scatterAddRows(ctx.arena.grad(slot), d, dest: i.baseAddress!, count: ids.count, width: width) }
        } }
    }
}
