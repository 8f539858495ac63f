import ArgumentParser
import CXXHash
import Foundation
import Logging
import TetherComm
import TetherMessages
import TetherProcess

extension Transport: ExpressibleByArgument {}
extension RingPayloadProtection: ExpressibleByArgument {}
extension AllReduceAlgorithm: ExpressibleByArgument {}

/// All-reduce time and bandwidth, as nccl-tests reports them: algbw = S/t, busbw = S/t * 2(N-1)/N.
/// By default N separate processes of this binary on this host; with --rank and --addresses, one rank
/// of a ring whose other ranks run elsewhere (other hosts, network namespaces).
struct BenchAllReduce: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "allreduce", abstract: "All-reduce time and bandwidth over ZeroMQ (the ring, or halving-doubling).",
        discussion: """
            Each timed iteration starts after a barrier; its time is the slowest rank's, and the median over \
            iterations is reported. Sizes take B, KB, MB, GB (powers of 1000) or KiB, MiB, GiB.
            """)

    @Option(help: "Ranks, each a separate process (inproc: a thread).") var ranks = 2
    @Option(help: "Bytes to all-reduce (float32 elements), e.g. 100MB.") var size = "100MB"
    @Option(help: "ipc (unix sockets: what a cluster's same-host ring links use), tcp (loopback) or inproc.") var transport: Transport =
        .ipc
    @Option(help: "Chunk size in bytes (default \(RingOptions().chunkBytes)).") var chunk: Int?
    @Option(
        help:
            "Slots of the shared-memory lane beside each ipc link (default \(RingOptions().laneSlots), each a chunk; 0: payloads through the unix socket)."
    )
    var laneSlots: Int?
    @Option(
        name: .customLong("dtype"),
        help: "The values on the wire: f32, or f16/bf16 (narrowed as sent, summed in f32; --size is still of the float32 buffer).")
    var wire: WireType = .f32
    var dtype: ChunkHeader.DType { wire.dtype }
    @Option(
        help:
            "by-size (a job's default), ring, recursive-doubling, halving-doubling, tree or auto (the fastest by the links measured when the ring forms); a 16-bit --dtype goes by halving-doubling when asked or chosen by size, by the ring otherwise."
    )
    var collective: AllReduceAlgorithm = .bySize
    @Option(help: "Timed iterations.") var iterations = 10
    @Option(help: "Untimed warm-up iterations.") var warmup = 2
    @Option(help: "Seconds any receive may wait before the ring fails.") var timeout = 30.0
    @Option(help: "Run only this rank (with --addresses).") var rank: Int?
    @Option(help: "Every rank's address, comma-separated, in rank order (with --rank).") var addresses: String?
    @Flag(help: "Also check one all-reduce against a Double reference sum and compare the result across ranks.") var check = false
    @Flag(help: "Print one JSON object.") var json = false
    @Flag(
        help:
            "Plaintext ring links, no authentication (by default the ranks use CURVE with a key of their own, or --key-file's with --rank)."
    )
    var insecure = false
    @Option(
        help:
            "How a secure ring protects payloads on tcp links: aead (sealed by AES-256-GCM or ChaCha20-Poly1305, what a cluster runs) or curve (CURVE on the socket, to compare)."
    )
    var protection: RingPayloadProtection = .aead
    @Option(help: "With --rank: the cluster key file every rank uses (also TETHER_KEY_FILE, or the key in TETHER_KEY).") var keyFile:
        String?
    /// Set by the parent of local rank processes: print this rank's raw measurements for it to combine.
    @Flag(help: .hidden) var rankReport = false

    func validate() throws {
        guard ranks >= 2 || rank != nil else {
            throw ValidationError("--ranks must be at least 2: an all-reduce over one rank moves nothing to measure")
        }
        guard iterations >= 1, warmup >= 0 else { throw ValidationError("--iterations must be at least 1, --warmup not negative") }
        guard timeout > 0 else { throw ValidationError("--timeout must be positive") }
        _ = try Self.parseBytes(size)
        if let chunk, chunk < 4 { throw ValidationError("--chunk must be at least 4 bytes") }
        if let laneSlots, !(0...1024).contains(laneSlots) { throw ValidationError("--lane-slots must be in 0...1024 (got \(laneSlots))") }
        if (rank == nil) != (addresses == nil) { throw ValidationError("--rank and --addresses go together") }
        if let rank, let addresses {
            let n = addresses.split(separator: ",").count
            guard (0..<n).contains(rank) else { throw ValidationError("--rank \(rank) is outside the \(n) addresses given") }
        }
        if rank == nil && transport == .inproc && ranks > 64 { throw ValidationError("inproc runs ranks as threads; at most 64") }
    }

    static func parseBytes(_ text: String) throws -> Int {
        let units: [(String, Double)] = [
            ("kib", 1024), ("mib", 1_048_576), ("gib", 1_073_741_824), ("kb", 1e3), ("mb", 1e6), ("gb", 1e9), ("b", 1)
        ]
        let t = text.trimmingCharacters(in: .whitespaces).lowercased()
        for (suffix, scale) in units where t.hasSuffix(suffix) {
            if let v = Double(t.dropLast(suffix.count).trimmingCharacters(in: .whitespaces)), v >= 0 { return Int(v * scale) }
        }
        if let v = Int(t), v >= 0 { return v }
        throw ValidationError("--size \(text): expected a byte count such as 100MB, 16MiB or 4096")
    }

    var options: RingOptions {
        var o = RingOptions()
        o.timeout = .milliseconds(Int(timeout * 1000))
        if let chunk { o.chunkBytes = chunk }
        if let laneSlots { o.laneSlots = laneSlots }
        o.jobID = "bench-allreduce"
        o.payloadProtection = protection
        o.allReduce = collective
        return o
    }

    /// Every rank's ring keys: one pair all ranks share (left, right and own key alike).
    func secured(_ options: RingOptions, _ keys: CurveKeyPair?, ranks: Int, _ context: ZeroMQContext) throws -> RingOptions {
        guard let keys else { return options }
        var o = options
        let auth = try Authenticator(context: context, logger: Logger(label: "bench"))
        o.curve = RingCurve(
            keys: keys, leftPublicKey: keys.publicKey, rightPublicKey: keys.publicKey,
            memberPublicKeys: Array(repeating: keys.publicKey, count: ranks), authenticator: auth)
        return o
    }

    func run() throws {
        do {
            let elements = try Self.parseBytes(size) / 4
            if let rank, let addresses {
                var security = SecurityOptions()
                (security.keyFile, security.insecure) = (keyFile, insecure)
                let context = try ZeroMQContext()
                let options = try secured(
                    options, try security.security().keys, ranks: addresses.split(separator: ",").count, context)
                defer { options.curve?.authenticator.stop() }
                let run = RankRun(
                    rank: rank, addresses: addresses.split(separator: ",").map(String.init), elements: elements,
                    options: options, iterations: iterations, warmup: warmup, check: check, dtype: dtype)
                if rankReport {
                    print(String(data: try JSONEncoder().encode(try run.run(context: context).mine), encoding: .utf8)!)
                } else {
                    // one rank of a ring across hosts: every rank prints the same summary
                    let all = try run.run(context: context, gather: true).all
                    try summarize(
                        all, elements: elements, ranks: run.addresses.count,
                        where: "rank \(rank) of a ring across \(run.addresses.count) addresses")
                }
                return
            }
            let reports = transport == .inproc ? try inThreads(elements) : try inProcesses()
            try summarize(reports, elements: elements, ranks: ranks, where: "\(transport)")
        } catch {
            exitWithError(error)
        }
    }

    /// Ranks as threads of this process, sharing one context (what inproc requires).
    func inThreads(_ elements: Int) throws -> [RankReport] {
        let addresses = try transport.localAddresses(ranks)
        defer { Transport.removeLocalAddresses(addresses) }
        let context = try ZeroMQContext()
        let options = try secured(options, insecure ? nil : try CurveKeyPair.generate(), ranks: ranks, context)
        defer { options.curve?.authenticator.stop() }
        let group = DispatchGroup(), lock = NSLock()
        nonisolated(unsafe) var results = [Result<RankReport, Error>?](repeating: nil, count: ranks)
        for r in 0..<ranks {
            group.enter()
            let run = RankRun(
                rank: r, addresses: addresses, elements: elements, options: options, iterations: iterations, warmup: warmup, check: check,
                dtype: dtype)
            Thread {
                let result = Result { try run.run(context: context).mine }
                lock.lock(); results[r] = result; lock.unlock()
                group.leave()
            }.start()
        }
        group.wait()
        return try results.map { try $0!.get() }
    }

    /// Ranks as child processes of this binary; a child that fails fails the run with its own message.
    func inProcesses() throws -> [RankReport] {
        let made = try transport.localAddresses(ranks), addresses = made.joined(separator: ",")
        defer { Transport.removeLocalAddresses(made) }
        let key = try EphemeralClusterKey(prefix: "tether-bench", insecure: insecure)
        defer { withExtendedLifetime(key) {} }  // its file stays until the ranks are done
        var children: [(ChildProcess, report: Pipe, errors: Pipe)] = []
        for r in 0..<ranks {
            let out = Pipe(), err = Pipe()
            var args = [
                "bench", "allreduce", "--rank-report", "--rank", "\(r)", "--addresses", addresses, "--size", size,
                "--iterations", "\(iterations)", "--warmup", "\(warmup)", "--timeout", "\(timeout)"
            ]
            if let chunk { args += ["--chunk", "\(chunk)"] }
            if let laneSlots { args += ["--lane-slots", "\(laneSlots)"] }
            if check { args.append("--check") }
            args += ["--dtype", dtype.description, "--protection", protection.rawValue, "--collective", collective.rawValue]
            let child = try ChildProcess(
                ChildProcess.tether, args + key.flags, environment: ProcessInfo.processInfo.environment,
                output: out.fileHandleForWriting.fileDescriptor, error: err.fileHandleForWriting.fileDescriptor)
            // the child holds the write ends: closed here, the reads below see the end when it exits
            try? out.fileHandleForWriting.close()
            try? err.fileHandleForWriting.close()
            children.append((child, out, err))
        }
        var reports: [RankReport] = [], failures: [String] = []
        for (r, (child, out, err)) in children.enumerated() {
            let (stdout, errors) = ChildProcess.readToEnd(out.fileHandleForReading, err.fileHandleForReading)
            let stderr = String(decoding: errors, as: UTF8.self), ending = child.waitUntilExit()
            if ending == .exited(0), let report = try? JSONDecoder().decode(RankReport.self, from: stdout) {
                reports.append(report)
            } else {
                failures.append("rank \(r) (\(ending)): \(stderr.trimmingCharacters(in: .whitespacesAndNewlines))")
            }
        }
        guard failures.isEmpty else { throw CollectiveError(message: failures.joined(separator: "\n")) }
        return reports
    }

    /// What --check holds the result to.
    var checkedBound: String { dtype == .f32 ? "within 1e-6" : "within \(dtype)'s bound (N + 1 roundings)" }

    /// Prints the median time and bandwidths of `reports` (every rank's, by rank), and rank 0's (or,
    /// across hosts, this rank's) breakdown.
    func summarize(_ reports: [RankReport], elements: Int, ranks: Int, where place: String) throws {
        let bytes = Double(elements * 4), n = Double(ranks)
        // An iteration ends when its slowest rank does.
        let times = (0..<iterations).map { i in reports.map { $0.seconds[i] }.max()! }
        let median = times.sorted()[times.count / 2]
        let algbw = bytes / median / 1e9, busbw = algbw * 2 * (n - 1) / max(n, 1)
        if check {
            let hashes = Set(reports.map(\.resultHash))
            guard hashes.count == 1 else {
                throw CollectiveError(message: "ranks ended with different results: hashes \(reports.map(\.resultHash))")
            }
            let worst = reports.map(\.maxRelativeError).max()!
            // f32: float rounding; 16 bits: the inputs, each hop's partial sum and the result rounded once each
            let bound = WireCodec(dtype).map { Double(ranks + 1) * $0.unitRoundoff + 1e-6 } ?? 1e-6
            guard worst <= bound else {
                throw CollectiveError(message: "result differs from the Double reference by \(worst) (relative; bound \(bound))")
            }
        }
        let mine = reports.first { $0.rank == (rank ?? 0) } ?? reports[0]
        let s = mine.statistics
        let perIteration = { (x: Duration) in x.seconds / Double(iterations) * 1000 }
        if json {
            var out: [String: Any] = [
                "ranks": ranks, "bytes": Int(bytes), "dtype": dtype.description, "transport": rank == nil ? transport.rawValue : "tcp",
                "reporting_rank": mine.rank, "collective": collective.rawValue, "algorithm": mine.algorithm,
                "link_latency_us": mine.linkLatency.map { $0 * 1e6 } ?? NSNull(),
                "link_bandwidth_mbps": mine.linkBandwidth.map { $0 / 1e6 } ?? NSNull(),
                "chunk_bytes": options.chunkBytes, "iterations": iterations,
                "median_ms": median * 1000, "times_ms": times.map { $0 * 1000 },
                "algbw_gbps": algbw, "busbw_gbps": busbw,
                // what this rank handed its right neighbour (payload, no headers): the schedule's bytes
                "payload_bytes_per_iteration": s.bytesSent / max(iterations, 1),
                "lane_bytes_per_iteration": s.laneBytesSent / max(iterations, 1),
                "ms_per_iteration": [
                    "waiting": perIteration(s.waiting), "sending": perIteration(s.sending),
                    "reducing": perIteration(s.reducing), "checksumming": perIteration(s.checksumming),
                    "sealing": perIteration(s.sealing)
                ]
            ]
            if check { out["check"] = "ok: bitwise identical on every rank, \(checkedBound) of the Double reference" }
            print(String(data: try JSONSerialization.data(withJSONObject: out, options: [.sortedKeys]), encoding: .utf8)!)
        } else {
            print(
                "all-reduce of \(size) (\(elements) float32\(dtype == .f32 ? "" : ", as \(dtype) on the wire")) over \(ranks) ranks, \(place), chunk \(options.chunkBytes) bytes, by \(mine.algorithm)"
                    + (mine.linkLatency.map {
                        String(
                            format: " (chosen for links measured at %.0f us a hop, %.0f MB/s)", $0 * 1e6, (mine.linkBandwidth ?? 0) / 1e6)
                    } ?? ""))
            print("times (ms): \(times.map { String(format: "%.1f", $0 * 1000) }.joined(separator: " "))")
            print(String(format: "median %.2f ms  algbw %.3f GB/s  busbw %.3f GB/s", median * 1000, algbw, busbw))
            print(
                String(
                    format:
                        "rank \(mine.rank) per iteration (ms): waiting %.2f, sending %.2f, reducing %.2f, checksumming %.2f, sealing %.2f",
                    perIteration(s.waiting), perIteration(s.sending), perIteration(s.reducing), perIteration(s.checksumming),
                    perIteration(s.sealing)))
            if check { print("check: bitwise identical on every rank, \(checkedBound) of the Double reference") }
        }
    }
}

