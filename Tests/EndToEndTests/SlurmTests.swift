import Foundation
import Testing

/// Why the one-machine Slurm cluster cannot run here, or nil.
let slurmUnavailable: String? = {
    guard getuid() == 0 else { return "not root: the Slurm daemons of the test cluster run as root" }
    for program in ["munged", "slurmctld", "slurmd", "sbatch", "srun", "scontrol", "scancel"] where which(program) == nil {
        return "needs Debian's slurm-wlm and munge (scripts/install-deps --test installs them): no \(program)"
    }
    return nil
}()

/// cluster/slurm/tether.sbatch through real Slurm: a one-machine cluster (munged, slurmctld, slurmd
/// from Debian's munge and slurm-wlm, started by cluster/slurm/test-cluster and stopped at the end),
/// `sbatch` of 1 node x 3 tasks through the real srun. The fake-srun test in DeploymentTests covers
/// machines without Slurm.
@Suite(.serialized, .enabled(if: slurmUnavailable == nil && dataInstalled, "\(slurmUnavailable ?? "needs Debian's dataset-fashion-mnist")"))
struct SlurmTests {
    let bash = URL(fileURLWithPath: "/bin/bash")
    var script: String { CLI.repository.appendingPathComponent("cluster/slurm/tether.sbatch").path }

    /// Submits the batch script (1 node, 3 tasks of 1 CPU) with `flags` in `dir`; returns the job id.
    func submit(_ flags: [String], in dir: URL, conf: String) throws -> String {
        let r = try CLI.run(
            [
                "--parsable", "--nodes", "1", "--ntasks", "3", "--ntasks-per-node", "3", "--cpus-per-task", "1", "--time", "10",
                "--chdir", dir.path, script, "--tether", CLI.binary.path, "--iface", "lo"
            ] + flags,
            timeout: 30, environment: ["SLURM_CONF": conf], executable: which("sbatch")!)
        #expect(r.status == 0, "\(r.stderr)")
        return r.stdout.trimmingCharacters(in: .whitespacesAndNewlines)
    }

    /// The job's final state (COMPLETED, FAILED, ...), waiting up to `seconds`.
    func finalState(_ job: String, conf: String, within seconds: Double) throws -> String {
        let deadline = Date().addingTimeInterval(seconds)
        var state = ""
        while Date() < deadline {
            let show = try CLI.run(["show", "job", job], timeout: 10, environment: ["SLURM_CONF": conf], executable: which("scontrol")!)
                .stdout
            state = show.components(separatedBy: "JobState=").dropFirst().first.map { String($0.prefix { $0.isLetter }) } ?? ""
            if ["COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL"].contains(state) { return state }
            usleep(500_000)
        }
        return state
    }

    /// Waits (up to 90 s) until the run has written its first checkpoint.
    func waitForACheckpoint(_ run: URL) {
        let deadline = Date().addingTimeInterval(90)
        while !FileManager.default.fileExists(atPath: run.appendingPathComponent("checkpoint.safetensors").path), Date() < deadline {
            usleep(200_000)
        }
    }

    @Test func sbatchTrainsThroughTheRealSrunAndKilledTasksAreHandled() throws {
        let dir = CLI.tempDir("slurm")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        let daemons = dir.appendingPathComponent("daemons").path
        let helper = CLI.repository.appendingPathComponent("cluster/slurm/test-cluster").path
        defer {
            _ = try? CLI.run([helper, "stop", daemons], timeout: 60, executable: bash)
            try? FileManager.default.removeItem(at: dir)
        }
        let started = try CLI.run([helper, "start", daemons, "8"], timeout: 60, executable: bash)
        #expect(started.status == 0, "\(started.stderr)")
        guard started.status == 0 else { return }
        let conf = daemons + "/slurm.conf"
        let training = ["--model", "mlp-wn", "--train-limit", "6000", "--test-limit", "1000", "--checkpoint-every", "20"]

        // 1 node x 3 tasks, to accuracy
        let job = try submit(["--run-dir", dir.path + "/run"] + ["--"] + training + ["--epochs", "2"], in: dir, conf: conf)
        #expect(try finalState(job, conf: conf, within: 240) == "COMPLETED")
        let out = (try? String(contentsOf: dir.appendingPathComponent("tether-\(job).out"), encoding: .utf8)) ?? ""
        let accuracy = out.components(separatedBy: "test accuracy ").last.flatMap { Double($0.prefix(while: { $0 != "%" })) } ?? 0
        #expect(out.contains("all 3 replicas agree") && out.contains("done: 64 steps") && accuracy > 75, "\(out)")

        // The workers' step killed (scancel --signal=KILL of the step the script names tether-workers;
        // its number depends on which of the two sruns slurmctld took first): the coordinator names
        // them, the job fails with its last checkpoint, as the script promises without --worker-restarts.
        let killed = dir.appendingPathComponent("killed")
        let second = try submit(["--run-dir", killed.path, "--"] + training + ["--epochs", "8"], in: dir, conf: conf)
        waitForACheckpoint(killed)
        let steps = try CLI.run(
            ["--steps", "--jobs", second, "--noheader", "--format", "%i %j"], timeout: 30, environment: ["SLURM_CONF": conf],
            executable: which("squeue")!
        ).stdout
        let workersStep = steps.split(separator: "\n").map { $0.split(separator: " ") }.first { $0.last == "tether-workers" }?.first
        #expect(workersStep != nil, "no step named tether-workers in job \(second): \(steps)")
        let cancelled = Date()
        _ = try CLI.run(
            ["--signal=KILL", String(workersStep ?? "\(second).1")], timeout: 30, environment: ["SLURM_CONF": conf],
            executable: which("scancel")!)
        #expect(try finalState(second, conf: conf, within: 60) == "FAILED")
        let failed = (try? String(contentsOf: dir.appendingPathComponent("tether-\(second).out"), encoding: .utf8)) ?? ""
        #expect(failed.contains("its process ended"), "the killed workers are named by their connections' end: \(failed)")
        #expect(FileManager.default.fileExists(atPath: killed.path + "/checkpoint.safetensors"))
        print("slurm test: scancel --signal=KILL of the workers' step: job ended \(Int(Date().timeIntervalSince(cancelled))) s later")

        // One task killed with --worker-restarts 1 and an elastic coordinator: the other two go on.
        let elastic = dir.appendingPathComponent("elastic")
        let third = try submit(
            ["--run-dir", elastic.path, "--worker-restarts", "1", "--"] + training
                + ["--epochs", "8", "--min-workers", "2", "--max-restarts", "1", "--last-call", "3"], in: dir, conf: conf)
        waitForACheckpoint(elastic)
        let victim = try CLI.run(["-f", "tether worker .*slurm-\(third)"], executable: URL(fileURLWithPath: "/usr/bin/pgrep")).stdout
            .split(separator: "\n").compactMap { Int32($0) }.last
        #expect(victim.map { kill($0, SIGKILL) == 0 } ?? false, "no worker task of job \(third) to kill")
        #expect(try finalState(third, conf: conf, within: 240) == "COMPLETED")
        let carried = (try? String(contentsOf: dir.appendingPathComponent("tether-\(third).out"), encoding: .utf8)) ?? ""
        #expect(carried.contains("all 2 replicas agree") && carried.contains("done: 256 steps"), "\(carried)")
    }
}
