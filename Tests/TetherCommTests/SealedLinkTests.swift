import CZeroMQ
import Foundation
import Logging
import Testing
@testable import TetherComm
import TetherMessages

/// A secure ring's tcp links seal every payload with an AEAD (`LinkCipher`): a changed byte, a
/// replayed, reordered or dropped message, or one under another link's key is refused naming the
/// link, never summed.
@Suite struct LinkCipherTests {
    static let algorithms = LinkCipher.Algorithm.allCases

    struct Pair {
        let sender: LinkCipher, receiver: LinkCipher
        init(_ algorithm: LinkCipher.Algorithm, epoch: UInt32 = 3, receiverEpoch: UInt32? = nil) throws {
            let (a, b) = (try CurveKeyPair.generate(), try CurveKeyPair.generate())
            sender = try LinkCipher(
                ownSecret: a.secretKey, peerPublic: b.publicKey, jobID: "job", epoch: epoch, sender: 0, receiver: 1, sending: true,
                algorithm: algorithm)
            receiver = try LinkCipher(
                ownSecret: b.secretKey, peerPublic: a.publicKey, jobID: "job", epoch: receiverEpoch ?? epoch, sender: 0, receiver: 1,
                sending: false, algorithm: algorithm == .aes256gcm ? .chacha20poly1305 : .aes256gcm)  // it opens what the sender chose
        }
    }

    static func seal(_ c: LinkCipher, _ payload: [UInt8], header: [UInt8] = [1, 2, 3]) -> [UInt8] {
        var out = [UInt8](repeating: 0, count: payload.count + LinkCipher.overhead)
        payload.withUnsafeBytes { p in
            header.withUnsafeBytes { h in out.withUnsafeMutableBytes { c.seal(p, header: h, into: $0.baseAddress!) } }
        }
        return out
    }

    static func open(_ c: LinkCipher, _ sealed: [UInt8], header: [UInt8] = [1, 2, 3]) throws -> [UInt8] {
        var out = [UInt8](repeating: 0, count: max(0, sealed.count - LinkCipher.overhead) + 1)
        try sealed.withUnsafeBytes { s in
            try header.withUnsafeBytes { h in try out.withUnsafeMutableBytes { try c.open(s, header: h, into: $0.baseAddress!) } }
        }
        return Array(out.dropLast())
    }

    func refusal(_ body: () throws -> Void) -> LinkCipher.Refusal? {
        do { try body() } catch let r as LinkCipher.Refusal { return r } catch { return nil }
        return nil
    }

    @Test(arguments: algorithms)
    func messagesOpenInOrderAndNothingElseDoes(_ algorithm: LinkCipher.Algorithm) throws {
        let pair = try Pair(algorithm)
        let payloads = [[UInt8](repeating: 7, count: 1000), [], Array(0..<255)]
        let sealed = payloads.map { Self.seal(pair.sender, $0) }
        #expect(sealed[0].count == 1000 + 28 && sealed[0][12..<1012].contains { $0 != 7 })  // ciphertext, not the bytes
        #expect(try Self.open(pair.receiver, sealed[0]) == payloads[0])
        // replayed: the message just opened
        #expect(refusal { _ = try Self.open(pair.receiver, sealed[0]) } == .replayed(expected: 1, found: 0))
        // a flipped bit of the ciphertext, of the tag, of the header (associated data): forged, and the
        // link still takes its real next message
        for position in [12 + 0, sealed[1].count - 1] {
            var bad = sealed[1]
            bad[position] ^= 0x04
            #expect(refusal { _ = try Self.open(pair.receiver, bad) } == .forged)
        }
        #expect(refusal { _ = try Self.open(pair.receiver, sealed[1], header: [1, 2, 4]) } == .forged)
        var otherAlgorithm = sealed[1]
        otherAlgorithm[3] ^= 0x80  // the prefix's top bit: the sender's algorithm
        #expect(refusal { _ = try Self.open(pair.receiver, otherAlgorithm) } == .forged)
        #expect(refusal { _ = try Self.open(pair.receiver, Array(sealed[1].prefix(20))) } == .truncated)
        #expect(try Self.open(pair.receiver, sealed[1]) == [])
        #expect(try Self.open(pair.receiver, sealed[2]) == payloads[2])
        #expect(pair.receiver.algorithm == algorithm)  // the receiver opened what its sender chose
    }

    /// A message past the next one opens (it is the sender's) but is refused as a gap: the ones
    /// between were lost or refused. A reordering is such a gap, then a replay.
    @Test(arguments: algorithms)
    func aReorderedOrDroppedMessageIsAGap(_ algorithm: LinkCipher.Algorithm) throws {
        let pair = try Pair(algorithm)
        let sealed = (0..<3).map { Self.seal(pair.sender, [UInt8]($0..<($0 + 10))) }
        #expect(refusal { _ = try Self.open(pair.receiver, sealed[1]) } == .gap(expected: 0, found: 1))
        #expect(try Self.open(pair.receiver, sealed[0]) == Array(0..<10))
        #expect(refusal { _ = try Self.open(pair.receiver, sealed[2]) } == .gap(expected: 1, found: 2))
    }

