import CTetherProcess
import CZeroMQ
import Foundation

/// A small layer over libzmq: a context, sockets, multipart messages and receives with deadlines.
/// Every libzmq call goes through `check`, so every failure carries the call and libzmq's reason.
/// Calls block the calling thread; callers run them on threads of their own, never on an async executor.
public enum ZeroMQ {
    /// libzmq's version, e.g. "4.3.4".
    public static var version: String {
        var major: Int32 = 0, minor: Int32 = 0, patch: Int32 = 0
        zmq_version(&major, &minor, &patch)
        return "\(major).\(minor).\(patch)"
    }

    /// Throws a `ZeroMQError` naming `call` when `rc` is libzmq's -1.
    @discardableResult
    static func check(_ rc: Int32, _ call: @autoclosure () -> String) throws -> Int32 {
        guard rc == -1 else { return rc }
        throw ZeroMQError(call: call(), code: zmq_errno())
    }
}

public struct ZeroMQError: Error, CustomStringConvertible {
    public let call: String
    public let code: Int32
    public var reason: String { String(cString: zmq_strerror(code)) }
    public var description: String { "\(call): \(reason)" }
}

/// One libzmq context: its I/O threads move bytes between sockets and the kernel.
public final class ZeroMQContext: @unchecked Sendable {
    let handle: UnsafeMutableRawPointer

    public init(ioThreads: Int = 1) throws {
        guard let h = zmq_ctx_new() else { throw ZeroMQError(call: "zmq_ctx_new", code: zmq_errno()) }
        handle = h
        try ZeroMQ.check(zmq_ctx_set(h, ZMQ_IO_THREADS, Int32(ioThreads)), "zmq_ctx_set(ZMQ_IO_THREADS)")
    }

    /// Waits for every socket of the context to be closed (linger bounds how long a close may wait).
    deinit { zmq_ctx_term(handle) }
}

/// One received frame, owned until deinit.
public final class ZeroMQFrame {
    fileprivate let msg = UnsafeMutablePointer<zmq_msg_t>.allocate(capacity: 1)
    fileprivate init() { zmq_msg_init(msg) }
    deinit { zmq_msg_close(msg); msg.deallocate() }
    public var bytes: UnsafeRawBufferPointer { UnsafeRawBufferPointer(start: zmq_msg_data(msg), count: zmq_msg_size(msg)) }
    public var count: Int { zmq_msg_size(msg) }
}

public final class ZeroMQSocket {
    /// push/pull: the ring's links. router/dealer: cluster control (the coordinator's ROUTER sees each
    /// worker's DEALER as an identity frame before the message).
    public enum Kind {
        case push, pull, router, dealer, rep, pair
        var raw: Int32 {
            switch self {
            case .rep: ZMQ_REP
            case .pair: ZMQ_PAIR
            case .push: ZMQ_PUSH
            case .pull: ZMQ_PULL
            case .router: ZMQ_ROUTER
            case .dealer: ZMQ_DEALER
            }
        }
    }

    let handle: UnsafeMutableRawPointer
    public let kind: Kind
    /// Held so that the context outlives its sockets (zmq_ctx_term waits for every socket to close).
    let context: ZeroMQContext
    private var closed = false

    /// Linger is bounded (pending messages are dropped after `linger` on close), and both high-water
    /// marks are 0 (no limit): a ring collective never has more than its own buffer in flight, and a
    /// limit would let ranks block on each other's sends.
    public init(_ context: ZeroMQContext, _ kind: Kind, linger: Duration = .seconds(1)) throws {
        guard let h = zmq_socket(context.handle, kind.raw) else { throw ZeroMQError(call: "zmq_socket", code: zmq_errno()) }
        (handle, self.kind, self.context) = (h, kind, context)
        try setOption(ZMQ_LINGER, Int32(linger.milliseconds), "ZMQ_LINGER")
        try setOption(ZMQ_SNDHWM, 0, "ZMQ_SNDHWM")
        try setOption(ZMQ_RCVHWM, 0, "ZMQ_RCVHWM")
        // A ROUTER fails a send to an identity it does not know (a gone worker) instead of dropping it.
        if kind == .router { try setOption(ZMQ_ROUTER_MANDATORY, 1, "ZMQ_ROUTER_MANDATORY") }
    }

    deinit { close() }

    public func close() {
        guard !closed else { return }
        closed = true
        zmq_close(handle)
    }

