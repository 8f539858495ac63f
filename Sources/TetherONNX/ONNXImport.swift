import Foundation
import TetherNN

/// A forward-only ONNX graph, as torch.onnx.export writes a Sequential-shaped network (opset 17 or
/// later), read into a model spec and its starting values by Tether's names (`layers.N.weight`, ...).
///
/// The graph must be one chain from its one data input to its output, where it may branch into chains
/// that one Concat of axis 1 joins again (a concat layer; torch.cat(..., dim=1)): each operator is a spec layer
/// (Gemm, or MatMul with an Add of its bias: dense; Conv: conv2d; MaxPool, AveragePool,
/// GlobalAveragePool: pools; Relu, LeakyRelu, Sigmoid, Tanh, Gelu (tanh approximation), Flatten,
/// a static Reshape, Dropout, BatchNormalization; over tokens or sequences, Gather of an embedding
/// table and LSTM: ONNXImport+Sequences.swift), Identity is passed over, and a last Softmax or
/// LogSoftmax is left to the cross-entropy loss. Two things are recognized rather than read op by op:
/// - **weight norm**: a layer's weight computed from exactly two initializers, g with one value per
///   output and v of the weight's shape, through the norm arithmetic only (Pow/ReduceSum/Sqrt,
///   ReduceL2, Div, Mul, ...), as torch.nn.utils.parametrizations.weight_norm exports: the layer
///   becomes weight-normalized with g and v as its weight_g and weight_v;
/// - **tying**: an initializer that two layers use as their weight: the second layer ties to the
///   first (`tie`), transposed where its Gemm (or a Transpose of the initializer) says so; a token
///   embedding's table used as the output layer's weight is Press & Wolf's tied embeddings.
/// Anything else is an error naming the node, its operator and inputs, and listing what is read:
/// never a silently different network.
public struct ONNXImport {
    public let spec: ModelSpec
    /// The graph's initializers as Tether's parameters and buffers, by name.
    public let values: [String: [Float]]

    public static let operators = [
        "Gemm", "MatMul", "Add", "Conv", "MaxPool", "AveragePool", "GlobalAveragePool", "Relu", "LeakyRelu", "Sigmoid", "Tanh",
        "Gelu", "Flatten", "Reshape", "Dropout", "Identity", "BatchNormalization", "Softmax", "LogSoftmax", "Gather", "LSTM", "Transpose",
        "Squeeze", "Concat"
    ]
    /// The operators a weight-norm computation may use.
    static let normArithmetic: Set<String> = [
        "Pow", "ReduceSum", "ReduceL2", "Sqrt", "Div", "Mul", "Constant", "Add", "Unsqueeze", "Reshape", "Expand", "Cast", "Identity",
        "Shape", "Gather", "ConstantOfShape"
    ]

