import CZlib
import Foundation

/// NumPy's array files: `.npy` (a magic, a version, a header dict naming dtype, order and shape, then
/// the elements) and `.npz` (a zip of `.npy` files, stored or deflated, as `numpy.savez` and
/// `savez_compressed` write them). Every number in a file is range-checked before it sizes anything:
/// dimensions multiply in overflow-checked arithmetic, and the elements must be exactly the bytes left.
public struct NumPyArray: Sendable, Equatable {
    public enum DType: String, Sendable { case float32 = "<f4", float64 = "<f8", uint8 = "|u1", int64 = "<i8", int32 = "<i4" }
    public var dtype: DType
    public var shape: [Int]
    /// Little-endian elements, C order.
    public var bytes: [UInt8]
    public var count: Int { shape.reduce(1, *) }

    public init(dtype: DType, shape: [Int], bytes: [UInt8]) { (self.dtype, self.shape, self.bytes) = (dtype, shape, bytes) }

    /// The elements as Float (uint8 as they are: 0...255).
    public func floats() -> [Float] {
        bytes.withUnsafeBytes { raw in
            switch dtype {
            case .float32:
                (0..<count).map { Float(bitPattern: UInt32(littleEndian: raw.loadUnaligned(fromByteOffset: 4 * $0, as: UInt32.self))) }
            case .float64:
                (0..<count).map {
                    Float(Double(bitPattern: UInt64(littleEndian: raw.loadUnaligned(fromByteOffset: 8 * $0, as: UInt64.self))))
                }
            case .uint8: (0..<count).map { Float(raw[$0]) }
            case .int64: (0..<count).map { Float(Int64(littleEndian: raw.loadUnaligned(fromByteOffset: 8 * $0, as: Int64.self))) }
            case .int32: (0..<count).map { Float(Int32(littleEndian: raw.loadUnaligned(fromByteOffset: 4 * $0, as: Int32.self))) }
            }
        }
    }

    /// Whole numbers as Int64 (nil for a float dtype).
    public func integers() -> [Int64]? {
        bytes.withUnsafeBytes { raw in
            switch dtype {
            case .uint8: (0..<count).map { Int64(raw[$0]) }
            case .int64: (0..<count).map { Int64(littleEndian: raw.loadUnaligned(fromByteOffset: 8 * $0, as: Int64.self)) }
            case .int32: (0..<count).map { Int64(Int32(littleEndian: raw.loadUnaligned(fromByteOffset: 4 * $0, as: Int32.self))) }
            case .float32, .float64: nil
            }
        }
    }
}

public enum NumPy {
    /// The most bytes an array (or a file's entry, once inflated) may hold.
    public static let maxBytes = 4 << 30

