import TetherMessages

/// A worker's whole life as a pure state machine: joining, set-up, training, re-forming the ring,
/// joining a running job, outliving a lost coordinator, stopping. Events in (what the coordinator said,
/// what a step or the ring did), directives out (join, make the replica, train a step, report, form
/// the re-formed ring, ...). The shell (`Worker`) carries the directives out with the sockets, the
/// model and the files, and turns what each one ends in (a message, a step, an error) into the next
/// event; this is unit-tested without them. An event that reports a failure (the ring's, the
/// coordinator's Abort or silence, this worker's own) cancels the directives not yet carried out.
///
///     joining --assigned--> settingUp --replicaReady--> waitingForStart --start--> training
///     training --stepFinished--> (report, evaluate, checkpoint) --> training | waitingForFinish
///     training | settingUp (a joiner) | waitingForStart (re-formed) --ringFailed--> reforming
///     training --stepFinished(agreed: reform)--> reforming (a worker joins: at the step's boundary)
///     reforming --Reform--> (re-form) --replicaReady--> waitingForStart
///     (any, once trained, keepsState) --coordinatorSilent--> joining (carrying its state)
///     waitingForFinish --finish--> finished;  (any) --abort | failedLocally--> failed
public struct WorkerState: Sendable {
    public struct Plan: Equatable, Sendable {
        public var rank: Int
        public var stepsPerEpoch: Int, totalSteps: Int
        /// Report the parameter hash every this many steps (0: never), and at epoch ends and the end.
        public var hashEvery: Int
        /// Rank 0 also sends a checkpoint every this many steps (0: epoch ends and the end only).
        public var checkpointEvery: Int
        public init(rank: Int, stepsPerEpoch: Int, totalSteps: Int, hashEvery: Int, checkpointEvery: Int) {
            (self.rank, self.stepsPerEpoch, self.totalSteps, self.hashEvery, self.checkpointEvery) = (
                rank, stepsPerEpoch, totalSteps, hashEvery, checkpointEvery
            )
        }
    }

    public enum Phase: Equatable, Sendable {
        /// Saying Hello until a coordinator assigns this worker: the first, or (carrying this replica's
        /// state) the next one after the coordinator was lost.
        case joining
        /// Assigned: the replica is being made (data, model, ring, its state), then Ready.
        case settingUp
        case waitingForStart
        case training
        /// The ring gave up (a member lost, silent, or cut off), or a worker joins at this step's
        /// boundary: waiting for the coordinator's Reform, then forming that ring.
        case reforming
        case waitingForFinish
        case finished
        case failed(String)
    }

    /// Where a replica's parameters and step come from.
    public enum ParameterSource: Equatable, Sendable {
        /// The state this worker kept through a lost coordinator (the next one asks every worker for it).
        case keptState
        /// The members' state over the running job's ring (a worker joining it).
        case members
        /// The coordinator's resume checkpoint.
        case checkpoint
        /// The coordinator's starting weights (fine-tuning: --model FILE.onnx, --init FILE).
        case startingWeights
        /// Drawn afresh, with any data-dependent initialization over the ring.
        case data
    }

    /// What an Assign offers a replica's parameters from, besides a running job's ring (its epoch).
    public struct Offered: Equatable, Sendable {
        public var keptState = false, checkpoint = false, startingWeights = false
        public init(keptState: Bool = false, checkpoint: Bool = false, startingWeights: Bool = false) {
            (self.keptState, self.checkpoint, self.startingWeights) = (keptState, checkpoint, startingWeights)
        }
    }

    /// What the coordinator tells a worker, as the machine takes it (the shell reads it off the wire).
    public enum Order: Equatable, Sendable, CustomStringConvertible {
        case start, finish, heartbeat
        case stop(Stop)
        case abort(Abort)
        case reform(Reform)

        public var description: String {
            switch self {
            case .start: "Start"
            case .finish: "Finish"
            case .heartbeat: "heartbeat"
            case .stop(let s): "Stop (\(s.reason))"
            case .abort(let a): "Abort (\(a.reason))"
            case .reform(let r): "Reform to ring \(r.ringEpoch)"
            }
        }
    }

