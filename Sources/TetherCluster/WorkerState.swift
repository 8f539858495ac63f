import TetherComm

/// The worker's decisions as a pure state machine: after each step, what to report and send (the
/// parameter hash, an evaluation at an epoch end, rank 0's checkpoint), and whether to train on or wait
/// for the coordinator's finish; what a message from the coordinator means. The shell (`Worker`) does
/// the computing, the sockets and the files; this is unit-tested without them.
public struct WorkerState: Sendable {
    public struct Plan: Sendable {
        public var rank: Int
        public var stepsPerEpoch: Int, totalSteps: Int
        /// Report the parameter hash every this many steps (0: never), and at epoch ends and the end.
        public var hashEvery: Int
        /// Rank 0 also sends a checkpoint every this many steps (0: epoch ends and the end only).
        public var checkpointEvery: Int
        public init(rank: Int, stepsPerEpoch: Int, totalSteps: Int, hashEvery: Int, checkpointEvery: Int) {
            (self.rank, self.stepsPerEpoch, self.totalSteps, self.hashEvery, self.checkpointEvery) = (rank, stepsPerEpoch, totalSteps, hashEvery, checkpointEvery)
        }
    }

    public enum Phase: Equatable, Sendable { case waitingForStart, training, waitingForFinish, finished, failed(String) }

    public enum Event: Sendable {
        case started
        /// The step that brought the run to `globalStep` steps is done; `stopping`: the ranks agreed in
        /// its exchange to stop after it (a graceful stop: it ends like the run's last step).
        case stepFinished(globalStep: Int, stopping: Bool = false)
        case coordinator(Envelope.Body)
        /// The ring was re-formed (elastic in place) and this replica holds `globalStep` steps, now as
        /// `rank`: the end-of-step work of that step is done again (the coordinator drops what of it
        /// it already has), then training goes on; if no step of this run was done, it just goes on.
        case reformed(globalStep: Int, rank: Int)
    }

    public enum Directive: Equatable, Sendable {
        case reportStep(withHash: Bool)
        /// Evaluate on this rank's share of the held-out split: at the end of `epoch` (`epochEnds`), or
        /// where the run ends within it (its final evaluation; the training state does not move on).
        case evaluate(epoch: Int, epochEnds: Bool = true)
        /// All-gather every replica's buffers and RNG (a collective: every rank takes part).
        case shareReplicaState
        case sendCheckpoint
        case trainNextStep
        case awaitFinish
        case exit
        case fail(String)
    }

    public private(set) var plan: Plan
    public private(set) var phase: Phase = .waitingForStart
    public private(set) var globalStep: Int
    /// The step this run started at (a resumed run's checkpoint).
    public let firstStep: Int

    public init(_ plan: Plan, globalStep: Int = 0) {
        self.plan = plan
        (self.globalStep, firstStep) = (globalStep, globalStep)
    }

    public mutating func handle(_ event: Event) -> [Directive] {
        switch (phase, event) {
        case (.failed, _), (.finished, _):
            return []
        case (_, .coordinator(.abort(let a))):
            return fail("the coordinator stopped the job: \(a.reason)")
        case (.waitingForStart, .started):
            phase = globalStep < plan.totalSteps ? .training : .waitingForFinish
            return [phase == .training ? .trainNextStep : .awaitFinish]
        case (.training, .stepFinished(let step, let stopping)):
            guard step == globalStep + 1, step <= plan.totalSteps else {
                return fail("step \(step) finished after step \(globalStep) of \(plan.totalSteps)")
            }
            globalStep = step
            return stepEnds(step, stopping: stopping)
        case (_, .reformed(let step, let rank)):
            guard (firstStep...plan.totalSteps).contains(step) else {
                return fail("the re-formed ring holds step \(step), outside this run's \(firstStep)...\(plan.totalSteps)")
            }
            (globalStep, plan.rank, phase) = (step, rank, .training)
            guard step > firstStep else {
                if step == plan.totalSteps { phase = .waitingForFinish }
                return [phase == .training ? .trainNextStep : .awaitFinish]
            }
            return stepEnds(step, stopping: false)
        case (.waitingForFinish, .coordinator(.finish)):
            phase = .finished
            return [.exit]
        case (_, .coordinator(.heartbeat)), (_, .coordinator(.start)):
            return []
        case (_, let e):
            return fail("unexpected \(e) while \(phase)")
        }
    }

    /// What follows the step that brought the run to `step` steps: its report, an evaluation where an
    /// epoch (or the run) ends, replica state and rank 0's checkpoint where one is due, then the next
    /// step or the wait for Finish.
    private mutating func stepEnds(_ step: Int, stopping: Bool) -> [Directive] {
        let epochEnds = step % plan.stepsPerEpoch == 0, last = step == plan.totalSteps || stopping
        var out: [Directive] = [.reportStep(withHash: plan.hashEvery > 0 && (step % plan.hashEvery == 0 || epochEnds || last))]
        if epochEnds { out.append(.evaluate(epoch: step / plan.stepsPerEpoch - 1)) }
        else if step == plan.totalSteps { out.append(.evaluate(epoch: step / plan.stepsPerEpoch, epochEnds: false)) }
        if epochEnds || last || (plan.checkpointEvery > 0 && step % plan.checkpointEvery == 0) {
            // Every rank contributes its buffers and RNG; rank 0 writes them into its checkpoint.
            out.append(.shareReplicaState)
            if plan.rank == 0 { out.append(.sendCheckpoint) }
        }
        if last { phase = .waitingForFinish }
        return out + [last ? .awaitFinish : .trainNextStep]
    }

    private mutating func fail(_ message: String) -> [Directive] {
        phase = .failed(message)
        return [.fail(message)]
    }
}

/// Whether a peer that should be heard from regularly has gone silent (the worker's view of its
/// coordinator). Pure: time is an argument.
public struct LivenessWatch: Sendable {
    public let timeout: Double
    public private(set) var lastHeard: Double
    public init(timeout: Double, now: Double) { (self.timeout, lastHeard) = (timeout, now) }
    public mutating func heard(at now: Double) { lastHeard = max(lastHeard, now) }
    /// Seconds of silence, once they exceed the timeout.
    public func silence(at now: Double) -> Double? { now - lastHeard > timeout ? now - lastHeard : nil }
}