    /// How long a close waits to send what is still queued.
    public func setLinger(_ linger: Duration) throws { try setOption(ZMQ_LINGER, Int32(linger.milliseconds), "ZMQ_LINGER") }

    /// ZMQ_ROUTING_ID: the identity a ROUTER peer sees for this socket, kept across reconnections (by
    /// default a ROUTER names each connection anew). Must not start with a zero byte.
    public func setRoutingID(_ id: [UInt8]) throws {
        precondition(!id.isEmpty && id[0] != 0, "a routing id is non-empty and does not start with 0")
        try ZeroMQ.check(
            id.withUnsafeBytes { zmq_setsockopt(handle, ZMQ_ROUTING_ID, $0.baseAddress, id.count) }, "zmq_setsockopt(ZMQ_ROUTING_ID)")
    }

    func setOption(_ option: Int32, _ value: Int32, _ name: String) throws {
        var v = value
        try ZeroMQ.check(zmq_setsockopt(handle, option, &v, MemoryLayout<Int32>.size), "zmq_setsockopt(\(name))")
    }

    func setOption(_ option: Int32, _ value: String, _ name: String) throws {
        try ZeroMQ.check(zmq_setsockopt(handle, option, value, value.utf8.count), "zmq_setsockopt(\(name))")
    }

    /// ZMQ_SNDHWM and ZMQ_RCVHWM, per connection: past `send` queued messages a send fails with EAGAIN
    /// (a ROUTER with ZMQ_ROUTER_MANDATORY) instead of queueing without end; past `receive` unread
    /// ones libzmq stops reading from that connection.
    public func setHighWaterMarks(send: Int32, receive: Int32) throws {
        try setOption(ZMQ_SNDHWM, send, "ZMQ_SNDHWM")
        try setOption(ZMQ_RCVHWM, receive, "ZMQ_RCVHWM")
    }

    /// ZMQ_MAXMSGSIZE: a peer that sends a larger message is disconnected before it is read into memory.
    public func setMaxMessageSize(_ bytes: Int) throws {
        var v = Int64(bytes)
        try ZeroMQ.check(zmq_setsockopt(handle, ZMQ_MAXMSGSIZE, &v, MemoryLayout<Int64>.size), "zmq_setsockopt(ZMQ_MAXMSGSIZE)")
    }

    /// ZMQ_HANDSHAKE_IVL: a connection that has not completed its (CURVE) handshake by then is dropped,
    /// so idle connections cannot pile up.
    public func setHandshakeInterval(_ interval: Duration) throws {
        try setOption(ZMQ_HANDSHAKE_IVL, Int32(interval.milliseconds), "ZMQ_HANDSHAKE_IVL")
    }

    /// Events about this socket's connections (handshakes above all) on a PAIR socket of their own.
    public func monitor(_ events: Int32 = ZMQ_EVENT_ALL) throws -> ZeroMQMonitor {
        let endpoint = "inproc://tether-monitor-\(UUID().uuidString)"
        try ZeroMQ.check(zmq_socket_monitor(handle, endpoint, events), "zmq_socket_monitor")
        let pair = try ZeroMQSocket(context, .pair, linger: .zero)
        try pair.connect(endpoint)
        return ZeroMQMonitor(socket: pair)
    }

    /// Stops the monitor `monitor` started (its events would otherwise queue for as long as the socket lives).
    public func stopMonitor() { zmq_socket_monitor(handle, nil, 0) }

    /// Sends one multipart message of byte arrays (copied).
    public func send(_ frames: [[UInt8]], wait: Bool = true) throws {
        for (i, frame) in frames.enumerated() {
            let flags = (i + 1 < frames.count ? ZMQ_SNDMORE : 0) | (wait ? 0 : ZMQ_DONTWAIT)
            _ = try frame.withUnsafeBytes { try ZeroMQ.check(zmq_send(handle, $0.baseAddress, $0.count, flags), "zmq_send") }
        }
    }

    /// Binds and returns the endpoint actually bound (a tcp port of * resolved).
    @discardableResult
    public func bind(_ endpoint: String) throws -> String {
        try ZeroMQ.check(zmq_bind(handle, endpoint), "zmq_bind(\(endpoint))")
        var buffer = [CChar](repeating: 0, count: 256)
        var size = buffer.count
        try ZeroMQ.check(zmq_getsockopt(handle, ZMQ_LAST_ENDPOINT, &buffer, &size), "zmq_getsockopt(ZMQ_LAST_ENDPOINT)")
        return String(cString: buffer)
    }

