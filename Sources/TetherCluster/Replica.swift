import CTetherKernels
import CXXHash
import Foundation
import Logging
import TetherComm
import TetherMessages
import TetherNN
import TetherTensor
import TetherTrain

/// A worker's place in the ring: its forming (epoch), its rank, every rank's address and ring key.
struct Membership {
    var epoch: UInt32
    var rank: Int
    var ring: [String]
    /// The ring's public keys by rank (CURVE), or empty; this worker's secret key stays its own.
    var publicKeys: [String]
    var secretKey: String
    /// This rank's share of every global batch.
    var shard: Shard { Shard(rank: rank, count: ring.count) }
    /// The forming's name, the same on every member: a hash of its epoch, addresses and keys (distinct
    /// between coordinators when its addresses or keys are: same-host links name the coordinator's
    /// token, CURVE keys are drawn for each forming).
    var name: String {
        let text = "\(epoch)|" + ring.joined(separator: ",") + "|" + publicKeys.joined(separator: ",")
        return String(text.utf8.withContiguousStorageIfAvailable { XXH3_64bits($0.baseAddress, $0.count) } ?? 0, radix: 16)
    }
}

/// One replica on one ring: its step function (workload, optimizer, ring, exchange) and its state.
final class Replica {
    let training: Training
    var state: TrainingState
    /// The state the last step left, before that step's end-of-step work (evaluation moves `state` on):
    /// what a re-formed ring continues from, redoing that work.
    var boundary: TrainingState
    /// The last step's report, and every replica's state gathered for a checkpoint.
    var report: StepReport?
    var replicas: [(buffers: [Float], rng: RNG)] = []
    var replicaErrors: [[Float]]?
    /// The state carried into a re-formation (its step and checkpoint bytes), once encoded: a second
    /// re-formation before this one ends starts from the same.
    var carried: (step: Int, bytes: [UInt8])?
    /// The forming of the ring (`Membership.name`) whose step brought the state where it is: this
    /// ring's after its first step, before that the one the state came from ("-": none, a fresh run).
    /// Written into every encoding of the state (`tether.ring`), so the sample audit can follow a run's
    /// lineage through re-formations, lost coordinators and checkpoints.
    var stateRing: String

    init(training: Training, state: TrainingState, stateRing: String) {
        (self.training, self.state, boundary, self.stateRing) = (training, state, state, stateRing)
    }

    /// The checkpoint metadata of this replica's state: the workload's, and the ring it came from.
    var stateMetadata: [String: String] { training.workload.checkpointMetadata.merging([Self.ringKey: stateRing]) { $1 } }
    static let ringKey = "tether.ring"

    /// The ring a loaded state names as its own ("-": none, a checkpoint from before the key).
    static func ring(of loaded: Checkpoint.Loaded?) -> String { loaded?.file.metadata[ringKey] ?? "-" }

    /// `state` (the last step's boundary, or the state now) as checkpoint bytes, with the model's RNG
    /// (parameters and optimizer state do not move until a step's exchange has finished).
    func encoded(_ state: TrainingState) -> (step: Int, bytes: [UInt8]) {
        let model = training.workload.model
        var state = state
        state.rng = model.context.rng
        let file = Checkpoint.file(
            model: model, optimizer: training.optimizer, config: training.config, state: state, metadata: stateMetadata,
            compression: .init(factors: training.exchange.powerSGD?.factors, errors: nil))
        return (state.globalStep, [UInt8](Safetensors.encode(file)))
    }
}
