import CXXHash
import Foundation
import Testing
import TetherTrain

/// What the cluster's equivalence tests compare: checkpoints' parameters, and the run that shows a
/// wrong gradient scale at once.
enum RunCheck {
    /// Parameters of a checkpoint, by name.
    static func parameters(_ path: String) throws -> [String: [Float]] {
        let data = try Data(contentsOf: URL(fileURLWithPath: path))
        let headerLength = data.prefix(8).withUnsafeBytes { Int($0.loadUnaligned(as: UInt64.self)) }
        let header = try JSONSerialization.jsonObject(with: data.subdata(in: 8..<8 + headerLength)) as! [String: Any]
        var out: [String: [Float]] = [:]
        for (name, info) in header where name != "__metadata__" && !name.hasPrefix("optimizer.") {
            let offsets = (info as! [String: Any])["data_offsets"] as! [Int]
            let bytes = data.subdata(in: 8 + headerLength + offsets[0]..<8 + headerLength + offsets[1])
            out[name] = bytes.withUnsafeBytes { Array($0.bindMemory(to: Float.self)) }
        }
        return out
    }

    /// The checkpoints at `a` and `b` hold the same tensors, each within 1e-5 of the other as a whole:
    /// the largest, over tensors, of ||a - b|| / ||b||. (Per element, Adam turns the rounding of a
    /// gradient that is almost exactly 0, such as a weight on an always-black border pixel, into a step
    /// of either sign; those elements differ by ~1e-5 of the tensor's largest value while the tensor
    /// agrees to ~5e-7.)
    static func expectParametersAgree(_ a: String, _ b: String, sourceLocation: SourceLocation = #_sourceLocation) throws {
        let (x, y) = (try RunCheck.parameters(a), try RunCheck.parameters(b))
        #expect(Set(x.keys) == Set(y.keys) && !x.isEmpty, sourceLocation: sourceLocation)
        guard Set(x.keys) == Set(y.keys) else { return }
        var worst = 0.0
        for (name, u) in x {
            let v = y[name]!
            let diff = zip(u, v).reduce(0.0) { $0 + Double($1.0 - $1.1) * Double($1.0 - $1.1) }
            let norm = v.reduce(0.0) { $0 + Double($1) * Double($1) }
            worst = max(worst, (diff / max(norm, 1e-30)).squareRoot())
        }
        #expect(worst < 1e-5, "worst relative difference \(worst)", sourceLocation: sourceLocation)
    }

    /// mlp-wn under plain SGD (no momentum, no clipping: a wrong gradient scale shows at once) at lr
    /// 0.01 on 1,600 samples (25 steps an epoch with 4 workers), for `steps` steps, every step logged.
    static func plainSGD(steps: Int) -> [String] {
        [
            "--model", "mlp-wn", "--optimizer", "sgd", "--lr", "0.01", "--momentum", "0", "--clip-norm", "0", "--batch", "16",
            "--train-limit", "1600", "--test-limit", "200", "--seed", "5", "--max-steps", String(steps), "--log-every", "1"
        ]
    }

    /// Two empty folders for `SampleAudit` logs under `dir`: the disturbed run's and the undisturbed one's.
    static func sampleLogFolders(in dir: URL) throws -> (URL, URL) {
        let folders = (dir.appendingPathComponent("samples-disturbed"), dir.appendingPathComponent("samples-whole"))
        for d in [folders.0, folders.1] { try FileManager.default.createDirectory(at: d, withIntermediateDirectories: true) }
        return folders
    }

    /// Every step of `disturbed` used the samples the same step of `undisturbed` used, each once
    /// (nothing lost, nothing twice, dealt over however many workers there were), and within each
    /// whole epoch every sample was used exactly once.
    static func expectEverySampleOnce(
        _ disturbed: URL, like undisturbed: URL, steps: Int, wholeEpochs: Int, count: Int,
        sourceLocation: SourceLocation = #_sourceLocation
    ) throws {
        let a = try SampleAudit.steps(in: disturbed, through: steps), b = try SampleAudit.steps(in: undisturbed, through: steps)
        #expect(Set(a.keys) == Set(1...steps), "steps logged: \(a.keys.sorted())", sourceLocation: sourceLocation)
        #expect(Set(b.keys) == Set(1...steps), "steps logged undisturbed: \(b.keys.sorted())", sourceLocation: sourceLocation)
        let differing = (1...steps).filter { a[$0]?.samples != b[$0]?.samples }
        #expect(differing.isEmpty, "steps whose samples differ from the undisturbed run's: \(differing)", sourceLocation: sourceLocation)
        for epoch in 0..<wholeEpochs {
            let used = (1...steps).filter { a[$0]?.epoch == epoch }.flatMap { a[$0]!.samples }.sorted()
            #expect(
                used.count == count && Set(used) == Set(0..<count),
                "epoch \(epoch): \(used.count) samples used, \(Set(used).count) distinct of \(count)",
                sourceLocation: sourceLocation)
        }
    }
}

/// The cluster as a user runs it: `tether simulate` starts a coordinator and worker processes that talk
/// over loopback tcp.
@Suite(.serialized, .enabled(if: dataInstalled, "needs Debian's dataset-fashion-mnist (scripts/test installs it)"))
struct ClusterProcessTests {
    /// Runs `simulate` with `common` straight through into DIR/whole, and with `splitFlags` stopped after
    /// `stopAfter` steps then resumed into DIR/split; every run must succeed. Returns the two run directories.
    func runWholeAndResumed(
        _ common: [String], in dir: URL, stopAfter: Int, splitFlags: [String] = []
    ) throws -> (whole: String, split: String) {
        let whole = dir.appendingPathComponent("whole").path, split = dir.appendingPathComponent("split").path
        for args in [
            ["--run-dir", whole], splitFlags + ["--run-dir", split, "--max-steps", String(stopAfter)],
            splitFlags + ["--run-dir", split, "--resume"]
        ] {
            let r = try CLI.run(["simulate"] + args + common, timeout: 240)
            #expect(r.status == 0, "simulate \(args.joined(separator: " ")): \(r.stderr)")
        }
        return (whole, split)
    }

    /// Waits (up to a minute) until the run in `runDirectory` has logged step `step`; the last step logged.
    @discardableResult
    func waitForStep(_ step: Int, in runDirectory: String) -> Int {
        let deadline = Date().addingTimeInterval(60)
        var reached = 0
        while reached < step, Date() < deadline {
            usleep(5_000)
            reached = (try? metrics(runDirectory))?.compactMap { $0["event"] as? String == "step" ? $0["step"] as? Int : nil }.last ?? 0
        }
        return reached
    }

    /// The lines of a run's metrics.jsonl.
    func metrics(_ runDirectory: String) throws -> [[String: Any]] {
        try String(contentsOfFile: runDirectory + "/metrics.jsonl", encoding: .utf8).split(separator: "\n")
            .compactMap { try JSONSerialization.jsonObject(with: Data($0.utf8)) as? [String: Any] }
    }

