import TetherNN

// What torch.onnx.export writes around an embedding and an LSTM, read back into spec layers:
// - nn.Embedding: Gather(table, tokens), the table an initializer;
// - nn.LSTM (one direction, batch_first): Transpose to (T, B, F), the gate rows of weight_ih, weight_hh
//   and the biases reordered from PyTorch's (i, f, g, o) to ONNX's (i, o, f, c) by Slice and Concat of
//   the initializers, zero initial states from ConstantOfShape over the batch's size (Shape, Gather,
//   Unsqueeze, Concat), LSTM, Squeeze of the direction axis, Transpose back to (B, T, H);
// - `y[:, -1]`: Gather of the last step, which makes the spec's lstm give its last step only.
extension ONNXImport.Reader {
    /// Operators that only compute a shape from the batch's size (for an LSTM's zero initial state).
    static let shapeArithmetic: Set<String> = ["Shape", "Gather", "Unsqueeze", "Squeeze", "Concat", "Constant", "Cast", "Slice"]

    /// Checks that LSTM node `index`'s initial states (inputs 5 and 6) are zeros, and marks the nodes
    /// computing them (from the batch's size) as read, so that the data's chain shows no branch there.
    mutating func readZeroInitialStates(ofLSTM index: Int) throws {
        let n = graph.nodes[index]
        for input in n.inputs.dropFirst(5).prefix(2) where !input.isEmpty {
            if let t = constants[input] {
                guard t.floats?.allSatisfy({ $0 == 0 }) == true else { throw fail("\(describe(index)): an initial state other than zeros") }
                continue
            }
            guard let producer = graph.nodes.firstIndex(where: { $0.outputs.contains(input) }),
                graph.nodes[producer].opType == "ConstantOfShape"
            else { throw fail("\(describe(index)): its initial state \(input) is not zeros of the batch's shape (ConstantOfShape)") }
            if case .tensor(let fill) = graph.nodes[producer].attribute("value"), fill.floats?.allSatisfy({ $0 == 0 }) != true {
                throw fail("\(describe(index)): an initial state other than zeros")
            }
            var stack = [producer], seen = Set<Int>()
            while let i = stack.popLast(), seen.insert(i).inserted {
                consumed.insert(i)
                let node = graph.nodes[i]
                if node.opType == "Shape" { continue }  // reads the data's shape only
                for value in node.inputs where !value.isEmpty && constants[value] == nil {
                    guard let p = graph.nodes.firstIndex(where: { $0.outputs.contains(value) }) else { continue }
                    guard Self.shapeArithmetic.contains(graph.nodes[p].opType) || p == producer else {
                        throw fail("\(describe(index)): its initial state is computed by \(describe(p))")
                    }
                    stack.append(p)
                }
            }
        }
    }

