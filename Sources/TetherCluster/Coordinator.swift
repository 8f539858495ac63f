import Foundation
import Logging
import TetherComm
import TetherMessages
import TetherObservability
import TetherData
import TetherNN
import TetherTrain

/// The coordinator process: a ROUTER that workers join, the `CoordinatorState` machine, and the shell
/// that carries out its directives (sockets, heartbeats, the run directory's metrics and checkpoint,
/// the progress view).
public final class Coordinator {
    public struct Options: Sendable {
        public var listen: String
        public var workers: Int
        public var jobID = "tether"
        public var hashEvery = 50
        public var heartbeatTimeout = 5.0
        /// Dense gradients are all-reduced in buckets of at most this many bytes, started during backward
        /// once this many are final (PyTorch DDP's bucket_cap_mb: 25 MB, its first bucket 1 MB).
        public var bucketBytes = 1 << 20
        /// Serve the samples to the workers (DataRequest) instead of each reading --data.
        public var serveData = false
        public var joinTimeout = 60.0
        /// Elastic: the job may start with this many of `workers` (those that joined, once no other has
        /// for `lastCall` seconds), keeping the global batch of `workers`.
        public var minWorkers: Int
        public var lastCall = 10.0
        /// Elastic: a lost worker costs the step in flight (in place), or a restart from the checkpoint.
        public var onLoss = OnLoss.inPlace
        /// Resuming a run that has already finished is not an error: the workers that join are told so
        /// (Finish) and the coordinator ends without error (for restart policies that resume on start).
        public var finishedIsDone = false
        /// CURVE with the cluster key, or --insecure.
        public var security: ClusterSecurity = .insecure
        /// A fresh run deletes the checkpoint and metrics of a run in its directory (--force).
        public var force = false
        /// Write a Chrome trace of every rank's steps here (--timeline).
        public var timeline: String?
        /// The flags a worker of this job needs besides --coordinator (its key, job id): a coordinator
        /// waiting for workers says every 10 s how many it has and the command that starts one. nil: the
        /// workers are started for it (simulate), it only counts.
        public var workerFlags: [String]?
        public init(listen: String, workers: Int) { (self.listen, self.workers, minWorkers) = (listen, workers, workers) }
        var elastic: Bool { minWorkers < workers }
    }

    public enum OnLoss: String, CaseIterable, Sendable {
        case inPlace = "in-place", restart
    }

    public let options: Options
    /// The workers whose --batch x count is the job's global batch: this job's, or its checkpoint's
    /// (kept whatever the ring's size, and written into every checkpoint, so a resume keeps it too).
    private let batchWorkers: Int
    public let config: TrainingConfig
    public let directory: RunDirectory
    public var runDirectory: URL { directory.url }
    let router: ControlChannel
    let context: ZeroMQContext
    public let boundAddress: String
    var progress: ProgressDisplay { reporter.progress }
    /// metrics.jsonl and any other sink, the throughput window and the progress view
    let reporter: StepReporter
    private let timeline: Timeline?
    private var machine: CoordinatorState
    private var heartbeatIdentities: [Int: [UInt8]] = [:]
    /// Every worker that said hello (a bounded number): those that hold no rank when the job ends (one
    /// waiting to join while the ring re-formed) are told, rather than left saying hello to nobody.
    private var helloIdentities: Set<[UInt8]> = []
    /// Tells the workers that said hello and hold no rank that the job has ended.
    private func tellWaitingWorkers(_ body: Envelope.Body) {
        let members = Set(machine.nextRing.map(\.identity))
        for identity in helloIdentities where !members.contains(identity) { send(body, to: identity) }
    }
    /// Ranks by the control identity they were assigned to: the only source of a message's rank.
    private var ranks: [[UInt8]: Int] = [:]
    private let authenticator: Authenticator?
    private let monitor: ZeroMQMonitor
    private var dropped = RateLimiter(perSecond: 2)
    private var resumeBytes: [UInt8] = []
    /// A fresh run's starting weights (`config.startFrom`), sent in every Assign of the first ring.
    private var startingBytes: [UInt8] = []
    private var startState: TrainingState?
    let stepsPerEpoch: Int
    /// Training loss and samples of each epoch not yet evaluated (an epoch's evaluation may be merged
    /// after the next epoch's first steps), and the rate of the last step.
    private var epochTraining: [Int: BatchStats] = [:]
    private var lastRate = 0.0
    private let parameterCount: Int
    let evaluationKind: EvaluationReport.Kind
    /// The splits served to workers (`serveData`).
    private var served: (train: any ServableDataset, test: any ServableDataset)?
    /// Asked every loop while workers join: a reason to stop the job now (simulate: a worker process
    /// that exited before it could say why). Once the job has formed, members say why themselves
    /// (Abort) or are named by their silence, and a member dropped by a re-formation may exit.
    public var failure: () -> String? = { nil }
    /// The metrics line of the last merged evaluation, and the line the job ended with (end or interrupted).
    public private(set) var lastEvaluation: MetricsEvent?
    public private(set) var endEvent: MetricsEvent?
    /// When the job was set up: start-up time is measured from here to the Start.
    private let created: Date
    /// Set when a resumed run had already finished (`finishedIsDone`): its step count.
    private var finishedSteps: Int?

