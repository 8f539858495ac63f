import CTetherProcess
import CZeroMQ
import Foundation
import Logging

/// A CURVE key pair (Curve25519, as libzmq's CURVE mechanism uses it), both keys as Z85 text of 40
/// characters. One pair, the **cluster key**, admits a process to a job: the coordinator is the CURVE
/// server with it and workers, holding the same pair, pin its public key and present it as their own
/// (docs/ARCHITECTURE.md, "Security", says why one shared pair rather than an allowlist).
public struct CurveKeyPair: Sendable, Equatable {
    public let publicKey: String
    public let secretKey: String

    /// A fresh pair from libsodium's random source (through libzmq).
    public static func generate() throws -> CurveKeyPair {
        var pub = [CChar](repeating: 0, count: 41), sec = [CChar](repeating: 0, count: 41)
        try ZeroMQ.check(zmq_curve_keypair(&pub, &sec), "zmq_curve_keypair (is libzmq built with CURVE?)")
        return CurveKeyPair(publicKey: String(cString: pub), secretKey: String(cString: sec))
    }

    private init(publicKey: String, secretKey: String) { (self.publicKey, self.secretKey) = (publicKey, secretKey) }

    /// The pair of a secret key; the public key is derived from it. Throws for anything but 40 Z85 characters.
    public init(secretKey: String) throws {
        guard Self.isZ85Key(secretKey) else {
            throw CurveError("a CURVE secret key is 40 Z85 characters, got \(secretKey.count) characters")
        }
        var pub = [CChar](repeating: 0, count: 41)
        try ZeroMQ.check(zmq_curve_public(&pub, secretKey), "zmq_curve_public")
        (publicKey, self.secretKey) = (String(cString: pub), secretKey)
    }

    /// 40 characters of the Z85 alphabet (32 bytes).
    public static func isZ85Key(_ s: String) -> Bool {
        let alphabet = Set("0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ.-:+=^!/*?&<>()[]{}@%$#")
        return s.count == 40 && s.allSatisfy(alphabet.contains)
    }

    /// Z85 text of a 32-byte binary key (ZAP hands the client's key over as bytes).
    static func z85(_ key: UnsafeRawBufferPointer) -> String? {
        guard key.count == 32, let base = key.baseAddress else { return nil }
        var out = [CChar](repeating: 0, count: 41)
        guard zmq_z85_encode(&out, base.assumingMemoryBound(to: UInt8.self), 32) != nil else { return nil }
        return String(cString: out)
    }
}

public struct CurveError: Error, CustomStringConvertible {
    public let description: String
    public init(_ d: String) { description = d }
}

/// How a socket takes part in CURVE: as the server of `domain` (the context's authenticator admits the
/// clients allowed there; libzmq would let every client in if no handler were bound, so a server role
/// needs one) or as a client pinning the server's public key.
public enum CurveRole: Sendable {
    case server(CurveKeyPair, domain: String, Authenticator)
    case client(CurveKeyPair, serverKey: String)
}

extension ZeroMQSocket {
    /// Turns CURVE on (before bind or connect).
    public func secure(_ role: CurveRole) throws {
        switch role {
        case .server(let keys, let domain, let authenticator):
            precondition(authenticator.context === context, "a CURVE server's authenticator serves its own context")
            try setOption(ZMQ_CURVE_SERVER, 1, "ZMQ_CURVE_SERVER")
            try setOption(ZMQ_CURVE_SECRETKEY, keys.secretKey, "ZMQ_CURVE_SECRETKEY")
            try setOption(ZMQ_ZAP_DOMAIN, domain, "ZMQ_ZAP_DOMAIN")
        case .client(let keys, let serverKey):
            try setOption(ZMQ_CURVE_SERVERKEY, serverKey, "ZMQ_CURVE_SERVERKEY")
            try setOption(ZMQ_CURVE_PUBLICKEY, keys.publicKey, "ZMQ_CURVE_PUBLICKEY")
            try setOption(ZMQ_CURVE_SECRETKEY, keys.secretKey, "ZMQ_CURVE_SECRETKEY")
        }
    }
}

