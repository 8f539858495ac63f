import TetherMessages
import TetherTrain

/// The coordinator's logic as a pure state machine: events in (a worker said hello, reported a step,
/// went silent, ...), directives out (assign it a rank, start, log a step, write a checkpoint, abort).
/// Time is an argument (seconds on a monotonic clock), so every path is testable without sockets.
///
/// A job: `workers` hellos (or, elastic, at least `minWorkers` and no more for `lastCall` seconds)
/// -> one Assign each (ranks in arrival order, the ring in rank order) -> every
/// Ready -> Start when all parameter hashes agree -> per global step, one StepReport from every rank
/// (merged into one summary; hashes compared when reported) -> at epoch ends, every rank's EvalReport
/// (merged) and rank 0's checkpoint -> Finish once the last step, its evaluation and its checkpoint are in.
/// A graceful stop ends the job the same way after the step whose reports say `stopping`; asked while
/// the ring re-forms in place, it is asked again of the re-formed ring, so the survivors' step is kept.
///
/// Elastic in place (`reformInPlace`): a member lost while training (silent, or its Abort) does not
/// stop the job while `minWorkers` remain: the survivors are re-formed into a ring of a new epoch
/// (new ranks in their old order) -> every survivor listens on it -> they connect -> every Ready, at
/// one agreed step -> Start. The survivors redo the end-of-step work of that step (report,
/// evaluation, checkpoint); what of it had already arrived is not taken twice. A worker that says
/// hello while the job trains (up to `workers`) joins at a step boundary: it is assigned the last rank
/// of the next epoch's ring at once, the members are told to re-form `atBoundary` and go on training
/// until a step's exchange agrees to switch; they finish that step and its end-of-step work on the old
/// ring (reported as usual), then listen on the new one with the joiner. Nothing is redone. A Hello
/// while the ring re-forms after a loss waits (unanswered, repeated) for the job to train again.
public struct CoordinatorState {
    public struct Settings: Sendable {
        public var workers: Int
        /// The global step the job starts at (non-zero on resume) and the one it ends at.
        public var firstStep: Int, totalSteps: Int
        public var stepsPerEpoch: Int
        /// A worker not heard from (any message) for this long is declared dead.
        public var heartbeatTimeout: Double = 5
        /// Workers that have not all said hello by then fail the job.
        public var joinTimeout: Double = 60
        /// Elastic: the job may form with this many workers (at most `workers`) once no other has
        /// joined for `lastCall` seconds. Workers who say hello after it formed are turned away.
        public var minWorkers: Int
        public var lastCall: Double = 10
        /// A joining worker repeats its Hello every second until assigned; one not heard for this long
        /// has gone (or was never a worker: a Hello and a disconnect) and is not counted.
        public var joinerTimeout: Double = 3
        /// Elastic in place: a lost member re-forms the ring of the survivors instead of failing the job.
        public var reformInPlace = false
        /// A resumed run takes the state its workers kept through a lost coordinator when they all
        /// carry the same, at or past the checkpoint's step (a fresh run starts over whatever they carry).
        public var takesCarriedState = false
        public init(workers: Int, firstStep: Int = 0, totalSteps: Int, stepsPerEpoch: Int) {
            (self.workers, self.firstStep, self.totalSteps, self.stepsPerEpoch) = (workers, firstStep, totalSteps, stepsPerEpoch)
            minWorkers = workers
        }
        var elastic: Bool { minWorkers < workers }
    }

    public enum Phase: Equatable, Sendable { case joining, initializing, training, finished, failed(String) }

    public struct Member: Sendable {
        public var identity: [UInt8]
        public var address: String
        public var lastHeard: Double
        var ready: Ready?
        /// The state it kept through a lost coordinator, if any.
        var carried: Carried?
    }

    /// A worker's state kept through a lost coordinator: the steps it holds and its parameters' hash.
    public struct Carried: Equatable, Sendable {
        public var step: Int, hash: UInt64
        public init(step: Int, hash: UInt64) { (self.step, self.hash) = (step, hash) }
    }

