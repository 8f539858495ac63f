import Foundation
import Testing
import TetherNN
import TetherTensor
@testable import TetherONNX
import TetherProcess

/// ONNX graphs read into specs: what Tether exports reads back as the same network with the same
/// values; weight norm's arithmetic and a shared initializer are recognized; what the importer does not
/// read is refused naming the node; a PyTorch export (when the tests' venv has torch and onnx) reads.
@Suite struct ONNXImportTests {
    @Test func anExportedSpecReadsBackAsTheSameNetwork() throws {
        let spec = ModelSpec(
            name: "net", input: [2, 8, 8],
            layers: [
                LayerSpec(.conv2d) { ($0.out, $0.kernel, $0.padding) = (4, 3, 1) }, LayerSpec(.batchNorm), LayerSpec(.relu),
                LayerSpec(.maxPool) { $0.kernel = 2 }, LayerSpec(.avgPool) { ($0.kernel, $0.stride) = (2, 1) }, LayerSpec(.flatten),
                LayerSpec(.dense) { $0.out = 6 }, LayerSpec(.leakyRelu) { $0.slope = 0.2 },
                LayerSpec(.dense) { ($0.out, $0.bias) = (3, false) }
            ])
        var rng = RNG(seed: 3), values: [String: [Float]] = [:]
        var layout = ArenaLayout()
        _ = try spec.network(&layout, as: Float.self)
        for e in layout.entries { values[e.name] = (0..<e.count).map { _ in Float(rng.nextNormal()) } }
        values["layers.1.running_mean"] = [0.1, 0.2, 0.3, 0.4]
        values["layers.1.running_var"] = [1, 2, 3, 4]
        let model = try ONNXExport.model(spec) { values[$0] }
        let back = try ONNXImport(ONNXModel(bytes: model.serialized(), source: "net.onnx"), name: "net", source: "net.onnx")
        #expect(back.spec.layers.map(\.kind) == spec.layers.map(\.kind))
        #expect(try back.spec.shapes() == spec.shapes() && back.spec.parameterCount() == spec.parameterCount())
        #expect(back.spec.layers[4].stride == 1 && back.spec.layers[7].slope == Double(Float(0.2)) && back.spec.layers[8].bias == false)
        for (name, v) in values { #expect(back.values[name] == v, "\(name)") }
    }

    /// Concats (an empty branch, a weight-normalized one, a batch norm's buffers in a branch) export as
    /// Concat of chains from one value and read back as the same branches with the same values.
    @Test func anExportedConcatReadsBackAsTheSameBranches() throws {
        let spec = ModelSpec(
            name: "inception", input: [3, 6, 6],
            layers: [
                LayerSpec(.concat) {
                    $0.branches = [
                        [LayerSpec(.conv2d) { ($0.out, $0.kernel, $0.padding) = (4, 3, 1) }, LayerSpec(.relu)],
                        [],
                        [LayerSpec(.conv2d) { ($0.out, $0.kernel, $0.weightNorm) = (2, 1, true) }, LayerSpec(.batchNorm)]
                    ]
                },
                LayerSpec(.flatten),
                LayerSpec(.concat) { $0.branches = [[LayerSpec(.dense) { $0.out = 5 }, LayerSpec(.tanh)], []] },
                LayerSpec(.dense) { $0.out = 3 }
            ])
        var rng = RNG(seed: 3), values: [String: [Float]] = [:]
        var layout = ArenaLayout()
        _ = try spec.network(&layout, as: Float.self)
        for e in layout.entries { values[e.name] = (0..<e.count).map { _ in Float(rng.nextNormal()) } }
        values["layers.0.branches.2.1.running_mean"] = [0.1, 0.2]
        values["layers.0.branches.2.1.running_var"] = [1, 2]
        let model = try ONNXExport.model(spec) { values[$0] }
        #expect(model.graph.nodes.filter { $0.opType == "Concat" }.count == 2)
        let back = try ONNXImport(ONNXModel(bytes: model.serialized(), source: "i.onnx"), name: "inception", source: "i.onnx")
        // the same layers and shapes (weight norm is exported folded: the effective weight, read back plain)
        #expect(back.spec.layers.map { $0.branches?.map { $0.map(\.kind) } } == spec.layers.map { $0.branches?.map { $0.map(\.kind) } })
        #expect(try back.spec.shapes() == spec.shapes() && back.spec.parameterCount() == spec.parameterCount() - 2)
        #expect(back.values["layers.0.branches.0.0.weight"] == values["layers.0.branches.0.0.weight"])
        #expect(back.values["layers.0.branches.2.1.running_var"] == [1, 2] && back.values["layers.2.branches.0.0.bias"] != nil)
        #expect(back.values.keys.allSatisfy { !$0.contains("?") })
    }

    /// torch.nn.utils.parametrizations.weight_norm's export (without constant folding): ReduceL2 of v,
    /// Div, Mul by g, into the Gemm. And one initializer for an encoder and its transposed decoder.
    @Test func weightNormAndATiedWeightAreRecognized() throws {
        let g = ONNXTensor("enc.original0", dims: [3, 1], floats: [1, 2, 3]),
            v = ONNXTensor("enc.original1", dims: [3, 4], floats: (0..<12).map(Float.init))
        let tied = ONNXTensor("w", dims: [2, 3], floats: [1, 2, 3, 4, 5, 6])
        let graph = ONNXGraph(
            name: "g",
            nodes: [
                ONNXNode("ReduceL2", name: "n", inputs: [v.name], outputs: ["norm"], attributes: [ONNXAttribute("keepdims", .int(1))]),
                ONNXNode("Div", name: "d", inputs: [v.name, "norm"], outputs: ["dir"]),
                ONNXNode("Mul", name: "m", inputs: ["dir", g.name], outputs: ["w0"]),
                ONNXNode("Gemm", name: "l0", inputs: ["input", "w0"], outputs: ["h0"], attributes: [ONNXAttribute("transB", .int(1))]),
                ONNXNode("Tanh", name: "t", inputs: ["h0"], outputs: ["h1"]),
                ONNXNode("Gemm", name: "enc", inputs: ["h1", "w"], outputs: ["h2"], attributes: [ONNXAttribute("transB", .int(1))]),
                ONNXNode("Gemm", name: "dec", inputs: ["h2", "w", "b"], outputs: ["out"], attributes: [ONNXAttribute("transB", .int(0))])
            ],
            initializers: [g, v, tied, ONNXTensor("b", dims: [3], floats: [7, 8, 9])],
            inputs: [ONNXValue("input", shape: [.named("batch"), .size(4)])],
            outputs: [ONNXValue("out", shape: nil)])
        let imported = try ONNXImport(ONNXModel(graph: graph), name: "wn", source: "wn.onnx")
        #expect(imported.spec.layers.map(\.kind) == [.dense, .tanh, .dense, .dense])
        #expect(imported.spec.layers[0].weightNorm == true && imported.values["layers.0.weight_g"] == g.floats)
        #expect(imported.values["layers.0.weight_v"] == v.floats && imported.values["layers.0.weight"] == nil)
        #expect(
            imported.spec.layers[3].tie == 2 && imported.values["layers.3.weight"] == nil
                && imported.values["layers.2.weight"] == tied.floats)
        #expect(imported.values["layers.3.bias"] == [7, 8, 9] && imported.spec.layers[2].bias == false)
        #expect(try imported.spec.shapes().last == .features(3))
        // a square weight used transposed by the second layer is not what a spec's tie of equal shapes means
        var square = graph
        square.initializers[2] = ONNXTensor("w", dims: [3, 3], floats: (0..<9).map(Float.init))
        #expect(throws: ONNXError.self) { try ONNXImport(ONNXModel(graph: square), name: "sq", source: "sq.onnx") }
    }

