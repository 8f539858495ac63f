import Foundation
import TetherTrain

/// Serves a run's metrics in Prometheus's text exposition format (version 0.0.4) at
/// http://ADDRESS/metrics (--metrics-listen): counters of steps, per-rank seconds and bytes, gauges of
/// the loss, throughput, learning rate, held-out metrics, workers alive and heartbeat ages.
///
/// The server is deliberately small: one thread polling at most `connectionLimit` connections, a
/// request of at most `requestLimit` bytes read within `requestTimeout` of the connection's accept,
/// GET only, the connection closed after each answer. It listens on loopback unless given another address: the figures are read-only, but they
/// are the job's, and a scraper elsewhere is the operator's explicit choice.
public final class PrometheusExporter: MetricsSink {
    /// The address bound, HOST:PORT (the port chosen by the kernel when 0 was asked).
    public let boundAddress: String
    static let requestLimit = 8192
    static let requestTimeout = 2.0
    static let connectionLimit = 16
    /// Where a request head ends (and the same with bare newlines, which some clients send).
    static let headEnd = Array("\r\n\r\n".utf8), bareHeadEnd = Array("\n\n".utf8)
    private let listener: Int32
    private let lock = NSLock()
    private var figures = Figures()
    private var stopped = false

    struct Figures {
        var model = "", steps = 0, epoch = 0, starts = 0
        var gauges: [String: Double] = [:]
        var perRank: [String: [Double]] = [:]  // counters summed over every step, by rank
        var heartbeatAge: [Double] = []
        var workersAlive: Double?
        var events: [String: Int] = [:]
    }