/// libzmq's ZAP handler (RFC 27) for one context: a thread answering the context's CURVE servers
/// whether a client key may connect, from an allowlist per ZAP domain. Refusals are logged, a few
/// per second at most (a flood of them is itself worth one line).
public final class Authenticator: @unchecked Sendable {
    private let lock = NSLock()
    private var allowed: [String: Set<String>] = [:]
    private let socket: ZeroMQSocket
    let context: ZeroMQContext
    private let stopped = StopFlag()
    private let done = DispatchSemaphore(value: 0)

    /// Binds the context's ZAP endpoint (one authenticator per context) and starts answering.
    /// Refusals are logged (warnings) to `logger`, a few a second at most.
    public init(context: ZeroMQContext, logger: Logger) throws {
        self.context = context
        socket = try ZeroMQSocket(context, .rep, linger: .zero)
        try socket.bind("inproc://zeromq.zap.01")
        let socket = socket, stopped = stopped, done = done
        Thread { [unowned self] in
            defer { socket.close(); done.signal() }
            var limiter = RateLimiter(perSecond: 2)
            while !stopped.isSet {
                guard let frames = try? socket.receive(deadline: .now + .milliseconds(100)) else { continue }
                let (reply, refusal) = withExtendedLifetime(frames) { self.answer(frames) }
                try? socket.send(reply.map { Array($0.utf8) })
                if let refusal, let line = limiter.admit(refusal, now: ContinuousClock.now) { logger.warning("\(line)") }
            }
        }.start()
    }

    /// Admit exactly these public keys (Z85) to the servers of `domain`, replacing any earlier list.
    public func allow(_ keys: Set<String>, domain: String) {
        lock.lock(); defer { lock.unlock() }
        allowed[domain] = keys
    }

    /// Ends the thread and closes its socket (the context cannot terminate before).
    public func stop() {
        guard !stopped.isSet else { return }
        stopped.set()
        done.wait()
    }

    deinit { stop() }

    /// The six reply frames for one request, and a line to log when it is refused.
    private func answer(_ frames: [ZeroMQFrame]) -> ([String], String?) {
        func text(_ i: Int) -> String { i < frames.count ? String(decoding: frames[i].bytes, as: UTF8.self) : "" }
        let requestID = text(1)
        guard frames.count >= 7, text(0) == "1.0", text(5) == "CURVE", let key = CurveKeyPair.z85(frames[6].bytes) else {
            return (["1.0", requestID, "400", "not a CURVE request", "", ""], "refused a ZAP request that is not CURVE")
        }
        let domain = text(2), address = text(3)
        lock.lock()
        let ok = allowed[domain]?.contains(key) ?? false
        lock.unlock()
        if ok { return (["1.0", requestID, "200", "OK", key, ""], nil) }
        let what = domain == "ring" ? "a ring link" : "the job"
        return (
            ["1.0", requestID, "400", "this key is not admitted to \(what)", "", ""],
            "refused a connection from \(address.isEmpty ? "an unknown address" : address) to \(what): its CURVE key \(key.prefix(8))... is not admitted "
                + "(another cluster key, or not a member)"
        )
    }
}

/// At most `perSecond` lines a second; the lines dropped in between are counted into the next one.
public struct RateLimiter: Sendable {
    let perSecond: Int
    private var windowStart: ContinuousClock.Instant?
    private var inWindow = 0, dropped = 0
    public init(perSecond: Int) { self.perSecond = perSecond }

    public mutating func admit(_ line: String, now: ContinuousClock.Instant) -> String? {
        if windowStart == nil || now - windowStart! >= .seconds(1) { (windowStart, inWindow) = (now, 0) }
        guard inWindow < perSecond else { dropped += 1; return nil }
        inWindow += 1
        defer { dropped = 0 }
        return dropped == 0 ? line : "\(line) (\(dropped) more lines not shown)"
    }
}

