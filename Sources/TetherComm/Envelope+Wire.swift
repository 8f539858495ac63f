import CProtobufC
import Foundation
import TetherWire

/// The envelope every message travels in, as a Swift value; converted to and from the protobuf-c
/// generated `Tether__V1__Envelope` here and nowhere else.
public struct Envelope: Equatable, Sendable {
    public static let currentProtocolVersion = UInt32(TETHER__V1__PROTOCOL_VERSION__PROTOCOL_VERSION_CURRENT.rawValue)

    public var protocolVersion: UInt32 = Envelope.currentProtocolVersion
    public var jobID: String
    /// -1: the coordinator, or a worker before it has a rank
    public var senderRank: Int32
    public var body: Body?

    public enum Body: Equatable, Sendable {
        case hello(Hello)
    }

    public struct Hello: Equatable, Sendable {
        public var advertiseAddress: String
        public var tetherVersion: String
        public var threads: UInt32
        public init(advertiseAddress: String, tetherVersion: String, threads: UInt32) {
            (self.advertiseAddress, self.tetherVersion, self.threads) = (advertiseAddress, tetherVersion, threads)
        }
    }

    public init(jobID: String, senderRank: Int32, body: Body?) {
        (self.jobID, self.senderRank, self.body) = (jobID, senderRank, body)
    }
}

public enum WireFormat {
    public static var libraryVersion: String { String(cString: protobuf_c_version()) }
}

public struct WireError: Error, CustomStringConvertible, Equatable {
    public let message: String
    public var description: String { message }
}

extension Envelope {
    /// Serializes with protobuf-c.
    public func encoded() -> [UInt8] {
        var msg = Tether__V1__Envelope()
        tether__v1__envelope__init(&msg)
        msg.protocol_version = protocolVersion
        msg.sender_rank = senderRank
        return jobID.withCString { job in
            msg.job_id = UnsafeMutablePointer(mutating: job)
            var hello = Tether__V1__Hello()
            tether__v1__hello__init(&hello)
            func pack() -> [UInt8] {
                let size = tether__v1__envelope__get_packed_size(&msg)
                var out = [UInt8](repeating: 0, count: size)
                _ = out.withUnsafeMutableBufferPointer { tether__v1__envelope__pack(&msg, $0.baseAddress) }
                return out
            }
            switch body {
            case .none:
                return pack()
            case .hello(let h):
                return h.advertiseAddress.withCString { addr in h.tetherVersion.withCString { ver in
                    hello.advertise_address = UnsafeMutablePointer(mutating: addr)
                    hello.tether_version = UnsafeMutablePointer(mutating: ver)
                    hello.threads = h.threads
                    return withUnsafeMutablePointer(to: &hello) { hp in
                        msg.body_case = TETHER__V1__ENVELOPE__BODY_HELLO
                        msg.hello = hp
                        return pack()
                    }
                } }
            }
        }
    }

    /// Parses and validates: bytes protobuf-c cannot unpack, or another protocol version, are errors.
    public init(decoding bytes: [UInt8]) throws {
        guard let m = bytes.withUnsafeBufferPointer({ tether__v1__envelope__unpack(nil, $0.count, $0.baseAddress) }) else {
            throw WireError(message: "malformed envelope: \(bytes.count) bytes that do not parse as tether.v1.Envelope")
        }
        defer { tether__v1__envelope__free_unpacked(m, nil) }
        let env = m.pointee
        guard env.protocol_version == Envelope.currentProtocolVersion else {
            throw WireError(message: "protocol version \(env.protocol_version) from rank \(env.sender_rank), this build speaks \(Envelope.currentProtocolVersion)")
        }
        self.init(jobID: String(cString: env.job_id), senderRank: env.sender_rank, body: nil)
        if env.body_case == TETHER__V1__ENVELOPE__BODY_HELLO, let h = env.hello {
            body = .hello(Hello(advertiseAddress: String(cString: h.pointee.advertise_address),
                                tetherVersion: String(cString: h.pointee.tether_version), threads: h.pointee.threads))
        }
    }
}