/// What one rank measured.
struct RankReport: Codable {
    var rank: Int
    var seconds: [Double]
    /// summed over the timed all-reduces only (not the barriers between them)
    var statistics: RingStatistics
    var resultHash: UInt64 = 0
    var maxRelativeError: Double = 0
    /// The schedule the timed all-reduces took, and the links' figures it was chosen by (--collective auto, or by-size over tcp).
    var algorithm = ""
    var linkLatency: Double?, linkBandwidth: Double?
}

struct RankRun {
    var rank: Int, addresses: [String], elements: Int, options: RingOptions, iterations: Int, warmup: Int, check: Bool
    /// The values on the wire.
    var dtype: ChunkHeader.DType

    /// Rank r's check values; the reference sum over ranks is computed in Double from the same formula.
    static func value(_ i: Int, rank: Int) -> Float { Float((i % 1009) - 504) * 0.001 + Float(rank) * 0.5 }

    /// This rank's measurements and, with `gather`, every rank's (all-gathered after the timed runs).
    func run(context: ZeroMQContext, gather: Bool = false) throws -> (mine: RankReport, all: [RankReport]) {
        let ring = try Ring(context: context, rank: rank, addresses: addresses, options: options)
        let mine = try measure(ring)
        guard gather else { return (mine, [mine]) }
        let all = try ring.allGather([UInt8](try JSONEncoder().encode(mine)))
        return (
            mine,
            try all.enumerated().map { r, bytes in
                do {
                    let report = try JSONDecoder().decode(RankReport.self, from: Data(bytes))
                    guard report.rank == r, report.seconds.count == mine.seconds.count else {
                        throw CollectiveError(message: "rank \(r) measured something else")
                    }
                    return report
                } catch { throw CollectiveError(message: "rank \(r)'s measurements do not decode: \(error)") }
            }
        )
    }

