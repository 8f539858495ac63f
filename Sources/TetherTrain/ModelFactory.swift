import TetherData
import TetherNN
import TetherTensor

/// Builds the model a config names, for the data it will see. Initial parameters come from the seed's
/// "INIT" stream, so every process that builds it gets the same weights.
public enum ModelFactory {
    public static var names: [String] { ImageModels.names }

    public static func make(_ name: String, for data: ImageDataset, seed: UInt64) throws -> Classifier<Float> {
        var rng = RNG(seed: seed, stream: 0x494E_4954) // "INIT"
        guard let m = ImageModels.make(name, height: data.height, width: data.width, classes: data.classes, rng: &rng, as: Float.self) else {
            throw ConfigError(message: "unknown --model \"\(name)\": choose one of \(names.joined(separator: ", "))")
        }
        m.context.rng = RNG(seed: seed, stream: 0x4452_4F50) // "DROP": dropout masks
        return m
    }
}
