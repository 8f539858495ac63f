import TetherTensor

/// Branches from one input whose outputs are joined along the features or the channels: PyTorch's
/// torch.cat(..., dim=1), ONNX's Concat of axis 1. An Inception block is one (convolutions of several
/// sizes side by side), and a branch without layers passes its input on (DenseNet keeps its input
/// beside what it becomes). Features (B, F) join row by row, each row the branches' columns in order;
/// an image in the conv layout (C, B, H, W) joins block by block, each branch's channels whole.
/// Backward cuts dy the same way, runs each branch back, and sums the input gradients.
public final class Concat<T: Scalar>: DataDependentInit, BufferOwner {
    public let branches: [Sequential<T>]
    /// Each branch's output width (features or channels) in the last forward, and the input's shape.
    private var widths: [Int] = []
    private var inputShape: [Int] = []

    public init(_ branches: [Sequential<T>]) { self.branches = branches }

    public var parameterSlots: [ParameterSlot] { branches.flatMap { $0.layers.flatMap(\.parameterSlots) } }

    public func forward(_ x: Tensor<T>, _ ctx: ModelContext<T>) -> Tensor<T> {
        join(branches.map { $0.forward(x, ctx) }, input: x)
    }

    public func initializeFromData(_ x: Tensor<T>, _ ctx: ModelContext<T>, reduce: StatisticsReducer) -> Tensor<T> {
        join(branches.map { $0.initializeFromData(x, ctx, reduce: reduce) }, input: x)
    }

    public func backward(_ dy: Tensor<T>, _ ctx: ModelContext<T>, needsInputGradient: Bool) -> Tensor<T>? {
        var dx: Tensor<T>?
        for (b, branch) in branches.enumerated() {
            guard let g = branch.backward(part(b, of: dy), ctx, needsInputGradient: needsInputGradient), needsInputGradient else {
                continue
            }
            if dx == nil {
                dx = g
            } else {
                g.withPointer { gp in dx!.withMutablePointer { T.axpy($0, gp, alpha: 1, count: g.count) } }
            }
        }
        return dx
    }

    /// The axis the branches join on: 0 in the conv layout, 1 for features.
    private var image: Bool { inputShape.count == 4 }

    private func join(_ outputs: [Tensor<T>], input x: Tensor<T>) -> Tensor<T> {
        inputShape = x.shape
        let axis = image ? 0 : 1
        widths = outputs.map { $0.shape[axis] }
        var shape = outputs[0].shape
        shape[axis] = widths.reduce(0, +)
        return Tensor.uninitialized(shape) { y in
            var at = 0
            for (o, width) in zip(outputs, widths) {
                o.withPointer { op in
                    if image {
                        (y + at).update(from: op, count: o.count)
                        at += o.count
                    } else {
                        T.copyColumns(y + at, ldy: shape[1], op, ldx: width, rows: shape[0], columns: width)
                        at += width
                    }
                }
            }
        }
    }

    /// Branch b's share of a gradient of the joined output.
    private func part(_ b: Int, of dy: Tensor<T>) -> Tensor<T> {
        let before = widths[..<b].reduce(0, +), width = widths[b]
        var shape = dy.shape
        shape[image ? 0 : 1] = width
        return Tensor.uninitialized(shape) { p in
            dy.withPointer { d in
                if image {
                    let block = dy.count / dy.shape[0]
                    p.update(from: d + before * block, count: width * block)
                } else {
                    T.copyColumns(p, ldy: width, d + before, ldx: dy.shape[1], rows: dy.shape[0], columns: width)
                }
            }
        }
    }

    // Buffers (a batch norm's running statistics) by the names PyTorch gives them inside the block:
    // "branches.<b>.<index>.<name>".
    private var owners: [(prefix: String, owner: any BufferOwner)] {
        branches.enumerated().flatMap { b, branch in branch.bufferOwners.map { ("branches.\(b).\($0.prefix)", $0.owner) } }
    }
    public var bufferNames: [String] { owners.flatMap { o in o.owner.bufferNames.map { o.prefix + $0 } } }
    public func buffer(named name: String) -> [Float]? {
        owners.lazy.compactMap { o in name.hasPrefix(o.prefix) ? o.owner.buffer(named: String(name.dropFirst(o.prefix.count))) : nil }.first
    }
    public func loadBuffer(named name: String, _ values: [Float]) -> Bool {
        for o in owners where name.hasPrefix(o.prefix) {
            if o.owner.loadBuffer(named: String(name.dropFirst(o.prefix.count)), values) { return true }
        }
        return false
    }
}