    private func measure(_ ring: Ring) throws -> RankReport {
        var report = RankReport(rank: rank, seconds: [], statistics: RingStatistics())
        (report.linkLatency, report.linkBandwidth) = (ring.linkCost?.latency, ring.linkCost?.bandwidth)
        // --collective auto times its candidates on the first all-reduces of a size: untimed here
        let warmup = warmup + (dtype == .f32 ? ring.tuningCalls(bytes: elements * 4) : 0)
        var buffer = [Float](repeating: 1, count: elements)
        if check {
            for i in 0..<elements { buffer[i] = Self.value(i, rank: rank) }
            _ = try buffer.withUnsafeMutableBufferPointer { try ring.allReduce($0, wire: dtype) }
            var worst = 0.0
            for i in 0..<elements {
                let exact = (0..<addresses.count).reduce(0.0) { $0 + Double(Self.value(i, rank: $1)) }
                let scale = (0..<addresses.count).reduce(0.0) { $0 + abs(Double(Self.value(i, rank: $1))) }
                worst = max(worst, abs(Double(buffer[i]) - exact) / max(scale, 1e-30))
            }
            report.maxRelativeError = worst
            report.resultHash = buffer.withUnsafeBytes { XXH3_64bits($0.baseAddress, $0.count) }
        }
        for i in 0..<(warmup + iterations) {
            try ring.barrier()
            let before = ring.statistics, start = ContinuousClock.now
            // Average keeps the values bounded over many iterations; it costs one division per element
            // of the rank's own segment.
            _ = try buffer.withUnsafeMutableBufferPointer { try ring.allReduce($0, wire: dtype, average: true) }
            guard i >= warmup else { continue }
            report.seconds.append(start.duration(to: .now).seconds)
            report.statistics += ring.statistics - before
            report.algorithm = ring.lastAllReduce.rawValue
        }
        return report
    }
}

/// `--dtype`'s values by name (help would show a raw-valued enum's number, and DType's raw value is
/// the wire's).
enum WireType: String, CaseIterable, ExpressibleByArgument {
    case f32, f16, bf16
    var dtype: ChunkHeader.DType {
        switch self {
        case .f32: .f32
        case .f16: .f16
        case .bf16: .bf16
        }
    }
}
