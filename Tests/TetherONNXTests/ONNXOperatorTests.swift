import Foundation
import Testing
import TetherNN
import TetherONNX
import TetherTensor
import TetherTrain
import TetherProcess

/// Every operator the importer reads, one module each, defined and exported by PyTorch in the test:
/// imported and loaded from its initializers, Tether's forward (evaluation mode) equals ONNX Runtime's
/// within 1e-5 of the output's largest value, and its backward (training mode) equals PyTorch's
/// autograd: the input's gradient and every parameter's, for the same upstream gradient.
@Suite struct ONNXOperatorTests {
    /// Writes CASE.onnx and CASE.json for each case: x, ONNX Runtime's output y, the upstream gradient
    /// r, autograd's dx and the parameters' gradients under Tether's names (weight norm's g flattened).
    static let pytorchSide = """
        import json, numpy as np, onnxruntime as ort, torch, warnings
        from torch import nn
        warnings.simplefilter("ignore")
        torch.manual_seed(0)
        wn = torch.nn.utils.parametrizations.weight_norm

        class MatMulAdd(nn.Module):  # exported as MatMul and Add: the weight stored (in, out)
            def __init__(self):
                super().__init__()
                self.weight, self.bias = nn.Parameter(torch.randn(10, 6) * 0.3), nn.Parameter(torch.randn(6))
            def forward(self, x): return x @ self.weight + self.bias

        class Reshape(nn.Module):
            def forward(self, x): return x.reshape(-1, 3, 4, 4)

        class LSTM(nn.Module):  # batch-first; the whole sequence (B, T, H) or its last step (B, H)
            def __init__(self, last):
                super().__init__()
                self.lstm, self.last = nn.LSTM(5, 7, batch_first=True), last
            def forward(self, x):
                y, _ = self.lstm(x)
                return y[:, -1] if self.last else y

        class TextClassifier(nn.Module):  # tokens -> embedding -> LSTM's last step -> dense
            def __init__(self):
                super().__init__()
                self.embedding, self.lstm, self.out = nn.Embedding(20, 5), nn.LSTM(5, 6, batch_first=True), nn.Linear(6, 3)
            def forward(self, tokens): return self.out(self.lstm(self.embedding(tokens))[0][:, -1])

        class TiedLanguageModel(TextClassifier):  # the output layer scores the vocabulary with the embedding's table (Press & Wolf)
            def __init__(self, bias):
                super().__init__()
                self.lstm, self.out = nn.LSTM(5, 5, batch_first=True), nn.Linear(5, 20, bias=bias)
                self.out.weight = self.embedding.weight  # with a bias: Gemm of the table; without: MatMul of its Transpose

        class Concat(nn.Module):  # branches from one input joined along dim 1 (an empty one passes the input on)
            def __init__(self, *branches):
                super().__init__()
                self.branches = nn.ModuleList(branches)
            def forward(self, x): return torch.cat([b(x) for b in self.branches], 1)

        class Branching(nn.Module):  # Tether's names: layers.0.branches.B.M.weight
            def __init__(self, *branches):
                super().__init__()
                self.layers = nn.Sequential(Concat(*branches))
            def forward(self, x): return self.layers(x)

        def gradients(module):  # under Tether's names, its weights (out, in, ...)
            out = {}
            for name, p in module.named_parameters():
                name = name.replace("parametrizations.weight.original0", "weight_g").replace("parametrizations.weight.original1", "weight_v")
                g = p.grad.t() if isinstance(module, MatMulAdd) and name == "weight" else p.grad
                # one layer is layer 0; the classifier's are layers 0, 1 and 2
                name = name.replace("lstm.", "").replace("embedding.", "layers.0.").replace("out.", "layers.2.")
                out[name if name.startswith("layers.") else ("layers.1." if "_l0" in name and isinstance(module, TextClassifier) else "layers.0.") + name] = g.flatten().tolist()
            return out

        features, image = (4, 10), (2, 3, 8, 8)
        bn = nn.BatchNorm2d(3)
        bn.running_mean.copy_(torch.randn(3)); bn.running_var.copy_(torch.rand(3) + 0.5)
        with torch.no_grad(): bn.weight.copy_(torch.rand(3) + 0.5); bn.bias.copy_(torch.randn(3))
        cases = {
            "gemm": (nn.Linear(10, 6), features, 17), "matmul-add": (MatMulAdd(), features, 17),
            "gemm-weight-norm": (wn(nn.Linear(10, 6)), features, 17),
            "conv": (nn.Conv2d(3, 4, 3, padding=1), image, 17), "conv-stride": (nn.Conv2d(3, 5, 3, stride=2), image, 17),
            "conv-weight-norm": (wn(nn.Conv2d(3, 4, 3, padding=1)), image, 17),
            "max-pool": (nn.MaxPool2d(2), image, 17), "avg-pool": (nn.AvgPool2d(3, stride=2), image, 17),
            "global-avg-pool": (nn.AdaptiveAvgPool2d(1), image, 17),
            "relu": (nn.ReLU(), features, 17), "leaky-relu": (nn.LeakyReLU(0.1), features, 17), "sigmoid": (nn.Sigmoid(), features, 17),
            "tanh": (nn.Tanh(), features, 17), "gelu": (nn.GELU(approximate="tanh"), features, 20),
            "flatten": (nn.Flatten(), image, 17), "reshape": (Reshape(), (2, 48), 17), "batch-norm": (bn, image, 17),
            "lstm-last-step": (LSTM(True), (3, 6, 5), 17), "lstm-sequence": (LSTM(False), (3, 6, 5), 17),
            "embedding": (nn.Embedding(20, 5), (4, 6), 17), "embedding-lstm-dense": (TextClassifier(), (4, 6), 17),
            "tied-embedding-gemm": (TiedLanguageModel(True), (4, 6), 17), "tied-embedding-transpose": (TiedLanguageModel(False), (4, 6), 17),
            # an Inception-like block (a 3x3 conv, the input itself, a weight-normalized 1x1 conv) and a features one
            "concat-image": (Branching(nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU()), nn.Sequential(),
                                       nn.Sequential(wn(nn.Conv2d(3, 2, 1)))), image, 17),
            "concat-features": (Branching(nn.Sequential(nn.Linear(10, 4), nn.Tanh()), nn.Sequential(nn.Linear(10, 3)), nn.Sequential()), features, 17),
        }
        for case, (module, shape, opset) in cases.items():
            tokens = isinstance(module, (nn.Embedding, TextClassifier))
            x = torch.randint(0, 20, shape) if tokens else torch.randn(*shape)
            torch.onnx.export(module.eval(), (x,), f"{case}.onnx", input_names=["input"], output_names=["output"],
                              dynamic_axes={"input": {0: "batch"}}, opset_version=opset, dynamo=False, do_constant_folding=False)
            y = ort.InferenceSession(f"{case}.onnx", providers=["CPUExecutionProvider"]).run(None, {"input": x.numpy()})[0]
            module.train()
            xg = x.clone().requires_grad_(not tokens)
            out = module(xg)
            r = torch.randn(out.shape)
            (out * r).sum().backward()
            grads = gradients(module)
            json.dump({"shape": list(shape), "x": x.flatten().float().tolist(), "y": y.flatten().tolist(), "r": r.flatten().tolist(),
                       "dx": [] if tokens else xg.grad.flatten().tolist(), "grads": grads}, open(f"{case}.json", "w"))
        # refused: a bidirectional LSTM, and the table tied to an output layer that does not score the vocabulary
        class TiedElsewhere(TextClassifier):
            def forward(self, tokens): return nn.functional.linear(self.lstm(self.embedding(tokens))[0][:, -1], self.embedding.weight.t())
        refused = {"refused-bidirectional": nn.LSTM(5, 7, batch_first=True, bidirectional=True), "refused-tied-transposed": TiedElsewhere()}
        refused["refused-tied-transposed"].lstm = nn.LSTM(5, 20, batch_first=True)
        for case, module in refused.items():
            x = torch.randint(0, 20, (2, 6)) if case.startswith("refused-tied") else torch.randn(2, 6, 5)
            torch.onnx.export(module.eval(), (x,), f"{case}.onnx", input_names=["input"], dynamic_axes={"input": {0: "batch"}},
                              opset_version=17, dynamo=False, do_constant_folding=False)
        print(" ".join(cases))
        """

