import Foundation
import Logging
import Testing
import TetherComm
import TetherMessages
import TetherTrain

/// The attacks of the security report, replayed against the real binaries over loopback: a process
/// on the same network, without the cluster key (or, with --insecure, without a place in the job),
/// speaking ZeroMQ and protobuf by hand. The job must go on and end exactly as an unattacked one,
/// and the attacker must learn nothing.
@Suite(.serialized) struct SecurityTests {
    let training = [
        "--model", "mlp-wn", "--max-steps", "30", "--train-limit", "1920", "--test-limit", "200", "--batch", "32",
        "--seed", "5", "--checkpoint-every", "10"
    ]

    /// A hand-made client of the coordinator's control socket.
    final class Attacker {
        let context = try! ZeroMQContext()
        var sockets: [ZeroMQSocket] = []

        /// `reads` false: libzmq takes in one message and then stops reading for this socket, as a peer
        /// that never reads would (set before connecting: a high-water mark applies to new pipes only).
        func dealer(_ address: String, keys: CurveKeyPair? = nil, identity: [UInt8]? = nil, reads: Bool = true) throws -> ZeroMQSocket {
            let s = try ZeroMQSocket(context, .dealer, linger: .zero)
            if !reads { try s.setHighWaterMarks(send: 0, receive: 100) }
            if let identity { try s.setRoutingID(identity) }
            if let keys { try s.secure(.client(keys, serverKey: keys.publicKey)) }
            try s.connect(address)
            sockets.append(s)
            return s
        }

        func send(_ s: ZeroMQSocket, _ body: Envelope.Body, job: String, rank: Int32 = 0) {
            try? s.send([Envelope(jobID: job, senderRank: rank, body: body).encoded()], wait: false)
        }

        /// Every message the socket receives within `seconds`.
        func drain(_ s: ZeroMQSocket, seconds: Double) -> [Envelope.Body] {
            var out: [Envelope.Body] = []
            let deadline = ContinuousClock.now + .milliseconds(Int(seconds * 1000))
            while let frames = try? s.receive(deadline: deadline) {
                if let env = try? withExtendedLifetime(frames, { try Envelope(decoding: frames.last!.bytes) }), let b = env.body {
                    out.append(b)
                }
            }
            return out
        }

        deinit { sockets.forEach { $0.close() } }
    }

    /// A safetensors file whose one tensor claims shape [2^62, 4].
    static let overflowingCheckpoint: [UInt8] = {
        let header = #"{"w":{"dtype":"F32","shape":[4611686018427387904,4],"data_offsets":[0,16]}}"#
        var bytes: [UInt8] = []
        withUnsafeBytes(of: UInt64(header.utf8.count).littleEndian) { bytes += $0 }
        return bytes + Array(header.utf8) + [UInt8](repeating: 0, count: 16)
    }()

    /// Everything the report sent a coordinator, from a connection that holds no rank.
    func forge(_ a: Attacker, _ s: ZeroMQSocket, job: String) {
        a.send(s, .heartbeat, job: job, rank: 0)
        a.send(s, .ready(.init(parameterHash: 1, layoutFingerprint: 2)), job: job)
        a.send(
            s,
            .stepReport(
                .init(
                    globalStep: .max, epoch: 0, lossSum: 1, count: 1, correct: .max, computeSeconds: 0, allreduceSeconds: 0,
                    optimizerSeconds: 0, parameterHash: 0, waitSeconds: 0)), job: job)
        a.send(
            s,
            .evalReport(
                .init(
                    epoch: 0, lossSum: 1, count: 1, correct: .max, scores: [Float](repeating: 0.5, count: 100_000),
                    labels: [Int32](repeating: 1, count: 100_000))), job: job)
        a.send(s, .checkpoint(.init(globalStep: 30, safetensors: Self.overflowingCheckpoint)), job: job)
        a.send(s, .dataRequest(.init(split: 0, indices: [UInt32](0..<1_000_000))), job: job)
        a.send(s, .abort(.init(originRank: 0, reason: "forged")), job: job)
        a.send(s, .abort(.init(originRank: 0, reason: "foreign")), job: "another-job")
        try? s.send([[UInt8]((0..<100).map { _ in UInt8.random(in: 0...255) })], wait: false)
        try? s.send([[UInt8](repeating: 0x41, count: 200 << 20)], wait: false)  // above the coordinator's message limit
    }