    @Test func whatIsNotReadIsRefusedNamingTheNode() throws {
        func refusal(_ nodes: [ONNXNode], opset: Int64 = 17) -> String {
            let graph = ONNXGraph(
                name: "g", nodes: nodes, initializers: [ONNXTensor("w", dims: [2, 4], floats: Array(repeating: 1, count: 8))],
                inputs: [ONNXValue("input", shape: [.named("batch"), .size(4)])], outputs: [ONNXValue("y", shape: nil)])
            do {
                _ = try ONNXImport(ONNXModel(opset: opset, graph: graph), name: "x", source: "x.onnx")
                return "accepted"
            } catch { return "\(error)" }
        }
        let einsum = refusal([ONNXNode("Einsum", name: "e", inputs: ["input", "w"], outputs: ["y"])])
        #expect(einsum.contains("node 0 (e): Einsum of [input, w] is not supported; the importer reads Gemm, MatMul"), "\(einsum)")
        let cycle = refusal([
            ONNXNode("Relu", name: "a", inputs: ["b"], outputs: ["y"]), ONNXNode("Relu", name: "b", inputs: ["input"], outputs: ["b"])
        ])
        #expect(cycle.contains("node 0 (Relu a) reads b before any node writes it"), "\(cycle)")
        #expect(refusal([ONNXNode("Relu", name: "r", inputs: ["input"], outputs: ["y"])], opset: 11).contains("opset 11"))
        let branch = refusal([
            ONNXNode("Relu", name: "r", inputs: ["input"], outputs: ["y"]), ONNXNode("Tanh", name: "t", inputs: ["input"], outputs: ["z"])
        ])
        #expect(branch.contains("value input: its branch from node 0 (r): Relu of [input] is joined by no Concat"), "\(branch)")
    }

