import CZeroMQ

/// The ZeroMQ layer. This issue only links libzmq; sockets and transports come with the collectives.
public enum ZeroMQ {
    /// libzmq's version, e.g. "4.3.4".
    public static var version: String {
        var major: Int32 = 0, minor: Int32 = 0, patch: Int32 = 0
        zmq_version(&major, &minor, &patch)
        return "\(major).\(minor).\(patch)"
    }
}
