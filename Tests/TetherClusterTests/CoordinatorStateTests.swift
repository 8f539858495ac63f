import Testing
@testable import TetherCluster
import TetherComm
import TetherMessages

/// The coordinator's state machine, driven by events alone (no sockets).
@Suite struct CoordinatorStateTests {
    /// Joiners in these tests say hello once and are taken as live (real ones repeat it every second;
    /// `aJoinerThatFallsSilentIsNotCounted` tests the time-out).
    func settings(workers: Int = 3, total: Int = 4, perEpoch: Int = 2) -> CoordinatorState.Settings {
        var s = CoordinatorState.Settings(workers: workers, totalSteps: total, stepsPerEpoch: perEpoch)
        s.joinerTimeout = .infinity
        return s
    }
    func report(
        _ step: Int, epoch: Int = 0, loss: Double = 1, count: UInt64 = 10, hash: UInt64 = 0, compute: Double = 0.01
    ) -> StepReport {
        .init(
            globalStep: UInt64(step), epoch: UInt32(epoch), lossSum: loss, count: count, correct: 5, computeSeconds: compute,
            allreduceSeconds: 0.002, optimizerSeconds: 0.001, parameterHash: hash, waitSeconds: 0.001)
    }
    func eval(_ epoch: Int) -> EvalReport { .init(epoch: UInt32(epoch), lossSum: 2, count: 4, correct: 3, scores: [], labels: []) }
    func ready(_ hash: UInt64 = 7) -> Ready { .init(parameterHash: hash, layoutFingerprint: 42) }