    /// Prepares the job in `runDirectory` (fresh, or with `resume` from its checkpoint) and binds `listen`.
    /// Events go to metrics.jsonl, then `sinks`.
    public init(
        options: Options, config given: TrainingConfig, runDirectory: URL, resume: Bool, progress: ProgressDisplay = ProgressDisplay(),
        sinks: [any MetricsSink] = []
    ) throws {
        self.options = options
        created = Date()
        var config = try given.withFilesResolved()
        directory = try RunDirectory(runDirectory, config: config, resume: resume, force: options.force, progress: progress)
        var resumeMetadata: [String: String] = [:]
        var resumedConfig: TrainingConfig?
        // The workers whose --batch x count is the global batch: the checkpoint's, or this job's.
        var batchWorkers = options.workers
        if let loaded = directory.resumed {
            // a checkpoint without it was written by `train`: one process
            batchWorkers = loaded.file.metadata["tether.workers"].flatMap(Int.init) ?? 1
            resumeBytes = [UInt8](try Data(contentsOf: directory.checkpointURL))
            startState = loaded.state
            resumeMetadata = loaded.file.metadata
            resumedConfig = loaded.config
        }
        self.batchWorkers = batchWorkers
        // On another number of workers (a resume, or elastic) the run keeps its global batch, dealt over
        // the workers it has, so its steps, epochs, schedule and data cursor carry on unchanged.
        if batchWorkers != options.workers || options.elastic {
            config.globalBatch = config.globalBatch(workers: batchWorkers)
            if batchWorkers != options.workers && !options.elastic {
                progress.line(
                    "resuming a run of \(batchWorkers == 1 ? "1 process" : "\(batchWorkers) workers") with \(options.workers): the global batch stays \(config.globalBatch!) samples a step"
                )
            }
        }
        if let g = config.globalBatch, g < options.minWorkers {
            throw ConfigError(
                message: "a global batch of \(g) samples (lm-tied: streams) cannot be dealt over \(options.minWorkers) workers")
        }
        self.config = config
        // The coordinator builds the workload once, to know the epoch's length and to fail early on bad
        // data or flags, before any worker is involved.
        // Its data is also what the coordinator serves (`serveData`); a resumed run's vocabulary is the checkpoint's.
        let probe: any Workload
        do {
            try config.validate()
            probe = try Workloads.make(config, shard: Shard(rank: 0, count: options.workers), metadata: resumeMetadata)
            if let path = config.startFrom, directory.resumed == nil {
                // loaded into the probe: weights that do not fit the model are refused before any worker joins
                let weights = try StartingWeights.read(path)
                try weights.load(into: probe.model)
                startingBytes = [UInt8](weights.bytes())
                progress.line("starting from the weights in \(path)")
            }
        } catch {
            directory.removeUnstarted()  // settings or data refused: the directory as it was
            throw error
        }
        stepsPerEpoch = probe.stepsPerEpoch
        parameterCount = probe.model.arena.count
        if options.serveData { served = probe.servedSplits }
        evaluationKind = try ModelFamily.named(config.model).evaluation(config)
        let total = config.totalSteps(stepsPerEpoch: stepsPerEpoch)
        reporter = StepReporter(
            progress: progress, sinks: sinks, stepsPerEpoch: stepsPerEpoch, totalSteps: total,
            epochs: config.epochsSpanned(stepsPerEpoch: stepsPerEpoch), logEvery: config.logEvery, unit: probe.unit)
        if let done = startState?.globalStep, let stored = resumedConfig {
            do {
                if let line = try config.resumeLine(from: stored, at: done, stepsPerEpoch: stepsPerEpoch, runDirectory: runDirectory.path) {
                    progress.line(line)
                }
            } catch  where options.finishedIsDone {
                finishedSteps = done
            }
        }
        var settings = CoordinatorState.Settings(
            workers: options.workers, firstStep: startState?.globalStep ?? 0, totalSteps: total, stepsPerEpoch: stepsPerEpoch)
        settings.heartbeatTimeout = options.heartbeatTimeout
        settings.joinTimeout = options.joinTimeout
        (settings.minWorkers, settings.lastCall) = (options.minWorkers, options.lastCall)
        // In place needs every replica's state in one survivor: a model with per-replica buffers (a
        // language model's carried state) would lose the lost members' part, so it restarts instead.
        reformInPlace = options.elastic && options.onLoss == .inPlace && Checkpoint.buffers(of: probe.model).isEmpty
        settings.reformInPlace = reformInPlace
        settings.takesCarriedState = resume
        machine = CoordinatorState(settings, now: Clock.now)
        context = try ZeroMQContext()
        ControlLimits.raiseOpenFilesLimit()
        let socket = try ZeroMQSocket(context, .router)
        // The largest message a member sends is rank 0's checkpoint: parameters, up to two optimizer
        // states each, buffers for every replica, and metadata.
        let bufferValues = Checkpoint.buffers(of: probe.model).count
        try socket.setMaxMessageSize((64 << 20) + 16 * probe.model.arena.count + 8 * bufferValues * options.workers)
        try socket.setHandshakeInterval(ControlLimits.handshakeInterval)
        try socket.setHighWaterMarks(send: ControlLimits.queuedMessages, receive: ControlLimits.receivedMessages)
        // A worker that outlived a partition connects afresh under its old identity (ControlChannel.reconnect).
        try socket.setRouterHandover(true)
        if let keys = options.security.keys {
            let auth = try Authenticator(context: context, logger: Logger(label: "coordinator"))
            auth.allow([keys.publicKey], domain: ClusterSecurity.controlDomain)
            try socket.secure(.server(keys, domain: ClusterSecurity.controlDomain, auth))
            authenticator = auth
        } else {
            authenticator = nil
            progress.line("coordinator: " + ClusterSecurity.insecureWarning)
        }
        monitor = try socket.monitor(ZMQEvents.handshakeFailures)
        do { boundAddress = try socket.bind(options.listen) } catch {
            throw ConfigError(message: "the coordinator cannot listen on \(options.listen): \(error)")
        }
        router = ControlChannel(socket: socket, jobID: options.jobID)
        reporter.add(try directory.openMetrics())
        timeline = try options.timeline.map(Timeline.init(path:))
    }

    /// Sockets close before their context terminates (zmq_ctx_term waits for them).
    deinit { timeline?.close(); monitor.close(); router.socket.close(); authenticator?.stop() }