    /// A value computed from initializers alone by Slice, Concat, Unsqueeze, Squeeze and Identity (the
    /// gate reordering of an LSTM's weights), evaluated, with the nodes that computed it.
    func folded(_ name: String, depth: Int = 0) throws -> (tensor: ONNXTensor, nodes: Set<Int>) {
        if let t = constants[name], t.floats != nil { return (t, []) }
        guard depth < 32, let i = graph.nodes.firstIndex(where: { $0.outputs.contains(name) }) else {
            throw fail("\(name) is not computed from initializers alone")
        }
        let n = graph.nodes[i]
        func integers(_ at: Int) throws -> [Int]? {
            guard n.inputs.count > at, !n.inputs[at].isEmpty else { return nil }
            guard let v = constants[n.inputs[at]]?.integers, v.count <= ONNXModel.Limits.rank else {
                throw fail("\(describe(i)): input \(at) is not a constant list of integers")
            }
            return v.map { Int(clamping: $0) }
        }
        func axis(_ a: Int, rank: Int) throws -> Int {
            guard (-rank..<rank).contains(a) else { throw fail("\(describe(i)): axis \(a) of a rank-\(rank) tensor") }
            return a < 0 ? a + rank : a
        }
        switch n.opType {
        case "Identity":
            return try folded(n.inputs[0], depth: depth + 1)
        case "Unsqueeze", "Squeeze":
            var (t, nodes) = try folded(n.inputs[0], depth: depth + 1)
            let axes = try integers(1) ?? ints(n, "axes").map { $0.map { Int(clamping: $0) } } ?? []
            if n.opType == "Unsqueeze" {
                let rank = t.dims.count + axes.count
                guard rank <= ONNXModel.Limits.rank else { throw fail("\(describe(i)): rank over \(ONNXModel.Limits.rank)") }
                for a in try axes.map({ try axis($0, rank: rank) }).sorted() { t.dims.insert(1, at: a) }
            } else {
                let drop = try Set(axes.map { try axis($0, rank: t.dims.count) })
                guard drop.allSatisfy({ t.dims[$0] == 1 }) else { throw fail("\(describe(i)): squeezes an axis not of size 1") }
                t.dims = t.dims.enumerated().filter { !drop.contains($0.offset) }.map(\.element)
            }
            return (t, nodes.union([i]))
        case "Slice":
            let (t, nodes) = try folded(n.inputs[0], depth: depth + 1)
            guard let starts = try integers(1), let ends = try integers(2), starts.count == ends.count else {
                throw fail("\(describe(i)): starts and ends must be constants of one length")
            }
            let axes = try integers(3) ?? Array(0..<starts.count)
            guard axes.count == starts.count, try integers(4)?.allSatisfy({ $0 == 1 }) ?? true else {
                throw fail("\(describe(i)): a slice with steps other than 1")
            }
            var lower = [Int](repeating: 0, count: t.dims.count), upper = t.dims
            for (k, a) in axes.enumerated() {
                let a = try axis(a, rank: t.dims.count), d = t.dims[a]
                func clamp(_ v: Int) -> Int { min(max(v < 0 ? v + d : v, 0), d) }
                (lower[a], upper[a]) = (clamp(starts[k]), max(clamp(starts[k]), clamp(ends[k])))
            }
            return (Self.slice(t, lower: lower, upper: upper, name: n.outputs[0]), nodes.union([i]))
        case "Concat":
            guard case .int(let given)? = n.attribute("axis"), !n.inputs.isEmpty else {
                throw fail("\(describe(i)): Concat without an axis")
            }
            let parts = try n.inputs.map { try folded($0, depth: depth + 1) }
            let first = parts[0].tensor, a = try axis(Int(clamping: given), rank: first.dims.count)
            guard
                parts.allSatisfy({
                    $0.tensor.dims.count == first.dims.count
                        && $0.tensor.dims.enumerated().allSatisfy { $0.offset == a || $0.element == first.dims[$0.offset] }
                })
            else { throw fail("\(describe(i)): concatenates tensors of different shapes") }
            let outer = first.dims[..<a].reduce(1, *), inner = first.dims[(a + 1)...].reduce(1, *)
            var values: [Float] = []
            for o in 0..<outer {
                for p in parts {
                    let width = p.tensor.dims[a] * inner
                    values += p.tensor.floats![o * width..<(o + 1) * width]
                }
            }
            var dims = first.dims
            dims[a] = parts.reduce(0) { $0 + $1.tensor.dims[a] }
            return (ONNXTensor(n.outputs[0], dims: dims, floats: values), parts.reduce(Set([i])) { $0.union($1.nodes) })
        default:
            throw fail("\(describe(i)) computes a weight; the importer folds Slice, Concat, Unsqueeze and Squeeze of initializers only")
        }
    }

