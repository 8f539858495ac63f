import CTetherProcess
import CXXHash
import CZeroMQ
import Foundation
import TetherMessages

/// One rank's two links in a ring, as gloo separates a pair from the algorithm: a PULL socket bound at
/// its own address that only ring members may speak to, the left neighbour above all, and a PUSH
/// socket connected to the right neighbour's. A schedule that exchanges with other ranks
/// (halving-doubling, the tree) sends to them over PUSH sockets of their own (`Outlet`, made at first
/// use) and receives from them on the same PULL: what comes from a rank other than the one awaited
/// waits in `early` for its turn, in the order it came.
///
/// It sends a chunk (header and payload: copied, lent to libzmq in place, or a received payload passed
/// on) and receives one, checking every header field against what the schedule expects
/// (`ExpectedChunk.mismatch`) and, on a link that carries them, the payload's checksum, also while the
/// ring reduces a payload block by block (`read`), timing each part. It knows nothing of the
/// schedule's order nor of arithmetic. Towards a right neighbour listening on a unix socket, payloads
/// go through a shared-memory lane while it has a free slot (`SharedLane`), the headers through the
/// socket.
final class RingLink {
    let rank: Int, left: Int, right: Int
    let leftAddress: String, rightAddress: String
    let options: RingOptions
    var statistics = RingStatistics()
    private let pull: ZeroMQSocket, push: ZeroMQSocket
    private let lent = LentBuffers()
    private var scratch: UnsafeMutableRawPointer = .allocate(byteCount: 0, alignment: 64)
    private var scratchBytes = 0
    private var dropped = RateLimiter(perSecond: 2)
    /// XXH3 of a received payload and of the chunk made from it, taken block by block as they are used
    private let inputHash = StreamingChecksum(), outputHash = StreamingChecksum()
    /// Whether payloads from the left neighbour carry an XXH3 checksum to verify, and payloads to the
    /// right one need one (`checksummed`): the two links may differ, a ring mixing unix sockets and tcp.
    let verifiesChecksums: Bool, sendsChecksums: Bool
    /// The lane this rank sends into (made at init when the right neighbour's address is ipc://) and
    /// the one it receives from (opened at the first chunk that comes through it); slots used on each,
    /// and how many of the received ones the left neighbour has been told it may reuse.
    private var outLane: SharedLane?, inLane: SharedLane?
    private var outLaneUsed: UInt64 = 0, inLaneUsed: UInt64 = 0, inLaneReleased: UInt64 = 0
    /// a collective failed or the ring was abandoned: no chunk that names the outgoing lane will be read
    private var broken = false
    /// The AEADs of a secure ring's tcp links (`RingOptions.payloadProtection` .aead): the one that
    /// seals what goes to the right neighbour, the one that opens what comes from the left, and where
    /// an opened payload lies (valid until the next receive).
    private var sealing: LinkCipher?, opening: LinkCipher?
    private var plaintext: UnsafeMutableRawPointer = .allocate(byteCount: 64, alignment: 64)
    private var plaintextBytes = 64
    /// Every rank's address, and the links to ranks other than the right neighbour (halving-doubling).
    let addresses: [String]
    private let context: ZeroMQContext
    private var outlets: [Int: Outlet] = [:]
    /// The AEADs that open what ranks other than the left neighbour send (secure tcp rings).
    private var openings: [Int: LinkCipher] = [:]
    /// Messages from ranks other than the one awaited, by sender, in the order they came; their bytes.
    private var early: [Int: [(frames: [ZeroMQFrame], envelope: Envelope)]] = [:]
    private var earlyBytes = 0
    /// The rank whose message is being received and checked (errors name it).
    private var current: Int

    /// How often a waiting receive asks `RingOptions.abandon`.
    static let abandonPoll: Duration = .milliseconds(50)