    /// Runs the job to its end; throws (after stopping every worker) on a fault or an interrupt. A fresh
    /// run that ends before its first step leaves its directory as it found it.
    public func run() throws {
        if let finishedSteps { return dismissWorkers(finishedSteps) }
        do { try runJob() } catch {
            if startState == nil, machine.completedSteps == 0, writtenCheckpointStep == nil { directory.removeUnstarted() }
            throw error
        }
    }

    private func runJob() throws {
        let total = machine.settings.totalSteps
        var start = event("start", at: startState?.globalStep ?? 0)
        (start.model, start.parameters, start.workers) = (config.model, parameterCount, options.workers)
        try reporter.record(start)
        let batch =
            config.globalBatch == nil
            ? "batch \(config.batch) per worker (\(config.globalBatch(workers: options.workers)) global)"
            : "global batch \(config.globalBatch(workers: options.workers)) dealt over the workers"
        let workers = options.workers == 1 ? "1 worker" : "\(options.workers) workers"
        let waiting = options.elastic ? "\(workers) (at least \(options.minWorkers))" : workers
        let wire = config.compressionSummary(totalSteps: total).map { ", " + $0 } ?? ""
        progress.line(
            "coordinator on \(boundAddress): waiting for \(waiting); \(config.modelName), \(batch), "
                + "\(stepsPerEpoch) steps per epoch, \(total) steps in all\(wire)")
        var lastHeartbeat = 0.0
        lastWaitingLine = Clock.now
        let begun = Date()
        var epochStart = Date()
        StopSignal.lossNote(checkpointStep: startState?.globalStep, runDirectory: runDirectory.path)
        // a checkpoint being written when the job fails is finished, and recorded if it can be
        defer { try? record(checkpointWriter.waitUntilIdle()) }
        while true {
            try record(checkpointWriter.finished())
            // An interrupt while training stops gracefully (every rank finishes its step, rank 0's
            // checkpoint of it is written); before training there is nothing to keep.
            if machine.phase == .joining, let reason = failure() {
                _ = try execute([.abort(reason)], epochStart: &epochStart)  // an abort always throws
            }
            if machine.phase == .joining, Clock.now - lastWaitingLine >= 10 {
                progress.line(waitingLine())
                lastWaitingLine = Clock.now
            }
            // Each event is made just before it is handled: a directive of the one before (a
            // re-formation) renumbers the ranks the next names (a tick's silence and a connection's
            // end made together named the same killed worker, the second by a survivor's new rank)
            let sources: [() throws -> [CoordinatorState.Event]] = [
                { self.pauseSinceLastTurn() + [.tick] }, { self.unreadMembers() },
                { StopSignal.signal.flatMap { self.machine.stopSignal == nil ? [.stopAsked(signal: $0, rank: nil)] : nil } ?? [] },
                { try self.receiveEvent().map { [$0] } ?? [] }
            ]
            while let e = monitor.next(deadline: .now) { note(handshakeFailure: e) }
            for source in sources {
                for next in try source() {
                    let (forming, before) = (machine.phase == .joining, machine.members.count)
                    let directives = machine.handle(next, now: Clock.now)
                    if forming, machine.members.count > before, let newcomer = machine.members.last {
                        progress.line("a worker at \(newcomer.address) said hello: \(machine.members.count) of \(options.workers)")
                    }
                    if try execute(directives, epochStart: &epochStart) {
                        let stopped = machine.completedSteps < total
                        var end = event(stopped ? "interrupted" : "end")
                        end.elapsed_s = Date().timeIntervalSince(begun)
                        try reporter.record(end)
                        end.model = config.model
                        endEvent = end
                        guard stopped else {
                            progress.line(
                                "done: \(ProgressDisplay.count(machine.completedSteps, "step")); checkpoint \(runDirectory.appendingPathComponent(Checkpoint.fileName).path)"
                                    + " (coordinator peak RSS \(Worker.peakResidentMegabytes()) MB)"
                            )
                            return
                        }
                        Thread.sleep(forTimeInterval: 0.3)  // let the Finish leave before the socket closes
                        throw JobInterrupted(
                            description:
                                "stopped by \(StopSignal.name(machine.stopSignal ?? SIGINT)) after step \(machine.completedSteps) of \(total); "
                                + "its checkpoint is in \(runDirectory.path): continue with --resume --run-dir \(runDirectory.path)"
                                + " (coordinator peak RSS \(Worker.peakResidentMegabytes()) MB)",
                            status: 128 + (machine.stopSignal ?? SIGINT))
                    }
                }
            }
            if Clock.now - lastHeartbeat > 0.5 {
                lastHeartbeat = Clock.now
                for identity in heartbeatIdentities.values { send(.heartbeat, to: identity) }
                reporter.observe(
                    JobStatus(workersAlive: machine.members.count, heartbeatAge: machine.members.map { max(0, Clock.now - $0.lastHeard) }))
            }
        }
    }

    private var lastWaitingLine = 0.0

    /// When the loop last began a turn; a turn comes at least every few hundred milliseconds.
    private var lastTurn: Double?
    /// A gap of over a second since the last turn: this process did not run (stopped, frozen).
    private func pauseSinceLastTurn() -> [CoordinatorState.Event] {
        let now = Clock.now
        defer { lastTurn = now }
        guard let last = lastTurn, now - last > 1 else { return [] }
        return [.paused(seconds: now - last)]
    }

    /// "all 3 replicas", "the one replica".
    static func allReplicas(_ n: Int) -> String { n == 1 ? "the one replica" : "all \(n) replicas" }

    /// "waiting for workers: 1 of 4 joined; start one with: tether worker --coordinator tcp://h:7070 ..."
    private func waitingLine() -> String {
        let have = "waiting for workers: \(machine.members.count) of \(options.workers) joined"
        guard let flags = options.workerFlags else { return have }
        // a wildcard listen address is reached at this host's name
        let reach = boundAddress.replacingOccurrences(of: "://0.0.0.0:", with: "://\(ProcessInfo.processInfo.hostName):")
            .replacingOccurrences(of: "://*:", with: "://\(ProcessInfo.processInfo.hostName):")
        return "\(have); start one with: tether worker --coordinator \(reach)" + flags.map { " " + $0 }.joined()
    }