    struct Case: Decodable {
        let shape: [Int]
        let x: [Float], y: [Float], r: [Float], dx: [Float]
        let grads: [String: [Float]]
    }

    /// The largest difference between `ours` and `theirs`, as a share of theirs' largest magnitude.
    static func relativeError(_ ours: [Float], _ theirs: [Float]) -> Float {
        guard ours.count == theirs.count else { return .infinity }
        let scale = max(theirs.map(abs).max() ?? 0, 1e-6)
        return zip(ours, theirs).map { abs($0 - $1) }.max().map { $0 / scale } ?? 0
    }

    /// (A, B, ...) -> (B, A, ...): between PyTorch's (B, C, H, W) and Tether's conv layout (C, B, H, W).
    static func swapLeadingAxes(_ v: [Float], _ a: Int, _ b: Int) -> [Float] {
        let inner = v.count / (a * b)
        var out = v
        for i in 0..<a { for j in 0..<b { for k in 0..<inner { out[(j * a + i) * inner + k] = v[(i * b + j) * inner + k] } } }
        return out
    }

    @Test func everyOperatorMatchesONNXRuntimeAndAutograd() throws {
        let repository = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
        // the venv's own bin/python (a symlink: resolved, it would be the system's Python without the venv)
        let python = URL(fileURLWithPath: repository.path + "/.build/test-venv/bin/python")
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("tether-onnx-ops-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: dir) }
        let (output, errors) = (Pipe(), Pipe())
        let started = try? ChildProcess(
            python.path, ["-c", Self.pytorchSide], environment: ProcessInfo.processInfo.environment,
            output: output.fileHandleForWriting.fileDescriptor, error: errors.fileHandleForWriting.fileDescriptor, folder: dir.path)
        try? output.fileHandleForWriting.close()
        try? errors.fileHandleForWriting.close()
        guard let process = started else {
            print("skipped: the per-operator ONNX checks (no .build/test-venv; scripts/install-deps --test)")
            return
        }
        let (printedBytes, errorBytes) = ChildProcess.readToEnd(output.fileHandleForReading, errors.fileHandleForReading)
        let (printed, stderr) = (String(decoding: printedBytes, as: UTF8.self), String(decoding: errorBytes, as: UTF8.self))
        guard process.waitUntilExit() == .exited(0) else {
            #expect(stderr.contains("No module named"), "the PyTorch side: \(stderr)")
            print("skipped: the per-operator ONNX checks (no torch, onnx or onnxruntime in .build/test-venv; scripts/install-deps --test)")
            return
        }
        for (name, why) in [
            ("refused-bidirectional", "direction bidirectional; one forward direction is read"),
            // a (20, 5) table used as a (5 outputs, 20 inputs) weight: not the vocabulary's scores
            ("refused-tied-transposed", "layer 2 (dense) gets (20): tie: 0: the embedding's table is 20 x 5, this layer's weight 5 x 20")
        ] {
            #expect(throws: (any Error).self, "\(name)") { try ONNXImport.read(dir.appendingPathComponent("\(name).onnx").path) }
            do { _ = try ONNXImport.read(dir.appendingPathComponent("\(name).onnx").path) } catch {
                #expect("\(error)".contains(why), "\(name): \(error)")
            }
        }
        let cases = printed.split(whereSeparator: \.isWhitespace).map(String.init)
        #expect(cases.count == 25, "\(printed)")
        for name in cases {
            let c = try JSONDecoder().decode(Case.self, from: Data(contentsOf: dir.appendingPathComponent("\(name).json")))
            let imported = try ONNXImport.read(dir.appendingPathComponent("\(name).onnx").path)
            var rng = RNG(seed: 1)
            let model = try imported.spec.predictor(kind: "spec", rng: &rng, as: Float.self)
            try StartingWeights(values: imported.values, source: name).load(into: model)
            // the network takes (B, F) or (B, C*H*W) and gives images in its conv layout (C, B, H, W)
            let x = Tensor(shape: [c.shape[0], c.shape.dropFirst().reduce(1, *)], scalars: c.x)
            func pytorchLayout(_ y: Tensor<Float>) -> [Float] {
                y.shape.count == 4 ? Self.swapLeadingAxes(y.scalars, y.shape[0], y.shape[1]) : y.scalars
            }
            let ctx = model.context
            ctx.training = false
            #expect(Self.relativeError(pytorchLayout(model.network.forward(x, ctx)), c.y) <= 1e-5, "\(name): forward against ONNX Runtime")
            ctx.training = true
            model.arena.zeroGrads()
            let out = model.network.forward(x, ctx)
            let r = out.shape.count == 4 ? Self.swapLeadingAxes(c.r, out.shape[1], out.shape[0]) : c.r
            // tokens have no gradient
            let dx = model.network.backward(Tensor(shape: out.shape, scalars: r), ctx, needsInputGradient: !c.dx.isEmpty)
            if !c.dx.isEmpty {
                #expect(Self.relativeError(dx?.scalars ?? [], c.dx) <= 1e-5, "\(name): the input's gradient against autograd")
            }
            #expect(Set(c.grads.keys) == Set(model.arena.layout.entries.map(\.name)), "\(name): parameters \(c.grads.keys.sorted())")
            for e in model.arena.layout.entries {
                let ours = Array(UnsafeBufferPointer(start: model.arena.grads + e.offset, count: e.count))
                #expect(Self.relativeError(ours, c.grads[e.name] ?? []) <= 1e-5, "\(name): the gradient of \(e.name) against autograd")
            }
        }
    }
}
