import CXXHash
import Foundation
import TetherNN
import TetherTensor

/// Where a run stands: enough, with the parameters and optimizer state, to continue exactly.
public struct TrainingState: Codable, Equatable, Sendable {
    public var epoch = 0
    /// Steps of `epoch` already taken: the data cursor into that epoch's plan.
    public var stepInEpoch = 0
    public var globalStep = 0
    /// The dropout RNG of the model context.
    public var rng: RNG
    /// The plateau schedule's factor on the learning rate and the best validation loss so far.
    public var lrFactor = 1.0
    public var bestValidationLoss: Double?
    public init(rng: RNG) { self.rng = rng }

    /// The rate of global step `t`: the schedule's, times the plateau factor.
    public func learningRate(_ schedule: LRSchedule, at t: Int, totalSteps: Int) -> Double {
        schedule.lr(at: t, totalSteps: totalSteps) * lrFactor
    }

    /// After an epoch's validation loss: under the plateau schedule, the rate is multiplied by gamma when
    /// the loss did not improve on the best so far. Returns the best it failed to beat, if it was cut.
    public mutating func recordValidation(loss: Double, schedule: LRSchedule) -> Double? {
        guard schedule.kind == .plateau else { return nil }
        defer { bestValidationLoss = min(bestValidationLoss ?? .infinity, loss) }
        guard let best = bestValidationLoss, !(loss < best) else { return nil }
        lrFactor *= schedule.gamma
        return best
    }
}

/// A training checkpoint: one safetensors file that PyTorch can load. Tensors: every parameter under its
/// PyTorch-style name, every buffer ("layers.3.running_mean"), and the optimizer state as
/// "optimizer.<state>.<parameter>"; all F32. Metadata: "tether.format", "tether.model",
/// "tether.config" and "tether.state" (JSON), "tether.optimizer_steps".
public enum Checkpoint {
    public static let fileName = "checkpoint.safetensors"
    static let replicaRNGKey = "tether.replica_rngs"
    static let format = "tether-checkpoint-1"

    /// The buffers of a model in checkpoint order, flattened: what replicas exchange so that rank 0's
    /// checkpoint holds every replica's (`replicaBuffers`).
    public static func buffers(of model: any Model<Float>) -> [Float] {
        model.bufferOwners.flatMap { prefix, owner in owner.bufferNames.flatMap { owner.buffer(named: $0)! } }
    }

    /// The values of one stream's row in every buffer together, when all of the model's buffers have a
    /// row per stream (0 otherwise): a replica with k streams holds k times this many.
    public static func bufferRowValues(of model: any Model<Float>) -> Int {
        var total = 0
        for (_, owner) in model.bufferOwners {
            for name in owner.bufferNames {
                guard let perRow = owner.bufferRowLength(named: name) else { return 0 }
                total += perRow
            }
        }
        return total
    }

    /// `replicaBuffers`, when given, holds every replica's `buffers(of:)` in rank order: each buffer is
    /// then stored as the concatenation over ranks (for a language model, exactly the carried state of
    /// one process running every rank's streams, however they were dealt), and `replicaRNGs` (each
    /// rank's dropout RNG) goes into the metadata, so a cluster resumes exactly.
    /// What a compressed gradient exchange carries from step to step (`--compression`): PowerSGD's Q
    /// factors (the same on every replica) and each replica's error feedback, in rank order.
    public struct CompressionState {
        public var factors: [Float]?
        public var errors: [[Float]]?
        public init(factors: [Float]?, errors: [[Float]]?) { (self.factors, self.errors) = (factors, errors) }
    }
    static let factorsKey = "compression.powersgd_factors", errorsKey = "compression.error_feedback"