    public init(_ model: ONNXModel, name: String, source: String) throws {
        func fail(_ why: String) -> ONNXError { ONNXError(source, why) }
        guard model.opset >= 17 else {
            throw fail("opset \(model.opset): the importer reads opset 17 or later (torch.onnx.export's default)")
        }
        let g = model.graph
        var constants: [String: ONNXTensor] = [:]
        for t in g.initializers { constants[t.name] = t }
        for n in g.nodes where n.opType == "Constant" {
            if case .tensor(let t) = n.attribute("value"), let out = n.outputs.first { constants[out] = t }
        }
        // topological order (no cycles): a node reads only inputs, constants and earlier outputs
        var defined = Set(g.inputs.map(\.name)).union(constants.keys)
        for (i, n) in g.nodes.enumerated() {
            if let missing = n.inputs.first(where: { !$0.isEmpty && !defined.contains($0) }) {
                throw fail("node \(i) (\(n.opType) \(n.name)) reads \(missing) before any node writes it: not in order, or a cycle")
            }
            defined.formUnion(n.outputs)
        }
        let dataInputs = g.inputs.filter { constants[$0.name] == nil }
        guard dataInputs.count == 1, let input = dataInputs.first, let dims = input.shape, dims.count >= 2 else {
            throw fail("the graph needs one data input of shape (batch, ...); it has \(dataInputs.map(\.name))")
        }
        let sample = try dims.dropFirst().map { d -> Int in
            guard case .size(let n) = d, n > 0 else { throw fail("input \(input.name): every dimension but the batch must be a number") }
            return n
        }
        let tokens = input.elementType != ONNXTensor.ElementType.float.rawValue
        guard tokens ? sample.count == 1 : (1...3).contains(sample.count) else {
            throw fail(
                "input \(input.name) of \(sample): the importer reads (batch, F) features, (batch, T, F) sequences, (batch, C, H, W) images and (batch, T) integer tokens"
            )
        }
        var reader = Reader(graph: g, constants: constants, fail: fail)
        reader.tokenSteps = tokens ? sample[0] : nil
        for (i, n) in g.nodes.enumerated() where n.opType == "LSTM" { try reader.readZeroInitialStates(ofLSTM: i) }
        try reader.walk(from: input.name, shape: sample)
        guard !reader.timeMajor else { throw fail("the graph's output is a time-major sequence (T, B, ...); Tether's are batch-major") }
        if tokens {
            guard let v = reader.vocabulary else {
                throw fail("integer input \(input.name): tokens go through an embedding (Gather) first")
            }
            spec = ModelSpec(name: name, input: [], tokens: .init(steps: sample[0], vocabulary: v), layers: reader.layers)
        } else {
            spec = ModelSpec(name: name, input: sample, layers: reader.layers)
        }
        values = reader.values
        _ = try spec.shapes()  // the spec's own check: every layer fits what precedes it
    }

    struct Reader {
        let graph: ONNXGraph
        let constants: [String: ONNXTensor]
        let fail: (String) -> ONNXError
        var layers: [LayerSpec] = []
        var values: [String: [Float]] = [:]
        /// What the layers' values are named before their index: "layers.", or a concat's branch's
        /// "layers.N.branches.B." while that branch is read.
        var names = "layers."
        /// Which layer took each initializer as its weight (for ties): its index, (O, I), and whether
        /// the graph used the initializer transposed.
        var weightOwner: [String: (index: Int, out: Int, in: Int, transposed: Bool)] = [:]
        var consumed = Set<Int>()  // node indices read as part of a layer
        /// A token input's length and the vocabulary its embedding gives.
        var tokenSteps: Int?, vocabulary: Int?
        /// A sequence (T, F) is time-major, (T, B, F), between torch's Transposes around an LSTM.
        var timeMajor = false

        /// Values that Constant nodes give (an exponent, axes): not initializers a weight is read from.
        let constantNodeOutputs: Set<String>

        init(graph: ONNXGraph, constants: [String: ONNXTensor], fail: @escaping (String) -> ONNXError) {
            (self.graph, self.constants, self.fail) = (graph, constants, fail)
            constantNodeOutputs = Set(graph.nodes.filter { $0.opType == "Constant" }.flatMap(\.outputs))
        }

        func describe(_ i: Int) -> String {
            let n = graph.nodes[i]
            return "node \(i) (\(n.name.isEmpty ? "unnamed" : n.name)): \(n.opType) of [\(n.inputs.joined(separator: ", "))]"
        }

        func consumers(of value: String) -> [Int] {
            graph.nodes.indices.filter { !consumed.contains($0) && graph.nodes[$0].inputs.contains(value) }
        }

        func floats(_ name: String, _ what: String) throws -> ONNXTensor {
            guard let t = constants[name], t.floats != nil else { throw fail("\(what): \(name) is not a float initializer") }
            return t
        }

        func ints(_ n: ONNXNode, _ key: String) -> [Int64]? { if case .ints(let v) = n.attribute(key) { v } else { nil } }
        func int(_ n: ONNXNode, _ key: String) -> Int64? { if case .int(let v) = n.attribute(key) { v } else { nil } }
        func float(_ n: ONNXNode, _ key: String) -> Float? { if case .float(let v) = n.attribute(key) { v } else { nil } }