    /// One global step, merged over the ranks.
    public struct StepSummary: Equatable, Sendable {
        public var globalStep: Int, epoch: Int
        public var lossSum: Double, count: Int, correct: Int
        /// Per rank: compute (forward and backward), gradient exchange, of it waiting for data, optimizer.
        public var compute: [Double], exchange: [Double], waiting: [Double], optimizer: [Double]
        /// The rate the step's update used (rank 0's; every replica uses the same).
        public var learningRate = 0.0
        /// Per rank: payload bytes sent, dense and sparse; the step's trace spans (--timeline).
        public var denseBytes: [Double] = [], sparseBytes: [Double] = []
        public var spans: [[TraceSpan]] = []
        public var meanLoss: Double { count > 0 ? lossSum / Double(count) : .nan }
        public var figures: RankFigures {
            RankFigures(
                compute: compute, exchange: exchange, waiting: waiting, optimizer: optimizer, denseBytes: denseBytes,
                sparseBytes: sparseBytes)
        }
    }

    public enum Event: Sendable {
        case hello(identity: [UInt8], address: String, carried: Carried? = nil)
        case ready(rank: Int, Ready)
        case step(rank: Int, StepReport)
        case evaluation(rank: Int, EvalReport)
        case checkpoint(rank: Int, CheckpointData)
        case heartbeat(rank: Int)
        case abort(rank: Int, reason: String)
        /// A survivor of a re-formation has left the old ring and listens on the new one of `epoch`.
        case listening(rank: Int, epoch: UInt32)
        /// A member has not taken its messages for `seconds` (its queue at the coordinator stays full):
        /// it is lost as a dead one is, whatever else it sends.
        case unread(rank: Int, seconds: Double)
        /// A member's connection has been gone for `seconds` (it was connected): its process has ended.
        case disconnected(rank: Int, seconds: Double)
        /// A stop was asked: this process received `signal` (rank nil), or rank `rank` said it did (it
        /// votes to stop in its next step's exchange, which tells the others).
        case stopAsked(signal: Int32, rank: Int?)
        /// This coordinator did not run for `seconds` (its process stopped, its host frozen, its loop
        /// held up): nobody's silence in that time is counted against them.
        case paused(seconds: Double)
        case tick
    }

    public enum Directive: Equatable, Sendable {
        case assign(identity: [UInt8], rank: Int, ring: [String])
        /// Re-form the ring (elastic in place) as `nextRing`, the ring of `epoch`: its members in their new
        /// rank order (the continuing ones in their old order, then a joiner). `assign`: a worker that
        /// joins the running job (it gets an Assign; every other member a Reform). `atBoundary`: a join,
        /// taken at a step's end (nothing redone); else after a loss, at once.
        case reform(epoch: UInt32, assign: [UInt8]? = nil, reason: String, atBoundary: Bool = false)
        /// Every survivor listens on the re-formed ring: they may connect (no message can reach an
        /// abandoned socket at a neighbour's address any more).
        case connectRing
        /// Tell a worker that is not part of the job (it came after an elastic job formed) to leave.
        case turnAway(identity: [UInt8], reason: String)
        case start
        case stepCompleted(StepSummary)
        case epochCompleted(epoch: Int, reports: [EvalReport])
        case writeCheckpoint(CheckpointData)
        /// Tell every member to stop after the step in progress (`again`: the ring re-formed since a stop
        /// was asked, and its members are told anew).
        case askToStop(signal: Int32, again: Bool)
        /// Stop every worker and fail the job with this message.
        case abort(String)
        /// Fail the job with this message, telling no member: every one is lost. An Abort queued to a
        /// worker cut off by a partition arrives when the link heals and ends a replica worth keeping:
        /// untold, one started with --coordinator-wait keeps its state for a coordinator resumed.
        case abortUntold(String)
        /// A message that does not fit the job's state was dropped: log it (rate-limited); the job goes on.
        case dropped(String)
        case finish
    }

