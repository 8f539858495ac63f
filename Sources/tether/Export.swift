import ArgumentParser
import Foundation
import TetherJobFile
import TetherNN
import TetherONNX
import TetherTrain

/// `tether export --pytorch FILE.py`: a model spec's network as a PyTorch module with Tether's names,
/// so that a checkpoint loads into it (`load_tether(path)`) and serves anywhere PyTorch does.
/// `tether export --onnx FILE.onnx --checkpoint CKPT`: the trained network as an ONNX inference graph
/// with its weights, for ONNX Runtime and every other ONNX consumer.
struct Export: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Write a spec's network as a PyTorch module a checkpoint loads into, or a trained checkpoint as an ONNX model.")

    @Option(help: "Where to write the Python module (e.g. model.py).") var pytorch: String?
    @Option(help: "Where to write the trained network as an ONNX model (opset 17; needs --checkpoint).") var onnx: String?
    @Option(help: "The spec: a YAML file or a shipped spec's name (mlp, mlp-wn, cnn-wn).") var model: String?
    @Option(help: "A checkpoint: of a spec's run (it carries the spec), an image family's, autoencoder-tied's or lm-tied's.")
    var checkpoint: String?

    func validate() throws {
        guard (pytorch == nil) != (onnx == nil) else { throw ValidationError("give --pytorch FILE.py or --onnx FILE.onnx (one of them)") }
        guard (model == nil) != (checkpoint == nil) else { throw ValidationError("give --model SPEC or --checkpoint FILE (one of them)") }
        if onnx != nil && checkpoint == nil { throw ValidationError("--onnx writes a trained network: give its --checkpoint") }
    }

    func run() throws {
        do {
            let spec: ModelSpec
            var loaded: (checkpoint: Checkpoint.Loaded, name: (String) -> String)?
            if let checkpoint {
                let l = try Checkpoint.Loaded(URL(fileURLWithPath: checkpoint))
                if pytorch != nil {
                    // a spec's module, with a spec's names: a family's checkpoint (autoencoder-tied, lm-tied) has its own
                    guard let s = try l.fittedSpec() else {
                        throw SpecError(
                            "\(checkpoint) is a checkpoint of \(l.config.model), not of a model spec (mlp, mlp-wn, cnn-wn or a spec file); --pytorch takes a spec's run"
                        )
                    }
                    spec = s
                } else {
                    guard let s = try l.inferenceSpec() else {
                        throw SpecError(
                            "\(checkpoint) is a checkpoint of \(l.config.model), which has no spec form to export (a spec with a table input and a wide tower is a wide & deep network that exports)"
                        )
                    }
                    (spec, loaded) = (s.spec, (l, s.checkpointName))
                }
            } else {
                let m = model!
                guard let s = try ShippedSpecs.spec(m) ?? ModelSpecFile.read(m) as ModelSpec? else { throw SpecError("no spec \(m)") }
                spec = s
            }
            if let pytorch {
                try PyTorchModule.source(spec).write(toFile: pytorch, atomically: true, encoding: .utf8)
                print("wrote \(pytorch): class \(PyTorchModule.className(spec)) and load_tether(checkpoint)")
            } else if let onnx, let loaded {
                let model = try ONNXExport.model(spec) { name in try loaded.checkpoint.file.tensors[loaded.name(name)]?.floats() }
                try Data(model.serialized()).write(to: URL(fileURLWithPath: onnx), options: .atomic)
                print(
                    "wrote \(onnx): \(model.graph.nodes.count) nodes, \(model.graph.initializers.count) initializers, "
                        + "input \"input\", outputs \(model.graph.outputs.map { "\"\($0.name)\"" }.joined(separator: ", "))")
            }
        } catch { exitWithError(error) }
    }
}

/// A spec as Python source: an nn.Module whose `layers` is an nn.Sequential with one entry per spec
/// layer (so `layers.<index>.weight` is Tether's name), weight norm as torch.nn.utils.weight_norm's
/// `weight_g`/`weight_v`, the mean-only batch norm as a small module of its own. An image input is
/// taken as (B, C, H, W).
enum PyTorchModule {
    static func className(_ spec: ModelSpec) -> String {
        let words = spec.name.split { !$0.isLetter && !$0.isNumber }.map { $0.prefix(1).uppercased() + $0.dropFirst() }
        let name = words.joined()
        return (name.first?.isLetter == true ? name : "Spec" + name) + "Net"
    }

