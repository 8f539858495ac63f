import CZeroMQ
import Foundation
import TetherComm
import TetherMessages
import Testing

@testable import TetherCluster

/// A worker that outlived its coordinator connects afresh (`ControlChannel.reconnect`), as a chaos
/// run's partitions needed (cluster/chaos --hosts --faults partition, seed 21: one recovery of 8.31 s
/// waited out TCP's retransmission backoff on the old connection; the first fix let the old
/// connection's queue reach the next job, and a stale checkpoint failed it). Over real sockets: the
/// next coordinator (a new ROUTER at the same address, with ZMQ_ROUTER_HANDOVER as the coordinator
/// sets it) hears the worker's Hello and nothing the old job left queued.
@Suite(.serialized) struct ReconnectTests {
    func router(_ context: ZeroMQContext, at endpoint: String) throws -> (ControlChannel, String) {
        let socket = try ZeroMQSocket(context, .router, linger: .zero)
        try socket.setRouterHandover(true)
        return (ControlChannel(socket: socket, jobID: "tether"), try socket.bind(endpoint))
    }

    /// Waits (up to 5 s) for `event` on `monitor`.
    func waitFor(_ event: Int32, on monitor: ZeroMQMonitor) -> Bool {
        let deadline = ContinuousClock.now + .seconds(5)
        while let e = monitor.next(deadline: deadline) { if e.event == event { return true } }
        return false
    }

    @Test func theNextCoordinatorHearsTheHelloAndNothingOfTheOldJob() throws {
        let context = try ZeroMQContext()
        var (old, endpoint) = try router(context, at: "tcp://127.0.0.1:*")
        let dealer = try ZeroMQSocket(context, .dealer)
        try dealer.setRoutingID([UInt8](repeating: 7, count: 16))
        try dealer.connect(endpoint)
        let worker = ControlChannel(socket: dealer, jobID: "tether")
        try worker.send(.hello(Hello(advertiseAddress: "tcp://127.0.0.1:1", tetherVersion: "tether", threads: 1)), from: -1)
        let first = try old.receive(deadline: .now + .seconds(5))
        #expect(first?.envelope.body?.name == "Hello", "the first coordinator hears the worker")
        // The coordinator stops reading (cut off: nothing acknowledged) while the worker sends large
        // messages of the old job: they fill the kernel's buffers, and the rest wait in libzmq's queue.
        // Then the coordinator goes (restarted, or it gave up and rebound), and the worker reconnects.
        try old.socket.setHighWaterMarks(send: 1, receive: 1)
        let stale = Envelope(jobID: "tether", senderRank: 0, body: .start).encoded()
        for _ in 0..<16 { try dealer.send([stale, [UInt8](repeating: 1, count: 4 << 20)], wait: false) }
        // it goes, and the worker sees its connection close and its address free
        let closing = try old.socket.monitor(ZMQ_EVENT_CLOSED), dropped = try dealer.monitor(ZMQ_EVENT_DISCONNECTED)
        old.socket.close()
        #expect(waitFor(ZMQ_EVENT_CLOSED, on: closing), "the old coordinator's address was not let go")
        #expect(waitFor(ZMQ_EVENT_DISCONNECTED, on: dropped), "the worker never saw its connection drop")
        try worker.reconnect(endpoint)
        (old, endpoint) = try router(context, at: endpoint)
        try worker.send(.hello(Hello(advertiseAddress: "tcp://127.0.0.1:1", tetherVersion: "tether", threads: 1)), from: -1)
        // listen past the old connection's 1 s linger, in which libzmq would deliver what it held
        var heard: [String] = []
        let until = ContinuousClock.now + .milliseconds(1500)
        while ContinuousClock.now < until {
            do {
                if let (_, envelope) = try old.receive(deadline: .now + .milliseconds(100)) { heard.append(envelope.body?.name ?? "?") }
            } catch { heard.append("\(error)".prefix(60).description) }
        }
        #expect(heard == ["Hello"], "the next coordinator heard \(heard)")
        old.socket.close()
        dealer.close()
    }
}