        /// Where a layer's weight comes from: an initializer, or weight norm's arithmetic over g (a value
        /// per output) and v (the weight's shape), computed by `nodes`.
        enum WeightSource {
            case initializer(ONNXTensor)
            case normalized(g: ONNXTensor, v: ONNXTensor, nodes: Set<Int>)
            /// The weight's shape as stored: the initializer's, or v's.
            var dims: [Int] {
                switch self {
                case .initializer(let t): t.dims
                case .normalized(_, let v, _): v.dims
                }
            }
        }

        /// The source of the weight `name` of layer `index`: walks back from it to the initializers; any
        /// operator on the way other than weight norm's arithmetic, or leaves other than two float
        /// initializers g (as many values as v has rows) and v, is an error.
        func source(ofWeight name: String, layer index: Int) throws -> WeightSource {
            if let t = constants[name], t.floats != nil { return .initializer(t) }
            var leaves: [ONNXTensor] = [], stack = [name], nodes = Set<Int>(), seen = Set<String>()
            while let value = stack.popLast(), seen.insert(value).inserted {
                if let t = constants[value] {
                    if !constantNodeOutputs.contains(value) { leaves.append(t) }
                    continue
                }
                guard let i = graph.nodes.firstIndex(where: { $0.outputs.contains(value) }) else {
                    throw fail("layer \(index): its weight \(name) comes from the graph's input, not from initializers")
                }
                guard ONNXImport.normArithmetic.contains(graph.nodes[i].opType) else {
                    throw fail("layer \(index): its weight is computed by \(describe(i)), which is not weight norm's arithmetic")
                }
                nodes.insert(i)
                stack += graph.nodes[i].inputs.filter { !$0.isEmpty }
            }
            let sorted = leaves.sorted { ($0.floats?.count ?? 0) < ($1.floats?.count ?? 0) }
            guard sorted.count == 2, let g = sorted.first?.floats, let v = sorted.last, let vs = v.floats, v.dims.count >= 2,
                g.count == v.dims[0], vs.count > g.count
            else {
                throw fail(
                    "layer \(index): its weight is computed from \(leaves.map(\.name).sorted()); weight norm is read from two float initializers, g (a value per row of v) and v"
                )
            }
            return .normalized(g: sorted[0], v: v, nodes: nodes)
        }

        /// A dense layer's weight `name`, read `transposed` by its node, with a Transpose of a (2-D)
        /// initializer between them read through (torch writes a tied output layer so): the source, and
        /// whether the initializer is used transposed.
        mutating func denseSource(ofWeight name: String, layer index: Int, transposed: Bool) throws -> (WeightSource, Bool) {
            if let i = graph.nodes.firstIndex(where: { $0.outputs == [name] && $0.opType == "Transpose" }),
                let t = constants[graph.nodes[i].inputs.first ?? ""], t.floats != nil, t.dims.count == 2,
                (ints(graph.nodes[i], "perm") ?? [1, 0]) == [1, 0]
            {
                consumed.insert(i)
                return (.initializer(t), !transposed)
            }
            return (try source(ofWeight: name, layer: index), transposed)
        }

        /// Layer `index`'s weight from `source`, (O = rows, I) as Tether keeps it, stored transposed in the
        /// graph when `transposed`: its values, a tie to the layer that took the same initializer first,
        /// or weight norm's g and v.
        mutating func take(
            _ source: WeightSource, rows: Int, count: Int, layer index: Int, transposed: Bool, _ l: inout LayerSpec
        ) throws {
            let prefix = names + "\(index)."
            switch source {
            case .initializer(let t):
                let w = t.floats!
                guard w.count == count else { throw fail("layer \(index): weight \(t.name) holds \(t.dims), not \(count) values") }
                let (o, f) = (rows, count / rows)
                if let owner = weightOwner[t.name] {
                    // the spec ties as the shapes say (the same weight when (O, I) match); the graph says
                    // by its transposes: both must agree, or the network would silently differ
                    let sameBySpec = (o, f) == (owner.out, owner.in), sameByGraph = transposed == owner.transposed
                    guard sameBySpec == sameByGraph else {
                        throw fail(
                            "layer \(index) uses \(t.name), layer \(owner.index)'s weight, \(sameByGraph ? "as it is" : "transposed") on a square (\(o), \(f)) shape; a spec's tie of equal shapes is the weight as it is"
                        )
                    }
                    l.tie = owner.index
                    return
                }
                weightOwner[t.name] = (index, o, f, transposed)
                values[prefix + "weight"] = transposed ? Self.transpose(w, rows: f, columns: o) : w
            case .normalized(let g, let v, let nodes):
                guard !transposed, v.floats!.count == count, g.floats!.count == rows else {
                    throw fail(
                        "layer \(index): weight norm's v \(v.name) of \(v.dims) does not give this layer's (\(rows), \(count / rows)) weight"
                    )
                }
                consumed.formUnion(nodes)
                l.weightNorm = true
                values[prefix + "weight_g"] = g.floats!
                values[prefix + "weight_v"] = v.floats!
            }
        }

