import Foundation

/// A dataset a coordinator can serve to workers that hold no copy of it: its shape (everything but the
/// rows: image size, table columns, vocabulary) and any of its rows travel as bytes, little-endian, and
/// decoding checks that they fit together. Rows are fixed-size records one after another, so the
/// encodings of consecutive requests concatenate into the encoding of all their rows.
public protocol ServableDataset: Sendable {
    var count: Int { get }
    func encodedShape() -> [UInt8]
    /// The rows at `indices`, in that order.
    func encodedRows(_ indices: [Int]) -> [UInt8]
    /// The dataset of the rows `encodedRows` made, described by `encodedShape`'s bytes.
    init(shape: [UInt8], rows: [UInt8]) throws
}

/// Little-endian arrays of fixed-width values appended to and read from bytes.
struct ByteReader {
    let bytes: [UInt8]
    var position = 0
    let what: String
    init(_ bytes: [UInt8], _ what: String) { (self.bytes, self.what) = (bytes, what) }

    mutating func read<T: FixedWidthInteger>(_: T.Type, count: Int) throws -> [T] {
        let size = count * MemoryLayout<T>.size
        guard count >= 0, position + size <= bytes.count else {
            throw DataError.mismatch(
                "served \(what): \(bytes.count - position) bytes left where \(count) values of \(MemoryLayout<T>.size) bytes were expected")
        }
        defer { position += size }
        return bytes[position..<position + size].withUnsafeBytes { raw in
            (0..<count).map { T(littleEndian: raw.loadUnaligned(fromByteOffset: $0 * MemoryLayout<T>.size, as: T.self)) }
        }
    }

    func end() throws {
        guard position == bytes.count else {
            throw DataError.mismatch("served \(what): \(bytes.count - position) bytes more than its rows hold")
        }
    }
}

func append<T: FixedWidthInteger>(_ values: some Sequence<T>, to bytes: inout [UInt8]) {
    for v in values { withUnsafeBytes(of: v.littleEndian) { bytes += $0 } }
}

extension ImageDataset: ServableDataset {
    /// height, width, classes as three UInt32.
    public func encodedShape() -> [UInt8] {
        var out: [UInt8] = []
        append([UInt32(height), UInt32(width), UInt32(classes)], to: &out)
        return out
    }

    /// Per row: its pixels, then its label byte.
    public func encodedRows(_ indices: [Int]) -> [UInt8] {
        var out: [UInt8] = []
        out.reserveCapacity(indices.count * (features + 1))
        pixels.withUnsafeBufferPointer { px in
            for i in indices {
                out += px[i * features..<(i + 1) * features]
                out.append(UInt8(labels[i]))
            }
        }
        return out
    }

    public init(shape: [UInt8], rows: [UInt8]) throws {
        var s = ByteReader(shape, "image shape")
        let dims = try s.read(UInt32.self, count: 3)
        try s.end()
        let (h, w, k) = (Int(dims[0]), Int(dims[1]), Int(dims[2]))
        // each side at most 65,536 and an image at most 2^24 pixels: the products below cannot overflow
        guard (1...65_536).contains(h), (1...65_536).contains(w), h * w <= 1 << 24 else {
            throw DataError.mismatch("served images: a shape of \(dims[0])x\(dims[1]) pixels (each side 1...65536, at most 2^24 pixels)")
        }
        guard k > 0, k <= 256, rows.count % (h * w + 1) == 0 else {
            throw DataError.mismatch("served images: \(rows.count) bytes are not whole rows of \(h)x\(w) pixels and a label")
        }
        let f = h * w, n = rows.count / (f + 1)
        var pixels = [UInt8](), labels = [Int32]()
        pixels.reserveCapacity(n * f)
        labels.reserveCapacity(n)
        for r in 0..<n {
            pixels += rows[r * (f + 1)..<r * (f + 1) + f]
            labels.append(Int32(rows[r * (f + 1) + f]))
        }
        if let bad = labels.first(where: { $0 >= k }) { throw DataError.mismatch("served images: label \(bad) is not in 0..<\(k)") }
        self.init(pixels: pixels, labels: labels, height: h, width: w, classes: k)
    }
}