    /// The coordinator and two workers, attacked before and while they train; returns the test
    /// accuracy line of the final checkpoint's evaluation.
    func attackedJob(secure: Bool, attack: Bool) throws -> (eval: String, coordinatorLog: String, attackerLearned: [Envelope.Body]) {
        let dir = CLI.tempDir("attacked")
        defer { try? FileManager.default.removeItem(at: dir) }
        let ports = CLI.freePorts(3), port = ports[0], job = "attacked-\(getpid())"
        let address = "tcp://127.0.0.1:\(port)"
        let security = secure ? CLI.key : ["--insecure"]
        let coordinator = try CLI.start(
            [
                "coordinator", "--listen", address, "--workers", "2", "--job-id", job,
                "--run-dir", dir.path
            ] + training + security, bound: 150)
        let attacker = Attacker()
        var learned: [Envelope.Body] = []
        waitUntilListening(address)
        if attack {
            // before anyone joined: forged reports, then a Hello that disconnects (it must not hold a place)
            let early = try attacker.dealer(address)
            forge(attacker, early, job: job)
            let ghost = try attacker.dealer(address)
            attacker.send(ghost, .hello(.init(advertiseAddress: "tcp://127.0.0.1:1", tetherVersion: "x", threads: 1)), job: job, rank: -1)
            learned += attacker.drain(early, seconds: 1) + attacker.drain(ghost, seconds: 0.5)
            ghost.close()
            // without the key its Hello never got in (nothing to let go); --insecure, it is let go when it falls silent
            #expect(
                secure || coordinator.waitFor("dropped the worker at tcp://127.0.0.1:1, which stopped saying hello", timeout: 30),
                "the coordinator never let the silent Hello go")
        }
        let ringPorts = Array(ports[1...])
        let workers = try ringPorts.map {
            try CLI.start(
                ["worker", "--coordinator", address, "--job-id", job, "--advertise", "tcp://127.0.0.1:\($0)"] + security, bound: 150)
        }
        if attack {
            waitForFile(dir.appendingPathComponent("checkpoint.safetensors"))
            // while training: the same forgeries, a late Hello, and bytes at each worker's ring port
            let late = try attacker.dealer(address)
            forge(attacker, late, job: job)
            attacker.send(late, .hello(.init(advertiseAddress: "tcp://127.0.0.1:2", tetherVersion: "x", threads: 1)), job: job, rank: -1)
            for p in ringPorts {
                let push = try ZeroMQSocket(attacker.context, .push, linger: .zero)
                try push.connect("tcp://127.0.0.1:\(p)")
                try? push.send([[UInt8]((0..<100).map { _ in UInt8.random(in: 0...255) })], wait: false)
                try? push.send(
                    [Envelope(jobID: "another-job", senderRank: 1, body: .abort(.init(originRank: 1, reason: "foreign"))).encoded()],
                    wait: false)
                try? push.send(
                    [Envelope(jobID: job, senderRank: 7, body: .abort(.init(originRank: 7, reason: "not a neighbour"))).encoded()],
                    wait: false)
                usleep(200_000)
                push.close()
            }
            learned += attacker.drain(late, seconds: 1)
            // the 200 MB frames were refused before they were read (ZMQ_MAXMSGSIZE)
            #expect(peakResidentMegabytes(coordinator.pid) < 400, "coordinator peak RSS \(peakResidentMegabytes(coordinator.pid)) MB")
        }
        let c = coordinator.finish()
        for w in workers { let r = w.finish(); #expect(r.status == 0, "worker: \(r.stderr)") }
        #expect(c.status == 0, "coordinator: \(c.stdout)\(c.stderr)")
        #expect(c.stdout.contains("done: 30 steps"), "\(c.stdout)")
        let eval = try CLI.run(["eval", "--checkpoint", dir.appendingPathComponent("checkpoint.safetensors").path, "--test-limit", "200"])
        #expect(eval.status == 0, "\(eval.stderr)")
        return (eval.stdout, c.stdout + c.stderr, learned)
    }

