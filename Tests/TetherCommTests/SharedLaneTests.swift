import Foundation
import Testing
@testable import TetherComm
import TetherMessages
import TetherProcess

/// Same-host links: payloads through a shared-memory lane beside the unix socket (`SharedLane`).
@Suite(.serialized) struct SharedLaneTests {
    /// Lanes a test made, kept alive until it ends.
    final class Made: @unchecked Sendable {
        private let lock = NSLock()
        private var lanes: [SharedLane] = []
        func add(_ lane: SharedLane) { lock.withLock { lanes.append(lane) } }
    }

    /// What a 3-rank ring over ipc ends with after an all-reduce (ring schedule and gathered), a
    /// 16-bit all-reduce, a broadcast and an all-gather, and what each rank sent through its lane.
    func collectives(laneSlots: Int) throws -> (results: [[Float]], laneBytes: [Int], sent: [Int], addresses: [String]) {
        let ring = try TestRing(3, .ipc)
        let results = onRanks(3) { rank -> ([Float], Int, Int) in
            let r = try ring.ring(rank) { ($0.chunkBytes, $0.laneSlots) = (4096, laneSlots) }
            var big = input(rank: rank, count: 70_001), small = input(rank: rank, count: 100)
            var narrow = input(rank: rank, count: 30_011), root = input(rank: rank, count: 5_003)
            _ = try big.withUnsafeMutableBufferPointer { try r.allReduce($0) }
            _ = try small.withUnsafeMutableBufferPointer { try r.allReduce($0) }
            _ = try narrow.withUnsafeMutableBufferPointer { try r.allReduce($0, wire: .f16) }
            try root.withUnsafeMutableBufferPointer { try r.broadcast($0, root: 2) }
            let gathered = try r.allGather([UInt8](repeating: UInt8(rank), count: 10_000 * (rank + 1)))
            let lengths = gathered.map { Float($0.count) + Float($0.reduce(0) { $0 + Int($1) }) }
            return (big + small + narrow + root + lengths, r.statistics.laneBytesSent, r.statistics.bytesSent)
        }
        let all = try results.map { try $0.get() }
        return (all.map(\.0), all.map(\.1), all.map(\.2), ring.addresses)
    }

    /// Through the lane or through the socket, every collective ends with the same bits on every rank;
    /// with lanes every rank sends through its lane (the first chunks of a step may burst past the free
    /// slots and take the socket: both ways mix in one collective), without, none does. Afterwards no
    /// lane file is left in /dev/shm.
    @Test func lanesCarryPayloadsWithTheSameResultsAndLeaveNothingBehind() throws {
        let lanes = try collectives(laneSlots: 8), sockets = try collectives(laneSlots: 0)
        for r in 0..<3 {
            #expect(lanes.results[r].map(\.bitPattern) == lanes.results[0].map(\.bitPattern), "rank \(r) differs from rank 0")
            #expect(lanes.results[r].map(\.bitPattern) == sockets.results[r].map(\.bitPattern), "rank \(r): lanes changed the result")
            #expect(lanes.laneBytes[r] > 0 && lanes.laneBytes[r] <= lanes.sent[r], "rank \(r) sent \(lanes.laneBytes[r]) bytes by its lane")
            #expect(sockets.laneBytes[r] == 0)
        }
        for address in lanes.addresses {
            let lane = SharedLane.path(forSocket: Transport.ipcPath(address)!)
            #expect(!FileManager.default.fileExists(atPath: lane), "\(lane) was left behind")
        }
    }

    /// Rank 0 of a 2-ring over ipc whose left neighbour is hand-driven: the lane headers it may send.
    func refusal(_ feed: @escaping @Sendable (RingFaultTests.FakeNeighbour, String) throws -> Void) throws -> String {
        let ring = try TestRing(2, .ipc)
        let socket = Transport.ipcPath(ring.addresses[0])!
        defer { unlink(SharedLane.path(forSocket: socket)) }
        return try RingFaultTests().rank0AllReduce(ring) { fake in try feed(fake, socket) }
    }