    public let settings: Settings
    public private(set) var phase: Phase = .joining
    public private(set) var members: [Member] = []
    public private(set) var completedSteps: Int
    /// Set when the ranks agreed to stop early (a graceful stop, StepReport.stopping): the job ends
    /// after this step, with its checkpoint, instead of after `totalSteps`.
    public private(set) var stoppedAt: Int?
    /// The signal a stop was asked with (this process's, or the one a worker said it received): the
    /// job stops after the step in progress, or (before it trained) at once, as interrupted.
    public private(set) var stopSignal: Int32?
    /// The step the job ends at: the run's last, or the one it stops after.
    public var endStep: Int { stoppedAt ?? settings.totalSteps }
    /// Set when the job formed with workers that all kept the same state through a lost coordinator,
    /// newer than (or as new as) the checkpoint: the job continues from that step, nothing lost.
    public private(set) var carriedStep: Int?
    /// The ring's forming: 0 at first, one more at each re-formation.
    public private(set) var ringEpoch: UInt32 = 0
    /// A worker assigned to join at a step boundary, before the members have switched to its ring
    /// (of epoch ringEpoch + 1); it holds rank members.count there.
    public private(set) var joiner: Member?
    /// The members of the ring being formed (or formed): the members and a joiner.
    public var nextRing: [Member] { members + (joiner.map { [$0] } ?? []) }
    /// At the last re-formation: how many steps the ranks computed and gave up (0 or 1; 0 at a join).
    public private(set) var stepsRedone = 0
    /// At the last re-formation: steps the ring trained whose reports never arrived (it trained on
    /// while cut off from this coordinator); taken as done, their losses unknown.
    public private(set) var stepsUnreported = 0
    /// The step the survivors of the last re-formation agreed on: its end-of-step work is redone, and
    /// what of it had already arrived is dropped without a word.
    public private(set) var redoStep: Int?
    private var stepReports: [Int: [StepReport?]] = [:]
    private var evalReports: [Int: [EvalReport?]] = [:]
    private var checkpointedStep = -1
    /// The survivors of the current re-formation that listen on the new ring.
    private var listening: Set<Int> = []
    private let started: Double
    private var lastJoined: Double
    /// The last step each rank reported: bounds which evaluations and checkpoints it may send.
    private var reportedStep: [Int] = []
    /// Epochs before this one have been merged.
    private var nextEvaluation: Int
    private var mergedEpochs: Set<Int> = []
    /// More samples than any step or evaluation of one rank can hold.
    static let maxSamplesPerReport: UInt64 = 1 << 40

    public init(_ settings: Settings, now: Double) {
        self.settings = settings
        completedSteps = settings.firstStep
        (started, lastJoined) = (now, now)
        nextEvaluation = settings.firstStep / max(settings.stepsPerEpoch, 1)
    }

    /// The epoch whose last step is `globalStep` (1-based count of steps), if it ends one.
    func epochEnding(at globalStep: Int) -> Int? {
        globalStep % settings.stepsPerEpoch == 0 ? globalStep / settings.stepsPerEpoch - 1 : nil
    }

    /// The epoch the run ends within (--max-steps), evaluated at that end like a whole one; nil when the
    /// run ends at an epoch's end.
    public var partialFinalEpoch: Int? { epochEnding(at: settings.totalSteps) == nil ? settings.totalSteps / settings.stepsPerEpoch : nil }

    /// The epoch whose evaluation the job waits for before it ends: the last one's, or the partial
    /// final epoch's; none after a graceful stop within an epoch.
    private var finalEvaluation: Int? { epochEnding(at: endStep) ?? (stoppedAt == nil ? partialFinalEpoch : nil) }

