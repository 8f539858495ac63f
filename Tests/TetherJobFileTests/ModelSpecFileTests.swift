import Foundation
import Testing
import TetherJobFile
import TetherNN

/// Model specs read from YAML: every form a layer takes, the README's example, and errors that name the
/// nearest valid word.
@Suite struct ModelSpecFileTests {
    @Test func aSpecReadsInEveryForm() throws {
        let text = """
            model:
              input: [1, 28, 28]          # (C, H, W) or [features]
              layers:
                - conv2d: {out: 32, kernel: 5, padding: 2, weight-norm: true}
                - max-pool: 2
                - relu
                - flatten
                - dense: {out: 128, weight-norm: true}
                - dropout: 0.3
                - leaky-relu: 0.2
                - dense: 12
              loss: cross-entropy
            """
        let spec = try ModelSpecFile.parse(text, name: "example", source: "t.yaml")
        #expect(spec.input == [1, 28, 28] && spec.loss == .crossEntropy && spec.layers.count == 8)
        #expect(
            spec.layers[0].kind == .conv2d && spec.layers[0].out == 32 && spec.layers[0].padding == 2 && spec.layers[0].weightNorm == true)
        #expect(spec.layers[1].kernel == 2 && spec.layers[5].rate == 0.3 && spec.layers[6].slope == 0.2 && spec.layers[7].out == 12)
        #expect(try spec.classes() == 12)
        // JSON is YAML too (a job file's model: mapping reaches --model as text)
        let json = #"{"input": [4], "layers": [{"dense": {"out": 3}}]}"#
        #expect(try ModelSpecFile.parse(json, name: "j", source: "inline").layers.first?.out == 3)
    }

    @Test(arguments: [
        ("input: [4]\nlayers: [dense: 3, relu]\nlos: cross-entropy\n", #"no key "los" (did you mean loss?)"#),
        ("input: [4]\nlayers: [desne: 3]\n", #"layer 0: unknown kind "desne" (did you mean dense?)"#),
        (
            "input: [4]\nlayers: [{dense: {out: 3, wieght-norm: true}}]\n",
            #"layer 0 (dense): no setting "wieght-norm" (did you mean weight-norm?); it takes out, bias, weight-norm"#
        ),
        ("input: [4]\nlayers: [{dense: {out: three}}]\n", "layer 0 (dense): out must be a whole number, got three"),
        ("input: [4]\nlayers: [relu: 3]\n", "layer 0 (relu): takes no settings"),
        ("input: [4]\nlayers: [lstm: 3]\n", "layer 0 (lstm) gets (4): lstm takes a sequence (T, F)"),
        (
            "input: {tokens: 5, vocabulary: 9}\nlayers: [lstm: 3]\n",
            "layer 0 (lstm) gets 5 tokens of a vocabulary of 9: tokens go through an embedding first"
        ),
        ("input: {tokens: 5}\nlayers: [embedding: 3]\n", "input: tokens are {tokens: T, vocabulary: V}"),
        (
            "input: [4]\nlayers: [dense: 3]\nloss: mae\n",
            "loss mae is not one of cross-entropy, binary-cross-entropy, mse, l1 (did you mean mse?)"
        ),
        ("input: {categorical: 2, numric: 1}\nlayers: [dense: 3]\n", #"input: a table has no "numric" (did you mean numeric?)"#),
        (
            "input: {categorical: 2, numeric: 1}\nlayers: [dense: 3]\nloss: mse\n",
            "layer 0 (dense) gets a table of 2 categorical and 1 numeric columns: a table's categorical columns go through an embedding first"
        ),
        (
            "input: {categorical: 2, numeric: 1}\nlayers: [{embedding: {out: 4, bukets: 10}}]\n",
            #"layer 0 (embedding): no setting "bukets" (did you mean buckets?); it takes out, buckets, sparse"#
        ),
        (
            "input: [4]\nlayers: [dense: 3]\nloss: binary-cross-entropy\n",
            "with binary-cross-entropy the last layer gives one logit (1); it gives (3)"
        ),
        ("input: [1, 8, 8]\nlayers: [dense: 3]\n", "layer 0 (dense) gets (1, 8, 8): dense takes features (F); put a flatten before it"),
        ("input: four\nlayers: [dense: 3]\n", "input must be a list of sizes")
    ])
    func aMistakeIsNamed(text: String, message: String) {
        #expect { try ModelSpecFile.parse(text, name: "t", source: "t.yaml") } throws: { "\($0)".contains(message) }
    }

    /// The specs built into the binary are the files in models/, and each reads.
    /// A table's spec (an embedding's settings, a regression loss) written as YAML reads back the same.
    @Test func aTableSpecReadsBackFromItsYAML() throws {
        let text = """
            input: {categorical: 3, numeric: 2}
            layers:
              - embedding: {out: 8, buckets: 500, sparse: true}
              - dense: {out: 16, weight-norm: true}
              - relu
              - dense: 2
            loss: l1
            """
        let spec = try ModelSpecFile.parse(text, name: "t", source: "t.yaml")
        #expect(spec.table == ModelSpec.TableColumns(categorical: 3, numeric: 2) && spec.input.isEmpty && spec.loss == .l1)
        #expect(
            spec.layers[0].kind == .embedding && spec.layers[0].out == 8 && spec.layers[0].buckets == 500 && spec.layers[0].sparse == true)
        #expect(try spec.shapes().first == .features(3 * 8 + 2) && spec.classes() == 2)
        #expect(try ModelSpecFile.parse(ModelSpecFile.yaml(spec), name: "t", source: "again") == spec)
        let tokens = try ModelSpecFile.parse(
            "input: {tokens: 20, vocabulary: 300}\nlayers: [embedding: 16, {lstm: {out: 32, sequences: true, weight-norm: true}}, lstm: 8, dense: 4]\n",
            name: "s", source: "s.yaml")
        #expect(tokens.tokens == ModelSpec.TokenInput(steps: 20, vocabulary: 300) && tokens.layers[1].sequences == true)
        #expect(try tokens.shapes().last == .features(4))
        #expect(try ModelSpecFile.parse(ModelSpecFile.yaml(tokens), name: "s", source: "again") == tokens)
    }

    /// A concat's branches, block or flow style, read and written back; a concat inside a branch is
    /// refused before it is read.
    @Test func aConcatReadsBackFromItsYAML() throws {
        let text = """
            input: [3, 8, 8]
            layers:
              - concat:
                  - [conv2d: {out: 4, kernel: 3, padding: 1}, relu]
                  - []
                  - - conv2d: {out: 2, kernel: 1, weight-norm: true}
                    - batch-norm: {mean-only: true}
              - flatten
              - dense: 10
            """
        let spec = try ModelSpecFile.parse(text, name: "inception", source: "i.yaml")
        #expect(spec.layers[0].branches?.map(\.count) == [2, 0, 2] && spec.layers[0].branches?[2][1].meanOnly == true)
        #expect(try spec.shapes() == [.image(channels: 9, height: 8, width: 8), .features(576), .features(10)])
        #expect(try ModelSpecFile.parse(ModelSpecFile.yaml(spec), name: "inception", source: "again") == spec)
        #expect {
            try ModelSpecFile.parse("input: [4]\nlayers: [concat: [[concat: [[]]]]]\n", name: "n", source: "n.yaml")
        } throws: { "\($0)".contains("n.yaml: layer 0 (concat): branch 0: layer 0: a concat inside a branch is not taken") }
    }

    @Test func theShippedSpecsAreTheFilesInModels() throws {
        let models = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
            .appendingPathComponent("models")
        let files = try FileManager.default.contentsOfDirectory(atPath: models.path).filter { $0.hasSuffix(".yaml") }.sorted()
        #expect(files.map { String($0.dropLast(5)) }.sorted() == ShippedSpecs.text.keys.sorted())
        for file in files {
            let name = String(file.dropLast(5))
            #expect(
                try String(contentsOf: models.appendingPathComponent(file), encoding: .utf8) == ShippedSpecs.text[name]! + "\n", "\(file)")
            #expect(try ShippedSpecs.spec(name)?.name == name)
        }
    }
}
