import Foundation
import Testing
import TetherNN
@testable import TetherObservability
@testable import TetherTrain

/// The sinks' own parts: TFRecord's checksum, the Prometheus page and its server's manners.
@Suite struct SinkTests {
    @Test func crc32cMatchesItsCheckValue() {
        // the CRC-32C check value (RFC 3720's test vector "123456789")
        #expect(CRC32C.checksum(Array("123456789".utf8)) == 0xE306_9283)
        #expect(CRC32C.checksum([]) == 0)
        // 32 zero bytes, RFC 3720 B.4
        #expect(CRC32C.checksum(Array(repeating: 0, count: 32)) == 0x8A91_36AA)
    }

    /// The step line's cluster figures are means per step of the largest rank's, bytes included (dense
    /// and sparse of one rank together), in units a reader takes in at a glance.
    @Test func theStepLineSaysWhatTheBusiestRankSent() throws {
        #expect(
            [0, 812, 999, 57_340, 1_079_376, 12_345_678, 4.2e9].map(ProgressDisplay.bytes)
                == ["0 B", "812 B", "999 B", "57.3 kB", "1.08 MB", "12.3 MB", "4.20 GB"])
        let reporter = StepReporter(
            progress: ProgressDisplay(interactive: false, quiet: true), sinks: [], stepsPerEpoch: 10, totalSteps: 10, epochs: 1,
            logEvery: 100, unit: "samples")
        for dense in [[1_000_000.0, 600_000], [1_200_000, 600_000]] {
            let ranks = RankFigures(
                compute: [0.002, 0.003], exchange: [0.001, 0.001], waiting: [0, 0.0005], optimizer: [0.0002, 0.0002], denseBytes: dense,
                sparseBytes: [0, 500_000])
            try reporter.stepCompleted(globalStep: 1, epoch: 0, stats: BatchStats(), lr: 0.1, ranks: ranks)
        }
        #expect(
            StepReporter.perStep(reporter.window, slowestRank: 1)
                == "per step: compute 3.0 ms, exchange 1.0 ms (waiting 0.5 ms), 1.15 MB sent, slowest rank 1")
    }

    @Test func metricsListenTakesAPortOrAnAddress() throws {
        #expect(try PrometheusExporter.split("9400") == ("127.0.0.1", 9400))
        #expect(try PrometheusExporter.split("0.0.0.0:9400") == ("0.0.0.0", 9400))
        #expect(try PrometheusExporter.split("[::1]:9400") == ("::1", 9400))
        #expect { try PrometheusExporter.split("localhost:http") } throws: { "\($0)".contains("takes HOST:PORT") }
        #expect { try PrometheusExporter.split("1:99999") } throws: { "\($0)".contains("takes HOST:PORT") }
    }

    /// Sends `request` to the exporter and returns its answer's status line and body (an empty status
    /// when no answer came within `seconds`).
    static func ask(_ port: UInt16, _ request: [UInt8], within seconds: Int = 10) throws -> (status: String, body: String) {
        let fd = try connected(port)
        defer { close(fd) }
        var timeout = timeval(tv_sec: seconds, tv_usec: 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
        _ = request.withUnsafeBytes { send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
        var answer = [UInt8](), buffer = [UInt8](repeating: 0, count: 4096)
        while case let n = buffer.withUnsafeMutableBytes({ recv(fd, $0.baseAddress, $0.count, 0) }), n > 0 { answer += buffer[0..<n] }
        let text = String(decoding: answer, as: UTF8.self)
        let parts = text.components(separatedBy: "\r\n\r\n")
        return (String(parts[0].split(separator: "\r\n").first ?? ""), parts.dropFirst().joined(separator: "\r\n\r\n"))
    }

    /// A TCP connection to the exporter on loopback.
    static func connected(_ port: UInt16) throws -> Int32 {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        var address = sockaddr_in()
        (address.sin_family, address.sin_port, address.sin_addr.s_addr) = (sa_family_t(AF_INET), port.bigEndian, inet_addr("127.0.0.1"))
        let status = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
        }
        guard status == 0 else {
            close(fd)
            throw CocoaError(.fileReadUnknown)
        }
        return fd
    }

    /// Clients that send a byte a second, and more idle connections than the server keeps, do not hold
    /// up a scrape: each of three is answered within a second while they hang on.
    @Test func slowClientsDoNotHoldUpAScrape() throws {
        let exporter = try PrometheusExporter(listen: "127.0.0.1:0")
        defer { exporter.stop() }
        let port = UInt16(exporter.boundAddress.split(separator: ":").last!)!
        let idle = try (0..<(PrometheusExporter.connectionLimit + 4)).map { _ in try Self.connected(port) }
        let slow = try (0..<3).map { _ in try Self.connected(port) }
        defer { (slow + idle).forEach { close($0) } }
        let request = Array("GET /metrics HTTP/1.1\r\n\r\n".utf8)
        for second in 0..<3 {
            for fd in slow { _ = send(fd, [request[second]], 1, Int32(MSG_NOSIGNAL)) }
            #expect(try Self.ask(port, request, within: 1).status == "HTTP/1.0 200 OK", "scrape \(second + 1)")
            // the slow clients' pace, a byte a second: the next byte goes when the server closes them (its
            // deadline for a whole request) or after a second, whichever comes first
            var fds = slow.map { pollfd(fd: $0, events: Int16(POLLIN), revents: 0) }
            _ = poll(&fds, nfds_t(fds.count), 1000)
        }
    }

    @Test func thePrometheusPageHoldsTheRunAndTheServerRefusesWhatIsNotAScrape() throws {
        let exporter = try PrometheusExporter(listen: "127.0.0.1:0")
        defer { exporter.stop() }
        let port = UInt16(exporter.boundAddress.split(separator: ":").last!)!
        var start = MetricsEvent(event: "start", step: 0, stepsPerEpoch: 10)
        start.model = "mlp-\"wn\"\n"
        try exporter.record(start)
        exporter.stepCompleted(
            globalStep: 1,
            ranks: RankFigures(
                compute: [0.5, 0.25], exchange: [0.1, 0.2], waiting: [0, 0.1], optimizer: [0.01, 0.01], denseBytes: [100, 100],
                sparseBytes: [0, 0]))
        exporter.stepCompleted(
            globalStep: 2,
            ranks: RankFigures(
                compute: [0.5, 0.25], exchange: [0.1, 0.2], waiting: [0, 0.1], optimizer: [0.01, 0.01], denseBytes: [100, 100],
                sparseBytes: [0, 0]))
        var step = MetricsEvent(event: "step", step: 2, stepsPerEpoch: 10)
        (step.loss, step.samples_per_sec) = (.nan, 1234.5)
        try exporter.record(step)
        exporter.observe(JobStatus(workersAlive: 2, heartbeatAge: [0.25, 1.5]))

        let page = try Self.ask(port, Array("GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n".utf8))
        #expect(page.status == "HTTP/1.0 200 OK")
        for line in [
            "tether_steps_total 2", "tether_rank_compute_seconds_total{rank=\"0\"} 1", "tether_rank_compute_seconds_total{rank=\"1\"} 0.5",
            "tether_rank_dense_sent_bytes_total{rank=\"1\"} 200", "tether_workers_alive 2", "tether_heartbeat_age_seconds{rank=\"1\"} 1.5",
            "tether_loss NaN", "tether_samples_per_second 1234.5", "tether_info{model=\"mlp-\\\"wn\\\"\\n\"} 1",
            "# TYPE tether_steps_total counter"
        ] {
            #expect(page.body.split(separator: "\n").contains { $0 == line }, "missing: \(line)")
        }
        #expect(try Self.ask(port, Array("POST /metrics HTTP/1.1\r\n\r\n".utf8)).status == "HTTP/1.0 405 Method Not Allowed")
        #expect(try Self.ask(port, Array("GET / HTTP/1.1\r\n\r\n".utf8)).status == "HTTP/1.0 404 Not Found")
        #expect(
            try Self.ask(port, Array(repeating: UInt8(ascii: "A"), count: PrometheusExporter.requestLimit)).status
                == "HTTP/1.0 400 Bad Request")
        #expect(try Self.ask(port, [0, 0xFF, 0x0A, 0x0A]).status == "HTTP/1.0 400 Bad Request")
        // and it still answers a scrape after all that
        #expect(try Self.ask(port, Array("GET /metrics HTTP/1.0\r\n\r\n".utf8)).status == "HTTP/1.0 200 OK")
    }
}