    /// Every event goes through here: what any message's rank says (the member heard now, or a message
    /// before the job formed dropped), the abandoned ring's stale reports, then the event's handler.
    public mutating func handle(_ event: Event, now: Double) -> [Directive] {
        if case .finished = phase { return [] }
        if case .failed = phase { return [] }
        if let rank = event.rank {
            // Ranks come from the connection a message arrived on (the shell's identity map), never
            // from what it claims; before the ring forms nobody holds one.
            if rank == members.count, joiner != nil {
                // the joiner, before the members switch: it listens on the new ring, else only heartbeats
                joiner!.lastHeard = now
                guard case .listening(_, let epoch) = event, epoch == ringEpoch + 1 else { return [] }
            } else {
                guard phase != .joining, members.indices.contains(rank) else {
                    return [.dropped("a message for rank \(rank) before the job formed")]
                }
                members[rank].lastHeard = now
            }
        }
        // While the ring re-forms, reports of the abandoned ring's work still arrive: the survivors redo
        // that work on the new ring, so these are stale, not faults.
        if phase == .initializing, ringEpoch > 0 {
            switch event {
            case .step, .evaluation, .checkpoint: return []
            default: break
            }
        }
        switch event {
        case .hello(let identity, let address, let carried):
            return onHello(identity: identity, address: address, carried: carried, now: now)
        case .ready(let rank, let ready): return onReady(rank: rank, ready)
        case .step(let rank, let report): return onStep(rank: rank, report)
        case .evaluation(let rank, let report): return onEvaluation(rank: rank, report)
        case .checkpoint(let rank, let data): return onCheckpoint(rank: rank, data)
        case .heartbeat: return []
        case .listening(let rank, let epoch): return onListening(rank: rank, epoch: epoch)
        case .abort(let rank, let reason):
            return lose([rank], "rank \(rank) (\(members[rank].address)) stopped: \(reason)", now: now)
        case .disconnected(let rank, let seconds):
            return lose(
                [rank],
                "worker rank \(rank) (\(members[rank].address)): its connection has been gone for \(String(format: "%.1f", seconds)) s: its process ended",
                now: now)
        case .unread(let rank, let seconds):
            return lose(
                [rank], "rank \(rank) (\(members[rank].address)) has not read its messages for \(Int(seconds)) s: dropping it", now: now)
        case .stopAsked(let signal, let rank): return onStopAsked(signal: signal, rank: rank)
        case .tick: return onTick(now: now)
        case .paused(let seconds):
            // A coordinator that was not listening cannot tell a silent worker from its own absence:
            // every clock of silence moves on by the pause (a frozen coordinator, continued, read one
            // worker's queued messages before the others' and dropped those two).
            for i in members.indices { members[i].lastHeard = min(now, members[i].lastHeard + seconds) }
            if let j = joiner { joiner!.lastHeard = min(now, j.lastHeard + seconds) }
            return []
        }
    }

    /// A stop asked: after the step in progress while training; while the ring re-forms in place, once
    /// the re-formed ring trains (its members are told then: the step the survivors hold is kept, with
    /// a checkpoint); before the job trains, the job ends at once, interrupted.
    private mutating func onStopAsked(signal: Int32, rank: Int?) -> [Directive] {
        guard stopSignal == nil else { return [] }
        stopSignal = signal
        switch phase {
        case .training: return rank == nil ? [.askToStop(signal: signal, again: false)] : []
        case .initializing where ringEpoch > 0: return []
        default: return fail(WorkerState.coordinatorInterrupted)
        }
    }

    /// A Hello: a worker joining the forming job, joining a running one (elastic in place), or turned away.
    private mutating func onHello(identity: [UInt8], address: String, carried: Carried?, now: Double) -> [Directive] {
        // A worker repeats its Hello until assigned (one to a restarting coordinator may be lost).
        if let known = members.firstIndex(where: { $0.identity == identity }) {
            members[known].lastHeard = now
            return []
        }
        if joiner?.identity == identity { return [] }
        if phase != .joining, stopSignal != nil {
            return [.turnAway(identity: identity, reason: "the job is stopping; a worker at \(address) does not join it")]
        }
        // Elastic in place: a worker at a member's address is that member restarted (a container
        // restarted in place, faster than the loss is found: a second or the heartbeat time-out)
        // or a misconfigured twin; either way it waits, its Hello repeated, and joins once the
        // member there is lost, instead of being turned away.
        if settings.reformInPlace, phase != .joining, stoppedAt == nil, let rank = members.firstIndex(where: { $0.address == address }) {
            return [.dropped("the hello of a worker at \(address), where rank \(rank) is still a member: it joins if that member is lost")]
        }
        // Elastic in place: a worker arriving while the job trains (a replacement, or capacity up
        // to `workers`) joins it at a step boundary, as the last rank; while the ring re-forms, or
        // another joins, it waits (its Hello is repeated).
        if settings.reformInPlace, phase == .training || (phase == .initializing && ringEpoch > 0), stoppedAt == nil,
            members.count < settings.workers,
            !nextRing.contains(where: { $0.address == address })
        {
            guard phase == .training, joiner == nil else { return [] }
            return admit(identity: identity, address: address, now: now)
        }
        // A late worker is turned away, never fatal: a stray or hostile Hello must not stop a job.
        guard phase == .joining else {
            return [
                .turnAway(
                    identity: identity, reason: "the job formed with \(members.count) workers before a worker at \(address) said hello")
            ]
        }
        if members.contains(where: { $0.address == address }) {
            return [
                .turnAway(
                    identity: identity,
                    reason: "another worker of this job already advertises \(address); give each worker its own --advertise address")
            ]
        }
        members.append(Member(identity: identity, address: address, lastHeard: now, carried: carried))
        lastJoined = now
        return members.count == settings.workers ? form(now: now) : []
    }

