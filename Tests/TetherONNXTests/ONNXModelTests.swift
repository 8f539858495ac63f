import Foundation
import Testing
import TetherNN
@testable import TetherONNX

/// ONNX models through protoc-c: what Tether writes parses back the same, and hostile bytes (truncated,
/// foreign, a tensor whose data does not fit its shape, sizes beyond the bounds) are refused by name.
@Suite struct ONNXModelTests {
    static let model = ONNXModel(
        graph: ONNXGraph(
            name: "g",
            nodes: [
                ONNXNode(
                    "Conv", name: "c", inputs: ["input", "w"], outputs: ["y"],
                    attributes: [ONNXAttribute("kernel_shape", .ints([3, 3])), ONNXAttribute("alpha", .float(0.5))]),
                ONNXNode("Flatten", name: "f", inputs: ["y"], outputs: ["z"], attributes: [ONNXAttribute("axis", .int(1))])
            ],
            initializers: [
                ONNXTensor("w", dims: [2, 1, 3, 3], floats: (0..<18).map { Float($0) / 7 }), ONNXTensor("s", dims: [2], int64s: [-1, 18])
            ],
            inputs: [ONNXValue("input", shape: [.named("batch"), .size(1), .size(5), .size(5)])],
            outputs: [ONNXValue("z", shape: nil)]))

    @Test func whatIsWrittenParsesBackTheSame() throws {
        let bytes = Self.model.serialized()
        let back = try ONNXModel(bytes: bytes, source: "m.onnx")
        #expect(back == Self.model)
    }

    @Test func truncatedOrForeignBytesAreRefusedWithoutATrap() {
        let bytes = Self.model.serialized()
        var refused = 0
        for cut in stride(from: 0, to: bytes.count - 1, by: 7) {
            do { _ = try ONNXModel(bytes: Array(bytes[..<cut]), source: "cut.onnx") } catch { refused += 1 }
        }
        #expect(refused > 0)
        #expect(throws: ONNXError.self) { try ONNXModel(bytes: Array("not a model at all".utf8), source: "text.onnx") }
        #expect(throws: ONNXError.self) { try ONNXModel(bytes: [], source: "empty.onnx") }
    }

    /// Each refusal names the tensor and what does not fit.
    @Test func aTensorWhoseDataDoesNotFitItsShapeIsNamed() throws {
        func refusal(_ tensor: ONNXTensor) -> String {
            var m = Self.model
            m.graph.initializers = [tensor]
            do {
                _ = try ONNXModel(bytes: m.serialized(), source: "m.onnx")
                return "accepted"
            } catch { return "\(error)" }
        }
        #expect(
            refusal(ONNXTensor("w", dims: [2, 5], floats: [1, 2, 3])).contains("tensor w: 12 bytes of data for shape [2, 5] (10 elements"))
        #expect(
            refusal(ONNXTensor("big", dims: [1 << 20, 1 << 20, 1 << 20], floats: [])).contains("tensor big: more than 2147483648 elements"))
        #expect(refusal(ONNXTensor("deep", dims: Array(repeating: 1, count: 9), floats: [1])).contains("tensor deep: rank 9"))
        #expect(refusal(ONNXTensor("neg", dims: [-3], floats: [])).contains("tensor neg: dimension 0 is -3"))
    }

    /// A trained spec's ONNX graph: a weight-normalized layer's effective weight, a tied layer reading
    /// the weight it ties to (transposed), a mean-only batch norm folded into one Add.
    @Test func anExportedSpecFoldsWeightNormAndTies() throws {
        let spec = ModelSpec(
            name: "tied", input: [4],
            layers: [
                LayerSpec(.dense) { ($0.out, $0.weightNorm) = (3, true) }, LayerSpec(.batchNorm) { $0.meanOnly = true }, LayerSpec(.tanh),
                LayerSpec(.dense) { $0.out = 2 }, LayerSpec(.dense) { ($0.out, $0.tie) = (3, 3) }
            ], loss: .mse)
        let g: [Float] = [2, 1, 0.5], v: [Float] = (0..<12).map { Float($0) - 5 }, w3: [Float] = [1, 2, 3, 4, 5, 6]
        let values: [String: [Float]] = [
            "layers.0.weight_g": g, "layers.0.weight_v": v, "layers.0.bias": [0, 0, 0], "layers.1.bias": [1, 1, 1],
            "layers.1.running_mean": [0.5, 0.25, 0], "layers.3.weight": w3, "layers.3.bias": [0, 0], "layers.4.bias": [7, 8, 9]
        ]
        let m = try ONNXExport.model(spec) { values[$0] }
        #expect(m.graph.nodes.map(\.opType) == ["Gemm", "Add", "Tanh", "Gemm", "Gemm", "Identity"])
        let w0 = try #require(m.graph.initializers.first { $0.name == "layers.0.weight" }?.floats)
        for r in 0..<3 {
            let row = v[(r * 4)..<(r * 4 + 4)], norm = row.reduce(0) { $0 + $1 * $1 }.squareRoot()
            for j in 0..<4 { #expect(abs(w0[r * 4 + j] - g[r] * row[r * 4 + j] / norm) < 1e-6) }
        }
        #expect(m.graph.initializers.first { $0.name == "layers.1.shift" }?.floats == [0.5, 0.75, 1])
        // layer 4 (2 -> 3) reads layer 3's (2, 3) weight, the same initializer, as it is: Gemm without transB
        #expect(m.graph.initializers.filter { $0.name == "layers.3.weight" }.map(\.floats) == [w3])
        #expect(m.graph.nodes[4].inputs.dropFirst().first == "layers.3.weight")
        #expect(m.graph.initializers.filter { $0.name.hasPrefix("layers.4.") }.map(\.name) == ["layers.4.bias"])
        #expect(m.graph.nodes[4].attribute("transB") == .int(0) && m.graph.nodes[3].attribute("transB") == .int(1))
        #expect(m.graph.outputs.map(\.name) == ["prediction"])
        do {
            _ = try ONNXExport.model(spec) { $0 == "layers.3.weight" ? nil : values[$0] }
            Issue.record("a missing tensor was taken")
        } catch { #expect("\(error)".contains("layers.4") || "\(error)".contains("layers.3.weight"), "\(error)") }
    }
}
