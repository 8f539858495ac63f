import CTetherKernels
import CXXHash
import Foundation
import Logging
import TetherComm
import TetherMessages
import TetherGradients
import TetherObservability
import TetherNN
import TetherTensor
import TetherTrain

/// The step a replica runs, shared by every worker: the cluster's half of the training loop.
final class Training {
    let workload: any Workload
    let optimizer: Optimizer<Float>
    let ring: Ring
    let config: TrainingConfig
    let exchange: GradientExchange
    let totalSteps: Int
    /// This forming of the ring, the same name on every member (the sample audit's RING).
    let ringName: String

    init(workload: any Workload, optimizer: Optimizer<Float>, ring: Ring, membership: Membership, config: TrainingConfig, bucketBytes: Int)
    {
        (self.workload, self.optimizer, self.ring, self.config) = (workload, optimizer, ring, config)
        ringName = membership.name
        let compression = config.resolvedCompression
        let powerSGD =
            compression != .powersgd
            ? nil
            : PowerSGD(
                layout: workload.model.arena.layout, rank: config.resolvedPowerSGDRank,
                startStep: config.resolvedPowerSGDStartStep, seed: config.seed)
        exchange = GradientExchange(
            ring: ring, model: workload.model, bucketBytes: bucketBytes, wire: compression.wire, powerSGD: powerSGD,
            errorFeedback: config.errorFeedback ?? true)
        totalSteps = config.totalSteps(stepsPerEpoch: workload.stepsPerEpoch)
    }

    func step(_ state: inout TrainingState) throws -> StepReport {
        let waitedBefore = ring.statistics.waiting
        let began = exchange.tracing ? GradientExchange.microsecondsNow() : 0
        try workload.fetch(epoch: state.epoch)
        if let audit = SampleAudit.shared, let samples = workload.trainingSamples(epoch: state.epoch, step: state.stepInEpoch) {
            audit.record(ring: ringName, globalStep: state.globalStep + 1, epoch: state.epoch, samples: samples)
        }
        exchange.begin(step: UInt64(state.globalStep))
        let lr = state.learningRate(config.schedule, at: state.globalStep, totalSteps: totalSteps)
        let (stats, times) = try workload.train(epoch: state.epoch, step: state.stepInEpoch, optimizer: optimizer, lr: lr) {
            try exchange.finish()
        }
        state.stepInEpoch += 1
        state.globalStep += 1
        let waited = (ring.statistics.waiting - waitedBefore).components
        var report = StepReport(
            globalStep: UInt64(state.globalStep), epoch: UInt32(state.epoch), lossSum: stats.lossSum, count: UInt64(stats.count),
            correct: UInt64(stats.correct), computeSeconds: times.compute, allreduceSeconds: times.exchange,
            optimizerSeconds: times.optimizer, parameterHash: 0,
            waitSeconds: Double(waited.seconds) + Double(waited.attoseconds) * 1e-18)
        report.learningRate = lr
        (report.denseBytesSent, report.sparseBytesSent) = (UInt64(exchange.sent.dense), UInt64(exchange.sent.sparse))
        if exchange.tracing { report.spans = Timeline.stepSpans(began: began, times: times, collectives: exchange.spans) }
        return report
    }

    /// Every replica's buffers (a language model's carried state) and dropout RNG, in rank order.
    func gatherReplicaState(step: UInt64) throws -> [(buffers: [Float], rng: RNG)] {
        let model = workload.model
        let mine = Checkpoint.buffers(of: model), rowValues = Checkpoint.bufferRowValues(of: model)
        var payload = [UInt8](try JSONEncoder().encode(model.context.rng))
        payload.insert(contentsOf: withUnsafeBytes(of: UInt32(payload.count).littleEndian, Array.init), at: 0)
        mine.withUnsafeBytes { payload += $0 }
        return try ring.allGather(payload, step: step).enumerated().map { r, bytes in
            guard bytes.count >= 4 else { throw ClusterError("rank \(r)'s replica state is \(bytes.count) bytes") }
            let n = Int(bytes[0..<4].withUnsafeBytes { $0.loadUnaligned(as: UInt32.self).littleEndian })
            // as many values as this replica's, or (buffers of a row per stream) whole rows of its own
            let values = (bytes.count - 4 - n) / 4
            guard bytes.count >= 4 + n, (bytes.count - 4 - n) % 4 == 0, values == mine.count || (rowValues > 0 && values % rowValues == 0)
            else {
                throw ClusterError("rank \(r)'s replica state does not hold \(mine.count) buffer values")
            }
            let rng = try JSONDecoder().decode(RNG.self, from: Data(bytes[4..<4 + n]))
            let buffers = bytes[(4 + n)...].withUnsafeBytes { Array($0.bindMemory(to: Float.self)) }
            return (buffers, rng)
        }
    }

    /// Every replica's error feedback in rank order, for rank 0's checkpoint (nil: none kept).
    func gatherErrorFeedback(step: UInt64) throws -> [[Float]]? {
        guard let mine = exchange.errorFeedback else { return nil }
        return try ring.allGather(mine.withUnsafeBytes { Array($0) }, step: step).enumerated().map { r, bytes in
            guard bytes.count == mine.count * 4 else {
                throw ClusterError("rank \(r)'s error feedback is \(bytes.count) bytes, not \(mine.count) values")
            }
            return bytes.withUnsafeBytes { Array($0.bindMemory(to: Float.self)) }
        }
    }

    /// PowerSGD's factors from `loaded` (a checkpoint, or the state a re-formed ring shares), and the
    /// error feedback: `ownErrors` (what this worker carried through) or else this shard's in `loaded`.
    func restoreCompression(from loaded: Checkpoint.Loaded, shard: Shard, ownErrors: [Float]?) throws {
        if let powerSGD = exchange.powerSGD, let factors = try loaded.powerSGDFactors(), !powerSGD.restore(factors: factors) {
            throw ClusterError(
                "\(loaded.path): it holds \(factors.count) PowerSGD factor values, this model's rank-\(powerSGD.rank) factors are \(powerSGD.factors.count)"
            )
        }
        if let errors = try ownErrors ?? loaded.errorFeedback(shard, count: workload.model.arena.count) {
            _ = exchange.restore(errorFeedback: errors)
        }
    }

    /// This replica's share of the evaluation; at an epoch's end the loss is also summed over the ring
    /// so every replica takes the same plateau-schedule decision (a run's final partial epoch takes none).
    func evaluate(epoch: Int, state: inout TrainingState, epochEnds: Bool) throws -> EvalReport {
        try workload.fetch(epoch: nil)
        let report = workload.evaluate()
        if epochEnds {
            var sums = [report.stats.lossSum, Double(report.stats.count)]
            _ = try sums.withUnsafeMutableBufferPointer {
                try ring.allReduce($0, step: UInt64(state.globalStep), bucket: BucketID.evaluationLoss)
            }
            _ = state.recordValidation(loss: sums[1] > 0 ? sums[0] / sums[1] : .nan, schedule: config.schedule)
        }
        return EvalReport(
            epoch: UInt32(epoch), lossSum: report.stats.lossSum, count: UInt64(report.stats.count),
            correct: UInt64(report.stats.correct), scores: report.scores, labels: report.labels,
            squaredErrorSum: report.stats.squaredError, absoluteErrorSum: report.stats.absoluteError)
    }
}