    /// Equivalence, the cluster's correctness test: 3 workers with batch B reach, after 20 steps, the
    /// parameters one process reaches with batch 3B; the replicas compare parameter hashes after every
    /// step (--hash-every 1), so any divergence between them fails the job. Buckets of 0.1 MB: mlp-wn's
    /// last two layers' gradients are all-reduced while backward runs through the first.
    @Test(arguments: [
        ["--model", "mlp-wn", "--train-limit", "2000", "--test-limit", "300"],
        // plain SGD without momentum or clipping: Adam's normalization would mute a wrong gradient scale
        // (3 workers summing a gradient 3x too large differ by 1e-3 under Adam, by 10 under SGD); 3
        // steps, before the summation order's rounding grows (~1e-4 after 20 steps at this rate)
        [
            "--model", "mlp-wn", "--train-limit", "2000", "--test-limit", "300", "--optimizer", "sgd", "--lr", "0.05", "--momentum", "0",
            "--clip-norm", "0",
            "--max-steps", "3"
        ],
        // the same by halving-doubling: 3 workers, so rank 0 folds into rank 1 and gets the sum back
        [
            "--model", "mlp-wn", "--train-limit", "2000", "--test-limit", "300", "--optimizer", "sgd", "--lr", "0.05", "--momentum", "0",
            "--clip-norm", "0", "--max-steps", "3", "--collective", "halving-doubling"
        ],
        // a model spec inline (JSON is YAML): conv, pool, tanh, dense, all weight-normalized where they can be;
        // 3 steps, as mlp-wn: at this rate the grouping's rounding grows to 3e-4 by step 20; by size on
        // links described (a slow one: 125 KB of latency x bandwidth), not the nominal one
        [
            "--model",
            #"{"input": [1, 28, 28], "layers": [{"conv2d": {"out": 4, "kernel": 3, "padding": 1, "weight-norm": true}}, {"avg-pool": 2}, "tanh", "flatten", {"dense": {"out": 10, "weight-norm": true}}]}"#,
            "--train-limit", "2000", "--test-limit", "300", "--optimizer", "sgd", "--lr", "0.05", "--momentum", "0", "--clip-norm", "0",
            "--max-steps", "3", "--link", "1gbit", "--latency", "1ms"
        ],
        // 1,024 wide buckets: that table is exchanged densely (fewer bytes), the embeddings by all-gather
        ["--model", "wide-deep", "--data", "synthetic-clicks:3000", "--buckets", "300", "--wide-buckets", "1024", "--hidden", "32,16"],
        // dropout 0: masks are drawn per replica, so with dropout the runs differ by design
        [
            "--model", "lm-tied", "--data", "text:/usr/share/games/fortunes", "--size", "32", "--vocabulary", "2000", "--bptt", "10",
            "--dropout", "0"
        ]
    ])
    func threeWorkersMatchOneProcessWithThreeTimesTheBatch(flags: [String]) throws {
        let dir = CLI.tempDir("equivalence")
        defer { try? FileManager.default.removeItem(at: dir) }
        let common = ["--max-steps", "20", "--seed", "3", "--log-every", "5"] + flags  // a flag given twice: the last counts
        let cluster = try CLI.run(
            [
                "simulate", "--workers", "3", "--batch", "16", "--hash-every", "1", "--bucket-mb", "0.1", "--run-dir",
                dir.appendingPathComponent("cluster").path
            ] + common, timeout: 240)
        #expect(cluster.status == 0, "stderr: \(cluster.stderr)")
        #expect(cluster.stdout.contains("all 3 replicas agree on the initial parameters"))
        if flags.contains("halving-doubling") { #expect(cluster.stderr.contains("all-reduce by halving-doubling"), "\(cluster.stderr)") }
        if flags.contains("--link") {
            #expect(cluster.stderr.contains("all-reduce by by-size (links given: 1000 us a hop, 125 MB/s)"), "\(cluster.stderr)")
        }
        // one process has no collective to choose
        var alone = common
        for flag in ["--collective", "--link", "--latency"] {
            if let i = alone.firstIndex(of: flag) { alone.removeSubrange(i...i + 1) }
        }
        let single = try CLI.run(["train", "--batch", "48", "--run-dir", dir.appendingPathComponent("single").path] + alone, timeout: 240)
        #expect(single.status == 0, "stderr: \(single.stderr)")
        try RunCheck.expectParametersAgree(
            dir.appendingPathComponent("cluster/checkpoint.safetensors").path,
            dir.appendingPathComponent("single/checkpoint.safetensors").path)
    }

    /// A run resumed by another number of workers keeps its global batch (lm-tied: its streams, with
    /// their carried state), dealt over the workers it has: it ends where the run that kept its workers
    /// ends (the sums are only grouped differently).
    @Test(arguments: [
        (["--model", "mlp-wn", "--train-limit", "1000", "--test-limit", "200", "--batch", "32"], 3, 2),
        (
            [
                "--model", "wide-deep", "--data", "synthetic-clicks:3000", "--buckets", "300", "--wide-buckets", "1024", "--hidden",
                "32,16", "--batch", "100"
            ], 2, 3
        ),
        // 8 streams (4 per worker) dealt 3, 3, 2 over three, with their carried state; dropout 0: masks are per replica
        (
            [
                "--model", "lm-tied", "--data", "text:/usr/share/games/fortunes", "--train-limit", "6000", "--test-limit", "1000", "--size",
                "16",
                "--vocabulary", "500", "--bptt", "8", "--batch", "4", "--dropout", "0"
            ], 2, 3
        )
    ])
    func aRunResumedByAnotherNumberOfWorkersKeepsItsGlobalBatch(flags: [String], before: Int, after: Int) throws {
        let dir = CLI.tempDir("elastic")
        defer { try? FileManager.default.removeItem(at: dir) }
        let whole = dir.appendingPathComponent("whole").path, split = dir.appendingPathComponent("split").path
        let common = ["--epochs", "2", "--seed", "9"] + flags
        // 22 steps: lm-tied's SGD at rate 20 turns the regrouped sums' rounding (1e-6 after 20 steps)
        // into 5e-4 over two epochs
        for args in [
            ["--workers", "\(before)", "--run-dir", whole, "--max-steps", "22"],
            ["--workers", "\(before)", "--run-dir", split, "--max-steps", "10"],
            ["--workers", "\(after)", "--run-dir", split, "--resume", "--max-steps", "22"]
        ] {
            let r = try CLI.run(["simulate"] + args + common, timeout: 240)
            #expect(r.status == 0, "simulate \(args.joined(separator: " ")): \(r.stderr)")
            if args.contains("--resume") {
                #expect(r.stdout.contains("resuming a run of \(before) workers with \(after): the global batch stays"), "\(r.stdout)")
            }
        }
        try RunCheck.expectParametersAgree(split + "/checkpoint.safetensors", whole + "/checkpoint.safetensors")
        // the same number of steps in all (the split run also ended once at step 10)
        let ends = try [whole, split].map { try metrics($0).filter { $0["event"] as? String == "end" }.compactMap { $0["step"] as? Int } }
        #expect(ends[0].count == 1 && ends[1] == [10, ends[0][0]], "end steps \(ends)")
    }

    /// Elastic, as separate processes: `coordinator --workers 3 --min-workers 2` and three `worker`s;
    /// one worker is killed after the first checkpoint. The two survivors re-form the ring in place (no
    /// process restarts, no rejoining), go on with the job's global batch and end where a job that kept
    /// three workers ends. Plain SGD: two partial sums round differently from three, and Adam, which
    /// divides by the root of a near-zero second moment, can blow that up. CI caught it: re-formed at
    /// step 27 or 28, the losses agreed to 1e-8 up to step 49 and then grew apart 3-4x a step (worst
    /// parameter 1.7e-3 at the end); under SGD the worst was 1e-7 wherever the ring re-formed.
    @Test func anElasticJobGoesOnWithTheWorkersItHasLeft() throws {
        let dir = CLI.tempDir("elastic-restart")
        defer { try? FileManager.default.removeItem(at: dir) }
        let training = [
            "--model", "mlp-wn", "--optimizer", "sgd", "--lr", "0.05", "--momentum", "0", "--epochs", "4", "--train-limit", "3000",
            "--test-limit", "200", "--seed", "7"
        ]
        // below Linux's ephemeral ports (32768-60999), which the other tests' tcp://...:0 sockets take
        let port = CLI.freePorts(1)[0], jobID = "elastic-\(getpid())"
        let address = "tcp://127.0.0.1:\(port)", run = dir.appendingPathComponent("elastic")
        let coordinator = try CLI.start(
            [
                "coordinator", "--listen", address, "--workers", "3", "--min-workers", "2", "--last-call", "3",
                "--job-id", jobID, "--run-dir", run.path
            ] + training + CLI.key, bound: 150)
        let workers = try (0..<3).map { _ in
            try CLI.start(["worker", "--coordinator", address, "--job-id", jobID, "--threads", "1"] + CLI.key, bound: 150)
        }
        waitForACheckpoint(in: run)
        kill(workers[2].pid, SIGKILL)
        let c = coordinator.finish()
        #expect(c.status == 0, "coordinator: \(c.stderr)")
        #expect(
            c.stdout.contains("re-forming the ring of the 2 workers left") && c.stdout.contains("ring epoch 1: all 2 replicas agree"),
            "\(c.stdout)")
        for w in workers[0..<2] {
            let r = w.finish()
            #expect(r.status == 0, "worker: \(r.stderr)")
            #expect(r.stderr.contains("the ring re-forms as 2 (epoch 1)"), "\(r.stderr)")
        }
        _ = workers[2].finish()
        let whole = dir.appendingPathComponent("whole").path
        let u = try CLI.run(["simulate", "--workers", "3", "--run-dir", whole] + training, timeout: 240)
        #expect(u.status == 0, "stderr: \(u.stderr)")
        try RunCheck.expectParametersAgree(run.appendingPathComponent("checkpoint.safetensors").path, whole + "/checkpoint.safetensors")
    }