extension TabularDataset: ServableDataset {
    private struct Shape: Codable {
        var categoricalNames: [String], numericNames: [String], crosses: [[Int]]
        var target: Bool?
    }

    /// The column names and crosses, as JSON.
    public func encodedShape() -> [UInt8] {
        [UInt8](
            try! JSONEncoder().encode(
                Shape(categoricalNames: categoricalNames, numericNames: numericNames, crosses: crosses, target: target != nil)))
    }

    /// Per row: F UInt64 hashes, M Float numbers (bit patterns), the target (its bit pattern) if there is
    /// one, an Int32 label.
    public func encodedRows(_ indices: [Int]) -> [UInt8] {
        let f = fields, m = numericNames.count
        var out: [UInt8] = []
        out.reserveCapacity(indices.count * (8 * f + 4 * m + 8))
        for i in indices {
            append(categorical[i * f..<(i + 1) * f], to: &out)
            append(numeric[i * m..<(i + 1) * m].map(\.bitPattern), to: &out)
            if let target { append([target[i].bitPattern], to: &out) }
            append([labels[i]], to: &out)
        }
        return out
    }

    public init(shape: [UInt8], rows: [UInt8]) throws {
        let s: Shape
        do { s = try JSONDecoder().decode(Shape.self, from: Data(shape)) } catch {
            throw DataError.mismatch("served table shape: \(error)")
        }
        let f = s.categoricalNames.count, m = s.numericNames.count, t = s.target == true ? 1 : 0, perRow = 8 * f + 4 * m + 4 * t + 4
        guard rows.count % perRow == 0, s.crosses.allSatisfy({ $0.allSatisfy { (0..<f).contains($0) } }) else {
            throw DataError.mismatch(
                "served table: \(rows.count) bytes are not whole rows of \(f) categorical and \(m) numeric values and a label")
        }
        let n = rows.count / perRow
        var r = ByteReader(rows, "table rows")
        var c = [UInt64](), x = [Float](), y = [Int32](), target = [Float]()
        for _ in 0..<n {
            c += try r.read(UInt64.self, count: f)
            x += try r.read(UInt32.self, count: m).map(Float.init(bitPattern:))
            target += try r.read(UInt32.self, count: t).map(Float.init(bitPattern:))
            y += try r.read(Int32.self, count: 1)
        }
        try r.end()
        guard y.allSatisfy({ $0 == 0 || $0 == 1 }) else { throw DataError.mismatch("served table: labels must be 0 or 1") }
        self.init(
            categoricalNames: s.categoricalNames, numericNames: s.numericNames, crosses: s.crosses, categorical: c, numeric: x, labels: y,
            target: t == 1 ? target : nil)
    }
}

/// A text split as token ids of a vocabulary: what a language model's coordinator serves (rows are
/// token positions).
public struct TokenSequence: ServableDataset {
    public let vocabulary: Vocabulary
    public let tokens: [Int32]
    public var count: Int { tokens.count }
    public init(vocabulary: Vocabulary, tokens: [Int32]) { (self.vocabulary, self.tokens) = (vocabulary, tokens) }

    /// The vocabulary, as JSON.
    public func encodedShape() -> [UInt8] { [UInt8](try! JSONEncoder().encode(vocabulary)) }

    public func encodedRows(_ indices: [Int]) -> [UInt8] {
        var out: [UInt8] = []
        out.reserveCapacity(indices.count * 4)
        append(indices.map { tokens[$0] }, to: &out)
        return out
    }

    public init(shape: [UInt8], rows: [UInt8]) throws {
        do { vocabulary = try JSONDecoder().decode(Vocabulary.self, from: Data(shape)) } catch {
            throw DataError.mismatch("served vocabulary: \(error)")
        }
        guard rows.count % 4 == 0 else { throw DataError.mismatch("served tokens: \(rows.count) bytes are not whole 4-byte ids") }
        var r = ByteReader(rows, "tokens")
        tokens = try r.read(Int32.self, count: rows.count / 4)
        let size = vocabulary.count
        if let bad = tokens.first(where: { $0 < 0 || Int($0) >= size }) {
            throw DataError.mismatch("served tokens: id \(bad) is not in a vocabulary of \(size)")
        }
    }
}