    /// Binds this rank's address (`addresses[rank]`), runs `listening`, then connects to the right
    /// neighbour's. A re-formed ring binds the address the abandoned one just closed, which libzmq
    /// releases a moment later: a taken address is tried again for a second.
    init(context: ZeroMQContext, rank: Int, addresses: [String], options: RingOptions, listening: () throws -> Void) throws {
        let n = addresses.count
        (self.rank, left, right, self.options) = (rank, (rank + n - 1) % n, (rank + 1) % n, options)
        (self.addresses, self.context, current) = (addresses, context, (rank + n - 1) % n)
        (leftAddress, rightAddress) = (addresses[left], addresses[right])
        (verifiesChecksums, sendsChecksums) = (Self.checksummed(addresses[rank], options), Self.checksummed(rightAddress, options))
        _ = Self.keepChunkMemory
        pull = try ZeroMQSocket(context, .pull)
        push = try ZeroMQSocket(context, .push)
        // Every message on a link is one chunk header and at most one chunk.
        try pull.setMaxMessageSize(options.chunkBytes + 64 << 10)
        // A secure ring's tcp links carry payloads sealed by an AEAD whose keys only the two neighbours
        // can derive (`LinkCipher`), or run CURVE on the socket (`payloadProtection` .curve). A unix
        // socket is reachable only by this user (it lies in a private folder: the job's runtime folder,
        // checked by `AssignCheck`), who can read the cluster key anyway; its payloads mostly go through
        // the shared-memory lane, which no cipher covers.
        let ownSocket = Transport.ipcPath(addresses[rank]), rightSocket = Transport.ipcPath(rightAddress)
        if let curve = options.curve {
            // the cipher of the link from `sender` to `receiver`, whose other end holds `peer`'s key
            func cipher(_ peer: String, from sender: Int, to receiver: Int, sending: Bool) throws -> LinkCipher {
                try LinkCipher(
                    ownSecret: curve.keys.secretKey, peerPublic: peer, jobID: options.jobID, epoch: options.epoch, sender: sender,
                    receiver: receiver, sending: sending)
            }
            let aead = options.payloadProtection == .aead
            if ownSocket == nil, aead {
                opening = try cipher(curve.leftPublicKey, from: left, to: rank, sending: false)
            } else if ownSocket == nil {
                // every member's key where they are known: a halving-doubling partner connects here too
                curve.authenticator.allow(Set([curve.leftPublicKey] + curve.memberPublicKeys), domain: "ring")
                try pull.secure(.server(curve.keys, domain: "ring", curve.authenticator))
            }
            if rightSocket == nil, aead {
                sealing = try cipher(curve.rightPublicKey, from: rank, to: right, sending: true)
            } else if rightSocket == nil {
                try push.secure(.client(curve.keys, serverKey: curve.rightPublicKey))
            }
        }
        let bindDeadline = ContinuousClock.now + .seconds(1)
        while true {
            do { try pull.bind(addresses[rank]); break } catch let e as ZeroMQError
                where e.code == EADDRINUSE && ContinuousClock.now < bindDeadline
            {
                usleep(20_000)
            } catch {
                throw CollectiveError(message: "rank \(rank) cannot listen on \(addresses[rank]): \(error)")
            }
        }
        socketFile = ownSocket
        if let ownSocket { HostFiles.made(ownSocket) }
        try listening()
        try push.connect(rightAddress)
        try push.setSendTimeout(options.timeout)
        if options.laneSlots > 0, let rightSocket {
            outLane = SharedLane.create(forSocket: rightSocket, slots: options.laneSlots, slotBytes: options.chunkBytes)
        }
    }

    /// Whether the link into `address` carries checksums: only plaintext tcp, whose own 16-bit checksum
    /// lets corruption through. CURVE authenticates every message (a changed byte fails its MAC and
    /// libzmq drops the connection), and a unix socket or a shared-memory lane is memory this user's
    /// processes alone can touch: no wire to corrupt a byte on either (inproc, in tests, likewise).
    static func checksummed(_ address: String, _ options: RingOptions) -> Bool {
        options.curve == nil && Transport.ipcPath(address) == nil && !address.hasPrefix("inproc://")
    }

    /// libzmq allocates every message's buffer with malloc, and chunks (1 MB) are above glibc's mmap
    /// threshold: each one would be a fresh mapping, zero-filled page by page by the kernel and unmapped
    /// again (measured: 8% of an all-reduce in page faults). Raising the threshold and the trim limit
    /// lets the heap keep and reuse that memory. Process-wide, once.
    static let keepChunkMemory: Void = {
        tether_keep_heap_memory(32 << 20, 256 << 20)
    }()

    /// Messages still queued are delivered for a moment (the sockets' linger): a rank that ends its
    /// last collective first must not take its neighbour's last chunks with it.
    deinit {
        scratch.deallocate()
        plaintext.deallocate()
        push.close()
        pull.close()
        removeSocketFile()
        removeLaneName()
    }

    /// The unix socket this rank listens on (an ipc:// address), removed when the link closes.
    private var socketFile: String?
    private func removeSocketFile() {
        if let socketFile {
            unlink(socketFile)
            HostFiles.gone(socketFile)
        }
        socketFile = nil
    }

