import Foundation
import Testing

func which(_ program: String) -> URL? {
    (ProcessInfo.processInfo.environment["PATH"] ?? "/usr/bin:/bin").split(separator: ":")
        .map { URL(fileURLWithPath: String($0)).appendingPathComponent(program) }
        .first { FileManager.default.isExecutableFile(atPath: $0.path) }
}

/// Why network namespaces cannot be made here, or nil when they can.
let netnsUnavailable: String? = {
    guard getuid() == 0 else { return "not root: network namespaces need root" }
    guard let ip = which("ip"), which("tc") != nil else { return "iproute2 (ip, tc) is not installed" }
    let name = "tether-probe-\(getpid())"
    guard let add = try? CLI.run(["netns", "add", name], timeout: 10, executable: ip), add.status == 0 else {
        return "ip netns add failed: namespaces are not available here"
    }
    _ = try? CLI.run(["netns", "del", name], timeout: 10, executable: ip)
    return nil
}()

/// The deployment as shipped: job files and settings precedence, the compose file, the scripts, the
/// Kubernetes manifests, and a cluster of emulated hosts.
@Suite(.serialized) struct DeploymentTests {
    let bash = URL(fileURLWithPath: "/bin/bash")

    func file(_ path: String) -> URL { CLI.repository.appendingPathComponent(path) }

    /// Flags a quick training run needs, beside those under test.
    let quick = ["--model", "mlp", "--train-limit", "256", "--test-limit", "64", "--batch", "32", "--log-every", "1"]

