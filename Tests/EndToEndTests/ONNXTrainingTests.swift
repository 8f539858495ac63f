import Foundation
import Testing

/// Networks defined in PyTorch, exported with torch.onnx.export, and trained by `tether simulate
/// --model net.onnx` from their initializers: the same parameters as PyTorch training the same
/// module on the same batches.
@Suite struct ONNXTrainingTests {
    /// The tests' Python when it has torch, onnx and numpy; nil (the test skipped, saying why) when not.
    static let python: URL? = {
        let python = CLI.repository.appendingPathComponent(".build/test-venv/bin/python")
        guard let r = try? CLI.run(["-c", "import torch, onnx, numpy, safetensors"], executable: python), r.status == 0 else { return nil }
        return python
    }()

    /// The modules, their export and PyTorch's own training: full-batch SGD (the 2 x 16 training rows
    /// are every step's batch, so the data's order cannot matter) for `steps` steps. Writes NAME.onnx,
    /// NAME.npz (x, y) and NAME-test.npz, and NAME-torch.npz: the trained parameters under Tether's
    /// names (g and v flattened), and `count`, the module's parameter count.
    static let pytorchSide = """
        import sys, numpy as np, torch, warnings
        from torch import nn
        warnings.simplefilter("ignore")
        torch.manual_seed(0)
        wn = torch.nn.utils.parametrizations.weight_norm
        steps = int(sys.argv[1])

        class WeightNormMLP(nn.Module):
            def __init__(self):
                super().__init__()
                self.layers = nn.Sequential(wn(nn.Linear(8, 16)), nn.Tanh(), wn(nn.Linear(16, 4)))
            def forward(self, x): return self.layers(x)
            def tether(self):  # Tether's names for the parameters: layers 0 and 2 (tanh is layer 1)
                out = {}
                for i in (0, 2):
                    p = self.layers[i].parametrizations.weight
                    out[f"layers.{i}.weight_g"], out[f"layers.{i}.weight_v"] = p.original0.flatten(), p.original1
                    out[f"layers.{i}.bias"] = self.layers[i].bias
                return out

        class TiedAutoencoder(nn.Module):
            def __init__(self):
                super().__init__()
                self.encoder = nn.Linear(12, 6)
                self.decoder_bias = nn.Parameter(torch.randn(12) * 0.1)
            def forward(self, x):  # the decoder is the encoder's weight transposed
                return nn.functional.linear(torch.tanh(self.encoder(x)), self.encoder.weight.t(), self.decoder_bias)
            def tether(self):
                return {"layers.0.weight": self.encoder.weight, "layers.0.bias": self.encoder.bias, "layers.2.bias": self.decoder_bias}

        def run(name, module, x, y, loss, lr):
            torch.onnx.export(module.eval(), (x[:2],), f"{name}.onnx", input_names=["input"], output_names=["output"],
                              dynamic_axes={"input": {0: "batch"}}, opset_version=17, dynamo=False, do_constant_folding=False)
            np.savez(f"{name}.npz", x=x[:32].numpy(), y=y[:32].numpy())
            np.savez(f"{name}-test.npz", x=x[32:].numpy(), y=y[32:].numpy())
            optimizer = torch.optim.SGD(module.parameters(), lr=lr)
            for _ in range(steps):
                optimizer.zero_grad()
                loss(module(x[:32]), y[:32]).backward()
                optimizer.step()
            trained = {k: v.detach().numpy() for k, v in module.tether().items()}
            np.savez(f"{name}-torch.npz", count=sum(p.numel() for p in module.parameters()), **trained)

        x = torch.randn(40, 8)
        run("mlp", WeightNormMLP(), x, (x[:, 0] * 2 + x[:, 1] > 0).long() + 2 * (x[:, 2] > 0).long(), nn.CrossEntropyLoss(), 0.5)
        x = torch.randn(40, 12)
        run("ae", TiedAutoencoder(), x, x.clone(), nn.MSELoss(), 0.2)
        """

    /// Tether's checkpoint against PyTorch's parameters: its parameter count (optimizer state left
    /// out), then the largest difference of any value.
    static let comparison = """
        import sys, numpy as np
        from safetensors.numpy import load_file
        name = sys.argv[1]
        theirs, ours = np.load(f"{name}-torch.npz"), load_file(f"{name}-run/checkpoint.safetensors")
        count = sum(v.size for k, v in ours.items() if not k.startswith("optimizer."))
        worst = max(float(np.abs(ours[k].reshape(-1) - theirs[k].reshape(-1)).max()) for k in theirs.files if k != "count")
        print(int(theirs["count"]), count, worst)
        """

    @Test func pytorchModulesTrainOnTwoWorkersAsInPyTorch() throws {
        guard let python = Self.python else {
            print(
                "skipped: PyTorch's side of the ONNX training test (no torch, onnx, numpy and safetensors in .build/test-venv; scripts/install-deps --test)"
            )
            return
        }
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("tether-onnx-train-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: dir) }
        let steps = 6
        let torch = try CLI.run(["-c", Self.pytorchSide, "\(steps)"], timeout: 300, executable: python, in: dir)
        try #require(torch.status == 0, "\(torch.stderr)")
        for (name, flags) in [("mlp", ["--lr", "0.5"]), ("ae", ["--lr", "0.2", "--loss", "mse"])] {
            let run = try CLI.run(
                [
                    "simulate", "--workers", "2", "--model", "\(name).onnx", "--data", "npz:\(name).npz", "--test-data",
                    "npz:\(name)-test.npz", "--batch", "16", "--optimizer", "sgd", "--schedule", "constant", "--max-steps", "\(steps)",
                    "--run-dir", "\(name)-run"
                ] + flags, timeout: 240, in: dir)
            #expect(
                run.status == 0 && run.stdout.contains("starting from the weights in \(name).onnx")
                    && run.stdout.contains("done: \(steps) steps"), "\(run.stdout)\(run.stderr)")
            let compared = try CLI.run(["-c", Self.comparison, name], executable: python, in: dir)
            let figures = compared.stdout.split(separator: " ").compactMap { Double($0.trimmingCharacters(in: .whitespacesAndNewlines)) }
            try #require(compared.status == 0 && figures.count == 3, "\(compared.stdout)\(compared.stderr)")
            // the count says weight norm (g and v, not one weight) and the tie (one weight for two layers)
            #expect(figures[0] == figures[1], "\(name): PyTorch has \(figures[0]) parameters, Tether's checkpoint \(figures[1])")
            #expect(figures[2] < 1e-5, "\(name): after \(steps) SGD steps Tether's parameters differ from PyTorch's by \(figures[2])")
        }
    }
}
