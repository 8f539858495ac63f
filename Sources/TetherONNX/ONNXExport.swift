import Foundation
import TetherNN

/// A trained spec's network as an ONNX inference graph (opset 17), readable by ONNX Runtime: one input
/// `input` (B, C, H, W) images, (B, F) features, (B, T, F) sequences or (B, T) int64 tokens, its layers as ONNX operators with the checkpoint's
/// values as initializers named as in the checkpoint, and the outputs `logits` plus `probabilities`
/// (softmax, or sigmoid for a binary-cross-entropy spec), or `prediction` for a regression.
///
/// A weight-normalized layer is written with its effective weight w = g v / sqrt(sum v^2 + 1e-12)
/// per output row, as Tether's forward computes it; a tied dense layer reads the initializer of the
/// weight it ties to (a dense layer's, or a token embedding's table), transposed by Gemm's transB where
/// the shapes say so; a mean-only batch norm is one Add of
/// (bias - running mean); dropout is the identity at inference; GELU (tanh approximation) is spelled
/// out in opset-17 operators. An embedding of tokens is a Gather of its table; an LSTM is ONNX's LSTM
/// between Transposes to and from (T, B, F), as torch.onnx.export writes a batch_first one, its gates
/// reordered to ONNX's (i, o, f, c), and its last step (when it gives only that) a Gather of step -1.
/// A concat's branches are chains from the same value joined by a Concat of axis 1.
/// A table's input is (B, F + M) floats as `tether predict` and the exported PyTorch module take it:
/// each categorical value's FNV-1a hash cut to 24 bits (exact in a float), then the standardized
/// numbers. Its embedding is the same bucket arithmetic in integer operators (Cast, Mod, Add) and a
/// Gather; a wide tower's hashing (splitmix64's finalizer over each value and each cross) is spelled in
/// uint64 operators (BitShift, BitwiseXor, Mul, Add wrapping mod 2^64; opset 18), its weights a Gather
/// and a ReduceSum added to the deep tower's logit. The hashing of the text itself stays outside.
public enum ONNXExport {
    /// `value(name)` gives a checkpoint tensor's values (nil: not in the checkpoint).
    public static func model(_ spec: ModelSpec, value: (String) throws -> [Float]?) throws -> ONNXModel {
        try withoutActuallyEscaping(value) { value in
            var b = Builder(spec: spec, value: value)
            try b.build()
            return ONNXModel(
                opset: spec.wide == nil ? 17 : 18,  // BitwiseXor
                graph: ONNXGraph(name: spec.name, nodes: b.nodes, initializers: b.initializers, inputs: b.inputs, outputs: b.outputs))
        }
    }

    struct Builder {
        let spec: ModelSpec
        let value: (String) throws -> [Float]?
        var nodes: [ONNXNode] = [], initializers: [ONNXTensor] = [], inputs: [ONNXValue] = [], outputs: [ONNXValue] = []

        func fail(_ why: String) -> SpecError { SpecError("export --onnx: model spec \(spec.name): \(why)") }

        /// A checkpoint tensor of `count` values. A cluster's checkpoint holds a running statistic per
        /// replica, in rank order: rank 0's is taken, as `tether eval` and DDP take it.
        func tensor(_ name: String, count: Int) throws -> [Float] {
            guard let v = try value(name) else { throw fail("the checkpoint has no tensor \(name)") }
            if name.hasSuffix("running_mean") || name.hasSuffix("running_var"), count > 0, v.count > count, v.count % count == 0 {
                return Array(v.prefix(count))
            }
            guard v.count == count else { throw fail("\(name) holds \(v.count) values, the spec needs \(count)") }
            return v
        }

        mutating func constant(_ name: String, dims: [Int], _ floats: [Float]) -> String {
            initializers.append(ONNXTensor(name, dims: dims, floats: floats))
            return name
        }

        /// A layer's bias (`count` values) as an initializer; returns its name.
        mutating func bias(_ prefix: String, count: Int) throws -> String {
            constant(prefix + "bias", dims: [count], try tensor(prefix + "bias", count: count))
        }

        /// Appends a node with one output named `output`; returns that name.
        @discardableResult mutating func node(
            _ op: String, _ inputs: [String], _ output: String, _ attributes: [ONNXAttribute] = []
        ) -> String {
            nodes.append(ONNXNode(op, name: output, inputs: inputs, outputs: [output], attributes: attributes))
            return output
        }