    public enum Event: Sendable {
        case launched
        /// The coordinator assigned this worker `rank` on the ring of `ringEpoch` (> 0: a running job's),
        /// offering its parameters from `offered`.
        case assigned(rank: Int, ringEpoch: UInt32, reformInPlace: Bool, offered: Offered = .init())
        /// The coordinator answered Hello with Finish: the run has ended.
        case runFinished
        /// The replica is made on its ring and holds `globalStep` steps. `redoEndOfStep`: its state came
        /// from the ring after a failure (or from what the workers kept through a lost coordinator), so
        /// that step's end-of-step work is done again after Start. `keepsState`: its state may outlive
        /// the coordinator (--coordinator-wait, and nothing per replica that the ring cannot carry).
        case replicaReady(Plan, globalStep: Int, redoEndOfStep: Bool, keepsState: Bool)
        case coordinator(Order)
        /// The step that brought the run to `globalStep` steps is done; `agreed`: what the ranks voted in
        /// its exchange (stop after it; re-form after it).
        case stepFinished(globalStep: Int, agreed: RingVotes = [])
        /// A collective or the forming of a ring gave up: a neighbour gone or past its deadline, or the
        /// ring abandoned for the coordinator's Reform. `computing`: in a step's exchange (the step is given up).
        case ringFailed(String, computing: Bool = false)
        /// This worker's own fault (its data, its disk, an invalid assignment): never waited out.
        case failedLocally(String)
        /// The coordinator has been silent past --coordinator-timeout.
        case coordinatorSilent(String)
        /// The answer to `awaitReform`: the coordinator's Reform (`reform`, if one came within the wait).
        /// (A Reform read while doing something else comes as `.coordinator(.reform)`: a join's is noted
        /// for the next vote; any other is left for the wait, which finds it.)
        case reformReceived(Reform)
        case noReform
        /// This process received `signal` (SIGINT, SIGTERM).
        case signalled(Int32)
    }

    public enum Directive: Equatable, Sendable {
        /// Say Hello until assigned; `carrying`: with the step and hash of the state this worker kept.
        case join(carrying: Bool)
        /// Make the replica the assignment describes, its parameters from `source`.
        case setUp(from: ParameterSource)
        /// A joiner whose ring was re-formed before its replica was made: make it on the re-formed ring
        /// (the members' state comes over it).
        case setUpOn(Reform)
        /// Ready (hash, step, the step abandoned) to the coordinator; the answer is its Start.
        case sendReady
        case reportStep(withHash: Bool)
        /// Evaluate on this rank's share of the held-out split: at the end of `epoch` (`epochEnds`), or
        /// where the run ends within it (its final evaluation; the training state does not move on).
        case evaluate(epoch: Int, epochEnds: Bool = true)
        /// All-gather every replica's buffers and RNG (a collective: every rank takes part).
        case shareReplicaState
        case sendCheckpoint
        /// Train the next step, voting `votes` in its exchange.
        case trainNextStep(votes: RingVotes)
        case awaitFinish
        /// Wait (bounded) for the coordinator's Reform of a ring newer than `ringEpoch` (`urgent`: after a
        /// failure, one at a step boundary, sent before it, does not do); the answer is `reformReceived`
        /// or `noReform`.
        case awaitReform(urgent: Bool)
        /// Leave the current ring (if any) and form `reform`'s; every member takes the state of the one
        /// furthest along; the answer is `replicaReady`.
        case reform(Reform)
        /// The coordinator was lost: close the ring, keep the state the last step left.
        case keepState
        /// A signal before this worker trained: it ends now.
        case interrupt(signal: Int32)
        /// A signal while it trains: tell the coordinator (it votes to stop in its next exchange).
        case tellStop(signal: Int32)
        case exit
        case fail(String)
    }

