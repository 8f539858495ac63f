import TetherTensor

/// The image classifiers of Tether, by CLI name. Inputs are (B, 784) Fashion-MNIST images scaled to [0, 1].
public enum ImageModels {
    public static let names = ["mlp", "mlp-wn", "cnn-wn"]

    /// Builds `name` with its parameters drawn from `rng` (nil for an unknown name).
    public static func make<T: Scalar>(
        _ name: String, height: Int = 28, width: Int = 28, classes: Int = 10,
        rng: inout RNG, as: T.Type = T.self
    ) -> Predictor<T>? {
        var layout = ArenaLayout()
        let pixels = height * width
        let layers: [any Layer<T>]
        switch name {
        case "mlp", "mlp-wn":
            // 784-256-256-10 (the figure), ReLU, plain or weight-normalized
            let wn = name == "mlp-wn"
            layers = [
                Dense<T>(&layout, prefix: "layers.0.", inFeatures: pixels, outFeatures: 256, weightNorm: wn),
                Activation<T>.relu(),
                Dense<T>(&layout, prefix: "layers.2.", inFeatures: 256, outFeatures: 256, weightNorm: wn),
                Activation<T>.relu(),
                Dense<T>(&layout, prefix: "layers.4.", inFeatures: 256, outFeatures: classes, weightNorm: wn)
            ]
        case "cnn-wn":
            // conv5x5 32 -> ReLU -> pool -> conv5x5 64 -> ReLU -> pool -> dense 256 -> 10, padding 2, all
            // weight-normalized (PyTorch's layer numbers). ReLU runs after the pool, on a quarter of the
            // values: max and ReLU commute, and so do their gradients (a window whose max is not positive
            // passes none either way).
            let (h4, w4) = (height / 4, width / 4)
            layers = [
                LayoutSwap<T>(toConv: true, channels: 1, height: height, width: width),
                Conv2d<T>(&layout, prefix: "layers.1.", inChannels: 1, outChannels: 32, kernel: 5, padding: 2, weightNorm: true),
                MaxPool2d<T>(kernel: 2),
                Activation<T>.relu(),
                Conv2d<T>(&layout, prefix: "layers.4.", inChannels: 32, outChannels: 64, kernel: 5, padding: 2, weightNorm: true),
                MaxPool2d<T>(kernel: 2),
                Activation<T>.relu(),
                LayoutSwap<T>(toConv: false, channels: 64, height: h4, width: w4),
                Dense<T>(&layout, prefix: "layers.8.", inFeatures: 64 * h4 * w4, outFeatures: 256, weightNorm: true),
                Activation<T>.relu(),
                Dense<T>(&layout, prefix: "layers.10.", inFeatures: 256, outFeatures: classes, weightNorm: true)
            ]
        default:
            return nil
        }
        return Predictor(kind: name, layout: layout, network: Sequential(layers), rng: &rng)
    }
}
