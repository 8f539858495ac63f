import Testing
@testable import TetherCluster
import TetherComm
import TetherMessages

@Suite struct WorkerStateTests {
    func plan(rank: Int = 0, perEpoch: Int = 3, total: Int = 7, hashEvery: Int = 2, checkpointEvery: Int = 0) -> WorkerState.Plan {
        .init(rank: rank, stepsPerEpoch: perEpoch, totalSteps: total, hashEvery: hashEvery, checkpointEvery: checkpointEvery)
    }

    /// A worker through launch, assignment, set-up and Start at `step` (elastic in place unless told).
    func training(_ p: WorkerState.Plan? = nil, at step: Int = 0, inPlace: Bool = true, keepsState: Bool = false) -> WorkerState {
        let p = p ?? plan()
        var s = WorkerState()
        #expect(s.handle(.launched) == [.join(carrying: false)])
        #expect(s.handle(.assigned(rank: p.rank, ringEpoch: 0, reformInPlace: inPlace)) == [.setUp(from: .data)] && s.phase == .settingUp)
        #expect(s.handle(.replicaReady(p, globalStep: step, redoEndOfStep: false, keepsState: keepsState)) == [.sendReady])
        let first = s.handle(.coordinator(.start))
        #expect(first == [step < p.totalSteps ? .trainNextStep(votes: []) : .awaitFinish])
        return s
    }

    func reform(_ epoch: UInt32, rank: UInt32, atBoundary: Bool = false) -> Reform {
        .init(ringEpoch: epoch, rank: rank, ring: ["tcp://a:1", "tcp://b:1", "tcp://c:1"], reason: "r", atBoundary: atBoundary)
    }

