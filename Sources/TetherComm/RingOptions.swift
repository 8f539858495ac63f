import Foundation
import Logging

public struct RingOptions: Sendable {
    /// Messages for another job are foreign and refused.
    public var jobID = "tether"
    /// The longest any receive waits before the ring fails naming the silent neighbour.
    public var timeout: Duration = .seconds(30)
    /// Bytes per chunk: the unit of pipelining (measured: docs/ARCHITECTURE.md).
    public var chunkBytes = 1 << 20
    /// Bytes per chunk of an exchange with a partner (halving-doubling, recursive doubling, the tree),
    /// at most `chunkBytes`: its steps are few and large (half the buffer first), and a step cut finer
    /// overlaps its sealing, sending and adding. Measured on 8 emulated hosts: halving-doubling at
    /// 1 MiB took 27.6 ms with 1 ms of latency against 35.6 in 1 MiB chunks, 15.6 against 16.2 without
    /// (docs/ARCHITECTURE.md). Every rank must use the same.
    public var exchangeChunkBytes = 128 << 10
    /// An all-reduce of at most this many bytes (and at most one chunk) gathers every rank's whole
    /// buffer and sums it on each rank (`Ring.gatherSum`): N-1 hops instead of 2(N-1), for buffers
    /// whose time is the hops' (measured: docs/ARCHITECTURE.md). 0: always the ring schedule.
    public var gatherSumBytes = 32 << 10
    /// How an all-reduce moves (a 16-bit wire takes the ring unless halving-doubling is asked for or
    /// chosen by size; broadcasts and gathers always take it). Every rank must use the same. A job's
    /// default is `.bySize`; a bare ring's is the ring, the schedule its own tests are about.
    public var allReduce: AllReduceAlgorithm = .ring
    /// The links `.bySize` chooses for (`CollectiveCost.bySize`); nil: measured when the ring forms
    /// where a link is tcp, the nominal link within one host. Every rank must use the same.
    public var link: CollectiveCost?
    /// Slots (of `chunkBytes` each) of the shared-memory lane a rank sends into when its right
    /// neighbour listens on an ipc:// address (`SharedLane`): chunks skip the socket's two copies while
    /// a slot is free. A rank's own first chunks of an all-reduce (its whole segment) leave at once, so
    /// fewer slots than a segment has chunks send the rest over the socket (measured:
    /// docs/ARCHITECTURE.md). 0: no lanes. Neighbours must agree on it and on `chunkBytes`.
    public var laneSlots = 32
    /// Hash of the parameter layout; ranks that disagree fail at the first message.
    public var layoutFingerprint: UInt64 = 0
    /// The members' CURVE keys (nil: plaintext, any peer may connect): tcp links sealed by an AEAD
    /// with keys derived from them, or under CURVE itself (`payloadProtection`).
    public var curve: RingCurve?
    public var payloadProtection: RingPayloadProtection = .aead
    /// The largest payload an all-gather accepts from one rank (sparse gradient rows, replica state).
    public var maxGatherBytes = 1 << 30
    /// The forming of the ring (elastic in place: 1, 2, ... after each re-formation): in every header;
    /// a message of another epoch (a late one of an earlier ring) is dropped, never summed.
    public var epoch: UInt32 = 0
    /// Asked while a collective waits (every `abandonPoll`): true when the ring is to be given up (the
    /// coordinator re-forms it); the collective then fails with an `abandoned` error.
    public var abandon: (@Sendable () -> Bool)?
    /// Where messages that were dropped (malformed, foreign, from a rank other than the left
    /// neighbour) are reported (as warnings), a few a second at most.
    public var logger = Logger(label: "ring")
    public init() {}
}

/// The schedule of an all-reduce (docs/ARCHITECTURE.md, "Halving-doubling").
public enum AllReduceAlgorithm: String, CaseIterable, Sendable {
    /// reduce-scatter then all-gather around the ring, 2(N-1) steps (`Ring.gatherSum` for small buffers)
    case ring
    /// recursive halving then doubling with partners across the ring, 2 log2(P) steps (`HalvingDoubling`)
    case halvingDoubling = "halving-doubling"
    /// whole vectors exchanged and added with partners across the ring, log2(P) steps
    /// (`RecursiveDoubling`)
    case recursiveDoubling = "recursive-doubling"
    /// reduced up a binomial tree to rank 0 and copied down, 2 ceil(log2 N) steps of the whole buffer
    /// (`BinomialTree`)
    case tree
    /// per buffer, by its size, the ring's and the links' (`CollectiveCost.bySize`: a rule of the
    /// three, the links' latency x bandwidth taken on a grid of powers of two, so a job on the same
    /// links takes the same schedules on every run and ends with the same bits). A job's default.
    case bySize = "by-size"
    /// per buffer size, the fastest when timed on the first all-reduces of that size, among the
    /// schedules `Ring.candidates` leaves in (every one for a buffer of one chunk or less; the
    /// latency-bandwidth model of the links measured when the ring forms otherwise); the choice can
    /// differ between runs
    case auto
}

/// A rank's ring keys: its own pair (its link's server key and its client key towards the right
/// neighbour), its neighbours' public keys and, for schedules that exchange with any rank
/// (halving-doubling), every member's by rank. Its link admits only the keys it knows.
public struct RingCurve: Sendable {
    public var keys: CurveKeyPair
    public var leftPublicKey: String, rightPublicKey: String
    /// Every member's public key, by rank (empty: only the neighbours' are known).
    public var memberPublicKeys: [String]
    public var authenticator: Authenticator
    public init(
        keys: CurveKeyPair, leftPublicKey: String, rightPublicKey: String, memberPublicKeys: [String] = [], authenticator: Authenticator
    ) {
        (self.keys, self.leftPublicKey, self.rightPublicKey) = (keys, leftPublicKey, rightPublicKey)
        (self.memberPublicKeys, self.authenticator) = (memberPublicKeys, authenticator)
    }

    /// Rank `peer`'s public key in a ring of `size`, seen from rank `rank`, where it is known.
    func publicKey(of peer: Int, in size: Int, from rank: Int) -> String? {
        if memberPublicKeys.count == size { return memberPublicKeys[peer] }
        if peer == (rank + size - 1) % size { return leftPublicKey }
        if peer == (rank + 1) % size { return rightPublicKey }
        return nil
    }
}