    public private(set) var phase: Phase = .joining
    /// The replica's plan: set once it is made (its rank changes with each re-formation).
    public private(set) var plan: Plan?
    public private(set) var globalStep = 0
    /// The step the first replica of this job started at (a resumed run's checkpoint): re-formed
    /// rings hold a step in firstStep...totalSteps, and at firstStep there is no end-of-step work to redo.
    public private(set) var firstStep: Int?
    public private(set) var rank = -1
    public private(set) var ringEpoch: UInt32 = 0
    /// Set by a Stop (or a signal): this rank votes to stop in every exchange from then on.
    public private(set) var stopRequested = false
    /// A Reform at a step boundary (a worker joins), held until a step's exchange agrees on it.
    public private(set) var boundaryReform: Reform?
    /// The step this worker was computing when its ring gave up (0: none), for the next Ready.
    public private(set) var abandonedStep = 0
    private var reformInPlace = false
    private var keepsState = false, trained = false, signalled = false
    /// Holds the state it kept through a lost coordinator (until a replica is made again).
    private var holdsKeptState = false
    /// The replica of the current assignment is made (a joiner's is not until its ring forms).
    private var replicaMade = false
    private var redoAfterStart = false
    private var lastFailure: String?

    public init() {}

    /// Whether this worker's replica outlives a lost coordinator (it keeps its state and says hello to
    /// the next one) rather than failing with it: the heartbeat thread ends the process otherwise.
    /// A state kept through a lost coordinator is worth as much while this worker waits for the next
    /// coordinator and while it sets up the replica that one assigns (a silence then, on a loaded
    /// machine, ended the process and lost the state it carried).
    public var outlivesLostCoordinator: Bool {
        if holdsKeptState, [.joining, .settingUp].contains(phase) { return true }
        return keepsState && trained && [.training, .reforming, .waitingForStart, .waitingForFinish].contains(phase)
    }

    /// Whether `reform`, read while this worker does something else, gives that up: a re-formation
    /// after a loss, of a ring newer than this worker's (a join's, at a step boundary, is voted on).
    public func abandonsWork(for reform: Reform) -> Bool { !reform.atBoundary && reform.ringEpoch > ringEpoch }

    /// Saying hello to the next coordinator with the state it kept through a lost one.
    public var rejoining: Bool { phase == .joining && holdsKeptState }

    /// This rank's votes for its next step's exchange.
    public var votes: RingVotes { RingVotes().union(stopRequested ? .stop : []).union(boundaryReform != nil ? .reform : []) }

    /// The reason of the Abort a coordinator sends when it is interrupted before training.
    public static let coordinatorInterrupted = "interrupted"

