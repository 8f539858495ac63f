public struct CollectiveError: Error, CustomStringConvertible, Equatable {
    public let message: String
    /// When this error relays another rank's Abort: the rank that gave up first.
    public let abortOrigin: Int32?
    /// The ring was given up on purpose (`RingOptions.abandon`), not for a fault of its own.
    public var abandoned = false
    public init(message: String, abortOrigin: Int32? = nil, abandoned: Bool = false) {
        (self.message, self.abortOrigin, self.abandoned) = (message, abortOrigin, abandoned)
    }
    public var description: String { message }
}

/// Where the time of the collectives went, summed since the ring was made.
public struct RingStatistics: Sendable, Codable {
    /// waiting for the left neighbour's next message (transfer, and the neighbour's own work)
    public var waiting: Duration = .zero
    /// encoding headers and handing frames to libzmq (zero-copy, except all-gather's own payload)
    public var sending: Duration = .zero
    /// adding received chunks into the buffer, or copying them in (all-gather, broadcast), with their
    /// checksums and the reduced chunk's (taken in the same pass)
    public var reducing: Duration = .zero
    /// XXH3 of payloads sent as they are (a rank's own first chunks) and received as bytes (all-gather
    /// of payloads, barrier)
    public var checksumming: Duration = .zero
    /// sealing payloads for the right neighbour and opening the left one's (AEAD links)
    public var sealing: Duration = .zero
    /// payload bytes handed to the right neighbour (headers not counted)
    public var bytesSent = 0
    /// of those, the bytes that went through a shared-memory lane (same-host links)
    public var laneBytesSent = 0
    /// messages sent (chunks with their headers, and the headers alone of empty ones)
    public var chunksSent = 0
    public init() {}

    /// The time spent between two snapshots.
    public static func - (a: RingStatistics, b: RingStatistics) -> RingStatistics {
        var d = RingStatistics()
        (d.waiting, d.sending) = (a.waiting - b.waiting, a.sending - b.sending)
        (d.reducing, d.checksumming) = (a.reducing - b.reducing, a.checksumming - b.checksumming)
        d.sealing = a.sealing - b.sealing
        (d.bytesSent, d.laneBytesSent) = (a.bytesSent - b.bytesSent, a.laneBytesSent - b.laneBytesSent)
        d.chunksSent = a.chunksSent - b.chunksSent
        return d
    }

    public static func += (a: inout RingStatistics, b: RingStatistics) {
        (a.waiting, a.sending) = (a.waiting + b.waiting, a.sending + b.sending)
        (a.reducing, a.checksumming) = (a.reducing + b.reducing, a.checksumming + b.checksumming)
        a.sealing = a.sealing + b.sealing
        (a.bytesSent, a.laneBytesSent) = (a.bytesSent + b.bytesSent, a.laneBytesSent + b.laneBytesSent)
        a.chunksSent += b.chunksSent
    }
}