    /// Parses one `.npy` file's bytes; `source` names it in errors.
    public static func parseNPY(_ b: [UInt8], source: String) throws -> NumPyArray {
        func fail(_ why: String) -> DataError { DataError.invalid("\(source): \(why)") }
        guard b.count >= 10, b[0] == 0x93, Array(b[1..<6]) == Array("NUMPY".utf8) else {
            throw fail("not a .npy array (no \\x93NUMPY magic)")
        }
        let major = b[6]
        let (lengthBytes, start) = major == 1 ? (2, 10) : (4, 12)  // magic 6, version 2, then the header length
        guard major >= 1, major <= 3, b.count >= start else { throw fail("npy version \(major) is not one NumPy writes") }
        var headerLength = 0
        for i in 0..<lengthBytes { headerLength |= Int(b[8 + i]) << (8 * i) }
        guard headerLength <= 1 << 20, start + headerLength <= b.count else {
            throw fail("a header of \(headerLength) bytes in \(b.count)")
        }
        let header = String(decoding: b[start..<start + headerLength], as: UTF8.self)
        func value(_ key: String) -> Substring? {
            guard let k = header.range(of: "'\(key)':") else { return nil }
            return header[k.upperBound...].drop { $0 == " " }
        }
        guard let d = value("descr"), d.first == "'", let end = d.dropFirst().firstIndex(of: "'") else {
            throw fail("no dtype in \(header)")
        }
        let descr = String(d[d.index(after: d.startIndex)..<end])
        guard let dtype = NumPyArray.DType(rawValue: descr == "<u1" ? "|u1" : descr) else {
            throw fail("dtype \(descr) is not float32, float64, uint8, int32 or int64 (little-endian)")
        }
        guard let o = value("fortran_order"), o.hasPrefix("False") else { throw fail("Fortran-order arrays are not read; save C order") }
        guard let s = value("shape"), s.first == "(", let close = s.firstIndex(of: ")") else { throw fail("no shape in \(header)") }
        let dims = s[s.index(after: s.startIndex)..<close].split(separator: ",").map { $0.trimmingCharacters(in: .whitespaces) }
            .filter { !$0.isEmpty }
        var shape: [Int] = []
        var total = 1
        for text in dims {
            guard let n = Int(text), n >= 0 else { throw fail("shape entry \(text) is not a size") }
            let (p, overflow) = total.multipliedReportingOverflow(by: n)
            guard !overflow, p <= maxBytes else { throw fail("a shape of \(dims.joined(separator: " x ")) is more than this reader takes") }
            (shape, total) = (shape + [n], p)
        }
        let width: Int =
            switch dtype {
            case .uint8: 1
            case .float32, .int32: 4
            case .float64, .int64: 8
            }
        let bytes = total * width, at = start + headerLength
        guard b.count - at == bytes else {
            throw fail("shape \(shape) of \(descr) needs \(bytes) bytes of data, the file has \(b.count - at)")
        }
        return NumPyArray(dtype: dtype, shape: shape, bytes: Array(b[at...]))
    }

    /// The arrays of an `.npz` file by name (the entry's name without `.npy`).
    public static func readNPZ(_ path: String) throws -> [String: NumPyArray] {
        guard let data = FileManager.default.contents(atPath: path) else { throw DataError.missingFile(path) }
        let b = [UInt8](data)
        func fail(_ why: String) -> DataError { DataError.invalid("\(path): \(why)") }
        func u16(_ i: Int) -> Int { Int(b[i]) | Int(b[i + 1]) << 8 }
        func u32(_ i: Int) -> Int { u16(i) | u16(i + 2) << 16 }
        // the end of central directory record: its signature within the last 64 KiB + 22 bytes
        guard b.count >= 22,
            let eocd = stride(from: b.count - 22, through: max(0, b.count - 22 - 65_535), by: -1).first(where: {
                b[$0] == 0x50 && b[$0 + 1] == 0x4b && b[$0 + 2] == 5 && b[$0 + 3] == 6
            })
        else { throw fail("not an .npz file (no zip directory)") }
        let entries = u16(eocd + 10)
        var at = u32(eocd + 16)
        var arrays: [String: NumPyArray] = [:]
        for _ in 0..<entries {
            guard at + 46 <= b.count, u32(at) == 0x0201_4b50 else { throw fail("a damaged zip directory") }
            let method = u16(at + 10), compressed = u32(at + 20), size = u32(at + 24)
            let nameLength = u16(at + 28), extra = u16(at + 30), comment = u16(at + 32), local = u32(at + 42)
            guard at + 46 + nameLength <= b.count else { throw fail("a damaged zip directory") }
            let name = String(decoding: b[at + 46..<at + 46 + nameLength], as: UTF8.self)
            at += 46 + nameLength + extra + comment
            guard compressed != 0xFFFF_FFFF, size != 0xFFFF_FFFF else { throw fail("\(name): zip64 entries are not read") }
            guard local + 30 <= b.count, u32(local) == 0x0403_4b50 else { throw fail("\(name): a damaged zip entry") }
            let dataStart = local + 30 + u16(local + 26) + u16(local + 28)
            guard dataStart + compressed <= b.count, size <= maxBytes else { throw fail("\(name): cut short or too large") }
            let stored = Array(b[dataStart..<dataStart + compressed])
            let contents: [UInt8]
            switch method {
            case 0: contents = stored
            case 8: contents = try inflate(stored, size: size, what: "\(path): \(name)")
            default: throw fail("\(name): zip method \(method) is not stored or deflated")
            }
            let key = name.hasSuffix(".npy") ? String(name.dropLast(4)) : name
            arrays[key] = try parseNPY(contents, source: "\(path): \(name)")
        }
        return arrays
    }