        /// The weight a layer computes with: plain, or g v / ||v|| per row of `rows`.
        func weight(_ prefix: String, _ name: String = "weight", rows: Int, columns: Int, normalized: Bool) throws -> [Float] {
            guard normalized else { return try tensor(prefix + name, count: rows * columns) }
            let g = try tensor(prefix + name + "_g", count: rows), v = try tensor(prefix + name + "_v", count: rows * columns)
            var w = [Float](repeating: 0, count: rows * columns)
            for r in 0..<rows {
                let row = v[(r * columns)..<((r + 1) * columns)]
                let norm = (row.reduce(0.0) { $0 + Double($1) * Double($1) } + 1e-12).squareRoot()
                for (j, x) in row.enumerated() { w[r * columns + j] = Float(Double(g[r]) * Double(x) / norm) }
            }
            return w
        }

        mutating func build() throws {
            let shapes = try spec.shapes()
            var before = try spec.inputShape()
            var dims: [ONNXValue.Dimension] = [.named("batch")]
            switch before {
            case .image(let c, let h, let w): dims += [.size(c), .size(h), .size(w)]
            case .features(let f): dims += [.size(f)]
            case .sequence(let t, let f): dims += [.size(t), .size(f)]
            case .tokens(let t, _): dims += [.size(t)]
            case .table(let f, let m): dims += [.size(f + m)]
            }
            if case .tokens = before {
                inputs = [ONNXValue("input", elementType: .int64, shape: dims)]
            } else {
                inputs = [ONNXValue("input", shape: dims)]
            }
            var current = try chain(spec.layers, shapes: shapes, from: before, input: "input", names: "layers.")
            if let wide = spec.wide, case .table(let f, _) = before {
                current = node("Add", [current, try wideTower(fields: f, wide)], "logit")
            }
            var last: [ONNXValue.Dimension]?
            if case .features(let n) = shapes.last { last = [.named("batch"), .size(n)] }
            switch spec.loss {
            case .crossEntropy, .binaryCrossEntropy:
                node("Identity", [current], "logits")
                node(
                    spec.loss == .crossEntropy ? "Softmax" : "Sigmoid", [current], "probabilities",
                    spec.loss == .crossEntropy ? [ONNXAttribute("axis", .int(-1))] : [])
                outputs = [ONNXValue("logits", shape: last), ONNXValue("probabilities", shape: last)]
            default:
                node("Identity", [current], "prediction")
                outputs = [ONNXValue("prediction", shape: last)]
            }
        }

