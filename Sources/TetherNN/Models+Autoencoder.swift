import TetherTensor

/// `autoencoder-tied`: 784 -> 256 -> 64 with ReLU, decoded by the transposes of the same two weights
/// (64 -> 256 -> 784, each with its own bias), sigmoid outputs, mean squared error per pixel.
/// Two arena entries serve four layers.
public final class TiedAutoencoder<T: Scalar>: Model {
    public let kind = "autoencoder-tied"
    public let arena: ParameterArena<T>
    public let context: ModelContext<T>
    public let network: Sequential<T>
    let loss = SigmoidSquaredError<T>()

    public init(features: Int = 784, hidden: [Int] = [256, 64], rng: inout RNG) {
        var layout = ArenaLayout()
        var encoder: [Dense<T>] = [], layers: [any Layer<T>] = []
        var width = features
        for (i, h) in hidden.enumerated() {
            let d = Dense<T>(&layout, prefix: "encoder.\(2 * i).", inFeatures: width, outFeatures: h)
            encoder.append(d)
            layers += [d, Activation<T>.relu()]
            width = h
        }
        for (i, d) in encoder.reversed().enumerated() {
            layers.append(
                TransposedDense<T>(
                    &layout, prefix: "decoder.\(2 * i).", transposing: d.weightSlot!, encoderIn: d.inFeatures, encoderOut: d.outFeatures))
            if i < encoder.count - 1 { layers.append(Activation<T>.relu()) }
        }
        network = Sequential(layers)
        arena = ParameterArena(layout: layout)
        arena.initialize(rng: &rng)
        context = ModelContext(arena: arena, rng: rng)
    }

    /// Accumulates `scale` x the gradient of the summed per-image losses; `lossSum` is that sum.
    public func accumulateGradients(_ images: Tensor<T>, scale: T) -> BatchStats {
        context.training = true
        let lossSum = loss.forward(logits: network.forward(images, context), targets: images)
        network.backward(loss.backward(scale: scale), context, gradientsReady: context.gradientsReady)
        return BatchStats(lossSum: lossSum, count: images.shape[0])
    }

    /// The images as the network gives them back: the sigmoid of its outputs, (B, features).
    public func reconstructions(_ images: Tensor<T>) -> Tensor<T> {
        context.training = false
        defer { context.training = true }
        let logits = network.forward(images, context)
        return Tensor.uninitialized(logits.shape) { y in logits.withPointer { T.sigmoidForward(y, $0, count: logits.count) } }
    }

    public func evaluate(_ images: Tensor<T>) -> BatchStats {
        context.training = false
        defer { context.training = true }
        return BatchStats(lossSum: loss.forward(logits: network.forward(images, context), targets: images), count: images.shape[0])
    }
}