    /// A member's Ready: when all are ready and agree on the layout, the parameters and the step, training starts.
    private mutating func onReady(rank: Int, _ ready: Ready) -> [Directive] {
        guard phase == .initializing, members[rank].ready == nil else {
            return [.dropped("rank \(rank) sent Ready while the job is \(phase)")]
        }
        members[rank].ready = ready
        guard members.allSatisfy({ $0.ready != nil }) else { return [] }
        let reference = members[0].ready!
        if let bad = members.indices.first(where: { members[$0].ready!.layoutFingerprint != reference.layoutFingerprint }) {
            return fail(
                "rank \(bad) built another parameter layout than rank 0 (fingerprint \(hex(members[bad].ready!.layoutFingerprint)) vs \(hex(reference.layoutFingerprint)))"
            )
        }
        if let bad = members.indices.first(where: { members[$0].ready!.parameterHash != reference.parameterHash }) {
            return fail(
                "rank \(bad) starts from other parameters than rank 0 (hash \(hex(members[bad].ready!.parameterHash)) vs \(hex(reference.parameterHash)))"
            )
        }
        if let step = carriedStep, ringEpoch == 0 {
            // The workers' own state, kept through a lost coordinator: the job goes on from it and
            // they redo that step's end-of-step work (its evaluation, its checkpoint).
            guard members.allSatisfy({ $0.ready!.globalStep == UInt64(step) }) else {
                return fail(
                    "the workers said they carry step \(step) and hold steps \(Set(members.map { $0.ready!.globalStep }).sorted())")
            }
            (completedSteps, redoStep) = (step, step)
            reportedStep = Array(repeating: step, count: members.count)
            nextEvaluation = epochEnding(at: step) ?? step / max(settings.stepsPerEpoch, 1)
        }
        if ringEpoch > 0 {
            // After a re-formation every survivor holds the step of the one furthest along: the last
            // step merged here, the one after it (whose reports will come again), or one further on
            // when the ring trained while this coordinator heard nothing of it (a partition): the
            // steps between are the ranks' own, trained and exchanged; only their reports are lost.
            let steps = Set(members.map { $0.ready!.globalStep })
            guard steps.count == 1, let step = Int(exactly: steps.first!), (completedSteps...settings.totalSteps).contains(step) else {
                return fail("the re-formed ring's ranks hold steps \(steps.sorted()) after step \(completedSteps)")
            }
            stepsUnreported = max(0, step - completedSteps - 1)
            if stepsUnreported > 0 {
                completedSteps = step - 1
                reportedStep = Array(repeating: completedSteps, count: members.count)
            }
            redoStep = step
            // a rank computing a step past the one agreed on gave that step up (bounded: the checks above)
            let abandoned = members.map { Int(clamping: $0.ready!.abandonedStep) }.max() ?? 0
            stepsRedone = abandoned > step ? min(abandoned - step, 1) : 0
        }
        phase = .training
        let stopping = stopSignal.map { [Directive.askToStop(signal: $0, again: true)] } ?? []
        return [.start] + (ringEpoch > 0 && stoppedAt == nil ? stopping : [])
            + (completedSteps >= settings.totalSteps ? finishIfDone() : [])
    }

    /// A member's step report: steps complete in order once every rank's report is in.
    private mutating func onStep(rank: Int, _ report: StepReport) -> [Directive] {
        guard phase == .training else { return [.dropped("rank \(rank) reported a step while the job is \(phase)")] }
        if redoStep != nil, report.globalStep == UInt64(completedSteps), Int(report.globalStep) == redoStep { return [] }
        guard let step = Int(exactly: report.globalStep), step > completedSteps, step <= endStep else {
            return fail("rank \(rank) reported step \(report.globalStep) while the job is at step \(completedSteps) of \(endStep)")
        }
        guard report.count <= Self.maxSamplesPerReport, report.correct <= report.count, stepReports[step]?[rank] == nil else {
            return fail(
                "rank \(rank) sent an impossible step report for step \(step): count \(report.count), correct \(report.correct)"
                    + (stepReports[step]?[rank] != nil ? ", its second for that step" : ""))
        }
        reportedStep[rank] = max(reportedStep[rank], step)
        var slots = stepReports[step] ?? Array(repeating: nil, count: members.count)
        slots[rank] = report
        stepReports[step] = slots
        return completeReportedSteps() + finishIfDone()
    }