    public static func file(
        model: any Model<Float>, optimizer: Optimizer<Float>?, config: TrainingConfig, state: TrainingState,
        metadata: [String: String] = [:], replicaBuffers: [[Float]]? = nil, replicaRNGs: [RNG]? = nil,
        compression: CompressionState? = nil
    ) -> Safetensors.File {
        var f = Safetensors.File()
        if let factors = compression?.factors { f.tensors[factorsKey] = .init(floats: factors, shape: [factors.count]) }
        if let errors = compression?.errors, let first = errors.first {
            f.tensors[errorsKey] = .init(floats: errors.flatMap { $0 }, shape: [errors.count, first.count])
        }
        let values = model.arena.valuesAsFloats()
        for e in model.arena.layout.entries {
            f.tensors[e.name] = .init(floats: Array(values[e.offset..<e.offset + e.count]), shape: e.shape)
        }
        // Where each replica's next buffer starts; a replica's buffer is as long as this one's, scaled by
        // the replicas' totals (replicas with more streams hold longer rows-per-stream buffers).
        let ownTotal = buffers(of: model).count
        var offsets = [Int](repeating: 0, count: replicaBuffers?.count ?? 0)
        for (prefix, owner) in model.bufferOwners {
            for name in owner.bufferNames {
                let b = owner.buffer(named: name)!
                var all = b
                if let replicas = replicaBuffers {
                    all = []
                    for (r, replica) in replicas.enumerated() {
                        let n = ownTotal == 0 ? 0 : b.count * replica.count / ownTotal
                        all += replica[offsets[r]..<offsets[r] + n]
                        offsets[r] += n
                    }
                }
                f.tensors[prefix + name] = .init(floats: all, shape: [all.count])
            }
        }
        if let replicaRNGs { f.metadata[replicaRNGKey] = String(data: try! JSONEncoder().encode(replicaRNGs), encoding: .utf8)! }
        if let optimizer {
            for t in optimizer.stateTensors {
                f.tensors[t.key] = .init(floats: Array(UnsafeBufferPointer(start: t.values, count: t.count)), shape: t.shape)
            }
            f.metadata["tether.optimizer_steps"] = String(optimizer.stepCount)
        }
        for (k, v) in metadata { f.metadata[k] = v }
        f.metadata["tether.format"] = format
        f.metadata["tether.model"] = model.kind
        f.metadata["tether.config"] = String(data: try! JSONEncoder().encode(config), encoding: .utf8)!
        f.metadata["tether.state"] = String(data: try! JSONEncoder().encode(state), encoding: .utf8)!
        f.metadata[checksumsKey] = String(data: try! JSONEncoder().encode(checksums(of: f)), encoding: .utf8)!
        return f
    }

    /// XXH3-64 of each tensor's data, as hex, stored under `checksumsKey`: a flipped bit in a stored
    /// checkpoint is refused on load, naming the tensor (a checksum against corruption, not a signature).
    static let checksumsKey = "tether.checksums"
    static func checksums(of file: Safetensors.File) -> [String: String] {
        file.tensors.mapValues { t in String(t.data.withUnsafeBytes { XXH3_64bits($0.baseAddress, $0.count) }, radix: 16) }
    }

    /// A checkpoint file read and checked for the fields every checkpoint has.
    public struct Loaded {
        public let path: String
        public let file: Safetensors.File
        public let model: String
        public let config: TrainingConfig
        public let state: TrainingState

        public init(_ url: URL) throws {
            try self.init(try Safetensors.read(url), path: url.path)
        }

        /// A checkpoint received as bytes (a worker's resume checkpoint); `source` names it in errors.
        public init(bytes: Data, source: String) throws {
            try self.init(try Safetensors.decode(bytes, source: source), path: source)
        }

