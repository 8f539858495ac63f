import CZlib
import Foundation
import Testing
@testable import TetherData

/// NumPy's files: arrays written as numpy.savez writes them read back whole; channels-last images are
/// reordered; a deflated entry (savez_compressed) inflates; damaged files are refused naming the file.
@Suite struct NumPyTests {
    static func temporary(_ bytes: [UInt8]) throws -> String {
        let path = FileManager.default.temporaryDirectory.appendingPathComponent("tether-npz-\(UUID()).npz").path
        try Data(bytes).write(to: URL(fileURLWithPath: path))
        return path
    }

    static func array(_ dtype: NumPyArray.DType, _ shape: [Int], _ bytes: [UInt8]) -> NumPyArray {
        NumPyArray(dtype: dtype, shape: shape, bytes: bytes)
    }

    /// `npy:DIR` reads DIR/x.npy and DIR/y.npy as np.save writes them, the same as an .npz of both; a
    /// float y (N, K) is K regression targets a sample and no class labels; a missing file is named.
    @Test func arraysFromAFolderOfNPYFiles() throws {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("npy-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: dir) }
        let x = Self.array(
            .float32, [3, 2], [1.0, 2, 3, 4, 5, 6].flatMap { (v: Float) in withUnsafeBytes(of: v.bitPattern.littleEndian) { Array($0) } })
        let y = Self.array(
            .float64, [3, 2],
            [0.5, -1, 2, 2.5, 0, 7].flatMap { (v: Double) in withUnsafeBytes(of: v.bitPattern.littleEndian) { Array($0) } })
        try Data(NumPy.npy(x)).write(to: dir.appendingPathComponent("x.npy"))
        try Data(NumPy.npy(y)).write(to: dir.appendingPathComponent("y.npy"))
        let d = try ArrayDataset(arrays: "npy:" + dir.path)
        #expect(d.sampleShape == [2] && d.values == [1, 2, 3, 4, 5, 6] && d.targets == [0.5, -1, 2, 2.5, 0, 7] && d.targetWidth == 2)
        #expect(d.classes == 0)
        let npz = try Self.temporary(NumPy.npz([("x", x), ("y", y)]))
        defer { try? FileManager.default.removeItem(atPath: npz) }
        let same = try ArrayDataset(arrays: "npz:" + npz)
        #expect(same.values == d.values && same.targets == d.targets)
        try FileManager.default.removeItem(at: dir.appendingPathComponent("y.npy"))
        #expect { try ArrayDataset(arrays: "npy:" + dir.path) } throws: { "\($0)".contains("y.npy") }
    }

    @Test func imagesChannelsLastAreReorderedAndScaled() throws {
        // two 2x2 images with 3 channels, channels last: pixel p of channel c holds 10 * c + p (+ 100 for the second)
        var x: [UInt8] = []
        for s in 0..<2 { for p in 0..<4 { for c in 0..<3 { x.append(UInt8(100 * s + 10 * c + p)) } } }
        var y: [UInt8] = []
        for label in [Int64(11), 4] { withUnsafeBytes(of: label.littleEndian) { y += $0 } }
        let path = try Self.temporary(NumPy.npz([("x", Self.array(.uint8, [2, 2, 2, 3], x)), ("y", Self.array(.int64, [2], y))]))
        defer { try? FileManager.default.removeItem(atPath: path) }
        let d = try ArrayDataset(arrays: "npz:" + path)
        #expect(d.sampleShape == [3, 2, 2] && d.labels == [11, 4] && d.classes == 12)
        // NCHW: channel 1 of sample 1 is 110, 111, 112, 113
        #expect(Array(d.values[12 + 4..<12 + 8]) == [110, 111, 112, 113].map { Float($0) / 255 })
        // served: the rows travel and come back the same
        let served = try ArrayDataset(shape: d.encodedShape(), rows: d.encodedRows([1, 0]))
        #expect(served.values == Array(d.values[12...]) + Array(d.values[..<12]) && served.labels == [4, 11])
    }

    @Test func aDeflatedEntryInflates() throws {
        let floats: [Float] = [0.5, -1.25, 3, 7]
        let npy = NumPy.npy(
            Self.array(.float32, [2, 2], floats.flatMap { v in withUnsafeBytes(of: v.bitPattern.littleEndian) { Array($0) } }))
        // the same file deflated (raw deflate, as savez_compressed stores it)
        var stream = z_stream()
        #expect(deflateInit2_(&stream, 9, Z_DEFLATED, -15, 8, Z_DEFAULT_STRATEGY, ZLIB_VERSION, Int32(MemoryLayout<z_stream>.size)) == Z_OK)
        var input = npy, deflated = [UInt8](repeating: 0, count: npy.count + 64)
        input.withUnsafeMutableBufferPointer { i in
            deflated.withUnsafeMutableBufferPointer { o in
                (stream.next_in, stream.avail_in, stream.next_out, stream.avail_out) = (
                    i.baseAddress, UInt32(i.count), o.baseAddress, UInt32(o.count)
                )
                _ = deflate(&stream, Z_FINISH)
            }
        }
        deflated = Array(deflated[0..<Int(stream.total_out)])
        deflateEnd(&stream)
        #expect(try NumPy.inflate(deflated, size: npy.count, what: "t") == npy)
        #expect(try NumPy.parseNPY(npy, source: "t").floats() == floats)
        #expect { try NumPy.inflate(Array(deflated.dropLast(3)), size: npy.count, what: "t.npz: x.npy") } throws: {
            "\($0)".contains("t.npz: x.npy")
        }
    }

    @Test func aDamagedArrayIsRefusedNamingIt() throws {
        let good = NumPy.npy(Self.array(.float32, [3], [UInt8](repeating: 0, count: 12)))
        #expect { try NumPy.parseNPY(Array(good.dropLast()), source: "a.npy") } throws: {
            "\($0)".contains("a.npy: shape [3] of <f4 needs 12 bytes of data, the file has 11")
        }
        #expect { try NumPy.parseNPY([0x93] + Array("NUMPX".utf8) + [1, 0, 0, 0], source: "b.npy") } throws: {
            "\($0)".contains("b.npy: not a .npy array")
        }
        // the same header edited in place (its length unchanged)
        let head = Array(good[..<10]), text = String(decoding: good[10...], as: UTF8.self)
        let fortran = head + Array(text.replacingOccurrences(of: "'fortran_order': False", with: "'fortran_order': True ").utf8)
        #expect { try NumPy.parseNPY(fortran, source: "c.npy") } throws: { "\($0)".contains("Fortran-order arrays are not read") }
        let huge = head + Array(text.replacingOccurrences(of: "'shape': (3,), }     ", with: "'shape': (9223372036854775807, 4)").utf8)
        #expect { try NumPy.parseNPY(huge, source: "d.npy") } throws: { "\($0)".contains("d.npy:") }
        let path = try Self.temporary(NumPy.npz([("x", Self.array(.float32, [3], [UInt8](repeating: 0, count: 12)))]))
        defer { try? FileManager.default.removeItem(atPath: path) }
        #expect { try ArrayDataset(arrays: "npz:" + path) } throws: { "\($0)".contains("samples are arrays x and y (it has x)") }
    }
}
