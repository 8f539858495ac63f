import TetherJobFile
import Foundation
import Testing
import TetherComm
import TetherMessages
import TetherData
import TetherNN
import TetherTensor
import TetherTrain
@testable import TetherCluster

/// Numbers from the wire or a file that used to trap (an `Int(UInt64)`, an overflowing product) or
/// to allocate what they claimed: each is now an error naming what is wrong.
@Suite struct HostileInputTests {
    func config() -> [UInt8] { [UInt8](try! JSONEncoder().encode(TrainingConfig.defaults(for: "mlp-wn"))) }
    func assign(
        ring: [String] = ["tcp://10.0.0.1:7071", "tcp://10.0.0.2:7071"], config: [UInt8]? = nil, keys: Bool = true
    ) -> Assign {
        var a = Assign(
            rank: 0, worldSize: UInt32(ring.count), ring: ring, configJSON: config ?? self.config(), hashEvery: 50,
            checkpointEvery: 0, bucketBytes: 1 << 20)
        if keys {
            let pairs = ring.map { _ in try! CurveKeyPair.generate() }
            (a.ringSecretKey, a.ringPublicKeys) = (pairs[0].secretKey, pairs.map(\.publicKey))
        }
        return a
    }
    let check = AssignCheck(dataRoots: ["/usr/share/datasets"], secure: true, runtimeDirectory: "/run/user/0/tether")

    @Test func aValidAssignPasses() throws {
        #expect(try check.validate(assign()).model == "mlp-wn")
    }