    /// Returns once a TCP connection to `address` (tcp://127.0.0.1:PORT) is accepted: the coordinator has
    /// loaded its data and bound its port (a slow machine may take seconds).
    func waitUntilListening(_ address: String) {
        let port = UInt16(address.split(separator: ":").last!)!
        let deadline = Date().addingTimeInterval(60)
        while Date() < deadline {
            let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
            var addr = sockaddr_in()
            (addr.sin_family, addr.sin_port, addr.sin_addr.s_addr) = (
                sa_family_t(AF_INET), in_port_t(port.bigEndian), inet_addr("127.0.0.1")
            )
            let ok = withUnsafePointer(to: &addr) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) == 0 }
            }
            close(fd)
            if ok { return }
            usleep(100_000)
        }
    }

    /// Runs a program with posix_spawn (its output to a temporary file), killing it after `timeout`.
    func spawnAndWait(_ argv: [String], timeout: Double) -> (status: Int32, output: String) {
        let log = FileManager.default.temporaryDirectory.appendingPathComponent("tether-spawn-\(UUID()).log").path
        defer { try? FileManager.default.removeItem(atPath: log) }
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        posix_spawn_file_actions_addopen(&actions, 1, log, O_WRONLY | O_CREAT | O_TRUNC, 0o600)
        posix_spawn_file_actions_adddup2(&actions, 1, 2)
        var cArgs: [UnsafeMutablePointer<CChar>?] = argv.map { strdup($0) } + [nil]
        defer { cArgs.forEach { free($0) } }
        var env: [UnsafeMutablePointer<CChar>?] = ProcessInfo.processInfo.environment.map { strdup("\($0.key)=\($0.value)") } + [nil]
        defer { env.forEach { free($0) } }
        var pid: pid_t = 0
        guard posix_spawn(&pid, argv[0], &actions, nil, &cArgs, &env) == 0 else { return (-1, "posix_spawn failed") }
        let deadline = Date().addingTimeInterval(timeout)
        var status: Int32 = 0
        while waitpid(pid, &status, WNOHANG) == 0 {
            if Date() > deadline { kill(pid, SIGKILL) }
            usleep(50_000)
        }
        let output = (try? String(contentsOfFile: log, encoding: .utf8)) ?? ""
        return ((status & 0x7f) == 0 ? (status >> 8) & 0xff : -1, output)
    }

    /// A process's peak resident set (VmHWM), in MB.
    func peakResidentMegabytes(_ pid: Int32) -> Int {
        let status = (try? String(contentsOfFile: "/proc/\(pid)/status", encoding: .utf8)) ?? ""
        let line = status.split(separator: "\n").first { $0.hasPrefix("VmHWM:") } ?? ""
        return (Int(line.split(separator: " ").dropFirst().first ?? "") ?? 0) / 1024
    }

    /// 1,100 idle ZeroMQ connections (handshake done: an --insecure coordinator cannot tell them from
    /// workers that have not said hello yet) to a coordinator started under a soft open-files limit of
    /// 1,024, the usual default, used to lock the real worker out. The coordinator raises the soft
    /// limit to the hard one.
    @Test(.enabled(if: dataInstalled, "needs Debian's dataset-fashion-mnist"))
    func idleConnectionsDoNotLockWorkersOut() throws {
        var hard = rlimit()
        getrlimit(__rlimit_resource_t(RLIMIT_NOFILE.rawValue), &hard)
        guard hard.rlim_max > 2_400 else { return }  // nothing to raise to: the test would show nothing
        let dir = CLI.tempDir("idle")
        defer { try? FileManager.default.removeItem(at: dir) }
        let address = "tcp://127.0.0.1:\(CLI.freePorts(1)[0])"
        let coordinator = try CLI.start(
            [
                "-c", "ulimit -Sn 1024 && exec \"$0\" \"$@\"", CLI.binary.path, "coordinator", "--listen", address, "--workers", "1",
                "--run-dir", dir.path, "--model", "mlp", "--max-steps", "3", "--train-limit", "256", "--test-limit", "64", "--insecure"
            ],
            bound: 120, executable: URL(fileURLWithPath: "/bin/bash"))
        waitUntilListening(address)
        // libzmq allows 1,023 sockets a context by default: three attackers of 400
        let attackers = (0..<3).map { _ in Attacker() }
        for a in attackers { for _ in 0..<400 { _ = try a.dealer(address) } }
        usleep(3_000_000)  // every connection made and its handshake done (libzmq connects in its own threads: nothing to wait on)
        // Foundation's Process crashes in a process with this many descriptors open: posix_spawn instead.
        let worker = spawnAndWait([CLI.binary.path, "worker", "--coordinator", address, "--insecure"], timeout: 60)
        #expect(worker.status == 0, "\(worker.output)")
        let c = coordinator.finish()
        #expect(c.status == 0 && c.stdout.contains("done: 3 steps"), "\(c.stdout)\(c.stderr)")
    }

    func waitForFile(_ url: URL) {
        let deadline = Date().addingTimeInterval(60)
        while !FileManager.default.fileExists(atPath: url.path) && Date() < deadline { usleep(100_000) }
    }

    /// With --insecure nothing is secret, but nobody outside the job can crash, stop or steer it: the
    /// attacked job ends bitwise where an unattacked one does (the same evaluation), and a connection
    /// that holds no rank is told nothing but that it was turned away (an Abort, or the Finish every
    /// waiting worker gets when the job ends) or that it holds no rank (Unassigned).
    @Test(.enabled(if: dataInstalled, "needs Debian's dataset-fashion-mnist"))
    func forgedMessagesNeitherCrashNorSteerAnInsecureJob() throws {
        let quiet = try attackedJob(secure: false, attack: false)
        let attacked = try attackedJob(secure: false, attack: true)
        #expect(attacked.eval == quiet.eval, "attacked: \(attacked.eval) unattacked: \(quiet.eval)")
        #expect(attacked.coordinatorLog.contains("dropped a Heartbeat from a connection that holds no rank"), "\(attacked.coordinatorLog)")
        #expect(
            attacked.coordinatorLog.contains("the worker at tcp://127.0.0.1:1, which stopped saying hello before the job formed"),
            "\(attacked.coordinatorLog)")
        for body in attacked.attackerLearned {
            switch body {
            case .abort(let a):
                #expect(a.reason.contains("the job formed with 2 workers before a worker at tcp://127.0.0.1:2 said hello"), "\(a.reason)")
            case .finish:
                // a hello that landed before the job formed (a loaded machine: two suites at once) waits
                // like any worker beyond the job's count, and is told when the job ends: turned away too
                break
            case .unassigned:
                break  // its forged reports and heartbeats: it holds no rank
            default: Issue.record("the attacker received \(body)")
            }
        }
        // a worker of this job whose coordinator was replaced would say hello again on this
        #expect(attacked.attackerLearned.contains(.unassigned), "its forged reports were not answered Unassigned")
    }

    /// With CURVE (the default) the attacker, holding no key, gets no further than the handshake: the
    /// job ends as an unattacked one, and the attacker receives nothing at all.
    @Test(.enabled(if: dataInstalled, "needs Debian's dataset-fashion-mnist"))
    func anAttackerWithoutTheKeyLearnsNothing() throws {
        let quiet = try attackedJob(secure: true, attack: false)
        let attacked = try attackedJob(secure: true, attack: true)
        #expect(attacked.eval == quiet.eval, "attacked: \(attacked.eval) unattacked: \(quiet.eval)")
        #expect(attacked.attackerLearned.isEmpty, "\(attacked.attackerLearned)")
        #expect(attacked.coordinatorLog.contains("failed the handshake"), "\(attacked.coordinatorLog)")
        #expect(!attacked.coordinatorLog.contains("dropped a Heartbeat"), "a message got past the handshake: \(attacked.coordinatorLog)")
    }

    /// A worker with another key, or --insecure against a secure coordinator (and the reverse), is
    /// refused within seconds, and both sides say why.
    @Test func aWorkerWithTheWrongKeyIsRefusedAndBothSidesSayWhy() throws {
        let dir = CLI.tempDir("wrong-key")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: dir) }
        let other = dir.appendingPathComponent("other.key").path
        #expect(try CLI.run(["keygen", other]).status == 0)
        let address = "tcp://127.0.0.1:\(CLI.freePorts(1)[0])"
        let coordinator = try CLI.start(
            [
                "coordinator", "--listen", address, "--workers", "1", "--model", "mlp", "--train-limit", "100",
                "--run-dir", dir.appendingPathComponent("run").path
            ] + CLI.key, bound: 60)
        waitUntilListening(address)
        for (flags, reason) in [
            (["--key-file", other], "it holds another cluster key, or runs --insecure (this worker runs with CURVE)"),
            (["--insecure"], "it runs with CURVE and this worker runs --insecure")
        ] {
            let w = try CLI.run(["worker", "--coordinator", address] + flags, timeout: 30)
            // at once, on its own (status 1), not ended by the 30 s bound's SIGTERM while it waited for a coordinator
            #expect(w.status == 1)
            #expect(w.stderr.contains("the handshake with the coordinator at \(address) failed: \(reason)"), "\(w.stderr)")
        }
        usleep(1_100_000)  // a new second of the coordinator's log rate limit
        let w = try CLI.run(["worker", "--coordinator", address, "--job-id", "another"] + CLI.key, timeout: 30)
        #expect(
            w.status == 1 && w.stderr.contains("refused: this coordinator runs job \"tether\", the worker asked for job \"another\""),
            "\(w.status): \(w.stderr)")
        kill(coordinator.pid, SIGTERM)
        let c = coordinator.finish()
        #expect(c.stdout.contains("refused a worker at") && c.stdout.contains("the worker asked for job \"another\""), "\(c.stdout)")
        #expect(c.stdout.contains("failed the handshake: it holds another cluster key, or runs --insecure"), "\(c.stdout)")
        // two refused clients retrying: said once (a minute's repeats are counted, not printed)
        #expect(c.stdout.components(separatedBy: "failed the handshake").count == 2, "\(c.stdout)")
    }

    /// The identity of the next worker that says Hello to a test's ROUTER (what else arrives, such as
    /// a refused worker's Abort, is passed over).
    func helloIdentity(_ router: ZeroMQSocket) throws -> [UInt8]? {
        let deadline = ContinuousClock.now + .seconds(10)
        while let frames = try router.receive(deadline: deadline) {
            let hello = try withExtendedLifetime(frames) { () -> [UInt8]? in
                guard case .hello = try Envelope(decoding: frames.last!.bytes).body else { return nil }
                return Array(frames[0].bytes)
            }
            if let hello { return hello }
        }
        return nil
    }

    /// A fake coordinator (reachable only when a worker runs --insecure) cannot make the worker bind a
    /// socket file where it likes, train on an invalid configuration, or read a file outside its data
    /// roots: the worker refuses the Assign naming what it refused, and touches nothing.
    @Test func aWorkerRefusesAHostileAssignment() throws {
        let context = try ZeroMQContext()
        let router = try ZeroMQSocket(context, .router, linger: .zero)
        let address = try router.bind("tcp://127.0.0.1:0")
        defer { router.close() }
        let planted = FileManager.default.temporaryDirectory.appendingPathComponent("tether-planted-\(UUID())").path
        var zeroBatch = TrainingConfig.defaults(for: "mlp")
        zeroBatch.batch = 0
        var passwd = TrainingConfig.defaults(for: "lm-tied")
        passwd.data = "text:/etc/passwd"
        let cases: [(ring: String, config: TrainingConfig, reason: String)] = [
            ("ipc://\(planted)", .defaults(for: "mlp"), "an ipc socket must lie in this job's runtime folder"),
            ("tcp://127.0.0.1:5", zeroBatch, "the job configuration is not valid"),
            ("tcp://127.0.0.1:5", passwd, "the job reads /etc/passwd, which is outside this worker's data roots")
        ]
        for c in cases {
            let worker = try CLI.start(["worker", "--coordinator", address, "--insecure"], bound: 30)
            guard let identity = try helloIdentity(router) else { Issue.record("no Hello"); continue }
            let config = [UInt8](try JSONEncoder().encode(c.config))
            let assign = Assign(
                rank: 0, worldSize: 1, ring: [c.ring], configJSON: config, hashEvery: 1, checkpointEvery: 0, bucketBytes: 1 << 20)
            try router.send([identity, Envelope(jobID: "tether", senderRank: -1, body: .assign(assign)).encoded()])
            let r = worker.finish()
            #expect(r.status != 0)
            #expect(r.stderr.contains("refusing the coordinator's assignment") && r.stderr.contains(c.reason), "\(r.stderr)")
            #expect(!FileManager.default.fileExists(atPath: planted))
        }
    }

    /// A coordinator's Assign whose numbers are each well-formed but more than a host can hold (batch
    /// or epochs of 2^62, a vocabulary of 2^40 x size 2^20, 2^62 wide buckets, a hidden layer of 2^20
    /// squared) is refused before anything is allocated: the worker exits 1 naming the setting and its
    /// bound, or what the job would need and what it may use; the coordinator is told why (Abort).
    /// Over --insecure and with the key (a member holding the key may stop a job, not crash a host).
    @Test(arguments: [false, true]) func aWorkerRefusesAnAssignItCannotHold(secure: Bool) throws {
        let context = try ZeroMQContext()
        let router = try ZeroMQSocket(context, .router, linger: .zero)
        var authenticator: Authenticator?
        if secure {
            let keys = try KeyFile.read(CLI.keyFile)
            let auth = try Authenticator(context: context, logger: Logger(label: "test"))
            auth.allow([keys.publicKey], domain: "control")
            try router.secure(.server(keys, domain: "control", auth))
            authenticator = auth
        }
        defer { authenticator?.stop() }
        let address = try router.bind("tcp://127.0.0.1:0")
        defer { router.close() }
        func config(_ model: String, _ change: (inout TrainingConfig) -> Void) -> TrainingConfig {
            var c = TrainingConfig.defaults(for: model)
            change(&c)
            return c
        }
        let cases: [(config: TrainingConfig, reason: String)] = [
            (config("mlp") { $0.batch = 1 << 62 }, "--batch 4611686018427387904 is above its bound of 1048576"),
            (config("mlp") { $0.epochs = 1 << 62 }, "--epochs 4611686018427387904 is above its bound of 1000000"),
            (config("mlp") { ($0.batch, $0.epochs) = (1 << 62, 1 << 62) }, "is above its bound"),
            (
                config("lm-tied") { ($0.language.vocabulary, $0.language.size) = (1 << 40, 1 << 20) },
                "--vocabulary 1099511627776 is above its bound"
            ),
            (
                config("lm-tied") { ($0.language.vocabulary, $0.language.size) = (1 << 30, 1 << 16) },
                "this job needs about 569 TB (vocabulary embeddings: vocabulary 1073741824 x size 65536 x copies 2 x 4 bytes); this worker may use 1.07 GB (--max-memory)"
            ),
            (config("wide-deep") { $0.wideDeep.wideBuckets = 1 << 62 }, "--buckets or --wide-buckets is too large"),
            (
                config("wide-deep") { $0.wideDeep.hidden = [1 << 20, 1 << 20] },
                "(hidden layer 2: inputs 1048576 x width 1048576 x copies 3 x 4 bytes); this worker may use 1.07 GB"
            )
        ]
        for c in cases {
            let worker = try CLI.start(
                ["worker", "--coordinator", address, "--max-memory", "1G"] + (secure ? CLI.key : ["--insecure"]), bound: 30)
            guard let identity = try helloIdentity(router) else {
                Issue.record("no Hello")
                continue
            }
            var assign = Assign(
                rank: 0, worldSize: 1, ring: ["tcp://127.0.0.1:5"], configJSON: [UInt8](try JSONEncoder().encode(c.config)),
                hashEvery: 1, checkpointEvery: 0, bucketBytes: 1 << 20)
            if secure {
                let ring = try CurveKeyPair.generate()
                (assign.ringPublicKeys, assign.ringSecretKey) = ([ring.publicKey], ring.secretKey)
            }
            try router.send([identity, Envelope(jobID: "tether", senderRank: -1, body: .assign(assign)).encoded()])
            var told: String?
            let deadline = ContinuousClock.now + .seconds(10)
            while told == nil, let frames = try router.receive(deadline: deadline) {
                let env = try withExtendedLifetime(frames) { try Envelope(decoding: frames.last!.bytes) }
                if case .abort(let a) = env.body { told = a.reason }
            }
            let r = worker.finish()
            #expect(r.status == 1, "\(r.stderr)")
            #expect(r.stderr.contains("refusing the coordinator's assignment") && r.stderr.contains(c.reason), "\(r.stderr)")
            #expect(told?.contains(c.reason) == true, "the coordinator was told: \(told ?? "nothing")")
        }
    }

    /// An --insecure coordinator with --serve-data for `workers`, on a port the kernel picks; its address
    /// (from its first line, printed once it listens) and run directory.
    func servingCoordinator(workers: Int) throws -> (CLI.Background, String, URL) {
        let dir = CLI.tempDir("serving")
        let coordinator = try CLI.start(
            ["coordinator", "--listen", "tcp://127.0.0.1:0", "--workers", "\(workers)", "--serve-data", "--insecure", "--run-dir", dir.path]
                + training, bound: 150)
        let line = coordinator.line(containing: "coordinator on tcp://", timeout: 60) ?? ""
        let address = line.split(separator: " ").first { $0.hasPrefix("tcp://") }.map { String($0.dropLast()) } ?? "tcp://127.0.0.1:1"
        return (coordinator, address, dir)
    }

    /// A stranger on an --insecure job with --serve-data sends what is well-formed and in range one
    /// number at a time but more than a host should hold: twelve Hellos with 50 MB addresses and a
    /// thousand of 1 MB on one connection, four DataRequests of 60M indices. Each is refused before it is
    /// decoded; the coordinator's peak RSS stays under 500 MB and the real worker's job finishes.
    @Test(.enabled(if: dataInstalled, "needs Debian's dataset-fashion-mnist"))
    func hugeHellosAndRequestsCostTheCoordinatorNothing() throws {
        let (coordinator, address, dir) = try servingCoordinator(workers: 1)
        defer { try? FileManager.default.removeItem(at: dir) }
        let attacker = Attacker()
        let s = try attacker.dealer(address)
        func hello(_ bytes: Int) -> [UInt8] {
            Envelope(
                jobID: "tether", senderRank: -1,
                body: .hello(.init(advertiseAddress: String(repeating: "a", count: bytes), tetherVersion: "x", threads: 1))
            ).encoded()
        }
        let big = hello(50 << 20), medium = hello(1 << 20)
        for _ in 0..<12 { try s.send([big]) }
        for _ in 0..<1000 { try s.send([medium]) }
        let request = Envelope(
            jobID: "tether", senderRank: 0, body: .dataRequest(.init(split: 0, indices: [UInt32](repeating: 0, count: 60_000_000)))
        ).encoded()
        for _ in 0..<4 { try s.send([request]) }
        let worker = try CLI.start(["worker", "--coordinator", address, "--insecure"], bound: 150)
        let c = coordinator.finish(), w = worker.finish()
        // the coordinator's last line gives its peak RSS (VmHWM) over the whole job
        let peak =
            c.stdout.components(separatedBy: "coordinator peak RSS ").dropFirst().first.flatMap { Int($0.prefix { $0.isNumber }) } ?? 0
        print("\(#function): coordinator peak RSS \(peak) MB")
        #expect(peak > 0 && peak < 500, "coordinator peak RSS \(peak) MB")
        #expect(c.status == 0 && c.stdout.contains("done: 30 steps"), "\(c.stdout)\(c.stderr)")
        #expect(w.status == 0, "\(w.stderr)")
        #expect(c.stdout.contains("takes 52428") && c.stdout.contains("at most 4096 are taken"), "\(c.stdout)")
    }

    /// A stranger joins an --insecure job with --serve-data as both its workers, then asks for rows
    /// without end and never reads the answers. The coordinator's queues to it stay bounded (peak RSS
    /// under 500 MB) and, its queues full for 10 s, it is lost as a dead member is: the job ends,
    /// naming why, instead of growing until the host runs out.
    @Test(.enabled(if: dataInstalled, "needs Debian's dataset-fashion-mnist"))
    func aMemberThatNeverReadsIsDropped() throws {
        let (coordinator, address, dir) = try servingCoordinator(workers: 2)
        defer { try? FileManager.default.removeItem(at: dir) }
        let attacker = Attacker()
        let members = try (1...2).map { i in
            let s = try attacker.dealer(address, identity: [0x57] + (0..<15).map { _ in UInt8.random(in: 0...255) }, reads: false)
            attacker.send(
                s, .hello(.init(advertiseAddress: "tcp://127.0.0.1:\(i)", tetherVersion: "x", threads: 1)), job: "tether", rank: -1)
            return s
        }
        let request = Envelope(
            jobID: "tether", senderRank: 0, body: .dataRequest(.init(split: 0, indices: (0..<4096).map { UInt32($0 % 1920) }))
        ).encoded()  // rows of the --train-limit
        // the attacker's own queue is bounded too, so each send waits for the coordinator to take one:
        // the flood goes at the coordinator's pace until it drops the members and exits
        for s in members {
            try s.setHighWaterMarks(send: 64, receive: 1)
            try s.setSendTimeout(.milliseconds(100))
        }
        let deadline = Date().addingTimeInterval(60)
        var peak = 0
        while coordinator.process.isRunning, Date() < deadline {
            for s in members { try? s.send([request]) }
            peak = max(peak, peakResidentMegabytes(coordinator.pid))
        }
        let c = coordinator.finish()
        print("\(#function): coordinator peak RSS \(peak) MB")
        #expect(peak > 0 && peak < 500, "coordinator peak RSS \(peak) MB")
        #expect(c.status != 0)
        #expect((c.stdout + c.stderr).contains("has not read its messages for"), "\(c.stdout)\(c.stderr)")
    }

    /// Tensor data flipped in a checkpoint is refused naming the tensor; a shape whose size overflows
    /// is refused, not a crash.
    @Test func aDamagedCheckpointIsRefusedNamingTheTensor() throws {
        let dir = CLI.tempDir("damaged")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: dir) }
        let overflow = dir.appendingPathComponent("overflow.safetensors")
        try Data(Self.overflowingCheckpoint).write(to: overflow)
        let r = try CLI.run(["eval", "--checkpoint", overflow.path])
        #expect(r.status == 1 && r.stderr.contains("do not hold shape"), "\(r.status) \(r.stderr)")
        guard dataInstalled else { return }
        let run = dir.appendingPathComponent("run")
        #expect(
            try CLI.run(["train", "--model", "mlp", "--max-steps", "2", "--train-limit", "128", "--test-limit", "64", "--run-dir", run.path]
            ).status == 0)
        let file = run.appendingPathComponent("checkpoint.safetensors")
        var bytes = try Data(contentsOf: file)
        bytes[bytes.count - 3] ^= 0x01  // in the last tensor's data (tensors are laid out in name order)
        try bytes.write(to: file)
        let e = try CLI.run(["eval", "--checkpoint", file.path])
        #expect(e.status == 1 && e.stderr.contains("is corrupt: its data does not match the checksum stored with it"), "\(e.stderr)")
    }
}

