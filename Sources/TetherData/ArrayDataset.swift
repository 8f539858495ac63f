import Foundation
import TetherTensor

/// Samples of any shape with what each should give, what a model spec trains on: images (C, H, W) or
/// feature vectors (F) as Float, in PyTorch's NCHW order. Read from NumPy arrays `x` and `y`
/// (`npz:FILE`): x (N, C, H, W), (N, H, W, C) (channels last when the last side is 1, 3 or 4 and the
/// second is not: it is reordered), (N, H, W) or (N, F); uint8 values are scaled to [0, 1] as
/// torchvision's ToTensor does, float ones taken as they are. y (N) or (N, K): its values are the
/// regression targets, and when they are whole numbers from 0 (y (N)), also the class labels.
public struct ArrayDataset: Sendable {
    /// (N, D) row-major, D = the product of `sampleShape`.
    public let values: [Float]
    /// (N): class labels; all 0 when y does not hold class indices (`classes` is then 0).
    public let labels: [Int32]
    /// (N, targetWidth): y's values as regression targets.
    public let targets: [Float]
    public let targetWidth: Int
    /// (C, H, W) or (F).
    public let sampleShape: [Int]
    /// 1 + the largest label; 0 when y does not hold class indices.
    public let classes: Int
    /// Whether y was given: samples to predict on may come without it (`needsTargets: false`).
    public private(set) var hasTargets = true
    public var count: Int { labels.count }
    public var features: Int { sampleShape.reduce(1, *) }

    public init(values: [Float], labels: [Int32], targets: [Float]? = nil, targetWidth: Int = 1, sampleShape: [Int], classes: Int) {
        precondition(targets == nil || targets!.count == labels.count * targetWidth)
        (self.values, self.labels, self.sampleShape, self.classes) = (values, labels, sampleShape, classes)
        (self.targets, self.targetWidth) = (targets ?? labels.map(Float.init), targets == nil ? 1 : targetWidth)
    }

    /// The arrays `x` and `y` of `npz:FILE` (an .npz file) or `npy:DIR` (DIR/x.npy and DIR/y.npy, as
    /// np.save writes them). Without `needsTargets`, y may be left out (samples to predict on): every
    /// label and target is then 0 and `hasTargets` false.
    public init(arrays source: String, needsTargets: Bool = true) throws {
        let path = String(source.dropFirst(4)), arrays: [String: NumPyArray]
        if source.hasPrefix("npy:") {
            arrays = try Dictionary(
                uniqueKeysWithValues: ["x", "y"].compactMap { name in
                    let file = URL(fileURLWithPath: path).appendingPathComponent("\(name).npy").path
                    guard let data = FileManager.default.contents(atPath: file) else {
                        if name == "y" && !needsTargets { return nil }
                        throw DataError.missingFile(file)
                    }
                    return (name, try NumPy.parseNPY([UInt8](data), source: file))
                })
        } else {
            guard source.hasPrefix("npz:") else { throw DataError.unknownSource("\(source): give npz:FILE or npy:DIR") }
            arrays = try NumPy.readNPZ(path)
        }
        guard let x = arrays["x"],
            let y = arrays["y"]
                ?? (needsTargets
                    ? nil : x.shape.first.map { NumPyArray(dtype: .uint8, shape: [$0], bytes: [UInt8](repeating: 0, count: $0)) })
        else {
            throw DataError.invalid(
                "\(path): samples are arrays x and y (it has \(arrays.keys.sorted().joined(separator: ", ")))")
        }
        guard (2...4).contains(x.shape.count), let n = x.shape.first, n > 0 else {
            throw DataError.invalid("\(path): x has shape \(x.shape); give (N, C, H, W), (N, H, W, C), (N, H, W) or (N, F)")
        }
        guard y.shape == [n] || (y.shape.count == 2 && y.shape[0] == n && (1...1 << 16).contains(y.shape[1])) else {
            throw DataError.invalid("\(path): y has shape \(y.shape); give (N) = (\(n)) labels or targets, or (N, K) targets")
        }
        let targets = y.floats()
        if let i = targets.firstIndex(where: { !$0.isFinite }) {
            throw DataError.invalid("\(path): y[\(i)] is \(targets[i]), not a number")
        }
        // class labels: y (N) of whole numbers from 0
        let raw = y.shape.count == 1 ? y.integers() : nil
        let labels = raw?.allSatisfy({ (0...Int64(1 << 24)).contains($0) }) == true ? raw!.map { Int32($0) } : nil
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
        self.init(
            values: values, labels: labels ?? [Int32](repeating: 0, count: n), targets: targets,
            targetWidth: y.shape.count == 2 ? y.shape[1] : 1,
            sampleShape: shape, classes: labels.map { Int($0.max() ?? 0) + 1 } ?? 0)
        hasTargets = arrays["y"] != nil
    }

    public func prefix(_ n: Int?) -> ArrayDataset {
        guard let n, n < count else { return self }
        var part = ArrayDataset(
            values: Array(values[0..<n * features]), labels: Array(labels[0..<n]), targets: Array(targets[0..<n * targetWidth]),
            targetWidth: targetWidth, sampleShape: sampleShape, classes: classes)
        part.hasTargets = hasTargets
        return part
    }