        /// `layers` (giving `shapes`) as operators from the value `input` of shape `before`, each layer's
        /// tensors named `names` + "<index>." + theirs (the checkpoint's names) and its output `names` +
        /// "<index>"; returns the last output's name. A concat's branches are chains of their own, joined
        /// by a Concat of axis 1.
        mutating func chain(
            _ layers: [LayerSpec], shapes: [SpecShape], from input: SpecShape, input current: String, names: String
        )
            throws -> String
        {
            var before = input, current = current
            for (i, (layer, after)) in zip(layers, shapes).enumerated() {
                let prefix = names + "\(i).", out = names + "\(i)"
                let hasBias = layer.bias ?? true, normalized = layer.weightNorm ?? false
                switch (layer.kind, before, after) {
                case (.dense, .features(let f), .features(let o)) where layer.tie != nil:
                    let source = names + "\(layer.tie!).weight"
                    guard let w = try value(source) else { throw fail("layer \(i) ties to \(source), which the checkpoint lacks") }
                    guard w.count == f * o else { throw fail("layer \(i) ties to \(source) of \(w.count) values, not \(f) x \(o)") }
                    // the source's (O, I) as it is: a dense layer of O outputs, or a token embedding's (V, D) table
                    let sameShape = layers[layer.tie!].kind == .embedding || layers[layer.tie!].out == o
                    // the source's initializer itself: one tensor in the graph, read back as the same tie
                    var ins = [current, source]
                    if hasBias { ins.append(try bias(prefix, count: o)) }
                    current = node("Gemm", ins, out, [ONNXAttribute("transB", .int(sameShape ? 1 : 0))])
                case (.dense, .features(let f), .features(let o)):
                    let w = constant(prefix + "weight", dims: [o, f], try weight(prefix, rows: o, columns: f, normalized: normalized))
                    var ins = [current, w]
                    if hasBias { ins.append(try bias(prefix, count: o)) }
                    current = node("Gemm", ins, out, [ONNXAttribute("transB", .int(1))])
                case (.conv2d, .image(let c, _, _), .image(let o, _, _)):
                    let k = layer.kernel!, s = layer.stride ?? 1, p = layer.padding ?? 0
                    let w = constant(
                        prefix + "weight", dims: [o, c, k, k], try weight(prefix, rows: o, columns: c * k * k, normalized: normalized))
                    var ins = [current, w]
                    if hasBias { ins.append(try bias(prefix, count: o)) }
                    current = node(
                        "Conv", ins, out,
                        [
                            ONNXAttribute("kernel_shape", .ints([Int64(k), Int64(k)])),
                            ONNXAttribute("strides", .ints([Int64(s), Int64(s)])),
                            ONNXAttribute("pads", .ints(Array(repeating: Int64(p), count: 4)))
                        ])
                case (.embedding, .tokens(_, let v), .sequence(_, let e)):
                    let table = constant(prefix + "weight", dims: [v, e], try tensor(prefix + "weight", count: v * e))
                    current = node("Gather", [table, current], out)
                case (.lstm, .sequence(_, let f), _):
                    current = try lstm(current, prefix: prefix, out: out, inputs: f, hidden: layer.out!, layer: layer)
                case (.embedding, .table(let f, let m), _):
                    // ids (B, F): field j's bucket h_j mod R is row j R + (h_j mod R) of the (F R, D) table
                    let r = layer.buckets ?? 1000, d = layer.out!
                    let table = constant(prefix + "weight", dims: [f * r, d], try tensor(prefix + "weight", count: f * r * d))
                    initializers.append(ONNXTensor(prefix + "buckets", dims: [], int64s: [Int64(r)]))
                    initializers.append(ONNXTensor(prefix + "offsets", dims: [f], int64s: (0..<f).map { Int64($0 * r) }))
                    let hashes = node("Cast", [columns(current, 0, f, "hashes")], out + ".hashes", [ONNXAttribute("to", .int(7))])
                    let ids = node("Add", [node("Mod", [hashes, prefix + "buckets"], out + ".mod"), prefix + "offsets"], out + ".ids")
                    initializers.append(ONNXTensor(prefix + "flat_shape", dims: [2], int64s: [-1, Int64(f * d)]))
                    let flat = node(
                        "Reshape", [node("Gather", [table, ids], out + ".rows"), prefix + "flat_shape"], m > 0 ? out + ".flat" : out)
                    current =
                        m > 0 ? node("Concat", [flat, columns(current, f, f + m, "numbers")], out, [ONNXAttribute("axis", .int(1))]) : flat
                case (.maxPool, _, _), (.avgPool, _, _):
                    let k = Int64(layer.kernel!), s = Int64(layer.stride ?? layer.kernel!)
                    current = node(
                        layer.kind == .maxPool ? "MaxPool" : "AveragePool", [current], out,
                        [ONNXAttribute("kernel_shape", .ints([k, k])), ONNXAttribute("strides", .ints([s, s]))])
                case (.flatten, .features, _): break
                case (.flatten, _, _): current = node("Flatten", [current], out, [ONNXAttribute("axis", .int(1))])
                case (.unflatten, _, .image(let c, let h, let w)):
                    initializers.append(ONNXTensor(prefix + "shape", dims: [4], int64s: [-1, Int64(c), Int64(h), Int64(w)]))
                    current = node("Reshape", [current, prefix + "shape"], out)
                case (.relu, _, _): current = node("Relu", [current], out)
                case (.leakyRelu, _, _):
                    current = node("LeakyRelu", [current], out, [ONNXAttribute("alpha", .float(Float(layer.slope ?? 0.01)))])
                case (.tanh, _, _): current = node("Tanh", [current], out)
                case (.sigmoid, _, _): current = node("Sigmoid", [current], out)
                case (.gelu, _, _): current = gelu(current, prefix: prefix, out: out)
                case (.dropout, _, _): break
                case (.batchNorm, _, _):
                    let (channels, perChannel): (Int, [Int]) =
                        switch before {
                        case .image(let c, _, _): (c, [c, 1, 1])
                        case .features(let f): (f, [f])
                        default: throw fail("layer \(i) (batch-norm) on \(before) is not exported to ONNX")
                        }
                    if layer.meanOnly == true {
                        let bias = try tensor(prefix + "bias", count: channels), mean = try tensor(prefix + "running_mean", count: channels)
                        let shift = constant(prefix + "shift", dims: perChannel, zip(bias, mean).map { $0 - $1 })
                        current = node("Add", [current, shift], out)
                    } else {
                        let names = ["weight", "bias", "running_mean", "running_var"].map { prefix + $0 }
                        for name in names { _ = constant(name, dims: [channels], try tensor(name, count: channels)) }
                        current = node("BatchNormalization", [current] + names, out, [ONNXAttribute("epsilon", .float(1e-5))])
                    }
                case (.concat, _, _):
                    let ends = try layer.branches!.indices.map { b in
                        guard !layer.branches![b].isEmpty else { return current }
                        let branch = spec.branch(b, of: layer, index: i, over: before)
                        return try chain(
                            branch.layers, shapes: try branch.shapes(), from: before, input: current, names: prefix + "branches.\(b).")
                    }
                    current = node("Concat", ends, out, [ONNXAttribute("axis", .int(1))])
                default:
                    throw fail("layer \(names)\(i) (\(layer.kind.rawValue)) is not exported to ONNX yet")
                }
                before = after
            }
            return current
        }

