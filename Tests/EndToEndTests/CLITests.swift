import Testing
import Foundation
import TetherData
import TetherProcess
import TetherTrain
import TetherTensor

/// Runs the built `tether` binary as a user would. It sits beside the test bundle in the build folder
/// (`swift build` builds it; scripts/test does that first).
enum CLI {
    static let binary: URL = {
        var dir = URL(fileURLWithPath: CommandLine.arguments[0]).deletingLastPathComponent()
        if dir.lastPathComponent == "MacOS" {
            dir = dir.deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
        }
        return dir.appendingPathComponent("tether")
    }()

    struct Result { var status: Int32; var stdout: String; var stderr: String }

    /// `count` distinct loopback ports the kernel had free a moment ago (bound together to port 0, read
    /// back, closed): for the processes a test starts next, never a random guess.
    static func freePorts(_ count: Int) -> [Int] {
        let sockets = (0..<count).map { _ in socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0) }
        defer { sockets.forEach { close($0) } }
        return sockets.map { fd in
            var address = sockaddr_in()
            (address.sin_family, address.sin_port, address.sin_addr.s_addr) = (sa_family_t(AF_INET), 0, inet_addr("127.0.0.1"))
            var length = socklen_t(MemoryLayout<sockaddr_in>.size)
            _ = withUnsafeMutablePointer(to: &address) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { p -> Int32 in
                    _ = bind(fd, p, length)
                    return getsockname(fd, p, &length)
                }
            }
            return Int(UInt16(bigEndian: address.sin_port))
        }
    }

    /// The repository's root (for its scripts and files).
    static let repository = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
        .deletingLastPathComponent()

    /// Runs `tether args...` (or another program) to completion, killing it after `timeout` seconds.
    static func run(
        _ args: [String], timeout: TimeInterval = 120, environment: [String: String] = [:], executable: URL = binary,
        in folder: URL? = nil
    ) throws -> Result {
        try start(args, bound: timeout, environment: environment, executable: executable, in: folder).finish()
    }

    /// A program running in the background (`start`): what it prints is collected as it comes, so a
    /// test can wait for a line (`waitFor`); `finish` waits for it and returns all it printed.
    final class Background: @unchecked Sendable {
        let process: ChildProcess
        var pid: Int32 { process.processIdentifier }
        private let lock = NSLock(), closed = DispatchGroup()
        private var printed = (out: Data(), err: Data())

        init(process: ChildProcess, out: Pipe, err: Pipe) {
            self.process = process
            // a reader thread per pipe, to its end (Foundation's readabilityHandler missed the end of a
            // `docker info`'s output on Linux and finish waited forever)
            for (pipe, isOut) in [(out, true), (err, false)] {
                closed.enter()
                Thread { [self] in
                    while case let data = pipe.fileHandleForReading.availableData, !data.isEmpty {
                        lock.withLock { if isOut { printed.out.append(data) } else { printed.err.append(data) } }
                    }
                    closed.leave()
                }.start()
            }
        }

        /// Waits up to `timeout` seconds for `text` on its standard output (or error); false if it never came.
        func waitFor(_ text: String, timeout: TimeInterval, onStandardError: Bool = false) -> Bool {
            line(containing: text, timeout: timeout, onStandardError: onStandardError) != nil
        }

        /// The first line of its standard output (or error) that holds `text`, waited for up to `timeout` seconds.
        func line(containing text: String, timeout: TimeInterval, onStandardError: Bool = false) -> String? {
            let end = Date().addingTimeInterval(timeout)
            while Date() < end {
                let out = lock.withLock { String(decoding: onStandardError ? printed.err : printed.out, as: UTF8.self) }
                if let line = out.split(separator: "\n").first(where: { $0.contains(text) }) { return String(line) }
                usleep(50_000)
            }
            return nil
        }

        func finish() -> Result {
            process.waitUntilExit()
            closed.wait()
            return lock.withLock {
                Result(
                    status: process.terminationStatus, stdout: String(decoding: printed.out, as: UTF8.self),
                    stderr: String(decoding: printed.err, as: UTF8.self))
            }
        }
    }

    /// Starts `tether args...` (or another program) with OPENBLAS_NUM_THREADS=1 and `environment`;
    /// it is terminated after `bound` seconds, should it hang.
    static func start(
        _ args: [String], bound: TimeInterval = 120, environment: [String: String] = [:], executable: URL = binary,
        in folder: URL? = nil
    ) throws -> Background {
        let out = Pipe(), err = Pipe()
        var env = ProcessInfo.processInfo.environment
        env["OPENBLAS_NUM_THREADS"] = "1"
        env.merge(environment) { $1 }
        let p = try ChildProcess(
            executable.path, args, environment: env, output: out.fileHandleForWriting.fileDescriptor,
            error: err.fileHandleForWriting.fileDescriptor, folder: folder?.path)
        // the child holds the write ends now; closed here, the readers see the end when it exits
        try? out.fileHandleForWriting.close()
        try? err.fileHandleForWriting.close()
        DispatchQueue.global().asyncAfter(deadline: .now() + bound) { if p.isRunning { p.terminate() } }
        return Background(process: p, out: out, err: err)
    }

    /// A cluster key made once for this test process (`tether keygen`), for the tests that start
    /// coordinators and workers themselves.
    static let keyFile: String = {
        let path = tempDir("key").path
        let r = try! run(["keygen", path])
        precondition(r.status == 0, "tether keygen: \(r.stderr)")
        return path
    }()
    static var key: [String] { ["--key-file", keyFile] }

    /// Whether `condition` held within `seconds` (checked `every` so often): a test waits for a
    /// condition with a deadline, never for a time.
    @discardableResult
    static func waitUntil(seconds: Double, every interval: Double = 0.02, _ condition: () -> Bool) -> Bool {
        let deadline = Date().addingTimeInterval(seconds)
        while !condition() {
            guard Date() < deadline else { return false }
            usleep(UInt32(interval * 1e6))
        }
        return true
    }

    static func tempDir(_ name: String) -> URL {
        FileManager.default.temporaryDirectory.appendingPathComponent("tether-e2e-\(name)-\(UUID())")
    }
}

extension ChildProcess {
    /// An exit's status, or the signal that ended it (as Foundation's Process has it); 0 while it runs.
    var terminationStatus: Int32 {
        switch ending {
        case .exited(let status)?, .signalled(let status)?: status
        case nil: 0
        }
    }
}

let dataInstalled = FileManager.default.fileExists(atPath: "/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz")
/// Debian's python3-kubernetes for /usr/bin/python3 (the API's types, for cluster/k8s/validate).
let kubernetesTypesInstalled =
    (try? CLI.run(["-c", "import kubernetes, yaml"], timeout: 60, executable: URL(fileURLWithPath: "/usr/bin/python3")))?.status == 0

@Suite(.serialized) struct CLITests {
    @Test func theBinaryIsBuilt() {
        #expect(FileManager.default.isExecutableFile(atPath: CLI.binary.path), "run `swift build` first: \(CLI.binary.path)")
    }

    @Test(.enabled(if: dataInstalled, "needs Debian's dataset-fashion-mnist (scripts/test installs it)"))
    func trainThenEvalThenResume() throws {
        let dir = CLI.tempDir("train")
        defer { try? FileManager.default.removeItem(at: dir) }
        let common = [
            "--model", "mlp-wn", "--train-limit", "512", "--test-limit", "500", "--batch", "32", "--log-every", "4", "--run-dir", dir.path
        ]
        let first = try CLI.run(["train", "--epochs", "2", "--stop-after-steps", "20"] + common)
        #expect(first.status == 0, "\(first.stderr)")
        #expect(first.stdout.contains("epoch 1/2: train loss"))
        #expect(first.stdout.contains("continue with --resume"))
        // not a terminal: plain log lines, no bar
        #expect(first.stdout.contains("epoch 1 step 4/16 loss") && !first.stdout.contains("\r"))

        let resumed = try CLI.run(["train", "--resume", "--run-dir", dir.path, "--test-limit", "500"])
        #expect(resumed.status == 0, "\(resumed.stderr)")
        #expect(resumed.stdout.contains("epoch 2/2: train loss"))
        #expect(resumed.stdout.contains("done: 32 steps"))

        let metrics = try String(contentsOf: dir.appendingPathComponent("metrics.jsonl"), encoding: .utf8).split(separator: "\n")
        let objects = try metrics.map { try JSONSerialization.jsonObject(with: Data($0.utf8)) as! [String: Any] }
        #expect(objects.allSatisfy { $0["event"] != nil && $0["epoch"] != nil && $0["step"] != nil })
        #expect(
            objects.filter { $0["event"] as? String == "epoch" }.allSatisfy {
                $0["test_accuracy"] is Double && $0["samples_per_sec"] is Double
            })