    static func inputNote(_ spec: ModelSpec) -> String {
        if let t = spec.table {
            return "(B, \(t.categorical + t.numeric)): \(t.categorical) categorical columns as their values' FNV-1a hashes & 0xFFFFFF, "
                + "then \(t.numeric) numbers standardized with the training split's mean and deviation"
        }
        if let t = spec.tokens { return "(B, \(t.steps)) token ids in 0..<\(t.vocabulary)" }
        switch spec.input.count {
        case 3: return "(B, \(spec.input.map(String.init).joined(separator: ", "))) images"
        case 2: return "(B, \(spec.input[0]), \(spec.input[1])) sequences"
        default: return "(B, \(spec.input[0])) features"
        }
    }

    /// The modules of `spec`'s layers, one per layer, as Python expressions; each tie as a statement on
    /// `path` (the Python expression of the Sequential they sit in) added to `ties`.
    static func entries(_ spec: ModelSpec, path: String, ties: inout [String]) throws -> [String] {
        let shapes = try spec.shapes()
        var before = try spec.inputShape()
        var entries: [String] = []
        for (i, (layer, after)) in zip(spec.layers, shapes).enumerated() {
            let entry: String
            switch (layer.kind, before) {
            case (.dense, .features(let f)) where layer.tie != nil:
                entry = "TiedLinear(\(f), \(layer.out!), bias=\(py(layer.bias ?? true)))"
                ties.append("\(path)[\(i)].tie(\(path)[\(layer.tie!)])")
            case (.concat, _):
                let branches = try layer.branches!.indices.map { b in
                    let branch = spec.branch(b, of: layer, index: i, over: before)
                    let inner = branch.layers.isEmpty ? [] : try Self.entries(branch, path: "\(path)[\(i)].branches[\(b)]", ties: &ties)
                    return "nn.Sequential(" + inner.joined(separator: ", ") + ")"
                }
                entry = "Concat(" + branches.joined(separator: ", ") + ")"
            case (.embedding, .tokens(_, let v)):
                entry = "TokenEmbedding(\(v), \(layer.out!))"
            case (.lstm, .sequence(_, let f)):
                entry =
                    (layer.weightNorm == true ? "lstm_weight_norm(" : "(")
                    + "SequenceLSTM(\(f), \(layer.out!), sequences=\(py(layer.sequences ?? false))))"
            case (.embedding, .table(let f, _)):
                entry = "TableEmbedding(\(f), \(layer.buckets ?? 1000), \(layer.out!))"
            case (.dense, .features(let f)):
                entry = wrap("nn.Linear(\(f), \(layer.out!), bias=\(py(layer.bias ?? true)))", layer.weightNorm ?? false)
            case (.conv2d, .image(let c, _, _)):
                entry = wrap(
                    "nn.Conv2d(\(c), \(layer.out!), \(layer.kernel!), stride=\(layer.stride ?? 1), padding=\(layer.padding ?? 0), bias=\(py(layer.bias ?? true)))",
                    layer.weightNorm ?? false)
            case (.maxPool, _): entry = "nn.MaxPool2d(\(layer.kernel!), stride=\(layer.stride ?? layer.kernel!))"
            case (.avgPool, _): entry = "nn.AvgPool2d(\(layer.kernel!), stride=\(layer.stride ?? layer.kernel!))"
            case (.flatten, _): entry = "nn.Flatten()"
            case (.unflatten, _): entry = "nn.Unflatten(1, (\(layer.shape!.map(String.init).joined(separator: ", "))))"
            case (.relu, _): entry = "nn.ReLU()"
            case (.leakyRelu, _): entry = "nn.LeakyReLU(\(layer.slope ?? 0.01))"
            case (.tanh, _): entry = "nn.Tanh()"
            case (.sigmoid, _): entry = "nn.Sigmoid()"
            case (.gelu, _): entry = "nn.GELU(approximate=\"tanh\")"
            case (.dropout, _): entry = "nn.Dropout(\(layer.rate ?? 0.5))"
            case (.batchNorm, .features(let f)):
                entry = layer.meanOnly == true ? "MeanOnlyBatchNorm(\(f), channels_first=False)" : "nn.BatchNorm1d(\(f))"
            case (.batchNorm, .image(let c, _, _)):
                entry = layer.meanOnly == true ? "MeanOnlyBatchNorm(\(c), channels_first=True)" : "nn.BatchNorm2d(\(c))"
            default: throw SpecError("\(spec.name): layer \(layer.kind.rawValue) on \(before) has no PyTorch form here")
            }
            entries.append(entry)
            before = after
        }
        return entries
    }

