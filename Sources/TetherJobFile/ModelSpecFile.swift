import Foundation
import TetherNN
import Yams

/// A model spec read from YAML (or JSON, which YAML reads too): a file of its own (`--model
/// FILE.yaml`) or a job file's `model:` mapping. A layer is its kind alone (`relu`), its kind with one
/// value (`max-pool: 2` is the kernel, `dense: 128` the output features, `dropout: 0.3` the rate,
/// `leaky-relu: 0.2` the slope), or its kind with a mapping of settings (`conv2d: {out: 32, kernel: 5}`).
/// An unknown kind or setting is refused naming the nearest valid one.
public enum ModelSpecFile {
    /// The spec in `text` (a mapping with input, layers and loss, or one whose `model:` is that), named
    /// `name`; `source` names the file in errors.
    public static func parse(_ text: String, name: String, source: String) throws -> ModelSpec {
        let root: Node?
        do { root = try Yams.compose(yaml: text) } catch { throw SpecError("\(source): not valid YAML: \(error)") }
        guard var mapping = root?.mapping else { throw SpecError("\(source): a model spec is a mapping of input, layers and loss") }
        if let inner = mapping["model"]?.mapping { mapping = inner }
        let keys = ["name", "input", "layers", "loss", "wide"]
        for key in mapping.keys.compactMap(\.string) where !keys.contains(key) {
            throw SpecError("\(source): a model spec has no key \"\(key)\"" + nearest(key, keys))
        }
        var input: [Int] = [], table: ModelSpec.TableColumns?, tokens: ModelSpec.TokenInput?
        if let columns = mapping["input"]?.mapping, columns["tokens"] != nil {
            for key in columns.keys.compactMap(\.string) where !["tokens", "vocabulary"].contains(key) {
                throw SpecError("\(source): input: tokens take no \"\(key)\"" + nearest(key, ["tokens", "vocabulary"]))
            }
            guard let t = columns["tokens"]?.int, let v = columns["vocabulary"]?.int else {
                throw SpecError("\(source): input: tokens are {tokens: T, vocabulary: V}, two whole numbers")
            }
            tokens = ModelSpec.TokenInput(steps: t, vocabulary: v)
        } else if let columns = mapping["input"]?.mapping {
            for key in columns.keys.compactMap(\.string) where !["categorical", "numeric"].contains(key) {
                throw SpecError("\(source): input: a table has no \"\(key)\"" + nearest(key, ["categorical", "numeric", "tokens"]))
            }
            guard let f = columns["categorical"]?.int ?? (columns["categorical"] == nil ? 0 : nil),
                let m = columns["numeric"]?.int ?? (columns["numeric"] == nil ? 0 : nil)
            else { throw SpecError("\(source): input: a table's categorical and numeric are column counts") }
            table = ModelSpec.TableColumns(categorical: f, numeric: m)
        } else {
            guard let list = mapping["input"]?.sequence?.compactMap({ $0.int }), list.count == mapping["input"]?.sequence?.count else {
                throw SpecError(
                    "\(source): input must be a list of sizes, [C, H, W] for images, [T, F] for sequences or [F] for features; a table's columns, {categorical: F, numeric: M}; or tokens, {tokens: T, vocabulary: V}"
                )
            }
            input = list
        }
        guard let layerNodes = mapping["layers"]?.sequence else { throw SpecError("\(source): layers must be a list") }
        let layers = try layerNodes.enumerated().map { try layer($1, index: $0, source: source) }
        var loss = ModelSpec.Loss.crossEntropy
        if let node = mapping["loss"] {
            let names = ModelSpec.Loss.allCases.map(\.rawValue)
            guard let text = node.string, let l = ModelSpec.Loss(rawValue: text) else {
                let given = node.string ?? "that"
                throw SpecError("\(source): loss \(given) is not one of \(names.joined(separator: ", "))\(nearest(given, names))")
            }
            loss = l
        }
        var spec = ModelSpec(name: mapping["name"]?.string ?? name, input: input, table: table, tokens: tokens, layers: layers, loss: loss)
        if let node = mapping["wide"] {
            guard let w = node.mapping else { throw SpecError("\(source): wide is a mapping: {buckets: 1048576, crosses: [[0, 2]]}") }
            var tower = ModelSpec.WideTower()
            for (k, v) in w {
                let key = k.string ?? "?"
                switch key {
                case "buckets":
                    guard let b = v.int else { throw SpecError("\(source): wide: buckets must be a whole number") }
                    tower.buckets = b
                case "crosses":
                    guard let pairs = v.sequence?.map({ $0.sequence?.compactMap(\.int) ?? [] }), pairs.allSatisfy({ $0.count == 2 }) else {
                        throw SpecError(
                            "\(source): wide: crosses is a list of pairs of categorical column positions, e.g. [[0, 2], [1, 2]]")
                    }
                    tower.crosses = pairs
                case "ftrl":
                    guard let f = v.bool else { throw SpecError("\(source): wide: ftrl must be true or false") }
                    tower.ftrl = f
                default:
                    throw SpecError("\(source): wide has no setting \"\(key)\"" + nearest(key, ["buckets", "crosses", "ftrl"]))
                }
            }
            spec.wide = tower
        }
        _ = try spec.classes()  // a spec that does not fit together (or with its loss) is refused where it is read
        return spec
    }