    /// Another link's key: another forming of the ring (epoch), or another pair of ranks.
    @Test(arguments: algorithms)
    func aMessageUnderAnotherLinksKeyDoesNotOpen(_ algorithm: LinkCipher.Algorithm) throws {
        let pair = try Pair(algorithm, epoch: 3, receiverEpoch: 4)
        #expect(refusal { _ = try Self.open(pair.receiver, Self.seal(pair.sender, [1, 2, 3])) } == .forged)
        let keys = (try CurveKeyPair.generate(), try CurveKeyPair.generate())
        let forward = try LinkCipher(
            ownSecret: keys.0.secretKey, peerPublic: keys.1.publicKey, jobID: "job", epoch: 0, sender: 0, receiver: 1, sending: true,
            algorithm: algorithm)
        let backward = try LinkCipher(
            ownSecret: keys.0.secretKey, peerPublic: keys.1.publicKey, jobID: "job", epoch: 0, sender: 1, receiver: 0, sending: false,
            algorithm: algorithm)
        #expect(refusal { _ = try Self.open(backward, Self.seal(forward, [1, 2, 3])) } == .forged)
    }
}

/// Secure rings over loopback tcp, sealed (the default) and under CURVE: the same sums, bitwise, on
/// every rank; and a neighbour that holds the link's key but sends a tampered, replayed or skipped
/// message is refused, naming the link.
@Suite struct SealedRingTests {
    /// Each rank's key pair, and options whose links use them (rank r's left is r - 1).
    static func secured(
        _ ring: TestRing, _ keys: [CurveKeyPair], rank: Int, _ protection: RingPayloadProtection
    ) throws -> (
        inout RingOptions
    ) -> Void {
        let n = keys.count
        let authenticator = try Authenticator(context: ring.contexts[rank], logger: Logger(label: "test"))
        let curve = RingCurve(
            keys: keys[rank], leftPublicKey: keys[(rank + n - 1) % n].publicKey, rightPublicKey: keys[(rank + 1) % n].publicKey,
            authenticator: authenticator)
        return { o in
            o.curve = curve
            o.payloadProtection = protection
        }
    }

    @Test(arguments: [2, 3, 5])
    func aSealedRingSumsAsACurveOneDoes(ranks: Int) throws {
        var sums: [RingPayloadProtection: [[Float]]] = [:]
        for protection in RingPayloadProtection.allCases {
            let ring = try TestRing(ranks, .tcp)
            let keys = try (0..<ranks).map { _ in try CurveKeyPair.generate() }
            let configure = try (0..<ranks).map { try Self.secured(ring, keys, rank: $0, protection) }
            let results = onRanks(ranks) { rank -> ([Float], Duration) in
                let r = try ring.ring(rank) {
                    configure[rank](&$0); $0.chunkBytes = 4096
                }
                var x = input(rank: rank, count: 10_001)
                _ = try x.withUnsafeMutableBufferPointer { try r.allReduce($0) }
                return (x, r.statistics.sealing)
            }
            let values = try results.map { try $0.get() }
            #expect(values.allSatisfy { $0.0 == values[0].0 }, "\(protection): every rank holds the same sum")
            #expect(values.allSatisfy { (protection == .aead) == ($0.1 > .zero) }, "\(protection): sealing time \(values.map(\.1))")
            sums[protection] = values.map(\.0)
        }
        #expect(sums[.aead] == sums[.curve])
        let reference = inputSum(ranks: ranks, count: 10_001)
        #expect(zip(sums[.aead]![0], reference).allSatisfy { abs($0 - $1) <= 1e-4 * max(1, abs($1)) })
    }

    /// Rank 1 driven by hand with the link's real key: what it sends is sealed as a real rank seals it.
    struct SealedNeighbour {
        let push: ZeroMQSocket, pull: ZeroMQSocket, cipher: LinkCipher
        init(_ ring: TestRing, keys: [CurveKeyPair], epoch: UInt32 = 0) throws {
            pull = try ZeroMQSocket(ring.contexts[1], .pull)
            try pull.bind(ring.addresses[1])
            push = try ZeroMQSocket(ring.contexts[1], .push)
            try push.connect(ring.addresses[0])
            cipher = try LinkCipher(
                ownSecret: keys[1].secretKey, peerPublic: keys[0].publicKey, jobID: "tether", epoch: epoch, sender: 1, receiver: 0,
                sending: true)
        }
        /// The frames of `h` with `payload` sealed (the header as associated data).
        func frames(_ h: ChunkHeader, _ payload: [UInt8]) -> [[UInt8]] {
            let head = Envelope(jobID: "tether", senderRank: 1, body: .chunk(h)).encoded()
            return [head, LinkCipherTests.seal(cipher, payload, header: head)]
        }
        func send(_ frames: [[UInt8]]) throws { try push.send(frames) }
        func header(sequence: UInt64, offset: Int, ringStep: UInt32 = 0, handshake: Bool = false) -> ChunkHeader {
            var h = ChunkHeader(
                operation: handshake ? .handshake : .allReduce, sequence: sequence, step: 0, bucket: 0, ringStep: ringStep, chunkIndex: 0,
                dtype: handshake ? .bytes : .f32, totalCount: handshake ? 0 : 8, offset: UInt64(offset), elementCount: handshake ? 0 : 4,
                checksum: 0, layoutFingerprint: 0, originRank: -1)
            h.ringStep = ringStep
            return h
        }
    }