    /// Three hellos -> three assignments with the same ring -> all ready -> start.
    func started(workers: Int = 3, total: Int = 4, perEpoch: Int = 2) -> CoordinatorState {
        var s = CoordinatorState(settings(workers: workers, total: total, perEpoch: perEpoch), now: 0)
        var out: [CoordinatorState.Directive] = []
        for r in 0..<workers { out += s.handle(.hello(identity: [UInt8(r)], address: "tcp://h\(r):1"), now: 1) }
        #expect(out == (0..<workers).map { .assign(identity: [UInt8($0)], rank: $0, ring: (0..<workers).map { "tcp://h\($0):1" }) })
        for r in 0..<workers - 1 { #expect(s.handle(.ready(rank: r, ready()), now: 1).isEmpty) }
        #expect(s.handle(.ready(rank: workers - 1, ready()), now: 1) == [.start])
        #expect(s.phase == .training)
        return s
    }

    /// Three workers of an elastic job in place (at least 2), 8 steps, training from step 0.
    func elasticTraining(perEpoch: Int) -> CoordinatorState {
        var settings = settings(workers: 3, total: 8, perEpoch: perEpoch)
        (settings.minWorkers, settings.reformInPlace) = (2, true)
        var s = CoordinatorState(settings, now: 0)
        for r in 0..<3 { _ = s.handle(.hello(identity: [UInt8(r)], address: "tcp://h\(r):1"), now: 1) }
        for r in 0..<3 { _ = s.handle(.ready(rank: r, ready()), now: 1) }
        return s
    }

    /// A run that ends within an epoch (3 steps of 2 per epoch) waits for the evaluation of that partial
    /// epoch too, and takes it only from ranks that reached the end.
    @Test func aRunEndingWithinAnEpochIsEvaluatedThere() {
        var s = started(workers: 2, total: 3, perEpoch: 2)
        #expect(s.partialFinalEpoch == 1)
        for step in 1...3 { for r in 0..<2 { _ = s.handle(.step(rank: r, report(step, epoch: (step - 1) / 2)), now: 2) } }
        for r in 0..<2 { _ = s.handle(.evaluation(rank: r, eval(0)), now: 2) }
        #expect(
            s.handle(.checkpoint(rank: 0, .init(globalStep: 3, safetensors: [])), now: 2) == [
                .writeCheckpoint(.init(globalStep: 3, safetensors: []))
            ])
        #expect(s.handle(.evaluation(rank: 0, eval(1)), now: 2).isEmpty)
        #expect(s.handle(.evaluation(rank: 1, eval(1)), now: 2) == [.epochCompleted(epoch: 1, reports: [eval(1), eval(1)]), .finish])
        var early = started(workers: 2, total: 3, perEpoch: 2)
        for r in 0..<2 { _ = early.handle(.step(rank: r, report(1)), now: 2) }
        #expect(
            early.handle(.evaluation(rank: 0, eval(1)), now: 2) == [
                .abort("rank 0 sent an evaluation of epoch 2, which it has not just finished")
            ])
    }

    /// A graceful stop: the reports of step 1 say `stopping` -> the job ends after it once rank 0's
    /// checkpoint of step 1 is in (no evaluation: step 1 ends no epoch), and a report of a later step is
    /// refused. Ranks that disagree about stopping fail the job.
    @Test func aGracefulStopEndsTheJobAfterTheAgreedStep() {
        var s = started(workers: 2, total: 4, perEpoch: 2)
        var stopping = report(1)
        stopping.stopping = true
        #expect(s.handle(.step(rank: 0, stopping), now: 2).isEmpty)
        guard case .stepCompleted? = s.handle(.step(rank: 1, stopping), now: 2).first else {
            Issue.record("step 1 did not complete"); return
        }
        #expect(s.stoppedAt == 1 && s.endStep == 1)
        #expect(
            s.handle(.checkpoint(rank: 0, .init(globalStep: 1, safetensors: [])), now: 2) == [
                .writeCheckpoint(.init(globalStep: 1, safetensors: [])), .finish
            ])
        #expect(s.phase == .finished)

        var late = started(workers: 2, total: 4, perEpoch: 2)
        _ = late.handle(.step(rank: 0, stopping), now: 2)
        _ = late.handle(.step(rank: 1, stopping), now: 2)
        #expect(late.handle(.step(rank: 0, report(2)), now: 2) == [.abort("rank 0 reported step 2 while the job is at step 1 of 1")])

        var split = started(workers: 2, total: 4, perEpoch: 2)
        _ = split.handle(.step(rank: 0, stopping), now: 2)
        #expect(split.handle(.step(rank: 1, report(1)), now: 2) == [.abort("the ranks disagree whether the job stops after step 1")])
    }

    /// Elastic (3 workers, at least 2): two hellos, then none for the last call -> the job forms with
    /// two; a third worker is turned away without failing it; a worker's repeated Hello is no new worker;
    /// silence is counted from the forming, not from the hellos.
    @Test func anElasticJobFormsWithTheWorkersThatCame() {
        var settings = settings(workers: 3)
        (settings.minWorkers, settings.lastCall, settings.heartbeatTimeout) = (2, 10, 5)
        var s = CoordinatorState(settings, now: 0)
        #expect(s.handle(.hello(identity: [1], address: "tcp://a:1"), now: 1).isEmpty)
        #expect(s.handle(.hello(identity: [2], address: "tcp://b:1"), now: 2).isEmpty)
        #expect(s.handle(.hello(identity: [1], address: "tcp://a:1"), now: 3).isEmpty)  // repeated
        #expect(s.members.count == 2)
        #expect(s.handle(.tick, now: 11.9).isEmpty)  // the last call is still open
        let ring = ["tcp://a:1", "tcp://b:1"]
        #expect(s.handle(.tick, now: 12.1) == [.assign(identity: [1], rank: 0, ring: ring), .assign(identity: [2], rank: 1, ring: ring)])
        #expect(s.handle(.hello(identity: [2], address: "tcp://b:1"), now: 12.2).isEmpty)  // a member's late repeat
        #expect(
            s.handle(.hello(identity: [3], address: "tcp://c:1"), now: 12.5)
                == [.turnAway(identity: [3], reason: "the job formed with 2 workers before a worker at tcp://c:1 said hello")])
        #expect(s.handle(.tick, now: 16).isEmpty)  // heard at 12.1, not at 1
        _ = s.handle(.ready(rank: 0, ready()), now: 16)
        #expect(s.handle(.ready(rank: 1, ready()), now: 16) == [.start])
    }

    /// Elastic, but fewer than the minimum came: the join time-out fails the job, naming the minimum.
    /// A late hello is turned away, elastic or not: a stray or hostile Hello never stops a job.
    @Test func tooFewWorkersFailAJobALateOneIsTurnedAway() {
        var elastic = settings(workers: 3)
        (elastic.minWorkers, elastic.joinTimeout) = (2, 30)
        var s = CoordinatorState(elastic, now: 0)
        _ = s.handle(.hello(identity: [1], address: "tcp://a:1"), now: 1)
        #expect(s.handle(.tick, now: 20).isEmpty)
        #expect(s.handle(.tick, now: 31) == [.abort("only 1 of 3 workers (at least 2 needed) joined within 30 s (joined: tcp://a:1)")])
        var t = started(workers: 2)
        #expect(
            t.handle(.hello(identity: [9], address: "tcp://z:1"), now: 2) == [
                .turnAway(identity: [9], reason: "the job formed with 2 workers before a worker at tcp://z:1 said hello")
            ])
        #expect(t.phase == .training)
    }

    @Test func aJobRunsToItsFinish() {
        var s = started()
        var completed: [Int] = []
        for step in 1...4 {
            for r in [2, 0, 1] {
                for d in s.handle(.step(rank: r, report(step, epoch: (step - 1) / 2, hash: step == 2 ? 99 : 0)), now: 2) {
                    if case .stepCompleted(let summary) = d {
                        completed.append(summary.globalStep)
                        #expect(summary.count == 30 && summary.lossSum == 3)
                    }
                }
            }
            if step % 2 == 0 {
                for r in 0..<3 {
                    let out = s.handle(.evaluation(rank: r, eval(step / 2 - 1)), now: 2)
                    if r == 2 {
                        #expect(
                            out.contains {
                                if case .epochCompleted(let e, let reports) = $0 { return e == step / 2 - 1 && reports.count == 3 };
                                return false
                            })
                    }
                }
                let out = s.handle(.checkpoint(rank: 0, .init(globalStep: UInt64(step), safetensors: [1])), now: 2)
                #expect(out.first == .writeCheckpoint(.init(globalStep: UInt64(step), safetensors: [1])))
                #expect(out.contains(.finish) == (step == 4))
            }
        }
        #expect(completed == [1, 2, 3, 4])
        #expect(s.phase == .finished)
    }

    @Test func stepsCompleteInOrderWhenAFastRankRunsAhead() {
        var s = started()
        _ = s.handle(.step(rank: 0, report(1)), now: 2)
        _ = s.handle(.step(rank: 0, report(2)), now: 2)
        _ = s.handle(.step(rank: 1, report(2)), now: 2)
        _ = s.handle(.step(rank: 2, report(2)), now: 2)
        #expect(s.completedSteps == 0)
        _ = s.handle(.step(rank: 1, report(1)), now: 2)
        let out = s.handle(.step(rank: 2, report(1)), now: 2)
        #expect(out.count == 2 && s.completedSteps == 2)
    }

    @Test func aSilentWorkerIsNamedWithinTheTimeout() {
        var s = started()
        for r in [0, 2] { _ = s.handle(.heartbeat(rank: r), now: 5) }
        #expect(s.handle(.tick, now: 5.5).isEmpty)
        let out = s.handle(.tick, now: 6.5)
        #expect(
            out == [
                .abort(
                    "worker rank 1 (tcp://h1:1) has been silent for 5 s: it died, lost its connection, or cannot get a heartbeat through")
            ])
        #expect(s.handle(.step(rank: 0, report(1)), now: 7).isEmpty)  // a failed job takes no more events
    }

    /// Elastic in place (4 workers, at least 2): rank 1 falls silent during step 3 -> the survivors are
    /// renumbered 0, 1, 2 in a ring of epoch 1 and become ready at one agreed step -> Start. The
    /// redone end-of-step work of a merged step is dropped; of an unmerged one, merged. A failure
    /// during the re-formation re-forms again; below --min-workers, or without in-place, the job fails.
    @Test func aLostMemberReformsTheRingOfTheSurvivors() {
        func elastic(inPlace: Bool = true) -> CoordinatorState {
            var settings = settings(workers: 4, total: 8, perEpoch: 4)
            (settings.minWorkers, settings.reformInPlace) = (2, inPlace)
            var s = CoordinatorState(settings, now: 0)
            for r in 0..<4 { _ = s.handle(.hello(identity: [UInt8(r)], address: "tcp://h\(r):1"), now: 1) }
            for r in 0..<4 { _ = s.handle(.ready(rank: r, ready()), now: 1) }
            for step in 1...2 { for r in 0..<4 { _ = s.handle(.step(rank: r, report(step)), now: 2) } }
            #expect(s.completedSteps == 2 && s.phase == .training)
            return s
        }
        var s = elastic()
        _ = s.handle(.step(rank: 0, report(3)), now: 3)  // step 3 is in flight: one report of four
        for r in [0, 2, 3] { _ = s.handle(.heartbeat(rank: r), now: 7) }
        let why = "worker rank 1 (tcp://h1:1) has been silent for 5 s: it died, lost its connection, or cannot get a heartbeat through"
        #expect(s.handle(.tick, now: 7.5) == [.reform(epoch: 1, reason: why)])
        #expect(s.phase == .initializing && s.ringEpoch == 1 && s.members.map(\.address) == ["tcp://h0:1", "tcp://h2:1", "tcp://h3:1"])
        // they connect once all three listen on the new ring (none may reach an abandoned socket)
        #expect(
            s.handle(.listening(rank: 0, epoch: 0), now: 8) == [
                .dropped("rank 0 listens on ring epoch 0 while the job is initializing on epoch 1")
            ])
        for r in 0..<2 { #expect(s.handle(.listening(rank: r, epoch: 1), now: 8).isEmpty) }
        #expect(s.handle(.listening(rank: 2, epoch: 1), now: 8) == [.connectRing])
        // survivors that disagree on the step they hold are refused
        var apart = s
        for r in 0..<2 { _ = apart.handle(.ready(rank: r, .init(parameterHash: 7, layoutFingerprint: 42, globalStep: 2)), now: 8) }
        #expect(
            apart.handle(.ready(rank: 2, .init(parameterHash: 7, layoutFingerprint: 42, globalStep: 3)), now: 8)
                == [.abort("the re-formed ring's ranks hold steps [2, 3] after step 2")])
        // they hold step 3 (one survivor finished it): its reports come again, from all three, and merge
        for r in 0..<2 { #expect(s.handle(.ready(rank: r, .init(parameterHash: 7, layoutFingerprint: 42, globalStep: 3)), now: 8).isEmpty) }
        #expect(s.handle(.ready(rank: 2, .init(parameterHash: 7, layoutFingerprint: 42, globalStep: 3)), now: 8) == [.start])
        #expect(s.redoStep == 3)
        for r in 0..<2 { #expect(s.handle(.step(rank: r, report(3)), now: 8).isEmpty) }
        guard case .stepCompleted(let summary)? = s.handle(.step(rank: 2, report(3)), now: 8).first else {
            Issue.record("step 3 did not complete"); return
        }
        #expect(summary.compute.count == 3 && s.completedSteps == 3)
        // step 4 ends epoch 1: evaluated and checkpointed; then a loss during step 5 and a redo of step 4's work
        for r in 0..<3 { _ = s.handle(.step(rank: r, report(4)), now: 9) }
        for r in 0..<3 { _ = s.handle(.evaluation(rank: r, eval(0)), now: 9) }
        #expect(
            s.handle(.checkpoint(rank: 0, .init(globalStep: 4, safetensors: [])), now: 9) == [
                .writeCheckpoint(.init(globalStep: 4, safetensors: []))
            ])
        #expect(s.handle(.abort(rank: 2, reason: "killed"), now: 10) == [.reform(epoch: 2, reason: "rank 2 (tcp://h3:1) stopped: killed")])
        for r in 0..<2 { _ = s.handle(.ready(rank: r, .init(parameterHash: 7, layoutFingerprint: 42, globalStep: 4)), now: 11) }
        #expect(s.phase == .training && s.redoStep == 4)
        for r in 0..<2 {
            #expect(s.handle(.step(rank: r, report(4)), now: 11).isEmpty, "a merged step's report again is dropped without a word")
            #expect(s.handle(.evaluation(rank: r, eval(0)), now: 11).isEmpty, "a merged evaluation again too")
        }
        #expect(s.handle(.checkpoint(rank: 0, .init(globalStep: 4, safetensors: [])), now: 11).isEmpty)
        // a loss while re-forming re-forms again; one below --min-workers fails the job
        _ = s.handle(.abort(rank: 1, reason: "gone"), now: 12)
        #expect(s.phase == .failed("rank 1 (tcp://h2:1) stopped: gone"), "2 workers at least: one left is too few")

        var notInPlace = elastic(inPlace: false)
        #expect(notInPlace.handle(.abort(rank: 3, reason: "x"), now: 3) == [.abort("rank 3 (tcp://h3:1) stopped: x")])
        var twice = elastic()
        _ = twice.handle(.abort(rank: 3, reason: "x"), now: 3)
        #expect(twice.handle(.abort(rank: 0, reason: "y"), now: 3) == [.reform(epoch: 2, reason: "rank 0 (tcp://h0:1) stopped: y")])
        #expect(twice.members.map(\.address) == ["tcp://h1:1", "tcp://h2:1"])
    }

    /// A member's container restarted in place says hello (a new connection, the same address) before
    /// the member is found lost: it is not turned away but left waiting, its Hello repeated, and
    /// joins the job once the loss is found and the survivors train again. A non-elastic job, which
    /// cannot take it, still turns it away.
    @Test func aWorkerRestartedAtAMembersAddressJoinsOnceTheMemberIsLost() {
        var s = elasticTraining(perEpoch: 4)
        #expect(s.members.count == 3 && s.phase == .training, "the job is full")
        let waiting = "the hello of a worker at tcp://h1:1, where rank 1 is still a member: it joins if that member is lost"
        #expect(s.handle(.hello(identity: [9], address: "tcp://h1:1"), now: 1.2) == [.dropped(waiting)])
        #expect(
            s.handle(.hello(identity: [8], address: "tcp://h8:1"), now: 1.2).first.map { if case .turnAway = $0 { true } else { false } }
                == true,
            "a worker at a new address is turned away: the job is full")
        let why = "worker rank 1 (tcp://h1:1): its connection has been gone for 1.2 s: its process ended"
        #expect(s.handle(.disconnected(rank: 1, seconds: 1.2), now: 1.5) == [.reform(epoch: 1, reason: why)])
        #expect(s.handle(.hello(identity: [9], address: "tcp://h1:1"), now: 1.6).isEmpty, "it waits while the survivors re-form")
        for r in 0..<2 { _ = s.handle(.ready(rank: r, ready()), now: 2) }
        #expect(s.phase == .training && s.members.map(\.address) == ["tcp://h0:1", "tcp://h2:1"])
        #expect(
            s.handle(.hello(identity: [9], address: "tcp://h1:1"), now: 2.5)
                == [.reform(epoch: 2, assign: [9], reason: "a worker at tcp://h1:1 joins the job", atBoundary: true)])

        var rigid = started()
        #expect(
            rigid.handle(.hello(identity: [9], address: "tcp://h0:1"), now: 2).first.map { if case .turnAway = $0 { true } else { false } }
                == true)
    }

    /// A member whose connection is gone (its process ended) is lost at once, not after the heartbeat
    /// time-out: the survivors re-form (elastic in place), or the job fails naming it.
    @Test func aMemberWhoseConnectionIsGoneIsLostAtOnce() {
        var s = elasticTraining(perEpoch: 4)
        var rigid = s
        let why = "worker rank 1 (tcp://h1:1): its connection has been gone for 1.2 s: its process ended"
        #expect(s.handle(.disconnected(rank: 1, seconds: 1.2), now: 1.5) == [.reform(epoch: 1, reason: why)])
        #expect(rigid.handle(.disconnected(rank: 1, seconds: 1.2), now: 1.5) == [.reform(epoch: 1, reason: why)])
        _ = rigid.handle(.disconnected(rank: 0, seconds: 1.1), now: 1.6)
        #expect(rigid.phase == .failed("worker rank 0 (tcp://h0:1): its connection has been gone for 1.1 s: its process ended"))
    }

    /// A ring that trained on while this coordinator heard nothing of it (a partition; cluster/chaos
    /// found it refused): the survivors hold a step several past the last merged one; they agree, so
    /// the job goes on from it, the steps between taken as done without their reports.
    @Test func survivorsAheadOfTheMergedStepsAreTakenAtTheirStep() {
        var s = elasticTraining(perEpoch: 4)
        for r in 0..<3 { _ = s.handle(.step(rank: r, report(1)), now: 2) }
        _ = s.handle(.abort(rank: 2, reason: "cut off"), now: 3)
        for r in 0..<2 { _ = s.handle(.listening(rank: r, epoch: 1), now: 4) }
        var apart = s
        _ = s.handle(.ready(rank: 0, .init(parameterHash: 7, layoutFingerprint: 42, globalStep: 6)), now: 4)
        #expect(s.handle(.ready(rank: 1, .init(parameterHash: 7, layoutFingerprint: 42, globalStep: 6)), now: 4) == [.start])
        #expect(s.completedSteps == 5 && s.stepsUnreported == 4 && s.redoStep == 6)
        _ = s.handle(.step(rank: 0, report(6, epoch: 1)), now: 5)
        guard case .stepCompleted(let summary)? = s.handle(.step(rank: 1, report(6, epoch: 1)), now: 5).first else {
            Issue.record("step 6 did not complete"); return
        }
        #expect(summary.globalStep == 6 && s.completedSteps == 6)
        // survivors past the run's end, or apart, are refused as before
        _ = apart.handle(.ready(rank: 0, .init(parameterHash: 7, layoutFingerprint: 42, globalStep: 9)), now: 4)
        #expect(
            apart.handle(.ready(rank: 1, .init(parameterHash: 7, layoutFingerprint: 42, globalStep: 9)), now: 4)
                == [.abort("the re-formed ring's ranks hold steps [9] after step 1")])
    }

    /// A stop asked while the ring re-forms in place (chaos seed 1: SIGTERM, then a member's loss
    /// before the stop step was agreed) is asked again of the re-formed ring once it trains, so the
    /// step the survivors hold is kept with a checkpoint; a worker that comes meanwhile is turned away.
    /// Before the job trains, a stop ends it at once, interrupted; a worker's own signal is voted on in
    /// its exchange and asks nothing of the others.
    @Test func aStopAskedWhileTheRingReformsIsAskedOfTheReformedRing() {
        var settings = settings(workers: 3, total: 8, perEpoch: 4)
        (settings.minWorkers, settings.reformInPlace) = (2, true)
        var s = CoordinatorState(settings, now: 0)
        for r in 0..<3 { _ = s.handle(.hello(identity: [UInt8(r)], address: "tcp://h\(r):1"), now: 1) }
        var interrupted = s
        #expect(interrupted.handle(.stopAsked(signal: 15, rank: nil), now: 1) == [.abort(WorkerState.coordinatorInterrupted)])
        for r in 0..<3 { _ = s.handle(.ready(rank: r, ready()), now: 1) }
        var byWorker = s
        #expect(byWorker.handle(.stopAsked(signal: 2, rank: 1), now: 2).isEmpty && byWorker.stopSignal == 2)
        #expect(s.handle(.stopAsked(signal: 15, rank: nil), now: 2) == [.askToStop(signal: 15, again: false)])
        #expect(s.handle(.stopAsked(signal: 2, rank: nil), now: 2).isEmpty, "asked once")
        #expect(s.handle(.abort(rank: 2, reason: "killed"), now: 3) == [.reform(epoch: 1, reason: "rank 2 (tcp://h2:1) stopped: killed")])
        #expect(
            s.handle(.hello(identity: [9], address: "tcp://h9:1"), now: 3) == [
                .turnAway(identity: [9], reason: "the job is stopping; a worker at tcp://h9:1 does not join it")
            ])
        for r in 0..<2 { _ = s.handle(.listening(rank: r, epoch: 1), now: 4) }
        _ = s.handle(.ready(rank: 0, ready()), now: 4)
        #expect(s.handle(.ready(rank: 1, ready()), now: 4) == [.start, .askToStop(signal: 15, again: true)])
        var stopping = report(1)
        stopping.stopping = true
        _ = s.handle(.step(rank: 0, stopping), now: 5)
        _ = s.handle(.step(rank: 1, stopping), now: 5)
        _ = s.handle(.checkpoint(rank: 0, .init(globalStep: 1, safetensors: [])), now: 5)
        #expect(s.phase == .finished && s.stoppedAt == 1)
    }

    /// Elastic in place, joining: a worker that says hello while the job trains (fewer members than
    /// --workers) is assigned the last rank of the next epoch's ring at once; the members are told to
    /// re-form at a step boundary and go on: their reports still merge. They listen on the new ring
    /// after the agreed step and its end-of-step work; when all have (and the joiner), the ring
    /// switches, nothing redone. A second joiner waits, and so does one with a member's address (see
    /// `aWorkerRestartedAtAMembersAddressJoinsOnceTheMemberIsLost`); one when the job is full is turned
    /// away; ranks that leave at different steps fail the job.
    @Test func aWorkerArrivingWhileTheJobTrainsJoinsItAtAStepBoundary() {
        var settings = settings(workers: 4, total: 8, perEpoch: 4)
        (settings.minWorkers, settings.lastCall, settings.reformInPlace) = (2, 1, true)
        var s = CoordinatorState(settings, now: 0)
        for r in 0..<2 { _ = s.handle(.hello(identity: [UInt8(r)], address: "tcp://h\(r):1"), now: 1) }
        _ = s.handle(.tick, now: 2.5)
        for r in 0..<2 { _ = s.handle(.ready(rank: r, ready()), now: 3) }
        for r in 0..<2 { _ = s.handle(.step(rank: r, report(1)), now: 3) }
        #expect(
            s.handle(.hello(identity: [9], address: "tcp://h0:1"), now: 4)
                == [.dropped("the hello of a worker at tcp://h0:1, where rank 0 is still a member: it joins if that member is lost")])
        #expect(
            s.handle(.hello(identity: [7], address: "tcp://h7:1"), now: 4)
                == [.reform(epoch: 1, assign: [7], reason: "a worker at tcp://h7:1 joins the job", atBoundary: true)])
        #expect(
            s.phase == .training && s.ringEpoch == 0 && s.members.count == 2
                && s.nextRing.map(\.address) == ["tcp://h0:1", "tcp://h1:1", "tcp://h7:1"])
        #expect(s.handle(.hello(identity: [7], address: "tcp://h7:1"), now: 4).isEmpty, "its Hello again")
        #expect(s.handle(.hello(identity: [8], address: "tcp://h8:1"), now: 4).isEmpty, "another joiner waits for this join")
        // the members train on: step 2 merges from two reports; the joiner's heartbeats keep it alive
        _ = s.handle(.step(rank: 0, report(2)), now: 4)
        #expect(s.handle(.step(rank: 1, report(2)), now: 4).first.map { if case .stepCompleted = $0 { true } else { false } } == true)
        #expect(s.handle(.heartbeat(rank: 2), now: 4).isEmpty)
        #expect(s.handle(.listening(rank: 2, epoch: 1), now: 5).isEmpty, "the joiner listens first")
        _ = s.handle(.step(rank: 0, report(3)), now: 5)
        #expect(s.handle(.listening(rank: 0, epoch: 1), now: 5).isEmpty)
        var apart = s
        #expect(
            apart.handle(.listening(rank: 1, epoch: 1), now: 5) == [
                .abort("the ranks left the ring of epoch 0 at different steps (reported: [3, 2])")
            ])
        _ = s.handle(.step(rank: 1, report(3)), now: 5)
        #expect(s.handle(.listening(rank: 1, epoch: 1), now: 5) == [.connectRing])
        #expect(s.phase == .initializing && s.ringEpoch == 1 && s.members.count == 3 && s.joiner == nil)
        for r in 0..<3 { _ = s.handle(.ready(rank: r, .init(parameterHash: 7, layoutFingerprint: 42, globalStep: 3)), now: 5) }
        #expect(s.phase == .training && s.stepsRedone == 0 && s.completedSteps == 3)
        for r in 0..<3 { _ = s.handle(.step(rank: r, report(4)), now: 6) }
        #expect(s.completedSteps == 4)
        // now the waiting joiner is taken (at the next boundary); a fifth when full is turned away
        #expect(
            s.handle(.hello(identity: [8], address: "tcp://h8:1"), now: 6).first.map {
                if case .reform(2, [8], _, true) = $0 { true } else { false }
            } == true)
    }

    /// Losses at the awkward moments: during an epoch's evaluation (two of three reports in) the
    /// survivors' redone evaluation is merged instead; during rank 0's checkpoint transfer the one
    /// that arrives while re-forming is stale, and the redone one is written. A replacement that says
    /// hello while the ring re-forms waits until the job trains again. A member lost while a joiner is
    /// assigned (a join during a failure): the joiner stays, told by Reform, as the last rank of a new
    /// epoch; a joiner that falls silent is dropped, and the members re-form without it.
    @Test func lossesDuringAnEvaluationACheckpointOrAJoin() {
        var s = elasticTraining(perEpoch: 2)
        for step in 1...2 { for r in 0..<3 { _ = s.handle(.step(rank: r, report(step, epoch: (step - 1) / 2)), now: 2) } }
        for r in 0..<2 { #expect(s.handle(.evaluation(rank: r, eval(0)), now: 2).isEmpty) }
        #expect(s.handle(.abort(rank: 2, reason: "gone"), now: 3).first.map { if case .reform = $0 { true } else { false } } == true)
        #expect(s.handle(.checkpoint(rank: 0, .init(globalStep: 2, safetensors: [])), now: 3).isEmpty, "stale while re-forming")
        #expect(s.handle(.hello(identity: [9], address: "tcp://h9:1"), now: 3).isEmpty, "a replacement waits while the ring re-forms")
        for r in 0..<2 {
            _ = s.handle(.ready(rank: r, .init(parameterHash: 7, layoutFingerprint: 42, globalStep: 2, abandonedStep: 3)), now: 4)
        }
        #expect(s.phase == .training && s.redoStep == 2 && s.stepsRedone == 1)
        for r in 0..<2 { #expect(s.handle(.step(rank: r, report(2)), now: 4).isEmpty) }
        #expect(s.handle(.evaluation(rank: 0, eval(0)), now: 4).isEmpty)
        #expect(s.handle(.evaluation(rank: 1, eval(0)), now: 4) == [.epochCompleted(epoch: 0, reports: [eval(0), eval(0)])])
        #expect(
            s.handle(.checkpoint(rank: 0, .init(globalStep: 2, safetensors: [])), now: 4) == [
                .writeCheckpoint(.init(globalStep: 2, safetensors: []))
            ])
        // the replacement, saying hello again, joins; rank 1 is lost before the switch
        #expect(
            s.handle(.hello(identity: [9], address: "tcp://h9:1"), now: 5) == [
                .reform(epoch: 2, assign: [9], reason: "a worker at tcp://h9:1 joins the job", atBoundary: true)
            ])
        #expect(s.handle(.abort(rank: 1, reason: "killed"), now: 5) == [.reform(epoch: 3, reason: "rank 1 (tcp://h1:1) stopped: killed")])
        #expect(s.members.map(\.address) == ["tcp://h0:1", "tcp://h9:1"] && s.joiner == nil && s.ringEpoch == 3)
        for r in 0..<2 { _ = s.handle(.listening(rank: r, epoch: 3), now: 6) }
        for r in 0..<2 { _ = s.handle(.ready(rank: r, .init(parameterHash: 7, layoutFingerprint: 42, globalStep: 2)), now: 6) }
        #expect(s.phase == .training && s.stepsRedone == 0)
        // a joiner that falls silent before the switch: the members re-form without it, at once
        for r in 0..<2 { _ = s.handle(.step(rank: r, report(3, epoch: 1)), now: 7) }
        _ = s.handle(.hello(identity: [5], address: "tcp://h5:1"), now: 7)
        for r in 0..<2 { _ = s.handle(.heartbeat(rank: r), now: 12.5) }
        #expect(
            s.handle(.tick, now: 12.5) == [.reform(epoch: 5, reason: "the worker at tcp://h5:1 that was joining has been silent for 5 s")])
        #expect(s.members.count == 2 && s.nextRing.count == 2)
    }

    /// A member lost after the last step, before rank 0's checkpoint of it came (the replica state it
    /// gathers over the ring): the survivors re-form and redo the step's end-of-step work; the reports
    /// and evaluation already merged are not taken twice, and the checkpoint ends the job.
    @Test func aLossAfterTheLastStepIsRedoneToTheFinish() {
        var s = elasticTraining(perEpoch: 4)
        for step in 1...8 {
            for r in 0..<3 { _ = s.handle(.step(rank: r, report(step, epoch: (step - 1) / 4)), now: 2) }
            if step % 4 == 0 { for r in 0..<3 { _ = s.handle(.evaluation(rank: r, eval(step / 4 - 1)), now: 2) } }
            if step == 4 { _ = s.handle(.checkpoint(rank: 0, .init(globalStep: 4, safetensors: [])), now: 2) }
        }
        #expect(s.completedSteps == 8 && s.phase == .training, "the last checkpoint is still to come")
        let lost = s.handle(.abort(rank: 2, reason: "gone"), now: 3)
        #expect(lost.first.map { if case .reform = $0 { true } else { false } } == true, "\(lost)")
        for r in 0..<2 { _ = s.handle(.ready(rank: r, .init(parameterHash: 7, layoutFingerprint: 42, globalStep: 8)), now: 4) }
        #expect(s.phase == .training)
        for r in 0..<2 { #expect(s.handle(.step(rank: r, report(8, epoch: 1)), now: 4).isEmpty, "step 8 was merged already") }
        for r in 0..<2 { #expect(s.handle(.evaluation(rank: r, eval(1)), now: 4).isEmpty, "epoch 1 was evaluated already") }
        #expect(
            s.handle(.checkpoint(rank: 0, .init(globalStep: 8, safetensors: [])), now: 4) == [
                .writeCheckpoint(.init(globalStep: 8, safetensors: [])), .finish
            ])
    }

    /// A coordinator restarted with --resume (checkpoint of step 4) takes the state its workers kept
    /// through its loss when every one carries one, at most a step apart, the same parameters at the
    /// same step: it goes on from the furthest (step 7), nothing lost. Otherwise, or in a fresh run,
    /// it starts from its checkpoint as before.
    @Test func aResumedCoordinatorTakesTheStateItsWorkersKept() {
        func formed(_ carried: [CoordinatorState.Carried?], resume: Bool = true) -> CoordinatorState {
            var settings = CoordinatorState.Settings(workers: carried.count, firstStep: 4, totalSteps: 12, stepsPerEpoch: 4)
            (settings.joinerTimeout, settings.takesCarriedState) = (.infinity, resume)
            var s = CoordinatorState(settings, now: 0)
            for (r, c) in carried.enumerated() { _ = s.handle(.hello(identity: [UInt8(r)], address: "tcp://h\(r):1", carried: c), now: 1) }
            return s
        }
        var s = formed([.init(step: 7, hash: 5), .init(step: 6, hash: 4), .init(step: 7, hash: 5)])
        #expect(s.carriedStep == 7)
        for r in 0..<2 { _ = s.handle(.ready(rank: r, .init(parameterHash: 9, layoutFingerprint: 42, globalStep: 7)), now: 2) }
        #expect(s.handle(.ready(rank: 2, .init(parameterHash: 9, layoutFingerprint: 42, globalStep: 7)), now: 2) == [.start])
        #expect(s.completedSteps == 7 && s.redoStep == 7)
        for r in 0..<3 { #expect(s.handle(.step(rank: r, report(8, epoch: 1)), now: 2).count == (r == 2 ? 1 : 0)) }
        #expect(formed([.init(step: 7, hash: 5), nil, .init(step: 7, hash: 5)]).carriedStep == nil, "one worker carries nothing")
        #expect(formed([.init(step: 7, hash: 5), .init(step: 7, hash: 6)]).carriedStep == nil, "the same step, other parameters")
        #expect(formed([.init(step: 7, hash: 5), .init(step: 5, hash: 6)]).carriedStep == nil, "two steps apart")
        #expect(formed([.init(step: 3, hash: 5), .init(step: 3, hash: 5)]).carriedStep == nil, "older than the checkpoint")
        #expect(formed([.init(step: 7, hash: 5), .init(step: 7, hash: 5)], resume: false).carriedStep == nil, "a fresh run starts over")
    }

    /// A partition silences several workers a moment apart: all are named at the first time-out.
    @Test func workersSilentTogetherAreNamedTogether() {
        var s = started()
        _ = s.handle(.heartbeat(rank: 0), now: 5)
        _ = s.handle(.heartbeat(rank: 2), now: 2)
        #expect(
            s.handle(.tick, now: 6.5) == [
                .abort(
                    "workers rank 1 (tcp://h1:1, 5 s), rank 2 (tcp://h2:1, 4 s) have been silent: they died, "
                        + "lost their connections, or cannot get a heartbeat through (a network partition?)")
            ])
    }

    /// A coordinator that did not run for 6 s (SIGSTOP, a frozen host) blames nobody for that time:
    /// continued, it reads one worker's queued messages first, and the others, as silent by the clock,
    /// are not lost for it; silence after the pause still counts.
    @Test func aPausedCoordinatorBlamesNoMemberForItsOwnPause() {
        var s = started()
        for r in 0..<3 { _ = s.handle(.heartbeat(rank: r), now: 2) }
        #expect(s.handle(.paused(seconds: 6), now: 8.5).isEmpty)
        #expect(s.handle(.heartbeat(rank: 0), now: 8.5).isEmpty)
        #expect(s.handle(.tick, now: 8.6).isEmpty, "ranks 1 and 2 were last heard 0.5 s before the pause")
        for r in 1..<3 { _ = s.handle(.heartbeat(rank: r), now: 8.7) }
        _ = s.handle(.heartbeat(rank: 0), now: 13)
        _ = s.handle(.heartbeat(rank: 2), now: 13)
        #expect(
            s.handle(.tick, now: 13.8) == [
                .abort(
                    "worker rank 1 (tcp://h1:1) has been silent for 5 s: it died, lost its connection, or cannot get a heartbeat through")
            ])
    }

    /// Every member silent at once (the coordinator's host cut off, or all dead): the job fails
    /// without an Abort to them, elastic or not: queued to a partitioned worker, it would arrive when
    /// the link heals and end a replica that --coordinator-wait keeps for a resumed coordinator.
    @Test func everyMemberSilentFailsTheJobTellingNone() {
        var plain = started()
        let why =
            "workers rank 0 (tcp://h0:1, 5 s), rank 1 (tcp://h1:1, 5 s), rank 2 (tcp://h2:1, 5 s) have been silent: they died, "
            + "lost their connections, or cannot get a heartbeat through (a network partition?)"
        #expect(plain.handle(.tick, now: 6.5) == [.abortUntold(why)])
        #expect(plain.phase == .failed(why))
        var elastic = elasticTraining(perEpoch: 4)
        let out = elastic.handle(.tick, now: 100)
        #expect(out.count == 1 && { if case .abortUntold = out[0] { true } else { false } }(), "\(out)")
    }

    @Test func divergedParametersStopTheJobNamingTheRank() {
        var s = started()
        _ = s.handle(.step(rank: 0, report(1, hash: 5)), now: 2)
        _ = s.handle(.step(rank: 1, report(1, hash: 5)), now: 2)
        let out = s.handle(.step(rank: 2, report(1, hash: 6)), now: 2)
        #expect(out == [.abort("rank 2's parameters diverged from rank 0's after step 1 (hash 0x6 vs 0x5)")])
    }

    @Test func replicasThatStartApartAreRefused() {
        var s = CoordinatorState(settings(workers: 2), now: 0)
        _ = s.handle(.hello(identity: [0], address: "a"), now: 0)
        _ = s.handle(.hello(identity: [1], address: "b"), now: 0)
        _ = s.handle(.ready(rank: 0, ready(7)), now: 0)
        #expect(
            s.handle(.ready(rank: 1, ready(8)), now: 0) == [.abort("rank 1 starts from other parameters than rank 0 (hash 0x8 vs 0x7)")])
    }

    @Test func joiningProblems() {
        var s = CoordinatorState(settings(workers: 2), now: 0)
        _ = s.handle(.hello(identity: [0], address: "tcp://x:1"), now: 0)
        #expect(
            s.handle(.hello(identity: [1], address: "tcp://x:1"), now: 0)
                == [
                    .turnAway(
                        identity: [1],
                        reason: "another worker of this job already advertises tcp://x:1; give each worker its own --advertise address")
                ])
        #expect(s.phase == .joining && s.members.count == 1)
        var late = CoordinatorState(settings(workers: 2), now: 0)
        _ = late.handle(.hello(identity: [0], address: "tcp://x:1"), now: 0)
        #expect(late.handle(.tick, now: 61) == [.abort("only 1 of 2 workers joined within 60 s (joined: tcp://x:1)")])
        var strange = started()
        #expect(strange.handle(.step(rank: 5, report(1)), now: 2) == [.dropped("a message for rank 5 before the job formed")])
        #expect(strange.phase == .training)
    }

    /// A Hello and then silence (a worker gone before the job formed, or a stray Hello) holds no place
    /// in the job: joiners repeat their Hello every second, and one not heard for 3 s is not counted.
    @Test func aJoinerThatFallsSilentIsNotCounted() {
        var live = settings(workers: 2)
        live.joinerTimeout = 3
        var s = CoordinatorState(live, now: 0)
        _ = s.handle(.hello(identity: [7], address: "tcp://gone:1"), now: 0)
        #expect(s.handle(.tick, now: 2).isEmpty)
        #expect(s.handle(.tick, now: 3.5) == [.dropped("the worker at tcp://gone:1, which stopped saying hello before the job formed")])
        #expect(s.members.isEmpty)
        _ = s.handle(.hello(identity: [1], address: "tcp://a:1"), now: 4)
        #expect(s.handle(.hello(identity: [2], address: "tcp://b:1"), now: 4.5).count == 2)  // formed with the two live ones
    }

    /// What a member may send depends on the job's state; out of place it is dropped (before the job
    /// formed, a second Ready) or, when a member claims the impossible, the job fails naming it.
    @Test func messagesThatDoNotFitTheStateAreDroppedOrNamed() {
        var joining = CoordinatorState(settings(workers: 2), now: 0)
        _ = joining.handle(.hello(identity: [0], address: "tcp://x:1"), now: 0)
        #expect(
            joining.handle(.ready(rank: 0, .init(parameterHash: 1, layoutFingerprint: 1)), now: 0) == [
                .dropped("a message for rank 0 before the job formed")
            ])
        #expect(joining.handle(.heartbeat(rank: 0), now: 0) == [.dropped("a message for rank 0 before the job formed")])
        #expect(joining.phase == .joining)

        var s = started()
        #expect(
            s.handle(.ready(rank: 1, .init(parameterHash: 1, layoutFingerprint: 1)), now: 2) == [
                .dropped("rank 1 sent Ready while the job is training")
            ])
        var huge = report(1)
        huge.globalStep = .max
        #expect(
            s.handle(.step(rank: 0, huge), now: 2) == [.abort("rank 0 reported step 18446744073709551615 while the job is at step 0 of 4")])
        var t = started()
        var liar = report(1)
        (liar.count, liar.correct) = (10, .max)
        #expect(
            t.handle(.step(rank: 1, liar), now: 2) == [
                .abort("rank 1 sent an impossible step report for step 1: count 10, correct 18446744073709551615")
            ])
        var u = started()
        #expect(
            u.handle(.evaluation(rank: 0, .init(epoch: 4_000_000_000, lossSum: 0, count: 1, correct: 0, scores: [], labels: [])), now: 2)
                == [.abort("rank 0 sent an evaluation of epoch 4000000001, which it has not just finished")])
        var v = started()
        #expect(
            v.handle(.checkpoint(rank: 0, .init(globalStep: 7, safetensors: [])), now: 2)
                == [.abort("rank 0 sent a checkpoint of step 7, which it has not just reported")])
    }

    @Test func aWorkersAbortIsPassedOnWithItsAddress() {
        var s = started()
        #expect(s.handle(.abort(rank: 1, reason: "out of memory"), now: 2) == [.abort("rank 1 (tcp://h1:1) stopped: out of memory")])
    }

    /// A member that does not read its messages is lost as a dead one is, named with how long.
    @Test func aMemberThatDoesNotReadIsLost() {
        var s = started()
        #expect(
            s.handle(.unread(rank: 2, seconds: 10.4), now: 2)
                == [.abort("rank 2 (tcp://h2:1) has not read its messages for 10 s: dropping it")])
    }
}