    /// Removes this rank's outgoing lane's name from /dev/shm, unless a chunk that names the lane may
    /// still be on its way and the receiver has not opened it yet (it unlinks the name when it does).
    private func removeLaneName() {
        guard let outLane, outLaneUsed == 0 || outLane.consumed > 0 || broken else { return }
        outLane.unlinkName()
    }

    /// Abandons the links at once (nothing queued is delivered): a re-formed ring binds the same address.
    func close() {
        broken = true
        try? push.setLinger(.zero)
        try? pull.setLinger(.zero)
        push.close()
        pull.close()
        for outlet in outlets.values {
            try? outlet.push.setLinger(.zero)
            outlet.push.close()
        }
        removeSocketFile()
        removeLaneName()
    }

    /// Waits until libzmq has let go of every buffer lent to it (the collective's last sends), and
    /// gives the left neighbour back the lane slots of the chunks this collective received.
    func finishSends() throws {
        releaseLane()
        guard lent.waitForAll(deadline: .now + options.timeout) else {
            let to = ([right] + outlets.keys.sorted()).map { "rank \($0) (\(addresses[$0]))" }.joined(separator: " or ")
            throw CollectiveError(
                message:
                    "rank \(rank): cannot send to \(to) within \(options.timeout): it did not take this rank's last \(lent.outstanding) messages"
            )
        }
    }

    /// After a failure: tells the right neighbour why (an Abort it passes on, so every rank reports the
    /// first cause), unless the ring was abandoned on purpose (every member is leaving it, and an Abort
    /// could reach the re-formed ring bound at the same address) or the neighbour is the origin.
    func giveUp(_ error: CollectiveError) {
        broken = true
        guard !error.abandoned else { return }
        // Best effort: the neighbour may be the one that is gone.
        let origin = error.abortOrigin ?? Int32(rank)
        // the right neighbour (unless the failure is its own), and any partner that may be waiting
        var links = origin == Int32(right) ? [] : [(push, sealing)]
        for (peer, outlet) in outlets.sorted(by: { $0.key < $1.key }) where Int32(peer) != origin {
            links.append((outlet.push, outlet.sealing))
        }
        guard !links.isEmpty else { return }
        let abort = Envelope(jobID: options.jobID, senderRank: Int32(rank), body: .abort(.init(originRank: origin, reason: error.message)))
        let bytes = abort.encoded()
        for (socket, sealing) in links {
            if let sealing {  // sealed like a chunk (an empty payload): a stranger cannot end a collective
                try? bytes.withUnsafeBytes { head in
                    try socket.send(header: head, filling: LinkCipher.overhead, wait: false) {
                        sealing.seal(UnsafeRawBufferPointer(start: nil, count: 0), header: head, into: $0)
                    }
                }
            } else {
                try? bytes.withUnsafeBytes { try socket.send([$0], wait: false) }
            }
            // Buffers lent to libzmq belong to the caller, who may free them once this throws: close
            // the socket (queued messages are dropped after a short linger) and wait until libzmq lets go.
            try? socket.setOption(ZMQ_LINGER, 200, "ZMQ_LINGER")
            socket.close()
        }
        _ = lent.waitForAll(deadline: .now + .seconds(2))
    }

    // MARK: sending

    /// A chunk's payload on its way out.
    enum Outgoing {
        /// libzmq copies it at once
        case copied(UnsafeRawBufferPointer)
        /// libzmq reads it in place, later; counted in `lent`. The checksum, if already taken while
        /// the chunk was made.
        case lent(UnsafeRawBufferPointer, checksum: UInt64?)
        /// a received payload passed on as it is, with the checksum it came with (verified, where the
        /// link it came over carries them; taken here otherwise, if the next one does)
        case forwarded(Payload, checksum: UInt64)
    }

    /// A received chunk's payload: a libzmq frame, or a slot of the lane from the left neighbour (valid
    /// until the next receive, which gives the slot back).
    struct Payload {
        let bytes: UnsafeRawBufferPointer
        /// owns `bytes` when they are a frame's
        fileprivate let frame: ZeroMQFrame?
        var count: Int { bytes.count }
    }