    /// Rank 0 of a sealed 2-ring all-reducing eight ones, fed by `feed`; its result (or error) and log.
    func rank0(_ feed: @escaping @Sendable (SealedNeighbour) throws -> Void) throws -> (String, String) {
        let ring = try TestRing(2, .tcp)
        let keys = try (0..<2).map { _ in try CurveKeyPair.generate() }
        let fake = try SealedNeighbour(ring, keys: keys)
        try fake.send(fake.frames(fake.header(sequence: 0, offset: 0, handshake: true), []))
        let logged = LockedLines(), configure = try Self.secured(ring, keys, rank: 0, .aead)
        let r = try ring.ring(0) {
            configure(&$0)
            $0.timeout = .seconds(3); $0.logger = logged.logger; $0.gatherSumBytes = 0
        }
        try feed(fake)
        var x = [Float](repeating: 1, count: 8)
        do { _ = try x.withUnsafeMutableBufferPointer { try r.allReduce($0) } } catch {
            return ("\(error)", logged.lines.joined(separator: "\n"))
        }
        return ("\(x)", logged.lines.joined(separator: "\n"))
    }

    static let ones = [Float](repeating: 1, count: 4).withUnsafeBytes { Array($0) }
    static let twos = [Float](repeating: 2, count: 4).withUnsafeBytes { Array($0) }

    @Test func aTamperedOrReplayedMessageIsDroppedNamingTheLinkAndTheRealOneSummed() throws {
        let (result, log) = try rank0 { fake in
            let first = fake.frames(fake.header(sequence: 1, offset: 4), Self.ones)
            var tampered = first
            tampered[1][20] ^= 1
            try fake.send(tampered)  // refused: not summed, and the real one still opens
            try fake.send(first)
            try fake.send(first)  // replayed
            try fake.send(fake.frames(fake.header(sequence: 1, offset: 0, ringStep: 1), Self.twos))
        }
        #expect(result == "\([Float](repeating: 2, count: 8))", "\(log)")
        #expect(
            log.contains(
                "dropped a message that fails authentication (a changed byte, or another link's key) on the sealed link from rank 1 (tcp://"
            ), "\(log)")
        #expect(log.contains("dropped a replayed message (1, where 2 is next) on the sealed link from rank 1"), "\(log)")
    }

    @Test func anUnsealedOrForeignKeyedMessageIsDropped() throws {
        let (result, log) = try rank0 { fake in
            let head = Envelope(jobID: "tether", senderRank: 1, body: .chunk(fake.header(sequence: 1, offset: 4))).encoded()
            let stranger = try LinkCipher(
                ownSecret: try CurveKeyPair.generate().secretKey, peerPublic: try CurveKeyPair.generate().publicKey, jobID: "tether",
                epoch: 0,
                sender: 1, receiver: 0, sending: true)
            try fake.send([head, LinkCipherTests.seal(stranger, Self.ones, header: head)])
            try fake.send([head, Self.ones])  // plaintext on a sealed link (its drop may go unlogged: a few a second)
            try fake.send(fake.frames(fake.header(sequence: 1, offset: 4), Self.ones))
            try fake.send(fake.frames(fake.header(sequence: 1, offset: 0, ringStep: 1), Self.twos))
        }
        #expect(result == "\([Float](repeating: 2, count: 8))", "\(log)")
        #expect(log.contains("dropped a message that fails authentication (a changed byte, or another link's key)"), "\(log)")
    }

    /// A message lost (or tampered and refused) shows when the next authentic one opens: the
    /// collective fails at once, naming the link, instead of waiting for what will not come.
    @Test func aSkippedMessageFailsTheCollectiveNamingTheLink() throws {
        let (result, _) = try rank0 { fake in
            _ = fake.frames(fake.header(sequence: 1, offset: 4), Self.ones)  // sealed, never sent
            try fake.send(fake.frames(fake.header(sequence: 1, offset: 0, ringStep: 1), Self.twos))
        }
        #expect(
            result.contains("rank 0: the sealed link from rank 1 (tcp://") && result.contains("delivered message 2 where 1 was next"),
            "\(result)")
    }
}