    /// Raw deflate data inflated to exactly `size` bytes.
    static func inflate(_ input: [UInt8], size: Int, what: String) throws -> [UInt8] {
        var out = [UInt8](repeating: 0, count: size)
        var stream = z_stream()
        guard inflateInit2_(&stream, -15, ZLIB_VERSION, Int32(MemoryLayout<z_stream>.size)) == Z_OK else {
            throw DataError.invalid("\(what): zlib cannot start")
        }
        defer { inflateEnd(&stream) }
        var input = input
        let status = input.withUnsafeMutableBufferPointer { i in
            out.withUnsafeMutableBufferPointer { o in
                stream.next_in = i.baseAddress
                stream.avail_in = UInt32(i.count)
                stream.next_out = o.baseAddress
                stream.avail_out = UInt32(o.count)
                return CZlib.inflate(&stream, Z_FINISH)
            }
        }
        guard status == Z_STREAM_END, stream.total_out == size else {
            throw DataError.invalid("\(what): the deflated data is damaged (zlib status \(status))")
        }
        return out
    }
}

extension NumPy {
    /// An array as a version 1.0 `.npy` file (C order, the header padded to 64 bytes as NumPy pads it).
    public static func npy(_ a: NumPyArray) -> [UInt8] {
        let shape = a.shape.count == 1 ? "(\(a.shape[0]),)" : "(" + a.shape.map(String.init).joined(separator: ", ") + ")"
        var header = "{'descr': '\(a.dtype.rawValue)', 'fortran_order': False, 'shape': \(shape), }"
        while (10 + header.utf8.count + 1) % 64 != 0 { header += " " }
        header += "\n"
        let length = header.utf8.count
        return [0x93] + Array("NUMPY".utf8) + [1, 0, UInt8(length & 0xFF), UInt8(length >> 8)] + Array(header.utf8) + a.bytes
    }

    /// Arrays as an `.npz` file, stored (`numpy.savez`'s layout: one `NAME.npy` entry each).
    public static func npz(_ arrays: [(name: String, array: NumPyArray)]) -> [UInt8] {
        func u16(_ v: Int) -> [UInt8] { [UInt8(v & 0xFF), UInt8(v >> 8 & 0xFF)] }
        func u32(_ v: Int) -> [UInt8] { u16(v & 0xFFFF) + u16(v >> 16 & 0xFFFF) }
        var out: [UInt8] = [], directory: [UInt8] = []
        for (name, array) in arrays {
            let file = npy(array), entry = Array((name + ".npy").utf8), at = out.count
            let crc = Int(file.withUnsafeBufferPointer { crc32(0, $0.baseAddress, UInt32($0.count)) })
            let common =
                u16(20) + u16(0) + u16(0) + u16(0) + u16(0x21) + u32(crc) + u32(file.count) + u32(file.count) + u16(entry.count) + u16(0)
            out += u32(0x0403_4b50) + common + entry + file
            directory += u32(0x0201_4b50) + u16(20) + common + u16(0) + u16(0) + u16(0) + u32(0) + u32(at) + entry
        }
        let start = out.count
        out += directory
        out += u32(0x0605_4b50) + u16(0) + u16(0) + u16(arrays.count) + u16(arrays.count) + u32(directory.count) + u32(start) + u16(0)
        return out
    }
}