    /// The step of the last checkpoint this coordinator wrote.
    private var writtenCheckpointStep: Int?
    /// Why the newest checkpoint is not on disk (a full disk), until one is written again.
    private var unwrittenCheckpoint: String?
    /// Tells every member to stop after the step in progress; they agree on the step in its exchange.
    private func askToStop(_ signal: Int32, again: Bool) {
        for m in machine.members {
            send(.stop(.init(signal: signal, reason: "the coordinator received \(StopSignal.name(signal))")), to: m.identity)
        }
        guard !again else {
            progress.line("the re-formed ring stops after its next step, with rank 0's checkpoint of it (\(StopSignal.name(signal)))")
            return
        }
        let kept =
            (writtenCheckpointStep ?? startState?.globalStep).map { "losing the steps since the checkpoint of step \($0)" }
            ?? "keeping nothing of this run"
        progress.line(
            "\(StopSignal.name(signal)): stopping after the step in progress; rank 0's checkpoint of it will be written "
                + "(interrupt again to exit at once, \(kept))")
    }

    /// What an interrupt leaves, truthfully: the checkpoint there is, or that there is none; and the
    /// coordinator's peak memory.
    private func interruptedLine() -> String {
        let at = "interrupted at step \(machine.completedSteps)", peak = "; coordinator peak RSS \(Worker.peakResidentMegabytes()) MB"
        if let step = writtenCheckpointStep ?? startState?.globalStep {
            let lost = machine.completedSteps - step
            return "\(at); the last checkpoint, of step \(step), is in \(runDirectory.path) (continue with --resume"
                + (lost > 0 ? "; the \(lost) steps since it are lost)" : ")") + peak
        }
        return "\(at), before any checkpoint was written: nothing of this run is kept (--checkpoint-every N writes one every N steps)"
            + peak
    }

    /// Fresh ring keys for each forming of the ring (CURVE only), one pair per member, by identity; a
    /// re-formed ring keeps the survivors' pairs.
    private var ringKeys: [[UInt8]: CurveKeyPair]?

    /// The key pairs of `ring`'s members in rank order, a new one for a member without (nil: --insecure).
    private func ringKeyPairs(_ ring: [CoordinatorState.Member]) throws -> [CurveKeyPair]? {
        guard ringKeys != nil else { return nil }
        for m in ring where ringKeys![m.identity] == nil { ringKeys![m.identity] = try CurveKeyPair.generate() }
        return ring.map { ringKeys![$0.identity]! }
    }
    /// The compute threads each worker said it uses, by advertised address (for the report's ranks table).
    private var threads: [String: Int] = [:]
    /// What each worker said of its host in its Hello, by advertised address (`SameHostLinks`).
    private var hosts: [String: (key: String, folder: String)] = [:]
    /// Names this coordinator's ipc ring sockets apart from any other's.
    private let linkToken = String(UInt32.random(in: .min ... .max), radix: 16)

    /// The ring addresses sent for a ring of `advertised` addresses: unix sockets between same-host neighbours.
    private func ringAddresses(_ advertised: [String], epoch: UInt32) -> [String] {
        SameHostLinks.ringAddresses(advertised, hosts: advertised.map { hosts[$0] }, token: linkToken, epoch: epoch)
    }

    /// Elastic in place (`CoordinatorState.Settings.reformInPlace`).
    private let reformInPlace: Bool
    /// When the last member was lost, or a worker joined: the time to train again is measured from here.
    private var lostAt: Date?, joinedAt: Date?

    /// Carries out directives; true when the job has finished.
    private func execute(
        _ directives: [CoordinatorState.Directive],
        epochStart: inout Date
    ) throws -> Bool {
        for d in directives {
            switch d {
            case .assign(let identity, let rank, let ring):
                if rank == 0, options.security.keys != nil { ringKeys = [:] }
                try assign(identity, rank: rank, ring: ringAddresses(ring, epoch: 0), epoch: 0)
            case .reform(let epoch, let joiner, let reason, let atBoundary):
                try reform(epoch: epoch, joiner: joiner, reason: reason, atBoundary: atBoundary)
            case .connectRing:
                for m in machine.members { send(.start, to: m.identity) }
            case .turnAway(let identity, let reason):
                send(.abort(.init(originRank: -1, reason: reason)), to: identity)
                drop("turned away a worker: \(reason)")
            case .dropped(let why):
                drop("dropped " + why)
            case .start where machine.ringEpoch > 0: try trainAgain()
            case .start: try startTraining(&epochStart)
            case .stepCompleted(let s): try recordStep(s)
            case .epochCompleted(let epoch, let reports): try recordEvaluation(epoch: epoch, reports: reports, epochStart: &epochStart)
            case .writeCheckpoint(let data): writeCheckpoint(data)
            case .askToStop(let signal, let again): askToStop(signal, again: again)
            case .abort(let message): try abortJob(message)
            case .abortUntold(let message):
                try abortJob(
                    message + "; no worker was told (none answers): those started with --coordinator-wait keep their state "
                        + "for this job's coordinator started again with --resume", tellMembers: false)
            case .finish:
                for m in machine.nextRing { send(.finish, to: m.identity) }
                tellWaitingWorkers(.finish)
                try record(checkpointWriter.waitUntilIdle())
                if let unwrittenCheckpoint {
                    throw ClusterError("the job ended at step \(machine.completedSteps), but \(unwrittenCheckpoint)")
                }
                return true
            }
        }
        return false
    }