    /// Sends `base` at (ring step, chunk index, offset) with `payload`, its element count and checksum
    /// (0 on a link that carries none) filled in, to the right neighbour or to rank `peer`.
    func send(_ base: ChunkHeader, ringStep: Int, index: Int, offset: Int, _ payload: Outgoing, to peer: Int? = nil) throws {
        let t0 = ContinuousClock.now
        let outlet = try peer.flatMap { $0 == right ? nil : try self.outlet($0) }
        let (push, sealing, sendsChecksums) =
            outlet.map { ($0.push, $0.sealing, $0.sendsChecksums) } ?? (self.push, self.sealing, self.sendsChecksums)
        let to = peer ?? right
        var h = base
        (h.ringStep, h.chunkIndex, h.offset) = (UInt32(ringStep), UInt32(index), UInt64(offset))
        let bytes: UnsafeRawBufferPointer, known: UInt64?
        switch payload {
        case .copied(let b): (bytes, known) = (b, nil)
        case .lent(let b, let checksum): (bytes, known) = (b, checksum)
        case .forwarded(let p, let checksum): (bytes, known) = (p.bytes, verifiesChecksums ? checksum : nil)
        }
        h.checksum = sendsChecksums ? known ?? Self.checksum(bytes) : 0
        let count = bytes.count
        h.elementCount = UInt64(count / h.dtype.size)
        let t1 = ContinuousClock.now
        h.laneSlot = outlet == nil ? intoLane(bytes) : 0
        let envelope = Envelope(jobID: options.jobID, senderRank: Int32(rank), body: .chunk(h)).encoded()
        do {
            try envelope.withUnsafeBytes { head in
                switch payload {
                case _ where h.laneSlot != 0: try push.send([head, UnsafeRawBufferPointer(start: nil, count: 0)])
                case _ where sealing != nil:
                    let t = ContinuousClock.now
                    try push.send(header: head, filling: bytes.count + LinkCipher.overhead) { sealing!.seal(bytes, header: head, into: $0) }
                    statistics.sealing += t.duration(to: .now)
                case .copied(let bytes): try push.send([head, bytes])
                case .lent(let bytes, _): try push.send(header: head, lending: bytes, lent)
                case .forwarded(let p, _):
                    if let frame = p.frame { try push.send(header: head, forwarding: frame) } else { try push.send([head, p.bytes]) }
                }
            }
        } catch let e as ZeroMQError where e.code == EAGAIN {
            throw CollectiveError(
                message: "rank \(rank): cannot send to rank \(to) (\(addresses[to])) within \(options.timeout): it takes no messages")
        }
        statistics.checksumming += t0.duration(to: t1)
        statistics.sending += t1.duration(to: .now)
        statistics.bytesSent += count
        statistics.chunksSent += 1
        if h.laneSlot != 0 { statistics.laneBytesSent += count }
    }

    /// A link to a rank other than the right neighbour (a halving-doubling partner), protected as the
    /// ring's own: sealed by the AEAD of that pair of ranks, or under CURVE, on tcp; as it is on a unix
    /// socket. No lane: those go to the right neighbour only.
    final class Outlet {
        let push: ZeroMQSocket
        let sealing: LinkCipher?
        let sendsChecksums: Bool
        init(push: ZeroMQSocket, sealing: LinkCipher?, sendsChecksums: Bool) {
            (self.push, self.sealing, self.sendsChecksums) = (push, sealing, sendsChecksums)
        }
    }

    /// The link to `peer`, connected at its first use (every member listens once the ring has formed).
    private func outlet(_ peer: Int) throws -> Outlet {
        if let made = outlets[peer] { return made }
        guard peer != rank, addresses.indices.contains(peer) else {
            throw CollectiveError(message: "rank \(rank): no link to rank \(peer) in a ring of \(addresses.count)")
        }
        let address = addresses[peer], socket = try ZeroMQSocket(context, .push)
        var sealing: LinkCipher?
        if let curve = options.curve, Transport.ipcPath(address) == nil {
            guard let key = curve.publicKey(of: peer, in: addresses.count, from: rank) else {
                throw CollectiveError(message: "rank \(rank): no ring key for rank \(peer), so no secure link to it")
            }
            if options.payloadProtection == .aead {
                sealing = try LinkCipher(
                    ownSecret: curve.keys.secretKey, peerPublic: key, jobID: options.jobID, epoch: options.epoch, sender: rank,
                    receiver: peer, sending: true)
            } else {
                try socket.secure(.client(curve.keys, serverKey: key))
            }
        }
        try socket.connect(address)
        try socket.setSendTimeout(options.timeout)
        let made = Outlet(push: socket, sealing: sealing, sendsChecksums: Self.checksummed(address, options))
        outlets[peer] = made
        return made
    }

    /// Copies `bytes` into the lane's next slot if one is free and returns that slot's number (from 1);
    /// 0: they go over the socket.
    private func intoLane(_ bytes: UnsafeRawBufferPointer) -> UInt64 {
        guard let lane = outLane, let p = bytes.baseAddress, bytes.count > 0, bytes.count <= lane.slotBytes, laneHasRoom() == true
        else { return 0 }
        lane.slot(outLaneUsed).copyMemory(from: p, byteCount: bytes.count)
        outLaneUsed += 1
        return outLaneUsed
    }

