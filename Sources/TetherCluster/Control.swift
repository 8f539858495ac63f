import Foundation
import TetherComm

/// Envelopes over the control sockets: the coordinator's ROUTER (an identity frame, then the envelope,
/// then optional payload frames) and each worker's DEALERs (the envelope alone).
struct ControlChannel {
    let socket: ZeroMQSocket
    let jobID: String

    func send(_ body: Envelope.Body, from rank: Int, to identity: [UInt8]? = nil) throws {
        let bytes = Envelope(jobID: jobID, senderRank: Int32(rank), body: body).encoded()
        try bytes.withUnsafeBytes { env in
            if let identity {
                try identity.withUnsafeBytes { try socket.send([$0, env], wait: false) }
            } else {
                try socket.send([env], wait: false)
            }
        }
    }

    /// The next message before `deadline`, as (sender identity for a ROUTER, envelope); a message that
    /// does not parse or belongs to another job is an error naming what arrived.
    func receive(deadline: ContinuousClock.Instant) throws -> (identity: [UInt8]?, envelope: Envelope)? {
        guard let frames = try socket.receive(deadline: deadline) else { return nil }
        let router = socket.kind == .router
        guard frames.count == (router ? 2 : 1) else {
            throw ClusterError("a control message of \(frames.count) frames (expected \(router ? 2 : 1)): not from a Tether \(router ? "worker" : "coordinator")")
        }
        // The frames own the bytes: they must live until the copies are made (an optimized build would
        // otherwise free them right after the last mention, before Array copies out of the buffer).
        return try withExtendedLifetime(frames) {
            let env = try Envelope(decoding: frames.last!.bytes)
            guard env.jobID == jobID else { throw ClusterError("a message for job \"\(env.jobID)\" from rank \(env.senderRank); this is job \"\(jobID)\"") }
            return (router ? Array(frames[0].bytes) : nil, env)
        }
    }
}

public struct ClusterError: Error, CustomStringConvertible {
    public let description: String
    public init(_ d: String) { description = d }
}

/// Seconds on the monotonic clock since the process started (the state machines' time).
enum Clock {
    static let origin = ContinuousClock.now
    static var now: Double { let d = ContinuousClock.now - origin; return Double(d.components.seconds) + Double(d.components.attoseconds) * 1e-18 }
}