    /// The box lower..<upper of `t` (row-major), as a tensor named `name`.
    static func slice(_ t: ONNXTensor, lower: [Int], upper: [Int], name: String) -> ONNXTensor {
        let dims = zip(lower, upper).map { $1 - $0 }, count = dims.reduce(1, *), source = t.floats!
        var strides = [Int](repeating: 1, count: t.dims.count)
        for a in stride(from: t.dims.count - 2, through: 0, by: -1) { strides[a] = strides[a + 1] * t.dims[a + 1] }
        var values = [Float](), index = lower
        values.reserveCapacity(count)
        for _ in 0..<count {
            values.append(source[zip(index, strides).reduce(0) { $0 + $1.0 * $1.1 }])
            for a in stride(from: dims.count - 1, through: 0, by: -1) {  // the next index, last axis fastest
                index[a] += 1
                if index[a] < upper[a] { break }
                index[a] = lower[a]
            }
        }
        return ONNXTensor(name, dims: dims, floats: values)
    }

    /// ONNX's gate blocks (i, o, f, c) of `values` (4 blocks of `block` values each) in PyTorch's and
    /// Tether's order (i, f, g, o).
    static func pytorchGateOrder(_ values: ArraySlice<Float>, block: Int) -> [Float] {
        let start = values.startIndex
        return [0, 2, 3, 1].flatMap { values[start + $0 * block..<start + ($0 + 1) * block] }
    }

    /// LSTM node `i` over a time-major sequence (T, F) as layer `index`: one forward direction, the
    /// default activations, weights folded from initializers. Gives the whole sequence (T, H) until a
    /// last-step Gather says otherwise.
    mutating func lstm(_ i: Int, layer index: Int, shape: [Int]) throws -> LayerSpec {
        let n = graph.nodes[i]
        guard shape.count == 2, n.inputs.count >= 3 else { throw fail("\(describe(i)): an LSTM takes a sequence (T, F)") }
        guard case .int(let size)? = n.attribute("hidden_size"), (1...ModelSpec.largestSize).contains(Int(size)) else {
            throw fail("\(describe(i)): hidden_size missing or out of range")
        }
        let h = Int(size), f = shape[1]
        if case .string(let d)? = n.attribute("direction"), d != "forward" {
            throw fail("\(describe(i)): direction \(d); one forward direction is read")
        }
        for key in ["activations", "clip", "activation_alpha", "activation_beta"] where n.attribute(key) != nil {
            throw fail("\(describe(i)): \(key) is set; the default activations (sigmoid, tanh, tanh) without clipping are read")
        }
        guard (int(n, "input_forget") ?? 0) == 0, (int(n, "layout") ?? 0) == 0 else {
            throw fail("\(describe(i)): input_forget or layout other than 0")
        }
        guard n.inputs.count < 5 || n.inputs[4].isEmpty else {
            throw fail("\(describe(i)): sequence lengths are not read (every sequence is whole)")
        }
        let (w, wNodes) = try folded(n.inputs[1]), (r, rNodes) = try folded(n.inputs[2])
        guard w.dims == [1, 4 * h, f], r.dims == [1, 4 * h, h] else {
            throw fail("\(describe(i)): weights of \(w.dims) and \(r.dims); (1, \(4 * h), \(f)) and (1, \(4 * h), \(h)) expected")
        }
        var bias = [Float](repeating: 0, count: 8 * h)
        consumed.formUnion(wNodes.union(rNodes))
        if n.inputs.count > 3, !n.inputs[3].isEmpty {
            let (b, bNodes) = try folded(n.inputs[3])
            guard b.dims == [1, 8 * h] else { throw fail("\(describe(i)): a bias of \(b.dims); (1, \(8 * h)) expected") }
            bias = b.floats!
            consumed.formUnion(bNodes)
        }
        let prefix = names + "\(index)."
        values[prefix + "weight_ih_l0"] = Self.pytorchGateOrder(w.floats![...], block: h * f)
        values[prefix + "weight_hh_l0"] = Self.pytorchGateOrder(r.floats![...], block: h * h)
        values[prefix + "bias_ih_l0"] = Self.pytorchGateOrder(bias[..<(4 * h)], block: h)
        values[prefix + "bias_hh_l0"] = Self.pytorchGateOrder(bias[(4 * h)...], block: h)
        return LayerSpec(.lstm) { ($0.out, $0.sequences) = (h, true) }
    }
}
