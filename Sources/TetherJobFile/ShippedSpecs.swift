import TetherNN
import TetherTensor

/// The model specs shipped in the repository's models/ folder, also built into the binary so that an
/// installed `tether` has them wherever it runs (`tether models show mlp-wn`). A test checks that each
/// is its file's text.
public enum ShippedSpecs {
    public static let text: [String: String] = [
        "mlp": """
        # mlp: the baseline, a 784-256-256-10 ReLU MLP on 28x28 images (what --model mlp trains, bitwise).
        input: [784]
        layers:
          - dense: 256
          - relu
          - dense: 256
          - relu
          - dense: 10
        loss: cross-entropy
        """,
        "mlp-wn": """
        # mlp-wn: the MLP with weight normalization (Salimans & Kingma 2016), data-dependent init.
        input: [784]
        layers:
          - dense: {out: 256, weight-norm: true}
          - relu
          - dense: {out: 256, weight-norm: true}
          - relu
          - dense: {out: 10, weight-norm: true}
        loss: cross-entropy
        """,
        "cnn-wn": """
        # cnn-wn: a weight-normalized ConvNet, two 5x5 conv + pool stages and dense 256.
        # The ReLUs follow the pools (max and ReLU commute, their gradients too): a quarter of the values.
        input: [784]
        layers:
          - unflatten: [1, 28, 28]
          - conv2d: {out: 32, kernel: 5, padding: 2, weight-norm: true}
          - max-pool: 2
          - relu
          - conv2d: {out: 64, kernel: 5, padding: 2, weight-norm: true}
          - max-pool: 2
          - relu
          - flatten
          - dense: {out: 256, weight-norm: true}
          - relu
          - dense: {out: 10, weight-norm: true}
        loss: cross-entropy
        """
    ]

    /// The shipped spec `name`, parsed (nil for a name none has).
    public static func spec(_ name: String) throws -> ModelSpec? {
        try text[name].map { try ModelSpecFile.parse($0 + "\n", name: name, source: "models/\(name).yaml") }
    }

    /// The image family `name`'s network (mlp, mlp-wn or cnn-wn: its shipped spec fitted to images of
    /// height x width and `classes` classes) with parameters drawn from `rng`; nil for another name.
    public static func predictor<T: Scalar>(
        _ name: String, height: Int = 28, width: Int = 28, classes: Int = 10, rng: inout RNG, as: T.Type = T.self
    ) throws -> Predictor<T>? {
        try spec(name)?.forImages(height: height, width: width, classes: classes).predictor(kind: name, rng: &rng)
    }
}