        static func transpose(_ w: [Float], rows: Int, columns: Int) -> [Float] {
            var t = [Float](repeating: 0, count: w.count)
            for r in 0..<rows { for c in 0..<columns { t[c * rows + r] = w[r * columns + c] } }
            return t
        }

        mutating func bias(_ name: String?, count: Int, layer index: Int, _ l: inout LayerSpec) throws {
            guard let name, !name.isEmpty else {
                l.bias = false
                return
            }
            let t = try floats(name, "layer \(index)'s bias")
            guard t.floats!.count == count else { throw fail("layer \(index): bias \(name) holds \(t.floats!.count) values, not \(count)") }
            values[names + "\(index).bias"] = t.floats!
        }

        /// Follows the chain from `start`, one layer per operator, until the graph's output; or, reading
        /// a concat's branch (`branchFrom`: its first node), until the Concat that joins it, whose index
        /// it returns with the branch's last value and shape.
        @discardableResult
        mutating func walk(from start: String, shape: [Int], branchFrom: Int? = nil) throws -> (value: String, shape: [Int], concat: Int?) {
            var current = start, shape = shape, first = branchFrom
            let outputs = Set(graph.outputs.map(\.name))
            var squeezePending = false  // an LSTM's (T, 1, B, H) awaits its Squeeze
            while true {
                let next = first.map { [$0] } ?? consumers(of: current)
                first = nil
                if branchFrom != nil, next.count == 1, graph.nodes[next[0]].opType == "Concat" { return (current, shape, next[0]) }
                if next.isEmpty {
                    // a branch that ends here is joined by no Concat: its caller says so
                    guard outputs.contains(current) || branchFrom != nil else {
                        throw fail("value \(current) is read by no node and is not the graph's output")
                    }
                    return (current, shape, nil)
                }
                // heads over the last layer (Tether's own export: Identity to logits, Softmax or Sigmoid
                // to probabilities), each writing a graph output: the network ends here
                let heads: Set<String> = ["Identity", "Softmax", "LogSoftmax", "Sigmoid"]
                if next.count > 1,
                    next.allSatisfy({ heads.contains(graph.nodes[$0].opType) && graph.nodes[$0].outputs.allSatisfy(outputs.contains) })
                {
                    return (current, shape, nil)
                }
                if next.count > 1, branchFrom == nil {
                    (current, shape) = try concat(of: next, from: current, shape: shape)
                    continue
                }
                guard next.count == 1, let i = next.first else {
                    throw fail(
                        "value \(current) is read by \(next.map(describe).joined(separator: "; ")): the importer reads a chain of layers whose branches (a concat's) join in one Concat"
                    )
                }
                consumed.insert(i)
                let n = graph.nodes[i], index = layers.count
                var out = n.outputs.first ?? ""
                var l: LayerSpec
                guard !squeezePending || n.opType == "Squeeze" else {
                    throw fail("\(describe(i)) reads an LSTM's (T, 1, B, H) output, which is read through a Squeeze of axis 1")
                }
                guard !timeMajor || ["Transpose", "LSTM", "Squeeze"].contains(n.opType) else {
                    throw fail("\(describe(i)) on a time-major (T, B, F) sequence: the importer reads an LSTM between torch's Transposes")
                }
                switch n.opType {
                case "Identity":
                    current = out
                    continue
                case "Transpose":
                    guard shape.count == 2, ints(n, "perm") == [1, 0, 2] else {
                        throw fail("\(describe(i)): a Transpose between (B, T, F) and (T, B, F) around an LSTM is read")
                    }
                    timeMajor.toggle()
                    current = out
                    continue
                case "Squeeze":
                    guard squeezePending, n.inputs.count > 1, constants[n.inputs[1]]?.integers == [1] else {
                        throw fail("\(describe(i)): a Squeeze of axis 1 of an LSTM's output is read")
                    }
                    squeezePending = false
                    current = out
                    continue
                case "LSTM":
                    guard timeMajor else {
                        throw fail("\(describe(i)): an LSTM over a (T, B, F) sequence is read (batch_first transposes)")
                    }
                    if let state = n.outputs.dropFirst().first(where: { !$0.isEmpty && !consumers(of: $0).isEmpty }) {
                        throw fail("\(describe(i)): its last state \(state) is read; export the output's last step, y[:, -1], instead")
                    }
                    l = try lstm(i, layer: index, shape: shape)
                    shape = [shape[0], l.out!]
                    squeezePending = true
                case "Gather":
                    if n.inputs.count == 2, n.inputs[1] == current, let table = constants[n.inputs[0]], table.floats != nil {
                        guard layers.isEmpty, let steps = tokenSteps, table.dims.count == 2, (int(n, "axis") ?? 0) == 0 else {
                            throw fail(
                                "\(describe(i)): an embedding (Gather of a table's rows by the tokens) is the first layer of an integer input"
                            )
                        }
                        vocabulary = table.dims[0]
                        weightOwner[table.name] = (index, table.dims[0], table.dims[1], false)  // a tied output layer's (V, D)
                        l = LayerSpec(.embedding) { $0.out = table.dims[1] }
                        values[names + "\(index).weight"] = table.floats!
                        shape = [steps, table.dims[1]]
                        break
                    }
                    // y[:, -1]: an LSTM's last step, when the LSTM is the layer before
                    let axis = int(n, "axis") ?? 0, stepAxis: Int64 = timeMajor ? 0 : 1
                    guard n.inputs.count == 2, shape.count == 2, let at = constants[n.inputs[1]], at.dims.isEmpty,
                        let step = at.integers?.first, step == -1 || step == Int64(shape[0] - 1), axis == stepAxis || axis == stepAxis - 3,
                        layers.last?.kind == .lstm
                    else {
                        throw fail("\(describe(i)): Gather is read as an embedding of tokens, or an LSTM's last step (y[:, -1])")
                    }
                    layers[layers.count - 1].sequences = false
                    (shape, timeMajor) = ([shape[1]], false)
                    current = out
                    continue
                case "Softmax", "LogSoftmax":
                    guard outputs.contains(out), consumers(of: out).isEmpty, branchFrom == nil else {
                        throw fail("\(describe(i)): a softmax is read only as the last operator (the cross-entropy loss applies it)")
                    }
                    return (current, shape, nil)
                case "Gemm":
                    guard shape.count == 1, n.inputs.count >= 2 else { throw fail("\(describe(i)): Gemm on \(shape)") }
                    guard (float(n, "alpha") ?? 1) == 1, (float(n, "beta") ?? 1) == 1, (int(n, "transA") ?? 0) == 0 else {
                        throw fail("\(describe(i)): Gemm with alpha, beta or transA other than 1, 1, 0")
                    }
                    let (weight, transposed) = try denseSource(
                        ofWeight: n.inputs[1], layer: index, transposed: (int(n, "transB") ?? 0) == 0)
                    let o = try denseWidth(weight, input: shape[0], transposed: transposed, node: i)
                    l = LayerSpec(.dense) { $0.out = o }
                    try take(weight, rows: o, count: o * shape[0], layer: index, transposed: transposed, &l)
                    try bias(n.inputs.count > 2 ? n.inputs[2] : nil, count: o, layer: index, &l)
                    shape = [o]
                case "MatMul":
                    guard shape.count == 1, n.inputs.count == 2 else { throw fail("\(describe(i)): MatMul on \(shape)") }
                    let (weight, transposed) = try denseSource(ofWeight: n.inputs[1], layer: index, transposed: true)
                    let o = try denseWidth(weight, input: shape[0], transposed: transposed, node: i)
                    l = LayerSpec(.dense) { $0.out = o }
                    try take(weight, rows: o, count: o * shape[0], layer: index, transposed: transposed, &l)
                    // a following Add of a constant (O) is the bias; the layer's output is then the Add's
                    let adds = consumers(of: out)
                    if adds.count == 1, graph.nodes[adds[0]].opType == "Add",
                        let b = graph.nodes[adds[0]].inputs.first(where: { $0 != out }), constants[b] != nil
                    {
                        consumed.insert(adds[0])
                        try bias(b, count: o, layer: index, &l)
                        out = graph.nodes[adds[0]].outputs[0]
                    } else {
                        l.bias = false
                    }
                    shape = [o]
                case "Conv":
                    guard shape.count == 3, n.inputs.count >= 2 else { throw fail("\(describe(i)): Conv on \(shape)") }
                    let k = ints(n, "kernel_shape") ?? [], s = ints(n, "strides") ?? [1, 1], p = ints(n, "pads") ?? [0, 0, 0, 0]
                    guard k.count == 2, k[0] == k[1], s.count == 2, s[0] == s[1], p.count == 4, Set(p).count == 1,
                        (ints(n, "dilations") ?? [1, 1]).allSatisfy({ $0 == 1 }), (int(n, "group") ?? 1) == 1
                    else {
                        throw fail(
                            "\(describe(i)): Conv with a square kernel, one stride, one padding all round, no dilation and one group is read"
                        )
                    }
                    let weight = try source(ofWeight: n.inputs[1], layer: index)
                    guard weight.dims.count == 4, weight.dims[1] == shape[0] else {
                        throw fail("\(describe(i)): a weight of \(weight.dims) on \(shape[0]) channels")
                    }
                    let oc = weight.dims[0]
                    l = LayerSpec(.conv2d) { ($0.out, $0.kernel, $0.stride, $0.padding) = (oc, Int(k[0]), Int(s[0]), Int(p[0])) }
                    try take(weight, rows: oc, count: oc * shape[0] * Int(k[0]) * Int(k[0]), layer: index, transposed: false, &l)
                    try bias(n.inputs.count > 2 ? n.inputs[2] : nil, count: oc, layer: index, &l)
                    let side = { (x: Int) in (x + 2 * Int(p[0]) - Int(k[0])) / Int(s[0]) + 1 }
                    shape = [oc, side(shape[1]), side(shape[2])]
                case "MaxPool", "AveragePool":
                    guard shape.count == 3 else { throw fail("\(describe(i)): a pool on \(shape)") }
                    let k = ints(n, "kernel_shape") ?? [], s = ints(n, "strides") ?? k
                    guard k.count == 2, k[0] == k[1], s.count == 2, s[0] == s[1], (ints(n, "pads") ?? [0]).allSatisfy({ $0 == 0 }),
                        (int(n, "ceil_mode") ?? 0) == 0
                    else { throw fail("\(describe(i)): pools with a square window, one stride, no padding and no ceil mode are read") }
                    l = LayerSpec(n.opType == "MaxPool" ? .maxPool : .avgPool)
                    (l.kernel, l.stride) = (Int(k[0]), Int(s[0]) == Int(k[0]) ? nil : Int(s[0]))
                    let side = { (x: Int) in (x - Int(k[0])) / Int(s[0]) + 1 }
                    shape = [shape[0], side(shape[1]), side(shape[2])]
                case "GlobalAveragePool":
                    guard shape.count == 3, shape[1] == shape[2] else {
                        throw fail("\(describe(i)): GlobalAveragePool of a square image is read")
                    }
                    l = LayerSpec(.avgPool)
                    l.kernel = shape[1]
                    shape = [shape[0], 1, 1]
                case "Relu": l = LayerSpec(.relu)
                case "LeakyRelu":
                    l = LayerSpec(.leakyRelu)
                    l.slope = Double(float(n, "alpha") ?? 0.01)
                case "Sigmoid": l = LayerSpec(.sigmoid)
                case "Tanh": l = LayerSpec(.tanh)
                case "Gelu":
                    guard case .string("tanh") = n.attribute("approximate") else {
                        throw fail("\(describe(i)): Tether's GELU is the tanh approximation (approximate=\"tanh\")")
                    }
                    l = LayerSpec(.gelu)
                case "Dropout":
                    l = LayerSpec(.dropout)
                    if n.inputs.count > 1, let r = constants[n.inputs[1]]?.floats?.first { l.rate = Double(r) }
                case "Flatten":
                    guard (int(n, "axis") ?? 1) == 1, !timeMajor else { throw fail("\(describe(i)): Flatten with axis 1 is read") }
                    l = LayerSpec(.flatten)
                    shape = [shape.reduce(1, *)]
                case "Reshape":
                    guard let target = constants[n.inputs[1]]?.integers, target.count == 2 || target.count == 4 else {
                        throw fail("\(describe(i)): a Reshape to a constant (batch, F) or (batch, C, H, W) is read")
                    }
                    let rest = target.dropFirst().map(Int.init)
                    guard rest.allSatisfy({ $0 > 0 }), rest.reduce(1, *) == shape.reduce(1, *) else {
                        throw fail("\(describe(i)): Reshape of \(shape) to \(target)")
                    }
                    if rest.count == 1 {
                        l = LayerSpec(.flatten)
                    } else {
                        l = LayerSpec(.unflatten)
                        l.shape = rest
                    }
                    shape = rest
                case "BatchNormalization":
                    let c = shape[0], statistics = Array(n.inputs.dropFirst().prefix(4))
                    guard statistics.count == 4 else {
                        throw fail("\(describe(i)): BatchNormalization needs scale, bias, mean and variance")
                    }
                    guard abs((float(n, "epsilon") ?? 1e-5) - 1e-5) < 1e-9 else { throw fail("\(describe(i)): epsilon other than 1e-5") }
                    l = LayerSpec(.batchNorm)
                    for (key, value) in zip(["weight", "bias", "running_mean", "running_var"], statistics) {
                        let t = try floats(value, "layer \(index) (batch-norm)")
                        guard t.floats!.count == c else { throw fail("layer \(index): \(value) holds \(t.floats!.count) values, not \(c)") }
                        values[names + "\(index).\(key)"] = t.floats!
                    }
                default:
                    throw fail(
                        "\(describe(i)) is not supported; the importer reads \(ONNXImport.operators.joined(separator: ", ")) (and weight norm's arithmetic)"
                    )
                }
                layers.append(l)
                current = out
            }
        }

