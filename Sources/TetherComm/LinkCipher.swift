import CSodium
import CTetherCrypto
import CZeroMQ

/// How a secure ring protects the payloads on its tcp links. `aead` (the default): each chunk sealed
/// by `LinkCipher` over a plain socket; `curve`: libzmq's CURVE on the link's socket, which encrypts
/// with XSalsa20-Poly1305 on the socket's I/O thread (2.7x slower than --insecure over loopback,
/// docs/ARCHITECTURE.md). Either way only the ring members the coordinator named can take part: the
/// link keys come from the same CURVE key pairs.
public enum RingPayloadProtection: String, Sendable, CaseIterable {
    case aead, curve
}

/// One direction of one ring link sealed with an AEAD, AES-256-GCM or ChaCha20-Poly1305 (IETF), both
/// through OpenSSL's EVP (CTetherCrypto; libsodium 1.0.18's AES-GCM runs at a quarter of OpenSSL's
/// speed here). Each sender seals with the one this CPU runs faster (`algorithm`, measured once: on
/// this project's Zen 5 machine ChaCha20-Poly1305 at 4.7 GB/s against AES-256-GCM's 3.5) and says
/// which in its nonce; a receiver opens either, so hosts that choose differently still agree.
///
/// Keys: BLAKE2b-256 (libsodium) keyed by the X25519 secret of the two ranks' CURVE keys (each side
/// has its own secret key and the other's public key, both from the coordinator's authenticated
/// Assign) over "tether ring link", the algorithm, the job, the ring epoch and the sender's and
/// receiver's ranks: a key per link, direction, algorithm and forming, which nobody outside the pair
/// can derive.
/// Nonce (12 bytes, sent in front of the ciphertext): a 4-byte prefix the sender draws when the link
/// is made (random; its top bit names the algorithm), then a counter from 0, one per message. The
/// receiver learns the prefix from the first message that opens and then takes only the next counter:
/// a replayed, reordered or dropped message is refused, and one under another link's key or with a
/// changed byte (of the payload or of the header frame, the associated data) does not open. A sealed
/// frame: nonce (12) | ciphertext | tag (16).
final class LinkCipher {
    enum Algorithm: String, CaseIterable { case aes256gcm = "AES-256-GCM", chacha20poly1305 = "ChaCha20-Poly1305" }

    static let nonceBytes = 12, tagBytes = 16, overhead = nonceBytes + tagBytes

    /// The algorithm this CPU seals faster: AES-256-GCM and ChaCha20-Poly1305 each timed over 1 MiB
    /// (well under a millisecond each) the first time a link is made; ChaCha20-Poly1305 without
    /// AES-NI. libsodium is started on the way (once; thread-safe).
    static let algorithm: Algorithm = {
        precondition(sodium_init() >= 0, "libsodium cannot start")
        guard tether_cpu_has_aes() == 1 else { return .chacha20poly1305 }
        let bytes = 1 << 18, payload = [UInt8](repeating: 1, count: bytes), header = [UInt8](repeating: 2, count: 64)
        var out = [UInt8](repeating: 0, count: bytes + overhead)
        func time(_ a: Algorithm) -> Duration {
            guard
                let aead = tether_aead_new(a == .aes256gcm ? Int32(TETHER_AEAD_AES256GCM) : Int32(TETHER_AEAD_CHACHA20POLY1305), payload, 1)
            else { return .seconds(1) }
            defer { tether_aead_free(aead) }
            let start = ContinuousClock.now
            for i in 0..<4 {
                let nonce = [UInt8](repeating: UInt8(i), count: 12)
                _ = out.withUnsafeMutableBufferPointer { o in
                    tether_aead_seal(aead, nonce, header, header.count, payload, bytes, o.baseAddress!, o.baseAddress! + bytes)
                }
            }
            return start.duration(to: .now)
        }
        _ = time(.aes256gcm)  // warm both before timing
        return time(.chacha20poly1305) < time(.aes256gcm) ? .chacha20poly1305 : .aes256gcm
    }()

    /// The sealing algorithm (a receiver: the one its sender chose, once a message opened).
    private(set) var algorithm: Algorithm
    /// One cipher context per algorithm a side may use: the sender's own, or both for a receiver.
    private var contexts: [Algorithm: OpaquePointer] = [:]
    private var prefix: UInt32?
    private(set) var counter: UInt64 = 0

