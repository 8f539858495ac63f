import Foundation
import TetherData

/// The `--data` argument: `fashion-mnist` (Debian's dataset-fashion-mnist) or `idx:DIR` (a folder with
/// the same four IDX files, gzipped or not).
public enum DataSource {
    public static let help = "fashion-mnist (Debian's dataset-fashion-mnist) or idx:DIR (a folder of MNIST-format IDX files)"

    public static func directory(for spec: String) throws -> String {
        if spec == "fashion-mnist" { return FashionMNIST.defaultDirectory }
        if spec.hasPrefix("idx:") && spec.count > 4 { return String(spec.dropFirst(4)) }
        throw DataError.unknownSource("unknown --data \"\(spec)\": use \(help)")
    }

    public static func load(_ spec: String, split: FashionMNIST.Split, limit: Int? = nil) throws -> ImageDataset {
        try FashionMNIST.load(directory: directory(for: spec), split: split).prefix(limit)
    }
}
