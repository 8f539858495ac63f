import Foundation
import TetherTensor

/// Samples of any shape with an integer class each, what a model spec trains on: images (C, H, W) or
/// feature vectors (F) as Float, in PyTorch's NCHW order. Read from NumPy arrays `x` and `y`
/// (`npz:FILE`): x (N, C, H, W), (N, H, W, C) (channels last when the last side is 1, 3 or 4 and the
/// second is not: it is reordered), (N, H, W) or (N, F); uint8 values are scaled to [0, 1] as
/// torchvision's ToTensor does, float ones taken as they are; y (N) whole numbers from 0.
public struct ArrayDataset: Sendable {
    /// (N, D) row-major, D = the product of `sampleShape`.
    public let values: [Float]
    public let labels: [Int32]
    /// (C, H, W) or (F).
    public let sampleShape: [Int]
    /// 1 + the largest label.
    public let classes: Int
    public var count: Int { labels.count }
    public var features: Int { sampleShape.reduce(1, *) }

    public init(values: [Float], labels: [Int32], sampleShape: [Int], classes: Int) {
        (self.values, self.labels, self.sampleShape, self.classes) = (values, labels, sampleShape, classes)
    }

    /// The arrays `x` and `y` of an .npz file.
    public init(npz path: String) throws {
        let arrays = try NumPy.readNPZ(path)
        guard let x = arrays["x"], let y = arrays["y"] else {
            throw DataError.invalid(
                "\(path): an .npz of samples holds arrays x and y (it has \(arrays.keys.sorted().joined(separator: ", ")))")
        }
        guard (2...4).contains(x.shape.count), let n = x.shape.first, n > 0 else {
            throw DataError.invalid("\(path): x has shape \(x.shape); give (N, C, H, W), (N, H, W, C), (N, H, W) or (N, F)")
        }
        guard y.shape == [n], let raw = y.integers() else {
            throw DataError.invalid("\(path): y has shape \(y.shape) and dtype \(y.dtype.rawValue); give (N) = (\(n)) whole numbers")
        }
        if let (i, bad) = raw.enumerated().first(where: { $0.element < 0 || $0.element > Int64(Int32.max) }) {
            throw DataError.invalid("\(path): label \(bad) of sample \(i) is not a class index (0 or more)")
        }
        var values = x.floats()
        if x.dtype == .uint8 { for i in values.indices { values[i] /= 255 } }
        var shape = Array(x.shape.dropFirst())
        if shape.count == 3, [1, 3, 4].contains(shape[2]), ![1, 3, 4].contains(shape[0]) {
            // (N, H, W, C) -> (N, C, H, W)
            let (h, w, c) = (shape[0], shape[1], shape[2]), d = h * w * c
            var reordered = [Float](repeating: 0, count: values.count)
            for s in 0..<n { for p in 0..<h * w { for ch in 0..<c { reordered[s * d + ch * h * w + p] = values[s * d + p * c + ch] } } }
            (values, shape) = (reordered, [c, h, w])
        } else if shape.count == 2 {
            shape = [1] + shape  // (H, W): one channel
        }
        let labels = raw.map { Int32($0) }
        self.init(values: values, labels: labels, sampleShape: shape, classes: Int(labels.max() ?? 0) + 1)
    }

    public func prefix(_ n: Int?) -> ArrayDataset {
        guard let n, n < count else { return self }
        return ArrayDataset(
            values: Array(values[0..<n * features]), labels: Array(labels[0..<n]), sampleShape: sampleShape, classes: classes)
    }

    /// The rows at `indices`, as a batch (B, D).
    public func batch<T: Scalar>(_ indices: ArraySlice<Int>, as: T.Type = T.self) -> (inputs: Tensor<T>, labels: [Int32]) {
        let d = features
        let inputs = Tensor<T>.uninitialized([indices.count, d]) { out in
            values.withUnsafeBufferPointer { v in
                for (row, i) in indices.enumerated() { T.convert(out + row * d, fromFloats: v.baseAddress! + i * d, count: d) }
            }
        }
        return (inputs, indices.map { labels[$0] })
    }
}

extension ArrayDataset: ServableDataset {
    /// The rank, each side and the classes, as UInt32.
    public func encodedShape() -> [UInt8] {
        var out: [UInt8] = []
        append([UInt32(sampleShape.count)] + sampleShape.map { UInt32($0) } + [UInt32(classes)], to: &out)
        return out
    }

    /// Per row: its values (float32 bits), then its label.
    public func encodedRows(_ indices: [Int]) -> [UInt8] {
        var out: [UInt8] = []
        out.reserveCapacity(indices.count * (features + 1) * 4)
        for i in indices {
            append(values[i * features..<(i + 1) * features].map(\.bitPattern), to: &out)
            append([UInt32(bitPattern: labels[i])], to: &out)
        }
        return out
    }

    public init(shape: [UInt8], rows: [UInt8]) throws {
        var s = ByteReader(shape, "array shape")
        let rank = try s.read(UInt32.self, count: 1)[0]
        guard rank == 1 || rank == 3 else { throw DataError.mismatch("served arrays: a sample of rank \(rank) (1 or 3)") }
        let sides = try s.read(UInt32.self, count: Int(rank)).map(Int.init), classes = Int(try s.read(UInt32.self, count: 1)[0])
        try s.end()
        var d = 1
        for side in sides {
            guard side > 0, side <= 1 << 24, d * side <= 1 << 26 else { throw DataError.mismatch("served arrays: a sample of \(sides)") }
            d *= side
        }
        guard classes > 0, classes <= 1 << 24, rows.count % ((d + 1) * 4) == 0 else {
            throw DataError.mismatch("served arrays: \(rows.count) bytes are not whole rows of \(d) values and a label")
        }
        var r = ByteReader(rows, "array rows")
        let n = rows.count / ((d + 1) * 4)
        var values: [Float] = [], labels: [Int32] = []
        values.reserveCapacity(n * d)
        for _ in 0..<n {
            values += try r.read(UInt32.self, count: d).map(Float.init(bitPattern:))
            let label = Int32(bitPattern: try r.read(UInt32.self, count: 1)[0])
            guard (0..<Int32(classes)).contains(label) else {
                throw DataError.mismatch("served arrays: label \(label) of \(classes) classes")
            }
            labels.append(label)
        }
        self.init(values: values, labels: labels, sampleShape: sides, classes: classes)
    }
}

/// What a model spec's workload reads: samples of a shape, with a class each.
public protocol LabelledSamples: ServableDataset {
    /// (C, H, W) or (F).
    var sampleShape: [Int] { get }
    var labels: [Int32] { get }
    func batch<T: Scalar>(_ indices: ArraySlice<Int>, as: T.Type) -> (inputs: Tensor<T>, labels: [Int32])
}

extension ArrayDataset: LabelledSamples {}
extension ImageDataset: LabelledSamples {
    public var sampleShape: [Int] { [1, height, width] }
}
