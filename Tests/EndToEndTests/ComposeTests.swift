import Foundation
import Testing

/// A Docker engine for a test: the one that answers, or `dockerd` started here (root) and stopped by
/// `stop`. Nil, with the reason, when there is none to have.
final class DockerEngine {
    private var started: CLI.Background?
    static let docker = which("docker"), compose = which("docker-compose")

    /// Why no engine can be had here, or nil.
    static var unavailable: String? {
        guard docker != nil, compose != nil else { return "needs docker.io and docker-compose (scripts/install-deps --test installs them)" }
        guard which("debootstrap") != nil else { return "needs debootstrap to make base images offline (scripts/install-deps --test)" }
        guard getuid() == 0 || answers() else { return "no Docker engine answers and only root may start one" }
        guard answers() || which("dockerd") != nil else { return "no Docker engine answers and dockerd is not installed" }
        return nil
    }

    static func answers() -> Bool { (try? CLI.run(["info"], timeout: 20, executable: docker!))?.status == 0 }

    init() throws {
        guard !Self.answers() else { return }
        let engine = try CLI.start([], bound: 7200, executable: which("dockerd")!)
        started = engine
        guard CLI.waitUntil(seconds: 60, every: 0.5, { Self.answers() || !engine.process.isRunning }), engine.process.isRunning else {
            stop()
            throw CollectiveFailure("dockerd did not answer within 60 s")
        }
    }

    /// Stops the engine if this started it (containers of this test are gone by then).
    func stop() {
        guard let p = started?.process else { return }
        p.terminate()
        if !CLI.waitUntil(seconds: 30, every: 0.2, { !p.isRunning }) { kill(p.processIdentifier, SIGKILL) }
        started = nil
    }

    deinit { stop() }
}

struct CollectiveFailure: Error, CustomStringConvertible {
    let description: String
    init(_ d: String) { description = d }
}

/// Why no Docker engine can be had here, or nil (read once).
let dockerUnavailable: String? = DockerEngine.unavailable