        /// The branches that start at the nodes `starts`, all reading `value` of `shape`, and the one
        /// Concat of axis 1 that joins them (a start that is that Concat is a branch without layers): a
        /// concat layer, its branches in the Concat's order. Returns the Concat's output and shape.
        mutating func concat(of starts: [Int], from value: String, shape: [Int]) throws -> (String, [Int]) {
            let index = layers.count, outer = (layers, names, weightOwner, timeMajor)
            guard !timeMajor, shape.count == 1 || shape.count == 3 else {
                throw fail("value \(value) of \(shape) is read by several nodes: branches are read over features or an image")
            }
            var ends: [(value: String, shape: [Int], concat: Int, layers: [LayerSpec], key: String)] = []
            for (k, start) in starts.enumerated() {
                // each branch's values under a provisional name until the Concat gives its position
                (layers, names, weightOwner) = ([], "layers.\(index).branch?\(k).", [:])
                let end =
                    graph.nodes[start].opType == "Concat" ? (value, shape, start) : try walk(from: value, shape: shape, branchFrom: start)
                guard let join = end.concat else { throw fail("value \(value): its branch from \(describe(start)) is joined by no Concat") }
                ends.append((end.value, end.shape, join, layers, names))
            }
            (layers, names, weightOwner, timeMajor) = outer
            let j = ends[0].concat, node = graph.nodes[j]
            let axis = int(node, "axis") ?? 0
            guard ends.allSatisfy({ $0.concat == j }), node.inputs.count == ends.count,
                axis == 1 || axis == Int64(1 - (shape.count + 1))
            else {
                throw fail(
                    "value \(value) is read by \(starts.count) nodes; branches are read when one Concat of axis 1 joins them all, each once (\(describe(j)))"
                )
            }
            // the Concat's inputs in order: each the end of one branch (an empty branch's end is `value`)
            var order: [Int] = []
            for input in node.inputs {
                guard let k = ends.indices.first(where: { ends[$0].value == input && !order.contains($0) }) else {
                    throw fail("\(describe(j)): its input \(input) is not one of the branches from \(value)")
                }
                order.append(k)
            }
            var spec = LayerSpec(.concat)
            spec.branches = order.map { ends[$0].layers }
            for (b, k) in order.enumerated() {
                for key in Array(values.keys) where key.hasPrefix(ends[k].key) {
                    values["layers.\(index).branches.\(b)." + String(key.dropFirst(ends[k].key.count))] = values.removeValue(forKey: key)
                }
            }
            var joined = shape
            joined[0] = 0
            for k in order {
                guard ends[k].shape.count == shape.count, ends[k].shape.dropFirst() == ends[order[0]].shape.dropFirst() else {
                    throw fail("\(describe(j)) joins \(order.map { ends[$0].shape }) along axis 1: the other sides must match")
                }
                joined[0] += ends[k].shape[0]
            }
            if shape.count == 3 { (joined[1], joined[2]) = (ends[order[0]].shape[1], ends[order[0]].shape[2]) }
            consumed.insert(j)
            layers.append(spec)
            return (node.outputs.first ?? "", joined)
        }

