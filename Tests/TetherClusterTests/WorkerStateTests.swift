import Testing
@testable import TetherCluster
import TetherComm

@Suite struct WorkerStateTests {
    func plan(rank: Int = 0, perEpoch: Int = 3, total: Int = 7, hashEvery: Int = 2, checkpointEvery: Int = 0) -> WorkerState.Plan {
        .init(rank: rank, stepsPerEpoch: perEpoch, totalSteps: total, hashEvery: hashEvery, checkpointEvery: checkpointEvery)
    }

    /// Rank 0 over 7 steps of 3 per epoch: hashes every 2 steps and at epoch ends and the end,
    /// evaluations after steps 3 and 6, checkpoints then and at the end; then it waits for Finish.
    @Test func rankZeroThroughARun() {
        var s = WorkerState(plan())
        #expect(s.handle(.started) == [.trainNextStep])
        var log: [[WorkerState.Directive]] = []
        for step in 1...7 { log.append(s.handle(.stepFinished(globalStep: step))) }
        #expect(log[0] == [.reportStep(withHash: false), .trainNextStep])
        #expect(log[1] == [.reportStep(withHash: true), .trainNextStep])
        #expect(log[2] == [.reportStep(withHash: true), .evaluate(epoch: 0), .shareReplicaState, .sendCheckpoint, .trainNextStep])
        #expect(log[5] == [.reportStep(withHash: true), .evaluate(epoch: 1), .shareReplicaState, .sendCheckpoint, .trainNextStep])
        // the run ends within epoch 3 (step 7 of 9): evaluated there, the training state left as it is
        #expect(log[6] == [.reportStep(withHash: true), .evaluate(epoch: 2, epochEnds: false), .shareReplicaState, .sendCheckpoint, .awaitFinish])
        #expect(s.phase == .waitingForFinish)
        #expect(s.handle(.coordinator(.heartbeat)).isEmpty)
        #expect(s.handle(.coordinator(.finish)) == [.exit])
        #expect(s.phase == .finished)
    }

    /// After a re-formation the replica holds the agreed step, maybe with a new rank: the end-of-step
    /// work of that step is done again (rank 0 of the new ring checkpoints), then training goes on; at
    /// the run's first step there is nothing to redo; a step outside the run fails.
    @Test func aReformedRingRedoesTheEndOfItsStep() {
        var s = WorkerState(plan(rank: 2, hashEvery: 5))
        _ = s.handle(.started)
        for step in 1...2 { _ = s.handle(.stepFinished(globalStep: step)) }
        // rank 2 becomes rank 0 holding step 3 (an epoch's end): report, evaluation, checkpoint, next step
        #expect(s.handle(.reformed(globalStep: 3, rank: 0)) == [.reportStep(withHash: true), .evaluate(epoch: 0), .shareReplicaState, .sendCheckpoint, .trainNextStep])
        #expect(s.globalStep == 3 && s.plan.rank == 0 && s.phase == .training)
        #expect(s.handle(.stepFinished(globalStep: 4)) == [.reportStep(withHash: false), .trainNextStep])
        // as rank 1 at step 7, the run's last: its final evaluation, no checkpoint of its own, then Finish
        #expect(s.handle(.reformed(globalStep: 7, rank: 1)) == [.reportStep(withHash: true), .evaluate(epoch: 2, epochEnds: false), .shareReplicaState, .awaitFinish])
        #expect(s.phase == .waitingForFinish)

        var resumed = WorkerState(plan(), globalStep: 3)
        _ = resumed.handle(.started)
        #expect(resumed.handle(.reformed(globalStep: 3, rank: 1)) == [.trainNextStep], "nothing of this run to redo")
        #expect(resumed.handle(.reformed(globalStep: 2, rank: 1)) == [.fail("the re-formed ring holds step 2, outside this run's 3...7")])
    }

    /// A step whose exchange agreed to stop ends the run there: reported with the hash, rank 0's
    /// checkpoint of it (every rank shares its state for it), then Finish; at an epoch end, evaluated first.
    @Test func aGracefulStopEndsTheRunAfterTheAgreedStep() {
        for (rank, stopAt) in [(0, 2), (1, 2), (0, 3)] {
            var s = WorkerState(plan(rank: rank, hashEvery: 5))
            _ = s.handle(.started)
            for step in 1..<stopAt { _ = s.handle(.stepFinished(globalStep: step)) }
            let expected: [WorkerState.Directive] = [.reportStep(withHash: true)] + (stopAt == 3 ? [.evaluate(epoch: 0)] : [])
                + [.shareReplicaState] + (rank == 0 ? [.sendCheckpoint] : []) + [.awaitFinish]
            #expect(s.handle(.stepFinished(globalStep: stopAt, stopping: true)) == expected, "rank \(rank), stop at \(stopAt)")
            #expect(s.phase == .waitingForFinish)
            #expect(s.handle(.coordinator(.finish)) == [.exit])
        }
    }

    @Test func otherRanksSendNoCheckpointsAndPeriodicCheckpointsFollowThePlan() {
        var other = WorkerState(plan(rank: 1))
        _ = other.handle(.started)
        let all = (1...7).flatMap { other.handle(.stepFinished(globalStep: $0)) }
        #expect(!all.contains(.sendCheckpoint))
        #expect(all.filter { $0 == .shareReplicaState }.count == 3) // it still takes part in the gathering
        var periodic = WorkerState(plan(perEpoch: 100, total: 10, hashEvery: 0, checkpointEvery: 4))
        _ = periodic.handle(.started)
        let sent = (1...10).filter { periodic.handle(.stepFinished(globalStep: $0)).contains(.sendCheckpoint) }
        #expect(sent == [4, 8, 10])
    }

    @Test func aResumedRunAtItsEndOnlyWaitsAndAnAbortFails() {
        var done = WorkerState(plan(), globalStep: 7)
        #expect(done.handle(.started) == [.awaitFinish])
        var s = WorkerState(plan())
        _ = s.handle(.started)
        #expect(s.handle(.coordinator(.abort(.init(originRank: -1, reason: "rank 2 died")))) == [.fail("the coordinator stopped the job: rank 2 died")])
        #expect(s.handle(.stepFinished(globalStep: 1)).isEmpty)
        var skipped = WorkerState(plan())
        _ = skipped.handle(.started)
        #expect(skipped.handle(.stepFinished(globalStep: 2)) == [.fail("step 2 finished after step 0 of 7")])
    }

    @Test func livenessWatchNamesTheSilence() {
        var w = LivenessWatch(timeout: 10, now: 100)
        #expect(w.silence(at: 109) == nil)
        w.heard(at: 105)
        #expect(w.silence(at: 114) == nil)
        #expect(w.silence(at: 116) == 11)
    }
}