    /// Reads `path` (the spec's name is the file's, without its extension).
    public static func read(_ path: String) throws -> ModelSpec {
        guard let data = FileManager.default.contents(atPath: path), let text = String(data: data, encoding: .utf8) else {
            throw SpecError("--model \(path): cannot read it (a model spec is a YAML file)")
        }
        return try parse(text, name: URL(fileURLWithPath: path).deletingPathExtension().lastPathComponent, source: path)
    }

    static func layer(_ node: Node, index: Int, source: String) throws -> LayerSpec {
        let kinds = LayerSpec.Kind.allCases.map(\.rawValue)
        func kind(_ name: String) throws -> LayerSpec.Kind {
            guard let k = LayerSpec.Kind(rawValue: name) else {
                throw SpecError(
                    "\(source): layer \(index): unknown kind \"\(name)\"\(nearest(name, kinds)); kinds: \(kinds.joined(separator: ", "))")
            }
            return k
        }
        if let name = node.string { return LayerSpec(try kind(name)) }
        guard let m = node.mapping, m.count == 1, let (key, value) = m.first.map({ ($0.key, $0.value) }), let name = key.string else {
            throw SpecError("\(source): layer \(index): give a kind (relu), a kind and a value (max-pool: 2) or a kind and its settings")
        }
        var layer = LayerSpec(try kind(name))
        let allowed = LayerSpec.settings(of: layer.kind)
        func fail(_ why: String) -> SpecError { SpecError("\(source): layer \(index) (\(name)): \(why)") }
        func set(_ setting: String, _ v: Node) throws {
            func int() throws -> Int {
                guard let i = v.int else { throw fail("\(setting) must be a whole number, got \(v.string ?? "a list or mapping")") }
                return i
            }
            func bool() throws -> Bool {
                guard let b = v.bool else { throw fail("\(setting) must be true or false") }
                return b
            }
            func number() throws -> Double {
                guard let d = v.float ?? v.int.map(Double.init) else { throw fail("\(setting) must be a number") }
                return d
            }
            switch setting {
            case "out": layer.out = try int()
            case "kernel": layer.kernel = try int()
            case "stride": layer.stride = try int()
            case "padding": layer.padding = try int()
            case "bias": layer.bias = try bool()
            case "weight-norm": layer.weightNorm = try bool()
            case "rate": layer.rate = try number()
            case "slope": layer.slope = try number()
            case "mean-only": layer.meanOnly = try bool()
            case "buckets": layer.buckets = try int()
            case "sparse": layer.sparse = try bool()
            case "sequences": layer.sequences = try bool()
            case "tie":
                let name = v.string.flatMap { $0.hasPrefix("layers.") ? Int($0.dropFirst(7)) : nil }
                guard let t = v.int ?? name else { throw fail("tie names an earlier layer: tie: 0, or tie: layers.0") }
                layer.tie = t
            case "shape":
                guard let list = v.sequence?.compactMap(\.int), list.count == v.sequence?.count else {
                    throw fail("shape must be a list of sizes")
                }
                layer.shape = list
            case "branches":
                guard let branches = v.sequence, branches.allSatisfy({ $0.sequence != nil }) else {
                    throw fail("branches must be a list of lists of layers: concat: [[conv2d: {out: 8, kernel: 1}], []]")
                }
                guard branches.count <= ModelSpec.mostBranches else {
                    throw fail("\(branches.count) branches; give 1...\(ModelSpec.mostBranches)")
                }
                layer.branches = try branches.enumerated().map { b, branch in
                    try branch.sequence!.enumerated().map { i, node in
                        // refused before it is read, so that nesting cannot run deep
                        guard (node.mapping?.first?.key.string ?? node.string) != "concat" else {
                            throw fail("branch \(b): layer \(i): a concat inside a branch is not taken")
                        }
                        return try Self.layer(node, index: i, source: "\(source): layer \(index) branch \(b)")
                    }
                }
            default: throw fail("no setting \(setting)")
            }
        }
        if let settings = value.mapping {
            for (k, v) in settings {
                guard let key = k.string, allowed.contains(key) else {
                    let key = k.string ?? "?"
                    throw fail(
                        "no setting \"\(key)\"" + nearest(key, allowed)
                            + "; it takes \(allowed.isEmpty ? "none" : allowed.joined(separator: ", "))")
                }
                try set(key, v)
            }
        } else if value.scalar != nil || value.sequence != nil,
            let first = allowed.first(where: { ["out", "kernel", "rate", "slope", "shape", "branches"].contains($0) })
        {
            try set(first, value)
        } else {
            throw fail("takes \(allowed.isEmpty ? "no settings" : "a mapping of " + allowed.joined(separator: ", "))")
        }
        return layer
    }