        /// A dense layer's output width from its weight's shape, (O, I), or (I, O) when stored transposed.
        func denseWidth(_ source: WeightSource, input: Int, transposed: Bool, node: Int) throws -> Int {
            let dims = source.dims
            guard dims.count == 2, dims[transposed ? 0 : 1] == input else {
                throw fail("\(describe(node)): a weight of \(dims) on \(input) features")
            }
            return dims[transposed ? 1 : 0]
        }
    }

    /// Reads FILE.onnx (external data from files beside it, never outside its folder) into a spec
    /// named after the file.
    public static func read(_ path: String) throws -> ONNXImport {
        let url = URL(fileURLWithPath: path), folder = url.deletingLastPathComponent().standardizedFileURL.path
        guard let size = (try? FileManager.default.attributesOfItem(atPath: path))?[.size] as? Int else {
            throw ONNXError(path, "cannot read the file")
        }
        guard size <= ONNXModel.Limits.bytes else { throw ONNXError(path, "\(size) bytes: over protobuf's 2 GiB limit") }
        let bytes = try [UInt8](Data(contentsOf: url))
        let model = try ONNXModel(bytes: bytes, source: path) { location, offset, length in
            let file = URL(fileURLWithPath: location, relativeTo: url.deletingLastPathComponent()).standardizedFileURL
            guard !location.hasPrefix("/"), file.path.hasPrefix(folder + "/") else {
                throw ONNXError(path, "external data \(location) is outside the model's folder \(folder)")
            }
            guard let handle = FileHandle(forReadingAtPath: file.path) else {
                throw ONNXError(path, "external data \(location): cannot open \(file.path)")
            }
            defer { try? handle.close() }
            let end = try handle.seekToEnd()
            guard UInt64(offset) <= end, length.map({ UInt64($0) <= end - UInt64(offset) }) ?? true else {
                throw ONNXError(
                    path, "external data \(location): offset \(offset) and length \(length.map(String.init) ?? "-") beyond its \(end) bytes"
                )
            }
            try handle.seek(toOffset: UInt64(offset))
            return [UInt8](try handle.read(upToCount: length ?? Int(end - UInt64(offset))) ?? Data())
        }
        return try ONNXImport(model, name: url.deletingPathExtension().lastPathComponent, source: path)
    }
}