        init(_ file: Safetensors.File, path: String) throws {
            (self.file, self.path) = (file, path)
            func fail(_ why: String) -> CheckpointError { CheckpointError(path: path, reason: why) }
            guard file.metadata["tether.format"] == format else {
                throw fail(
                    "not a Tether checkpoint (metadata tether.format is \(file.metadata["tether.format"].map { "\"\($0)\"" } ?? "missing"), expected \"\(format)\")"
                )
            }
            if let json = file.metadata[Checkpoint.checksumsKey] {
                guard let stored = try? JSONDecoder().decode([String: String].self, from: Data(json.utf8)) else {
                    throw fail("metadata \(Checkpoint.checksumsKey) is not a map of tensor names to checksums")
                }
                let actual = Checkpoint.checksums(of: file)
                if let bad = actual.keys.sorted().first(where: { stored[$0] != actual[$0] }) {
                    throw fail(
                        "tensor \(bad) is corrupt: its data does not match the checksum stored with it"
                            + (stored[bad] == nil ? " (none is stored)" : ""))
                }
                if let gone = stored.keys.sorted().first(where: { actual[$0] == nil }) { throw fail("tensor \(gone) is missing") }
            }
            guard let model = file.metadata["tether.model"] else { throw fail("metadata tether.model is missing") }
            self.model = model
            do {
                config = try JSONDecoder().decode(TrainingConfig.self, from: Data((file.metadata["tether.config"] ?? "").utf8))
                state = try JSONDecoder().decode(TrainingState.self, from: Data((file.metadata["tether.state"] ?? "").utf8))
            } catch {
                throw fail("metadata tether.config or tether.state is not valid: \(error)")
            }
        }

        /// Loads parameters and buffers into `model` (and the optimizer state, if given). Refuses a model
        /// of another kind, and any missing or misshapen tensor, naming it.
        /// Rank `shard.rank`'s dropout RNG, when the checkpoint came from a cluster.
        public func replicaRNG(_ shard: Shard) -> RNG? {
            guard let json = file.metadata[Checkpoint.replicaRNGKey],
                let all = try? JSONDecoder().decode([RNG].self, from: Data(json.utf8)), all.count == shard.count
            else { return nil }
            return all[shard.rank]
        }

        /// PowerSGD's Q factors, when the run compressed with it.
        public func powerSGDFactors() throws -> [Float]? { try file.tensors[Checkpoint.factorsKey]?.floats() }

        /// Rank `shard.rank`'s error feedback (`count` values): its own, when the checkpoint holds one
        /// per replica of as many replicas; otherwise rank 0 carries their sum (nothing lost) and the
        /// others start from none. nil when the checkpoint holds none.
        public func errorFeedback(_ shard: Shard, count: Int) throws -> [Float]? {
            guard let t = file.tensors[Checkpoint.errorsKey] else { return nil }
            guard t.shape.count == 2, t.shape[1] == count else {
                throw CheckpointError(
                    path: path, reason: "tensor \(Checkpoint.errorsKey) has shape \(t.shape), the model needs [replicas, \(count)]")
            }
            let all = try t.floats(), replicas = t.shape[0]
            if replicas == shard.count { return Array(all[shard.rank * count..<(shard.rank + 1) * count]) }
            guard shard.rank == 0 else { return [Float](repeating: 0, count: count) }
            return (0..<count).map { i in Float((0..<replicas).reduce(0.0) { $0 + Double(all[$1 * count + i]) }) }
        }

        /// A buffer stored for every replica (count x the model's own) is sliced to this shard's part; one
        /// of a row per stream, to the rows of this shard's streams (`Shard.part`), whatever the count.
        public func restore(into model: any Model<Float>, optimizer: Optimizer<Float>?, shard: Shard = .whole) throws {
            func fail(_ why: String) -> CheckpointError { CheckpointError(path: path, reason: why) }
            guard self.model == model.kind else { throw fail("it holds a \(self.model) model, not \(model.kind)") }
            func load(_ name: String, shape: [Int], into p: UnsafeMutablePointer<Float>) throws {
                guard let t = file.tensors[name] else { throw fail("tensor \(name) is missing") }
                guard t.shape == shape else { throw fail("tensor \(name) has shape \(t.shape), the model needs \(shape)") }
                let floats = try t.floats()
                floats.withUnsafeBufferPointer { if !$0.isEmpty { p.update(from: $0.baseAddress!, count: $0.count) } }
            }
            for e in model.arena.layout.entries { try load(e.name, shape: e.shape, into: model.arena.values + e.offset) }
            for (prefix, owner) in model.bufferOwners {
                for name in owner.bufferNames {
                    guard let t = file.tensors[prefix + name] else { throw fail("buffer \(prefix + name) is missing") }
                    var floats = try t.floats()
                    let own = owner.buffer(named: name)!.count
                    if let perRow = owner.bufferRowLength(named: name), floats.count != own, perRow > 0, floats.count % perRow == 0 {
                        // a row per stream over all replicas (however many): this shard's part of the streams
                        let rows = shard.part(of: floats.count / perRow)
                        floats = Array(floats[rows.lowerBound * perRow..<rows.upperBound * perRow])
                    } else if own > 0, floats.count > own, floats.count % own == 0 {
                        // one per replica: this rank's, or (another number of replicas: eval, a resize)
                        // the replica of its rank modulo theirs; rank 0's for one process, as DDP keeps
                        // every replica's buffers rank 0's
                        let replica = shard.rank % (floats.count / own)
                        floats = Array(floats[replica * own..<(replica + 1) * own])
                    }
                    guard owner.loadBuffer(named: name, floats) else {
                        throw fail("buffer \(prefix + name) holds \(floats.count) values, the model needs \(own) (per replica)")
                    }
                }
            }
            if let optimizer {
                for t in optimizer.stateTensors { try load(t.key, shape: t.shape, into: t.values) }
                guard let steps = file.metadata["tether.optimizer_steps"].flatMap(Int.init) else {
                    throw fail("metadata tether.optimizer_steps is missing")
                }
                optimizer.stepCount = steps
            }
        }
    }
}

public struct CheckpointError: Error, CustomStringConvertible {
    public let path: String, reason: String
    public var description: String { "checkpoint \(path): \(reason)" }
}