    /// PyTorch's own export of a weight-normalized MLP with a tied autoencoder's shape, read as such.
    @Test func aPyTorchExportIsRead() throws {
        // the venv's own bin/python (a symlink: resolved, it would be the system's Python without the venv)
        let repository = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
        let python = URL(fileURLWithPath: repository.path + "/.build/test-venv/bin/python")
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("tether-onnx-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: dir) }
        let script = """
            import torch, warnings
            from torch import nn
            warnings.simplefilter("ignore")
            class Tied(nn.Module):
                def __init__(self):
                    super().__init__()
                    self.enc = torch.nn.utils.parametrizations.weight_norm(nn.Linear(8, 5))
                    self.mid = nn.Linear(5, 3)
                    self.out_bias = nn.Parameter(torch.zeros(5))
                def forward(self, x):
                    h = torch.relu(self.mid(torch.tanh(self.enc(x))))
                    return nn.functional.linear(h, self.mid.weight.t(), self.out_bias)
            torch.onnx.export(Tied().eval(), (torch.zeros(2, 8),), "net.onnx", input_names=["input"], output_names=["y"],
                              dynamic_axes={"input": {0: "batch"}}, opset_version=17, dynamo=False, do_constant_folding=False)
            """
        let errors = Pipe()
        let started = try? ChildProcess(
            python.path, ["-c", script], environment: ProcessInfo.processInfo.environment,
            error: errors.fileHandleForWriting.fileDescriptor, folder: dir.path)
        try? errors.fileHandleForWriting.close()
        guard let process = started else {
            print("skipped: PyTorch's export (no .build/test-venv with torch and onnx; scripts/install-deps --test)")
            return
        }
        let stderr = String(decoding: errors.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        guard process.waitUntilExit() == .exited(0) else {
            // a venv without torch or onnx is a skip; any other failure of the export is the test's
            #expect(stderr.contains("No module named"), "torch.onnx.export: \(stderr)")
            print("skipped: PyTorch's export (no torch or onnx in .build/test-venv; scripts/install-deps --test)")
            return
        }
        let imported = try ONNXImport.read(dir.appendingPathComponent("net.onnx").path)
        #expect(imported.spec.layers.map(\.kind) == [.dense, .tanh, .dense, .relu, .dense], "\(imported.spec.layers)")
        #expect(imported.spec.layers[0].weightNorm == true && imported.spec.layers[4].tie == 2)
        #expect(try imported.spec.parameterCount() == 5 + 40 + 5 + 15 + 3 + 5)
    }
}