    /// Tells the members of the next ring their new ranks (a joiner its Assign), tells those left out, and logs the loss or the join.
    private func reform(epoch: UInt32, joiner: [UInt8]?, reason: String, atBoundary: Bool) throws {
        let before = ranks
        let ring = machine.nextRing
        let addresses = ringAddresses(ring.map(\.address), epoch: epoch)
        (ranks, heartbeatIdentities) = ([:], [:])
        let publicKeys = try ringKeyPairs(ring)?.map(\.publicKey) ?? []
        for (rank, m) in ring.enumerated() {
            if m.identity == joiner { try assign(m.identity, rank: rank, ring: addresses, epoch: epoch); continue }
            ranks[m.identity] = rank
            heartbeatIdentities[rank] = ControlIdentity.heartbeat(of: m.identity)
            let reform = Reform(
                ringEpoch: epoch, rank: UInt32(rank), ring: addresses, ringPublicKeys: publicKeys, reason: reason,
                atBoundary: atBoundary)
            // on both sockets: the heartbeat thread abandons the ring while the main thread waits in it
            send(.reform(reform), to: m.identity)
            send(.reform(reform), to: heartbeatIdentities[rank]!)
        }
        // A lost member that is alive after all (frozen, cut off) is told it is out of the job.
        for identity in before.keys where ranks[identity] == nil {
            let out = Envelope.Body.abort(.init(originRank: -1, reason: "this worker was dropped from the job: \(reason)"))
            send(out, to: identity)
            send(out, to: ControlIdentity.heartbeat(of: identity))
        }
        if atBoundary {
            joinedAt = Date()
            progress.line("\(reason); it joins the ring of \(ring.count) at the next step boundary (ring epoch \(epoch))")
        } else {
            lostAt = Date()
            progress.line(
                "\(reason); re-forming the ring of the \(ring.count) workers left (ring epoch \(epoch)), keeping their state")
        }
        try timeline?.mark(atBoundary ? "a worker joins" : "worker lost", step: machine.completedSteps)
        var e = event(atBoundary ? "joined" : "lost")
        (e.error, e.workers) = (reason, ring.count)
        try reporter.record(e)
    }

    /// The re-formed ring agrees: training again, and how long the loss or join took.
    private func trainAgain() throws {
        for m in machine.members { send(.start, to: m.identity) }
        let since = lostAt ?? joinedAt ?? Date()
        let recovered = Date().timeIntervalSince(since)
        let step = machine.redoStep ?? machine.completedSteps, redone = machine.stepsRedone
        let unreported = machine.stepsUnreported
        progress.line(
            "ring epoch \(machine.ringEpoch): \(Self.allReplicas(machine.members.count)) agree at step \(step); training again "
                + "(\(ProgressDisplay.fixed(recovered, 2)) s after the \(lostAt != nil ? "loss" : "join"); "
                + "\(redone == 1 ? "the step in flight is redone" : "no step redone")"
                + (unreported > 0 ? "; the ring trained \(unreported) steps this coordinator did not hear of, taken as done" : "") + ")")
        (lostAt, joinedAt) = (nil, nil)
        try timeline?.mark("re-formed: training again", step: step)
        var e = event("reformed", at: step)
        (e.elapsed_s, e.workers, e.steps_redone) = (recovered, machine.members.count, redone)
        (e.ranks, e.rank_threads) = (machine.members.map(\.address), machine.members.map { threads[$0.address] ?? 0 })
        try reporter.record(e)
        reporter.restartWindow()
    }

    /// Every member agrees on the initial parameters: training starts, and start-up is timed.
    private func startTraining(_ epochStart: inout Date) throws {
        for m in machine.members { send(.start, to: m.identity) }
        epochStart = Date()
        reporter.restartWindow()  // rates count from here, not from start-up
        let startup = epochStart.timeIntervalSince(created)
        progress.line(
            "\(Self.allReplicas(machine.members.count)) agree on the initial parameters; training (\(ProgressDisplay.fixed(startup, 2)) s after start-up)"
                + (machine.carriedStep.map {
                    ", from the state the workers kept at step \($0) (the checkpoint is of step \(machine.settings.firstStep)): nothing lost"
                } ?? ""))
        var started = event("training")
        started.elapsed_s = startup
        (started.ranks, started.rank_threads) = (machine.members.map(\.address), machine.members.map { threads[$0.address] ?? 0 })
        try reporter.record(started)
    }

    /// A completed step into its epoch's training figures, the metrics and the timeline.
    private func recordStep(_ s: CoordinatorState.StepSummary) throws {
        epochTraining[s.epoch, default: BatchStats()] =
            epochTraining[s.epoch, default: BatchStats()] + BatchStats(lossSum: s.lossSum, correct: s.correct, count: s.count)
        lastRate = s.learningRate
        try reporter.stepCompleted(
            globalStep: s.globalStep, epoch: s.epoch, stats: BatchStats(lossSum: s.lossSum, correct: s.correct, count: s.count),
            lr: s.learningRate, ranks: s.figures)
        try timeline?.add(globalStep: s.globalStep, spansByRank: s.spans)
    }