/// A flag one thread sets and another polls (atomic loads and stores through CTetherKernels).
public final class StopFlag: @unchecked Sendable {
    private let value = UnsafeMutablePointer<Int>.allocate(capacity: 1)
    public init() { value.initialize(to: 0) }
    deinit { value.deallocate() }
    public var isSet: Bool { tether_pending_load(value) != 0 }
    public func set() { tether_pending_add(value, 1) }
}

/// A cluster key file: the secret key (and, for a reader's convenience, the public key) as Z85 lines.
/// Written with mode 0600; refused when other users may read it or anyone but its owner may change it.
///
///     # Tether cluster key (CURVE). Whoever holds this file may join the job: keep it secret.
///     public-key: <40 characters>
///     secret-key: <40 characters>
public enum KeyFile {
    /// Writes a new key file; an existing file is never overwritten.
    public static func write(_ keys: CurveKeyPair, to path: String) throws {
        let fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0o600)
        guard fd >= 0 else { throw CurveError("cannot create key file \(path): \(String(cString: strerror(errno)))") }
        defer { close(fd) }
        let text = text(keys)
        let written = text.utf8CString.withUnsafeBufferPointer { Foundation.write(fd, $0.baseAddress, $0.count - 1) }
        guard written == text.utf8.count, fsync(fd) == 0 else {
            throw CurveError("cannot write key file \(path): \(String(cString: strerror(errno)))")
        }
    }

    /// A key file's text.
    public static func text(_ keys: CurveKeyPair) -> String {
        "# Tether cluster key (CURVE). Whoever holds this file may join the job: keep it secret.\n"
            + "public-key: \(keys.publicKey)\nsecret-key: \(keys.secretKey)\n"
    }

    /// The key pair in `path`, after checking who may read it.
    public static func read(_ path: String) throws -> CurveKeyPair {
        var st = stat()
        guard stat(path, &st) == 0 else {
            throw CurveError("key file \(path): \(String(cString: strerror(errno))) (tether keygen FILE writes one)")
        }
        guard st.st_mode & S_IFMT == S_IFREG else { throw CurveError("key file \(path) is not a regular file") }
        guard st.st_mode & 0o027 == 0 else {
            throw CurveError(
                "key file \(path) has mode \(String(st.st_mode & 0o777, radix: 8)): other users may read or change it; chmod 600 \(path)")
        }
        guard st.st_size <= 4096, let text = try? String(contentsOfFile: path, encoding: .utf8) else {
            throw CurveError("key file \(path) is not a Tether key file (written by tether keygen)")
        }
        return try parse(text, source: "key file \(path)")
    }

    /// A key pair from a key file's text, or from the secret key alone (TETHER_KEY).
    public static func parse(_ text: String, source: String) throws -> CurveKeyPair {
        var secret: String?, publicKey: String?
        for raw in text.split(whereSeparator: \.isNewline) {
            let line = raw.trimmingCharacters(in: .whitespaces)
            if line.isEmpty || line.hasPrefix("#") { continue }
            if line.hasPrefix("secret-key:") {
                secret = line.dropFirst("secret-key:".count).trimmingCharacters(in: .whitespaces)
            } else if line.hasPrefix("public-key:") {
                publicKey = line.dropFirst("public-key:".count).trimmingCharacters(in: .whitespaces)
            } else if CurveKeyPair.isZ85Key(line) {
                secret = line
            } else {
                throw CurveError("\(source): unexpected line (expected \"secret-key: KEY\" and \"public-key: KEY\")")
            }
        }
        guard let secret else { throw CurveError("\(source) holds no secret-key line") }
        let keys: CurveKeyPair
        do { keys = try CurveKeyPair(secretKey: secret) } catch { throw CurveError("\(source): \(error)") }
        if let publicKey, publicKey != keys.publicKey {
            throw CurveError("\(source): its public key is not that of its secret key (the file was edited or damaged)")
        }
        return keys
    }
}
