import Foundation
import TetherTensor

/// Labelled grayscale images kept as bytes (N, H, W); batches are converted to [0, 1] floats on demand.
public struct ImageDataset: Sendable {
    public let pixels: [UInt8]
    public let labels: [Int32]
    public let height: Int, width: Int
    public let classes: Int
    public var count: Int { labels.count }
    public var features: Int { height * width }

    public init(pixels: [UInt8], labels: [Int32], height: Int, width: Int, classes: Int) {
        precondition(pixels.count == labels.count * height * width)
        (self.pixels, self.labels, self.height, self.width, self.classes) = (pixels, labels, height, width, classes)
    }

    /// Reads an images file (N, H, W) and a labels file (N), checking that they agree; with a `limit`,
    /// only their first `limit` samples (`IDX.read`).
    public init(imagesFile: String, labelsFile: String, classes: Int = 10, limit: Int? = nil) throws {
        let images = try IDX.read(imagesFile, limit: limit), labels = try IDX.read(labelsFile, limit: limit)
        guard images.dimensions.count == 3 else {
            throw DataError.mismatch("\(imagesFile): images must have 3 dimensions (N, H, W), found \(images.dimensions)")
        }
        guard labels.dimensions.count == 1 else {
            throw DataError.mismatch("\(labelsFile): labels must have 1 dimension (N), found \(labels.dimensions)")
        }
        guard images.recordsInFile == labels.recordsInFile else {
            throw DataError.mismatch(
                "\(imagesFile) holds \(images.recordsInFile) images but \(labelsFile) holds \(labels.recordsInFile) labels")
        }
        if let i = labels.bytes.firstIndex(where: { Int($0) >= classes }) {
            throw DataError.mismatch("\(labelsFile): label \(labels.bytes[i]) of sample \(i) is not in 0..<\(classes)")
        }
        self.init(
            pixels: images.bytes, labels: labels.bytes.map { Int32($0) },
            height: images.dimensions[1], width: images.dimensions[2], classes: classes)
    }

    /// The samples at `indices`, as a batch of (B, H*W) values in [0, 1].
    public func batch<T: Scalar>(_ indices: ArraySlice<Int>, as: T.Type = T.self) -> (inputs: Tensor<T>, labels: [Int32]) {
        let f = features
        let inputs = Tensor<T>.uninitialized([indices.count, f]) { out in
            pixels.withUnsafeBufferPointer { px in
                let start = indices.startIndex
                // rows across the compute threads (a batch's conversion is a serial pass otherwise)
                Compute.forEachRange(count: indices.count, grain: max(1, Compute.elementGrain / max(1, f))) { rows in
                    for row in rows {
                        T.convert(out + row * f, fromBytes: px.baseAddress! + indices[start + row] * f, scale: 1 / 255, count: f)
                    }
                }
            }
        }
        return (inputs, indices.map { labels[$0] })
    }
}

/// Fashion-MNIST (Xiao et al. 2017) as Debian's dataset-fashion-mnist installs it, or any folder of
/// files with the same names (MNIST's too).
public enum FashionMNIST {
    public static let defaultDirectory = "/usr/share/datasets/fashion-mnist"

    public enum Split: String, Sendable { case train, test }

    /// A split's samples, or its first `limit`.
    public static func load(directory: String = defaultDirectory, split: Split, limit: Int? = nil) throws -> ImageDataset {
        let stem = split == .train ? "train" : "t10k"
        func path(_ kind: String) -> String {
            let plain = "\(directory)/\(stem)-\(kind)"
            return FileManager.default.fileExists(atPath: plain) ? plain : plain + ".gz"
        }
        let files = [path("images-idx3-ubyte"), path("labels-idx1-ubyte")]
        // Outside Debian's folder (whose error says which package to install), a missing file names the
        // four an IDX folder holds and the files this one has.
        if directory != defaultDirectory, let missing = files.first(where: { !FileManager.default.fileExists(atPath: $0) }) {
            let names = ["train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"]
            let present = ((try? FileManager.default.contentsOfDirectory(atPath: directory)) ?? []).sorted()
            throw DataError.invalid(
                "\(missing): no such file. An IDX folder holds \(names.joined(separator: ", ")) (each may end in .gz); "
                    + (!FileManager.default.fileExists(atPath: directory)
                        ? "there is no folder \(directory)"
                        : present.isEmpty
                            ? "\(directory) holds no files"
                            : "\(directory) holds \(present.prefix(10).joined(separator: ", "))"
                                + (present.count > 10 ? " and \(present.count - 10) more" : "")))
        }
        return try ImageDataset(imagesFile: files[0], labelsFile: files[1], limit: limit)
    }
}