    /// A lane chunk's header is checked like any other before its slot is read: out of order, longer
    /// than a slot, with a payload frame as well, or naming a lane that is missing, another shape or
    /// not private, it fails the collective with the reason.
    @Test func aLaneChunkThatCannotBeRightIsRefused() throws {
        let chunk = RingOptions().chunkBytes, slots = RingOptions().laneSlots
        // each lane stays alive (and locked) to the end: a maker's lane is swept once it is gone
        let made = Made()
        let lane = { (socket: String, slots: Int) in
            made.add(try #require(SharedLane.create(forSocket: socket, slots: slots, slotBytes: chunk)))
        }
        @Sendable func header(_ fake: RingFaultTests.FakeNeighbour, slot: UInt64, count: Int = 4) -> ChunkHeader {
            var h = fake.header(.allReduce, sequence: 1, total: 8, offset: 4, count: count)
            h.laneSlot = slot
            return h
        }
        var e = try refusal { fake, socket in
            try lane(socket, slots)
            try fake.send(header(fake, slot: 2), payload: [])
        }
        #expect(e.contains("rank 0 and rank 1 disagree on the shared-memory lane slot: 1 on rank 0, 2 from rank 1"), "\(e)")
        e = try refusal { fake, socket in
            try lane(socket, slots)
            try fake.send(header(fake, slot: 1, count: chunk), payload: [])
        }
        #expect(e.contains("disagree on the payload length: at most \(chunk) bytes in a lane slot"), "\(e)")
        e = try refusal { fake, socket in
            try lane(socket, slots)
            try fake.send(header(fake, slot: 1), payload: [UInt8](repeating: 0, count: 16))
        }
        #expect(e.contains("names lane slot 1 and has a 16-byte payload frame too"), "\(e)")
        e = try refusal { fake, _ in try fake.send(header(fake, slot: 1), payload: []) }
        #expect(e.contains("cannot read rank 1's shared-memory lane") && e.contains("No such file or directory"), "\(e)")
        e = try refusal { fake, socket in
            try lane(socket, slots + 1)
            try fake.send(header(fake, slot: 1), payload: [])
        }
        #expect(e.contains("is not a lane of at most \(slots) slots of \(chunk) bytes"), "\(e)")
        e = try refusal { fake, socket in
            try lane(socket, 4)
            truncate(SharedLane.path(forSocket: socket), 4096)
            try fake.send(header(fake, slot: 1), payload: [])
        }
        #expect(e.contains("has 4096 bytes, not the 4 slots of \(chunk) bytes it says"), "\(e)")
        e = try refusal { fake, socket in
            try lane(socket, slots)
            chmod(SharedLane.path(forSocket: socket), 0o644)
            try fake.send(header(fake, slot: 1), payload: [])
        }
        #expect(e.contains("is not a private file of this user's"), "\(e)")
    }

    /// A sender short of /dev/shm makes fewer slots than the receiver's options allow: the receiver
    /// takes the lane as it is, and the payload in its first slot is summed.
    @Test func aLaneOfFewerSlotsIsTaken() throws {
        let ring = try TestRing(2, .ipc)
        let socket = Transport.ipcPath(ring.addresses[0])!
        // rank 0's own lane into the hand-driven rank too: it never opens it
        defer { for a in ring.addresses { unlink(SharedLane.path(forSocket: Transport.ipcPath(a)!)) } }
        let made = Made()
        let result = try RingFaultTests().rank0AllReduce(ring) { fake in
            let lane = try #require(SharedLane.create(forSocket: socket, slots: 2, slotBytes: RingOptions().chunkBytes))
            made.add(lane)
            let ones = Self.bytes(1, 4)
            ones.withUnsafeBytes { lane.slot(0).copyMemory(from: $0.baseAddress!, byteCount: 16) }
            var h = fake.header(.allReduce, sequence: 1, total: 8, offset: 4, count: 4)
            h.laneSlot = 1  // no checksum: a unix socket's link carries none
            try fake.send(h, payload: [])
            var reduced = fake.header(.allReduce, sequence: 1, total: 8, offset: 0, count: 4)
            reduced.ringStep = 1
            try fake.send(reduced, payload: Self.bytes(2, 4))
        }
        #expect(result == "", "\(result)")
    }

    /// A lane whose maker died before its neighbour opened it is removed by a lane made later: a living
    /// maker holds a lock on its lane, which the kernel drops with the process, and one unlocked for an
    /// hour is wanted by no receiver. Another process (flock(1)) holds an hour-old lane's lock and is
    /// killed; a lane made an hour ago is dropped by this process just now (a chunk may still be on its
    /// way in it); a third stays alive. Making a fourth removes only the killed maker's; with the other
    /// two aged an hour, a fifth removes the dropped one and keeps the living one.
    @Test(.enabled(if: FileManager.default.isExecutableFile(atPath: "/usr/bin/flock"), "needs flock(1) (util-linux)"))
    func aLaneWhoseMakerIsGoneIsRemovedByALaterOne() throws {
        let sockets = (0..<5).map { "/run/tether-test-\(UUID().uuidString)/rank\($0)" }, lanes = sockets.map(SharedLane.path(forSocket:))
        defer { for lane in lanes { unlink(lane) } }
        /// sets a lane's time back by more than the sweep's grace
        func age(_ path: String) throws {
            let past = timespec(tv_sec: time(nil) - SharedLane.abandonedAfter - 60, tv_nsec: 0)
            try #require(utimensat(AT_FDCWD, path, [past, past], 0) == 0, "cannot age \(path)")
        }
        let killed = try #require(SharedLane.create(forSocket: sockets[0], slots: 2, slotBytes: 4096))
        // the process killed holds the lock itself
        let holder = try ChildProcess(
            "/usr/bin/flock", ["--shared", "--no-fork", lanes[0], "sleep", "60"], environment: ProcessInfo.processInfo.environment)
        defer { if holder.isRunning { holder.signal(SIGKILL) } }
        _ = consume killed  // this process's lock on it goes; the other process's stays
        // no lane is made (no sweep runs) before flock(1) holds its lock: until then this one is free
        let probe = open(lanes[0], O_RDONLY | O_CLOEXEC)
        defer { close(probe) }
        let deadline = Date().addingTimeInterval(10)
        while flock(probe, LOCK_EX | LOCK_NB) == 0, Date() < deadline {
            flock(probe, LOCK_UN)
            usleep(10_000)
        }
        try age(lanes[0])
        var dropped = SharedLane.create(forSocket: sockets[1], slots: 2, slotBytes: 4096)
        try #require(dropped != nil)
        try age(lanes[1])
        dropped = nil  // its maker is done with it, its receiver may not be yet
        let living = try #require(SharedLane.create(forSocket: sockets[2], slots: 2, slotBytes: 4096))
        #expect(FileManager.default.fileExists(atPath: lanes[0]), "a lane whose maker lives was removed")
        #expect(FileManager.default.fileExists(atPath: lanes[1]), "a lane dropped just now was removed")
        holder.signal(SIGKILL)
        holder.waitUntilExit()
        let fourth = try #require(SharedLane.create(forSocket: sockets[3], slots: 2, slotBytes: 4096))
        #expect(!FileManager.default.fileExists(atPath: lanes[0]), "the killed maker's lane was kept")
        #expect(FileManager.default.fileExists(atPath: lanes[1]), "a lane dropped just now was removed")
        try age(lanes[1])
        try age(lanes[2])
        let fifth = try #require(SharedLane.create(forSocket: sockets[4], slots: 2, slotBytes: 4096))
        #expect(!FileManager.default.fileExists(atPath: lanes[1]), "the lane dropped an hour ago was kept")
        #expect(lanes[2...].allSatisfy { FileManager.default.fileExists(atPath: $0) }, "a living maker's lane was removed")
        withExtendedLifetime((living, fourth, fifth)) {}
    }

    /// The receiver's count of slots it is done with is its own to write: a sender that finds it ahead
    /// of what it sent (an underflow, were it trusted) stops using the lane and sends over the socket.
    @Test func aLaneWhoseCountRunsAheadIsGivenUp() throws {
        let ring = try TestRing(2, .ipc)
        let fake = try RingFaultTests.FakeNeighbour(ring)
        try fake.handshake()
        let r = try ring.ring(0) { ($0.timeout, $0.gatherSumBytes) = (.seconds(5), 0) }
        let options = RingOptions()
        let lane = try SharedLane.open(
            forSocket: Transport.ipcPath(ring.addresses[1])!, slots: options.laneSlots, slotBytes: options.chunkBytes)
        lane.consumed = 5
        // rank 1's part of rank 0's all-reduce of 8 ones: its segment 1, then the reduced segment 0
        try fake.send(fake.header(.allReduce, sequence: 1, total: 8, offset: 4, count: 4), payload: Self.bytes(1, 4))
        var reduced = fake.header(.allReduce, sequence: 1, total: 8, offset: 0, count: 4)
        reduced.ringStep = 1
        try fake.send(reduced, payload: Self.bytes(2, 4))
        var x = [Float](repeating: 1, count: 8)
        _ = try x.withUnsafeMutableBufferPointer { try r.allReduce($0) }
        #expect(x == [Float](repeating: 2, count: 8))
        // rank 0's handshake, its segment 0 and the reduced segment 1, each with its payload in the frame
        var payloads: [Int] = []
        for _ in 0..<3 {
            let frames = try #require(try fake.pull.receive(deadline: .now + .seconds(2)))
            guard case .chunk(let h) = try Envelope(decoding: frames[0].bytes).body else { Issue.record("not a chunk"); continue }
            #expect(h.laneSlot == 0)
            payloads.append(frames[1].count)
        }
        #expect(payloads == [0, 16, 16])
        #expect(r.statistics.laneBytesSent == 0)
    }

    static func bytes(_ value: Float, _ count: Int) -> [UInt8] { [Float](repeating: value, count: count).withUnsafeBytes { Array($0) } }
}