    /// The cipher of the link from rank `sender` to rank `receiver`: `ownSecret` is this side's CURVE
    /// secret key, `peerPublic` the other side's public key (Z85). `sending`: this side seals with
    /// `algorithm` (it draws the nonce prefix); otherwise it opens whatever its sender chose.
    init(
        ownSecret: String, peerPublic: String, jobID: String, epoch: UInt32, sender: Int, receiver: Int, sending: Bool,
        algorithm: Algorithm = LinkCipher.algorithm
    ) throws {
        _ = Self.algorithm  // libsodium started
        guard let secret = Self.z85Decode(ownSecret), let peer = Self.z85Decode(peerPublic) else {
            throw CurveError("a ring link's keys are 40 Z85 characters each")
        }
        var shared = [UInt8](repeating: 0, count: 32)
        guard crypto_scalarmult(&shared, secret, peer) == 0 else {
            throw CurveError("a ring neighbour's public key is not a usable X25519 key")
        }
        defer { sodium_memzero(&shared, 32) }
        self.algorithm = algorithm
        for a in sending ? [algorithm] : Algorithm.allCases {
            var context = Array("tether ring link".utf8) + [0] + Array(a.rawValue.utf8) + [0] + Array(jobID.utf8) + [0]
            for v in [UInt64(epoch), UInt64(sender), UInt64(receiver)] { withUnsafeBytes(of: v.littleEndian) { context += $0 } }
            var key = [UInt8](repeating: 0, count: 32)
            crypto_generichash(&key, 32, context, UInt64(context.count), shared, 32)
            defer { sodium_memzero(&key, 32) }
            let kind = a == .aes256gcm ? Int32(TETHER_AEAD_AES256GCM) : Int32(TETHER_AEAD_CHACHA20POLY1305)
            guard let made = tether_aead_new(kind, key, sending ? 1 : 0) else {
                throw CurveError("OpenSSL cannot make a \(a.rawValue) cipher")
            }
            contexts[a] = made
        }
        if sending { prefix = UInt32.random(in: 0...0x7FFF_FFFF) | (algorithm == .chacha20poly1305 ? 0x8000_0000 : 0) }
    }

    /// The key schedules are cleared with the link.
    deinit { for c in contexts.values { tether_aead_free(c) } }

    private func nonce(_ prefix: UInt32, _ counter: UInt64) -> [UInt8] {
        withUnsafeBytes(of: prefix.littleEndian) { Array($0) } + withUnsafeBytes(of: counter.littleEndian) { Array($0) }
    }

    /// Seals `payload` with `header` as associated data into `out` (payload.count + `overhead` bytes)
    /// under the next nonce.
    func seal(_ payload: UnsafeRawBufferPointer, header: UnsafeRawBufferPointer, into out: UnsafeMutableRawPointer) {
        let n = nonce(prefix!, counter)
        counter += 1
        out.copyMemory(from: n, byteCount: Self.nonceBytes)
        let c = (out + Self.nonceBytes).assumingMemoryBound(to: UInt8.self), tag = c + payload.count
        let status = tether_aead_seal(
            contexts[algorithm]!, n, header.baseAddress?.assumingMemoryBound(to: UInt8.self), header.count,
            payload.baseAddress?.assumingMemoryBound(to: UInt8.self), payload.count, c, tag)
        precondition(status == 0, "sealing a payload of \(payload.count) bytes failed")  // only above 2 GB: chunks are bounded far below
    }

    /// Why a sealed frame does not open.
    enum Refusal: Error, Equatable {
        /// shorter than a nonce and a tag
        case truncated
        /// a message this link opened already, or another sender's prefix: a replay
        case replayed(expected: UInt64, found: UInt64)
        /// the tag does not verify: a changed byte (payload or header), or another link's key
        case forged
        /// an authentic message past the next one: the ones between were lost or refused (tampered)
        case gap(expected: UInt64, found: UInt64)
    }

    /// Opens `sealed` (nonce | ciphertext | tag) with `header` as associated data into `out`
    /// (sealed.count - `overhead` bytes) if it is this link's next message; the counter moves on only
    /// when it opens.
    func open(_ sealed: UnsafeRawBufferPointer, header: UnsafeRawBufferPointer, into out: UnsafeMutableRawPointer) throws {
        guard sealed.count >= Self.overhead, let base = sealed.baseAddress else { throw Refusal.truncated }
        let p = base.loadUnaligned(as: UInt32.self).littleEndian, k = base.loadUnaligned(fromByteOffset: 4, as: UInt64.self).littleEndian
        let count = sealed.count - Self.overhead
        let c = (base + Self.nonceBytes).assumingMemoryBound(to: UInt8.self), tag = c + count
        let chosen: Algorithm = p & 0x8000_0000 != 0 ? .chacha20poly1305 : .aes256gcm
        guard let context = contexts[chosen] else { throw Refusal.forged }
        let status = tether_aead_open(
            context, base.assumingMemoryBound(to: UInt8.self), header.baseAddress?.assumingMemoryBound(to: UInt8.self), header.count, c,
            count, out.assumingMemoryBound(to: UInt8.self), tag)
        // verified first, so that only the link's own messages are called replays and gaps
        guard status == 0 else { throw Refusal.forged }
        guard k >= counter, prefix == nil || prefix == p else { throw Refusal.replayed(expected: counter, found: k) }
        guard k == counter else { throw Refusal.gap(expected: counter, found: k) }
        (prefix, counter, algorithm) = (p, counter + 1, chosen)
    }

    /// The 32 bytes of a 40-character Z85 key.
    static func z85Decode(_ text: String) -> [UInt8]? {
        guard CurveKeyPair.isZ85Key(text) else { return nil }
        var out = [UInt8](repeating: 0, count: 32)
        return zmq_z85_decode(&out, text) == nil ? nil : out
    }
}