    /// The ranks' evaluations of an epoch merged into its metrics line and its progress line.
    private func recordEvaluation(epoch: Int, reports: [EvalReport], epochStart: inout Date) throws {
        let merged = EvaluationReport.merged(
            reports.map {
                EvaluationReport(
                    kind: evaluationKind,
                    stats: BatchStats(
                        lossSum: $0.lossSum, correct: Int(clamping: $0.correct), count: Int(clamping: $0.count),
                        squaredError: $0.squaredErrorSum, absoluteError: $0.absoluteErrorSum),
                    auc: nil, scores: $0.scores, labels: $0.labels)
            })
        let seconds = Date().timeIntervalSince(epochStart)
        epochStart = Date()
        // the run's end within an epoch (--max-steps) is evaluated like an epoch's end
        let ends = epoch != machine.partialFinalEpoch, step = ends ? (epoch + 1) * stepsPerEpoch : machine.settings.totalSteps
        let trained = epochTraining.removeValue(forKey: epoch) ?? BatchStats()
        var e = event(ends ? "epoch" : "eval", at: step)
        (e.loss, e.lr, e.elapsed_s, e.samples_per_sec) = (trained.meanLoss, lastRate, seconds, Double(trained.count) / seconds)
        merged.write(into: &e)
        try reporter.record(e)
        lastEvaluation = e
        let which = ProgressDisplay.evaluated(
            step: step, stepsPerEpoch: stepsPerEpoch, epochs: config.epochsSpanned(stepsPerEpoch: stepsPerEpoch))
        progress.line(
            "\(which): train loss \(ProgressDisplay.fixed(trained.meanLoss, 4)), \(merged.summary) (\(ProgressDisplay.fixed(seconds, 1)) s, "
                + "\(ProgressDisplay.grouped(e.samples_per_sec!)) \(reporter.unit)/s)")
    }

    /// Writes rank 0's checkpoints off the loop (`CheckpointWriter`).
    private let checkpointWriter = CheckpointWriter()

    /// Rank 0's checkpoint, checked like any checkpoint file, replaces the last one once written.
    private func writeCheckpoint(_ data: CheckpointData) {
        checkpointWriter.submit(
            data, model: config.model, workers: batchWorkers, to: runDirectory.appendingPathComponent(Checkpoint.fileName))
    }

    /// Records the checkpoint writes that ended: a written one in the metrics and the timeline; a full
    /// disk costs that checkpoint only (the last one stays whole, and the job trains on); any other
    /// failure (a checkpoint that fails its checks) ends the job.
    private func record(_ writes: [CheckpointWriter.Outcome]) throws {
        for write in writes {
            let loaded: Checkpoint.Loaded
            do { loaded = try write.result.get() } catch let error as AtomicFileError where error.isOutOfSpace {
                let step = writtenCheckpointStep ?? startState?.globalStep
                let kept = step.map { "the checkpoint of step \($0) is kept" } ?? "no checkpoint of this run is on disk yet"
                unwrittenCheckpoint = "its checkpoint of step \(write.step) was not written (\(error.reason)); \(kept)"
                let goesOn = write.step < machine.settings.totalSteps && machine.stoppedAt == nil
                progress.line("checkpoint of step \(write.step) not written: \(error); \(kept)" + (goesOn ? "; training goes on" : ""))
                var failed = event("checkpoint_failed", at: write.step)
                failed.error = "\(error)"
                try? reporter.record(failed)  // the same disk may refuse the line too
                continue
            }
            SampleAudit.shared?.checkpoint(ring: Replica.ring(of: loaded), globalStep: write.step)
            unwrittenCheckpoint = nil
            writtenCheckpointStep = write.step
            try timeline?.mark("checkpoint written", step: write.step)
            try reporter.record(event("checkpoint", at: write.step))
            StopSignal.lossNote(checkpointStep: write.step, runDirectory: runDirectory.path)
        }
    }

    /// Tells every member why the job stops (unless none can hear it), records it, and ends the job.
    private func abortJob(_ message: String, tellMembers: Bool = true) throws {
        if tellMembers {
            for m in machine.members { send(.abort(.init(originRank: -1, reason: message)), to: m.identity) }
            for identity in heartbeatIdentities.values { send(.abort(.init(originRank: -1, reason: message)), to: identity) }
        }
        tellWaitingWorkers(.abort(.init(originRank: -1, reason: message)))
        try? record(checkpointWriter.waitUntilIdle())  // the last checkpoint the line names is on disk
        var e = event(message == WorkerState.coordinatorInterrupted ? "interrupted" : "failed")
        e.error = message
        try? reporter.record(e)
        Thread.sleep(forTimeInterval: 0.3)  // let the aborts leave before the process exits
        throw ClusterError(
            message == WorkerState.coordinatorInterrupted
                ? interruptedLine() : message + " (coordinator peak RSS \(Worker.peakResidentMegabytes()) MB)")
    }

    /// Assigns a worker its rank in `ring` (of ring epoch `epoch`: > 0 when it joins a running job and
    /// takes its state from the members) with the job's settings and its ring key.
    private func assign(_ identity: [UInt8], rank: Int, ring: [String], epoch: UInt32) throws {
        var assign = Assign(
            rank: UInt32(rank), worldSize: UInt32(ring.count), ring: ring,
            configJSON: [UInt8](try JSONEncoder().encode(config)),
            resumeCheckpoint: epoch > 0 || machine.carriedStep != nil ? [] : resumeBytes,
            hashEvery: UInt32(options.hashEvery), checkpointEvery: UInt32(config.checkpointEvery),
            bucketBytes: UInt32(options.bucketBytes))
        assign.dataServed = served != nil
        (assign.reformInPlace, assign.ringEpoch) = (reformInPlace, epoch)
        assign.useCarriedState = epoch == 0 && machine.carriedStep != nil
        assign.timeline = timeline != nil
        if epoch == 0 && machine.carriedStep == nil && resumeBytes.isEmpty { assign.startingWeights = startingBytes }
        // the ring being formed: the job's first, or the one a worker joins
        if let pairs = try ringKeyPairs(machine.nextRing) {
            (assign.ringSecretKey, assign.ringPublicKeys) = (ringKeys![identity]!.secretKey, pairs.map(\.publicKey))
        }
        ranks[identity] = rank
        heartbeatIdentities[rank] = ControlIdentity.heartbeat(of: identity)
        send(.assign(assign), to: identity)
        progress.line(
            "rank \(rank): \(ring[rank])"
                + (ring[rank].hasPrefix("ipc://") ? " (the same host as rank \((rank + ring.count - 1) % ring.count))" : "")
                + (epoch > 0 ? " (joins the running job)" : ""))
    }

