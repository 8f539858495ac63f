import Testing
import Foundation
@testable import TetherNN

@Suite struct SafetensorsTests {
    @Test func roundTrip() throws {
        var f = Safetensors.File()
        f.tensors["layers.0.weight_v"] = .init(floats: [1, -2, 3.5, 4, 5, 6], shape: [2, 3])
        f.tensors["layers.0.weight_g"] = .init(floats: [0.5, 2], shape: [2, 1])
        f.tensors["empty"] = .init(floats: [], shape: [0])
        f.metadata = ["model": "mlp-wn", "step": "12"]
        let bytes = Safetensors.encode(f)
        let headerLength = bytes.prefix(8).withUnsafeBytes { $0.loadUnaligned(as: UInt64.self) }
        #expect((8 + Int(headerLength)) % 8 == 0)
        #expect(try Safetensors.decode(bytes, source: "mem") == f)
        #expect(Safetensors.encode(try Safetensors.decode(bytes, source: "mem")) == bytes)
    }

    /// A file assembled byte by byte from the format specification, not by our writer.
    @Test func readsAFileBuiltFromTheSpecification() throws {
        let header =
            #"{"__metadata__":{"format":"pt"},"b":{"dtype":"F32","shape":[1],"data_offsets":[8,12]},"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}"#
        var bytes = Data()
        var n = UInt64(header.utf8.count).littleEndian
        bytes.append(Data(bytes: &n, count: 8))
        bytes.append(header.data(using: .utf8)!)
        // a = [1.0, -2.0], b = [0.5], little-endian IEEE 754
        bytes.append(contentsOf: [0x00, 0x00, 0x80, 0x3F, 0x00, 0x00, 0x00, 0xC0, 0x00, 0x00, 0x00, 0x3F])
        let f = try Safetensors.decode(bytes, source: "spec")
        #expect(try f.tensors["a"]!.floats() == [1, -2])
        #expect(try f.tensors["b"]!.floats() == [0.5])
        #expect(f.tensors["a"]!.shape == [2])
        #expect(f.metadata == ["format": "pt"])
    }

    @Test(arguments: [
        ("truncated", "runs past the end"),
        ("short", "shorter than"),
        ("notJSON", "not a JSON object"),
        ("badDType", "unknown dtype"),
        ("wrongSize", "do not hold shape"),
        ("hole", "hole or an overlap")
    ])
    func corruptFilesAreRefusedWithTheReason(kind: String, reason: String) throws {
        func file(_ header: String, data: Int) -> Data {
            var d = Data()
            var n = UInt64(header.utf8.count).littleEndian
            d.append(Data(bytes: &n, count: 8)); d.append(header.data(using: .utf8)!); d.append(Data(count: data))
            return d
        }
        let good = file(#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}"#, data: 8)
        let bytes: Data =
            switch kind {
            case "truncated": good.prefix(20)
            case "short": good.prefix(5)
            case "notJSON": file("[1, 2]", data: 0)
            case "badDType": file(#"{"a":{"dtype":"Q7","shape":[2],"data_offsets":[0,8]}}"#, data: 8)
            case "wrongSize": file(#"{"a":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}}"#, data: 8)
            default: file(#"{"a":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}}"#, data: 8)
            }
        #expect {
            try Safetensors.decode(bytes, source: "/runs/x/checkpoint.safetensors")
        } throws: { error in
            "\(error)".contains(reason) && "\(error)".contains("/runs/x/checkpoint.safetensors")
        }
    }

    @Test func atomicWriteReplacesTheFileAndLeavesNoTemporary() throws {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("tether-atomic-\(UUID())")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: dir) }
        let url = dir.appendingPathComponent("c.safetensors")
        try AtomicFile.write(Data([1, 2, 3]), to: url)
        try AtomicFile.write(Data([4, 5]), to: url)
        #expect(try Data(contentsOf: url) == Data([4, 5]))
        #expect(try FileManager.default.contentsOfDirectory(atPath: dir.path) == ["c.safetensors"])
        // A folder that does not exist: an error naming the path, nothing written.
        #expect(throws: AtomicFileError.self) { try AtomicFile.write(Data([1]), to: dir.appendingPathComponent("no/such/file")) }
    }
}