    public func connect(_ endpoint: String) throws {
        try ZeroMQ.check(zmq_connect(handle, endpoint), "zmq_connect(\(endpoint))")
    }

    /// Drops the connection to `endpoint`; what is queued for it still goes for the socket's linger.
    public func disconnect(_ endpoint: String) throws {
        try ZeroMQ.check(zmq_disconnect(handle, endpoint), "zmq_disconnect(\(endpoint))")
    }

    /// ZMQ_ROUTER_HANDOVER: a new connection under a routing id already in use takes it over (the old
    /// one is closed) instead of being ignored until the old one dies.
    public func setRouterHandover(_ on: Bool) throws {
        precondition(kind == .router, "ZMQ_ROUTER_HANDOVER is a ROUTER option")
        try setOption(ZMQ_ROUTER_HANDOVER, on ? 1 : 0, "ZMQ_ROUTER_HANDOVER")
    }

    /// The longest a send may wait for a peer to take the message (PUSH with no live peer waits).
    public func setSendTimeout(_ timeout: Duration) throws {
        try setOption(ZMQ_SNDTIMEO, Int32(timeout.milliseconds), "ZMQ_SNDTIMEO")
    }

    /// Sends one multipart message; libzmq copies every frame, so the caller may reuse its memory at once.
    /// `wait: false` fails at once (EAGAIN) instead of waiting for a peer.
    public func send(_ frames: [UnsafeRawBufferPointer], wait: Bool = true) throws {
        for (i, frame) in frames.enumerated() {
            let flags = (i + 1 < frames.count ? ZMQ_SNDMORE : 0) | (wait ? 0 : ZMQ_DONTWAIT)
            try ZeroMQ.check(zmq_send(handle, frame.baseAddress, frame.count, flags), "zmq_send")
        }
    }

    /// Sends a header (copied) and a payload libzmq reads in place, without a copy: the payload's memory
    /// must not change until `lent` counts it returned.
    public func send(header: UnsafeRawBufferPointer, lending payload: UnsafeRawBufferPointer, _ lent: LentBuffers) throws {
        guard let base = payload.baseAddress, payload.count > 0 else { return try send([header, payload]) }
        var msg = zmq_msg_t()
        lent.lend()
        guard zmq_msg_init_data(&msg, UnsafeMutableRawPointer(mutating: base), payload.count, tether_pending_release, lent.counter) == 0
        else {
            lent.returned()
            throw ZeroMQError(call: "zmq_msg_init_data", code: zmq_errno())
        }
        try send(header: header, then: &msg)
    }

    /// Sends a header (copied) and a payload of `count` bytes that `fill` writes straight into the
    /// message libzmq sends (a sealed chunk: no copy after the cipher's).
    public func send(
        header: UnsafeRawBufferPointer, filling count: Int, wait: Bool = true, _ fill: (UnsafeMutableRawPointer) -> Void
    ) throws {
        var msg = zmq_msg_t()
        try ZeroMQ.check(zmq_msg_init_size(&msg, count), "zmq_msg_init_size")
        fill(zmq_msg_data(&msg))
        try send(header: header, then: &msg, wait: wait)
    }

    /// Sends a header (copied) and passes on a received frame, sharing its buffer (no copy).
    public func send(header: UnsafeRawBufferPointer, forwarding frame: ZeroMQFrame) throws {
        var msg = zmq_msg_t()
        zmq_msg_init(&msg)
        try ZeroMQ.check(zmq_msg_copy(&msg, frame.msg), "zmq_msg_copy")
        try send(header: header, then: &msg)
    }

    /// The header frame, then `msg`, which libzmq takes over; on failure `msg` is closed here (for a lent
    /// buffer that calls its free function: the buffer is back).
    private func send(header: UnsafeRawBufferPointer, then msg: inout zmq_msg_t, wait: Bool = true) throws {
        do {
            let dontWait = wait ? 0 : ZMQ_DONTWAIT
            try ZeroMQ.check(zmq_send(handle, header.baseAddress, header.count, ZMQ_SNDMORE | dontWait), "zmq_send")
            try ZeroMQ.check(zmq_msg_send(&msg, handle, dontWait), "zmq_msg_send")
        } catch {
            zmq_msg_close(&msg)
            throw error
        }
    }

