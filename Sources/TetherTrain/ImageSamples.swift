import TetherData
import TetherTensor

/// A split's size and image shape.
public struct ImageShape: Sendable, Equatable {
    public var count: Int, height: Int, width: Int, classes: Int
    public init(count: Int, height: Int, width: Int, classes: Int) { (self.count, self.height, self.width, self.classes) = (count, height, width, classes) }
}

/// Where image workloads get samples when they do not read files: a cluster worker whose coordinator
/// serves the rows it asks for (`tether coordinator --serve-data`), so it needs no copy of the dataset.
public protocol ImageSource: AnyObject {
    func shape(_ split: FashionMNIST.Split) throws -> ImageShape
    /// The split's samples at `indices`, in that order.
    func rows(_ split: FashionMNIST.Split, _ indices: [Int]) throws -> ImageDataset
}

/// A split as a workload reads it: every sample in memory (read from files), or only the samples the
/// shard needs for one epoch (or the evaluation), fetched from a source and found by their index.
final class ImageSamples {
    let split: FashionMNIST.Split
    let shape: ImageShape
    private let source: ImageSource?
    private var dataset: ImageDataset
    /// Served: the row of `dataset` holding each fetched sample, and which set is fetched.
    private var row: [Int: Int] = [:]
    private var fetched: Int?

    var count: Int { shape.count }

    init(files dataset: ImageDataset, split: FashionMNIST.Split) {
        (self.split, self.dataset, source) = (split, dataset, nil)
        shape = ImageShape(count: dataset.count, height: dataset.height, width: dataset.width, classes: dataset.classes)
    }

    init(source: ImageSource, split: FashionMNIST.Split) throws {
        (self.split, self.source) = (split, source)
        shape = try source.shape(split)
        dataset = ImageDataset(pixels: [], labels: [], height: shape.height, width: shape.width, classes: shape.classes)
    }

    /// Served: fetches `indices()` as the set `key` (an epoch, or -1 for the evaluation) unless that set
    /// is already here, dropping the previous one. Files: nothing to do.
    func fetch(_ key: Int, _ indices: () -> [Int]) throws {
        guard let source, fetched != key else { return }
        let wanted = indices()
        (dataset, row, fetched) = (ImageDataset(pixels: [], labels: [], height: shape.height, width: shape.width, classes: shape.classes), [:], nil)
        dataset = try source.rows(split, wanted)
        row = Dictionary(uniqueKeysWithValues: wanted.enumerated().map { ($1, $0) })
        fetched = key
    }

    /// The samples at `indices` of the split, as a batch of (B, H*W) values in [0, 1].
    func batch(_ indices: ArraySlice<Int>) -> (inputs: Tensor<Float>, labels: [Int32]) {
        guard source != nil else { return dataset.batch(indices, as: Float.self) }
        return dataset.batch(ArraySlice(indices.map { i in
            guard let r = row[i] else { preconditionFailure("\(split) sample \(i) was not fetched (fetch the epoch before its steps)") }
            return r
        }), as: Float.self)
    }
}