/// docker-compose on a real engine, as the README says to run it: base images made offline
/// (cluster/test-images: debootstrap and this machine's Swift toolchain), `docker-compose build`, then
/// `up` with 4 workers to the job's accuracy; then drills: a killed worker container, a killed
/// coordinator container, and a second `up` of a finished job. Uses Debian's docker-compose 1.29 (the
/// `docker-compose` spelling, the legacy builder); then the same with `docker compose` v2 (Debian's
/// package of the next release, cluster/test-compose-v2), whose build uses BuildKit.
@Suite(
    .serialized, .enabled(if: dockerUnavailable == nil && dataInstalled, "\(dockerUnavailable ?? "needs Debian's dataset-fashion-mnist")"))
struct ComposeTests {
    let project = "tethertest\(getpid())"
    var image: String { "tether-test/tether:\(project)" }

    /// `docker-compose -p PROJECT ARGS` in the repository with `environment`.
    func compose(_ args: [String], timeout: TimeInterval, environment: [String: String] = [:]) throws -> CLI.Result {
        try CLI.run(
            ["-p", project] + args, timeout: timeout,
            environment: ["COMPOSE_FILE": CLI.repository.appendingPathComponent("docker-compose.yml").path, "TETHER_IMAGE": image]
                + environment,
            executable: DockerEngine.compose!)
    }

    func docker(_ args: [String], timeout: TimeInterval = 60) throws -> CLI.Result {
        try CLI.run(args, timeout: timeout, executable: DockerEngine.docker!)
    }

    /// The build args of cluster/test-images (base images made offline), failing the test if it fails.
    func baseImageArgs() throws -> [String] {
        let images = try CLI.run(
            [CLI.repository.appendingPathComponent("cluster/test-images").path], timeout: 1200,
            executable: URL(fileURLWithPath: "/bin/bash"))
        try #require(images.status == 0, "\(images.stderr)")
        return images.stdout.split(whereSeparator: \.isWhitespace).map(String.init)
    }

    /// A file of the run directory on the `runs` volume.
    func runFile(_ path: String) throws -> String {
        try docker(["run", "--rm", "--entrypoint", "cat", "-v", "\(project)_runs:/runs", image, "/runs/" + path]).stdout
    }

    /// The lines of a run's metrics.jsonl.
    func metrics(_ job: String) throws -> [[String: Any]] {
        try runFile("\(job)/metrics.jsonl").split(separator: "\n").compactMap {
            try JSONSerialization.jsonObject(with: Data($0.utf8)) as? [String: Any]
        }
    }

    /// Waits until `job`'s metrics say training went `beyond` steps (or 120 s pass).
    func waitForStep(_ job: String, beyond step: Int) {
        CLI.waitUntil(seconds: 120, every: 0.5) {
            ((try? metrics(job))?.compactMap { $0["event"] as? String == "step" ? $0["step"] as? Int : nil }.last ?? 0) > step
        }
    }

    @Test func composeBuildsTrainsAndRecoversFromKilledContainers() throws {
        let engine = try DockerEngine()
        defer { _ = try? compose(["down", "-v", "--remove-orphans"], timeout: 120); _ = try? docker(["image", "rm", image]); engine.stop() }
        let args = try baseImageArgs()
        var built = Date()
        let build = try compose(["build"] + args, timeout: 1500, environment: ["DOCKER_BUILDKIT": "0"])
        #expect(build.status == 0, "\(build.stdout.suffix(3000))\(build.stderr.suffix(3000))")
        guard build.status == 0 else { return }
        print("compose test: docker-compose build (legacy builder) took \(Int(Date().timeIntervalSince(built))) s")
        let key = try CLI.run(["keygen"]).stdout.trimmingCharacters(in: .whitespacesAndNewlines)

        // The README's commands: a job with 4 workers, to its accuracy.
        let job = "fashion-mnist-quick", env = ["TETHER_KEY": key, "TETHER_WORKERS": "4", "TETHER_JOB": job]
        built = Date()
        let up = try compose(["up", "--scale", "worker=4"], timeout: 600, environment: env)
        #expect(
            up.status == 0 && up.stdout.contains("all 4 replicas agree") && up.stdout.contains("done: 470 steps"),
            "\(up.stdout.suffix(4000))\(up.stderr.suffix(2000))")
        let accuracy = up.stdout.components(separatedBy: "test accuracy ").last.flatMap { Double($0.prefix(while: { $0 != "%" })) } ?? 0
        #expect(accuracy > 84, "\(up.stdout.suffix(2000))")
        #expect(!up.stdout.contains("failed the handshake"), "a health check must not look like a stranger")
        let startup = up.stdout.components(separatedBy: "training (").dropFirst().first.map { String($0.prefix { $0 != " " }) } ?? "?"
        let rates = up.stdout.components(separatedBy: " samples/s)").dropLast().compactMap {
            Double($0.split(separator: " ").last?.replacingOccurrences(of: ",", with: "") ?? "")
        }
        print(
            "compose test: up to the end \(Int(Date().timeIntervalSince(built))) s (first step \(startup) s after the coordinator started), "
                + "accuracy \(accuracy)%, epochs at \(rates.map { Int($0) }) samples/s")

        // A second up of the finished job ends at once, everything with status 0.
        let again = try compose(["up", "--scale", "worker=4"], timeout: 180, environment: env)
        #expect(again.status == 0 && again.stdout.contains("has already finished its 470 steps"), "\(again.stdout.suffix(3000))")

        // The key as a compose secret (cluster/compose-secrets.yml) instead of TETHER_KEY.
        _ = try compose(["down", "-v"], timeout: 120)
        let secretDir = CLI.tempDir("compose-secret")
        try FileManager.default.createDirectory(at: secretDir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: secretDir) }
        #expect(try CLI.run(["keygen", secretDir.path + "/cluster.key"]).status == 0)
        let files = [
            "-f", CLI.repository.appendingPathComponent("docker-compose.yml").path, "-f",
            CLI.repository.appendingPathComponent("cluster/compose-secrets.yml").path
        ]
        let secret = try compose(
            files + ["up", "--scale", "worker=2"], timeout: 600,
            environment: ["TETHER_WORKERS": "2", "TETHER_JOB": job, "TETHER_KEY_SECRET": secretDir.path + "/cluster.key", "TETHER_KEY": ""])
        #expect(
            secret.status == 0 && secret.stdout.contains("all 2 replicas agree") && secret.stdout.contains("done: 938 steps"),
            "with the key as a secret: \(secret.stdout.suffix(3000))\(secret.stderr.suffix(2000))")

        // Drills on a fresh run of the same job. `docker kill` of a worker: Docker does not restart a
        // container stopped by hand, so the job goes on in place with the three left
        // (TETHER_MIN_WORKERS: the survivors re-form the ring, a `reformed` event). Then `up --scale
        // worker=4` again starts the killed container anew, and it joins the running job at a step
        // boundary (a `joined` event). A crash of the coordinator (its process killed; `docker kill`
        // would count as a stop by hand too): the restart policy brings it back, it resumes, and the
        // workers, which kept their replicas (TETHER_COORDINATOR_WAIT), hand it their state: it trains
        // on from their step, not from its checkpoint's (a second `training` event).
        // Each drill waits for the one before to have taken effect. The drilled run is 16 epochs
        // (3760 steps, TETHER_EPOCHS), so that the three drills, which take some 15-30 s with the
        // containers' start-ups, end well before the job does however loaded the machine is.
        _ = try compose(["down", "-v"], timeout: 120)
        let drill = env + ["TETHER_MIN_WORKERS": "3", "TETHER_EPOCHS": "16"]
        #expect(try compose(["up", "-d", "--scale", "worker=4"], timeout: 180, environment: drill).status == 0)
        var lastResumed = 0
        for (victim, after, sign, count) in [
            ("\(project)_worker_2", 60, "reformed", 1), ("scale", 0, "joined", 1), ("\(project)_coordinator_1", 0, "training", 2)
        ] {
            waitForStep(job, beyond: max(after, lastResumed + 50))
            let reached = (try? metrics(job))?.compactMap { $0["event"] as? String == "step" ? $0["step"] as? Int : nil }.last ?? 0
            let killed = Date()
            if victim == "scale" {
                #expect(
                    try compose(
                        ["up", "-d", "--no-recreate", "--scale", "worker=4"], timeout: 120, environment: drill
                    ).status == 0)
            } else if victim.contains("worker") {
                #expect(try docker(["kill", victim]).status == 0)
            } else {
                // the container's tether process, by its pid on this host (PID 1 in it is tini)
                let top = try docker(["top", victim, "-o", "pid,comm"]).stdout.split(separator: "\n").first { $0.hasSuffix("tether") }
                let pid = top.flatMap { Int32($0.split(separator: " ").first ?? "") }
                #expect(pid.map { kill($0, SIGKILL) == 0 } ?? false, "no tether process in \(victim)")
            }
            // back to training: the event that says so, at the step it goes on from
            var resumedAt: Int?
            CLI.waitUntil(seconds: 150, every: 0.5) {
                let starts = (try? metrics(job))?.filter { $0["event"] as? String == sign }.compactMap { $0["step"] as? Int } ?? []
                if starts.count >= count { resumedAt = starts.last }
                return resumedAt != nil
            }
            #expect(resumedAt != nil, "\(victim): no `\(sign)` event within 150 s\n\(containerLogs())")
            lastResumed = resumedAt ?? reached
            if sign == "training" {
                let logs = try docker(["logs", victim]), log = logs.stdout + logs.stderr
                let kept = (resumedAt ?? 0) >= reached && log.contains("from the state the workers kept at step")
                #expect(
                    kept,
                    "the restarted coordinator went on from step \(resumedAt ?? -1), the workers had \(reached)\n\(kept ? "" : containerLogs())"
                )
            }
            // in place, the survivors go on from the step in flight; a resume, from the last checkpoint
            // (a checkpoint every 50 steps; the step reached is known to the log's granularity of 50)
            print(
                "compose test: \(victim == "scale" ? "a fourth worker started" : "\(victim) killed") at about step \(reached)+: training again after "
                    + "\(Int(Date().timeIntervalSince(killed))) s, "
                    + (sign == "training" ? "from the workers' state at step \(resumedAt ?? -1)" : "in place at step \(resumedAt ?? -1)"))
        }
        let coordinator = try docker(["wait", "\(project)_coordinator_1"], timeout: 300)
        #expect(coordinator.stdout.trimmingCharacters(in: .whitespacesAndNewlines) == "0", "\(coordinator.stdout)")
        let joins = try metrics(job).filter { $0["event"] as? String == "joined" }
        #expect(joins.count == 1, "one join, by the restarted worker: \(joins)\n\(joins.count == 1 ? "" : containerLogs())")
        let end = try metrics(job).last { $0["event"] as? String == "end" }
        #expect(end?["step"] as? Int == 3760, "the drilled run ends where an undisturbed one would: \(String(describing: end))")
    }

    /// The ends of the coordinator's and the workers' logs, to say why a drill failed.
    func containerLogs() -> String {
        let names = ["coordinator_1"] + (1...5).map { "worker_\($0)" }
        return names.compactMap { name in
            guard let l = try? docker(["logs", "\(project)_\(name)"]), l.status == 0 else { return nil }
            return "\(name): " + String((l.stdout + l.stderr).suffix(2500))
        }.joined(separator: "\n")
    }

    /// The README's commands in the `docker compose` v2 spelling: its build goes through BuildKit (the
    /// Dockerfile must need nothing from a registry there either), then the quick job with 2 workers.
    @Test func composeV2BuildsWithBuildKitAndTrains() throws {
        let plugin = try CLI.run(
            [CLI.repository.appendingPathComponent("cluster/test-compose-v2").path], timeout: 600,
            executable: URL(fileURLWithPath: "/bin/bash"))
        if plugin.status == 2 || plugin.status == 3 { try Test.cancel("no compose v2 to be had here: \(plugin.stderr)") }
        try #require(plugin.status == 0, "\(plugin.stderr)")
        let engine = try DockerEngine()
        let v2 = [
            "DOCKER_CONFIG": plugin.stdout.trimmingCharacters(in: .whitespacesAndNewlines), "COMPOSE_PROJECT_NAME": project,
            "COMPOSE_FILE": CLI.repository.appendingPathComponent("docker-compose.yml").path, "TETHER_IMAGE": image
        ]
        func compose(_ args: [String], timeout: TimeInterval, environment: [String: String] = [:]) throws -> CLI.Result {
            try CLI.run(["compose"] + args, timeout: timeout, environment: v2 + environment, executable: DockerEngine.docker!)
        }
        defer { _ = try? compose(["down", "-v", "--remove-orphans"], timeout: 120); _ = try? docker(["image", "rm", image]); engine.stop() }
        let version = try compose(["version"], timeout: 30)
        try #require(version.status == 0 && version.stdout.contains("version 2."), "\(version.stdout)\(version.stderr)")
        let args = try baseImageArgs()
        let started = Date()
        let build = try compose(["build", "--progress", "plain"] + args, timeout: 1500)
        #expect(build.status == 0, "\(build.stdout.suffix(3000))\(build.stderr.suffix(3000))")
        // BuildKit prints its steps as `#N [service stage i/n] FROM ...` (the legacy builder: `Step i/n : FROM ...`)
        #expect((build.stdout + build.stderr).contains("] FROM "), "not BuildKit: \(build.stderr.prefix(2000))")
        guard build.status == 0 else { return }
        print(
            "compose test: `docker compose build` (\(version.stdout.trimmingCharacters(in: .whitespacesAndNewlines)), BuildKit) took \(Int(Date().timeIntervalSince(started))) s"
        )
        let key = try CLI.run(["keygen"]).stdout.trimmingCharacters(in: .whitespacesAndNewlines)
        let up = try compose(
            ["up", "--scale", "worker=2"], timeout: 600,
            environment: ["TETHER_KEY": key, "TETHER_WORKERS": "2", "TETHER_JOB": "fashion-mnist-quick"])
        #expect(
            up.status == 0 && up.stdout.contains("all 2 replicas agree") && up.stdout.contains("done: 938 steps"),
            "\(up.stdout.suffix(4000))\(up.stderr.suffix(2000))")
    }
}

extension Dictionary where Key == String, Value == String {
    static func + (a: Self, b: Self) -> Self { a.merging(b) { $1 } }
}