    /// Maps the lane the left neighbour made into this rank's unix socket, if there is one (when its
    /// handshake arrives, which it sends after making the lane; `required`: a chunk names it).
    private func openLane(required: Bool) throws -> SharedLane? {
        guard let socketFile, options.laneSlots > 0 else { return nil }
        do {
            inLane = try SharedLane.open(forSocket: socketFile, slots: options.laneSlots, slotBytes: options.chunkBytes)
        } catch {
            if error.missing && !required { return nil }
            throw CollectiveError(message: "rank \(rank): cannot read rank \(left)'s shared-memory lane: \(error.reason)")
        }
        return inLane
    }

    /// Whether the next chunk would find a free lane slot (nil: this link has no lane). The count of
    /// slots the receiver is done with is its own to write: one ahead of what was sent ends the lane.
    func laneHasRoom() -> Bool? {
        guard let outLane else { return nil }
        let done = outLane.consumed
        guard done <= outLaneUsed else {
            self.outLane = nil
            return nil
        }
        return outLaneUsed - done < UInt64(outLane.slots)
    }

    /// Waits until the lane has a free slot: the right neighbour frees them as it receives, so only a
    /// caller that knows it is still receiving may wait (`Ring`'s first ring step).
    func waitForLaneRoom() throws {
        let deadline = ContinuousClock.now + options.timeout
        var polls = 0
        while laneHasRoom() == false {
            if let abandon = options.abandon, abandon() {
                throw CollectiveError(message: "rank \(rank): the ring was abandoned (waiting for a free lane slot)", abandoned: true)
            }
            guard ContinuousClock.now < deadline else {
                throw CollectiveError(
                    message:
                        "rank \(rank): rank \(right) (\(rightAddress)) took none of this rank's chunks from their shared-memory lane within \(options.timeout)"
                )
            }
            polls += 1
            if polls < 64 { sched_yield() } else { usleep(20) }
        }
    }

    /// Lets the left neighbour reuse the lane slots of every payload received so far.
    private func releaseLane() {
        guard let inLane, inLaneReleased != inLaneUsed else { return }
        inLane.consumed = inLaneUsed
        inLaneReleased = inLaneUsed
    }

    /// The payload of `h`, a chunk that came through the lane (`frame`, its payload frame, must be empty).
    private func fromLane(_ h: ChunkHeader, _ frame: ZeroMQFrame, _ what: String) throws -> Payload {
        guard h.laneSlot == inLaneUsed + 1 else { throw mismatch("shared-memory lane slot", "\(inLaneUsed + 1)", "\(h.laneSlot)") }
        guard frame.count == 0 else {
            throw CollectiveError(
                message:
                    "rank \(rank): \(what) from rank \(left) names lane slot \(h.laneSlot) and has a \(frame.count)-byte payload frame too")
        }
        guard let lane = try inLane ?? openLane(required: true) else {
            throw CollectiveError(
                message: "rank \(rank): rank \(left) sent \(what) through a shared-memory lane; this rank's link (\(leftAddress)) has none")
        }
        // the length is from the wire: multiplied only once it is known to fit the slot
        guard h.elementCount <= UInt64(lane.slotBytes / h.dtype.size) else {
            throw mismatch("payload length", "at most \(lane.slotBytes) bytes in a lane slot", "\(h.elementCount) \(h.dtype) elements")
        }
        let slot = lane.slot(inLaneUsed)
        inLaneUsed += 1
        return Payload(bytes: UnsafeRawBufferPointer(start: slot, count: Int(h.elementCount) * h.dtype.size), frame: nil)
    }

    static func checksum(_ bytes: UnsafeRawBufferPointer) -> UInt64 {
        guard let p = bytes.baseAddress, bytes.count > 0 else { return XXH3_64bits(nil, 0) }
        #if arch(x86_64)
            return XXH3_64bits_dispatch(p, bytes.count)
        #else
            return XXH3_64bits(p, bytes.count)
        #endif
    }

    // MARK: receiving