    /// Receives one multipart message, or nil if none arrives before `deadline`.
    public func receive(deadline: ContinuousClock.Instant) throws -> [ZeroMQFrame]? {
        var item = zmq_pollitem_t(socket: handle, fd: 0, events: Int16(ZMQ_POLLIN), revents: 0)
        while true {
            // A deadline already passed still polls once without waiting.
            let left = ContinuousClock.now.duration(to: deadline)
            let rc = zmq_poll(&item, 1, left <= .zero ? 0 : max(1, left.milliseconds))
            if rc == 0 && left <= .zero { return nil }
            if rc == -1 && zmq_errno() == EINTR { continue }
            try ZeroMQ.check(rc, "zmq_poll")
            if rc > 0 { break }
        }
        var frames: [ZeroMQFrame] = []
        repeat {
            let frame = ZeroMQFrame()
            try ZeroMQ.check(zmq_msg_recv(frame.msg, handle, 0), "zmq_msg_recv")
            frames.append(frame)
        } while zmq_msg_more(frames.last!.msg) != 0
        return frames
    }
}

/// One socket's connection events, read from its monitor socket.
public final class ZeroMQMonitor {
    public struct Event: Sendable {
        public let event: Int32
        /// The event's value: an errno, a ZAP status code or a ZMQ_PROTOCOL_ERROR_* code.
        public let value: UInt32
        public let address: String
        public init(event: Int32, value: UInt32, address: String) { (self.event, self.value, self.address) = (event, value, address) }
        public var handshakeSucceeded: Bool { event == ZMQ_EVENT_HANDSHAKE_SUCCEEDED }
        public var handshakeFailed: Bool {
            [ZMQ_EVENT_HANDSHAKE_FAILED_NO_DETAIL, ZMQ_EVENT_HANDSHAKE_FAILED_PROTOCOL, ZMQ_EVENT_HANDSHAKE_FAILED_AUTH].contains(event)
        }
        public var authenticationRefused: Bool { event == ZMQ_EVENT_HANDSHAKE_FAILED_AUTH }
        public var connected: Bool { event == ZMQ_EVENT_CONNECTED }
        public var disconnected: Bool { event == ZMQ_EVENT_DISCONNECTED }
        public var connectRetried: Bool { event == ZMQ_EVENT_CONNECT_RETRIED }
        public var accepted: Bool { event == ZMQ_EVENT_ACCEPTED }
    }

    let socket: ZeroMQSocket
    init(socket: ZeroMQSocket) { self.socket = socket }
    deinit { socket.close() }
    public func close() { socket.close() }

    /// The next event before `deadline`, or nil.
    public func next(deadline: ContinuousClock.Instant) -> Event? {
        guard let frames = try? socket.receive(deadline: deadline), frames.count == 2 else { return nil }
        return withExtendedLifetime(frames) {
            let head = frames[0].bytes
            guard head.count == 6 else { return nil }
            let event = Int32(head.loadUnaligned(fromByteOffset: 0, as: UInt16.self))
            let value = head.loadUnaligned(fromByteOffset: 2, as: UInt32.self)
            return Event(event: event, value: value, address: String(decoding: frames[1].bytes, as: UTF8.self))
        }
    }
}

extension Duration {
    /// Whole milliseconds, rounded up, saturating at Int32.max.
    var milliseconds: Int {
        let (s, atto) = components
        return Int(min(Int64(Int32.max), s * 1000 + (atto + 999_999_999_999_999) / 1_000_000_000_000_000))
    }

    /// The duration in seconds.
    public var seconds: Double { Double(components.seconds) + Double(components.attoseconds) * 1e-18 }
}

/// Buffers lent to libzmq by zero-copy sends and not yet given back (its I/O thread, or an inproc
/// receiver, calls the free function when done with one).
public final class LentBuffers: @unchecked Sendable {
    let counter = UnsafeMutablePointer<Int>.allocate(capacity: 1)
    public init() { counter.initialize(to: 0) }
    /// libzmq decrements the counter from its own threads, possibly after this object is gone (a failed
    /// ring closes with messages still queued for a dead peer); freeing the counter then would let it
    /// write into freed memory. So the 8 bytes are kept while any buffer is still out.
    deinit { if outstanding == 0 { counter.deallocate() } }

    func lend() { tether_pending_add(counter, 1) }
    func returned() { tether_pending_add(counter, -1) }
    public var outstanding: Int { tether_pending_load(counter) }

    /// Waits until every buffer is back; false if some are still out at `deadline`.
    public func waitForAll(deadline: ContinuousClock.Instant) -> Bool {
        var spins = 0
        while outstanding > 0 {
            if ContinuousClock.now >= deadline { return false }
            spins += 1
            if spins > 100 { usleep(50) }
        }
        return true
    }
}