    /// Completes every step whose reports are all in, in order (a fast rank may report a later step
    /// before a slow one's earlier): the ranks' parameters must agree and so must their stop votes.
    private mutating func completeReportedSteps() -> [Directive] {
        var out: [Directive] = []
        while let next = stepReports[completedSteps + 1], next.allSatisfy({ $0 != nil }) {
            stepReports[completedSteps + 1] = nil
            let reports = next.map { $0! }
            let hashes = reports.map(\.parameterHash)
            if hashes[0] != 0, let bad = hashes.indices.first(where: { hashes[$0] != hashes[0] }) {
                return out
                    + fail(
                        "rank \(bad)'s parameters diverged from rank 0's after step \(completedSteps + 1) (hash \(hex(hashes[bad])) vs \(hex(hashes[0])))"
                    )
            }
            // The stop vote is agreed in the step's exchange: every rank says the same, or one lies.
            if reports.contains(where: \.stopping) {
                guard reports.allSatisfy(\.stopping), !stepReports.keys.contains(where: { $0 > completedSteps + 1 }) else {
                    return out + fail("the ranks disagree whether the job stops after step \(completedSteps + 1)")
                }
                stoppedAt = completedSteps + 1
            }
            completedSteps += 1
            out.append(
                .stepCompleted(
                    StepSummary(
                        globalStep: completedSteps, epoch: Int(reports[0].epoch),
                        lossSum: reports.reduce(0) { $0 + $1.lossSum }, count: reports.reduce(0) { $0 &+ Int(clamping: $1.count) },
                        correct: reports.reduce(0) { $0 &+ Int(clamping: $1.correct) },
                        compute: reports.map(\.computeSeconds), exchange: reports.map(\.allreduceSeconds),
                        waiting: reports.map(\.waitSeconds),
                        optimizer: reports.map(\.optimizerSeconds), learningRate: reports[0].learningRate,
                        denseBytes: reports.map { Double($0.denseBytesSent) }, sparseBytes: reports.map { Double($0.sparseBytesSent) },
                        spans: reports.map(\.spans))))
        }
        return out
    }

    /// A member's evaluation of an epoch it has finished: merged when every rank's is in.
    private mutating func onEvaluation(rank: Int, _ report: EvalReport) -> [Directive] {
        let epoch = Int(report.epoch)
        if let redo = redoStep, mergedEpochs.contains(epoch),
            epochEnding(at: redo) == epoch || (epoch == partialFinalEpoch && redo == settings.totalSteps)
        {
            return []
        }
        // Only an epoch this rank has finished and that is not merged yet: what is kept is bounded
        // by the job's own epochs, whatever a message says.
        let finished =
            (epoch + 1) * settings.stepsPerEpoch <= reportedStep[rank]
            || (epoch == partialFinalEpoch && reportedStep[rank] == settings.totalSteps)
        guard phase == .training, epoch >= nextEvaluation, finished, evalReports[epoch]?[rank] == nil else {
            return fail("rank \(rank) sent an evaluation of epoch \(epoch + 1), which it has not just finished")
        }
        guard report.count <= Self.maxSamplesPerReport, report.correct <= report.count else {
            return fail(
                "rank \(rank) sent an impossible evaluation of epoch \(epoch + 1): count \(report.count), correct \(report.correct)")
        }
        var slots = evalReports[epoch] ?? Array(repeating: nil, count: members.count)
        slots[rank] = report
        evalReports[epoch] = slots
        guard slots.allSatisfy({ $0 != nil }) else { return [] }
        evalReports[epoch] = nil
        nextEvaluation = epoch + 1
        mergedEpochs.insert(epoch)
        return [.epochCompleted(epoch: epoch, reports: slots.map { $0! })] + finishIfDone()
    }