    /// The rows at `indices`, in order.
    public func rows(_ indices: [Int]) -> ArrayDataset {
        let (d, k) = (features, targetWidth)
        var part = ArrayDataset(
            values: indices.flatMap { values[$0 * d..<($0 + 1) * d] }, labels: indices.map { labels[$0] },
            targets: indices.flatMap { targets[$0 * k..<($0 + 1) * k] }, targetWidth: k, sampleShape: sampleShape, classes: classes)
        part.hasTargets = hasTargets
        return part
    }

    /// The targets of the rows at `indices`, (B, K).
    public func targets<T: Scalar>(_ indices: ArraySlice<Int>, as: T.Type = T.self) -> Tensor<T> {
        let k = targetWidth
        return Tensor<T>.uninitialized([indices.count, k]) { out in
            targets.withUnsafeBufferPointer { t in
                for (row, i) in indices.enumerated() { T.convert(out + row * k, fromFloats: t.baseAddress! + i * k, count: k) }
            }
        }
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
    /// The rank, each side, the classes and the targets' width, as UInt32.
    public func encodedShape() -> [UInt8] {
        var out: [UInt8] = []
        append([UInt32(sampleShape.count)] + sampleShape.map { UInt32($0) } + [UInt32(classes), UInt32(targetWidth)], to: &out)
        return out
    }

    /// Per row: its values (float32 bits), its targets (float32 bits), then its label.
    public func encodedRows(_ indices: [Int]) -> [UInt8] {
        var out: [UInt8] = []
        out.reserveCapacity(indices.count * (features + targetWidth + 1) * 4)
        for i in indices {
            append(values[i * features..<(i + 1) * features].map(\.bitPattern), to: &out)
            append(targets[i * targetWidth..<(i + 1) * targetWidth].map(\.bitPattern), to: &out)
            append([UInt32(bitPattern: labels[i])], to: &out)
        }
        return out
    }

    public init(shape: [UInt8], rows: [UInt8]) throws {
        var s = ByteReader(shape, "array shape")
        let rank = try s.read(UInt32.self, count: 1)[0]
        guard rank == 1 || rank == 3 else { throw DataError.mismatch("served arrays: a sample of rank \(rank) (1 or 3)") }
        let sides = try s.read(UInt32.self, count: Int(rank)).map(Int.init), classes = Int(try s.read(UInt32.self, count: 1)[0])
        let k = Int(try s.read(UInt32.self, count: 1)[0])
        try s.end()
        var d = 1
        for side in sides {
            guard side > 0, side <= 1 << 24, d * side <= 1 << 26 else { throw DataError.mismatch("served arrays: a sample of \(sides)") }
            d *= side
        }
        guard classes <= 1 << 24, (1...1 << 16).contains(k), rows.count % ((d + k + 1) * 4) == 0 else {
            throw DataError.mismatch("served arrays: \(rows.count) bytes are not whole rows of \(d) values, \(k) targets and a label")
        }
        var r = ByteReader(rows, "array rows")
        let n = rows.count / ((d + k + 1) * 4)
        var values: [Float] = [], targets: [Float] = [], labels: [Int32] = []
        values.reserveCapacity(n * d)
        for _ in 0..<n {
            values += try r.read(UInt32.self, count: d).map(Float.init(bitPattern:))
            targets += try r.read(UInt32.self, count: k).map(Float.init(bitPattern:))
            let label = Int32(bitPattern: try r.read(UInt32.self, count: 1)[0])
            guard (0..<Int32(max(classes, 1))).contains(label) else {
                throw DataError.mismatch("served arrays: label \(label) of \(classes) classes")
            }
            labels.append(label)
        }
        self.init(values: values, labels: labels, targets: targets, targetWidth: k, sampleShape: sides, classes: classes)
    }
}

/// What a model spec's workload reads: samples of a shape, each with a class label (when `classes` > 0)
/// and `targetWidth` regression targets.
public protocol LabelledSamples: ServableDataset {
    /// (C, H, W) or (F); a table's (F + M).
    var sampleShape: [Int] { get }
    /// A table's columns, when the samples are a table's rows.
    var tableColumns: (categorical: Int, numeric: Int)? { get }
    var labels: [Int32] { get }
    /// The classes its labels index (0: it has no class labels).
    var classes: Int { get }
    var targetWidth: Int { get }
    func batch<T: Scalar>(_ indices: ArraySlice<Int>, as: T.Type) -> (inputs: Tensor<T>, labels: [Int32])
    func targets<T: Scalar>(_ indices: ArraySlice<Int>, as: T.Type) -> Tensor<T>
}

extension LabelledSamples {
    public var tableColumns: (categorical: Int, numeric: Int)? { nil }
}

extension ArrayDataset: LabelledSamples {}
extension ImageDataset: LabelledSamples {
    public var sampleShape: [Int] { [1, height, width] }
    /// An image's class number as a value.
    public var targetWidth: Int { 1 }
    public func targets<T: Scalar>(_ indices: ArraySlice<Int>, as: T.Type) -> Tensor<T> {
        Tensor(shape: [indices.count, 1], scalars: indices.map { T(Double(labels[$0])) })
    }
}