    /// The next message from the left neighbour (or from rank `sender`), checked against `e` in
    /// collective #`sequence`: its header, and its payload's checksum where the link carries them.
    /// `verifying: false` leaves that to `read`, which takes it as the reduction reads. The payload
    /// received before is given up (its lane slot may be reused).
    func receive(_ e: ExpectedChunk, sequence: UInt64, verifying: Bool = true, from sender: Int? = nil) throws -> (Payload, ChunkHeader) {
        releaseLane()
        let sender = sender ?? left
        current = sender
        // built only for an error message, not per chunk
        var what: String { "\(e.operation) #\(sequence) ring step \(e.ringStep) chunk \(e.chunkIndex)" }
        let t0 = ContinuousClock.now
        let (frames, envelope, opened) = try awaitMessage(from: sender, until: t0 + options.timeout, waitingFor: what)
        statistics.waiting += t0.duration(to: .now)
        let h = try chunkHeader(envelope, frames: frames.count, waitingFor: what)
        if h.operation == .handshake, inLane == nil { _ = try openLane(required: false) }
        let payload =
            if let opened { Payload(bytes: opened, frame: nil) } else if h.laneSlot == 0 {
                Payload(bytes: frames[1].bytes, frame: frames[1])
            } else if sender == left { try fromLane(h, frames[1], what) } else {
                throw CollectiveError(
                    message: "rank \(rank): \(what) from rank \(sender) names a shared-memory lane; only rank \(left) has one here")
            }
        try checkHeader(h, of: payload, against: e, sequence: sequence, waitingFor: what)
        if verifying && verifiesChecksums {
            let t2 = ContinuousClock.now
            let sum = Self.checksum(payload.bytes)
            statistics.checksumming += t2.duration(to: .now)
            try check(sum, h, e, sequence: sequence)
        }
        return (payload, h)
    }

    /// The next message rank `sender` sends, waited for until `deadline` (polling whether the ring is
    /// abandoned). Only ring members may speak: what cannot be a member's message (`notFromRing`) is
    /// dropped and reported, and the wait goes on: on an --insecure ring anyone may connect, and a
    /// stranger's bytes must not stop the job. A member's message that is not `sender`'s waits in
    /// `early` (up to `maxGatherBytes` in all), except an Abort, which ends the wait whoever sends it.
    /// On a sealed link only a message that opens counts (a forged, replayed or truncated one is dropped
    /// in the same way), and its opened payload comes back with it; one that opens past the next
    /// proves that the link lost or refused the ones between, and fails the collective.
    private func awaitMessage(
        from sender: Int, until deadline: ContinuousClock.Instant, waitingFor what: String
    ) throws -> ([ZeroMQFrame], Envelope, UnsafeRawBufferPointer?) {
        while true {
            let frames: [ZeroMQFrame], envelope: Envelope
            if let waiting = early[sender], let first = waiting.first {
                (frames, envelope) = first
                early[sender]!.removeFirst()
                earlyBytes -= frames.reduce(0) { $0 + $1.count }
            } else {
                if let abandon = options.abandon, abandon() {
                    throw CollectiveError(message: "rank \(rank): the ring was abandoned (waiting for \(what))", abandoned: true)
                }
                let slice = options.abandon == nil ? deadline : min(deadline, .now + Self.abandonPoll)
                guard let received = try pull.receive(deadline: slice) else {
                    if ContinuousClock.now < deadline { continue }
                    throw CollectiveError(
                        message:
                            "rank \(rank): no message from rank \(sender) (\(addresses[sender])) within \(options.timeout) (waiting for \(what))"
                    )
                }
                do { envelope = try withExtendedLifetime(received) { try Envelope(decoding: received[0].bytes) } } catch {
                    drop("a malformed message (\(error))", what)
                    continue
                }
                if let stranger = notFromRing(envelope) {
                    drop(stranger, what)
                    continue
                }
                frames = received
                let from = Int(envelope.senderRank)
                if from != sender {
                    if case .abort = envelope.body, early[from, default: []].isEmpty {
                        switch try open(frames, from: from, waitingFor: what) {
                        case .dropped: continue
                        case .plain: return (frames, envelope, nil)
                        case .opened(let bytes): return (frames, envelope, bytes)
                        }
                    }
                    let bytes = frames.reduce(0) { $0 + $1.count }
                    guard earlyBytes + bytes <= options.maxGatherBytes else {
                        throw CollectiveError(
                            message:
                                "rank \(rank): more than \(options.maxGatherBytes) bytes came from other ranks while it waited for rank \(sender) (\(what))"
                        )
                    }
                    early[from, default: []].append((frames, envelope))
                    earlyBytes += bytes
                    continue
                }
            }
            switch try open(frames, from: sender, waitingFor: what) {
            case .dropped: continue
            case .plain: return (frames, envelope, nil)
            case .opened(let bytes): return (frames, envelope, bytes)
            }
        }
    }

