import Foundation
import TetherComm
import TetherMessages

/// Envelopes over the control sockets: the coordinator's ROUTER (an identity frame, then the envelope,
/// then optional payload frames) and each worker's DEALERs (the envelope alone).
struct ControlChannel {
    let socket: ZeroMQSocket
    let jobID: String

    /// `job` overrides the channel's job id (a refusal is addressed to the job the worker asked for).
    func send(_ body: Envelope.Body, from rank: Int, to identity: [UInt8]? = nil, job: String? = nil) throws {
        let bytes = Envelope(jobID: job ?? jobID, senderRank: Int32(rank), body: body).encoded()
        try bytes.withUnsafeBytes { env in
            if let identity {
                try identity.withUnsafeBytes { try socket.send([$0, env], wait: false) }
            } else {
                try socket.send([env], wait: false)
            }
        }
    }

    /// A worker's fresh connection to the coordinator at `endpoint`, for the next job: one that lived
    /// through a partition may wait out TCP's retransmission backoff (seconds, doubling during the
    /// outage) before the first Hello goes out. What the old one still holds for the old job is
    /// dropped (linger 0): lingering, libzmq reconnects it and delivers it after this worker holds a
    /// rank in the next job (a chaos run: a stale checkpoint failed the new job). The coordinator's
    /// ROUTER hands the worker's identity over to the new connection (ZMQ_ROUTER_HANDOVER).
    func reconnect(_ endpoint: String) throws {
        try socket.setLinger(.zero)
        try? socket.disconnect(endpoint)
        try socket.setLinger(.seconds(1))
        try socket.connect(endpoint)
    }

    /// The next message before `deadline`, as (sender identity for a ROUTER, envelope); a message that
    /// does not parse, or (unless `anyJob`) belongs to another job, is an error naming what arrived.
    func receive(deadline: ContinuousClock.Instant, anyJob: Bool = false) throws -> (identity: [UInt8]?, envelope: Envelope)? {
        guard let frames = try socket.receive(deadline: deadline) else { return nil }
        let router = socket.kind == .router
        guard frames.count == (router ? 2 : 1) else {
            throw ClusterError(
                "a control message of \(frames.count) frames (expected \(router ? 2 : 1)): not from a Tether \(router ? "worker" : "coordinator")"
            )
        }
        // The frames own the bytes: they must live until the copies are made (an optimized build would
        // otherwise free them right after the last mention, before Array copies out of the buffer).
        return try withExtendedLifetime(frames) {
            if router { try ControlLimits.checkSizes(frames.last!.bytes) }
            let env = try Envelope(decoding: frames.last!.bytes)
            guard anyJob || env.jobID == jobID else {
                throw ClusterError("a message for job \"\(env.jobID)\" from rank \(env.senderRank); this is job \"\(jobID)\"")
            }
            return (router ? Array(frames[0].bytes) : nil, env)
        }
    }
}

/// The monitor events a server logs: handshakes that failed.
enum ZMQEvents {
    static let handshakeFailures: Int32 = 0x0800 | 0x2000 | 0x4000  // ZMQ_EVENT_HANDSHAKE_FAILED_NO_DETAIL, _PROTOCOL, _AUTH
    static let connection: Int32 = 0x0001 | 0x1000 | 0x0200  // ZMQ_EVENT_CONNECTED, _HANDSHAKE_SUCCEEDED, _DISCONNECTED
}

extension Envelope.Body {
    /// The message's name in logs.
    var name: String {
        switch self {
        case .hello: "Hello"
        case .chunk: "collective chunk"
        case .abort: "Abort"
        case .assign: "Assign"
        case .ready: "Ready"
        case .start: "Start"
        case .stepReport: "StepReport"
        case .evalReport: "EvalReport"
        case .checkpoint: "CheckpointData"
        case .heartbeat: "Heartbeat"
        case .finish: "Finish"
        case .unassigned: "Unassigned"
        case .dataRequest: "DataRequest"
        case .dataRows: "DataRows"
        case .stop: "Stop"
        case .reform: "Reform"
        }
    }
}

/// A job stopped gracefully before its end (a signal): its checkpoint is written; the process exits
/// with `status` (128 + the signal).
public struct JobInterrupted: Error, CustomStringConvertible {
    public let description: String
    public let status: Int32
}

public struct ClusterError: Error, CustomStringConvertible {
    public let description: String
    public init(_ d: String) { description = d }
}

/// Seconds on the monotonic clock since the process started (the state machines' time).
enum Clock {
    static let origin = ContinuousClock.now
    static var now: Double {
        (ContinuousClock.now - origin).seconds
    }
}

/// The routing identities of a worker's two DEALERs: the control socket's and, with the same 15 random
/// bytes after another first byte, the heartbeat socket's. The coordinator binds a rank to the control
/// identity when it assigns it and knows the heartbeat one from it, whatever a message claims.
public enum ControlIdentity {
    public static let control: [UInt8] = [0x57], heartbeatMark: UInt8 = 0x48
    public static func heartbeat(of control: [UInt8]) -> [UInt8] { [heartbeatMark] + control.dropFirst() }
    /// The control identity a heartbeat identity belongs to (itself for any other).
    public static func member(of identity: [UInt8]) -> [UInt8] {
        identity.first == heartbeatMark ? Self.control + identity.dropFirst() : identity
    }
}

/// What a joining worker makes of its control socket's connection events: nothing answering at the
/// coordinator's address, or a CURVE handshake that fails (a key the coordinator does not admit, or
/// one side --insecure). Pure, so each verdict is tested without sockets.
struct JoinDiagnosis {
    enum Verdict: Equatable { case say(String), refused(String) }
    let coordinator: String
    let secure: Bool
    private var connected = false, handshaken = false, retries = 0
    private var failure: String?
    private var said: Set<String> = []

    init(coordinator: String, secure: Bool) { (self.coordinator, self.secure) = (coordinator, secure) }

    mutating func record(_ e: ZeroMQMonitor.Event) {
        if e.connected { connected = true }
        if e.connectRetried { retries += 1 }
        if e.handshakeSucceeded { handshaken = true; failure = nil }
        if e.authenticationRefused {
            failure =
                "the coordinator at \(coordinator) refused this worker's key (status \(e.value)): it runs with another cluster key; "
                + "give this worker the job's key file (--key-file)"
        } else if e.handshakeFailed || (e.disconnected && connected && !handshaken) {
            failure =
                "the handshake with the coordinator at \(coordinator) failed: "
                + (secure
                    ? "it holds another cluster key, or runs --insecure (this worker runs with CURVE)"
                    : "it runs with CURVE and this worker runs --insecure; give this worker the job's key file (--key-file)")
        }
    }

    /// A refusal ends the wait; otherwise a line to log once (nil: nothing new to say).
    mutating func verdict(waited seconds: Double) -> Verdict? {
        if let failure { return .refused(failure) }
        if !connected, retries > 0 || seconds >= 2, said.insert("nothing").inserted {
            return .say("nothing answers at \(coordinator) yet (is the coordinator running, and is this its address?); still trying")
        }
        if handshaken, seconds >= 5, said.insert("quiet").inserted {
            return .say(
                "connected to the coordinator at \(coordinator), no assignment yet (the job may be forming, or have formed without this worker)"
            )
        }
        return nil
    }

    var summary: String? { failure ?? (connected ? nil : "nothing answered at \(coordinator)") }
}
