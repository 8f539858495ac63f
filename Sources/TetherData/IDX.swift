import CZlib
import Foundation

/// The IDX format of MNIST and Fashion-MNIST (LeCun et al.): a big-endian magic 0x0000TTDD (TT the
/// element type, 0x08 for unsigned bytes; DD the number of dimensions), DD big-endian UInt32 sizes,
/// then the elements. Files may be gzipped; zlib's gz reader reads both forms.
public struct IDXArray: Equatable, Sendable {
    public var dimensions: [Int]
    public var bytes: [UInt8]
    /// The first dimension the file's header gives: `dimensions[0]` unless only a prefix was read.
    public var recordsInFile: Int
    public init(dimensions: [Int], bytes: [UInt8], recordsInFile: Int? = nil) {
        (self.dimensions, self.bytes, self.recordsInFile) = (dimensions, bytes, recordsInFile ?? dimensions.first ?? 0)
    }
}

public enum IDX {
    /// Reads an unsigned-byte IDX file, gzipped or not, checking magic, dimensions and length. With a
    /// `limit`, only the first `limit` records (along the first dimension) are read and decompressed:
    /// a run on a few thousand samples of a large file does not inflate all of it (Fashion-MNIST's
    /// training images: 47 MB, about 0.3 s of a core at every process start), and the unread rest is
    /// not checked.
    public static func read(_ path: String, limit: Int? = nil) throws -> IDXArray {
        guard FileManager.default.fileExists(atPath: path) else { throw DataError.missingFile(path) }
        guard let limit else { return try parse(try gunzip(path), path: path) }
        // the header is at most 4 + 4 x 4 bytes; what follows it in those bytes is the records' start
        let first = try gunzip(path, upTo: 20)
        let (dims, headerBytes, elements) = try header(first, path: path)
        let records = min(max(limit, 0), dims[0]), record = dims[0] == 0 ? 0 : elements / dims[0]
        let wanted = headerBytes + records * record
        let contents = wanted <= first.count ? Array(first.prefix(wanted)) : try gunzip(path, upTo: wanted)
        guard contents.count >= wanted else { throw DataError.truncated(file: path, expected: wanted, found: contents.count) }
        return IDXArray(dimensions: [records] + dims.dropFirst(), bytes: Array(contents[headerBytes..<wanted]), recordsInFile: dims[0])
    }

    /// An IDX file's decompressed bytes, checked; `path` names it in errors.
    public static func parse(_ contents: [UInt8], path: String) throws -> IDXArray {
        let (dims, headerBytes, elements) = try header(contents, path: path)
        let expected = headerBytes + elements
        guard contents.count >= expected else { throw DataError.truncated(file: path, expected: expected, found: contents.count) }
        guard contents.count == expected else { throw DataError.trailingBytes(file: path, expected: expected, found: contents.count) }
        return IDXArray(dimensions: dims, bytes: Array(contents[headerBytes...]))
    }

    /// The sizes an IDX file's header gives, its length, and their product, checked (magic, element
    /// type, rank, a product that fits); `contents` is the file or its first bytes.
    static func header(_ contents: [UInt8], path: String) throws -> (dimensions: [Int], headerBytes: Int, elements: Int) {
        guard contents.count >= 4 else { throw DataError.truncated(file: path, expected: 4, found: contents.count) }
        let magic = bigEndianUInt32(contents, at: 0)
        let type = (magic >> 8) & 0xFF, rank = Int(magic & 0xFF)
        guard magic >> 16 == 0, type == 0x08, (1...4).contains(rank) else { throw DataError.badMagic(file: path, found: magic) }
        let headerBytes = 4 + 4 * rank
        guard contents.count >= headerBytes else { throw DataError.truncated(file: path, expected: headerBytes, found: contents.count) }
        let dims = (0..<rank).map { Int(bigEndianUInt32(contents, at: 4 + 4 * $0)) }
        // The product of the file's sizes is checked, never trusted: four sizes of 2^32 overflow.
        let elements = dims.reduce(Optional(1)) { p, d in
            p.flatMap {
                let (m, o) = $0.multipliedReportingOverflow(by: d); return o ? nil : m
            }
        }
        guard let elements, elements <= Int.max - headerBytes else {
            throw DataError.invalid(
                "\(path): the header's sizes \(dims.map(String.init).joined(separator: " x ")) are too large for any file")
        }
        return (dims, headerBytes, elements)
    }

    /// Decompressed files larger than this are refused (a gzip stream can expand a thousandfold).
    public static let maxBytes = 4 << 30

    static func bigEndianUInt32(_ b: [UInt8], at i: Int) -> UInt32 {
        UInt32(b[i]) << 24 | UInt32(b[i + 1]) << 16 | UInt32(b[i + 2]) << 8 | UInt32(b[i + 3])
    }

    /// The whole file, or its first `upTo` bytes, decompressed if gzipped; a damaged or cut gzip
    /// stream is an error naming the file.
    static func gunzip(_ path: String, upTo: Int = maxBytes + 1) throws -> [UInt8] {
        guard let f = gzopen(path, "rb") else { throw DataError.unreadable(file: path, reason: String(cString: strerror(errno))) }
        defer { gzclose(f) }
        var out: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 1 << 20)
        while out.count < upTo {
            let n = chunk.withUnsafeMutableBytes { gzread(f, $0.baseAddress, UInt32(min($0.count, upTo - out.count))) }
            if n < 0 {
                var code: Int32 = 0
                let message = String(cString: gzerror(f, &code))
                throw DataError.unreadable(file: path, reason: "gzip: \(message)")
            }
            if n == 0 { break }
            guard out.count + Int(n) <= maxBytes else {
                throw DataError.invalid("\(path): more than \(maxBytes >> 30) GiB once decompressed; not an IDX file this reader takes")
            }
            out.append(contentsOf: chunk[0..<Int(n)])
        }
        return out
    }
}

public enum DataError: Error, CustomStringConvertible, Equatable {
    case missingFile(String)
    case unreadable(file: String, reason: String)
    case badMagic(file: String, found: UInt32)
    case truncated(file: String, expected: Int, found: Int)
    case trailingBytes(file: String, expected: Int, found: Int)
    case mismatch(String)
    case unknownSource(String)
    /// Input that cannot be used, with a message naming the file, line and column.
    case invalid(String)

    public var description: String {
        switch self {
        case .missingFile(let f):
            var s = "\(f): no such file"
            if f.hasPrefix(FashionMNIST.defaultDirectory) {
                s += " (install Debian's dataset-fashion-mnist: apt-get install dataset-fashion-mnist)"
            }
            return s
        case .unreadable(let f, let r): return "\(f): cannot read: \(r)"
        case .badMagic(let f, let m):
            return String(format: "%@: not an unsigned-byte IDX file (magic 0x%08X, expected 0x000008DD with 1 to 4 dimensions)", f, m)
        case .truncated(let f, let e, let n): return "\(f): truncated: the header promises \(e) bytes, the file holds \(n)"
        case .trailingBytes(let f, let e, let n): return "\(f): \(n - e) unexpected bytes after the \(e) the header describes"
        case .mismatch(let s): return s
        case .unknownSource(let s): return s
        case .invalid(let s): return s
        }
    }
}