        let eval = try CLI.run([
            "eval", "--checkpoint", dir.appendingPathComponent("checkpoint.safetensors").path, "--test-limit", "500", "--json"
        ])
        #expect(eval.status == 0, "\(eval.stderr)")
        let result = try JSONSerialization.jsonObject(with: Data(eval.stdout.utf8)) as! [String: Any]
        #expect(result["samples"] as? Int == 500)
        #expect((result["test_accuracy"] as? Double ?? 0) > 0.5)
        #expect(result["step"] as? Int == 32)
    }

    @Test(arguments: [
        (["train", "--model", "resnet"], "unknown --model \"resnet\""),
        (["train", "--batch", "0", "--run-dir", "/tmp/tether-e2e-never"], "--batch must be at least 1"),
        (
            ["train", "--data", "idx:/nonexistent/dir", "--run-dir", "/tmp/tether-e2e-never"],
            "/nonexistent/dir/train-images-idx3-ubyte.gz: no such file. An IDX folder holds train-images-idx3-ubyte, train-labels-idx1-ubyte, t10k-images-idx3-ubyte, t10k-labels-idx1-ubyte (each may end in .gz); there is no folder /nonexistent/dir"
        ),
        (["train", "--data", "idx:/usr/share/games", "--run-dir", "/tmp/tether-e2e-never"], "/usr/share/games holds fortunes"),
        (["train", "--data", "csv", "--run-dir", "/tmp/tether-e2e-never"], "unknown --data \"csv\""),
        (
            ["train", "--model", "wide-deep", "--data", "csv:/nonexistent.csv", "--run-dir", "/tmp/tether-e2e-never"],
            "needs --schema adult or --schema FILE"
        ),
        (
            ["train", "--model", "wide-deep", "--data", "csv:/nonexistent.csv", "--schema", "adult", "--run-dir", "/tmp/tether-e2e-never"],
            "/nonexistent.csv: no such file"
        ),
        (
            ["train", "--model", "lm-tied", "--data", "fashion-mnist", "--run-dir", "/tmp/tether-e2e-never"],
            "is not text: lm-tied reads text:PATH"
        ),
        (["train", "--model", "lm-tied", "--dropout", "1.5", "--run-dir", "/tmp/tether-e2e-never"], "--dropout must be in [0, 1)"),
        (
            ["train", "--model", "wide-deep", "--hidden", "256,x", "--run-dir", "/tmp/tether-e2e-never"],
            "--hidden takes comma-separated widths"
        ),
        (["train", "--frobnicate"], "Unknown option '--frobnicate'"),
        (["eval", "--checkpoint", "/nonexistent/checkpoint.safetensors"], "/nonexistent/checkpoint.safetensors: no such checkpoint file"),
        (["bench", "train", "--threads", "0"], "--threads must be in 1...256, got 0"),
        (["trian", "--model", "mlp"], "unknown command \"trian\" (did you mean train?)"),
        (["train", "--lr", "-1", "--run-dir", "/tmp/tether-e2e-never"], "--lr must be a positive number (got -1.0)"),
        (["bench", "allreduce", "--ranks", "1"], "--ranks must be at least 2: an all-reduce over one rank moves nothing to measure"),
        (["bench", "allreduce", "--size", "1tb"], "--size 1tb: expected a byte count"),
        (
            ["eval", "--checkpoint", "/tmp"],
            "/tmp: not a valid safetensors file: is a folder; give the checkpoint file (e.g. /tmp/checkpoint.safetensors)"
        ),
        (["train", "--run-dir", "/etc/hostname"], "--run-dir /etc/hostname is a file; give a folder (it is created if missing)"),
        (
            ["worker", "--coordinator", "127.0.0.1:7070"],
            "--coordinator takes tcp://HOST:PORT, got 127.0.0.1:7070 (did you mean tcp://127.0.0.1:7070?)"
        ),
        (
            ["coordinator", "--workers", "2", "--listen", "0.0.0.0:7070"],
            "--listen takes tcp://HOST:PORT, got 0.0.0.0:7070 (did you mean tcp://0.0.0.0:7070?)"
        ),
        (
            ["worker", "--coordinator", "tcp://127.0.0.1:1", "--advertise", "tcp://nosuchhost.invalid:0", "--insecure"],
            "--advertise tcp://nosuchhost.invalid:0: cannot resolve nosuchhost.invalid"
        ),
        (
            ["worker", "--coordinator", "tcp://127.0.0.1:1", "--advertise", "tcp://192.0.2.254:0", "--insecure"],
            "192.0.2.254 is not an address of this host; give one of its own: lo 127.0.0.1"
        )
    ])
    func badInputGivesAClearError(args: [String], message: String) throws {
        defer { try? FileManager.default.removeItem(atPath: "/tmp/tether-e2e-never") }
        let r = try CLI.run(args)
        #expect(r.status != 0)
        #expect(r.stderr.contains(message), "stderr: \(r.stderr)")
    }

    /// A worker told to advertise a port another program holds says so at once, before it joins.
    @Test func aTakenAdvertisedPortIsNamed() throws {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        defer { close(fd) }
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        var length = socklen_t(MemoryLayout<sockaddr_in>.size)
        let bound = withUnsafeMutablePointer(to: &address) { p in
            p.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                bind(fd, $0, length) == 0 && listen(fd, 1) == 0 && getsockname(fd, $0, &length) == 0
            }
        }
        #expect(bound)
        let port = UInt16(bigEndian: address.sin_port)
        let r = try CLI.run(
            ["worker", "--coordinator", "tcp://127.0.0.1:1", "--advertise", "tcp://127.0.0.1:\(port)", "--insecure"], timeout: 30)
        #expect(
            r.status == 1 && r.stderr.contains("--advertise tcp://127.0.0.1:\(port): port \(port) is taken on this host"), "\(r.stderr)")
    }

    /// A second worker advertising the address a first one of the job advertises is refused by the
    /// coordinator, and says so at once (the coordinator logs it too).
    @Test func aSecondWorkerOnATakenAddressIsRefused() throws {
        let dir = CLI.tempDir("taken")
        defer { try? FileManager.default.removeItem(at: dir) }
        let ports = CLI.freePorts(2), address = "tcp://127.0.0.1:\(ports[0])", advertised = "tcp://127.0.0.1:\(ports[1])"
        let coordinator = try CLI.start(
            [
                "coordinator", "--listen", address, "--workers", "3", "--model", "mlp", "--train-limit", "100",
                "--run-dir", dir.path
            ] + CLI.key, bound: 60)
        let first = try CLI.start(["worker", "--coordinator", address, "--advertise", advertised] + CLI.key, bound: 60)
        #expect(coordinator.waitFor("a worker at \(advertised) said hello: 1 of 3", timeout: 40))
        let second = try CLI.run(["worker", "--coordinator", address, "--advertise", advertised] + CLI.key, timeout: 30)
        #expect(
            second.status == 1
                && second.stderr.contains(
                    "the coordinator at \(address) refused this worker: another worker of this job already advertises \(advertised)"),
            "\(second.stderr)")
        kill(coordinator.pid, SIGTERM)
        let c = coordinator.finish()
        _ = first.finish()
        #expect(c.stdout.contains("turned away a worker: another worker of this job already advertises \(advertised)"), "\(c.stdout)")
    }

    /// metrics.jsonl has one schema for `train` and the cluster: the same events with the same keys
    /// (the cluster adds its own: workers, per-rank times, the `training` event), epochs counted from 1
    /// as the console counts them, and a run that ends within an epoch (--max-steps) evaluates there.
    @Test(.enabled(if: dataInstalled, "needs Debian's dataset-fashion-mnist"))
    func metricsHaveOneSchemaForTrainAndTheCluster() throws {
        let dir = CLI.tempDir("schema")
        defer { try? FileManager.default.removeItem(at: dir) }
        let common = ["--model", "mlp", "--train-limit", "256", "--test-limit", "64", "--max-steps", "10", "--log-every", "4"]
        let train = try CLI.run(["train", "--batch", "64", "--run-dir", dir.path + "/train"] + common)
        let cluster = try CLI.run(
            ["simulate", "--workers", "2", "--batch", "32", "--run-dir", dir.path + "/cluster"] + common, timeout: 120)
        for r in [train, cluster] {
            #expect(
                r.status == 0 && r.stdout.contains("epoch 2/3: train loss ")
                    && r.stdout.contains("step 10 (2 of epoch 3's 4 steps): train loss ")
                    && r.stdout.contains("test accuracy"), "\(r.stdout)\(r.stderr)")
        }
        func lines(_ run: String) throws -> [[String: Any]] {
            try String(contentsOfFile: dir.path + "/\(run)/metrics.jsonl", encoding: .utf8).split(separator: "\n")
                .map { try JSONSerialization.jsonObject(with: Data($0.utf8)) as! [String: Any] }
        }
        let (allT, allC) = (try lines("train"), try lines("cluster"))
        // checkpoints: the same steps in both (where they fall among the other lines may differ)
        let checkpoints = { (l: [[String: Any]]) in l.filter { $0["event"] as? String == "checkpoint" }.map { $0["step"] as! Int } }
        #expect(checkpoints(allT) == [4, 8, 10] && checkpoints(allC) == checkpoints(allT), "\(checkpoints(allT)) \(checkpoints(allC))")
        let (t, c) = (allT.filter { $0["event"] as? String != "checkpoint" }, allC.filter { $0["event"] as? String != "checkpoint" })
        let clusterOnly: Set<String> = [
            "workers", "compute_s", "allreduce_s", "wait_s", "optimizer_s", "dense_bytes", "sparse_bytes"
        ]
        let events = { (l: [[String: Any]]) in l.map { $0["event"] as! String }.filter { $0 != "training" } }
        #expect(
            events(t) == ["start", "step", "epoch", "step", "epoch", "eval", "end"] && events(c) == events(t), "\(events(t)) \(events(c))")
        for (a, b) in zip(t, c.filter { $0["event"] as? String != "training" }) {
            #expect(Set(a.keys) == Set(b.keys).subtracting(clusterOnly), "\(a.keys.sorted()) vs \(b.keys.sorted())")
            #expect(a["epoch"] as? Int == b["epoch"] as? Int && a["step"] as? Int == b["step"] as? Int)
        }
        #expect(t.map { $0["epoch"] as! Int } == [1, 1, 1, 2, 2, 3, 3])
        #expect(
            t.filter { ["step", "epoch", "eval"].contains($0["event"] as! String) }.allSatisfy {
                $0["lr"] is Double && $0["loss"] is Double
            })
    }

    /// A fresh run where a run is refuses with the ways on; --force starts over (metrics included). A
    /// metrics file left by a run that wrote no checkpoint is not appended to.
    @Test(.enabled(if: dataInstalled, "needs Debian's dataset-fashion-mnist"))
    func aUsedRunDirectoryNeedsResumeOrForce() throws {
        let dir = CLI.tempDir("used")
        defer { try? FileManager.default.removeItem(at: dir) }
        let args = ["train", "--model", "mlp", "--train-limit", "128", "--test-limit", "64", "--max-steps", "2", "--run-dir", dir.path]
        #expect(try CLI.run(args).status == 0)
        let again = try CLI.run(args)
        #expect(
            again.status == 1
                && again.stderr.contains(
                    "\(dir.path) holds a run: pass --resume to continue it, --force to start over (deletes checkpoint.safetensors and metrics.jsonl)"
                ), "\(again.stderr)")
        let forced = try CLI.run(args + ["--force"])
        #expect(forced.status == 0, "\(forced.stderr)")
        let metrics = try String(contentsOfFile: dir.path + "/metrics.jsonl", encoding: .utf8)
        #expect(metrics.components(separatedBy: "\"event\":\"start\"").count == 2, "one run's metrics: \(metrics)")
        try FileManager.default.removeItem(atPath: dir.path + "/checkpoint.safetensors")
        let stale = try CLI.run(args)
        #expect(
            stale.status == 1
                && stale.stderr.contains(
                    "holds the metrics of a run that left no checkpoint: pass --force to start over (deletes metrics.jsonl)"),
            "\(stale.stderr)")
    }

    /// On a terminal (a pty from util-linux's `script`) the redrawn progress bar fits the width: on 70
    /// or 50 columns every redraw is shorter than that (a line as long as the terminal wraps); on 25, where no
    /// bar fits, periodic log lines stand in for it.
    @Test(
        .enabled(
            if: dataInstalled && FileManager.default.isExecutableFile(atPath: "/usr/bin/script"),
            "needs the dataset and util-linux's script"))
    func theProgressBarFitsTheTerminal() throws {
        for columns in [70, 50, 25] {
            let dir = CLI.tempDir("tty")
            defer { try? FileManager.default.removeItem(at: dir) }
            let command =
                "stty cols \(columns) rows 24; \(CLI.binary.path) train --model mlp --train-limit 3000 --test-limit 64 --epochs 1 --batch 32 "
                + "--log-every 30 --run-dir \(dir.path)"
            let r = try CLI.run(["-qec", command, "/dev/null"], timeout: 120, executable: URL(fileURLWithPath: "/usr/bin/script"))
            #expect(r.status == 0, "\(r.stdout)")
            // what follows each clearing of the line up to the next: a redraw, unless a line that stays (ends in a newline)
            let redraws = r.stdout.components(separatedBy: "\r\u{1B}[2K").dropFirst().filter { !$0.isEmpty && !$0.contains("\n") }
            if columns == 25 {
                #expect(!redraws.contains { $0.contains("loss") } && r.stdout.contains("epoch 1 step 30/94 loss"), "\(r.stdout)")
            } else {
                #expect(
                    redraws.count >= 2 && redraws.allSatisfy { $0.count < columns },
                    "\(columns) columns: \(redraws.map(\.count).max() ?? 0): \(redraws.first ?? "")")
                #expect(!r.stdout.contains("epoch 1 step 30/94 loss"), "a bar, not log lines: \(r.stdout)")
            }
        }
    }

    /// What torchrun and Horovod users expect: `tether models`; --print-config (the settings after the
    /// job file, variables and flags, then exit, touching nothing); --json (one object on stdout) on
    /// train and simulate alike; --quiet (nothing printed by a run that goes well).
    @Test(.enabled(if: dataInstalled, "needs Debian's dataset-fashion-mnist"))
    func modelsPrintConfigJSONAndQuiet() throws {
        let models = try CLI.run(["models", "--json"])
        let listed = ((try JSONSerialization.jsonObject(with: Data(models.stdout.utf8)) as? [String: Any])?["models"] as? [[String: Any]])?
            .compactMap { $0["model"] as? String }
        #expect(listed == ["mlp", "mlp-wn", "cnn-wn", "autoencoder-tied", "lm-tied", "wide-deep", "spec"], "\(models.stdout)")
        #expect(try CLI.run(["models"]).stdout.contains("Wide & Deep click prediction"))

        let dir = CLI.tempDir("output")
        defer { try? FileManager.default.removeItem(at: dir) }
        let printed = try CLI.run(
            ["simulate", "--model", "lm-tied", "--lr", "5", "--print-config", "--json", "--run-dir", dir.path],
            environment: ["TETHER_LR": "7", "TETHER_EPOCHS": "2"])
        let config = (try JSONSerialization.jsonObject(with: Data(printed.stdout.utf8)) as? [String: Any])?["config"] as? [String: Any]
        #expect(
            printed.status == 0 && (config?["schedule"] as? [String: Any])?["baseLR"] as? Double == 5 && config?["epochs"] as? Int == 2
                && config?["batch"] as? Int == 20, "flag over variable over the model's defaults: \(printed.stdout)")
        #expect(!FileManager.default.fileExists(atPath: dir.path), "--print-config touches nothing")

        let common = ["--model", "mlp", "--train-limit", "256", "--test-limit", "64", "--max-steps", "5"]
        for command in ["train", "simulate"] {
            let r = try CLI.run([command, "--json", "--run-dir", dir.path + "/" + command] + common, timeout: 120)
            let summary = try JSONSerialization.jsonObject(with: Data(r.stdout.utf8)) as? [String: Any]
            #expect(
                r.status == 0 && summary?["event"] as? String == "end" && summary?["step"] as? Int == 5
                    && summary?["test_accuracy"] is Double
                    && summary?["checkpoint"] as? String == dir.path + "/\(command)/checkpoint.safetensors",
                "\(command) --json: \(r.stdout)")
            let quiet = try CLI.run([command, "--quiet", "--run-dir", dir.path + "/quiet-" + command] + common, timeout: 120)
            #expect(quiet.status == 0 && quiet.stdout.isEmpty && quiet.stderr.isEmpty, "\(command) --quiet: \(quiet.stdout)\(quiet.stderr)")
        }
    }

    /// --print-config prints a job file: kebab-case keys, only the sections that apply to the model, and
    /// fed back with --config it gives the same settings, for every family and command.
    @Test func printConfigPrintsAJobFileThatRoundTrips() throws {
        let dir = CLI.tempDir("print-config")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: dir) }
        let models = [
            "mlp", "mlp-wn", "cnn-wn", "autoencoder-tied", "lm-tied", "wide-deep",
            CLI.repository.appendingPathComponent("models/cnn-wn.yaml").path
        ]
        for (command, extra) in [
            ("train", ["--schedule", "step", "--lr-step-size", "7"]), ("simulate", ["--compression", "powersgd", "--powersgd-rank", "2"]),
            ("coordinator", ["--workers", "3", "--optimizer", "sgd", "--momentum", "0.9", "--nesterov"])
        ] {
            for model in models {
                let first = try CLI.run([command, "--model", model, "--batch", "24", "--print-config"] + extra)
                #expect(first.status == 0, "\(command) \(model): \(first.stderr)")
                let file = dir.appendingPathComponent("\(command)-\(URL(fileURLWithPath: model).lastPathComponent).yaml")
                try first.stdout.write(to: file, atomically: true, encoding: .utf8)
                let keys = first.stdout.split(separator: "\n").filter { !$0.hasPrefix("#") }.map { String($0.prefix { $0 != ":" }) }
                #expect(keys.allSatisfy { $0 == $0.lowercased() && !$0.contains("_") }, "kebab-case: \(keys)")
                #expect(keys.contains("vocabulary") == (model == "lm-tied"), "\(command) \(model): \(keys)")
                #expect(keys.contains("wide-buckets") == (model == "wide-deep"), "\(command) \(model): \(keys)")
                let again = try CLI.run([command, "--config", file.path, "--print-config"])
                #expect(
                    again.status == 0 && again.stdout == first.stdout,
                    "\(command) \(model):\n\(first.stdout)\n\(again.stdout)\(again.stderr)")
            }
        }
    }

    /// The usual smoke test, then the real run: a --max-steps given once does not stay in the run when
    /// the resuming command gives --epochs.
    @Test(.enabled(if: dataInstalled, "needs Debian's dataset-fashion-mnist"))
    func aResumeWithEpochsEndsAnEarlierMaxSteps() throws {
        let dir = CLI.tempDir("max-steps")
        defer { try? FileManager.default.removeItem(at: dir) }
        let data = ["--model", "mlp", "--train-limit", "256", "--test-limit", "64", "--batch", "64", "--run-dir", dir.path]
        let smoke = try CLI.run(["train", "--max-steps", "2"] + data)
        #expect(smoke.status == 0 && smoke.stdout.contains("done: 2 steps"), "\(smoke.stdout)\(smoke.stderr)")
        // what defines the run is kept, named by its flag with both values; another model is one change
        let lr = try CLI.run(["train", "--resume", "--epochs", "2", "--lr", "0.01", "--seed", "3", "--run-dir", dir.path])
        #expect(
            lr.status == 1 && lr.stderr.contains("this command gives --lr 0.01 (the run has 0.001), --seed 3 (the run has 0)"),
            "\(lr.stderr)")
        let model = try CLI.run(["train", "--resume", "--model", "cnn-wn", "--run-dir", dir.path])
        #expect(
            model.status == 1 && model.stderr.contains("this command gives --model cnn-wn (the run has mlp) (")
                && !model.stderr.contains("limit"), "\(model.stderr)")
        // what only observes or paces it may change, and is said
        let real = try CLI.run(["train", "--resume", "--epochs", "2", "--log-every", "1", "--checkpoint-every", "3", "--run-dir", dir.path])
        #expect(real.status == 0 && real.stdout.contains("done: 8 steps"), "\(real.stdout)\(real.stderr)")
        #expect(
            real.stdout.contains("resuming with --checkpoint-every 3 (the run has 0), --log-every 1 (the run has 50)"), "\(real.stdout)")
        #expect(real.stdout.contains("resuming at step 2: the run is now 8 steps (2 epochs) long (it was 2 steps)"), "\(real.stdout)")
        // finished: train and simulate say so alike, with how to extend it
        let finished =
            "the run in \(dir.path) has finished: 8 of 8 steps (2 epochs); extend it with --resume --epochs 3 (or --max-steps N above 8)"
        for command in ["train", "simulate"] {
            let again = try CLI.run([command, "--resume", "--run-dir", dir.path])
            #expect(again.status == 1 && again.stderr.contains(finished), "\(command): \(again.stderr)")
        }
        // --max-steps past the epochs' end: the steps win; the last epoch is partial
        let more = try CLI.run(["train", "--resume", "--max-steps", "10", "--run-dir", dir.path])
        #expect(
            more.status == 0 && more.stdout.contains("the run is now 10 steps (2.50 epochs) long (it was 8 steps)")
                && more.stdout.contains("done: 10 steps"), "\(more.stdout)\(more.stderr)")
    }

    /// A run directory has one writer: a second run, --force included, is refused naming the holder
    /// and deletes nothing; the lock of a SIGKILLed run is taken over, saying so. A coordinator stopped
    /// while it waits for workers leaves no trace (the next fresh run there is not refused).
    @Test(.enabled(if: dataInstalled, "needs Debian's dataset-fashion-mnist"))
    func aRunDirectoryHasOneWriter() throws {
        let dir = CLI.tempDir("one-writer")
        defer { try? FileManager.default.removeItem(at: dir) }
        let lock = dir.appendingPathComponent("run.lock"), metrics = dir.appendingPathComponent("metrics.jsonl")
        let first = try CLI.start(["train", "--model", "cnn-wn", "--max-steps", "100000", "--run-dir", dir.path], bound: 120)
        // its first line comes once it holds the lock and has written its start to metrics.jsonl
        #expect(first.waitFor("parameters, ", timeout: 60))
        let holder = "pid \(first.pid) on host"
        #expect(try String(contentsOf: lock, encoding: .utf8).hasPrefix(holder))
        let before = try Data(contentsOf: metrics)
        for extra in [[], ["--force"]] {
            let second = try CLI.run(["train", "--model", "mlp", "--max-steps", "2", "--run-dir", dir.path] + extra)
            #expect(second.status == 1 && second.stderr.contains("is in use by another run (\(holder)"), "\(extra): \(second.stderr)")
        }
        #expect(try Data(contentsOf: metrics).starts(with: before), "the running job's metrics are untouched")
        kill(first.pid, SIGKILL)
        _ = first.finish()
        let third = try CLI.run(["train", "--model", "mlp", "--max-steps", "2", "--train-limit", "256", "--force", "--run-dir", dir.path])
        #expect(third.status == 0 && third.stdout.contains("took over \(dir.path) from \(holder)"), "\(third.stdout)\(third.stderr)")
        #expect(try String(contentsOf: lock, encoding: .utf8).isEmpty, "a run that ended gave its lock up")

        let waiting = dir.appendingPathComponent("waiting")
        let coordinator = try CLI.start(
            ["coordinator", "--listen", "tcp://127.0.0.1:0", "--workers", "2", "--insecure", "--run-dir", waiting.path], bound: 60)
        #expect(coordinator.waitFor("coordinator on tcp://", timeout: 60))  // listening, its metrics open
        kill(coordinator.pid, SIGINT)
        #expect(coordinator.finish().status == 130)
        #expect(!FileManager.default.fileExists(atPath: waiting.path), "a run stopped before its first step leaves nothing")
    }

    @Test func corruptCheckpointIsRefused() throws {
        let dir = CLI.tempDir("corrupt")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: dir) }
        let path = dir.appendingPathComponent("checkpoint.safetensors").path
        #expect(FileManager.default.createFile(atPath: path, contents: Data([0x10, 0, 0, 0, 0, 0, 0, 0]) + Data("{\"a\": 1".utf8)))
        let r = try CLI.run(["eval", "--checkpoint", path])
        #expect(r.status == 1)
        #expect(r.stderr.contains("\(path): not a valid safetensors file"), "stderr: \(r.stderr)")
    }

    /// `tether plan` measures a step here and predicts the hosts it is given: one host is the measured
    /// step, efficiency falls as hosts are added on a slow link, and what does not parse is refused.
    @Test func planPredictsFromAStepMeasuredHere() throws {
        let r = try CLI.run(
            [
                "plan", "--model", "mlp-wn", "--threads", "1", "--hosts", "1,4,256", "--link", "100mbit", "--latency", "0.2ms", "--steps",
                "3", "--json"
            ])
        let out = (try? JSONSerialization.jsonObject(with: Data(r.stdout.utf8)) as? [String: Any]) ?? [:]
        let rows = out["predictions"] as? [[String: Any]] ?? []
        let efficiency = rows.compactMap { $0["efficiency"] as? Double }
        #expect(r.status == 0 && rows.count == 3 && efficiency.count == 3, "\(r.stdout)\(r.stderr)")
        #expect(abs((efficiency.first ?? 0) - 1) < 1e-9 && efficiency == efficiency.sorted(by: >) && (efficiency.last ?? 1) < 0.8)
        // by size on this link (2.5 KB of latency x bandwidth, where the nominal link's is 62.5 KB): every
        // bucket of mlp-wn's by the ring on 4 hosts, by halving-doubling on 256; its last 30 KB are not
        // worth recursive doubling's whole-buffer steps here, as they are on the nominal link
        let schedules = rows.map { $0["schedules"] as? [String] ?? ["?"] }
        #expect(schedules == [[], ["ring"], ["halving-doubling"]], "\(schedules)")
        #expect((out["gradient_bytes"] as? Double ?? 0) > 1e6 && (out["link_bytes_per_sec"] as? Double) == 12.5e6)
        // every collective's efficiency, the job's (by size, the default) among them; auto's the best
        let byCollective = out["efficiency_by_collective"] as? [String: [Double]] ?? [:]
        #expect(
            Set(byCollective.keys) == ["by-size", "ring", "recursive-doubling", "halving-doubling", "tree", "auto"]
                && byCollective["by-size"] == efficiency,
            "\(byCollective)")
        #expect(zip(byCollective["auto"] ?? [], efficiency).allSatisfy { $0 >= $1 - 1e-12 }, "\(byCollective)")
        let text = try CLI.run(
            [
                "plan", "--model", "mlp-wn", "--threads", "1", "--hosts", "1,256", "--link", "100mbit", "--steps", "3", "--collective",
                "halving-doubling"
            ])
        #expect(text.status == 0 && text.stdout.contains("efficiency falls below 80% from 256 hosts"), "\(text.stdout)")
        #expect(
            text.stdout.contains("all-reduce by halving-doubling") && text.stdout.contains("efficiency at 256 hosts by collective: ring"),
            "\(text.stdout)")
        let bad = try CLI.run(["plan", "--model", "mlp-wn", "--link", "fast"])
        #expect(bad.status != 0 && bad.stderr.contains("--link takes a rate such as 1gbit"), "\(bad.stderr)")
        // a step measured elsewhere: one host runs at exactly batch / (compute + optimizer)
        let given = try CLI.run(
            ["plan", "--model", "mlp-wn", "--hosts", "1,8", "--compute-ms", "30", "--optimizer-ms", "2", "--json"])
        let givenOut = (try? JSONSerialization.jsonObject(with: Data(given.stdout.utf8)) as? [String: Any]) ?? [:]
        let one = (givenOut["predictions"] as? [[String: Any]])?.first?["samples_per_sec"] as? Double ?? 0
        #expect(given.status == 0 && abs(one - 64 / 0.032) < 1e-6, "\(given.stdout)\(given.stderr)")
        #expect(givenOut["compute_measured_here"] as? Bool == false)
        let negative = try CLI.run(["plan", "--model", "mlp-wn", "--compute-ms", "0"])
        #expect(negative.status != 0 && negative.stderr.contains("--compute-ms must be positive"), "\(negative.stderr)")
        let alone = try CLI.run(["plan", "--model", "mlp-wn", "--optimizer-ms", "2"])
        #expect(alone.status != 0 && alone.stderr.contains("--optimizer-ms goes with --compute-ms"), "\(alone.stderr)")
        // a job's links for by-size: both flags, and only for by-size (refused before anything starts)
        let dir = CLI.tempDir("link-flags")
        defer { try? FileManager.default.removeItem(at: dir) }
        let job = ["simulate", "--workers", "2", "--model", "mlp-wn", "--max-steps", "1", "--run-dir", dir.path]
        let half = try CLI.run(job + ["--link", "1gbit"])
        #expect(half.status != 0 && half.stderr.contains("--link and --latency go together"), "\(half.stderr)")
        let ring = try CLI.run(job + ["--link", "1gbit", "--latency", "1ms", "--collective", "ring"])
        #expect(ring.status != 0 && ring.stderr.contains("the links --collective by-size chooses for"), "\(ring.stderr)")
        let slow = try CLI.run(job + ["--link", "fast", "--latency", "1ms"])
        #expect(slow.status != 0 && slow.stderr.contains("--link takes a rate such as 1gbit"), "\(slow.stderr)")
    }

    @Test func versionNamesTheCLibraries() throws {
        let r = try CLI.run(["version"])
        #expect(r.status == 0)
        #expect(
            r.stdout.contains("libzmq 4.") && r.stdout.contains("protobuf-c 1.") && r.stdout.contains("OpenBLAS")
                && !r.stdout.contains("OpenBLAS OpenBLAS"))
    }

    /// OpenBLAS older than the CPU takes it for a pre-AVX2 core (Debian 12's 0.3.21: a Sapphire Rapids
    /// for a Prescott); tether starts again on the kernels the CPU has. This test process loaded the
    /// same library, which chose as it did before tether's correction; a core the user names is kept.
    @Test func tetherRunsOnTheKernelsTheCPUHas() throws {
        let environment = ProcessInfo.processInfo.environment
        let replacement = BLASCore.replacement(chosen: BLASCore.name, vectorLevel: BLASCore.cpuVectorLevel, environment: environment)
        let r = try CLI.run(["version"])
        #expect(r.status == 0)
        if let replacement {
            #expect(
                r.stdout.contains("OpenBLAS core \(replacement): set by tether (OpenBLAS took this CPU for \(BLASCore.name)"),
                "stdout: \(r.stdout)")
        } else if let set = environment["OPENBLAS_CORETYPE"],
            let better = BLASCore.replacement(chosen: BLASCore.name, vectorLevel: BLASCore.cpuVectorLevel, environment: [:])
        {
            #expect(
                r.stdout.contains(
                    "OpenBLAS core \(BLASCore.name): OPENBLAS_CORETYPE=\(set) in the environment, below what this CPU runs (\(better)'s"),
                "stdout: \(r.stdout)")
        } else {
            #expect(r.stdout.contains("OpenBLAS core \(BLASCore.name)\n"), "stdout: \(r.stdout)")
        }
        #if arch(x86_64)
            // a core the user names is kept, and said to be below what the CPU runs where it is
            let named = try CLI.run(["version"], environment: ["OPENBLAS_CORETYPE": "Prescott"])
            let below = BLASCore.cpuVectorLevel > 0 ? ": OPENBLAS_CORETYPE=Prescott in the environment, below" : "\n"
            #expect(named.stdout.contains("OpenBLAS core Prescott" + below), "stdout: \(named.stdout)")
            // started again, it keeps its name (`pkill tether`, `docker top`)
            let waiting = try CLI.start(["worker", "--coordinator", "tcp://127.0.0.1:1", "--insecure"], bound: 20)
            // once it runs (any start again happens before it says a word)
            #expect(waiting.waitFor("waiting for the coordinator", timeout: 20, onStandardError: true))
            let name = try? String(contentsOfFile: "/proc/\(waiting.pid)/comm", encoding: .utf8)
            kill(waiting.pid, SIGTERM)
            _ = waiting.finish()
            #expect(name == "tether\n", "the process is named \(name ?? "nothing")")
            // what a started-again tether carries is not a setting of any command
            let restarted = try CLI.run(
                ["eval", "--checkpoint", "/nonexistent/c.safetensors"],
                environment: ["OPENBLAS_CORETYPE": "Prescott", BLASCore.detectedVariable: "Prescott"])
            #expect(
                restarted.stderr.contains("no such checkpoint file") && !restarted.stderr.contains("ignoring"), "\(restarted.stderr)")
        #endif
    }

    /// Numbers and words as a person reads them: sizes in any case, one worker not "1 workers", a table
    /// of one class refused through the binary (not trained to "AUC nan, accuracy 100%").
    @Test func plainWordsForSmallThings() throws {
        let bench = try CLI.run(
            ["bench", "allreduce", "--ranks", "2", "--size", "1mb", "--iterations", "1", "--warmup", "0", "--insecure"], timeout: 60)
        #expect(bench.status == 0 && bench.stdout.contains("all-reduce of 1mb (250000 float32)"), "\(bench.stdout)\(bench.stderr)")
        let dir = CLI.tempDir("plain")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: dir) }
        let address = "tcp://127.0.0.1:\(CLI.freePorts(1)[0])"
        let coordinator = try CLI.start(
            ["coordinator", "--listen", address, "--workers", "1", "--model", "mlp", "--run-dir", dir.path + "/c"] + CLI.key, bound: 30)
        // the line under test, then a stop (loading the data takes a while under load)
        #expect(coordinator.waitFor("waiting for 1 worker", timeout: 60), "the coordinator never said what it waits for")
        kill(coordinator.pid, SIGTERM)
        let c = coordinator.finish()
        #expect(c.stdout.contains("waiting for 1 worker; mlp, batch 64 per worker (64 global)"), "\(c.stdout)")
        let csv = dir.appendingPathComponent("t.csv"), schema = dir.appendingPathComponent("t.schema")
        try (0..<40).map { "a\($0 % 3),\($0),no" }.joined(separator: "\n").write(to: csv, atomically: true, encoding: .utf8)
        try "columns a, b, y\ncategorical a\nnumeric b\nlabel y yes\n".write(to: schema, atomically: true, encoding: .utf8)
        let one = try CLI.run([
            "train", "--model", "wide-deep", "--data", "csv:" + csv.path, "--schema", schema.path, "--run-dir", dir.path + "/run"
        ])
        #expect(one.status == 1 && one.stderr.contains("every training row has label 0; a click model needs both classes"), "\(one.stderr)")
    }

    /// A CSV model's checkpoint carries its schema and absolute data paths: trained with relative paths
    /// in one folder, it is evaluated from another after the schema file is gone; eval takes another
    /// schema by --schema, TETHER_SCHEMA or a job file's schema:.
    @Test func aCSVModelIsEvaluatedFromAnywhere() throws {
        let dir = CLI.tempDir("csv-anywhere")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: dir) }
        let rows = (0..<200).map { "a\($0 % 3),\($0 % 17),\($0 % 3 == 0 ? "yes" : "no")" }.joined(separator: "\n")
        try rows.write(to: dir.appendingPathComponent("t.csv"), atomically: true, encoding: .utf8)
        let schemaText = "columns a, b, y\ncategorical a\nnumeric b\nlabel y yes\n"
        try schemaText.write(to: dir.appendingPathComponent("t.schema"), atomically: true, encoding: .utf8)
        let trained = try CLI.run(
            [
                "train", "--model", "wide-deep", "--data", "csv:t.csv", "--schema", "t.schema", "--max-steps", "3", "--batch", "16",
                "--run-dir", "run"
            ], in: dir)
        #expect(trained.status == 0, "\(trained.stderr)")
        try FileManager.default.removeItem(at: dir.appendingPathComponent("t.schema"))
        let checkpoint = dir.appendingPathComponent("run/checkpoint.safetensors").path
        let elsewhere = FileManager.default.temporaryDirectory
        let eval = try CLI.run(["eval", "--checkpoint", checkpoint], in: elsewhere)
        #expect(eval.status == 0 && eval.stdout.contains("wide-deep at step 3"), "\(eval.stdout)\(eval.stderr)")
        // another schema for eval, three ways
        let other = dir.appendingPathComponent("other.schema")
        try schemaText.replacingOccurrences(of: "label y yes", with: "label y no").write(to: other, atomically: true, encoding: .utf8)
        let job = dir.appendingPathComponent("eval.yaml")
        try "schema: \(other.path)\n".write(to: job, atomically: true, encoding: .utf8)
        for (flags, environment) in [
            (["--schema", other.path], [String: String]()), ([], ["TETHER_SCHEMA": other.path]), (["--config", job.path], [:])
        ] {
            let r = try CLI.run(["eval", "--checkpoint", checkpoint] + flags, environment: environment, in: elsewhere)
            #expect(r.status == 0 && r.stdout.contains("wide-deep at step 3"), "\(flags) \(environment): \(r.stdout)\(r.stderr)")
        }
        let missing = try CLI.run(["eval", "--checkpoint", checkpoint, "--schema", "nothere.schema"], in: elsewhere)
        #expect(missing.status == 1 && missing.stderr.contains("nothere.schema"), "\(missing.stderr)")
        // predict needs the checkpoint alone too: a click probability per held-out row (every tenth), in order
        let predicted = dir.appendingPathComponent("clicks.jsonl")
        let p = try CLI.run(["predict", "--checkpoint", checkpoint, "--output", predicted.path], in: elsewhere)
        let lines = (try? String(contentsOf: predicted, encoding: .utf8))?.split(separator: "\n") ?? []
        let probabilities = lines.compactMap {
            (try? JSONSerialization.jsonObject(with: Data($0.utf8)) as? [String: Any])?["probability"] as? Double
        }
        #expect(
            p.status == 0 && probabilities.count == 20 && probabilities.allSatisfy { (0...1).contains($0) },
            "\(p.stderr)\(lines.first ?? "")")
    }

    /// The image families are the spec files in models/: `--model mlp-wn` (the spec built into the binary)
    /// and `--model models/mlp-wn.yaml` (the file) train bitwise alike, name for name. (Before the family
    /// code was removed, this test compared it with the file: bitwise equal.)
    @Test(.enabled(if: dataInstalled, "needs Debian's dataset-fashion-mnist"), arguments: ["mlp", "mlp-wn", "cnn-wn"])
    func aFamilysSpecTrainsBitwiseAsTheFamily(family: String) throws {
        let dir = CLI.tempDir("family-spec")
        defer { try? FileManager.default.removeItem(at: dir) }
        let common = ["--max-steps", "8", "--train-limit", "640", "--test-limit", "128", "--seed", "4", "--threads", "1"]
        let spec = CLI.repository.appendingPathComponent("models/\(family).yaml").path
        for (name, model) in [("family", family), ("spec", spec)] {
            let r = try CLI.run(["train", "--model", model, "--run-dir", dir.appendingPathComponent(name).path] + common)
            #expect(r.status == 0, "\(name): \(r.stderr)")
        }
        let (a, b) = try (
            Checkpoint.Loaded(dir.appendingPathComponent("family/checkpoint.safetensors")),
            Checkpoint.Loaded(dir.appendingPathComponent("spec/checkpoint.safetensors"))
        )
        let names = a.file.tensors.keys.filter { $0.hasPrefix("layers.") }.sorted()
        #expect(!names.isEmpty && names == b.file.tensors.keys.filter { $0.hasPrefix("layers.") }.sorted(), "\(names)")
        for name in names { #expect(a.file.tensors[name]?.data == b.file.tensors[name]?.data, "\(family): \(name) differs") }
    }

    /// A network of your own on data of your own: a spec CNN whose first block is Inception-like (a
    /// concat of a 3x3 conv with a batch norm, whose running figures each replica keeps, a 1x1 conv and
    /// the image itself) over 3-channel 12x12 images of 12 classes (channels last in the .npz, as NumPy
    /// users often keep them), trained by two worker processes, then evaluated from its checkpoint, which
    /// carries the spec.
    @Test func aSpecCNNTrainsOnAnNPZThroughACluster() throws {
        let dir = CLI.tempDir("spec-npz")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: dir) }
        // class k lights a 3x3 patch at a place and in a channel of its own, over noise
        var rng = SystemRandomNumberGenerator()
        let n = 1200, side = 12
        var x = [UInt8](repeating: 0, count: n * side * side * 3), y: [UInt8] = []
        for s in 0..<n {
            let k = s % 12
            for i in 0..<side * side * 3 { x[s * side * side * 3 + i] = UInt8.random(in: 0...60, using: &rng) }
            for a in 0..<3 { for b in 0..<3 { x[s * side * side * 3 + (((k % 4) * 3 + a) * side + (k / 4) * 3 + b) * 3 + k % 3] = 250 } }
            withUnsafeBytes(of: Int64(k).littleEndian) { y += $0 }
        }
        let npz = NumPy.npz([
            ("x", NumPyArray(dtype: .uint8, shape: [n, side, side, 3], bytes: x)), ("y", NumPyArray(dtype: .int64, shape: [n], bytes: y))
        ])
        try Data(npz).write(to: dir.appendingPathComponent("rgb.npz"))
        try """
        input: [3, 12, 12]
        layers:
          - concat:
              - [conv2d: {out: 8, kernel: 3, padding: 1, weight-norm: true}, batch-norm, relu]
              - [conv2d: {out: 4, kernel: 1}, relu]
              - []
          - max-pool: 2
          - flatten
          - dense: {out: 32, weight-norm: true}
          - relu
          - dense: 12
        """.write(to: dir.appendingPathComponent("rgb.yaml"), atomically: true, encoding: .utf8)
        let run = try CLI.run(
            [
                "simulate", "--workers", "2", "--model", "rgb.yaml", "--data", "npz:rgb.npz", "--batch", "32", "--max-steps", "60",
                "--run-dir", "run"
            ], timeout: 240, in: dir)
        #expect(run.status == 0 && run.stdout.contains("rgb (spec)") && run.stdout.contains("done: 60 steps"), "\(run.stdout)\(run.stderr)")
        let eval = try CLI.run(["eval", "--checkpoint", dir.appendingPathComponent("run/checkpoint.safetensors").path, "--json"])
        let accuracy = (try? JSONSerialization.jsonObject(with: Data(eval.stdout.utf8)) as? [String: Any])?["test_accuracy"] as? Double ?? 0
        #expect(eval.status == 0 && accuracy > 0.9, "\(eval.stdout)\(eval.stderr)")
        try expectPyTorchAgrees(accuracy: accuracy, in: dir)
        try expectONNXRuntimeAgreesWithPredict(in: dir)
        // a label beyond the spec's classes is named with the sample and the range
        let narrow = try String(contentsOf: dir.appendingPathComponent("rgb.yaml"), encoding: .utf8).replacingOccurrences(
            of: "dense: 12", with: "dense: 10")
        try narrow.write(to: dir.appendingPathComponent("narrow.yaml"), atomically: true, encoding: .utf8)
        let refused = try CLI.run(["train", "--model", "narrow.yaml", "--data", "npz:rgb.npz", "--run-dir", "run2"], in: dir)
        #expect(refused.status == 1 && refused.stderr.contains("label 10 of training sample 9 is not in 0..<10"), "\(refused.stderr)")
        let wrong = try CLI.run(["train", "--model", "rgb.yaml", "--data", "fashion-mnist", "--run-dir", "run3"], in: dir)
        #expect(
            wrong.status == 1 && wrong.stderr.contains("its input is (3, 12, 12), the data's samples are [1, 28, 28]"), "\(wrong.stderr)")
    }

    /// A regression on a table of your own: a CSV with numbers, categories and a price to predict, a
    /// spec whose embedding takes the categories and whose MLP gives one value with mse, trained by two
    /// worker processes on served rows; eval reports RMSE and MAE from the checkpoint alone (it carries
    /// the spec and the schema), and the report plots the RMSE.
    @Test func aSpecRegressesACSVTargetThroughACluster() throws {
        let dir = CLI.tempDir("spec-csv")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: dir) }
        // price = 0.05 area + 0.8 rooms + a city's and a kind's effect + noise of deviation 0.3
        var rng = SystemRandomNumberGenerator()
        let cities = ["oslo": 3.0, "lima": -2, "kyiv": 0.5, "pune": -1, "rome": 2], kinds = ["flat": 0.0, "house": 4, "loft": 2]
        var csv = "area,rooms,city,kind,price\n", prices: [Double] = []
        for _ in 0..<3000 {
            let area = Double.random(in: 20...200, using: &rng), rooms = Int.random(in: 1...6, using: &rng)
            let city = cities.randomElement(using: &rng)!, kind = kinds.randomElement(using: &rng)!
            let noise =
                0.3 * (-2 * log(Double.random(in: 1e-12...1, using: &rng))).squareRoot()
                * cos(2 * .pi * Double.random(in: 0...1, using: &rng))
            let price = 0.05 * area + 0.8 * Double(rooms) + city.value + kind.value + noise
            prices.append(price)
            csv += "\(area),\(rooms),\(city.key),\(kind.key),\(price)\n"
        }
        try csv.write(to: dir.appendingPathComponent("homes.csv"), atomically: true, encoding: .utf8)
        try "columns area, rooms, city, kind, price\nheader yes\ncategorical city, kind\nnumeric area, rooms\ntarget price\n".write(
            to: dir.appendingPathComponent("homes.schema"), atomically: true, encoding: .utf8)
        try """
        input: {categorical: 2, numeric: 2}
        layers:
          - embedding: {out: 4, buckets: 64}
          - dense: 32
          - relu
          - dense: 1
        loss: mse
        """.write(to: dir.appendingPathComponent("homes.yaml"), atomically: true, encoding: .utf8)
        let run = try CLI.run(
            [
                "simulate", "--workers", "2", "--model", "homes.yaml", "--data", "csv:homes.csv", "--schema", "homes.schema",
                "--serve-data",
                "--batch", "16", "--epochs", "6", "--lr", "0.01", "--test-fraction", "0.2", "--run-dir", "run"
            ], timeout: 240, in: dir)
        #expect(run.status == 0 && run.stdout.contains("test RMSE"), "\(run.stdout)\(run.stderr)")
        try FileManager.default.removeItem(at: dir.appendingPathComponent("homes.schema"))
        let eval = try CLI.run(["eval", "--checkpoint", dir.appendingPathComponent("run/checkpoint.safetensors").path, "--json"])
        let figures = (try? JSONSerialization.jsonObject(with: Data(eval.stdout.utf8)) as? [String: Any]) ?? [:]
        let (rmse, mae) = (figures["test_rmse"] as? Double ?? .nan, figures["test_mae"] as? Double ?? .nan)
        // predicting the mean scores the prices' deviation (about 3.3); the noise's is 0.3
        let mean = prices.reduce(0, +) / Double(prices.count)
        let deviation = (prices.map { ($0 - mean) * ($0 - mean) }.reduce(0, +) / Double(prices.count)).squareRoot()
        #expect(eval.status == 0 && rmse < 0.6 && rmse > 0.2 && mae < rmse && rmse < deviation / 5, "\(eval.stdout)\(eval.stderr)")
        #expect(abs((figures["test_loss"] as? Double ?? .nan) - rmse * rmse) < 1e-6, "mse is the squared RMSE: \(eval.stdout)")
        #expect(figures["samples"] as? Int == 600, "--test-fraction 0.2 of 3,000 rows: \(eval.stdout)")
        // the cluster's last evaluation (its shards' errors merged by the coordinator) is eval's
        let events = try String(contentsOf: dir.appendingPathComponent("run/metrics.jsonl"), encoding: .utf8).split(separator: "\n")
            .compactMap { try? JSONSerialization.jsonObject(with: Data($0.utf8)) as? [String: Any] }
        let last = events.last { $0["test_rmse"] != nil } ?? [:]
        for (key, value) in [("test_rmse", rmse), ("test_mae", mae)] {
            #expect(abs((last[key] as? Double ?? .nan) - value) < 1e-5 * value, "\(key): cluster \(last[key] ?? "none"), eval \(value)")
        }
        let report = try CLI.run(["report", dir.appendingPathComponent("run").path])
        let html = (try? String(contentsOf: dir.appendingPathComponent("run/report.html"), encoding: .utf8)) ?? ""
        #expect(report.status == 0 && html.contains("Held-out RMSE") && html.contains("MAE"), "\(report.stderr)")
        // PyTorch, given the rows as the exported module says (hashes cut to 24 bits, numbers standardized
        // with the training rows' mean and deviation), predicts the held-out prices as tether eval does
        guard
            let theirs = try pytorchFigure(
                """
                rows = list(csv.DictReader(open("homes.csv")))
                h = round(0.2 * len(rows)); held = set((j + 1) * len(rows) // h - 1 for j in range(h))
                train = [r for i, r in enumerate(rows) if i not in held]
                numbers = np.array([[float(r["area"]), float(r["rooms"])] for r in train], dtype=np.float64)
                mean, std = numbers.mean(0), np.maximum(numbers.std(0), 1e-6)
                test = [rows[i] for i in sorted(held)]
                x = np.array([[fnv(r["city"]), fnv(r["kind"]), *((np.array([float(r["area"]), float(r["rooms"])]) - mean) / std)] for r in test], dtype=np.float32)
                y = np.array([[float(r["price"])] for r in test], dtype=np.float32)
                with torch.no_grad(): out = model(torch.from_numpy(x))
                print(torch.nn.functional.mse_loss(out, torch.from_numpy(y)).item())
                """, what: "the table spec test", in: dir)
        else { return }
        let mse = rmse * rmse
        #expect(abs(theirs - mse) <= 1e-4 * mse, "PyTorch \(theirs), tether eval \(mse)")
    }

    /// Wide & Deep as a spec on a CSV of clicks: the deep tower (embeddings and an MLP, AdaGrad) and a wide
    /// tower over the hashed values and a cross (FTRL-Proximal) summed into one logit, trained by two
    /// worker processes; eval reports the AUC, the checkpoint keeps each part's optimizer state, and
    /// PyTorch through the exported module (the wide hashes recomputed in NumPy) gives eval's log loss.
    @Test func aWideAndDeepSpecTrainsOnACSVThroughACluster() throws {
        let dir = CLI.tempDir("spec-wide-deep")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: dir) }
        // clicks follow age, the device, and a city-kind combination that only a cross (or the deep part) sees
        var rng = SystemRandomNumberGenerator()
        let cities = ["oslo", "lima", "kyiv", "pune", "rome"], kinds = ["flat", "house", "loft"], devices = ["ios", "android", "web"]
        let liked: Set<String> = ["oslo loft", "rome house", "lima flat"]
        var csv = "age,city,kind,device,click\n", truth: [(score: Float, click: Int32)] = []
        for _ in 0..<6000 {
            let age = Double.random(in: 18...70, using: &rng), city = cities.randomElement(using: &rng)!,
                kind = kinds.randomElement(using: &rng)!, device = devices.randomElement(using: &rng)!
            let score = 0.03 * (age - 40) + (liked.contains("\(city) \(kind)") ? 2.0 : -1.0) + (device == "ios" ? 0.5 : 0)
            let click = Double.random(in: 0..<1, using: &rng) < 1 / (1 + exp(-score))
            csv += "\(age),\(city),\(kind),\(device),\(click ? "yes" : "no")\n"
            truth.append((Float(score), click ? 1 : 0))
        }
        // the best any model can do on the held-out rows (every tenth): the AUC of the true scores
        let held = stride(from: 9, to: truth.count, by: 10).map { truth[$0] }
        let bestAUC = areaUnderROC(scores: held.map(\.score), labels: held.map(\.click))
        try csv.write(to: dir.appendingPathComponent("clicks.csv"), atomically: true, encoding: .utf8)
        try "columns age, city, kind, device, click\nheader yes\ncategorical city, kind, device\nnumeric age\nlabel click yes\n".write(
            to: dir.appendingPathComponent("clicks.schema"), atomically: true, encoding: .utf8)
        try """
        input: {categorical: 3, numeric: 1}
        layers:
          - embedding: {out: 4, buckets: 32, sparse: true}
          - dense: {out: 16, weight-norm: true}
          - relu
          - dense: 1
        wide: {buckets: 4096, crosses: [[0, 1]]}
        loss: binary-cross-entropy
        """.write(to: dir.appendingPathComponent("wd.yaml"), atomically: true, encoding: .utf8)
        let run = try CLI.run(
            [
                "simulate", "--workers", "2", "--model", "wd.yaml", "--data", "csv:clicks.csv", "--schema", "clicks.schema",
                "--optimizer", "adagrad", "--lr", "0.05", "--ftrl-alpha", "0.2", "--batch", "32", "--epochs", "4", "--run-dir", "run"
            ], timeout: 240, in: dir)
        #expect(run.status == 0 && run.stdout.contains("test AUC"), "\(run.stdout)\(run.stderr)")
        let checkpoint = try Checkpoint.Loaded(dir.appendingPathComponent("run/checkpoint.safetensors"))
        for name in ["optimizer.ftrl_z.wide.weight", "optimizer.ftrl_n.wide.weight", "optimizer.sum.layers.0.weight"] {
            #expect(checkpoint.file.tensors[name] != nil, "\(name): \(checkpoint.file.tensors.keys.sorted())")
        }
        #expect(checkpoint.file.tensors["optimizer.sum.wide.weight"] == nil)
        let eval = try CLI.run(["eval", "--checkpoint", dir.appendingPathComponent("run/checkpoint.safetensors").path, "--json"])
        let figures = (try? JSONSerialization.jsonObject(with: Data(eval.stdout.utf8)) as? [String: Any]) ?? [:]
        let (auc, logLoss) = (figures["test_auc"] as? Double ?? 0, figures["test_loss"] as? Double ?? .nan)
        #expect(eval.status == 0 && auc > bestAUC - 0.04, "best \(bestAUC): \(eval.stdout)\(eval.stderr)")
        guard
            let theirs = try pytorchFigure(
                """
                x, y = clicks_heldout()
                with torch.no_grad(): z = model(torch.from_numpy(x))[:, 0]
                print(torch.nn.functional.binary_cross_entropy_with_logits(z, torch.from_numpy(y)).item())
                """, what: "the Wide & Deep spec test", in: dir)
        else { return }
        #expect(abs(theirs - logLoss) <= 1e-4 * logLoss, "PyTorch \(theirs), tether eval \(logLoss)")
        // exported to ONNX, the embedding's buckets and the wide tower's hashing in integer operators:
        // ONNX Runtime's click probabilities on the held-out rows equal `tether predict`'s
        let export = try CLI.run(["export", "--onnx", "wd.onnx", "--checkpoint", "run/checkpoint.safetensors"], in: dir)
        let predict = try CLI.run(["predict", "--checkpoint", "run/checkpoint.safetensors", "--output", "wd.npy"], in: dir)
        #expect(export.status == 0 && predict.status == 0, "\(export.stderr)\(predict.stderr)")
        guard
            let worst = try onnxRuntimeFigure(
                """
                onnx.checker.check_model(onnx.load("wd.onnx"), full_check=True)
                x, _ = clicks_heldout()
                theirs = ort.InferenceSession("wd.onnx", providers=["CPUExecutionProvider"]).run(["probabilities"], {"input": x})[0][:, 0]
                ours = np.load("wd.npy"); ours = ours[:, -1]
                assert len(ours) == len(theirs) == 600, (ours.shape, theirs.shape)
                print(float(np.abs(theirs - ours).max()))
                """, what: "the Wide & Deep spec's export", in: dir)
        else { return }
        #expect(worst < 1e-5, "ONNX Runtime against tether predict on the clicks: \(worst)")
    }

    /// A tied autoencoder of your own: its decoder's weights are the encoder's transposes (`tie:`), trained
    /// to reconstruct its input (an .npz whose y is its x) with mse by two worker processes; the checkpoint
    /// holds each tied weight once, and PyTorch, loading it through the exported module, reconstructs the
    /// held-out samples with the mean squared error `tether eval` reports.
    @Test func aTiedAutoencoderSpecReconstructsThroughACluster() throws {
        let dir = CLI.tempDir("spec-tied")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: dir) }
        // 36 values a sample mixing 3 hidden factors, squashed into (0, 1)
        var rng = SystemRandomNumberGenerator()
        let n = 1000, d = 36
        let mixing = (0..<3 * d).map { _ in Double.random(in: -1...1, using: &rng) }
        var x: [UInt8] = []
        for _ in 0..<n {
            let factors = (0..<3).map { _ in Double.random(in: -2...2, using: &rng) }
            for j in 0..<d {
                let v = Float(1 / (1 + exp(-(0..<3).map { factors[$0] * mixing[$0 * d + j] }.reduce(0, +))))
                withUnsafeBytes(of: v.bitPattern.littleEndian) { x += $0 }
            }
        }
        let array = NumPyArray(dtype: .float32, shape: [n, d], bytes: x)
        try Data(NumPy.npz([("x", array), ("y", array)])).write(to: dir.appendingPathComponent("codes.npz"))
        try """
        input: [36]
        layers:
          - dense: 16
          - relu
          - dense: 4
          - relu
          - dense: {out: 16, tie: 2}
          - relu
          - dense: {out: 36, tie: layers.0}
          - sigmoid
        loss: mse
        """.write(to: dir.appendingPathComponent("codes.yaml"), atomically: true, encoding: .utf8)
        let run = try CLI.run(
            [
                "simulate", "--workers", "2", "--model", "codes.yaml", "--data", "npz:codes.npz", "--batch", "16", "--epochs", "20",
                "--lr", "0.01", "--run-dir", "run"
            ], timeout: 240, in: dir)
        #expect(run.status == 0 && run.stdout.contains("test RMSE"), "\(run.stdout)\(run.stderr)")
        let checkpoint = try Checkpoint.Loaded(dir.appendingPathComponent("run/checkpoint.safetensors"))
        let weights = checkpoint.file.tensors.keys.filter { $0.hasPrefix("layers.") && $0.hasSuffix(".weight") }.sorted()
        #expect(weights == ["layers.0.weight", "layers.2.weight"], "\(weights)")
        let eval = try CLI.run(["eval", "--checkpoint", dir.appendingPathComponent("run/checkpoint.safetensors").path, "--json"])
        let figures = (try? JSONSerialization.jsonObject(with: Data(eval.stdout.utf8)) as? [String: Any]) ?? [:]
        let mse = figures["test_loss"] as? Double ?? .nan
        // the values' own spread about their means is what a network that learned nothing would score
        let values = stride(from: 0, to: x.count, by: 4).map { i in
            Double(Float(bitPattern: x[i..<i + 4].withUnsafeBytes { $0.loadUnaligned(as: UInt32.self) }))
        }
        let mean = values.reduce(0, +) / Double(values.count)
        let spread = values.map { ($0 - mean) * ($0 - mean) }.reduce(0, +) / Double(values.count)
        #expect(eval.status == 0 && mse < spread / 4, "mse \(mse), spread \(spread): \(eval.stdout)\(eval.stderr)")
        guard
            let theirs = try pytorchFigure(
                """
                assert model.layers[6].source is model.layers[0]
                d = np.load("codes.npz"); held = np.arange(9, len(d["y"]), 10)
                with torch.no_grad(): out = model(torch.from_numpy(d["x"][held]))
                print(torch.nn.functional.mse_loss(out, torch.from_numpy(d["y"][held])).item())
                """, what: "the tied spec test", in: dir)
        else { return }
        #expect(abs(theirs - mse) <= 1e-5 * mse, "PyTorch \(theirs), tether eval \(mse)")
    }

    /// A sequence model of your own: token ids through an embedding and an LSTM to a class, where the
    /// class is which of three marker tokens comes first (order matters: a bag of tokens cannot tell),
    /// trained by two worker processes; PyTorch, loading the checkpoint through the exported module
    /// (nn.Embedding and a batch-first nn.LSTM), agrees with `tether eval`.
    @Test func aTokenSequenceSpecTrainsThroughACluster() throws {
        let dir = CLI.tempDir("spec-lstm")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: dir) }
        var rng = SystemRandomNumberGenerator()
        let n = 1500, steps = 12
        var x: [UInt8] = [], y: [UInt8] = []
        for _ in 0..<n {
            var tokens = (0..<steps).map { _ in Int64.random(in: 4...9, using: &rng) }
            let places = Array((0..<steps).shuffled(using: &rng).prefix(3))
            for (k, p) in places.enumerated() { tokens[p] = Int64(k + 1) }
            for t in tokens { withUnsafeBytes(of: t.littleEndian) { x += $0 } }
            withUnsafeBytes(of: Int64(places.firstIndex(of: places.min()!)!).littleEndian) { y += $0 }
        }
        try Data(
            NumPy.npz([
                ("x", NumPyArray(dtype: .int64, shape: [n, steps], bytes: x)), ("y", NumPyArray(dtype: .int64, shape: [n], bytes: y))
            ])
        ).write(to: dir.appendingPathComponent("seq.npz"))
        try "input: {tokens: 12, vocabulary: 10}\nlayers: [embedding: 8, lstm: 24, dense: 3]\n".write(
            to: dir.appendingPathComponent("seq.yaml"), atomically: true, encoding: .utf8)
        let run = try CLI.run(
            [
                "simulate", "--workers", "2", "--model", "seq.yaml", "--data", "npz:seq.npz", "--batch", "16", "--epochs", "30",
                "--lr", "0.03", "--run-dir", "run"
            ], timeout: 240, in: dir)
        #expect(run.status == 0, "\(run.stdout)\(run.stderr)")
        let eval = try CLI.run(["eval", "--checkpoint", dir.appendingPathComponent("run/checkpoint.safetensors").path, "--json"])
        let accuracy = (try? JSONSerialization.jsonObject(with: Data(eval.stdout.utf8)) as? [String: Any])?["test_accuracy"] as? Double ?? 0
        #expect(eval.status == 0 && accuracy > 0.7, "\(eval.stdout)\(eval.stderr)")
        // a token outside the vocabulary is named with its sample and position
        let narrow = try CLI.run(
            ["train", "--model", "input: {tokens: 12, vocabulary: 8}\nlayers: [embedding: 8, lstm: 4, dense: 3]", "--data", "npz:seq.npz"],
            in: dir)
        #expect(narrow.status == 1 && narrow.stderr.contains("not a token id in 0..<8"), "\(narrow.stderr)")
        try expectONNXRuntimeAgreesOnTokens(in: dir, run: "run", shows: "lstm: {out: 24, sequences: false}")
        // Press & Wolf: the output layer scores the vocabulary with the embedding's table, one parameter
        let tied = try CLI.run(
            [
                "train", "--model", "input: {tokens: 12, vocabulary: 10}\nlayers: [embedding: 8, lstm: 8, dense: {out: 10, tie: 0}]",
                "--data", "npz:seq.npz", "--max-steps", "20", "--run-dir", "tied"
            ], in: dir)
        #expect(tied.status == 0, "\(tied.stderr)")
        try expectONNXRuntimeAgreesOnTokens(in: dir, run: "tied", shows: "dense: {out: 10, tie: 0}")
        guard
            let theirs = try pytorchFigure(
                """
                d = np.load("seq.npz"); held = np.arange(9, len(d["y"]), 10)
                with torch.no_grad(): predicted = model(torch.from_numpy(d["x"][held])).argmax(1).numpy()
                print((predicted == d["y"][held]).mean())
                """, what: "the sequence spec test", in: dir)
        else { return }
        #expect(abs(theirs - accuracy) <= 0.001, "PyTorch \(theirs), tether eval \(accuracy)")
    }

    /// What `script` prints (one number), run by the tests' Python after a prologue that loads the
    /// checkpoint run/checkpoint.safetensors in `dir` through the module `tether export --pytorch` writes
    /// for it (as `model`, in evaluation mode, with csv, numpy as np and torch imported, and `fnv`, a
    /// categorical value as a table input carries it); nil, the check
    /// skipped saying why, without PyTorch in .build/test-venv.
    func pytorchFigure(_ script: String, what: String, in dir: URL) throws -> Double? {
        guard let python = Self.torchPython else {
            print("skipped: PyTorch's side of \(what) (no torch, numpy and safetensors in .build/test-venv; scripts/install-deps --test)")
            return nil
        }
        let export = try CLI.run(["export", "--pytorch", "exported_model.py", "--checkpoint", "run/checkpoint.safetensors"], in: dir)
        #expect(export.status == 0, "\(export.stderr)")
        let prologue = """
            import csv, importlib.util, numpy as np, torch
            spec = importlib.util.spec_from_file_location("m", "exported_model.py"); m = importlib.util.module_from_spec(spec); spec.loader.exec_module(m)
            model = m.load_tether("run/checkpoint.safetensors"); model.eval()

            """ + Self.tableInput
        let r = try CLI.run(["-c", prologue + script], executable: URL(fileURLWithPath: python), in: dir)
        #expect(r.status == 0, "\(what): \(r.stderr)")
        return Double(r.stdout.trimmingCharacters(in: .whitespacesAndNewlines)) ?? .nan
    }

    /// `tether predict` over every sample of rgb.npz (in order) to .npy, .jsonl and .csv, and `tether
    /// export --onnx` of the same checkpoint: the model passes onnx.checker's full check, and ONNX
    /// Runtime's probabilities equal predict's within 1e-5.
    func expectONNXRuntimeAgreesWithPredict(in dir: URL) throws {
        let checkpoint = "run/checkpoint.safetensors"
        for file in ["predictions.npy", "predictions.jsonl", "predictions.csv"] {
            let r = try CLI.run(["predict", "--checkpoint", checkpoint, "--data", "npz:rgb.npz", "--output", file, "--top-k", "2"], in: dir)
            #expect(r.status == 0 && r.stderr.contains("predict: 1200 samples in"), "\(r.stderr)")
        }
        // the same samples without y (arrays to predict on need none): the same predictions
        let npz = try NumPy.readNPZ(dir.appendingPathComponent("rgb.npz").path)
        try Data(NumPy.npz([("x", npz["x"]!)])).write(to: dir.appendingPathComponent("x-only.npz"))
        let xOnly = try CLI.run(["predict", "--checkpoint", checkpoint, "--data", "npz:x-only.npz", "--output", "x-only.npy"], in: dir)
        #expect(xOnly.status == 0, "\(xOnly.stderr)")
        #expect(
            try Data(contentsOf: dir.appendingPathComponent("x-only.npy"))
                == Data(contentsOf: dir.appendingPathComponent("predictions.npy")))
        let lines = try String(contentsOf: dir.appendingPathComponent("predictions.jsonl"), encoding: .utf8).split(separator: "\n")
        let first = try JSONSerialization.jsonObject(with: Data(lines[0].utf8)) as? [String: Any]
        #expect(lines.count == 1200 && first?["row"] as? Int == 0 && (first?["top"] as? [Any])?.count == 2, "\(lines.first ?? "")")
        let csv = try String(contentsOf: dir.appendingPathComponent("predictions.csv"), encoding: .utf8).split(separator: "\n")
        #expect(csv.count == 1201 && csv[0] == "row,class," + (0..<12).map { "p\($0)" }.joined(separator: ","), "\(csv.first ?? "")")
        let export = try CLI.run(["export", "--onnx", "model.onnx", "--checkpoint", checkpoint], in: dir)
        #expect(export.status == 0 && export.stdout.contains("outputs \"logits\", \"probabilities\""), "\(export.stdout)\(export.stderr)")
        // the exported graph read back as a spec and trained by two workers (its architecture, fresh values)
        let again = try CLI.run(
            [
                "simulate", "--workers", "2", "--model", "model.onnx", "--data", "npz:rgb.npz", "--batch", "32", "--max-steps", "4",
                "--run-dir", "run-onnx"
            ],
            timeout: 240, in: dir)
        #expect(
            again.status == 0 && again.stdout.contains("model (spec)") && again.stdout.contains("done: 4 steps"),
            "\(again.stdout)\(again.stderr)")
        guard
            let worst = try onnxRuntimeFigure(
                """
                model = onnx.load("model.onnx"); onnx.checker.check_model(model, full_check=True)
                d = np.load("rgb.npz"); x = np.ascontiguousarray(np.transpose(d["x"].astype(np.float32) / 255, (0, 3, 1, 2)))
                session = ort.InferenceSession("model.onnx", providers=["CPUExecutionProvider"])
                theirs = session.run(["probabilities"], {"input": x})[0]
                print(float(np.abs(theirs - np.load("predictions.npy")).max()))
                """, what: "the ONNX export", in: dir)
        else { return }
        #expect(worst < 1e-5, "ONNX Runtime against tether predict: \(worst)")
    }

    /// A token spec's checkpoint in `run` exported to ONNX (Gather, LSTM between Transposes, its last
    /// step): read back as the same spec (its description `shows` a layer), and ONNX Runtime's
    /// probabilities over seq.npz equal `tether predict`'s.
    func expectONNXRuntimeAgreesOnTokens(in dir: URL, run: String, shows layer: String) throws {
        let export = try CLI.run(["export", "--onnx", "seq.onnx", "--checkpoint", run + "/checkpoint.safetensors"], in: dir)
        #expect(export.status == 0, "\(export.stderr)")
        let shown = try CLI.run(["models", "show", "seq.onnx"], in: dir)
        #expect(
            shown.status == 0 && shown.stdout.contains("12 tokens of a vocabulary of 10") && shown.stdout.contains(layer),
            "\(shown.stdout)\(shown.stderr)")
        let predict = try CLI.run(
            ["predict", "--checkpoint", run + "/checkpoint.safetensors", "--data", "npz:seq.npz", "--output", "seq.npy"], in: dir)
        #expect(predict.status == 0, "\(predict.stderr)")
        guard
            let worst = try onnxRuntimeFigure(
                """
                onnx.checker.check_model(onnx.load("seq.onnx"), full_check=True)
                session = ort.InferenceSession("seq.onnx", providers=["CPUExecutionProvider"])
                theirs = session.run(["probabilities"], {"input": np.load("seq.npz")["x"]})[0]
                print(float(np.abs(theirs - np.load("seq.npy")).max()))
                """, what: "the token model's export", in: dir)
        else { return }
        #expect(worst < 1e-5, "ONNX Runtime against tether predict on tokens: \(worst)")
    }

    /// What `script` prints (one number), run by the tests' Python with numpy as np, onnx and
    /// onnxruntime as ort imported, in `dir`; nil, the check skipped saying why, without them.
    /// Python that builds a table's input as Tether takes it: `fnv(text)`, a categorical value's FNV-1a
    /// hash cut to 24 bits; `clicks_heldout()`, the wide & deep test's held-out rows (every tenth) as
    /// (x, y), the age standardized with the training rows' mean and deviation.
    static let tableInput = """
        import csv
        def fnv(text):
            h = 0xCBF29CE484222325
            for b in text.encode(): h = ((h ^ b) * 0x100000001B3) % (1 << 64)
            return h & 0xFFFFFF
        def clicks_heldout():
            rows = list(csv.DictReader(open("clicks.csv")))
            held = set(range(9, len(rows), 10)); train = [r for i, r in enumerate(rows) if i not in held]
            ages = np.array([float(r["age"]) for r in train]); mean, std = ages.mean(), max(ages.std(), 1e-6)
            test = [rows[i] for i in sorted(held)]
            x = np.array([[fnv(r["city"]), fnv(r["kind"]), fnv(r["device"]), (float(r["age"]) - mean) / std] for r in test], dtype=np.float32)
            return x, np.array([1.0 if r["click"] == "yes" else 0.0 for r in test], dtype=np.float32)

        """

    func onnxRuntimeFigure(_ script: String, what: String, in dir: URL) throws -> Double? {
        let python = CLI.repository.appendingPathComponent(".build/test-venv/bin/python")
        guard let check = try? CLI.run(["-c", "import onnx, onnxruntime, numpy"], executable: python), check.status == 0 else {
            print(
                "skipped: ONNX Runtime's side of \(what) (no onnx, onnxruntime and numpy in .build/test-venv; scripts/install-deps --test)")
            return nil
        }
        let r = try CLI.run(
            ["-c", "import numpy as np, onnx, onnxruntime as ort\n" + Self.tableInput + script], executable: python, in: dir)
        #expect(r.status == 0, "\(what): \(r.stderr)")
        return Double(r.stdout.trimmingCharacters(in: .whitespacesAndNewlines)) ?? .nan
    }

    /// The tests' Python (the venv scripts/install-deps --test makes) when it has PyTorch, NumPy and
    /// safetensors; nil (the check skipped, saying why) when not.
    static let torchPython: String? = {
        let python = CLI.repository.appendingPathComponent(".build/test-venv/bin/python").path
        guard let r = try? CLI.run(["-c", "import torch, numpy, safetensors"], executable: URL(fileURLWithPath: python)), r.status == 0
        else { return nil }
        return python
    }()

    /// PyTorch loads the checkpoint of the spec run in `dir` (run/, on rgb.npz) through the module
    /// `tether export --pytorch` writes, and scores the same held-out samples (every tenth) within 0.1
    /// points of `tether eval`.
    func expectPyTorchAgrees(accuracy: Double, in dir: URL) throws {
        guard
            let theirs = try pytorchFigure(
                """
                d = np.load("rgb.npz"); held = np.arange(9, len(d["y"]), 10)
                x = np.ascontiguousarray(np.transpose(d["x"][held].astype(np.float32) / 255, (0, 3, 1, 2)))
                with torch.no_grad(): predicted = model(torch.from_numpy(x)).argmax(1).numpy()
                print((predicted == d["y"][held]).mean())
                """, what: "the spec test", in: dir)
        else { return }
        #expect(abs(theirs - accuracy) <= 0.001, "PyTorch \(theirs), tether eval \(accuracy)")
    }

    /// lm-tied as a user runs it: train on a text file, evaluate the checkpoint (the vocabulary comes with it).
    @Test func languageModelTrainThenEval() throws {
        let dir = CLI.tempDir("lm")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: dir) }
        let text = (0..<600).map { ["the cat sat on the mat .", "a dog ran in the park .", "we like the sea ."][$0 % 3] }.joined(
            separator: "\n")
        let corpus = dir.appendingPathComponent("corpus.txt")
        try text.write(to: corpus, atomically: true, encoding: .utf8)
        let run = dir.appendingPathComponent("run").path
        let r = try CLI.run([
            "train", "--model", "lm-tied", "--data", "text:" + corpus.path, "--size", "16", "--vocabulary", "30", "--batch", "4",
            "--bptt", "8", "--epochs", "1", "--lr", "5", "--run-dir", run
        ])
        #expect(r.status == 0, "stderr: \(r.stderr)")
        #expect(r.stdout.contains("tied output, weight-normalized LSTM"))
        #expect(r.stdout.contains("epoch 1/1: train loss") && r.stdout.contains("validation perplexity"))
        let e = try CLI.run(["eval", "--checkpoint", run + "/checkpoint.safetensors", "--json"])
        #expect(e.status == 0, "stderr: \(e.stderr)")
        let result = try JSONSerialization.jsonObject(with: Data(e.stdout.utf8)) as! [String: Any]
        #expect((result["test_perplexity"] as? Double).map { $0 > 1 && $0 < 30 } == true, "\(result)")
        // predict continues each held-out line (lines 900-999 of a 1,000-line text): prefixes of
        // several lengths whose next word one word before it decides, in batches that mix lengths
        let prefixes = [("the cat sat", "on"), ("we like", "the"), ("a dog", "ran"), ("a dog ran in", "the"), ("the cat", "sat")]
        let asked = (0..<1000).map { $0 < 900 ? text.split(separator: "\n")[$0 % 3] : Substring(prefixes[$0 % 5].0) }
        try asked.joined(separator: "\n").write(to: dir.appendingPathComponent("prefixes.txt"), atomically: true, encoding: .utf8)
        let predict = try CLI.run([
            "predict", "--checkpoint", run + "/checkpoint.safetensors", "--data", "text:" + dir.path + "/prefixes.txt", "--batch", "7",
            "--top-k", "2", "--output", dir.path + "/next.jsonl"
        ])
        #expect(predict.status == 0 && predict.stderr.contains("predict: 100 samples"), "\(predict.stderr)")
        let rows = try String(contentsOf: dir.appendingPathComponent("next.jsonl"), encoding: .utf8).split(separator: "\n").map {
            try JSONSerialization.jsonObject(with: Data($0.utf8)) as! [String: Any]
        }
        #expect(rows.map { $0["name"] as? String } == (900..<1000).map { prefixes[$0 % 5].1 }, "\(rows.prefix(5))")
        #expect(rows.allSatisfy { (($0["top"] as? [[String: Any]])?.first?["name"] as? String) == $0["name"] as? String })
    }

    /// The families that are spec layers under other names export too: lm-tied (its tied projection one
    /// initializer with the embedding) and autoencoder-tied (its decoder the encoder's transposes); ONNX
    /// Runtime's outputs equal `tether predict`'s within 1e-5. The language model's graph takes windows
    /// of --bptt tokens: the held-out lines here are that long, the ids read from the checkpoint's vocabulary.
    @Test(.enabled(if: dataInstalled, "needs Debian's dataset-fashion-mnist"))
    func familyCheckpointsExportToONNX() throws {
        let dir = CLI.tempDir("family-onnx")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: dir) }
        let text = (0..<1000).map { ["the cat sat on the mat .", "a dog ran in the park ."][$0 % 2] }.joined(separator: "\n")
        try text.write(to: dir.appendingPathComponent("corpus.txt"), atomically: true, encoding: .utf8)
        let lm = try CLI.run(
            [
                "train", "--model", "lm-tied", "--data", "text:corpus.txt", "--size", "16", "--layers", "2", "--vocabulary", "30",
                "--batch", "4", "--bptt", "8", "--max-steps", "30", "--lr", "5", "--run-dir", "lm"
            ], in: dir)
        #expect(lm.status == 0, "\(lm.stderr)")
        let ae = try CLI.run(
            ["train", "--model", "autoencoder-tied", "--max-steps", "5", "--test-limit", "300", "--run-dir", "ae"], in: dir)
        #expect(ae.status == 0, "\(ae.stderr)")
        for (run, output) in [("lm", "probabilities"), ("ae", "prediction")] {
            let export = try CLI.run(["export", "--onnx", run + ".onnx", "--checkpoint", run + "/checkpoint.safetensors"], in: dir)
            #expect(export.status == 0 && export.stdout.contains("\"\(output)\""), "\(export.stdout)\(export.stderr)")
            let predict = try CLI.run(["predict", "--checkpoint", run + "/checkpoint.safetensors", "--output", run + ".npy"], in: dir)
            #expect(predict.status == 0, "\(predict.stderr)")
        }
        let shown = try CLI.run(["models", "show", "lm.onnx"], in: dir)
        #expect(shown.status == 0 && shown.stdout.contains("8 tokens of a vocabulary of"), "\(shown.stdout)\(shown.stderr)")
        guard
            let worst = try onnxRuntimeFigure(
                """
                import gzip, json, struct
                def run(name, output, x):
                    onnx.checker.check_model(onnx.load(name + ".onnx"), full_check=True)
                    session = ort.InferenceSession(name + ".onnx", providers=["CPUExecutionProvider"])
                    theirs = session.run([output], {"input": x})[0]
                    ours = np.load(name + ".npy")
                    assert theirs.shape == ours.shape, (name, theirs.shape, ours.shape)
                    return float(np.abs(theirs - ours).max())
                raw = open("lm/checkpoint.safetensors", "rb").read()
                header = json.loads(raw[8:8 + struct.unpack("<Q", raw[:8])[0]])
                words = json.loads(header["__metadata__"]["tether.vocabulary"])["words"]
                ids = {w: i for i, w in enumerate(words)}
                held = open("corpus.txt").read().split("\\n")[900:]  # the held-out block of lines
                tokens = np.array([[0] + [ids.get(w, 1) for w in line.split()] for line in held], dtype=np.int64)
                images = gzip.open("/usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz").read()
                pixels = np.frombuffer(images, np.uint8, offset=16).reshape(-1, 784)[:300].astype(np.float32) / 255
                print(max(run("lm", "probabilities", tokens), run("ae", "prediction", pixels)))
                """, what: "the families' exports", in: dir)
        else { return }
        #expect(worst < 1e-5, "ONNX Runtime against tether predict: \(worst)")
    }

    @Test func aBadCSVRowIsNamedByFileAndLine() throws {
        let dir = CLI.tempDir("csv")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: dir) }
        let csv = dir.appendingPathComponent("adult.data")
        let row =
            "39, State-gov, 77516, Bachelors, 13, Never-married, Adm-clerical, Not-in-family, White, Male, 2174, 0, 40, United-States, <=50K"
        try [row, row, "39, State-gov, 77516, Bachelors"].joined(separator: "\n").write(to: csv, atomically: true, encoding: .utf8)
        let r = try CLI.run([
            "train", "--model", "wide-deep", "--data", "csv:" + csv.path, "--schema", "adult", "--run-dir",
            dir.appendingPathComponent("run").path
        ])
        #expect(r.status == 1)
        #expect(r.stderr.contains("\(csv.path):3: 4 fields, the schema has 15 columns"), "stderr: \(r.stderr)")
    }

    /// Workers log through swift-log: JSON lines name the component and rank; --log-level drops what is below it.
    @Test(.enabled(if: dataInstalled, "needs Debian's dataset-fashion-mnist"))
    func logsHaveLevelsAndAJSONForm() throws {
        let dir = CLI.tempDir("logs")
        defer { try? FileManager.default.removeItem(at: dir) }
        let common = [
            "simulate", "--workers", "2", "--model", "mlp", "--train-limit", "256", "--test-limit", "64", "--max-steps", "4", "--insecure"
        ]
        let json = try CLI.run(common + ["--run-dir", dir.path + "/json", "--log-format", "json"])
        #expect(json.status == 0, "\(json.stderr)")
        let objects = json.stderr.split(separator: "\n").compactMap {
            try? JSONSerialization.jsonObject(with: Data($0.utf8)) as? [String: Any]
        }
        #expect(
            objects.contains {
                $0["component"] as? String == "worker" && $0["rank"] as? String == "1"
                    && ($0["message"] as? String)?.contains("ring address") == true
            },
            "\(json.stderr.prefix(1500))")
        #expect(
            objects.contains {
                $0["component"] as? String == "worker" && $0["level"] as? String == "warning"
                    && ($0["message"] as? String)?.contains("insecure") == true
            })
        #expect(
            json.stderr.split(separator: "\n").filter { $0.contains("worker") }.allSatisfy { $0.hasPrefix("{") },
            "a worker line that is not JSON")
        let quiet = try CLI.run(common + ["--run-dir", dir.path + "/quiet", "--log-level", "warning"])
        #expect(
            quiet.status == 0 && !quiet.stderr.contains("ring address") && quiet.stderr.contains("worker: warning: "),
            "\(quiet.stderr.prefix(1500))")
    }
}
