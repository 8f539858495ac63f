import Foundation
import TetherComm
import TetherMessages

/// How a job's processes authenticate and encrypt: CURVE with the cluster key (the default), or
/// nothing at all (`--insecure`, which says what it exposes).
///
/// - The coordinator's control socket is a CURVE server with the cluster key; its authenticator admits
///   only clients presenting the cluster key, so a process without the key file learns nothing and
///   can send nothing (it never gets past the handshake).
/// - Workers are CURVE clients with the same key, pinning the coordinator's public key: a coordinator
///   without the key cannot complete the handshake either.
/// - Ring links use keys made anew for each forming of the ring and handed out in Assign, over the
///   encrypted control channel: rank r's link is a CURVE server with rank r's key and admits only rank
///   r-1's public key.
public enum ClusterSecurity: Sendable {
    case insecure
    case curve(CurveKeyPair)

    /// The ZAP domains of the two kinds of server socket.
    static let controlDomain = "control", ringDomain = "ring"

    /// What running without security exposes, for the warning `--insecure` logs.
    public static let insecureWarning =
        "running --insecure: no encryption and no authentication. Anyone who can reach these ports can "
        + "read the job's configuration, parameters and data, join it, send it messages and stop it. Use it only on a network you trust entirely."

    public var keys: CurveKeyPair? { if case .curve(let k) = self { return k }; return nil }
}

/// Connection limits for the control plane.
public enum ControlLimits {
    /// A worker's heartbeat socket receives only small messages.
    static let heartbeatMessageBytes = 64 << 10
    /// The largest message a worker takes on its control socket: Assign (with the resume checkpoint)
    /// and served rows. The coordinator is authenticated; this bounds what a misbehaving one can cost.
    public static var workerMessageBytes = 2 << 30
    /// Messages queued at the coordinator for one connection that does not read them: past this, what
    /// it is sent is dropped (ZMQ_SNDHWM; served rows are at most a few MB a message).
    static let queuedMessages: Int32 = 16
    /// Messages a worker's sockets to the coordinator queue each way: far more than a job has in flight
    /// (a report a step, a heartbeat every half second), so only a coordinator that stops reading or
    /// floods the worker reaches it (the worker's sends then wait, within its time-out, and fail).
    static let workerQueuedMessages: Int32 = 1000
    /// A member whose queue stays full this long is lost as a dead one is.
    static let unreadTimeout = 10.0
    /// A member's heartbeat connection gone this long (it was connected): its process has ended.
    static let goneTimeout = 1.0
    /// Messages received and not yet read, per connection (ZMQ_RCVHWM): past this, libzmq stops reading
    /// from that connection (TCP pushes back on the sender; the others are unaffected).
    static let receivedMessages: Int32 = 1024
    /// The largest encoded body of each kind the coordinator takes, checked before it is decoded (a
    /// Hello's strings, a DataRequest's rows): what a peer sends cannot size an allocation beyond these.
    /// CheckpointData is bounded by the socket's message size alone (it carries the model).
    static func bodyBytes(_ field: Envelope.BodyField) -> Int {
        switch field {
        case .checkpoint: Int.max
        case .dataRequest: 64 + 10 * DataServing.rowsPerRequest
        case .hello: 4096
        default: 64 << 10
        }
    }
    /// Refuses an encoded envelope with a field larger than its bound, before it is decoded: the job
    /// id and any field of another number (unknown to this build) at 1 KiB and 64 KiB.
    public static func checkSizes(_ bytes: UnsafeRawBufferPointer) throws {
        guard let sizes = Envelope.fieldSizes(bytes) else {
            throw ClusterError("malformed envelope: \(bytes.count) bytes whose protobuf framing does not parse")
        }
        for (field, size) in sizes {
            let body = Envelope.BodyField(rawValue: field)
            let bound = body.map(bodyBytes) ?? (field == 2 ? 1024 : 64 << 10)
            guard size <= bound else {
                throw ClusterError(
                    "a message whose \(body.map { "\($0)" } ?? "field \(field)") takes \(size) bytes; at most \(bound) are taken")
            }
        }
    }
    /// Hosts and thread counts the coordinator keeps of workers' Hellos (by address).
    static let helloRecords = 4096
    /// A connection that has not finished its handshake after this long is dropped.
    static let handshakeInterval: Duration = .seconds(5)

    /// Raises the soft open-files limit to the hard one: every connection is a descriptor, and the
    /// usual soft limit of 1,024 lets idle connections lock real workers out.
    public static func raiseOpenFilesLimit() {
        var limit = rlimit()
        guard getrlimit(__rlimit_resource_t(RLIMIT_NOFILE.rawValue), &limit) == 0, limit.rlim_cur < limit.rlim_max else { return }
        limit.rlim_cur = limit.rlim_max
        _ = setrlimit(__rlimit_resource_t(RLIMIT_NOFILE.rawValue), &limit)
    }
}