    static func source(_ spec: ModelSpec) throws -> String {
        var ties: [String] = []
        let entries = try entries(spec, path: "self.layers", ties: &ties)
        let name = className(spec)
        var wide = ""
        if let w = spec.wide, case .table(let f, _) = try spec.inputShape() {
            wide = "        self.wide = WideTower(\(f), \(w.buckets), \(w.crosses))\n"
        }
        return """
            # \(spec.name): written by `tether export --pytorch` from the model spec; the names of its
            # parameters are Tether's (layers.<index>.weight, weight_g/weight_v where weight-normalized),
            # so a Tether checkpoint loads into it:
            #     model = load_tether("runs/x/checkpoint.safetensors"); model.eval()
            # Input: \(inputNote(spec)).
            import warnings

            import numpy as np
            import torch
            from torch import nn


            class MeanOnlyBatchNorm(nn.Module):
                \"\"\"Salimans & Kingma's mean-only batch norm: y = x - mean(x) + bias (running mean in eval).\"\"\"

                def __init__(self, features, channels_first, momentum=0.1):
                    super().__init__()
                    self.bias = nn.Parameter(torch.zeros(features))
                    self.register_buffer("running_mean", torch.zeros(features))
                    self.channels_first, self.momentum = channels_first, momentum

                def forward(self, x):
                    dims = (0, 2, 3) if self.channels_first else (0,)
                    shape = (1, -1, 1, 1) if self.channels_first else (1, -1)
                    if self.training:
                        mean = x.mean(dim=dims)
                        with torch.no_grad():
                            self.running_mean.mul_(1 - self.momentum).add_(self.momentum * mean)
                    else:
                        mean = self.running_mean
                    return x - mean.view(shape) + self.bias.view(shape)


            class TableEmbedding(nn.Module):
                \"\"\"A table's F categorical columns through one embedding each, beside its numbers: x (B, F + M)
                holds each value's hash cut to 24 bits, then the numbers; field f's bucket r is row f*R + r.\"\"\"

                def __init__(self, fields, buckets, width):
                    super().__init__()
                    self.fields, self.buckets = fields, buckets
                    self.weight = nn.Parameter(torch.randn(fields * buckets, width))
                    self.register_buffer("offsets", torch.arange(fields) * buckets, persistent=False)

                def forward(self, x):
                    ids = x[:, : self.fields].long() % self.buckets + self.offsets
                    return torch.cat([nn.functional.embedding(ids, self.weight).flatten(1), x[:, self.fields :]], dim=1)


            class TokenEmbedding(nn.Embedding):
                \"\"\"nn.Embedding over token ids given as any number type (B, T) -> (B, T, D).\"\"\"

                def forward(self, x):
                    return super().forward(x.long())


            class SequenceLSTM(nn.LSTM):
                \"\"\"One batch-first LSTM layer from a zero state: (B, T, F) -> the last step's (B, H), or with
                sequences every step's (B, T, H).\"\"\"

                def __init__(self, input_size, hidden_size, sequences):
                    super().__init__(input_size, hidden_size, batch_first=True)
                    self.sequences = sequences

                def forward(self, x):
                    out, _ = super().forward(x)
                    return out if self.sequences else out[:, -1]


            def lstm_weight_norm(module):
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    for name in ("weight_ih_l0", "weight_hh_l0"):
                        module = torch.nn.utils.weight_norm(module, name=name)
                    return module


            def mix(z):
                \"\"\"splitmix64's finalizer over uint64 arrays (Tether's feature hash).\"\"\"
                z = z + np.uint64(0x9E3779B97F4A7C15)
                z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
                z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
                return z ^ (z >> np.uint64(31))


            class WideTower(nn.Module):
                \"\"\"Wide & Deep's wide part: one weight per hashed categorical value and cross, summed to one logit.\"\"\"

                def __init__(self, fields, buckets, crosses):
                    super().__init__()
                    self.fields, self.buckets, self.crosses = fields, buckets, crosses
                    self.weight = nn.Parameter(torch.zeros(buckets, 1))

                def forward(self, x):
                    w = np.uint64(self.buckets)
                    with np.errstate(over="ignore"):
                        h = x[:, : self.fields].detach().cpu().numpy().astype(np.uint64)
                        ids = [mix(h[:, j] ^ (np.uint64(j + 1) * np.uint64(0x517CC1B727220A))) % w for j in range(self.fields)]
                        for c, (a, b) in enumerate(self.crosses):
                            ids.append(mix(h[:, a] * np.uint64(0x2545F4914F6CDD1D) ^ mix(h[:, b]) ^ np.uint64(1000 + c)) % w)
                    return self.weight[torch.from_numpy(np.stack(ids, 1).astype(np.int64))].sum(1)


            class TiedLinear(nn.Module):
                \"\"\"A linear layer whose weight is another's (tie), or its transpose when the shapes say so;
                the bias is its own. The weight is not registered here: the state_dict holds it once.\"\"\"

                def __init__(self, in_features, out_features, bias=True):
                    super().__init__()
                    self.in_features, self.out_features = in_features, out_features
                    self.bias = nn.Parameter(torch.zeros(out_features)) if bias else None

                def tie(self, source):
                    object.__setattr__(self, "source", source)

                def forward(self, x):
                    w = self.source.weight
                    return nn.functional.linear(x, w if w.shape == (self.out_features, self.in_features) else w.t(), self.bias)


            class Concat(nn.Module):
                \"\"\"Branches from one input, their outputs joined along dim 1 (features or channels).\"\"\"

                def __init__(self, *branches):
                    super().__init__()
                    self.branches = nn.ModuleList(branches)

                def forward(self, x):
                    return torch.cat([branch(x) for branch in self.branches], 1)


            def weight_norm(module):
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")  # the weight_g/weight_v form, deprecated but Tether's names
                    return torch.nn.utils.weight_norm(module)


            class \(name)(nn.Module):
                def __init__(self):
                    super().__init__()
                    self.layers = nn.Sequential(
            \(entries.map { "            " + $0 + "," }.joined(separator: "\n"))
                    )
            \(ties.map { "        " + $0 + "\n" }.joined())\(wide)
                def forward(self, x):
                    return self.layers(x)\(spec.wide == nil ? "" : " + self.wide(x)")


            def load_tether(path):
                \"\"\"The network with a Tether checkpoint's parameters and buffers (its optimizer state left out).\"\"\"
                from safetensors.torch import load_file

                model = \(name)()
                own = model.state_dict()
                saved = load_file(path)
                # num_batches_tracked is PyTorch's own count (it only matters with momentum=None)
                # a cluster's checkpoint holds a buffer per replica: rank 0's is taken, as DDP keeps it
                state = {k: saved[k].reshape(-1)[: own[k].numel()].reshape(own[k].shape) if k in saved else own[k] for k in own}
                missing = [k for k in own if k not in saved and not k.endswith("num_batches_tracked")]
                if missing:
                    raise KeyError(f"{path} lacks {missing}: a checkpoint of another network?")
                model.load_state_dict(state)
                return model

            """
    }

    static func wrap(_ module: String, _ normalized: Bool) -> String { normalized ? "weight_norm(\(module))" : module }
    static func py(_ b: Bool) -> String { b ? "True" : "False" }
}