    enum Opening {
        /// the link is not sealed: the payload is the message's second frame
        case plain
        /// the payload, opened (valid until the next receive)
        case opened(UnsafeRawBufferPointer)
        /// it did not open, and was dropped and reported
        case dropped
    }

    /// A message from `sender`, opened where its link is sealed. A gap in the link's sequence fails the
    /// collective.
    private func open(_ frames: [ZeroMQFrame], from sender: Int, waitingFor what: String) throws -> Opening {
        guard let opening = try openingCipher(sender) else { return .plain }
        let link = "the sealed link from rank \(sender) (\(addresses[sender]))"
        guard frames.count == 2 else {
            drop("an unsealed message of \(frames.count) frame(s) on \(link)", what)
            return .dropped
        }
        let t = ContinuousClock.now
        defer { statistics.sealing += t.duration(to: .now) }
        let sealed = frames[1].bytes, count = max(0, sealed.count - LinkCipher.overhead)
        if plaintextBytes < count {
            plaintext.deallocate()
            (plaintext, plaintextBytes) = (.allocate(byteCount: count, alignment: 64), count)
        }
        do {
            try opening.open(sealed, header: frames[0].bytes, into: plaintext)
        } catch let refusal as LinkCipher.Refusal {
            switch refusal {
            case .gap(let expected, let found):
                throw CollectiveError(
                    message:
                        "rank \(rank): \(link) delivered message \(found) where \(expected) was next: the ones between were lost or refused (tampered) (waiting for \(what))"
                )
            case .replayed(let expected, let found):
                drop("a replayed message (\(found), where \(expected) is next) on \(link)", what)
            case .forged: drop("a message that fails authentication (a changed byte, or another link's key) on \(link)", what)
            case .truncated: drop("a sealed message shorter than its nonce and tag on \(link)", what)
            }
            return .dropped
        }
        return .opened(UnsafeRawBufferPointer(start: plaintext, count: count))
    }

    /// The AEAD that opens what `sender` sends here, nil where this rank's link is not sealed.
    private func openingCipher(_ sender: Int) throws -> LinkCipher? {
        guard let opening else { return nil }
        if sender == left { return opening }
        if let made = openings[sender] { return made }
        guard let curve = options.curve, let key = curve.publicKey(of: sender, in: addresses.count, from: rank) else {
            throw CollectiveError(message: "rank \(rank): no ring key for rank \(sender), so nothing it sends here can be opened")
        }
        let made = try LinkCipher(
            ownSecret: curve.keys.secretKey, peerPublic: key, jobID: options.jobID, epoch: options.epoch, sender: sender,
            receiver: rank, sending: false)
        openings[sender] = made
        return made
    }

    /// Why `envelope` cannot be a ring member's message to this rank, or nil when it can be.
    private func notFromRing(_ envelope: Envelope) -> String? {
        if envelope.jobID != options.jobID {
            return "a message for job \"\(envelope.jobID.prefix(64))\" (this ring runs job \"\(options.jobID)\")"
        }
        if options.allReduce == .ring, envelope.senderRank != Int32(left) {
            return "a message claiming to be from rank \(envelope.senderRank) (only rank \(left) sends here)"
        }
        if envelope.senderRank == Int32(rank) || !(0..<Int32(addresses.count)).contains(envelope.senderRank) {
            return "a message claiming to be from rank \(envelope.senderRank) (ranks 0..<\(addresses.count) other than \(rank) send here)"
        }
        if case .chunk(let h) = envelope.body, h.ringEpoch != options.epoch {
            return "a message of ring epoch \(h.ringEpoch) (this ring is epoch \(options.epoch))"
        }
        return nil
    }

    /// The chunk's header: an Abort from the neighbour ends the collective, and a chunk is a header
    /// and a payload frame.
    private func chunkHeader(_ envelope: Envelope, frames: Int, waitingFor what: String) throws -> ChunkHeader {
        if case .abort(let a) = envelope.body {
            throw CollectiveError(message: "rank \(rank): rank \(a.originRank) gave up on the ring: \(a.reason)", abortOrigin: a.originRank)
        }
        guard case .chunk(let h) = envelope.body else {
            throw CollectiveError(
                message: "rank \(rank): rank \(current) sent a message that is not a collective chunk (waiting for \(what))")
        }
        guard frames == 2 else {
            throw CollectiveError(
                message: "rank \(rank): \(what) from rank \(current) has \(frames) frames, expected a header and a payload")
        }
        return h
    }