    @Test(.enabled(if: dataInstalled, "needs Debian's dataset-fashion-mnist"))
    func theCommandLineOverridesTheEnvironmentWhichOverridesTheJobFile() throws {
        let dir = CLI.tempDir("settings")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: dir) }
        let job = dir.appendingPathComponent("job.yaml")
        try "max_steps: 2\nseed: 5\ntrain:\n  log-every: 1\nsimulate:\n  workers: 9\n".write(to: job, atomically: true, encoding: .utf8)
        let run = dir.appendingPathComponent("run").path
        // job file alone: 2 steps (the simulate group is skipped)
        let fromFile = try CLI.run(["train", "--config", job.path, "--run-dir", run + "1"] + quick)
        #expect(fromFile.status == 0, "\(fromFile.stderr)")
        #expect(fromFile.stdout.contains("done: 2 steps"), "\(fromFile.stdout)")
        // the environment over the file: 3 steps
        let fromEnvironment = try CLI.run(
            ["train", "--run-dir", run + "2"] + quick, environment: ["TETHER_CONFIG": job.path, "TETHER_MAX_STEPS": "3"])
        #expect(fromEnvironment.stdout.contains("done: 3 steps"), "\(fromEnvironment.stdout) \(fromEnvironment.stderr)")
        // the command line over both: 4 steps
        let fromFlags = try CLI.run(
            ["train", "--config", job.path, "--max-steps", "4", "--run-dir", run + "3"] + quick, environment: ["TETHER_MAX_STEPS": "3"])
        #expect(fromFlags.stdout.contains("done: 4 steps"), "\(fromFlags.stdout) \(fromFlags.stderr)")
    }

    /// TETHER_* variables configure simulate's coordinator; its worker processes (which have no such
    /// options) must not inherit them.
    @Test(.enabled(if: dataInstalled, "needs Debian's dataset-fashion-mnist"))
    func simulateKeepsItsSettingsFromItsWorkers() throws {
        let dir = CLI.tempDir("simulate-settings")
        defer { try? FileManager.default.removeItem(at: dir) }
        let r = try CLI.run(
            ["simulate", "--workers", "2", "--run-dir", dir.path] + quick, timeout: 120,
            environment: ["TETHER_MAX_STEPS": "3", "TETHER_SEED": "2"])
        #expect(r.status == 0 && r.stdout.contains("done: 3 steps"), "\(r.stdout)\(r.stderr)")
    }

    @Test func unknownSettingsAreErrorsThatNameTheirSource() throws {
        let dir = CLI.tempDir("bad-settings")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: dir) }
        let job = dir.appendingPathComponent("job.yaml")
        try "epochs: 1\nlerning-rate: 0.1\n".write(to: job, atomically: true, encoding: .utf8)
        let badKey = try CLI.run(["train", "--config", job.path])
        #expect(badKey.status != 0)
        #expect(badKey.stderr.contains("\(job.path): key \"lerning-rate\": tether train has no option --lerning-rate"), "\(badKey.stderr)")
        // a variable of no command is ignored with a warning (the environment is shared with other programs)
        let strayVariable = try CLI.run(["eval", "--checkpoint", "/nonexistent/c.safetensors"], environment: ["TETHER_HOME": "/x"])
        #expect(
            strayVariable.stderr.contains("tether: ignoring environment variable TETHER_HOME: tether eval has no option --home"),
            "\(strayVariable.stderr)")
        #expect(strayVariable.stderr.contains("/nonexistent/c.safetensors: no such checkpoint file"), "\(strayVariable.stderr)")
        try "epochs: [1\n".write(to: job, atomically: true, encoding: .utf8)
        let badYAML = try CLI.run(["train", "--config", job.path])
        #expect(badYAML.status != 0 && badYAML.stderr.contains("\(job.path): not valid YAML"), "\(badYAML.stderr)")
        let missing = try CLI.run(["train", "--config", dir.appendingPathComponent("absent.yaml").path])
        #expect(missing.status != 0 && missing.stderr.contains("absent.yaml: cannot read it"), "\(missing.stderr)")
    }

    /// One job file and one environment serve every command: a setting of another command (the
    /// coordinator's --model for a worker, train's --epochs for eval) is ignored by a command without it.
    @Test func settingsOfAnotherCommandAreIgnored() throws {
        let eval = try CLI.run(["eval", "--checkpoint", "/nonexistent/c.safetensors"], environment: ["TETHER_EPOCHS": "1"])
        #expect(
            eval.stderr.contains("/nonexistent/c.safetensors: no such checkpoint file") && !eval.stderr.contains("TETHER_EPOCHS"),
            "\(eval.stderr)")
        let worker = try CLI.run(
            ["worker", "--config", file("cluster/jobs/fashion-mnist.yaml").path, "--coordinator", "tcp://127.0.0.1:1", "--insecure"],
            timeout: 4, environment: ["TETHER_MODEL": "mlp"])
        #expect(
            worker.stderr.contains("waiting for the coordinator at tcp://127.0.0.1:1") && !worker.stderr.contains("has no option"),
            "\(worker.stderr)")
    }

    @Test func aWrongInterfaceIsNamedWithTheOnesThereAre() throws {
        let r = try CLI.run(["worker", "--coordinator", "tcp://127.0.0.1:1", "--advertise", "nosuchif0"] + CLI.key, timeout: 30)
        #expect(r.status != 0)
        #expect(r.stderr.contains("no interface nosuchif0 with an IPv4 address here; this host has lo 127.0.0.1"), "\(r.stderr)")
    }

    /// The example job files hold only options the coordinator knows, and train.
    @Test(.enabled(if: dataInstalled, "needs Debian's dataset-fashion-mnist"))
    func theShippedJobFilesRun() throws {
        let dir = CLI.tempDir("jobs")
        defer { try? FileManager.default.removeItem(at: dir) }
        let r = try CLI.run([
            "train", "--config", file("cluster/jobs/fashion-mnist.yaml").path, "--max-steps", "3", "--train-limit", "256",
            "--test-limit", "64", "--run-dir", dir.path
        ])
        #expect(r.status == 0, "\(r.stderr)")
        #expect(r.stdout.contains("mlp-wn") && r.stdout.contains("done: 3 steps"), "\(r.stdout)")
    }

    /// The image's entrypoint, as compose runs it (settings in TETHER_* variables), twice on one run
    /// directory: the first `up` trains and finishes; the second (the run has finished) tells its
    /// workers so and everything exits 0, so `restart: on-failure` does not bring them back forever.
    @Test(.enabled(if: dataInstalled, "needs Debian's dataset-fashion-mnist"))
    func aSecondUpOfAFinishedJobEndsCleanly() throws {
        let dir = CLI.tempDir("second-up")
        defer { try? FileManager.default.removeItem(at: dir) }
        let address = "tcp://127.0.0.1:\(CLI.freePorts(1)[0])", jobID = "up-\(getpid())"
        let settings = [
            "TETHER_LISTEN": address, "TETHER_WORKERS": "2", "TETHER_JOB_ID": jobID, "TETHER_RUN_DIR": dir.path,
            "TETHER_KEY_FILE": CLI.keyFile, "TETHER_MODEL": "mlp-wn", "TETHER_MAX_STEPS": "3", "TETHER_TRAIN_LIMIT": "300",
            "TETHER_TEST_LIMIT": "100",
            "PATH": CLI.binary.deletingLastPathComponent().path + ":" + (ProcessInfo.processInfo.environment["PATH"] ?? "")
        ]
        for up in 1...2 {
            let workers = try (0..<2).map { _ in try CLI.start(["worker", "--coordinator", address, "--job-id", jobID] + CLI.key) }
            let c = try CLI.run(
                [file("cluster/entrypoint").path, "coordinator"], timeout: 120, environment: settings,
                executable: URL(fileURLWithPath: "/bin/bash"))
            #expect(c.status == 0, "up \(up), coordinator: \(c.stderr)")
            for w in workers {
                let r = w.finish()
                #expect(r.status == 0, "up \(up), worker: \(r.stderr)")
                if up == 2 { #expect(r.stderr.contains("the run has already finished (the coordinator says so)"), "\(r.stderr)") }
            }
            if up == 2 {
                #expect(c.stderr.contains("tether-entrypoint: resuming the run in \(dir.path)"), "\(c.stderr)")
                #expect(c.stdout.contains("has already finished its 3 steps") && c.stdout.contains("told 2 of 2 workers"), "\(c.stdout)")
            }
        }
    }

    @Test(.enabled(if: which("docker-compose") != nil, "needs Debian's docker-compose (scripts/install-deps installs it)"))
    func theComposeFileIsValid() throws {
        let r = try CLI.run(
            ["-f", file("docker-compose.yml").path, "config"], timeout: 60,
            environment: ["TETHER_WORKERS": "4"], executable: which("docker-compose")!)
        #expect(r.status == 0, "\(r.stderr)")
        for needle in [
            "coordinator:", "worker:", "dockerfile: cluster/Dockerfile", "TETHER_WORKERS: '4'", "TETHER_ADVERTISE: eth0:7071",
            "TETHER_COORDINATOR: tcp://coordinator:7070", "condition: service_healthy", "restart: on-failure"
        ] {
            #expect(r.stdout.contains(needle), "docker-compose config lacks \(needle):\n\(r.stdout)")
        }
        // The Dockerfile copies what exists.
        let dockerfile = try String(contentsOf: file("cluster/Dockerfile"), encoding: .utf8)
        for line in dockerfile.split(separator: "\n") where line.hasPrefix("COPY ") && !line.contains("--from") {
            let source = line.split(separator: " ")[1]
            #expect(FileManager.default.fileExists(atPath: file(String(source)).path), "the Dockerfile copies \(source), which is missing")
        }
    }

    @Test(.enabled(if: which("shellcheck") != nil, "needs shellcheck (scripts/install-deps installs it)"))
    func theShellScriptsPassShellcheck() throws {
        let scripts = [
            "cluster/netns-cluster", "cluster/netns.sh", "cluster/launch-hosts", "cluster/entrypoint", "cluster/slurm/tether.sbatch",
            "cluster/slurm/test-cluster",
            "cluster/test-images", "cluster/test-compose-v2",
            "cluster/chaos", "scripts/test", "scripts/stress-suite", "scripts/demo", "scripts/install-deps", "scripts/generate-proto",
            "bench/netns-allreduce",
            "bench/simulate-vs-ddp", "bench/tied-wide-deep", "bench/paper-directions", ".ci/run"
        ]
        let r = try CLI.run(["-x"] + scripts.map { file($0).path }, timeout: 120, executable: which("shellcheck")!)
        #expect(r.status == 0, "\(r.stdout)\(r.stderr)")
    }

    /// The manifests parse, and their pieces agree: the workers reach the Service, the coordinator waits
    /// for as many workers as the Job runs, and the ConfigMap's job trains.
    @Test(.enabled(if: dataInstalled, "needs Debian's dataset-fashion-mnist"))
    func theKubernetesManifestsParseAndAgree() throws {
        let dir = CLI.tempDir("k8s")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: dir) }
        let check = """
            import sys, yaml
            docs = [d for d in yaml.safe_load_all(open(sys.argv[1])) if d]
            for d in docs:
                assert d.get("apiVersion") and d.get("kind") and d["metadata"].get("name"), d
            by = {(d["kind"], d["metadata"]["name"]): d for d in docs}
            service = by[("Service", "tether-coordinator")]
            coordinator = by[("Job", "tether-coordinator")]["spec"]["template"]
            workers = by[("Job", "tether-workers")]["spec"]
            env = lambda t: {e["name"]: e.get("value") for e in t["spec"]["containers"][0]["env"]}
            assert service["spec"]["selector"].items() <= coordinator["metadata"]["labels"].items(), "the Service selects the coordinator"
            port = service["spec"]["ports"][0]["port"]
            assert env(workers["template"])["TETHER_COORDINATOR"] == f"tcp://tether-coordinator:{port}"
            assert env(coordinator)["TETHER_LISTEN"].endswith(f":{port}")
            assert int(env(coordinator)["TETHER_WORKERS"]) == workers["parallelism"] == workers["completions"]
            assert workers["completionMode"] == "Indexed"
            open(sys.argv[2], "w").write(by[("ConfigMap", "tether-job")]["data"]["job.yaml"])
            print(len(docs), "documents")
            """
        let job = dir.appendingPathComponent("job.yaml")
        let parsed = try CLI.run(["-c", check, file("cluster/k8s/tether.yaml").path, job.path], timeout: 60, executable: which("python3")!)
        #expect(parsed.status == 0, "\(parsed.stdout)\(parsed.stderr)")
        let r = try CLI.run([
            "train", "--config", job.path, "--max-steps", "2", "--train-limit", "256", "--test-limit", "64",
            "--run-dir", dir.appendingPathComponent("run").path
        ])
        #expect(r.status == 0 && r.stdout.contains("done: 2 steps"), "\(r.stdout)\(r.stderr)")
    }

    /// The manifests against the Kubernetes API's types, field by field (cluster/k8s/validate: kubectl's
    /// own validation needs an API server for the schema); a copy with a misspelt field, a string for a
    /// number and a container without a name must be refused, each named.
    @Test(.enabled(if: kubernetesTypesInstalled, "needs Debian's python3-kubernetes (scripts/install-deps --test)"))
    func theKubernetesManifestsMatchTheAPITypes() throws {
        let validate = file("cluster/k8s/validate").path
        let r = try CLI.run(
            [validate, file("cluster/k8s/tether.yaml").path], timeout: 60, executable: URL(fileURLWithPath: "/usr/bin/python3"))
        #expect(r.status == 0 && r.stdout.contains("5 objects valid"), "\(r.stdout)\(r.stderr)")
        let broken = CLI.tempDir("k8s-broken.yaml")
        defer { try? FileManager.default.removeItem(at: broken) }
        let manifest = try String(contentsOf: file("cluster/k8s/tether.yaml"), encoding: .utf8)
            .replacingOccurrences(of: "parallelism: 4", with: "parallelizm: 4")
            .replacingOccurrences(of: "backoffLimit: 3", with: "backoffLimit: \"3\"")
            .replacingOccurrences(of: "- name: worker\n", with: "- nam: worker\n")
        try manifest.write(to: broken, atomically: true, encoding: .utf8)
        let refused = try CLI.run([validate, broken.path], timeout: 60, executable: URL(fileURLWithPath: "/usr/bin/python3"))
        #expect(refused.status == 1, "\(refused.stdout)\(refused.stderr)")
        for problem in [
            "Job.spec.parallelizm: V1JobSpec has no field 'parallelizm'", "Job.spec.backoffLimit: int expected, got str '3'",
            "containers[0]: Invalid value for `name`, must not be `None`"
        ] {
            #expect(refused.stdout.contains(problem), "\(problem) not in \(refused.stdout)")
        }
    }

    /// The ssh launcher, with an "ssh" that runs the command here: two hosts' worth of workers on loopback.
    @Test(.enabled(if: dataInstalled, "needs Debian's dataset-fashion-mnist"))
    func theHostfileLauncherRunsAJob() throws {
        let dir = CLI.tempDir("hosts")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: dir) }
        let ssh = dir.appendingPathComponent("local-ssh")
        try "#!/bin/bash\n# local-ssh HOST COMMAND: runs COMMAND here\nshift\nexec bash -c \"$1\"\n".write(
            to: ssh, atomically: true, encoding: .utf8)
        chmod(ssh.path, 0o755)
        let hosts = dir.appendingPathComponent("hosts")
        try "# test hosts\n127.0.0.1 slots=2 iface=lo\n127.0.0.1 iface=lo\n".write(to: hosts, atomically: true, encoding: .utf8)
        let port = 20_000 + Int(getpid() % 20_000)
        // workers that may rejoin (--worker-restarts) finish a job that does not fail like any other
        let r = try CLI.run(
            [
                file("cluster/launch-hosts").path, hosts.path, "--tether", CLI.binary.path, "--ssh", ssh.path, "--port", String(port),
                "--worker-restarts", "1", "--key-file", dir.appendingPathComponent("cluster.key").path, "--", "--listen",
                "tcp://127.0.0.1:\(port)", "--run-dir", dir.appendingPathComponent("run").path, "--max-steps", "4"
            ] + quick,
            timeout: 180, executable: bash)
        #expect(r.status == 0, "\(r.stdout)\(r.stderr)")
        #expect(r.stdout.contains("3 workers on 127.0.0.1 127.0.0.1"), "\(r.stdout)")
        #expect(r.stdout.contains("done: 4 steps"), "\(r.stdout)")
        #expect(r.stderr.components(separatedBy: "reachable").count - 1 == 3, "each worker checks its neighbour: \(r.stderr)")
    }

    /// The Slurm batch script, with an `srun` that starts its tasks here and a `scontrol` that names this
    /// host: the coordinator and two worker tasks on loopback.
    @Test(.enabled(if: dataInstalled, "needs Debian's dataset-fashion-mnist"))
    func theSlurmScriptRunsAJob() throws {
        let dir = CLI.tempDir("slurm")
        let bin = dir.appendingPathComponent("bin")
        try FileManager.default.createDirectory(at: bin, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: dir) }
        let srun = """
            #!/bin/bash
            # srun [--opt[=value]]... COMMAND...: COMMAND once per task (--ntasks), here
            tasks=1
            while [[ "$1" == --* ]]; do [[ "$1" == --ntasks=* ]] && tasks=${1#--ntasks=}; shift; done
            for ((t = 0; t < tasks; t++)); do SLURM_PROCID=$t "$@" & done
            wait
            """
        try srun.write(to: bin.appendingPathComponent("srun"), atomically: true, encoding: .utf8)
        try "#!/bin/bash\necho 127.0.0.1\n".write(to: bin.appendingPathComponent("scontrol"), atomically: true, encoding: .utf8)
        for tool in ["srun", "scontrol"] { chmod(bin.appendingPathComponent(tool).path, 0o755) }
        let port = 20_000 + Int((getpid() + 7) % 20_000)
        let run = dir.appendingPathComponent("run").path
        let r = try CLI.run(
            [
                file("cluster/slurm/tether.sbatch").path, "--tether", CLI.binary.path, "--iface", "lo", "--port", String(port),
                "--run-dir", run, "--worker-restarts", "1", "--", "--listen", "tcp://127.0.0.1:\(port)", "--max-steps", "4"
            ] + quick,
            timeout: 180,
            environment: [
                "PATH": bin.path + ":" + (ProcessInfo.processInfo.environment["PATH"] ?? "/usr/bin:/bin"),
                "SLURM_JOB_NODELIST": "node1", "SLURM_JOB_ID": "42", "SLURM_NTASKS": "2",
                "SLURM_CPUS_PER_TASK": "1"
            ],
            executable: bash)
        #expect(r.status == 0, "\(r.stdout)\(r.stderr)")
        #expect(r.stdout.contains("job slurm-42, coordinator tcp://127.0.0.1:\(port), 2 workers"), "\(r.stdout)")
        #expect(
            r.stdout.contains("done: 4 steps") && FileManager.default.fileExists(atPath: run + "/checkpoint.safetensors"), "\(r.stdout)")
    }

    /// Four emulated hosts (network namespaces on a bridge, 1 Gbit/s links): each worker on its own
    /// address, found from its interface; the job trains and improves.
    @Test(
        .enabled(
            if: dataInstalled && netnsUnavailable == nil, "needs root, network namespaces and Fashion-MNIST: \(netnsUnavailable ?? "")"))
    func aJobTrainsOnFourEmulatedHosts() throws {
        let dir = CLI.tempDir("netns")
        defer { try? FileManager.default.removeItem(at: dir) }
        let r = try CLI.run(
            [
                file("cluster/netns-cluster").path, "--workers", "4", "--rate", "1gbit", "--timeout", "240",
                "--tether", CLI.binary.path, "--run-dir", dir.path, "--",
                "--model", "mlp-wn", "--train-limit", "4000", "--test-limit", "1000", "--batch", "32", "--epochs", "1", "--log-every", "10"
            ],
            timeout: 300, executable: bash)
        #expect(r.status == 0, "\(r.stdout)\(r.stderr)")
        let accuracy = r.stdout.components(separatedBy: "test accuracy ").dropFirst().first.flatMap {
            Double($0.prefix(while: { $0 != "%" }))
        }
        #expect((accuracy ?? 0) > 60, "accuracy after one epoch on 4 emulated hosts: \(r.stdout)")
        var addresses: Set<String> = []
        for rank in 0..<4 {
            let log = (try? String(contentsOf: dir.appendingPathComponent("worker-\(rank).log"), encoding: .utf8)) ?? ""
            let address = log.components(separatedBy: "ring address tcp://").dropFirst().first.map {
                String($0.prefix(while: { $0 != ":" }))
            }
            #expect(address?.hasPrefix("10.78.") == true && log.contains("reachable"), "worker \(rank): \(log)")
            if let address { addresses.insert(address) }
        }
        #expect(addresses.count == 4, "each worker on its own host: \(addresses)")
    }

    /// Workers that advertise the wrong interface (lo: each host's own loopback) cannot reach each other:
    /// the job stops within the ring's time-out, naming the unreachable neighbour and what to check.
    @Test(
        .enabled(
            if: dataInstalled && netnsUnavailable == nil, "needs root, network namespaces and Fashion-MNIST: \(netnsUnavailable ?? "")"))
    func aWrongInterfaceOnEmulatedHostsIsNamed() throws {
        let dir = CLI.tempDir("netns-wrong")
        defer { try? FileManager.default.removeItem(at: dir) }
        let r = try CLI.run(
            [
                file("cluster/netns-cluster").path, "--workers", "2", "--rate", "none", "--advertise", "lo", "--timeout", "90",
                "--tether", CLI.binary.path, "--run-dir", dir.path, "--", "--model", "mlp", "--train-limit", "256", "--max-steps", "2"
            ],
            timeout: 120, executable: bash)
        #expect(r.status == 1, "\(r.stdout)\(r.stderr)")
        #expect(
            r.stderr.contains("cannot reach its right neighbour rank") && r.stderr.contains("Check the address that worker advertises"),
            "\(r.stderr)")
    }

    /// Runs cluster/netns-cluster with drills on 3 (or 2) emulated hosts training mlp-wn; returns the
    /// result and the drills' summary lines (JSON objects).
    func drill(
        _ drills: [String], workers: Int = 3, restarts: Int = 0, training: [String] = []
    ) throws -> (CLI.Result, [[String: Any]], URL) {
        let dir = CLI.tempDir("drill")
        let r = try CLI.run(
            [
                file("cluster/netns-cluster").path, "--workers", "\(workers)", "--rate", "1gbit", "--timeout", "150", "--worker-restarts",
                "\(restarts)",
                "--tether", CLI.binary.path, "--run-dir", dir.path
            ] + drills.flatMap { ["--drill", $0] }
                + [
                    "--", "--model", "mlp-wn", "--train-limit", "6000", "--test-limit", "500", "--batch", "32", "--epochs", "6",
                    "--checkpoint-every", "20", "--log-every", "50"
                ] + training,
            timeout: 200, executable: bash)
        let summaries = r.stdout.split(separator: "\n").filter { $0.hasPrefix("{\"drill\"") }
            .compactMap { try? JSONSerialization.jsonObject(with: Data($0.utf8)) as? [String: Any] }
        return (r, summaries, dir)
    }

    /// Drills on emulated hosts: a worker's link cut for 12 s is named within the heartbeat time-out
    /// and an elastic job goes on in place with the other two (the ring re-formed, no step but the one
    /// in flight lost), to the accuracy of an undisturbed run; the cut host is dropped from the job,
    /// and nothing is left running.
    @Test(
        .enabled(
            if: dataInstalled && netnsUnavailable == nil, "needs root, network namespaces and Fashion-MNIST: \(netnsUnavailable ?? "")"))
    func aCutLinkIsNamedAndAnElasticJobGoesOn() throws {
        let (r, drills, dir) = try drill(["cut:2:3:12"], restarts: 1, training: ["--min-workers", "2", "--last-call", "3"])
        defer { try? FileManager.default.removeItem(at: dir) }
        #expect(
            r.status == 0 && r.stdout.contains("has been silent for") && r.stdout.contains("re-forming the ring of the 2 workers left")
                && r.stdout.contains("ring epoch 1: all 2 replicas agree"), "\(r.stdout)\(r.stderr)")
        let named = drills.first?["named_after_ms"] as? Int, recovered = (drills.first?["recovery_s"] as? [Double])?.first
        #expect(named.map { $0 < 8000 } ?? false && recovered != nil && drills.first?["failures"] as? Int == 0, "\(drills)")
        let accuracy = r.stdout.components(separatedBy: "test accuracy ").last.flatMap { Double($0.prefix(while: { $0 != "%" })) } ?? 0
        #expect(accuracy > 80, "\(r.stdout)")
    }

    /// Elastic in place on emulated hosts: a worker's link cut mid-run (3 workers on 20 Mbit/s links,
    /// so the 40 steps take long enough to cut into; plain SGD, so a wrong gradient scale would show):
    /// the two survivors re-form, redo only the step in flight, and the job ends within 1e-5 of an
    /// undisturbed 3-worker run with the same global batch.
    @Test(
        .enabled(
            if: dataInstalled && netnsUnavailable == nil, "needs root, network namespaces and Fashion-MNIST: \(netnsUnavailable ?? "")"))
    func aCutLinkCostsTheSurvivorsOnlyTheStepInFlight() throws {
        let dir = CLI.tempDir("netns-cut")
        defer { try? FileManager.default.removeItem(at: dir) }
        // a checkpoint every 5 steps: the drill waits for the first one, and the first at the epoch's
        // end (step 34) brought the cut at the run's last steps
        let training = RunCheck.plainSGD(steps: 40) + ["--hash-every", "1", "--checkpoint-every", "5"]
        let cut = dir.appendingPathComponent("cut")
        let r = try CLI.run(
            [
                file("cluster/netns-cluster").path, "--workers", "3", "--rate", "20mbit", "--timeout", "150", "--tether", CLI.binary.path,
                "--run-dir", cut.path, "--drill", "cut:2:3:12", "--"
            ] + training + ["--min-workers", "2", "--last-call", "3", "--heartbeat-timeout", "2"],
            timeout: 200, executable: bash)
        #expect(
            r.status == 0 && r.stdout.contains("re-forming the ring of the 2 workers left")
                && r.stdout.contains("the step in flight is redone"),
            "\(r.stdout)\(r.stderr)")
        let reformed = try String(contentsOfFile: cut.path + "/metrics.jsonl", encoding: .utf8).split(separator: "\n")
            .compactMap { try JSONSerialization.jsonObject(with: Data($0.utf8)) as? [String: Any] }.filter {
                $0["event"] as? String == "reformed"
            }
        #expect(
            reformed.count == 1 && reformed.first?["steps_redone"] as? Int == 1 && (reformed.first?["step"] as? Int ?? 40) < 40,
            "one re-formation mid-run, one step redone: \(reformed)")
        let whole = dir.appendingPathComponent("whole").path
        let u = try CLI.run(["simulate", "--workers", "3", "--run-dir", whole] + training, timeout: 240)
        #expect(u.status == 0, "stderr: \(u.stderr)")
        try RunCheck.expectParametersAgree(cut.path + "/checkpoint.safetensors", whole + "/checkpoint.safetensors")
    }

    /// A host frozen with SIGSTOP and a link that drops to 100 kbit/s (heartbeats cannot get through
    /// the gradients) are named within the heartbeat time-out; the job stops with its last checkpoint and
    /// nothing hangs or is left running.
    @Test(
        .enabled(
            if: dataInstalled && netnsUnavailable == nil, "needs root, network namespaces and Fashion-MNIST: \(netnsUnavailable ?? "")"))
    func aFrozenHostAndASlowLinkAreNamed() throws {
        for spec in ["freeze:1:3:15", "slow:1:3:100kbit"] {
            let (r, drills, dir) = try drill([spec])
            defer { try? FileManager.default.removeItem(at: dir) }
            #expect(
                r.status == 1 && r.stderr.contains("has been silent for")
                    && FileManager.default.fileExists(atPath: dir.path + "/checkpoint.safetensors"),
                "\(spec): \(r.stdout)\(r.stderr)")
            #expect((drills.first?["named_after_ms"] as? Int).map { $0 < 8000 } ?? false, "\(spec): \(drills)")
        }
        // this build's workers only: another suite at once (another clone's binary) may have its own
        #expect(
            try CLI.run(["-f", "\(CLI.binary.path) worker --coordinator tcp://10.78."], executable: URL(fileURLWithPath: "/usr/bin/pgrep"))
                .stdout.isEmpty)
    }

    /// The coordinator cut off from every worker: it names them all, and every worker exits saying the
    /// coordinator fell silent.
    @Test(
        .enabled(
            if: dataInstalled && netnsUnavailable == nil, "needs root, network namespaces and Fashion-MNIST: \(netnsUnavailable ?? "")"))
    func aPartitionedCoordinatorNamesTheWorkersAndTheyExit() throws {
        let (r, _, dir) = try drill(["partition:3:20"], workers: 2)
        defer { try? FileManager.default.removeItem(at: dir) }
        #expect(r.status == 1 && r.stderr.contains("workers rank 0 (") && r.stderr.contains("have been silent"), "\(r.stdout)\(r.stderr)")
        for w in 0..<2 {
            let log = (try? String(contentsOf: dir.appendingPathComponent("worker-\(w).log"), encoding: .utf8)) ?? ""
            #expect(log.contains("has been silent for 10 s; exiting"), "worker \(w): \(log)")
        }
    }
}