        /// Columns from..<to of the (B, F + M) table input `x` (one Slice, written once per range).
        mutating func columns(_ x: String, _ from: Int, _ to: Int, _ what: String) -> String {
            let name = "input.\(what)"
            guard !nodes.contains(where: { $0.outputs == [name] }) else { return name }
            initializers.append(ONNXTensor(name + ".starts", dims: [1], int64s: [Int64(from)]))
            initializers.append(ONNXTensor(name + ".ends", dims: [1], int64s: [Int64(to)]))
            initializers.append(ONNXTensor(name + ".axes", dims: [1], int64s: [1]))
            return node("Slice", [x, name + ".starts", name + ".ends", name + ".axes"], name)
        }

        /// A uint64 constant: its bits stored as int64 and cast in the graph (Cast wraps mod 2^64).
        mutating func unsigned(_ name: String, dims: [Int], _ values: [UInt64]) -> String {
            initializers.append(ONNXTensor(name + ".bits", dims: dims, int64s: values.map { Int64(bitPattern: $0) }))
            return node("Cast", [name + ".bits"], name, [ONNXAttribute("to", .int(13))])
        }

        /// splitmix64's finalizer over a uint64 tensor, as `WideDeep.mix`.
        mutating func mix(_ x: String, _ out: String) -> String {
            if !nodes.contains(where: { $0.outputs == ["mix.c1"] }) {
                _ = unsigned("mix.c1", dims: [], [0x9E37_79B9_7F4A_7C15])
                _ = unsigned("mix.c2", dims: [], [0xBF58_476D_1CE4_E5B9])
                _ = unsigned("mix.c3", dims: [], [0x94D0_49BB_1331_11EB])
                for k in [27, 30, 31] { _ = unsigned("mix.s\(k)", dims: [], [UInt64(k)]) }
            }
            func xorShift(_ z: String, _ k: Int, _ name: String) -> String {
                let shifted = node("BitShift", [z, "mix.s\(k)"], name + ".shifted", [ONNXAttribute("direction", .string("RIGHT"))])
                return node("BitwiseXor", [z, shifted], name)
            }
            let a = node("Add", [x, "mix.c1"], out + ".a")
            let b = node("Mul", [xorShift(a, 30, out + ".x30"), "mix.c2"], out + ".b")
            let c = node("Mul", [xorShift(b, 27, out + ".x27"), "mix.c3"], out + ".c")
            return xorShift(c, 31, out)
        }