/// What a `tether simulate` run sends over loopback, captured with tcpdump: with CURVE (the default)
/// neither the job's configuration nor a parameter name appears in it; with --insecure both do (which
/// shows the capture sees the traffic). Each run and its capture have a network namespace of their
/// own: on the host's loopback the capture also took what other processes sent (another suite's
/// --insecure runs, with two suites at once).
extension SecurityTests {
    static let tcpdump = ["/usr/bin/tcpdump", "/usr/sbin/tcpdump"].first { FileManager.default.isExecutableFile(atPath: $0) }
    static let canCapture = tcpdump != nil && getuid() == 0 && dataInstalled

    /// Everything tcpdump saw on lo while `simulate` ran with `flags`, as raw bytes.
    func capture(_ flags: [String]) throws -> Data {
        let dir = CLI.tempDir("capture")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: dir) }
        let pcap = dir.appendingPathComponent("lo.pcap")
        let ip = URL(fileURLWithPath: "/usr/sbin/ip"), namespace = "tcap\(getpid())"
        #expect(try CLI.run(["netns", "add", namespace], executable: ip).status == 0, "ip netns add \(namespace)")
        defer { _ = try? CLI.run(["netns", "delete", namespace], executable: ip) }
        #expect(try CLI.run(["netns", "exec", namespace, "ip", "link", "set", "lo", "up"], executable: ip).status == 0)
        let dump = try CLI.start(
            ["netns", "exec", namespace, Self.tcpdump!, "-i", "lo", "-Z", "root", "-U", "-s", "0", "-w", pcap.path, "tcp"], bound: 120,
            executable: ip)
        #expect(dump.waitFor("listening on lo", timeout: 30, onStandardError: true), "tcpdump never started its capture")
        let sim = try CLI.run(
            [
                "netns", "exec", namespace, CLI.binary.path, "simulate", "--workers", "2", "--model", "mlp-wn", "--max-steps", "5",
                "--train-limit", "640", "--test-limit", "64", "--run-dir", dir.appendingPathComponent("run").path
            ] + flags, timeout: 120, executable: ip)
        #expect(sim.status == 0, "\(sim.stderr)")
        usleep(500_000)  // the kernel hands tcpdump the last packets (a capture has no end marker to wait on)
        kill(dump.pid, SIGKILL)  // a test runner may start children with SIGINT and SIGTERM blocked; -U wrote every packet already
        _ = dump.finish()
        return try Data(contentsOf: pcap)
    }

    @Test(.enabled(if: canCapture, "needs root, tcpdump and Debian's dataset-fashion-mnist"))
    func theTrafficOfASimulateRunIsEncrypted() throws {
        // strings that occur in every Assign (the job configuration as JSON) and in every checkpoint
        let secrets = [Data("\"optimizer\"".utf8), Data("layers.0.weight_v".utf8)]
        let plain = try capture(["--insecure"])
        for s in secrets { #expect(plain.range(of: s) != nil, "the --insecure capture should hold \(String(decoding: s, as: UTF8.self))") }
        let secure = try capture([])
        #expect(secure.count > 100_000, "the capture holds \(secure.count) bytes")
        for s in secrets {
            #expect(secure.range(of: s) == nil, "\(String(decoding: s, as: UTF8.self)) is readable in the traffic of a secure run")
        }
    }
}