    /// " (did you mean X?)" for the valid name closest to `given` by edit distance, when close enough.
    static func nearest(_ given: String, _ valid: [String]) -> String {
        func distance(_ a: String, _ b: String) -> Int {
            let a = Array(a), b = Array(b)
            var row = Array(0...b.count)
            for i in 1...max(a.count, 1) where !a.isEmpty {
                var previous = row[0]
                row[0] = i
                for j in stride(from: 1, through: b.count, by: 1) {
                    let substitution = previous + (a[i - 1] == b[j - 1] ? 0 : 1)
                    previous = row[j]
                    row[j] = min(row[j] + 1, row[j - 1] + 1, substitution)
                }
            }
            return a.isEmpty ? b.count : row[b.count]
        }
        guard let best = valid.min(by: { distance(given, $0) < distance(given, $1) }), distance(given, best) <= max(2, given.count / 3)
        else { return "" }
        return " (did you mean \(best)?)"
    }

    /// The spec as YAML that `parse` reads back to the same spec, indented by `indent` spaces: a layer
    /// is its kind alone, or its kind with a flow mapping of the settings it has.
    public static func yaml(_ spec: ModelSpec, indent: Int = 0) -> String {
        let pad = String(repeating: " ", count: indent)
        let plain = !spec.name.isEmpty && spec.name.allSatisfy { $0.isLetter || $0.isNumber || "._-".contains($0) }
        let name =
            plain
            ? spec.name : "\"" + spec.name.replacingOccurrences(of: "\\", with: "\\\\").replacingOccurrences(of: "\"", with: "\\\"") + "\""
        var lines = [
            "\(pad)name: \(name)",
            "\(pad)input: "
                + (spec.table.map { "{categorical: \($0.categorical), numeric: \($0.numeric)}" }
                    ?? spec.tokens.map { "{tokens: \($0.steps), vocabulary: \($0.vocabulary)}" }
                    ?? "[\(spec.input.map(String.init).joined(separator: ", "))]"),
            "\(pad)layers:"
        ]
        for l in spec.layers { lines.append("\(pad)  - " + yaml(l)) }
        if let w = spec.wide {
            let crosses = w.crosses.map { "[\($0.map(String.init).joined(separator: ", "))]" }.joined(separator: ", ")
            lines.append("\(pad)wide: {buckets: \(w.buckets), crosses: [\(crosses)], ftrl: \(w.ftrl)}")
        }
        lines.append("\(pad)loss: \(spec.loss.rawValue)")
        return lines.joined(separator: "\n") + "\n"
    }

    /// A layer as its kind alone, or its kind with a flow mapping of the settings it has.
    public static func yaml(_ l: LayerSpec) -> String {
        var settings: [String] = []
        func put(_ key: String, _ v: Any?) { if let v { settings.append("\(key): \(v)") } }
        put("out", l.out)
        put("kernel", l.kernel)
        put("stride", l.stride)
        put("padding", l.padding)
        put("bias", l.bias)
        put("weight-norm", l.weightNorm)
        put("rate", l.rate)
        put("slope", l.slope)
        put("mean-only", l.meanOnly)
        put("buckets", l.buckets)
        put("sparse", l.sparse)
        put("tie", l.tie)
        put("sequences", l.sequences)
        put("shape", l.shape.map { "[" + $0.map(String.init).joined(separator: ", ") + "]" })
        // inside a flow list, a layer with settings is a one-entry flow mapping
        put(
            "branches",
            l.branches.map { branches in
                "["
                    + branches.map {
                        "["
                            + $0.map {
                                let y = yaml($0); return y.contains(":") ? "{\(y)}" : y
                            }.joined(separator: ", ") + "]"
                    }
                    .joined(separator: ", ") + "]"
            })
        return l.kind.rawValue + (settings.isEmpty ? "" : ": {" + settings.joined(separator: ", ") + "}")
    }
}