        /// The wide tower's (B, 1): the sum of `wide.weight`'s rows at each value's and each cross's
        /// bucket, hashed as `WideLinear.ids` hashes them.
        mutating func wideTower(fields f: Int, _ wide: ModelSpec.WideTower) throws -> String {
            let w = wide.buckets
            let table = constant("wide.weight", dims: [w, 1], try tensor("wide.weight", count: w))
            let h = node("Cast", [columns("input", 0, f, "hashes")], "wide.h", [ONNXAttribute("to", .int(13))])
            let salts = unsigned("wide.salts", dims: [f], (0..<f).map { UInt64($0 + 1) &* 0x51_7CC1_B727_220A })
            var parts = [mix(node("BitwiseXor", [h, salts], "wide.salted"), "wide.fields")]
            if !wide.crosses.isEmpty {
                let c = wide.crosses.count
                initializers.append(ONNXTensor("wide.first", dims: [c], int64s: wide.crosses.map { Int64($0[0]) }))
                initializers.append(ONNXTensor("wide.second", dims: [c], int64s: wide.crosses.map { Int64($0[1]) }))
                let axis = [ONNXAttribute("axis", .int(1))]
                let a = node("Gather", [h, "wide.first"], "wide.a", axis), b = node("Gather", [h, "wide.second"], "wide.b", axis)
                let k2 = unsigned("wide.k2", dims: [], [0x2545_F491_4F6C_DD1D])
                let tags = unsigned("wide.tags", dims: [c], (0..<c).map { UInt64(1000 + $0) })
                let mixed = node("BitwiseXor", [node("Mul", [a, k2], "wide.ak"), mix(b, "wide.mb")], "wide.pair")
                parts.append(mix(node("BitwiseXor", [mixed, tags], "wide.tagged"), "wide.crosses"))
            }
            let all = parts.count == 1 ? parts[0] : node("Concat", parts, "wide.all", [ONNXAttribute("axis", .int(1))])
            let ids = node(
                "Cast", [node("Mod", [all, unsigned("wide.buckets", dims: [], [UInt64(w)])], "wide.mod")], "wide.ids",
                [ONNXAttribute("to", .int(7))])
            initializers.append(ONNXTensor("wide.axes", dims: [1], int64s: [1]))
            return node("ReduceSum", [node("Gather", [table, ids], "wide.rows"), "wide.axes"], "wide", [ONNXAttribute("keepdims", .int(0))])
        }

        /// (B, T, F) -> Transpose -> LSTM -> Squeeze of the direction axis -> Transpose -> (B, T, H), and
        /// its last step's Gather when the layer gives only that (B, H).
        mutating func lstm(_ x: String, prefix: String, out: String, inputs f: Int, hidden h: Int, layer: LayerSpec) throws -> String {
            let normalized = layer.weightNorm ?? false
            // PyTorch's and Tether's gate blocks (i, f, g, o) in ONNX's order (i, o, f, c)
            func onnxOrder(_ v: [Float], block: Int) -> [Float] { [0, 3, 1, 2].flatMap { v[$0 * block..<($0 + 1) * block] } }
            let w = onnxOrder(try weight(prefix, "weight_ih_l0", rows: 4 * h, columns: f, normalized: normalized), block: h * f)
            let r = onnxOrder(try weight(prefix, "weight_hh_l0", rows: 4 * h, columns: h, normalized: normalized), block: h * h)
            let b =
                try onnxOrder(tensor(prefix + "bias_ih_l0", count: 4 * h), block: h)
                + onnxOrder(tensor(prefix + "bias_hh_l0", count: 4 * h), block: h)
            let swap = [ONNXAttribute("perm", .ints([1, 0, 2]))]
            let timeMajor = node("Transpose", [x], out + ".time_major", swap)
            let ins = [
                timeMajor, constant(prefix + "W", dims: [1, 4 * h, f], w), constant(prefix + "R", dims: [1, 4 * h, h], r),
                constant(prefix + "B", dims: [1, 8 * h], b)
            ]
            let y = node("LSTM", ins, out + ".y", [ONNXAttribute("hidden_size", .int(Int64(h)))])
            initializers.append(ONNXTensor(prefix + "direction_axis", dims: [1], int64s: [1]))
            let steps = node("Transpose", [node("Squeeze", [y, prefix + "direction_axis"], out + ".squeezed")], out + ".sequence", swap)
            guard layer.sequences != true else { return steps }
            initializers.append(ONNXTensor(prefix + "last_step", dims: [], int64s: [-1]))
            return node("Gather", [steps, prefix + "last_step"], out, [ONNXAttribute("axis", .int(1))])
        }

        /// 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))
        mutating func gelu(_ x: String, prefix: String, out: String) -> String {
            let c = constant(prefix + "gelu_c", dims: [], [0.044715]),
                r = constant(prefix + "gelu_r", dims: [], [Float((2 / Double.pi).squareRoot())])
            let one = constant(prefix + "gelu_one", dims: [], [1]), half = constant(prefix + "gelu_half", dims: [], [0.5])
            let x2 = node("Mul", [x, x], out + ".x2"), x3 = node("Mul", [x2, x], out + ".x3")
            let inner = node("Add", [x, node("Mul", [x3, c], out + ".cx3")], out + ".inner")
            let t = node("Tanh", [node("Mul", [inner, r], out + ".scaled")], out + ".tanh")
            return node("Mul", [node("Mul", [x, node("Add", [t, one], out + ".onePlus")], out + ".xOnePlus"), half], out)
        }
    }
}