    /// Rank 0 over 7 steps of 3 per epoch: hashes every 2 steps and at epoch ends and the end,
    /// evaluations after steps 3 and 6, checkpoints then and at the end; then it waits for Finish.
    @Test func rankZeroThroughARun() {
        var s = training()
        var log: [[WorkerState.Directive]] = []
        for step in 1...7 { log.append(s.handle(.stepFinished(globalStep: step))) }
        let next = WorkerState.Directive.trainNextStep(votes: [])
        #expect(log[0] == [.reportStep(withHash: false), next])
        #expect(log[1] == [.reportStep(withHash: true), next])
        #expect(log[2] == [.reportStep(withHash: true), .evaluate(epoch: 0), .shareReplicaState, .sendCheckpoint, next])
        #expect(log[5] == [.reportStep(withHash: true), .evaluate(epoch: 1), .shareReplicaState, .sendCheckpoint, next])
        // the run ends within epoch 3 (step 7 of 9): evaluated there, the training state left as it is
        #expect(
            log[6] == [
                .reportStep(withHash: true), .evaluate(epoch: 2, epochEnds: false), .shareReplicaState, .sendCheckpoint, .awaitFinish
            ])
        #expect(s.phase == .waitingForFinish)
        #expect(s.handle(.coordinator(.heartbeat)).isEmpty)
        #expect(s.handle(.coordinator(.finish)) == [.exit])
        #expect(s.phase == .finished)
    }

    /// A member lost during the last step's end-of-step work (the replica state rank 0's checkpoint
    /// gathers over the ring): the survivors re-form and redo that work, the checkpoint included, then
    /// wait for Finish. (Found on emulated hosts: the job failed with "unexpected ringFailed while
    /// waitingForFinish" instead of ending.)
    @Test func aLossAfterTheLastStepReformsAndRedoesItsEndOfStepWork() {
        var s = training(plan(rank: 1, hashEvery: 5))
        for step in 1...6 { _ = s.handle(.stepFinished(globalStep: step)) }
        #expect(
            s.handle(.stepFinished(globalStep: 7)) == [
                .reportStep(withHash: true), .evaluate(epoch: 2, epochEnds: false), .shareReplicaState, .awaitFinish
            ])
        #expect(s.phase == .waitingForFinish)
        #expect(s.handle(.ringFailed("rank 2 is gone", computing: false)) == [.awaitReform(urgent: true)])
        #expect(s.phase == .reforming && s.abandonedStep == 0, "no step was in flight")
        #expect(s.handle(.reformReceived(reform(1, rank: 0))) == [.reform(reform(1, rank: 0))])
        #expect(s.handle(.replicaReady(plan(rank: 0, hashEvery: 5), globalStep: 7, redoEndOfStep: true, keepsState: false)) == [.sendReady])
        #expect(
            s.handle(.coordinator(.start)) == [
                .reportStep(withHash: true), .evaluate(epoch: 2, epochEnds: false), .shareReplicaState, .sendCheckpoint, .awaitFinish
            ])
        #expect(s.handle(.coordinator(.finish)) == [.exit] && s.phase == .finished)

        var strict = training(plan(), inPlace: false)
        for step in 1...7 { _ = strict.handle(.stepFinished(globalStep: step)) }
        #expect(strict.handle(.ringFailed("rank 2 is gone")) == [.fail("rank 2 is gone")], "not elastic in place: the job fails")
    }

    /// A failure mid-step: the step in flight is abandoned (and counted for Ready), the worker waits
    /// for a Reform after the failure (a join's, sent before, does not do), forms that ring, and after
    /// Start redoes the end-of-step work of the step the ring agreed on (rank 2 became rank 0: it
    /// checkpoints); at the run's first step there is nothing to redo.
    @Test func aFailureMidStepReformsAndRedoesTheEndOfTheAgreedStep() {
        var s = training(plan(rank: 2, hashEvery: 5))
        for step in 1...2 { _ = s.handle(.stepFinished(globalStep: step)) }
        #expect(s.handle(.ringFailed("rank 1 is gone", computing: true)) == [.awaitReform(urgent: true)])
        #expect(s.phase == .reforming && s.abandonedStep == 3)
        #expect(
            s.handle(.reformReceived(reform(1, rank: 0, atBoundary: true))) == [.awaitReform(urgent: true)],
            "a join's Reform holds the lost member")
        #expect(s.handle(.reformReceived(reform(2, rank: 0))) == [.reform(reform(2, rank: 0))])
        #expect(s.ringEpoch == 2 && s.rank == 0)
        // one survivor had finished step 3: all take its state
        #expect(s.handle(.replicaReady(plan(rank: 0, hashEvery: 5), globalStep: 3, redoEndOfStep: true, keepsState: false)) == [.sendReady])
        #expect(s.abandonedStep == 3, "Ready says which step was given up")
        #expect(
            s.handle(.coordinator(.start)) == [
                .reportStep(withHash: true), .evaluate(epoch: 0), .shareReplicaState, .sendCheckpoint, .trainNextStep(votes: [])
            ])
        #expect(s.abandonedStep == 0 && s.globalStep == 3 && s.phase == .training)
        #expect(s.handle(.stepFinished(globalStep: 4)) == [.reportStep(withHash: false), .trainNextStep(votes: [])])

        var resumed = training(at: 3)
        _ = resumed.handle(.ringFailed("x"))
        _ = resumed.handle(.reformReceived(reform(1, rank: 1)))
        _ = resumed.handle(.replicaReady(plan(rank: 1), globalStep: 3, redoEndOfStep: true, keepsState: false))
        #expect(resumed.handle(.coordinator(.start)) == [.trainNextStep(votes: [])], "nothing of this run to redo")
        _ = resumed.handle(.ringFailed("x"))
        _ = resumed.handle(.reformReceived(reform(2, rank: 1)))
        #expect(
            resumed.handle(.replicaReady(plan(rank: 1), globalStep: 2, redoEndOfStep: true, keepsState: false))
                == [.fail("the replica holds step 2, outside this run's 3...7")])
    }

    /// Two ranks of a resumed coordinator's ring, set up from its checkpoint of step 3: one fresh, one
    /// that trained under the coordinator before (from step 0) and outlived it. A member lost at once
    /// re-forms them at step 3; neither redoes step 3's end-of-step work (the checkpoint's), so both
    /// go on to the same collective. Found by cluster/chaos: the one that kept its first step from the
    /// old coordinator gathered the replicas' state while the other all-reduced the next step.
    @Test func ranksOfANewCoordinatorAgreeOnWhatAReformationRedoes() {
        var veteran = training(plan(checkpointEvery: 3), keepsState: true)
        for step in 1...2 { _ = veteran.handle(.stepFinished(globalStep: step)) }
        _ = veteran.handle(.coordinatorSilent("silent"))
        var fresh = WorkerState()
        _ = fresh.handle(.launched)
        for (i, var s) in [veteran, fresh].enumerated() {
            _ = s.handle(.assigned(rank: i, ringEpoch: 0, reformInPlace: true, offered: .init(checkpoint: true)))
            _ = s.handle(.replicaReady(plan(rank: i, checkpointEvery: 3), globalStep: 3, redoEndOfStep: false, keepsState: true))
            _ = s.handle(.coordinator(.start))
            _ = s.handle(.ringFailed("a member lost"))
            _ = s.handle(.reformReceived(reform(1, rank: UInt32(i))))
            _ = s.handle(.replicaReady(plan(rank: i, checkpointEvery: 3), globalStep: 3, redoEndOfStep: true, keepsState: true))
            #expect(s.handle(.coordinator(.start)) == [.trainNextStep(votes: [])], "rank \(i)")
        }
    }

    /// The failure lands during an epoch's evaluation, or during rank 0's checkpoint transfer: the
    /// directives after it are cancelled (the shell drops them); the Reform's ring redoes that step's
    /// whole end-of-step work. A failure during a re-formation (forming the ring, or waiting for its
    /// Start) waits for the next Reform; one with an older epoch is not taken; none within the wait fails.
    @Test func failuresDuringEvaluationCheckpointAndAnotherReformation() {
        for failsAt in ["evaluation", "checkpoint"] {
            var s = training(plan(rank: 0, hashEvery: 0))
            for step in 1...2 { _ = s.handle(.stepFinished(globalStep: step)) }
            #expect(
                s.handle(.stepFinished(globalStep: 3)) == [
                    .reportStep(withHash: false), .evaluate(epoch: 0), .shareReplicaState, .sendCheckpoint,
                    .trainNextStep(votes: [])
                ])
            #expect(s.handle(.ringFailed("\(failsAt) gave up")) == [.awaitReform(urgent: true)], "\(failsAt)")
            #expect(s.abandonedStep == 0, "no step was being computed: \(failsAt)")
            _ = s.handle(.reformReceived(reform(1, rank: 0)))
            // a second failure while forming the new ring: the next Reform, not the same one again
            #expect(s.handle(.ringFailed("another member gone")) == [.awaitReform(urgent: true)])
            #expect(s.handle(.reformReceived(reform(1, rank: 0))) == [.awaitReform(urgent: true)], "epoch 1 is the ring that failed")
            #expect(s.handle(.reformReceived(reform(2, rank: 0))) == [.reform(reform(2, rank: 0))])
            _ = s.handle(.replicaReady(plan(rank: 0, hashEvery: 0), globalStep: 3, redoEndOfStep: true, keepsState: false))
            // and one while waiting for the re-formed ring's Start
            #expect(s.handle(.ringFailed("abandoned for epoch 3")) == [.awaitReform(urgent: true)])
            #expect(s.handle(.reformReceived(reform(3, rank: 1))) == [.reform(reform(3, rank: 1))])
            _ = s.handle(.replicaReady(plan(rank: 1, hashEvery: 0), globalStep: 3, redoEndOfStep: true, keepsState: false))
            #expect(
                s.handle(.coordinator(.start)) == [
                    .reportStep(withHash: false), .evaluate(epoch: 0), .shareReplicaState, .trainNextStep(votes: [])
                ],
                "as rank 1 now: no checkpoint of its own")
        }
        var waited = training()
        _ = waited.handle(.ringFailed("rank 1 is gone"))
        #expect(waited.handle(.noReform) == [.fail("rank 1 is gone; the coordinator did not re-form the ring")])
    }

    /// A job not elastic in place fails on a ring failure; so does a fresh ring that does not form
    /// (set-up at epoch 0); a fault of this worker's own is never waited out; an Abort ends any phase.
    @Test func failuresThatEndTheWorker() {
        var fixed = training(inPlace: false)
        #expect(fixed.handle(.ringFailed("rank 1 is gone")) == [.fail("rank 1 is gone")])
        var fresh = WorkerState()
        _ = fresh.handle(.launched)
        _ = fresh.handle(.assigned(rank: 1, ringEpoch: 0, reformInPlace: true))
        #expect(fresh.handle(.ringFailed("no ring")) == [.fail("no ring")])
        var own = training()
        #expect(own.handle(.failedLocally("disk full")) == [.fail("disk full")])
        #expect(own.handle(.stepFinished(globalStep: 1)).isEmpty, "a failed worker takes no more events")
        var joining = WorkerState()
        _ = joining.handle(.launched)
        #expect(
            joining.handle(.coordinator(.abort(.init(originRank: -1, reason: "full")))) == [
                .fail("the coordinator refused this worker: full")
            ])
        var waiting = WorkerState()
        _ = waiting.handle(.launched)
        #expect(
            waiting.handle(.coordinator(.abort(.init(originRank: -1, reason: WorkerState.coordinatorInterrupted)))) == [
                .fail("the coordinator was stopped (interrupted) before the job began training")
            ], "an interrupted coordinator refused nobody")
        var stopped = training()
        _ = stopped.handle(.ringFailed("x"))
        #expect(
            stopped.handle(.coordinator(.abort(.init(originRank: -1, reason: "too few")))) == [
                .fail("the coordinator stopped the job: too few")
            ])
        var skipped = training()
        #expect(skipped.handle(.stepFinished(globalStep: 2)) == [.fail("step 2 finished after step 0 of 7")])
    }

    /// A worker joins a running job: a member holds the join's Reform and votes for it in its next
    /// exchange; the step the ranks agree on ends with its whole end-of-step work on the old ring, then
    /// the member re-forms without redoing anything. The joiner itself sets up over the ring; a failure
    /// before its ring formed (a join during a failure) takes it to the next Reform, after which it
    /// redoes with the others; the run ending before it joined lets it exit.
    @Test func aJoinAtAStepBoundaryAndAJoinDuringAFailure() {
        var member = training(plan(rank: 1, hashEvery: 0))
        #expect(member.handle(.coordinator(.reform(reform(1, rank: 1, atBoundary: true)))).isEmpty)
        #expect(
            member.handle(.coordinator(.reform(reform(2, rank: 1)))).isEmpty,
            "a Reform after a loss is found by the wait that follows the ring's failure")
        #expect(member.votes == .reform && member.boundaryReform?.ringEpoch == 1)
        #expect(
            member.handle(.stepFinished(globalStep: 1)) == [.reportStep(withHash: false), .trainNextStep(votes: .reform)],
            "this step's exchange ran before the Reform came: the vote is in the next")
        // step 3 ends epoch 0: evaluated, checkpointed, then the switch
        _ = member.handle(.stepFinished(globalStep: 2))
        #expect(
            member.handle(.stepFinished(globalStep: 3, agreed: .reform))
                == [.reportStep(withHash: false), .evaluate(epoch: 0), .shareReplicaState, .awaitReform(urgent: false)])
        #expect(member.abandonedStep == 0, "nothing given up")
        #expect(member.handle(.reformReceived(reform(1, rank: 1, atBoundary: true))) == [.reform(reform(1, rank: 1, atBoundary: true))])
        _ = member.handle(.replicaReady(plan(rank: 1, hashEvery: 0), globalStep: 3, redoEndOfStep: false, keepsState: false))
        #expect(member.handle(.coordinator(.start)) == [.trainNextStep(votes: [])], "nothing redone at a boundary")

        var joiner = WorkerState()
        _ = joiner.handle(.launched)
        #expect(joiner.handle(.assigned(rank: 2, ringEpoch: 1, reformInPlace: true)) == [.setUp(from: .members)])
        // a member is lost before the joiner's ring formed: the coordinator re-forms with the joiner in
        // it, and the joiner, whose replica was never made, sets up on that ring
        #expect(joiner.handle(.ringFailed("the coordinator re-forms the ring")) == [.awaitReform(urgent: true)])
        #expect(joiner.handle(.reformReceived(reform(3, rank: 1))) == [.setUpOn(reform(3, rank: 1))])
        #expect(joiner.handle(.replicaReady(plan(rank: 1), globalStep: 5, redoEndOfStep: true, keepsState: false)) == [.sendReady])
        #expect(
            joiner.handle(.coordinator(.start)) == [.reportStep(withHash: false), .trainNextStep(votes: [])],
            "it redoes step 5's work with the others")

        var late = WorkerState()
        _ = late.handle(.launched)
        _ = late.handle(.assigned(rank: 2, ringEpoch: 1, reformInPlace: true))
        #expect(late.handle(.coordinator(.finish)) == [.exit] && late.phase == .finished)
    }

    /// A graceful stop: a Stop (or a signal) is a vote in every later exchange; the step whose exchange
    /// agreed ends the run there: reported with the hash, rank 0's checkpoint, then Finish.
    @Test func aGracefulStopEndsTheRunAfterTheAgreedStep() {
        for (rank, stopAt) in [(0, 2), (1, 2), (0, 3)] {
            var s = training(plan(rank: rank, hashEvery: 5))
            for step in 1..<stopAt { _ = s.handle(.stepFinished(globalStep: step)) }
            #expect(s.handle(.coordinator(.stop(.init(signal: 2, reason: "x")))).isEmpty && s.votes == .stop)
            let expected: [WorkerState.Directive] =
                [.reportStep(withHash: true)] + (stopAt == 3 ? [.evaluate(epoch: 0)] : [])
                + [.shareReplicaState] + (rank == 0 ? [.sendCheckpoint] : []) + [.awaitFinish]
            #expect(s.handle(.stepFinished(globalStep: stopAt, agreed: .stop)) == expected, "rank \(rank), stop at \(stopAt)")
            #expect(s.phase == .waitingForFinish)
            #expect(s.handle(.coordinator(.finish)) == [.exit])
        }
    }

    /// The coordinator lost: a worker whose state may outlive it keeps its replica and says hello
    /// carrying it (from training, re-forming or waiting for Finish), is assigned by the next one, sets up
    /// from what it kept and redoes that step's end-of-step work; one that may not, or has not
    /// trained yet, fails; a second coordinator that says the run has finished ends it.
    @Test func theCoordinatorLost() {
        var s = training(keepsState: true)
        for step in 1...4 { _ = s.handle(.stepFinished(globalStep: step)) }
        #expect(s.handle(.coordinatorSilent("silent for 2 s")) == [.keepState, .join(carrying: true)])
        #expect(s.phase == .joining && s.rank == -1)
        // the kept state outlives a silence while it waits (its wait has its own deadline) and sets up
        #expect(s.outlivesLostCoordinator, "waiting for the next coordinator")
        #expect(
            s.handle(.assigned(rank: 2, ringEpoch: 0, reformInPlace: true, offered: .init(keptState: true, checkpoint: true)))
                == [.setUp(from: .keptState)], "what it kept, not the checkpoint")
        #expect(s.outlivesLostCoordinator, "setting up from what it kept")
        #expect(s.handle(.replicaReady(plan(rank: 2), globalStep: 4, redoEndOfStep: true, keepsState: true)) == [.sendReady])
        #expect(s.handle(.coordinator(.start)) == [.reportStep(withHash: true), .trainNextStep(votes: [])])
        _ = s.handle(.ringFailed("x"))
        #expect(s.handle(.coordinatorSilent("silent")) == [.keepState, .join(carrying: true)], "while re-forming too")
        #expect(s.handle(.runFinished) == [.exit] && s.phase == .finished)

        // a next coordinator that does not ask for it: the replica is made afresh from what it offers
        var another = training(keepsState: true)
        for step in 1...2 { _ = another.handle(.stepFinished(globalStep: step)) }
        _ = another.handle(.coordinatorSilent("silent"))
        #expect(another.rejoining && another.outlivesLostCoordinator)
        #expect(
            another.handle(.assigned(rank: 0, ringEpoch: 0, reformInPlace: true, offered: .init(checkpoint: true)))
                == [.setUp(from: .checkpoint)])
        #expect(!another.rejoining)

        var cannot = training(keepsState: false)
        #expect(!cannot.outlivesLostCoordinator)
        #expect(cannot.handle(.coordinatorSilent("silent for 10 s")) == [.fail("silent for 10 s")])
        var early = WorkerState()
        _ = early.handle(.launched)
        _ = early.handle(.assigned(rank: 0, ringEpoch: 0, reformInPlace: true))
        #expect(early.handle(.coordinatorSilent("silent")) == [.fail("silent")], "nothing trained to keep")
        var fresh = WorkerState()
        _ = fresh.handle(.launched)
        #expect(
            fresh.handle(.assigned(rank: 1, ringEpoch: 0, reformInPlace: true, offered: .init(keptState: true)))
                == [.fail("the coordinator asks for the state this worker kept, and it keeps none")])
    }

    /// Where a replica's parameters come from, as the assignment offers them: a running job's ring
    /// first, then the resume checkpoint, then the starting weights, else drawn.
    @Test func theParameterSourceFollowsTheAssignment() {
        for (epoch, offered, source) in [
            (UInt32(1), WorkerState.Offered(checkpoint: true), WorkerState.ParameterSource.members),
            (0, .init(checkpoint: true, startingWeights: true), .checkpoint), (0, .init(startingWeights: true), .startingWeights),
            (0, .init(), .data)
        ] {
            var s = WorkerState()
            _ = s.handle(.launched)
            #expect(s.handle(.assigned(rank: 0, ringEpoch: epoch, reformInPlace: true, offered: offered)) == [.setUp(from: source)])
        }
    }

    /// A signal: before the worker trains it ends at once; while it trains, it tells the coordinator
    /// and votes to stop in every later exchange; a second signal asks nothing more of the machine.
    @Test func aSignalEndsAWaitingWorkerAndStopsATrainingOne() {
        var waiting = WorkerState()
        _ = waiting.handle(.launched)
        #expect(waiting.handle(.signalled(15)) == [.interrupt(signal: 15)])
        var s = training()
        #expect(s.handle(.signalled(2)) == [.tellStop(signal: 2)] && s.votes == .stop)
        #expect(s.handle(.signalled(2)).isEmpty)
        // a Reform read mid-step: one after a loss, of a newer ring, gives the step up; a join's does not
        #expect(s.abandonsWork(for: reform(1, rank: 0)) && !s.abandonsWork(for: reform(1, rank: 0, atBoundary: true)))
        #expect(!s.abandonsWork(for: reform(0, rank: 0)))
    }

    @Test func aResumedRunAtItsEndOnlyWaits() {
        var done = training(at: 7)
        #expect(done.phase == .waitingForFinish && done.handle(.coordinator(.finish)) == [.exit])
        var stray = training()
        #expect(stray.handle(.coordinator(.start)).isEmpty, "a repeated Start")
        #expect(stray.handle(.coordinator(.finish)) == [.fail("unexpected Finish from the coordinator while training")])
    }

    @Test func livenessWatchNamesTheSilence() {
        var w = LivenessWatch(timeout: 10, now: 100)
        #expect(w.silence(at: 109) == nil)
        w.heard(at: 105)
        #expect(w.silence(at: 114) == nil)
        #expect(w.silence(at: 116) == 11)
    }

    /// A connection that was up and has been down for a second names the peer gone (its process ended),
    /// long before the time-out; one back within the second, or never up, does not.
    @Test func livenessWatchNamesAConnectionThatEnded() {
        var w = LivenessWatch(timeout: 10, now: 100)
        w.connectionDown(at: 100)
        #expect(w.disconnection(at: 105) == nil, "never up: a connect that has not succeeded yet")
        w.connectionUp()
        w.connectionDown(at: 106)
        #expect(w.disconnection(at: 106.5) == nil)
        w.connectionUp()
        #expect(w.disconnection(at: 108) == nil, "back within the second")
        w.connectionDown(at: 108)
        w.connectionDown(at: 108.8)
        #expect(w.disconnection(at: 109) == 1 && w.silence(at: 109) == nil)
    }
}