    /// A run that had finished: each worker that says hello is told Finish, until all `workers` have
    /// been or the join time-out passes (so that restart policies leave finished workers down too).
    private func dismissWorkers(_ steps: Int) {
        progress.line(
            "the run in \(runDirectory.path) has already finished its \(steps) steps; telling the workers that join, then exiting")
        var told = Set<[UInt8]>()
        let deadline = Date().addingTimeInterval(options.joinTimeout)
        while told.count < options.workers, Date() < deadline, !StopSignal.requested {
            guard let (identity, env) = try? router.receive(deadline: .now + .milliseconds(100)), let identity, case .hello = env.body
            else { continue }
            if (try? router.send(.finish, from: -1, to: identity)) != nil { told.insert(identity) }
        }
        progress.line("told \(told.count) of \(options.workers) workers that the run has finished")
        Thread.sleep(forTimeInterval: 0.3)  // let the last Finish leave before the socket closes
    }

    /// The next message as an event of the state machine, with the rank of the connection it came on.
    /// Dropped (and logged, a few a second at most): what does not decode, a message for another job
    /// (a Hello for one is answered, so that worker knows why), and anything but Hello or a
    /// heartbeat from a connection that holds no rank. Data requests are answered here, to members only.
    private func receiveEvent() throws -> CoordinatorState.Event? {
        let received: (identity: [UInt8]?, envelope: Envelope)?
        do { received = try router.receive(deadline: .now + .milliseconds(100), anyJob: true) } catch {
            drop("dropped a message: \(error)")
            return nil
        }
        guard let received, let identity = received.identity, let body = received.envelope.body else { return nil }
        let env = received.envelope
        guard env.jobID == options.jobID else {
            if case .hello(let h) = body {
                let why = "this coordinator runs job \"\(options.jobID)\", the worker asked for job \"\(env.jobID.prefix(64))\""
                try? router.send(
                    .abort(.init(originRank: -1, reason: "refused: \(why) (--job-id)")), from: -1, to: identity, job: env.jobID)
                drop("refused a worker at \(h.advertiseAddress.prefix(100)): \(why)")
            } else {
                drop("dropped a message for job \"\(env.jobID.prefix(64))\" (this is job \"\(options.jobID)\")")
            }
            return nil
        }
        if case .hello(let h) = body {
            // kept by address, a bounded number (a Hello's strings are bounded by its size: ControlLimits)
            if hosts.count < ControlLimits.helloRecords || hosts[h.advertiseAddress] != nil, h.hostKey.utf8.count <= 256,
                SameHostLinks.isUsable(h.ipcFolder)
            {
                hosts[h.advertiseAddress] = (h.hostKey, h.ipcFolder)
            }
            if threads.count < ControlLimits.helloRecords { threads[h.advertiseAddress] = Int(h.threads) }
            if helloIdentities.count < ControlLimits.helloRecords { helloIdentities.insert(identity) }
            let carried =
                h.carriedHash == 0 ? nil : Int(exactly: h.carriedStep).map { CoordinatorState.Carried(step: $0, hash: h.carriedHash) }
            return .hello(identity: identity, address: h.advertiseAddress, carried: carried)
        }
        guard let rank = ranks[ControlIdentity.member(of: identity)] else {
            drop("dropped a \(body.name) from a connection that holds no rank")
            if case .abort = body {} else { tellUnassigned(identity) }
            return nil
        }
        switch body {
        case .ready(let r): return .ready(rank: rank, r)
        case .stepReport(let s): return .step(rank: rank, s)
        case .evalReport(let e): return .evaluation(rank: rank, e)
        case .checkpoint(let c): return .checkpoint(rank: rank, c)
        case .heartbeat: return .heartbeat(rank: rank)
        case .abort(let a): return .abort(rank: rank, reason: a.reason)
        case .reform(let r): return .listening(rank: rank, epoch: r.ringEpoch)
        case .stop(let stop):
            // A worker received a signal: it votes to stop in its next step's exchange.
            let signal = [SIGINT, SIGTERM].contains(stop.signal) ? stop.signal : SIGTERM
            if machine.stopSignal == nil {
                progress.line(
                    "rank \(rank) received \(StopSignal.name(signal)): the job stops after the step in progress, with a checkpoint")
            }
            return .stopAsked(signal: signal, rank: rank)
        case .dataRequest(let request):
            let rows: DataRows
            if request.indices.count > DataServing.rowsPerRequest {
                rows = DataRows(
                    split: request.split,
                    error: "a request for \(request.indices.count) rows; at most \(DataServing.rowsPerRequest) at a time")
            } else {
                rows =
                    served.map { DataServing.answer(request, train: $0.train, test: $0.test) }
                    ?? DataRows(split: request.split, error: "this coordinator does not serve data (start it with --serve-data)")
            }
            send(.dataRows(rows), to: identity)
            return .heartbeat(rank: rank)
        default:
            drop("dropped a \(body.name) from rank \(rank), which only the coordinator sends")
            return nil
        }
    }

