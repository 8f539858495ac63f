import Foundation
import Testing
import TetherProcess

/// The ring between real processes over loopback tcp and unix sockets: the `tether bench allreduce`
/// binary, as a user runs it.
@Suite(.serialized) struct CollectiveProcessTests {
    /// Three processes; every rank checks its result against the Double reference and the parent compares
    /// the result's hash across ranks. Over tcp, and over unix sockets (the default: what a cluster's
    /// same-host neighbours use).
    @Test(arguments: [(["--transport", "tcp"], "tcp"), ([], "ipc")])
    func threeProcessesAgreeWithTheReference(transport: [String], named: String) throws {
        let r = try CLI.run(
            [
                "bench", "allreduce", "--ranks", "3", "--size", "3000003B", "--chunk", "65536",
                "--iterations", "2", "--warmup", "0", "--check", "--timeout", "20"
            ] + transport, timeout: 120)
        #expect(r.status == 0, "\(r.stderr)")
        #expect(r.stdout.contains("check: bitwise identical on every rank, within 1e-6 of the Double reference"), "\(r.stdout)")
        #expect(r.stdout.contains("over 3 ranks, \(named)"), "\(r.stdout)")
    }

    @Test func badFlagsAreRefused() throws {
        let r = try CLI.run(["bench", "allreduce", "--size", "12 parsecs"])
        #expect(r.status != 0)
        #expect(r.stderr.contains("--size 12 parsecs: expected a byte count"))
        let s = try CLI.run(["bench", "allreduce", "--rank", "3", "--addresses", "tcp://127.0.0.1:1,tcp://127.0.0.1:2"])
        #expect(s.status != 0)
        #expect(s.stderr.contains("--rank 3 is outside the 2 addresses given"))
    }

    /// The multi-host form, one rank per process: every rank prints the same summary of all ranks
    /// (median, algbw, busbw), as text or with --json.
    @Test func eachRankOfARingAcrossHostsPrintsTheSummary() throws {
        let addresses = CLI.freePorts(2).map { "tcp://127.0.0.1:\($0)" }.joined(separator: ",")
        let ranks = try (0..<2).map { rank in
            try CLI.start(
                ["bench", "allreduce", "--rank", "\(rank)", "--addresses", addresses, "--size", "4MB", "--iterations", "3"]
                    + (rank == 1 ? ["--json"] : []) + CLI.key, bound: 60)
        }
        let (text, json) = (ranks[0].finish(), ranks[1].finish())
        #expect(text.status == 0 && json.status == 0, "\(text.stderr)\(json.stderr)")
        #expect(
            text.stdout.contains("over 2 ranks, rank 0 of a ring across 2 addresses") && text.stdout.contains("algbw")
                && text.stdout.contains("busbw"), "\(text.stdout)")
        let summary = try JSONSerialization.jsonObject(with: Data(json.stdout.utf8)) as? [String: Any]
        let median = summary?["median_ms"] as? Double ?? 0
        #expect(median > 0 && summary?["busbw_gbps"] is Double && summary?["reporting_rank"] as? Int == 1, "\(json.stdout)")
        #expect(
            text.stdout.contains(String(format: "median %.2f ms", median)),
            "both ranks report the same median: \(text.stdout) \(json.stdout)")
    }

    /// Three ranks run many all-reduces; rank 1 is killed in the middle. Rank 2 (its right neighbour) times
    /// out naming it; rank 0, whose deadline is set later, names it too, through rank 2's relayed cause or
    /// its own failed sends to rank 1. Nobody hangs.
    @Test func aPeerKilledMidOperationIsNamedAndNobodyHangs() throws {
        let ports = CLI.freePorts(3)
        let addresses = ports.map { "tcp://127.0.0.1:\($0)" }.joined(separator: ",")
        var ranks: [(ChildProcess, Pipe)] = []
        let discard = try FileHandle(forWritingTo: URL(fileURLWithPath: "/dev/null"))
        defer { try? discard.close() }
        for rank in 0..<3 {
            let err = Pipe()
            let p = try ChildProcess(
                CLI.binary.path,
                [
                    "bench", "allreduce", "--rank", "\(rank)", "--addresses", addresses, "--size", "8MB",
                    "--iterations", "100000", "--timeout", rank == 0 ? "6" : "2"
                ] + CLI.key,
                environment: ProcessInfo.processInfo.environment.merging(["OPENBLAS_NUM_THREADS": "1"]) { $1 },
                output: discard.fileDescriptor, error: err.fileHandleForWriting.fileDescriptor)
            try? err.fileHandleForWriting.close()
            ranks.append((p, err))
        }
        // into the all-reduces: every rank has spent half a second of CPU on them (a bench rank prints nothing until its end)
        func cpuSeconds(_ pid: Int32) -> Double {
            guard let stat = try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8), let close = stat.lastIndex(of: ")") else {
                return 0
            }
            let fields = stat[stat.index(after: close)...].split(separator: " ")  // state is field 3: utime and stime are 14 and 15
            guard fields.count > 12, let user = Double(fields[11]), let system = Double(fields[12]) else { return 0 }
            return (user + system) / Double(sysconf(Int32(_SC_CLK_TCK)))
        }
        CLI.waitUntil(seconds: 30) { ranks.allSatisfy { cpuSeconds($0.0.processIdentifier) >= 0.5 } }
        #expect(ranks.allSatisfy { $0.0.isRunning }, "all ranks should still be working when rank 1 is killed")
        kill(ranks[1].0.processIdentifier, SIGKILL)
        var messages: [Int: String] = [:]
        for rank in [0, 2] {
            let (p, err) = ranks[rank]
            // a hard bound, should a rank hang
            DispatchQueue.global().asyncAfter(deadline: .now() + 20) { if p.isRunning { p.terminate() } }
            messages[rank] = String(decoding: err.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
            p.waitUntilExit()
            #expect(p.terminationStatus == 1, "rank \(rank) should fail, not be killed: \(messages[rank]!)")
        }
        ranks[1].0.waitUntilExit()
        #expect(messages[2]!.contains("rank 2: no message from rank 1 (tcp://127.0.0.1:\(ports[1]))"), "\(messages[2]!)")
        #expect(
            messages[0]!.contains("rank 2 gave up on the ring: rank 2: no message from rank 1")
                || messages[0]!.contains("rank 0: cannot send to rank 1"), "\(messages[0]!)")
    }
}
