import TetherNN

/// The inference network of a family checkpoint written as the spec layers it is made of, so that
/// what takes a spec (`tether export --onnx`) takes the family too. Each family names its tensors its
/// own way (PyTorch's, as its reference model has them); `checkpointName` maps a spec tensor's name
/// (`layers.N.weight`) to the checkpoint's.
public struct FamilySpec {
    public var spec: ModelSpec
    public var checkpointName: (String) -> String
    public init(spec: ModelSpec, checkpointName: @escaping (String) -> String) { (self.spec, self.checkpointName) = (spec, checkpointName) }
}

extension Checkpoint.Loaded {
    /// The checkpoint's network as a spec, for export: a spec's or an image family's own
    /// (`fittedSpec`, names unchanged); autoencoder-tied's and lm-tied's as their layers; nil for
    /// wide-deep, whose hashing of 64-bit categorical hashes has no spec form (a spec with a table
    /// input and a wide tower is its exportable twin).
    public func inferenceSpec() throws -> FamilySpec? {
        if let spec = try fittedSpec() { return FamilySpec(spec: spec, checkpointName: { $0 }) }
        let shapes = file.tensors.mapValues(\.shape)
        switch config.model {
        case "autoencoder-tied": return try Self.autoencoder(shapes)
        case "lm-tied": return try Self.languageModel(shapes, options: config.language)
        default: return nil
        }
    }

    /// autoencoder-tied's encoder.{2i} dense layers and ReLUs, then decoder.{2i} (each the transpose of
    /// the encoder layer it mirrors, with a bias of its own), ReLUs between, and the sigmoid its
    /// reconstructions go through; loss mse, so the graph's `prediction` is the reconstruction.
    static func autoencoder(_ shapes: [String: [Int]]) throws -> FamilySpec {
        var widths: [Int] = []  // input features, then each encoder layer's
        while let w = shapes["encoder.\(2 * max(0, widths.count - 1)).weight"], w.count == 2 {
            if widths.isEmpty { widths.append(w[1]) }
            guard w[1] == widths.last! else {
                throw SpecError(
                    "autoencoder-tied checkpoint: encoder.\(2 * (widths.count - 1)).weight is \(w), after a layer of \(widths.last!)")
            }
            widths.append(w[0])
        }
        let n = widths.count - 1
        guard n > 0 else { throw SpecError("autoencoder-tied checkpoint: no encoder.0.weight of two dimensions") }
        var layers: [LayerSpec] = []
        for i in 0..<n { layers += [LayerSpec(.dense) { $0.out = widths[i + 1] }, LayerSpec(.relu)] }
        for i in 0..<n {
            // decoder layer i mirrors encoder layer n - 1 - i (spec index 2 (n - 1 - i))
            layers.append(
                LayerSpec(.dense) {
                    $0.out = widths[n - 1 - i]; $0.tie = 2 * (n - 1 - i)
                })
            layers.append(LayerSpec(i < n - 1 ? .relu : .sigmoid))
        }
        let spec = ModelSpec(name: "autoencoder-tied", input: [widths[0]], layers: layers, loss: .mse)
        return FamilySpec(spec: spec) { name in
            guard name.hasPrefix("layers."), let dot = name.dropFirst(7).firstIndex(of: ".") else { return name }
            let index = Int(name.dropFirst(7)[..<dot]) ?? -1, rest = name[dot...]
            return index < 2 * n ? "encoder.\(index)\(rest)" : "decoder.\(index - 2 * n)\(rest)"
        }
    }

    /// lm-tied's embedding, dropout, LSTM layers (each with dropout after it) and output projection
    /// (the embedding's table when tied): the distribution of the token after the input's last.
    static func languageModel(_ shapes: [String: [Int]], options: LanguageOptions) throws -> FamilySpec {
        guard let table = shapes["encoder.weight"], table.count == 2 else {
            throw SpecError("lm-tied checkpoint: no encoder.weight of two dimensions")
        }
        let (v, d) = (table[0], table[1]), tied = shapes["decoder.weight"] == nil
        let normalized = shapes["rnn.weight_ih_l0_g"] != nil
        var layers = [LayerSpec(.embedding) { $0.out = d }, LayerSpec(.dropout)]
        var lstmIndex: [Int: Int] = [:]  // spec layer index -> the family's LSTM layer
        for l in 0..<options.layers {
            lstmIndex[layers.count] = l
            layers.append(
                LayerSpec(.lstm) {
                    $0.out = d
                    $0.weightNorm = normalized
                    $0.sequences = l < options.layers - 1
                })
            layers.append(LayerSpec(.dropout))
        }
        let decoder = layers.count
        layers.append(
            LayerSpec(.dense) {
                $0.out = v; $0.tie = tied ? 0 : nil
            })
        let spec = ModelSpec(
            name: "lm-tied", input: [], tokens: .init(steps: options.bptt, vocabulary: v), layers: layers, loss: .crossEntropy)
        return FamilySpec(spec: spec) { name in
            guard name.hasPrefix("layers."), let dot = name.dropFirst(7).firstIndex(of: ".") else { return name }
            let index = Int(name.dropFirst(7)[..<dot]) ?? -1, rest = String(name[dot...].dropFirst())
            if index == 0 { return "encoder." + rest }
            if index == decoder { return "decoder." + rest }
            guard let l = lstmIndex[index] else { return name }
            return "rnn." + rest.replacingOccurrences(of: "_l0", with: "_l\(l)")
        }
    }
}