    public mutating func handle(_ event: Event) -> [Directive] {
        switch (phase, event) {
        case (.failed, _), (.finished, _):
            return []
        case (_, .coordinator(.abort(let a))):
            // before an assignment an Abort is a refusal, unless the coordinator itself was stopped
            return fail(
                rank < 0 && !trained && a.reason != Self.coordinatorInterrupted
                    ? "the coordinator refused this worker: \(a.reason)"
                    : a.reason == Self.coordinatorInterrupted
                        ? "the coordinator was stopped (interrupted) before the job began training"
                        : "the coordinator stopped the job: \(a.reason)")
        case (_, .failedLocally(let message)):
            return fail(message)
        case (_, .coordinator(.heartbeat)):
            return []
        case (_, .coordinator(.stop)):
            stopRequested = true
            return []

        case (.joining, .launched):
            return [.join(carrying: false)]
        case (.joining, .runFinished):
            phase = .finished
            return [.exit]
        case (_, .signalled(let signal)):
            guard !signalled else { return [] }
            signalled = true
            guard trained else { return [.interrupt(signal: signal)] }
            stopRequested = true
            return [.tellStop(signal: signal)]

        case (.joining, .assigned(let rank, let epoch, let inPlace, let offered)):
            (self.rank, ringEpoch, reformInPlace, phase, boundaryReform, replicaMade) = (rank, epoch, inPlace, .settingUp, nil, false)
            guard !offered.keptState || holdsKeptState else {
                return fail("the coordinator asks for the state this worker kept, and it keeps none")
            }
            let source: ParameterSource =
                offered.keptState
                ? .keptState
                : epoch > 0 ? .members : offered.checkpoint ? .checkpoint : offered.startingWeights ? .startingWeights : .data
            return [.setUp(from: source)]

        case (.settingUp, .replicaReady(let plan, let step, let redo, let keeps)),
            (.reforming, .replicaReady(let plan, let step, let redo, let keeps)):
            // A replica that came over the ring (a joiner, a kept state) redoes with the others from step 1 on.
            let first = firstStep ?? (redo || ringEpoch > 0 ? 0 : step)
            guard (first...plan.totalSteps).contains(step) else {
                return fail("the replica holds step \(step), outside this run's \(first)...\(plan.totalSteps)")
            }
            (self.plan, globalStep, firstStep, keepsState, redoAfterStart) = (plan, step, first, keeps, redo && step > first)
            (holdsKeptState, replicaMade) = (false, true)
            lastFailure = nil
            (rank, phase) = (plan.rank, .waitingForStart)
            return [.sendReady]
        case (.waitingForStart, .coordinator(.start)):
            guard let plan else { return fail("Start before the replica was made") }
            (phase, trained, abandonedStep) = (.training, true, 0)
            if redoAfterStart {
                redoAfterStart = false
                return stepEnds(globalStep, plan: plan, agreed: [])
            }
            if globalStep >= plan.totalSteps { phase = .waitingForFinish }
            return [phase == .training ? .trainNextStep(votes: votes) : .awaitFinish]
        case (.training, .stepFinished(let step, let agreed)):
            guard let plan, step == globalStep + 1, step <= plan.totalSteps else {
                return fail("step \(step) finished after step \(globalStep) of \(plan?.totalSteps ?? 0)")
            }
            globalStep = step
            return stepEnds(step, plan: plan, agreed: agreed)

        // A worker joins: a Reform at a step boundary is voted on in the next exchange.
        case (.training, .coordinator(.reform(let r))) where r.atBoundary:
            if r.ringEpoch > max(ringEpoch, boundaryReform?.ringEpoch ?? 0) { boundaryReform = r }
            return []
        // Elastic in place: a failed ring waits for the coordinator to re-form it (a fresh ring that does
        // not form, or a job that is not elastic in place, fails). After the last step too: a member
        // lost during its end-of-step work (the replica state gathered for rank 0's checkpoint) leaves
        // the job without its last checkpoint, which the survivors redo on the re-formed ring.
        case (.training, .ringFailed(let why, let computing)), (.reforming, .ringFailed(let why, let computing)),
            (.waitingForStart, .ringFailed(let why, let computing)), (.settingUp, .ringFailed(let why, let computing)),
            (.waitingForFinish, .ringFailed(let why, let computing)):
            guard reformInPlace, phase != .settingUp || ringEpoch > 0 else { return fail(why) }
            if phase == .training, computing { abandonedStep = globalStep + 1 }
            (phase, lastFailure, boundaryReform) = (.reforming, why, nil)
            return [.awaitReform(urgent: true)]
        case (.reforming, .reformReceived(let r)):
            // After a failure only a Reform sent for it will do (a join's, sent before, holds the lost member).
            guard r.ringEpoch > ringEpoch, lastFailure == nil || !r.atBoundary else { return [.awaitReform(urgent: lastFailure != nil)] }
            (ringEpoch, rank, boundaryReform) = (r.ringEpoch, Int(r.rank), nil)
            return [replicaMade ? .reform(r) : .setUpOn(r)]
        case (.reforming, .noReform):
            return fail((lastFailure ?? "the ring failed") + "; the coordinator did not re-form the ring")

        case (_, .coordinatorSilent(let why)):
            guard outlivesLostCoordinator else { return fail(why) }
            (phase, rank, ringEpoch, boundaryReform, abandonedStep, holdsKeptState, replicaMade) = (.joining, -1, 0, nil, 0, true, false)
            // the next coordinator's job starts where that one says: a first step kept from this one
            // made this rank redo a re-formation's end-of-step work that the others, set up fresh, did not
            firstStep = nil
            return [.keepState, .join(carrying: true)]

        case (.waitingForFinish, .coordinator(.finish)), (.settingUp, .coordinator(.finish)), (.waitingForStart, .coordinator(.finish)):
            // (a joiner's set-up: the run ended before the members reached a step boundary)
            phase = .finished
            return [.exit]
        case (_, .coordinator(.start)), (_, .coordinator(.reform(_))):
            return []  // a repeated Start, a Reform of a ring already left: nothing to do
        case (_, .coordinator(let order)):
            return fail("unexpected \(order) from the coordinator while \(phase)")
        case (_, let e):
            return fail("unexpected \(e) while \(phase)")
        }
    }