    /// Rank 0's checkpoint of a step it has reported.
    private mutating func onCheckpoint(rank: Int, _ data: CheckpointData) -> [Directive] {
        guard rank == 0 else { return fail("rank \(rank) sent a checkpoint; only rank 0 does") }
        if let redo = redoStep, Int(exactly: data.globalStep) == redo, redo == checkpointedStep { return [] }
        guard phase == .training, let step = Int(exactly: data.globalStep), step > checkpointedStep, step <= reportedStep[0] else {
            return fail("rank 0 sent a checkpoint of step \(data.globalStep), which it has not just reported")
        }
        checkpointedStep = step
        return [.writeCheckpoint(data)] + finishIfDone()
    }

    /// A member listening on a new ring: a join's switch, or a re-formation's ring complete.
    private mutating func onListening(rank: Int, epoch: UInt32) -> [Directive] {
        if joiner != nil, phase == .training, epoch == ringEpoch + 1 {
            // A join: each member listens once it has finished the agreed step and its end-of-step
            // work (sent before, on the same connection); the ring switches when all do.
            listening.insert(rank)
            guard listening.count == members.count + 1 else { return [] }
            guard stepReports.isEmpty, reportedStep.allSatisfy({ $0 == completedSteps }) else {
                return fail("the ranks left the ring of epoch \(ringEpoch) at different steps (reported: \(reportedStep))")
            }
            members.append(joiner!)
            (joiner, ringEpoch, phase, stepsRedone) = (nil, ringEpoch + 1, .initializing, 0)
            for i in members.indices { members[i].ready = nil }
            reportedStep = Array(repeating: completedSteps, count: members.count)
            return [.connectRing]
        }
        guard phase == .initializing, epoch == ringEpoch, ringEpoch > 0 else {
            return [.dropped("rank \(rank) listens on ring epoch \(epoch) while the job is \(phase) on epoch \(ringEpoch)")]
        }
        listening.insert(rank)
        return listening.count == members.count ? [.connectRing] : []
    }

    /// Time passing: a Hello gone silent, the last call of an elastic job, the join time-out, a silent joiner or member.
    private mutating func onTick(now: Double) -> [Directive] {
        if phase == .joining, let gone = members.firstIndex(where: { now - $0.lastHeard > settings.joinerTimeout }) {
            let address = members.remove(at: gone).address
            return [.dropped("the worker at \(address), which stopped saying hello before the job formed")]
        }
        if phase == .joining, settings.elastic, members.count >= settings.minWorkers, now - lastJoined > settings.lastCall {
            return form(now: now)
        }
        if phase == .joining, now - started > settings.joinTimeout {
            return fail(
                "only \(members.count) of \(settings.workers) workers\(settings.elastic ? " (at least \(settings.minWorkers) needed)" : "") joined within \(Int(settings.joinTimeout)) s"
                    + (members.isEmpty ? "" : " (joined: \(members.map(\.address).joined(separator: ", ")))"))
        }
        if let j = joiner, now - j.lastHeard > settings.heartbeatTimeout {
            // The members hold a Reform that includes it: a new one without it, at once.
            joiner = nil
            ringEpoch += 1
            return reform(
                assign: nil, reason: "the worker at \(j.address) that was joining has been silent for \(Int(now - j.lastHeard)) s",
                now: now)
        }
        if phase != .joining, members.contains(where: { now - $0.lastHeard > settings.heartbeatTimeout }) {
            // Named with the first: every other rank silent for half the time-out (a partition or a
            // switch takes several at once, and their time-outs fall a moment apart).
            let silent = members.indices.filter { now - members[$0].lastHeard > settings.heartbeatTimeout / 2 }
            let heard = members.map(\.lastHeard)
            let seconds = { (r: Int) in Int(now - heard[r]) }
            if silent.count == 1, let r = silent.first {
                return lose(
                    [r],
                    "worker rank \(r) (\(members[r].address)) has been silent for \(seconds(r)) s: it died, lost its connection, or cannot get a heartbeat through",
                    now: now)
            }
            return lose(
                silent,
                "workers " + silent.map { "rank \($0) (\(members[$0].address), \(seconds($0)) s)" }.joined(separator: ", ")
                    + " have been silent: they died, lost their connections, or cannot get a heartbeat through (a network partition?)",
                now: now)
        }
        return []
    }