    /// A fake coordinator (possible with --insecure) cannot make a worker bind a socket file anywhere,
    /// train with an invalid configuration, read files outside its data roots, or run its ring in
    /// plaintext when the worker runs with CURVE.
    @Test(arguments: [
        ("ipc:///home/user/.bashrc", "an ipc socket must lie in this job's runtime folder /run/user/0/tether"),
        ("ipc:///run/user/0/tether/../../../etc/x", "an ipc socket must lie in this job's runtime folder"),
        ("tcp://10.0.0.1", "expected tcp://HOST:PORT"),
        ("tcp://10.0.0.1:99999", "expected tcp://HOST:PORT"),
        ("inproc://x", "only tcp:// (or ipc:// in the job's runtime folder) ring addresses are accepted"),
        ("pgm://eth0;239.1.1.1:5555", "only tcp://")
    ])
    func aRingAddressOutsideTheRulesIsRefused(address: String, reason: String) {
        #expect { try check.validate(assign(ring: ["tcp://10.0.0.1:7071", address])) } throws: {
            "\($0)".contains("ring address of rank 1") && "\($0)".contains(reason)
        }
    }

    /// A worker binds its own ring address and connects to its right neighbour's: only those two must
    /// lie in its runtime folder; a unix socket between two ranks on another host is theirs.
    @Test func onlyTheLinksAWorkerUsesMustLieInItsRuntimeFolder() throws {
        let elsewhere = "ipc:///run/user/1000/tether/ring-ab-e0-r2"
        var three = assign(ring: ["tcp://10.0.0.1:7071", "tcp://10.0.0.2:7071", elsewhere])
        #expect(try check.validate(three).model == "mlp-wn")
        three.ring[2] = "ipc://relative/ring"
        #expect { try check.validate(three) } throws: { "\($0)".contains("ring address of rank 2") }
        three.ring[2] = elsewhere
        three.ring[1] = elsewhere.replacingOccurrences(of: "r2", with: "r1")  // the right neighbour's, outside this worker's folder
        #expect { try check.validate(three) } throws: {
            "\($0)".contains("ring address of rank 1") && "\($0)".contains("/run/user/0/tether")
        }
    }

    /// The coordinator pairs same-host neighbours: rank r's address is a unix socket exactly when its
    /// left neighbour (the one that connects to it) said the same host key and folder.
    @Test func sameHostNeighboursAreLinkedOverUnixSockets() {
        let tcp = (0..<4).map { "tcp://10.0.0.\($0):7071" }
        let a = (key: "boot-a/mnt:[1]/0", folder: "/run/user/0/tether"), b = (key: "boot-b/mnt:[1]/0", folder: "/run/user/0/tether")
        let links = SameHostLinks.ringAddresses(tcp, hosts: [a, a, b, b], token: "t", epoch: 3)
        #expect(links == [tcp[0], "ipc:///run/user/0/tether/ring-t-e3-r1", tcp[2], "ipc:///run/user/0/tether/ring-t-e3-r3"])
        #expect(SameHostLinks.ringAddresses(tcp, hosts: [a, nil, a, a], token: "t", epoch: 0)[1] == tcp[1])
        #expect(SameHostLinks.ringAddresses(tcp, hosts: [a, (a.key, "/tmp/other"), a, a], token: "t", epoch: 0)[1] == tcp[1])
        #expect(SameHostLinks.ringAddresses(tcp, hosts: [("", a.folder), ("", a.folder), a, a], token: "t", epoch: 0)[1] == tcp[1])
        #expect(SameHostLinks.ringAddresses([tcp[0]], hosts: [a], token: "t", epoch: 0) == [tcp[0]])
        #expect(SameHostLinks.ringAddresses(tcp, hosts: [a, (a.key, "/tmp/../etc"), a, a], token: "t", epoch: 0)[1] == tcp[1])
    }

    @Test func anInvalidConfigurationOrDataOutsideTheRootsIsRefused() throws {
        var bad = TrainingConfig.defaults(for: "mlp-wn")
        bad.batch = 0
        #expect { try check.validate(assign(config: [UInt8](try JSONEncoder().encode(bad)))) } throws: {
            "\($0)".contains("the job configuration is not valid")
        }
        var text = TrainingConfig.defaults(for: "lm-tied")
        text.data = "text:/etc/passwd"
        #expect { try check.validate(assign(config: [UInt8](try JSONEncoder().encode(text)))) } throws: {
            "\($0)".contains("the job reads /etc/passwd, which is outside this worker's data roots")
        }
        var served = assign(config: [UInt8](try JSONEncoder().encode(text)))
        served.dataServed = true  // served data is not read from the worker's disk
        #expect(try check.validate(served).data == "text:/etc/passwd")
        #expect { try check.validate(assign(config: Array("{\"model\": 7}".utf8))) } throws: { "\($0)".contains("does not decode") }
    }

    @Test func aSecureWorkerRefusesARingWithoutKeys() {
        #expect { try check.validate(assign(keys: false)) } throws: { "\($0)".contains("carries no valid ring keys") }
        #expect(throws: Never.self) { try AssignCheck(dataRoots: ["/usr/share/datasets"], secure: false).validate(assign(keys: false)) }
        var mismatched = assign()
        mismatched.ringSecretKey = try! CurveKeyPair.generate().secretKey  // not rank 0's public key
        #expect { try check.validate(mismatched) } throws: { "\($0)".contains("carries no valid ring keys") }
    }

    @Test func servedImageShapesThatWouldOverflowAreRefused() {
        var shape: [UInt8] = []
        for v: UInt32 in [0xFFFF_FFFF, 0xFFFF_FFFF, 10] { withUnsafeBytes(of: v.littleEndian) { shape += $0 } }
        #expect { try ImageDataset(shape: shape, rows: [1, 2, 3]) } throws: { "\($0)".contains("a shape of 4294967295x4294967295 pixels") }
    }

    @Test func idxSizesThatWouldOverflowAreRefused() {
        let header: [UInt8] = [0, 0, 8, 4] + [UInt8](repeating: 0xFF, count: 16)
        #expect { try IDX.parse(header, path: "big.idx") } throws: { "\($0)".contains("big.idx: the header's sizes 4294967295 x") }
    }

    /// The safetensors file of the security report: shape [2^62, 4], whose byte count overflows.
    @Test func aSafetensorsShapeThatWouldOverflowIsRefused() {
        let header = #"{"w":{"dtype":"F32","shape":[4611686018427387904,4],"data_offsets":[0,16]}}"#
        var bytes = Data()
        withUnsafeBytes(of: UInt64(header.utf8.count).littleEndian) { bytes.append(contentsOf: $0) }
        bytes.append(Data(header.utf8))
        bytes.append(Data(count: 16))
        #expect { try Safetensors.decode(bytes, source: "big.safetensors") } throws: { "\($0)".contains("do not hold shape") }
        var huge = Data()
        withUnsafeBytes(of: UInt64(Safetensors.maxHeaderBytes + 1).littleEndian) { huge.append(contentsOf: $0) }
        huge.append(Data(count: Safetensors.maxHeaderBytes + 1))
        #expect { try Safetensors.decode(huge, source: "h") } throws: { "\($0)".contains("above the \(Safetensors.maxHeaderBytes) bytes") }
    }

    /// One flipped bit in a tensor's data is refused, naming the tensor.
    @Test func aCorruptTensorIsRefusedByItsChecksum() throws {
        var rng = RNG(seed: 3)
        let model = try! ShippedSpecs.predictor("mlp", height: 2, width: 2, classes: 3, rng: &rng, as: Float.self)!
        let file = Checkpoint.file(model: model, optimizer: nil, config: .defaults(for: "mlp"), state: TrainingState(rng: rng))
        let good = Safetensors.encode(file)
        _ = try Checkpoint.Loaded(bytes: good, source: "good")
        var bad = file
        var t = bad.tensors["layers.2.weight"]!
        t.data[t.data.startIndex + 5] ^= 0x10
        bad.tensors["layers.2.weight"] = t
        #expect { try Checkpoint.Loaded(bytes: Safetensors.encode(bad), source: "bad") } throws: {
            "\($0)" == "checkpoint bad: tensor layers.2.weight is corrupt: its data does not match the checksum stored with it"
        }
    }

    @Test func keyFilesAreCheckedForModeAndContent() throws {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("tether-keys-\(UUID())")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: dir) }
        let path = dir.appendingPathComponent("k").path
        let keys = try CurveKeyPair.generate()
        try KeyFile.write(keys, to: path)
        #expect(try KeyFile.read(path) == keys)
        #expect(throws: CurveError.self) { try KeyFile.write(keys, to: path) }  // never overwritten
        chmod(path, 0o644)
        #expect { try KeyFile.read(path) } throws: { "\($0)".contains("has mode 644: other users may read or change it") }
        #expect(try KeyFile.parse(keys.secretKey, source: "TETHER_KEY") == keys)
        #expect { try KeyFile.parse("secret-key: short", source: "TETHER_KEY") } throws: { "\($0)".contains("40 Z85 characters") }
        let other = try CurveKeyPair.generate()
        #expect { try KeyFile.parse("public-key: \(other.publicKey)\nsecret-key: \(keys.secretKey)", source: "f") } throws: {
            "\($0)".contains("its public key is not that of its secret key")
        }
    }

    /// What a joining worker makes of its socket's events.
    @Test func aJoiningWorkerNamesWhatItSees() {
        var nothing = JoinDiagnosis(coordinator: "tcp://c:1", secure: true)
        #expect(nothing.verdict(waited: 0) == nil)
        #expect(
            nothing.verdict(waited: 2)
                == .say("nothing answers at tcp://c:1 yet (is the coordinator running, and is this its address?); still trying"))
        #expect(nothing.verdict(waited: 3) == nil)  // said once
        var wrongKey = JoinDiagnosis(coordinator: "tcp://c:1", secure: true)
        wrongKey.record(.init(event: 0x0001, value: 0, address: "tcp://c:1"))  // connected
        wrongKey.record(.init(event: 0x0200, value: 0, address: "tcp://c:1"))  // disconnected before a handshake
        #expect(
            wrongKey.verdict(waited: 1)
                == .refused(
                    "the handshake with the coordinator at tcp://c:1 failed: it holds another cluster key, or runs --insecure (this worker runs with CURVE)"
                ))
        var refused = JoinDiagnosis(coordinator: "tcp://c:1", secure: true)
        refused.record(.init(event: 0x4000, value: 400, address: "tcp://c:1"))
        #expect(
            refused.verdict(waited: 0)
                == .refused(
                    "the coordinator at tcp://c:1 refused this worker's key (status 400): it runs with another cluster key; give this worker the job's key file (--key-file)"
                ))
    }
}