    /// What follows the step that brought the run to `step` steps: its report, an evaluation where an
    /// epoch (or the run) ends, replica state and rank 0's checkpoint where one is due, then the next
    /// step, the re-formation the ranks agreed on, or the wait for Finish.
    private mutating func stepEnds(_ step: Int, plan: Plan, agreed: RingVotes) -> [Directive] {
        let epochEnds = step % plan.stepsPerEpoch == 0, last = step == plan.totalSteps || agreed.contains(.stop)
        var out: [Directive] = [.reportStep(withHash: plan.hashEvery > 0 && (step % plan.hashEvery == 0 || epochEnds || last))]
        if epochEnds {
            out.append(.evaluate(epoch: step / plan.stepsPerEpoch - 1))
        } else if step == plan.totalSteps {
            out.append(.evaluate(epoch: step / plan.stepsPerEpoch, epochEnds: false))
        }
        if epochEnds || last || (plan.checkpointEvery > 0 && step % plan.checkpointEvery == 0) {
            // Every rank contributes its buffers and RNG; rank 0 writes them into its checkpoint.
            out.append(.shareReplicaState)
            if plan.rank == 0 { out.append(.sendCheckpoint) }
        }
        if last {
            phase = .waitingForFinish
            return out + [.awaitFinish]
        }
        if agreed.contains(.reform) {
            // The ranks agreed to re-form after this step (a worker joins): nothing is abandoned.
            phase = .reforming
            return out + [.awaitReform(urgent: false)]
        }
        return out + [.trainNextStep(votes: votes)]
    }

    private mutating func fail(_ message: String) -> [Directive] {
        phase = .failed(message)
        return [.fail(message)]
    }
}

/// Whether a peer that should be heard from regularly is gone (the worker's view of its
/// coordinator): silent past the time-out, or its connection, once up, down for `goneAfter` (a killed
/// process's connections are closed by the kernel at once; a frozen one or a cut link closes none,
/// and only the time-out names those). Pure: time is an argument.
public struct LivenessWatch: Sendable {
    public let timeout: Double
    public private(set) var lastHeard: Double
    /// Whether the connection was ever up, and since when it has been down.
    private var wasUp = false, downSince: Double?
    /// How long a connection that was up may stay down before the peer counts as gone (libzmq
    /// reconnects within 100 ms when the peer is back: a coordinator started again at once is kept).
    public static let goneAfter = 1.0

    public init(timeout: Double, now: Double) { (self.timeout, lastHeard) = (timeout, now) }
    public mutating func heard(at now: Double) { lastHeard = max(lastHeard, now) }
    public mutating func connectionUp() { (wasUp, downSince) = (true, nil) }
    public mutating func connectionDown(at now: Double) { if wasUp, downSince == nil { downSince = now } }

    /// Seconds of silence, once they exceed the timeout.
    public func silence(at now: Double) -> Double? { now - lastHeard > timeout ? now - lastHeard : nil }
    /// Seconds the connection has been down, once they reach `goneAfter`.
    public func disconnection(at now: Double) -> Double? { downSince.flatMap { now - $0 >= Self.goneAfter ? now - $0 : nil } }
}