    /// Compression: 2 workers with their gradients as f16 and as bf16 on the wire train mlp-wn, the
    /// replicas agreeing bitwise after every step (--hash-every 1: a rank that kept its own rounding
    /// would diverge and fail the job). The wire did round (the parameters differ from an f32 run's),
    /// and the run trains like the f32 one: over its last 10 steps the mean loss within 5% (measured:
    /// fp16 +1.3%, bf16 -1.6%; step losses at batch 16 are that noisy), the held-out accuracy within
    /// 2.5 points (5 of 200 samples; measured: equal, and 0.5 below).
    @Test func compressedGradientsKeepTheReplicasEqualAndTrainLikeF32() throws {
        let dir = CLI.tempDir("compression")
        defer { try? FileManager.default.removeItem(at: dir) }
        let common = ["--workers", "2"] + RunCheck.plainSGD(steps: 40) + ["--hash-every", "1", "--threads", "1"]
        func outcome(_ run: String) throws -> (loss: Double, accuracy: Double) {
            let lines = try String(contentsOfFile: run + "/metrics.jsonl", encoding: .utf8).split(separator: "\n")
                .compactMap { try JSONSerialization.jsonObject(with: Data($0.utf8)) as? [String: Any] }
            let losses = lines.filter { $0["event"] as? String == "step" }.compactMap { $0["loss"] as? Double }.suffix(10)
            return (
                losses.reduce(0, +) / Double(max(losses.count, 1)),
                lines.last { $0["test_accuracy"] != nil }?["test_accuracy"] as? Double ?? -1
            )
        }
        let f32 = dir.appendingPathComponent("f32").path
        #expect(try CLI.run(["simulate", "--run-dir", f32] + common, timeout: 240).status == 0)
        let reference = try outcome(f32)
        for (flag, more, says) in [
            ("fp16", [], "gradients as f16 on the wire"), ("bf16", [], "gradients as bf16 on the wire"),
            ("powersgd", ["--powersgd-rank", "4", "--powersgd-start-step", "10"], "gradients as PowerSGD factors of rank 4 from step 10")
        ] {
            let run = dir.appendingPathComponent(flag).path
            let r = try CLI.run(["simulate", "--run-dir", run, "--compression", flag] + more + common, timeout: 240)
            #expect(r.status == 0 && r.stdout.contains(says), "\(r.stdout)\(r.stderr)")
            let (a, b) = (
                try RunCheck.parameters(run + "/checkpoint.safetensors"), try RunCheck.parameters(f32 + "/checkpoint.safetensors")
            )
            #expect(a.contains { name, u in u != b[name] }, "\(flag): the parameters equal the f32 run's: nothing was compressed")
            let got = try outcome(run)
            #expect(
                abs(got.loss - reference.loss) / reference.loss < 0.05 && abs(got.accuracy - reference.accuracy) <= 0.025,
                "\(flag): loss \(got.loss) and accuracy \(got.accuracy) against f32's \(reference.loss) and \(reference.accuracy)")
        }
    }

    /// wide-deep's sparse tables under --compression fp16: the rows' values travel as f16 in the
    /// all-gather (ids as they are), every replica merges the same rows (--hash-every 1 fails the job
    /// otherwise), and the tables differ from an f32 run's (the values were narrowed).
    @Test func sparseRowsTravelAsF16AndTheReplicasAgree() throws {
        let dir = CLI.tempDir("sparse-f16")
        defer { try? FileManager.default.removeItem(at: dir) }
        let common = [
            "--workers", "2", "--model", "wide-deep", "--data", "synthetic-clicks:3000", "--buckets", "300", "--wide-buckets", "1024",
            "--hidden", "32,16", "--max-steps", "12", "--hash-every", "1", "--threads", "1"
        ]
        let f32 = dir.appendingPathComponent("f32").path, f16 = dir.appendingPathComponent("f16").path
        #expect(try CLI.run(["simulate", "--run-dir", f32] + common, timeout: 240).status == 0)
        let r = try CLI.run(["simulate", "--run-dir", f16, "--compression", "fp16"] + common, timeout: 240)
        #expect(r.status == 0, "\(r.stdout)\(r.stderr)")
        let (a, b) = (try RunCheck.parameters(f16 + "/checkpoint.safetensors"), try RunCheck.parameters(f32 + "/checkpoint.safetensors"))
        let tables = a.keys.filter { $0.contains("embedding") || $0.contains("wide") }.sorted()
        #expect(
            !tables.isEmpty && tables.allSatisfy { a[$0] != b[$0] }, "tables equal to the f32 run's: \(tables.filter { a[$0] == b[$0] })")
    }

    /// A run leaves nothing on its host: a worker SIGKILLed mid-run (its unix socket stays behind), the
    /// ring re-formed, the job finished; the next run on the host sweeps what the killed one left, and
    /// when it ends the job's runtime folder holds no socket of either.
    @Test func aRunLeavesNothingOnTheHost() throws {
        let dir = CLI.tempDir("leftovers")
        defer { try? FileManager.default.removeItem(at: dir) }
        // a socket's folder is at most 64 bytes long (SameHostLinks)
        let runtime = URL(fileURLWithPath: "/tmp/tether-xdg-\(getpid())-\(UInt32.random(in: 0...UInt32.max))")
        try FileManager.default.createDirectory(at: runtime, withIntermediateDirectories: true, attributes: [.posixPermissions: 0o700])
        defer { try? FileManager.default.removeItem(at: runtime) }
        let sockets = { (try? FileManager.default.contentsOfDirectory(atPath: runtime.appendingPathComponent("tether").path)) ?? [] }
        let common = RunCheck.plainSGD(steps: 60) + ["--threads", "1"]
        let first = dir.appendingPathComponent("first")
        let simulate = try CLI.start(
            ["simulate", "--workers", "3", "--min-workers", "2", "--heartbeat-timeout", "2", "--run-dir", first.path] + common, bound: 240,
            environment: ["XDG_RUNTIME_DIR": runtime.path])
        _ = waitForStep(20, in: first.path)
        let children =
            (try? String(contentsOfFile: "/proc/\(simulate.pid)/task/\(simulate.pid)/children", encoding: .utf8))?
            .split(separator: " ").compactMap { Int32($0) } ?? []
        let during = sockets()
        kill(children.last ?? -1, SIGKILL)
        let r = simulate.finish()
        #expect(r.status == 0 && r.stdout.contains("re-forming the ring"), "\(r.stdout)\(r.stderr)")
        #expect(!during.isEmpty, "same-host links go over unix sockets in the runtime folder")
        let left = sockets()
        // the SIGKILLed worker's socket is what stays; the survivors removed theirs
        #expect(left.count <= 1, "\(left)")
        // sweeping waits until a socket is 10 s old (one is bound a moment before it listens)
        for name in left {
            var times = [timespec(tv_sec: time(nil) - 60, tv_nsec: 0), timespec(tv_sec: time(nil) - 60, tv_nsec: 0)]
            utimensat(AT_FDCWD, runtime.appendingPathComponent("tether/" + name).path, &times, AT_SYMLINK_NOFOLLOW)
        }
        let second = try CLI.run(
            ["simulate", "--workers", "2", "--run-dir", dir.appendingPathComponent("second").path] + RunCheck.plainSGD(steps: 5),
            timeout: 120, environment: ["XDG_RUNTIME_DIR": runtime.path])
        #expect(second.status == 0, "\(second.stderr)")
        #expect(sockets().isEmpty, "left on the host: \(sockets())")
        // nor a lane in /dev/shm of any socket the first run's rings could have had (each lane is named
        // from its receiver's socket path, SharedLane.path)
        let tokens = Set(during.compactMap { $0.split(separator: "-").dropFirst().first })
        let lanes = tokens.flatMap { token in
            (0..<4).flatMap { epoch in
                (0..<3).map { rank in
                    let socket = runtime.appendingPathComponent("tether/ring-\(token)-e\(epoch)-r\(rank)").path
                    let hash = socket.withCString { XXH3_64bits($0, strlen($0)) }
                    return "/dev/shm/tether-lane-\(getuid())-" + String(hash, radix: 16)
                }
            }
        }
        #expect(
            !lanes.isEmpty && lanes.allSatisfy { !FileManager.default.fileExists(atPath: $0) },
            "lanes left: \(lanes.filter { FileManager.default.fileExists(atPath: $0) })")
    }

    /// Elastic in place: `simulate --workers 4 --min-workers 3`, one worker SIGKILLed (or SIGSTOPped
    /// past the deadline, and let go once the others train again: it is told it was dropped) mid-epoch.
    /// No process restarts: the three survivors re-form the ring, take the state of the one furthest
    /// along, redo only the step in flight with the global batch dealt over three, and the job ends
    /// within 1e-5 of an undisturbed 4-worker run (plain SGD, so a wrong gradient scale would show).
    @Test(arguments: [
        (SIGKILL, "by-size"), (SIGSTOP, "ring"), (SIGKILL, "halving-doubling"), (SIGKILL, "recursive-doubling"), (SIGKILL, "auto")
    ])
    func aLostWorkerCostsTheSurvivorsOnlyTheStepInFlight(signal: Int32, collective: String) throws {
        let dir = CLI.tempDir("in-place")
        defer { try? FileManager.default.removeItem(at: dir) }
        // lr 0.01 and 40 steps: the grouping of the sums differs (1e-7), and a difference that flips a
        // ReLU near zero grows (at lr 0.05 the loss jumps to 10 at step 3; at 0.01, 2 workers then 3
        // part from 3 throughout by 1e-4 at step 60 and 7e-3 at 150, resumed or joined alike)
        let common =
            ["--workers", "4"] + RunCheck.plainSGD(steps: 40) + ["--hash-every", "1", "--threads", "1", "--collective", collective]
        let disturbed = dir.appendingPathComponent("disturbed"), whole = dir.appendingPathComponent("whole")
        let audits = try RunCheck.sampleLogFolders(in: dir)
        let simulate = try CLI.start(
            ["simulate", "--run-dir", disturbed.path, "--min-workers", "3", "--heartbeat-timeout", "2"] + common, bound: 240,
            environment: ["TETHER_TEST_SAMPLE_LOG": audits.0.path])
        // mid-epoch (25 steps an epoch), well before the end
        let deadline = Date().addingTimeInterval(60)
        let reached = waitForStep(20, in: disturbed.path)
        let children =
            (try? String(contentsOfFile: "/proc/\(simulate.pid)/task/\(simulate.pid)/children", encoding: .utf8))?
            .split(separator: " ").compactMap { Int32($0) } ?? []
        #expect(children.count == 4)
        let killedAt = Date()
        let victim = children.dropFirst().first ?? -1
        kill(victim, signal)
        if signal == SIGSTOP {
            while Date() < deadline, !((try? metrics(disturbed.path))?.contains { $0["event"] as? String == "reformed" } ?? false) {
                usleep(50_000)
            }
            kill(victim, SIGCONT)
        }
        let r = simulate.finish()
        #expect(r.status == 0, "stderr: \(r.stderr)")
        #expect(r.stdout.contains("re-forming the ring of the 3 workers left (ring epoch 1)"), "\(r.stdout)")
        #expect(r.stdout.contains("ring epoch 1: all 3 replicas agree at step"), "\(r.stdout)")
        #expect(r.stderr.contains("all-reduce by \(collective)"), "\(r.stderr)")
        #expect(!r.stderr.contains("restart"), "\(r.stderr)")
        // a recovery reads as one: no `error:` line (that is for what ends the job), no library's own words
        // (a frozen worker, dropped, is not a survivor: it ends in an error of its own)
        let log = r.stdout + r.stderr
        #expect(signal != SIGKILL || !log.contains("error:"), "\(log)")
        #expect(!log.contains("zmq_") && !log.contains("Host unreachable"), "\(log)")
        if signal == SIGSTOP { #expect(r.stderr.contains("this worker was dropped from the job"), "\(r.stderr)") }
        let events = try metrics(disturbed.path)
        let names = events.compactMap { $0["event"] as? String }
        #expect(
            names.filter { $0 == "start" }.count == 1 && names.filter { $0 == "training" }.count == 1,
            "no restart: \(names.filter { $0 != "step" })")
        #expect(
            names.filter { $0 == "lost" }.count == 1 && names.filter { $0 == "reformed" }.count == 1, "\(names.filter { $0 != "step" })")
        let lost = events.firstIndex { $0["event"] as? String == "lost" } ?? 0
        let lastBefore = events[..<lost].compactMap { $0["event"] as? String == "step" ? $0["step"] as? Int : nil }.last ?? -1
        let reformed = events.first { $0["event"] as? String == "reformed" }
        let agreed = reformed?["step"] as? Int ?? -1
        // no completed step is lost: the survivors go on from the last merged step or the one after it
        #expect(agreed == lastBefore || agreed == lastBefore + 1, "lost after step \(lastBefore), re-formed at \(agreed)")
        let recovered = reformed?["elapsed_s"] as? Double ?? 99
        // the victim was killed (or frozen) mid-step: that one step is computed again, no other
        #expect(reformed?["steps_redone"] as? Int == 1, "\(reformed ?? [:])")
        print(
            "in place (signal \(signal)): lost after step \(reached); re-formed at step \(agreed) (last merged \(lastBefore)), training again \(recovered) s "
                + "after the loss was named, \(reformed?["steps_redone"] ?? "?") step redone (\(Date().timeIntervalSince(killedAt)) s from the kill to the job's end)"
        )
        #expect(events.last { $0["event"] as? String == "end" }?["step"] as? Int == 40)
        for c in children { #expect(kill(c, 0) != 0, "worker \(c) is still running") }
        let u = try CLI.run(
            ["simulate", "--run-dir", whole.path] + common, timeout: 240, environment: ["TETHER_TEST_SAMPLE_LOG": audits.1.path])
        #expect(u.status == 0, "stderr: \(u.stderr)")
        try RunCheck.expectParametersAgree(
            disturbed.appendingPathComponent("checkpoint.safetensors").path, whole.appendingPathComponent("checkpoint.safetensors").path)
        try RunCheck.expectEverySampleOnce(audits.0, like: audits.1, steps: 40, wholeEpochs: 1, count: 1600)
    }

    /// Elastic in place, joining: `coordinator --workers 3 --min-workers 2` starts with two workers; a
    /// third started while it trains joins the running job (no process restarts), takes the members'
    /// state over the re-formed ring, and the job ends where a job that had the same rings at the same
    /// steps ends: two workers to the step the third joined after (that job's checkpoint), then three,
    /// resumed from it (the global batch is --batch x --workers throughout). 300 steps, so the join
    /// comes mid-run however slowly the third starts; the same rings make the same sums, so the
    /// comparison holds at any length (against three workers throughout, 40 steps was the limit: the
    /// regrouped sums' rounding grows past 1e-5 after about 35).
    @Test func aWorkerJoinsARunningJob() throws {
        let dir = CLI.tempDir("join")
        defer { try? FileManager.default.removeItem(at: dir) }
        let steps = 300, training = RunCheck.plainSGD(steps: steps) + ["--hash-every", "1"]
        let audits = try RunCheck.sampleLogFolders(in: dir)
        /// An elastic coordinator of 3 (at least 2) with two workers, and a third started once it has
        /// trained step 15 if `joining`; the coordinator's result, then the workers'.
        func elastic(_ run: URL, _ flags: [String], audit: URL, joining: Bool) throws -> [CLI.Result] {
            let port = CLI.freePorts(1)[0], jobID = "join-\(getpid())-\(port)", address = "tcp://127.0.0.1:\(port)"
            let coordinator = try CLI.start(
                [
                    "coordinator", "--listen", address, "--workers", "3", "--min-workers", "2", "--last-call", "1",
                    "--job-id", jobID, "--run-dir", run.path
                ] + flags + CLI.key, bound: 150)
            let worker = ["worker", "--coordinator", address, "--job-id", jobID, "--threads", "1"] + CLI.key
            let audited = ["TETHER_TEST_SAMPLE_LOG": audit.path]
            var workers = try (0..<2).map { _ in try CLI.start(worker, bound: 150, environment: audited) }
            if joining {
                waitForStep(15, in: run.path)
                workers.append(try CLI.start(worker, bound: 150, environment: audited))
            }
            return [coordinator.finish()] + workers.map { $0.finish() }
        }
        let run = dir.appendingPathComponent("joined")
        let joined = try elastic(run, training, audit: audits.0, joining: true)
        #expect(joined[0].status == 0, "coordinator: \(joined[0].stderr)")
        #expect(
            joined[0].stdout.contains("joins the job; it joins the ring of 3 at the next step boundary (ring epoch 1)")
                && joined[0].stdout.contains("ring epoch 1: all 3 replicas agree") && joined[0].stdout.contains("no step redone"),
            "\(joined[0].stdout)")
        for w in joined.dropFirst() { #expect(w.status == 0, "worker: \(w.stderr)") }
        let events = try metrics(run.path)
        let reformed = events.first { $0["event"] as? String == "reformed" }
        let joinedAfter = reformed?["step"] as? Int ?? -1
        #expect(
            events.filter { $0["event"] as? String == "joined" }.count == 1
                && events.filter { $0["event"] as? String == "start" }.count == 1)
        #expect(reformed?["steps_redone"] as? Int == 0, "a join redoes nothing: \(reformed ?? [:])")
        #expect((15..<steps).contains(joinedAfter), "the third joined after step \(joinedAfter)")
        // the same rings at the same steps: two workers to that step, then three from its checkpoint
        let whole = dir.appendingPathComponent("whole")
        let before = try elastic(whole, RunCheck.plainSGD(steps: joinedAfter) + ["--hash-every", "1"], audit: audits.1, joining: false)
        for r in before { #expect(r.status == 0, "two workers to step \(joinedAfter): \(r.stderr)") }
        let after = try CLI.run(
            ["simulate", "--workers", "3", "--resume", "--run-dir", whole.path] + training, timeout: 240,
            environment: ["TETHER_TEST_SAMPLE_LOG": audits.1.path])
        #expect(after.status == 0, "three workers from step \(joinedAfter): \(after.stderr)")
        try RunCheck.expectParametersAgree(
            run.appendingPathComponent("checkpoint.safetensors").path, whole.path + "/checkpoint.safetensors")
        try RunCheck.expectEverySampleOnce(audits.0, like: audits.1, steps: steps, wholeEpochs: 8, count: 1600)
    }

    /// The coordinator lost: workers started with --coordinator-wait keep their replicas when it falls
    /// silent (SIGKILL); the coordinator restarted with --resume at the same address takes their state,
    /// newer than its checkpoint, so nothing is lost, and the job ends equal to an undisturbed run
    /// (bitwise in fact: the same three workers; 300 steps, so the loss is noticed mid-run).
    @Test func aRestartedCoordinatorTakesTheStateItsWorkersKept() throws {
        let dir = CLI.tempDir("coordinator-lost")
        defer { try? FileManager.default.removeItem(at: dir) }
        let training = RunCheck.plainSGD(steps: 300) + ["--checkpoint-every", "10"]
        let port = CLI.freePorts(1)[0], jobID = "lost-\(getpid())"
        let address = "tcp://127.0.0.1:\(port)", run = dir.appendingPathComponent("run")
        let coordinator =
            ["coordinator", "--listen", address, "--workers", "3", "--job-id", jobID, "--run-dir", run.path] + training + CLI.key
        let first = try CLI.start(coordinator, bound: 150)
        let workers = try (0..<3).map { _ in
            try CLI.start(
                [
                    "worker", "--coordinator", address, "--job-id", jobID, "--threads", "1", "--coordinator-wait", "60",
                    "--coordinator-timeout", "2"
                ] + CLI.key, bound: 150)
        }
        let reached = waitForStep(15, in: run.path)
        kill(first.pid, SIGKILL)
        _ = first.finish()
        let restarted = Date()
        let second = try CLI.start(coordinator + ["--resume"], bound: 150)
        let c = second.finish()
        #expect(c.status == 0, "coordinator: \(c.stderr)")
        #expect(c.stdout.contains("from the state the workers kept at step"), "\(c.stdout)")
        for w in workers { let r = w.finish(); #expect(r.status == 0, "worker: \(r.stderr)") }
        let trainings = try metrics(run.path).filter { $0["event"] as? String == "training" }.compactMap { $0["step"] as? Int }
        // the workers train on without it until they notice (2 s), then wait with their state mid-run
        #expect(
            trainings.count == 2 && trainings[1] >= reached && trainings[1] < 300,
            "the second coordinator trains from step \(trainings.last ?? -1), the workers had \(reached)")
        let checkpointed = try metrics(run.path).filter { $0["event"] as? String == "start" }.compactMap { $0["step"] as? Int }.last ?? -1
        print(
            "coordinator lost after step \(reached): the restarted one resumed its checkpoint of step \(checkpointed) and trained from the workers' "
                + "step \(trainings.last ?? -1); the job ended \(Int(Date().timeIntervalSince(restarted))) s after the restart")
        let whole = dir.appendingPathComponent("whole").path
        let u = try CLI.run(["simulate", "--workers", "3", "--run-dir", whole] + training, timeout: 240)
        #expect(u.status == 0, "stderr: \(u.stderr)")
        try RunCheck.expectParametersAgree(run.appendingPathComponent("checkpoint.safetensors").path, whole + "/checkpoint.safetensors")
    }

    /// A checkpoint write that takes seconds (a busy disk's fsync, here made slow on purpose) does not
    /// silence the coordinator: it writes off its loop, so workers whose --coordinator-timeout is
    /// shorter than the write go on hearing its heartbeats and the job ends. Checked by mutation: with
    /// the write on the loop, the workers lose the coordinator at the first checkpoint.
    @Test func aSlowCheckpointWriteDoesNotSilenceTheCoordinator() throws {
        let dir = CLI.tempDir("slow-write")
        defer { try? FileManager.default.removeItem(at: dir) }
        let port = CLI.freePorts(1)[0], jobID = "slow-\(getpid())", address = "tcp://127.0.0.1:\(port)"
        let coordinator = try CLI.start(
            ["coordinator", "--listen", address, "--workers", "2", "--job-id", jobID, "--run-dir", dir.path]
                + RunCheck.plainSGD(steps: 30) + ["--checkpoint-every", "10"] + CLI.key,
            bound: 150, environment: ["TETHER_TEST_SLOW_WRITE": "2.5"])
        let workers = try (0..<2).map { _ in
            try CLI.start(
                ["worker", "--coordinator", address, "--job-id", jobID, "--threads", "1", "--coordinator-timeout", "1"] + CLI.key,
                bound: 150)
        }
        let c = coordinator.finish()
        for w in workers {
            let r = w.finish()
            #expect(r.status == 0, "worker: \(r.stderr)")
        }
        #expect(c.status == 0, "coordinator: \(c.stderr)")
        let written = try metrics(dir.path).filter { $0["event"] as? String == "checkpoint" }.compactMap { $0["step"] as? Int }
        #expect(written == [10, 20, 30], "checkpoints written at steps \(written)")
    }

    /// Waits (up to a minute) until the run in `dir` has written its first checkpoint.
    /// A language model's throughput is counted in tokens, and said so.
    @Test(.enabled(if: FileManager.default.fileExists(atPath: "/usr/share/games/fortunes"), "needs Debian's fortunes"))
    func aLanguageModelsRateIsInTokens() throws {
        let dir = CLI.tempDir("lm-rate")
        defer { try? FileManager.default.removeItem(at: dir) }
        let r = try CLI.run(
            [
                "simulate", "--workers", "2", "--model", "lm-tied", "--max-steps", "2", "--train-limit", "20000", "--log-every", "1",
                "--size", "32", "--vocabulary", "500", "--run-dir", dir.path
            ], timeout: 120)
        #expect(r.status == 0 && r.stdout.contains("tokens/s") && !r.stdout.contains("samples/s"), "\(r.stdout)\(r.stderr)")
    }

    /// Waits (up to a minute) until the run in `dir` is training (its metrics say so), then `settle` more.
    func waitUntilTraining(_ dir: URL, settle: Double = 0.5) {
        let deadline = Date().addingTimeInterval(60)
        while !((try? String(contentsOfFile: dir.path + "/metrics.jsonl", encoding: .utf8))?.contains("\"event\":\"training\"") ?? false)
            && Date() < deadline
        {
            usleep(50_000)
        }
        usleep(useconds_t(settle * 1e6))
    }

    /// The step of a run's "interrupted" event, if it has one.
    func interruptedStep(_ dir: URL) throws -> Int? {
        try metrics(dir.path).last { $0["event"] as? String == "interrupted" }?["step"] as? Int
    }

    /// Ctrl-C and SIGTERM stop a cluster job gracefully: every rank finishes the step in progress, the
    /// checkpoint of it is written, the process exits 130 or 143 saying so, and the run resumed from it
    /// ends bitwise where the uninterrupted run ends. Three ways: SIGINT to `simulate`, SIGTERM to a
    /// `coordinator`, SIGTERM to one of its `worker`s (which stops the whole job the same way).
    /// Checked by mutation: with rank 0's checkpoint not sent on a stop, this test fails.
    @Test func aSignalStopsTheJobWithACheckpointAndTheResumedRunEndsWhereAnUninterruptedOneEnds() throws {
        let dir = CLI.tempDir("signal")
        defer { try? FileManager.default.removeItem(at: dir) }
        let training = ["--model", "mlp-wn", "--epochs", "4", "--train-limit", "3000", "--test-limit", "200", "--seed", "11"]
        let whole = dir.appendingPathComponent("whole")
        let u = try CLI.run(["simulate", "--workers", "2", "--run-dir", whole.path] + training, timeout: 240)
        #expect(u.status == 0, "\(u.stderr)")
        let total = 4 * 47  // 3,000 samples in batches of 64

        func resumeAndCompare(_ run: URL, _ what: String) throws {
            let stopped = try interruptedStep(run)
            #expect(
                stopped.map { $0 > 0 && $0 < total } ?? false, "\(what): stopped at step \(stopped.map(String.init) ?? "none") of \(total)")
            let r = try CLI.run(["simulate", "--workers", "2", "--resume", "--run-dir", run.path] + training, timeout: 240)
            #expect(r.status == 0, "\(what), resumed: \(r.stderr)")
            let a = try RunCheck.parameters(run.appendingPathComponent("checkpoint.safetensors").path)
            let b = try RunCheck.parameters(whole.appendingPathComponent("checkpoint.safetensors").path)
            #expect(!a.isEmpty && a == b, "\(what)")
        }

        // SIGINT to simulate
        let interrupted = dir.appendingPathComponent("sigint")
        let sim = try CLI.start(["simulate", "--workers", "2", "--run-dir", interrupted.path] + training, bound: 120)
        waitUntilTraining(interrupted)
        kill(sim.pid, SIGINT)
        let r = sim.finish()
        #expect(r.status == 130, "\(r.stderr)")
        #expect(
            r.stderr.contains("stopped by SIGINT (Ctrl-C) after step ")
                && r.stderr.contains("continue with --resume --run-dir \(interrupted.path)"), "\(r.stderr)")
        try resumeAndCompare(interrupted, "SIGINT to simulate")

        // SIGTERM to a coordinator, then to one worker of another
        for victim in ["coordinator", "worker"] {
            let run = dir.appendingPathComponent("sigterm-\(victim)")
            let address = "tcp://127.0.0.1:\(CLI.freePorts(1)[0])", jobID = "sigterm-\(getpid())"
            let coordinator = try CLI.start(
                ["coordinator", "--listen", address, "--workers", "2", "--job-id", jobID, "--run-dir", run.path] + training + CLI.key,
                bound: 120)
            // a host name to advertise is resolved (libzmq binds addresses only)
            let workers = try (0..<2).map { _ in
                try CLI.start(
                    ["worker", "--coordinator", address, "--advertise", "tcp://localhost:0", "--job-id", jobID, "--threads", "1"] + CLI.key,
                    bound: 120)
            }
            waitUntilTraining(run)
            kill(victim == "coordinator" ? coordinator.pid : workers[1].pid, SIGTERM)
            let c = coordinator.finish(), w = workers.map { $0.finish() }
            #expect(
                c.status == 143 && c.stderr.contains("stopped by SIGTERM after step "), "SIGTERM to the \(victim): coordinator: \(c.stderr)"
            )
            // ranks go by joining order: the signalled worker is rank 0 or 1
            if victim == "worker" {
                #expect(c.stdout.contains(" received SIGTERM: the job stops after the step in progress"), "\(c.stdout)")
            }
            // a worker exits 143 if the signal was its own, else 0: it did what the job asked
            #expect(w.map(\.status) == (victim == "worker" ? [0, 143] : [0, 0]), "SIGTERM to the \(victim): workers: \(w.map(\.stderr))")
            try resumeAndCompare(run, "SIGTERM to the \(victim)")
        }
    }

    /// A second Ctrl-C does not wait for the step in progress (seconds of cnn-wn at batch 512): simulate
    /// exits at once, 130, saying what is lost, and takes its workers with it.
    @Test func aSecondInterruptExitsAtOnceSayingWhatIsLost() throws {
        let dir = CLI.tempDir("second-interrupt")
        defer { try? FileManager.default.removeItem(at: dir) }
        let sim = try CLI.start(
            [
                "simulate", "--workers", "2", "--model", "cnn-wn", "--batch", "512", "--train-limit", "8192", "--test-limit", "100",
                "--run-dir", dir.path
            ], bound: 120)
        waitUntilTraining(dir, settle: 0.2)
        let children =
            (try? String(contentsOfFile: "/proc/\(sim.pid)/task/\(sim.pid)/children", encoding: .utf8))?.split(separator: " ").compactMap {
                Int32($0)
            } ?? []
        kill(sim.pid, SIGINT)
        #expect(sim.waitFor("stopping after the step in progress", timeout: 30), "the first interrupt was not taken")
        kill(sim.pid, SIGINT)
        let r = sim.finish()
        // at once: the step in progress, finished, would have left its checkpoint (the graceful stop's)
        #expect(!FileManager.default.fileExists(atPath: dir.appendingPathComponent("checkpoint.safetensors").path))
        #expect(
            r.status == 130
                && r.stderr.contains(
                    "tether: interrupted again: exiting at once; nothing of this run is kept (no checkpoint was written yet)"),
            "\(r.stdout)\(r.stderr)")
        #expect(children.count == 2)
        // gone, or a zombie its new parent has not reaped yet (kill(pid, 0) succeeds on those)
        func running(_ pid: Int32) -> Bool {
            guard let stat = try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8), let close = stat.lastIndex(of: ")") else {
                return false
            }
            return !stat[close...].hasPrefix(") Z")
        }
        let deadline = Date().addingTimeInterval(5)
        while children.contains(where: running), Date() < deadline { usleep(20_000) }
        for c in children { #expect(!running(c), "worker \(c) is still running 5 s after simulate exited") }
    }

    /// A signal before training has nothing to save and says so: the coordinator exits at once.
    @Test func anInterruptBeforeTrainingSaysNothingIsKept() throws {
        let empty = CLI.tempDir("interrupt-empty")
        defer { try? FileManager.default.removeItem(at: empty) }
        let address = "tcp://127.0.0.1:\(CLI.freePorts(1)[0])"
        let coordinator = try CLI.start(
            [
                "coordinator", "--listen", address, "--workers", "2", "--model", "mlp", "--train-limit", "100",
                "--run-dir", empty.path
            ] + CLI.key, bound: 60)
        #expect(coordinator.waitFor("waiting for 2 workers", timeout: 30), "the coordinator never started waiting")
        kill(coordinator.pid, SIGTERM)
        let c = coordinator.finish()
        #expect(
            c.status == 143 && c.stderr.contains("interrupted at step 0, before any checkpoint was written: nothing of this run is kept"),
            "\(c.stderr)")
    }

    func waitForACheckpoint(in dir: URL) {
        let deadline = Date().addingTimeInterval(60)
        while !FileManager.default.fileExists(atPath: dir.appendingPathComponent("checkpoint.safetensors").path) && Date() < deadline {
            usleep(100_000)
        }
    }

    /// Runs `tether simulate ARGS` and SIGKILLs one of its worker processes once the run's first
    /// checkpoint exists; returns when simulate has exited.
    func simulateKillingAWorker(
        _ args: [String], runDirectory dir: URL
    ) throws -> (status: Int32, stderr: String, workers: [Int32]) {
        let simulate = try CLI.start(["simulate", "--run-dir", dir.path] + args, bound: 240)
        waitForACheckpoint(in: dir)
        // the workers are the simulate process's children
        let children =
            (try? String(contentsOfFile: "/proc/\(simulate.pid)/task/\(simulate.pid)/children", encoding: .utf8))?
            .split(separator: " ").compactMap { Int32($0) } ?? []
        if let victim = children.last { kill(victim, SIGKILL) }
        let r = simulate.finish()
        return (r.status, r.stderr, children)
    }

    /// A worker killed mid-epoch is named within seconds (its connection gone), the job stops with its last complete
    /// checkpoint, and no process is left behind.
    @Test func aKilledWorkerIsNamedAndTheJobStops() throws {
        let dir = CLI.tempDir("killed")
        defer { try? FileManager.default.removeItem(at: dir) }
        let r = try simulateKillingAWorker(
            [
                "--workers", "3", "--model", "mlp-wn", "--epochs", "50", "--train-limit", "3000", "--test-limit", "200",
                "--log-every", "1"
            ], runDirectory: dir)
        #expect(r.workers.count == 3)
        #expect(r.status == 1)  // on its own, not ended by the bound
        // named by its connection's end, or by a survivor whose ring broke, whichever comes first
        #expect(r.stderr.contains("its process ended") || r.stderr.contains("stopped"), "stderr: \(r.stderr)")
        #expect(r.stderr.contains("rank "), "stderr: \(r.stderr)")
        for c in r.workers { #expect(kill(c, 0) != 0, "worker \(c) is still running") }
        #expect(FileManager.default.fileExists(atPath: dir.appendingPathComponent("checkpoint.safetensors").path))
    }

    /// `simulate --max-restarts 1`: after a worker is killed the job restarts from its last checkpoint
    /// with new worker processes and ends with the parameters of a run that was never interrupted.
    @Test func aRestartedJobEqualsAnUninterruptedOne() throws {
        let dir = CLI.tempDir("restart")
        defer { try? FileManager.default.removeItem(at: dir) }
        let common = ["--workers", "3", "--model", "mlp-wn", "--epochs", "8", "--train-limit", "3000", "--test-limit", "200", "--seed", "7"]
        let restarted = dir.appendingPathComponent("restarted"), whole = dir.appendingPathComponent("whole")
        let r = try simulateKillingAWorker(common + ["--max-restarts", "1"], runDirectory: restarted)
        #expect(r.workers.count == 3)
        #expect(r.status == 0, "stderr: \(r.stderr)")
        #expect(
            r.stderr.contains("restart 1 of 1: resuming \(restarted.path) from its last checkpoint, with 3 new workers"),
            "stderr: \(r.stderr)")
        for c in r.workers { #expect(kill(c, 0) != 0, "worker \(c) is still running") }
        let u = try CLI.run(["simulate", "--run-dir", whole.path] + common, timeout: 240)
        #expect(u.status == 0, "stderr: \(u.stderr)")
        let a = try RunCheck.parameters(restarted.appendingPathComponent("checkpoint.safetensors").path)
        let b = try RunCheck.parameters(whole.appendingPathComponent("checkpoint.safetensors").path)
        #expect(!a.isEmpty && a == b)
        // It resumed (a restart from scratch would end the same): the second start is past step 0.
        let events = try metrics(restarted.path)
        let starts = events.filter { $0["event"] as? String == "start" }.compactMap { $0["step"] as? Int }
        #expect(starts.count == 2 && starts[0] == 0 && starts[1] > 0, "starts at steps \(starts)")
        let ends = events.filter { $0["event"] as? String == "end" }
        #expect(ends.count == 1 && ends[0]["step"] as? Int == 8 * 16, "\(ends)")
    }

    /// A job stopped after 20 steps and resumed ends with the parameters of one run straight through;
    /// for lm-tied (with dropout) that needs every replica's carried LSTM state and dropout RNG in the
    /// checkpoint, for PowerSGD its factors and every replica's error feedback.
    @Test(arguments: [
        ["--model", "mlp-wn", "--train-limit", "1000", "--test-limit", "200", "--batch", "32"],
        [
            "--model", "mlp-wn", "--train-limit", "1000", "--test-limit", "200", "--batch", "32", "--compression", "powersgd",
            "--powersgd-rank", "2",
            "--powersgd-start-step", "5"
        ],
        [
            "--model", "lm-tied", "--data", "text:/usr/share/games/fortunes", "--train-limit", "6000", "--test-limit", "1000",
            "--size", "16", "--vocabulary", "500", "--bptt", "8", "--batch", "4"
        ]
    ])
    func aResumedClusterJobEqualsAnUninterruptedOne(flags: [String]) throws {
        let dir = CLI.tempDir("resume")
        defer { try? FileManager.default.removeItem(at: dir) }
        let common = ["--workers", "2", "--epochs", "2", "--seed", "5"] + flags
        let (whole, split) = try runWholeAndResumed(common, in: dir, stopAfter: 20)
        let a = try RunCheck.parameters(whole + "/checkpoint.safetensors"), b = try RunCheck.parameters(split + "/checkpoint.safetensors")
        // named, not printed: a failing == on the dictionaries prints every value
        let differing = Set(a.keys).union(b.keys).filter { a[$0] != b[$0] }.sorted()
        #expect(!a.isEmpty && differing.isEmpty, "tensors that differ from the uninterrupted run's: \(differing)")
        // The job learned: two epochs on 1,000 images take the held-out accuracy far above chance (10%).
        let epochs = try metrics(whole).filter { $0["event"] as? String == "epoch" }
        #expect(epochs.count == 2)
        if flags[1] == "mlp-wn" { #expect((epochs.last?["test_accuracy"] as? Double).map { $0 > 0.6 } == true, "\(epochs)") }
    }

    /// Served data: workers that fetch their shard from the coordinator (and hold only it) train exactly
    /// as workers reading the files, across epochs, evaluations, and a stop and resume mid-epoch.
    @Test(arguments: [
        ["--model", "mlp-wn", "--train-limit", "700", "--test-limit", "150", "--batch", "32"],
        ["--model", "wide-deep", "--data", "synthetic-clicks:3000", "--buckets", "300", "--wide-buckets", "1024", "--hidden", "32,16"],
        [
            "--model", "lm-tied", "--data", "text:/usr/share/games/fortunes", "--train-limit", "6000", "--test-limit", "1000",
            "--size", "16", "--vocabulary", "500", "--bptt", "8", "--batch", "4"
        ]
    ])
    func aServedDataJobEqualsOneReadingTheFiles(flags: [String]) throws {
        let dir = CLI.tempDir("served")
        defer { try? FileManager.default.removeItem(at: dir) }
        let common = ["--workers", "2", "--epochs", "3", "--seed", "8"] + flags
        let (files, served) = try runWholeAndResumed(common, in: dir, stopAfter: 4, splitFlags: ["--serve-data"])
        let a = try RunCheck.parameters(files + "/checkpoint.safetensors"), b = try RunCheck.parameters(served + "/checkpoint.safetensors")
        #expect(!a.isEmpty && a == b)
        let loss = { (dir: String) in try metrics(dir).compactMap { $0["test_loss"] as? Double }.last }
        #expect(try loss(files) != nil && loss(files) == loss(served), "the sharded evaluation over served held-out samples")
        let again = try CLI.run(["simulate", "--serve-data", "--run-dir", served, "--resume"] + common, timeout: 60)
        #expect(again.status != 0 && again.stderr.contains("has finished: "), "resuming a finished run: \(again.stderr)")
    }
}
