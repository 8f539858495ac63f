import Foundation
import TetherMessages
import TetherNN
import TetherTrain

/// Checks and writes rank 0's checkpoints on a thread of its own, one at a time in the order they
/// came: a write's fsyncs can take seconds on a busy disk, and the coordinator's loop meanwhile goes
/// on answering, deciding and sending heartbeats (a stalled loop looked like a lost coordinator to
/// workers with a short --coordinator-timeout). The loop collects what was written with `finished()`,
/// and waits for the rest with `waitUntilIdle()` before it reports the job's end or failure.
final class CheckpointWriter: @unchecked Sendable {
    /// One write's result: the checkpoint as checked, or why it is not on disk.
    struct Outcome {
        let step: Int
        let result: Result<Checkpoint.Loaded, any Error>
    }

    private let queue = DispatchQueue(label: "tether.checkpoint-writer")
    private let lock = NSLock()
    private var outcomes: [Outcome] = []

    /// Queues `data`: checked like any checkpoint file (fields, shapes, checksums, this job's model
    /// at this step), `tether.workers` set to `workers`, then written atomically to `url`.
    func submit(_ data: CheckpointData, model: String, workers: Int, to url: URL) {
        queue.async {
            let step = Int(data.globalStep)
            let result = Result<Checkpoint.Loaded, any Error> {
                let loaded = try Checkpoint.Loaded(bytes: Data(data.safetensors), source: "rank 0's checkpoint of step \(step)")
                guard loaded.model == model, loaded.state.globalStep == step else {
                    throw ClusterError(
                        "rank 0 sent a checkpoint of a \(loaded.model.prefix(40)) model at step \(loaded.state.globalStep) for step \(step) of this \(model) job"
                    )
                }
                var file = loaded.file
                // the global batch's workers, not the ring's members now: an elastic ring may be smaller
                file.metadata["tether.workers"] = String(workers)
                try Safetensors.write(file, to: url)
                return loaded
            }
            self.lock.withLock { self.outcomes.append(Outcome(step: step, result: result)) }
        }
    }

    /// The writes ended since the last call, in order.
    func finished() -> [Outcome] {
        lock.withLock {
            defer { outcomes = [] }
            return outcomes
        }
    }

    /// Waits for every queued write to end, and returns the ones not yet collected.
    func waitUntilIdle() -> [Outcome] {
        queue.sync {}
        return finished()
    }
}