    /// The header says what this rank expects (operation, sequence, step, chunk, layout, length).
    private func checkHeader(
        _ h: ChunkHeader, of payload: Payload, against e: ExpectedChunk, sequence: UInt64, waitingFor what: String
    ) throws {
        guard let m = e.mismatch(h, sequence: sequence, layoutFingerprint: options.layoutFingerprint, payloadBytes: payload.count) else {
            return
        }
        if m.field == "payload length" {
            throw CollectiveError(
                message:
                    "rank \(rank): truncated payload from rank \(current) in \(what): the header says \(h.elementCount) \(h.dtype) elements, the frame has \(payload.count) bytes"
            )
        }
        throw mismatch(m.field, m.expected, m.found)
    }

    private func check(_ sum: UInt64, _ h: ChunkHeader, _ e: ExpectedChunk, sequence: UInt64) throws {
        guard sum != h.checksum else { return }
        throw CollectiveError(
            message:
                "rank \(rank): corrupt payload from rank \(current) in \(e.operation) #\(sequence) ring step \(e.ringStep) chunk \(e.chunkIndex): checksum \(String(format: "%016llx", sum)), header says \(String(format: "%016llx", h.checksum))"
        )
    }

    /// The error for a field the rank whose message is being read disagrees on.
    func mismatch(_ field: String, _ here: String, _ there: String) -> CollectiveError {
        CollectiveError(
            message: "rank \(rank) and rank \(current) disagree on the \(field): \(here) on rank \(rank), \(there) from rank \(current)")
    }

    private func drop(_ message: String, _ waitingFor: String) {
        if let line = dropped.admit("rank \(rank): dropped \(message) on its ring link while waiting for \(waitingFor)", now: .now) {
            options.logger.warning("\(line)")
        }
    }

    // MARK: reading a payload

    /// A received payload (checked by `receive(_:verifying: false)` but for its checksum) read as
    /// `count` elements of X, `per` at a time: each block is hashed (where the left link carries
    /// checksums) just before `block(x, lower, n)` uses it, so it is read from memory once, and the
    /// bytes `block` returns for the next send are hashed too (when `hashingOutput` and the right link
    /// carries checksums). Returns that hash, or nil; the payload's checksum is verified at the end (on
    /// a bad one, whatever `block` wrote is garbage and the collective fails). The reduction (what
    /// `block` does) is the ring's (RingReduction.swift); the link only times it.
    func read<X>(
        _ payload: Payload, _ h: ChunkHeader, _ e: ExpectedChunk, sequence: UInt64, count: Int, of: X.Type, per: Int,
        hashingOutput: Bool, _ block: (UnsafePointer<X>, Int, Int) -> UnsafeRawBufferPointer?
    ) throws -> UInt64? {
        let (hashingInput, hashingOutput) = (verifiesChecksums, hashingOutput && sendsChecksums)
        guard count > 0 else {
            if hashingInput { try check(Self.checksum(payload.bytes), h, e, sequence: sequence) }
            return nil
        }
        let start = ContinuousClock.now
        // A frame owns the bytes x points into: keep it alive until they are read.
        let made: UInt64? = withExtendedLifetime(payload) {
            let x = aligned(payload.bytes, as: X.self)
            if hashingInput { inputHash.reset() }
            if hashingOutput { outputHash.reset() }
            for lower in stride(from: 0, to: count, by: per) {
                let n = min(per, count - lower)
                if hashingInput { inputHash.update(x + lower, n * MemoryLayout<X>.stride) }
                if let made = block(x, lower, n), hashingOutput, let p = made.baseAddress { outputHash.update(p, made.count) }
            }
            return hashingOutput ? outputHash.digest() : nil
        }
        statistics.reducing += start.duration(to: .now)
        if hashingInput { try check(inputHash.digest(), h, e, sequence: sequence) }
        return made
    }

    /// The payload as T elements: libzmq's buffers are malloc'd (aligned), except very small messages,
    /// which live inside the message struct and are copied out first.
    private func aligned<T>(_ payload: UnsafeRawBufferPointer, as: T.Type) -> UnsafePointer<T> {
        let p = payload.baseAddress!
        if Int(bitPattern: p) % MemoryLayout<T>.alignment == 0 { return p.assumingMemoryBound(to: T.self) }
        if scratchBytes < payload.count {
            scratch.deallocate()
            scratch = .allocate(byteCount: payload.count, alignment: 64)
            scratchBytes = payload.count
        }
        scratch.copyMemory(from: p, byteCount: payload.count)
        return UnsafePointer(scratch.assumingMemoryBound(to: T.self))
    }
}