    /// The ring of the workers that joined, in arrival order. Their silence is counted from here: an
    /// elastic job may have waited longer than the heartbeat time-out for the last of them.
    private mutating func form(now: Double) -> [Directive] {
        phase = .initializing
        // Every worker kept a state through the lost coordinator: the ring's sync gives all of them the
        // furthest (a lost coordinator can leave ranks one step apart, as a lost member can); those at
        // one step must hold the same parameters.
        let carried = members.compactMap(\.carried)
        if settings.takesCarriedState, carried.count == members.count, let furthest = carried.map(\.step).max(),
            carried.allSatisfy({ furthest - $0.step <= 1 }), (settings.firstStep...settings.totalSteps).contains(furthest),
            Dictionary(grouping: carried, by: \.step).values.allSatisfy({ Set($0.map(\.hash)).count == 1 })
        {
            carriedStep = furthest
        }
        reportedStep = Array(repeating: completedSteps, count: members.count)
        for i in members.indices { members[i].lastHeard = now }
        let ring = members.map(\.address)
        return members.enumerated().map { .assign(identity: $1.identity, rank: $0, ring: ring) }
    }

    /// Members lost (`lost`, by rank): the job fails with `why`, or (elastic in place, while training
    /// or re-forming, enough left, no stop under way) the survivors re-form the ring.
    private mutating func lose(_ lost: [Int], _ why: String, now: Double) -> [Directive] {
        let survivors = members.indices.filter { !lost.contains($0) }
        // a joiner already assigned counts; at least one member must be left to hand on the state
        guard settings.reformInPlace, stoppedAt == nil, !survivors.isEmpty,
            survivors.count + (joiner == nil ? 0 : 1) >= settings.minWorkers,
            phase == .training || (phase == .initializing && ringEpoch > 0)
        else {
            guard survivors.isEmpty, joiner == nil, phase == .training || phase == .initializing else { return fail(why) }
            phase = .failed(why)
            return [.abortUntold(why)]
        }
        // A joiner already assigned (a join under way) stays, as the last rank: it is told by Reform.
        members = survivors.map { members[$0] } + (joiner.map { [$0] } ?? [])
        if joiner != nil { (joiner, ringEpoch) = (nil, ringEpoch + 1) }  // its boundary epoch is passed over
        return reform(assign: nil, reason: why, now: now)
    }

    /// The ring of `members` (already renumbered: the continuing ones, then any joiner) in a new epoch,
    /// at once: the step in flight is abandoned.
    private mutating func reform(assign: [UInt8]?, reason: String, now: Double) -> [Directive] {
        ringEpoch += 1
        for i in members.indices { (members[i].ready, members[i].lastHeard) = (nil, now) }
        phase = .initializing
        (stepReports, evalReports, redoStep, listening) = ([:], [:], nil, [])
        reportedStep = Array(repeating: completedSteps, count: members.count)
        return [.reform(epoch: ringEpoch, assign: assign, reason: reason)]
    }

    /// A worker joins the running job at a step boundary: it is assigned the last rank of the next
    /// epoch's ring; the members train on until they agree to switch (see `.listening`).
    private mutating func admit(identity: [UInt8], address: String, now: Double) -> [Directive] {
        joiner = Member(identity: identity, address: address, lastHeard: now)
        listening = []
        return [.reform(epoch: ringEpoch + 1, assign: identity, reason: "a worker at \(address) joins the job", atBoundary: true)]
    }

    /// Finish once the last step is in, its epoch's evaluation (if it ends one) is merged, and rank 0's
    /// checkpoint of it has arrived.
    private mutating func finishIfDone() -> [Directive] {
        guard phase == .training, completedSteps == endStep, checkpointedStep == endStep else { return [] }
        if let epoch = finalEvaluation, !mergedEpochs.contains(epoch) { return [] }
        phase = .finished
        return [.finish]
    }

    private mutating func fail(_ message: String) -> [Directive] {
        phase = .failed(message)
        return [.abort(message)]
    }
}

extension CoordinatorState.Event {
    var rank: Int? {
        switch self {
        case .ready(let r, _), .step(let r, _), .evaluation(let r, _), .checkpoint(let r, _), .heartbeat(let r), .abort(let r, _),
            .listening(let r, _), .unread(let r, _), .disconnected(let r, _):
            r
        case .stopAsked(_, let r): r
        case .hello, .tick, .paused: nil
        }
    }
}

func hex(_ v: UInt64) -> String { "0x" + String(v, radix: 16) }
