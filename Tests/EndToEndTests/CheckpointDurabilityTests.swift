import Foundation
import Testing

/// A checkpoint on disk is always the old one or the new one, whole. A disk that fills never costs the
/// last good checkpoint: on a 4 MB tmpfs, where mlp's 3.2 MB checkpoint (Adam's state included) fits
/// once but not twice, the first checkpoint is written, the next ones fail saying how much they needed,
/// training goes on, the run ends with an error naming the checkpoint kept, and once the disk has room
/// `--resume` trains on from it to the end. A process killed at any phase of a checkpoint's write
/// leaves the previous checkpoint or the new one, and `--resume` goes on from it.
@Suite(.serialized) struct CheckpointDurabilityTests {
    static let canMount = getuid() == 0 && dataInstalled

    /// A tmpfs of `megabytes` at a new folder (unmounted and removed by the returned closure).
    func smallDisk(_ name: String, megabytes: Int) throws -> (URL, () -> Void) {
        let dir = CLI.tempDir(name)
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        let mount = try CLI.run(
            ["-t", "tmpfs", "-o", "size=\(megabytes)m", "tmpfs", dir.path], executable: URL(fileURLWithPath: "/bin/mount"))
        try #require(mount.status == 0, "mount: \(mount.stderr)")
        return (
            dir,
            {
                _ = try? CLI.run(["-l", dir.path], executable: URL(fileURLWithPath: "/bin/umount"))
                try? FileManager.default.removeItem(at: dir)
            }
        )
    }

    @Test(
        .enabled(if: canMount, "needs root (to mount a small tmpfs) and Debian's dataset-fashion-mnist"), arguments: ["train", "simulate"])
    func aFullDiskCostsOnlyTheCheckpointsItRefuses(_ command: String) throws {
        let (disk, remove) = try smallDisk("full-\(command)", megabytes: 4)
        defer { remove() }
        let run = disk.appendingPathComponent("run")
        let flags = [
            "--model", "mlp", "--max-steps", "30", "--checkpoint-every", "10", "--train-limit", "2000", "--test-limit", "100",
            "--run-dir", run.path
        ]
        let full = try CLI.run([command] + (command == "simulate" ? ["--workers", "2"] : []) + flags, timeout: 120)
        let said = full.stdout + full.stderr
        #expect(full.status == 1, "\(said)")
        #expect(
            said.contains("checkpoint of step 20 not written: ") && said.contains("No space left on device (the file needs 3.2 MB;"),
            "\(said)")
        #expect(said.contains("the checkpoint of step 10 is kept; training goes on"), "\(said)")
        #expect(said.contains("the run ended at step 30") || said.contains("the job ended at step 30"), "\(said)")
        let metrics = try String(contentsOf: run.appendingPathComponent("metrics.jsonl"), encoding: .utf8)
        #expect(metrics.contains("\"event\":\"checkpoint_failed\""), "\(metrics)")
        // the checkpoint on disk is whole: step 10's
        let eval = try CLI.run(["eval", "--checkpoint", run.appendingPathComponent("checkpoint.safetensors").path])
        #expect(eval.status == 0 && eval.stdout.contains("mlp at step 10"), "\(eval.stdout)\(eval.stderr)")
        // room again: the run goes on from step 10 to its end
        let grown = try CLI.run(["-o", "remount,size=32m", disk.path], executable: URL(fileURLWithPath: "/bin/mount"))
        try #require(grown.status == 0, "remount: \(grown.stderr)")
        let resumed = try CLI.run(
            [command, "--resume", "--run-dir", run.path] + (command == "simulate" ? ["--workers", "2"] : []), timeout: 120)
        #expect(resumed.status == 0 && resumed.stdout.contains("done: 30 steps"), "\(resumed.stdout)\(resumed.stderr)")
    }

    @Test(
        .enabled(if: dataInstalled, "needs Debian's dataset-fashion-mnist"), arguments: ["mid-write", "before-rename", "before-folder-sync"]
    )
    func aKillDuringACheckpointsWriteLeavesTheOldOrTheNew(_ phase: String) throws {
        let dir = CLI.tempDir("kill-\(phase)")
        defer { try? FileManager.default.removeItem(at: dir) }
        let flags = [
            "--model", "mlp", "--max-steps", "30", "--checkpoint-every", "10", "--train-limit", "2000", "--test-limit", "100", "--run-dir",
            dir.path
        ]
        // killed while writing its second checkpoint (step 20's)
        let killed = try CLI.run(["train"] + flags, timeout: 120, environment: ["TETHER_TEST_KILL_DURING_WRITE": "\(phase):2"])
        #expect(killed.status == SIGKILL, "exit \(killed.status): \(killed.stderr)")
        let eval = try CLI.run(["eval", "--checkpoint", dir.appendingPathComponent("checkpoint.safetensors").path])
        let step = phase == "before-folder-sync" ? 20 : 10  // renamed into place, or not yet
        #expect(eval.status == 0 && eval.stdout.contains("mlp at step \(step)"), "\(phase): \(eval.stdout)\(eval.stderr)")
        let resumed = try CLI.run(["train", "--resume", "--run-dir", dir.path], timeout: 120)
        #expect(resumed.status == 0 && resumed.stdout.contains("done: 30 steps"), "\(resumed.stdout)\(resumed.stderr)")
        // the killed write's temporary file is gone with it
        let left = try FileManager.default.contentsOfDirectory(atPath: dir.path).filter { $0.contains(".tmp-") }
        #expect(left.isEmpty, "\(left)")
    }
}