    /// Listens on `address`: HOST:PORT, [IPv6]:PORT, or PORT alone (loopback).
    public init(listen address: String) throws {
        let (host, port) = try Self.split(address)
        var hints = addrinfo()
        (hints.ai_family, hints.ai_socktype, hints.ai_flags) = (AF_UNSPEC, Int32(SOCK_STREAM.rawValue), AI_PASSIVE | AI_NUMERICSERV)
        var found: UnsafeMutablePointer<addrinfo>?
        let status = getaddrinfo(host, String(port), &hints, &found)
        guard status == 0, let info = found else {
            throw ConfigError(message: "--metrics-listen \(address): cannot resolve \(host) (\(String(cString: gai_strerror(status))))")
        }
        defer { freeaddrinfo(found) }
        let fd = socket(info.pointee.ai_family, info.pointee.ai_socktype, info.pointee.ai_protocol)
        guard fd >= 0 else {
            throw ConfigError(message: "--metrics-listen \(address): cannot make a socket: \(String(cString: strerror(errno)))")
        }
        var yes: Int32 = 1
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &yes, socklen_t(MemoryLayout<Int32>.size))
        guard bind(fd, info.pointee.ai_addr, info.pointee.ai_addrlen) == 0, listen(fd, 16) == 0 else {
            let why = String(cString: strerror(errno))
            close(fd)
            throw ConfigError(message: "--metrics-listen \(address): cannot listen there: \(why)")
        }
        var bound = sockaddr_storage(), length = socklen_t(MemoryLayout<sockaddr_storage>.size)
        _ = withUnsafeMutablePointer(to: &bound) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &length) } }
        let boundPort =
            bound.ss_family == sa_family_t(AF_INET6)
            ? withUnsafePointer(to: &bound) {
                $0.withMemoryRebound(to: sockaddr_in6.self, capacity: 1) { UInt16(bigEndian: $0.pointee.sin6_port) }
            }
            : withUnsafePointer(to: &bound) {
                $0.withMemoryRebound(to: sockaddr_in.self, capacity: 1) { UInt16(bigEndian: $0.pointee.sin_port) }
            }
        listener = fd
        boundAddress = (host.contains(":") ? "[\(host)]" : host) + ":\(boundPort)"
        let thread = Thread { [weak self] in self?.serve() }
        thread.name = "metrics-listen"
        thread.start()
    }

    deinit { stop() }

    /// Stops serving (the thread ends within a second).
    public func stop() {
        lock.lock()
        let wasStopped = stopped
        stopped = true
        lock.unlock()
        if !wasStopped { shutdown(listener, Int32(SHUT_RDWR)) }  // wakes the server's poll; it closes the listener
    }

    /// HOST:PORT, [V6]:PORT or PORT, the host loopback when not given.
    static func split(_ address: String) throws -> (host: String, port: UInt16) {
        var host = "127.0.0.1", portText = address
        if address.hasPrefix("["), let close = address.firstIndex(of: "]") {
            host = String(address[address.index(after: address.startIndex)..<close])
            portText = String(address[close...].dropFirst().drop { $0 == ":" })
        } else if let colon = address.lastIndex(of: ":") {
            host = String(address[..<colon])
            portText = String(address[address.index(after: colon)...])
        }
        guard !host.isEmpty, let port = UInt16(portText) else {
            throw ConfigError(
                message: "--metrics-listen takes HOST:PORT (e.g. 127.0.0.1:9400, or a port alone for loopback), got \(address)")
        }
        return (host, port)
    }

    // MARK: the figures

    public func record(_ e: MetricsEvent) throws {
        lock.lock(); defer { lock.unlock() }
        if let model = e.model { figures.model = model }
        (figures.steps, figures.epoch) = (max(figures.steps, e.step), e.epoch)
        if e.event == "start" { figures.starts += 1; figures.steps = e.step }
        if ["lost", "joined", "reformed", "failed", "interrupted", "end", "epoch", "checkpoint"].contains(e.event) {
            figures.events[e.event, default: 0] += 1
        }
        func set(_ name: String, _ value: Double?) { if let value { figures.gauges[name] = value } }
        switch e.event {
        case "step":
            set("loss", e.loss); set("samples_per_second", e.samples_per_sec); set("learning_rate", e.lr)
        case "epoch", "eval":
            set("test_loss", e.test_loss); set("test_accuracy", e.test_accuracy); set("test_perplexity", e.test_perplexity);
            set("test_auc", e.test_auc); set("test_rmse", e.test_rmse); set("test_mae", e.test_mae)
            set("epoch_loss", e.loss)
        case "lost", "reformed", "joined":
            if let w = e.workers { figures.workersAlive = Double(w) }
        default: break
        }
    }

    public func stepCompleted(globalStep: Int, ranks: RankFigures?) {
        lock.lock(); defer { lock.unlock() }
        figures.steps = globalStep
        guard let ranks else { return }
        for (name, values) in [
            ("compute_seconds", ranks.compute), ("exchange_seconds", ranks.exchange), ("wait_seconds", ranks.waiting),
            ("dense_sent_bytes", ranks.denseBytes), ("sparse_sent_bytes", ranks.sparseBytes)
        ] {
            Self.add(values, to: &figures.perRank[name, default: []])  // in place: no copy of the totals a step
        }
    }

    /// Adds one step's per-rank values to the running totals (a re-formation may bring more ranks).
    static func add(_ values: [Double], to sums: inout [Double]) {
        if sums.count < values.count { sums += repeatElement(0, count: values.count - sums.count) }
        for (r, v) in values.enumerated() where v.isFinite && v >= 0 { sums[r] += v }
    }

    public func observe(_ status: JobStatus) {
        lock.lock(); defer { lock.unlock() }
        (figures.workersAlive, figures.heartbeatAge) = (Double(status.workersAlive), status.heartbeatAge)
    }

    /// The page a scrape gets.
    public func exposition() -> String {
        lock.lock()
        let f = figures
        lock.unlock()
        var out = ""
        func family(_ name: String, _ type: String, _ help: String, _ samples: [(labels: String, value: Double)]) {
            guard !samples.isEmpty else { return }
            out += "# HELP tether_\(name) \(help)\n# TYPE tether_\(name) \(type)\n"
            for s in samples { out += "tether_\(name)\(s.labels) \(Self.number(s.value))\n" }
        }
        func byRank(_ values: [Double]) -> [(labels: String, value: Double)] {
            values.enumerated().map { ("{rank=\"\($0.offset)\"}", $0.element) }
        }
        family("info", "gauge", "The run's model (always 1).", [("{model=\"\(Self.escaped(f.model))\"}", 1)])
        family("steps_total", "counter", "Global steps completed.", [("", Double(f.steps))])
        family("epoch", "gauge", "The epoch in progress (1-based).", [("", Double(f.epoch))])
        family(
            "restarts_total", "counter", "Restarts of the job from its checkpoint in this process (--max-restarts).",
            [("", Double(max(0, f.starts - 1)))])
        let gaugeHelp = [
            "loss": "Mean training loss over the last --log-every steps.",
            "samples_per_second": "Training throughput over the last --log-every steps (tokens for a language model).",
            "learning_rate": "The learning rate of the last step.", "epoch_loss": "Mean training loss of the last epoch.",
            "test_loss": "Held-out loss at the last evaluation.", "test_accuracy": "Held-out accuracy at the last evaluation.",
            "test_perplexity": "Held-out perplexity at the last evaluation.", "test_auc": "Held-out AUC at the last evaluation.",
            "test_rmse": "Held-out root mean squared error at the last evaluation.",
            "test_mae": "Held-out mean absolute error at the last evaluation."
        ]
        for name in f.gauges.keys.sorted() { family(name, "gauge", gaugeHelp[name] ?? name, [("", f.gauges[name]!)]) }
        let rankHelp = [
            "compute_seconds": "Seconds of forward and backward, summed over steps, by rank.",
            "exchange_seconds": "Seconds of gradient exchange left after backward, summed over steps, by rank.",
            "wait_seconds": "Of the exchange, seconds waiting for a neighbour's data, summed over steps, by rank.",
            "dense_sent_bytes": "Payload bytes sent for dense gradients (as the wire carried them), by rank.",
            "sparse_sent_bytes": "Payload bytes sent for sparse embedding rows, by rank."
        ]
        for name in f.perRank.keys.sorted() { family("rank_\(name)_total", "counter", rankHelp[name] ?? name, byRank(f.perRank[name]!)) }
        if let alive = f.workersAlive { family("workers_alive", "gauge", "Workers in the ring.", [("", alive)]) }
        family("heartbeat_age_seconds", "gauge", "Seconds since the coordinator last heard from each rank.", byRank(f.heartbeatAge))
        family(
            "events_total", "counter", "Job events: epochs, checkpoints, workers lost and joined, re-formations, the end.",
            f.events.keys.sorted().map { ("{event=\"\($0)\"}", Double(f.events[$0]!)) })
        return out
    }

    static func number(_ x: Double) -> String {
        x.isNaN ? "NaN" : x == .infinity ? "+Inf" : x == -.infinity ? "-Inf" : x == x.rounded() && abs(x) < 1e15 ? String(Int64(x)) : "\(x)"
    }

    static func escaped(_ s: String) -> String {
        s.replacingOccurrences(of: "\\", with: "\\\\").replacingOccurrences(of: "\"", with: "\\\"").replacingOccurrences(
            of: "\n", with: "\\n")
    }

    // MARK: the server

    /// One thread serves every connection through poll(2): each connection's request head is read as it
    /// arrives, within `requestTimeout` of its accept for the whole request (a client sending a byte a
    /// second is cut off, not waited for), and at most `connectionLimit` are open at once; when full, the
    /// oldest is closed to make room. A slow client costs a slot, never the others' answers.
    private func serve() {
        var open: [Connection] = []
        defer {
            for c in open { close(c.fd) }
            close(listener)
        }
        while true {
            var fds = [pollfd(fd: listener, events: Int16(POLLIN), revents: 0)]
            fds += open.map { pollfd(fd: $0.fd, events: Int16($0.reply == nil ? POLLIN : POLLOUT), revents: 0) }
            let now = Clock.seconds
            let nearest = open.map(\.deadline).min().map { max(0, $0 - now) } ?? 1
            let ready = poll(&fds, nfds_t(fds.count), Int32(min(nearest, 1) * 1000) + 1)
            if ready < 0 && errno != EINTR { return }
            lock.lock()
            let isStopped = stopped
            lock.unlock()
            if isStopped { return }
            // the connections first: a new one may close the oldest
            var kept: [Connection] = []
            for (i, var c) in open.enumerated() {
                let events = Int32(fds[i + 1].revents)
                let done = events != 0 ? progress(&c, events: events) : false
                if done || Clock.seconds > c.deadline { close(c.fd) } else { kept.append(c) }
            }
            open = kept
            if fds[0].revents & Int16(POLLIN) != 0 {
                let client = accept(listener, nil, nil)
                if client >= 0 {
                    _ = fcntl(client, F_SETFL, fcntl(client, F_GETFL) | O_NONBLOCK)
                    if open.count >= Self.connectionLimit { close(open.removeFirst().fd) }
                    open.append(Connection(fd: client, deadline: Clock.seconds + Self.requestTimeout))
                } else if errno != EINTR && errno != EAGAIN && errno != ECONNABORTED && errno != EMFILE && errno != ENFILE {
                    return  // closed by stop()
                }
            }
        }
    }

    /// A client's connection: its request head as read so far, then the reply still to send.
    struct Connection {
        let fd: Int32
        let deadline: Double
        var request: [UInt8] = []
        var reply: [UInt8]?
        var sent = 0
    }

    /// Reads or writes what the socket allows; true when the connection is finished with.
    private func progress(_ c: inout Connection, events: Int32) -> Bool {
        if c.reply == nil {
            guard events & Int32(POLLIN) != 0 else { return true }  // hung up or failed before a request
            var buffer = [UInt8](repeating: 0, count: 1024)
            let n = buffer.withUnsafeMutableBytes { recv(c.fd, $0.baseAddress, $0.count, 0) }
            if n < 0 && (errno == EAGAIN || errno == EINTR) { return false }
            if n > 0 { c.request += buffer[0..<n] }
            let complete = c.request.ends(with: Self.headEnd) || c.request.ends(with: Self.bareHeadEnd)
            guard n <= 0 || complete || c.request.count >= Self.requestLimit else { return false }
            c.reply = reply(to: c.request)
        }
        guard let reply = c.reply else { return true }
        while c.sent < reply.count {
            let n = reply[c.sent...].withUnsafeBytes { send(c.fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
            if n < 0 && (errno == EAGAIN || errno == EINTR) { return false }
            guard n > 0 else { return true }
            c.sent += n
        }
        return true
    }

    /// The HTTP answer to a request head (whole, or cut off at the limit or by the client's close).
    func reply(to request: [UInt8]) -> [UInt8] {
        let line = String(decoding: request.prefix { $0 != 0x0A && $0 != 0x0D }, as: UTF8.self).split(separator: " ")
        let (status, type, body): (String, String, String)
        if line.count < 2 || request.count >= Self.requestLimit {
            (status, type, body) = ("400 Bad Request", "text/plain", "a request line of at most \(Self.requestLimit) bytes\n")
        } else if line[0] != "GET" && line[0] != "HEAD" {
            (status, type, body) = ("405 Method Not Allowed", "text/plain", "GET only\n")
        } else if line[1] == "/metrics" || line[1].hasPrefix("/metrics?") {
            (status, type, body) = ("200 OK", "text/plain; version=0.0.4; charset=utf-8", exposition())
        } else {
            (status, type, body) = ("404 Not Found", "text/plain", "tether serves its metrics at /metrics\n")
        }
        let payload = Array(body.utf8)
        var reply = Array(
            "HTTP/1.0 \(status)\r\nContent-Type: \(type)\r\nContent-Length: \(payload.count)\r\nConnection: close\r\n\r\n".utf8)
        if line.first != "HEAD" { reply += payload }
        return reply
    }
}

private extension Array where Element == UInt8 {
    func ends(with end: [UInt8]) -> Bool { count >= end.count && suffix(end.count).elementsEqual(end) }
}

private enum Clock {
    static var seconds: Double {
        var t = timespec()
        clock_gettime(CLOCK_MONOTONIC, &t)
        return Double(t.tv_sec) + Double(t.tv_nsec) * 1e-9
    }
}