    /// Sends to one peer. A peer that is gone (or never was) fails only its own send, said once in our
    /// words: the job notices a gone member by its silence. A peer that does not read its messages
    /// fills its queue (ZMQ_SNDHWM): what it is sent then is dropped, and a member whose queue stays
    /// full past `ControlLimits.unreadTimeout` is lost (`unreadMembers`).
    private func send(_ body: Envelope.Body, to identity: [UInt8]) {
        let member = ControlIdentity.member(of: identity)
        do {
            try router.send(body, from: -1, to: identity)
            fullSince[member] = nil
            unreachable.remove(member)
            if identity.first == ControlIdentity.heartbeatMark {
                goneSince[member] = nil
                if heartbeatReached.count < ControlLimits.helloRecords { heartbeatReached.insert(member) }
            }
        } catch {
            let who = ranks[member].map { "rank \($0)" } ?? "a worker without a rank"
            if let e = error as? ZeroMQError, e.code == EAGAIN {
                if fullSince[member] == nil, fullSince.count < ControlLimits.helloRecords { fullSince[member] = Clock.now }
                drop("\(who) does not read its messages: dropped a \(body.name)")
            } else if let e = error as? ZeroMQError, e.code == EHOSTUNREACH {
                // a heartbeat socket that was connected and is gone: its process has ended (a live one
                // reconnects within ZeroMQ's 100 ms reconnect interval)
                if identity.first == ControlIdentity.heartbeatMark, heartbeatReached.contains(member), goneSince[member] == nil {
                    goneSince[member] = Clock.now
                }
                if unreachable.count < ControlLimits.helloRecords, unreachable.insert(member).inserted {
                    drop("\(who) is unreachable (its connection is gone); not sending it messages until it is back")
                }
            } else {
                drop("could not send a \(body.name) to \(who) (\((error as? ZeroMQError)?.reason ?? "\(error)"))")
            }
        }
    }

    /// Peers found unreachable (by control identity), said once until a send to them succeeds.
    private var unreachable: Set<[UInt8]> = []
    /// Members whose heartbeat socket was once reached (by control identity), and since when the one
    /// that was is gone: past `ControlLimits.goneTimeout`, the machine loses them without waiting
    /// for the heartbeat time-out (a SIGKILLed worker is named in about a second, not in --heartbeat-timeout).
    private var heartbeatReached: Set<[UInt8]> = [], goneSince: [[UInt8]: Double] = [:]

    /// When each connection's queue was first found full (by control identity), until a send succeeds.
    private var fullSince: [[UInt8]: Double] = [:]

    /// A member whose heartbeat connection has been gone past its time-out, or whose queue has stayed
    /// full past the unread time-out: the machine loses it. One at a time: a loss re-forms the ring and
    /// renumbers the ranks, so a second event computed with the old numbers would name a survivor (a
    /// killed worker is often both gone and unread: as two events, the second failed the job with the
    /// survivor's rank). The next member, if any, is named at the next call, by its new rank.
    private func unreadMembers() -> [CoordinatorState.Event] {
        let now = Clock.now
        for (identity, since) in goneSince where now - since > ControlLimits.goneTimeout {
            (goneSince[identity], fullSince[identity]) = (nil, nil)
            heartbeatReached.remove(identity)
            if let rank = ranks[identity] { return [.disconnected(rank: rank, seconds: now - since)] }
        }
        for (identity, since) in fullSince where now - since > ControlLimits.unreadTimeout {
            fullSince[identity] = nil
            if let rank = ranks[identity] { return [.unread(rank: rank, seconds: now - since)] }
        }
        return []
    }

    /// When each connection that holds no rank was last told so (a bounded number).
    private var toldUnassigned: [[UInt8]: Double] = [:]
    /// Tells a connection of this job that holds no rank (a worker of this job's coordinator before a
    /// restart, in its process or a new one, whose connection came back without a break it noticed:
    /// a partition) that this coordinator does not know it, at most once a second: a worker keeping
    /// its state then says hello with it. Anyone else learns nothing from it.
    private func tellUnassigned(_ identity: [UInt8]) {
        let now = Clock.now
        if let last = toldUnassigned[identity], now - last < 1 { return }
        if toldUnassigned.count >= ControlLimits.helloRecords { toldUnassigned.removeAll() }
        toldUnassigned[identity] = now
        send(.unassigned, to: identity)
    }

    private func drop(_ why: String) {
        if let line = dropped.admit("coordinator: " + why, now: .now) { progress.line(line) }
    }

    private func note(handshakeFailure e: ZeroMQMonitor.Event) {
        let what =
            e.authenticationRefused
            ? "its key is not this job's (ZAP status \(e.value))"
            : options.security.keys != nil
                ? "it holds another cluster key, or runs --insecure" : "it runs with CURVE and this coordinator --insecure"
        // a client that keeps retrying (a worker with the wrong key, a probe) is said once a minute, with
        // how many attempts were not said
        let line = "coordinator: a connection to \(e.address) failed the handshake: \(what)", now = Clock.now
        if let (said, unsaid) = handshakeLines[line], now - said < 60 {
            handshakeLines[line] = (said, unsaid + 1)
            return
        }
        let again = handshakeLines[line].map { $0.unsaid > 0 ? " (and \($0.unsaid) more like it in the last minute)" : "" } ?? ""
        if handshakeLines.count < ControlLimits.helloRecords || handshakeLines[line] != nil { handshakeLines[line] = (now, 0) }
        if let admitted = dropped.admit(line + again, now: .now) { progress.line(admitted) }
    }

    /// Each handshake refusal's line: when it was last said, and the same refusals since, unsaid.
    private var handshakeLines: [String: (said: Double, unsaid: Int)] = [:]

    /// A metrics line after `step` steps (by default the steps completed).
    private func event(_ name: String, at step: Int? = nil) -> MetricsEvent {
        MetricsEvent(event: name, step: step ?? machine.completedSteps, stepsPerEpoch: stepsPerEpoch)
    }

}

extension TrainingConfig {
    /// How the gradients travel, for a run's first line (nil: as they are). A PowerSGD start at or
    /// after the run's last step is called out: nothing would be compressed.
    func compressionSummary(totalSteps: Int) -> String? {
        let kind = resolvedCompression, feedback = errorFeedback == false ? "no error feedback" : "error feedback"
        switch kind {
        case .none: return nil
        case .fp16, .bf16: return "gradients as \(kind.wire) on the wire (\(feedback))"
        case .powersgd:
            let start = resolvedPowerSGDStartStep
            let never = start >= totalSteps ? "; the run ends first, so every step is a plain all-reduce (--powersgd-start-step)" : ""
            return "gradients as PowerSGD factors of rank \(resolvedPowerSGDRank) from step \(start) (\(feedback))\(never)"
        }
    }
}
