import CTetherKernels
import CXXHash
import Foundation
import Logging
import TetherComm
import TetherMessages
import TetherObservability
import TetherNN
import TetherTensor
import TetherTrain

/// A worker process: joins the coordinator's job, forms the ring, and trains its shard of every step
/// (forward/backward -> gradients all-reduced (sum of globally scaled gradients: the exact mean) ->
/// the same optimizer step as every replica), reporting each step and, at epoch ends, its share of the
/// evaluation; rank 0 also sends checkpoints. Returns when the coordinator says Finish; throws on a fault.
public final class Worker {
    let options: WorkerOptions
    let context: ZeroMQContext
    let control: ControlChannel
    /// The worker's life as a pure state machine; this shell carries out what it decides.
    private var machine = WorkerState()
    /// This worker's rank, as its machine holds it (-1: none).
    var rank: Int { machine.rank }
    /// This worker's log ("worker"; the level and format are the process's: --log-level, --log-format).
    private(set) var logger: Logger
    /// --timeline on the worker: its own trace.
    private let ownTimeline: Timeline?
    private func log(_ message: String, _ level: Logger.Level = .info) { logger.log(level: level, "\(message)") }
    /// This worker's control identity; its heartbeat socket's is the same with another first byte, so
    /// the coordinator knows both for one member's.
    let identity: [UInt8]
    /// Admits the left neighbour's ring key (CURVE only).
    let authenticator: Authenticator?
    /// The control socket's connection events, watched while joining (attached before it connects).
    private let monitor: ZeroMQMonitor

    public init(_ options: WorkerOptions, logger: Logger = Logger(label: "worker")) throws {
        self.options = options
        self.logger = logger
        ownTimeline = try options.timeline.map(Timeline.init(path:))
        context = try ZeroMQContext()
        let dealer = try ZeroMQSocket(context, .dealer)
        // One identity for this worker however often the connection is made again, so a repeated
        // Hello (below) is known for what it is.
        identity = ControlIdentity.control + (0..<15).map { _ in UInt8.random(in: 0...255) }
        try dealer.setRoutingID(identity)
        try dealer.setMaxMessageSize(ControlLimits.workerMessageBytes)
        try dealer.setHighWaterMarks(send: ControlLimits.workerQueuedMessages, receive: ControlLimits.workerQueuedMessages)
        if let keys = options.security.keys {
            try dealer.secure(.client(keys, serverKey: keys.publicKey))
            authenticator = try Authenticator(context: context, logger: logger)
        } else {
            authenticator = nil
        }
        monitor = try dealer.monitor()
        do { try dealer.connect(options.coordinator) } catch {
            throw ClusterError(
                "cannot connect to the coordinator at \(options.coordinator): \(error) (an address looks like tcp://HOST:PORT)")
        }
        control = ControlChannel(socket: dealer, jobID: options.jobID)
    }

    /// Sockets close before their context terminates (zmq_ctx_term waits for them).
    /// A worker that never joined drops its unsent Hellos at once (with the 1 s linger, a refused worker
    /// took a second longer to exit).
    deinit {
        ownTimeline?.close()
        monitor.close()
        if rank < 0 { try? control.socket.setLinger(.zero) }
        control.socket.close()
        advertisedPort?.close()
        authenticator?.stop()
    }

    /// Trains until the coordinator says Finish. A failure is also sent to the coordinator (once this
    /// worker has a rank), so the job stops with this worker's reason instead of waiting for its silence.
    /// A signal before training ends the worker at once (`JobInterrupted`); while training, the job
    /// stops gracefully after the step in progress.
    public func run() throws {
        defer { SameHostLinks.sweepJob(ringAddresses) }  // what killed members left
        do { try live() } catch {
            if rank >= 0 {
                try? control.send(.abort(.init(originRank: Int32(rank), reason: "\(error)")), from: rank)
                Thread.sleep(forTimeInterval: 0.2)  // let it leave before the socket closes
            }
            throw error
        }
    }

    /// The worker's life: its state machine's directives carried out one by one, each ending in the
    /// machine's next event (what the coordinator said, what a step did) or, when it throws, in the
    /// event its error means (`event(for:)`). Ends when the machine has finished; throws when it fails.
    private func live() throws {
        defer { heartbeat?.stop() }
        var directives = handle(.launched)
        while !directives.isEmpty {
            let directive = directives.removeFirst()
            if case .fail(let message) = directive { throw failureToReport(message) }
            var event: WorkerState.Event?
            do { event = try carryOut(directive) } catch let interrupted as JobInterrupted { throw interrupted } catch {
                // what was still to do followed from the state before the error: the machine decides anew
                let computing = if case .trainNextStep = directive { true } else { false }
                (failure, event, directives) = (error, self.event(for: error, computing: computing), [])
            }
            directives += answered
            answered = []
            for noticed in noticed { directives += handle(noticed) }
            noticed = []
            if let event { directives += handle(event) }
            if case .failed = machine.phase {} else { failure = nil }
        }
        guard machine.phase == .finished else {
            throw ClusterError("worker rank \(rank): its state machine stopped while \(machine.phase)")
        }
    }

    /// The machine's directives for `event`; what it decided is published where another thread acts on
    /// it (the log's rank, whether the heartbeat thread lets the process outlive a lost coordinator).
    private func handle(_ event: WorkerState.Event) -> [WorkerState.Directive] {
        let directives = machine.handle(event)
        logger[metadataKey: "rank"] = "\(machine.rank)"
        reforms.mayOutliveCoordinator = machine.outlivesLostCoordinator
        return directives
    }

    /// A same-host ring address of each assignment this worker had (each coordinator's names its
    /// token): the job's socket files swept when it ends (SameHostLinks.sweepJob).
    private var ringAddresses: [String] = []
    private func noteRing(_ ring: [String]) {
        // one address per coordinator (what the sweep takes of it is its folder and token: ...ring-TOKEN-e)
        func job(_ address: String) -> Substring {
            address.range(of: "-e", options: .backwards).map { address[..<$0.lowerBound] } ?? address[...]
        }
        guard let address = ring.first(where: { $0.hasPrefix("ipc://") }), ringAddresses.count < 64,
            !ringAddresses.contains(where: { job($0) == job(address) })
        else { return }
        ringAddresses.append(address)
    }

    // What the shell holds between directives.
    private var heartbeat: Heartbeat?
    /// The last assignment (a joiner's membership replaced by each Reform it gets while setting up).
    private var assignment: Assign?
    private var job: Job?
    /// The state kept through a lost coordinator: its step, checkpoint bytes and parameter hash.
    private var kept: (step: Int, bytes: [UInt8], hash: UInt64)?
    /// The error the last directive ended in (thrown when the machine fails on it), and a ring's failure
    /// (logged when this worker waits for the ring to be re-formed).
    private var failure: Error?, ringFailure: String?
    /// Orders read from the coordinator while a directive ran (a Stop, a join's Reform), for the machine.
    private var noticed: [WorkerState.Event] = []
    /// What the machine answered to orders it was given in the middle of a directive (a step's votes):
    /// carried out after that directive, like every other.
    private var answered: [WorkerState.Directive] = []

    /// Carries out one directive; returns the event it ended in, if any.
    private func carryOut(_ directive: WorkerState.Directive) throws -> WorkerState.Event? {
        switch directive {
        case .join(let carrying): return try joinJob(carrying: carrying)
        case .setUp(let source): return ready(try setUp(assignment!, from: source), redoEndOfStep: source == .keptState)
        case .setUpOn(let reform):
            // a joiner whose ring was re-formed before it formed: set up again on the new one
            assignment!.rank = reform.rank
            (assignment!.ring, assignment!.ringPublicKeys, assignment!.ringEpoch) = (reform.ring, reform.ringPublicKeys, reform.ringEpoch)
            return ready(try setUp(assignment!, from: .members), redoEndOfStep: !reform.atBoundary)
        case .sendReady:
            try sendReadyAndAwaitStart(job!.replica, abandonedStep: machine.abandonedStep)
            SampleAudit.shared?.start(
                ring: job!.replica.training.ringName, globalStep: job!.replica.state.globalStep, parent: job!.replica.stateRing)
            return .coordinator(.start)
        case .trainNextStep(let votes): return try trainStep(votes: votes)
        case .reportStep(let withHash): try reportStep(withHash: withHash, globalStep: machine.globalStep)
        case .evaluate(let epoch, let ends):
            let replica = job!.replica
            try tell(.evalReport(try replica.training.evaluate(epoch: epoch, state: &replica.state, epochEnds: ends)))
            if ends { (replica.state.epoch, replica.state.stepInEpoch) = (epoch + 1, 0) }
        case .shareReplicaState:
            let replica = job!.replica
            replica.replicas = try replica.training.gatherReplicaState(step: UInt64(replica.state.globalStep))
            replica.replicaErrors = try replica.training.gatherErrorFeedback(step: UInt64(replica.state.globalStep))
        case .sendCheckpoint: try sendCheckpoint()
        case .awaitFinish:
            _ = try waitFor("the coordinator's finish", within: 60) { $0 == .finish ? $0 : nil }
            return .coordinator(.finish)
        case .awaitReform(let urgent):
            return try awaitReform(after: machine.ringEpoch, urgent: urgent).map { .reformReceived($0) } ?? .noReform
        case .reform(let reform): return ready(try reformed(job!, reform), redoEndOfStep: !reform.atBoundary)
        case .keepState: keepState()
        case .interrupt(let signal):
            throw JobInterrupted(
                description: "worker: \(StopSignal.name(signal)) before training started; exiting", status: StopSignal.exitStatus)
        case .tellStop(let signal):
            log("\(StopSignal.name(signal)): the job stops after the step in progress (interrupt again to exit at once)")
            try? control.send(.stop(.init(signal: signal, reason: "rank \(rank) received \(StopSignal.name(signal))")), from: rank)
        case .exit: sayDone()
        case .fail:
            preconditionFailure("live() ends on .fail before carrying a directive out")
        }
        return nil
    }

    /// Says hello until assigned (carrying a kept state, after a lost coordinator).
    private func joinJob(carrying: Bool) throws -> WorkerState.Event {
        if carrying, let kept {
            log(
                "keeping the state of step \(kept.step); waiting up to \(Int(options.coordinatorWait)) s for a coordinator at \(options.coordinator)"
            )
        }
        guard
            let assign = try join(
                carrying: carrying ? kept.map { ($0.step, $0.hash) } : nil, within: carrying ? options.coordinatorWait : 120)
        else {
            log(
                carrying
                    ? "the coordinator that came back says the run has finished"
                    : "the run has already finished (the coordinator says so); nothing to do")
            return .runFinished
        }
        // set-up checks the assignment before this worker does anything with it; the rank it names is
        // told why it is refused (run())
        assignment = assign
        noteRing(assign.ring)
        if heartbeat != nil { reforms.reset() }  // a new coordinator: its ring epochs count from 0 again
        return .assigned(
            rank: Int(assign.rank), ringEpoch: assign.ringEpoch, reformInPlace: assign.reformInPlace,
            offered: .init(
                keptState: assign.useCarriedState, checkpoint: !assign.resumeCheckpoint.isEmpty,
                startingWeights: !assign.startingWeights.isEmpty))
    }

    /// One step of the replica with this step's votes; its report kept for the coordinator.
    private func trainStep(votes: RingVotes) throws -> WorkerState.Event {
        try checkControl()
        for e in noticed { answered += handle(e) }  // a Stop, a join: this step's votes
        noticed = []
        let replica = job!.replica, training = replica.training
        if replica.state.stepInEpoch == 0 { training.workload.startEpoch(replica.state.epoch) }
        training.exchange.vote = votes.union(machine.votes)
        replica.report = try training.step(&replica.state)
        if let timeline = ownTimeline, let spans = replica.report?.spans {
            try timeline.add(rank: rank, globalStep: replica.state.globalStep, spans: spans)
            if assignment?.timeline != true { replica.report?.spans = [] }  // the coordinator did not ask
        }
        replica.report?.stopping = training.exchange.agreed.contains(.stop)
        replica.boundary = replica.state
        replica.carried = nil
        replica.stateRing = training.ringName
        return .stepFinished(globalStep: replica.state.globalStep, agreed: training.exchange.agreed)
    }

    /// The step's report to the coordinator (an empty one from a survivor that did not finish it).
    private func reportStep(withHash: Bool, globalStep: Int) throws {
        let replica = job!.replica
        // after a re-formation, a survivor that did not finish the step itself reports no samples
        var report =
            replica.report?.globalStep == UInt64(globalStep)
            ? replica.report!
            : StepReport(
                globalStep: UInt64(globalStep), epoch: UInt32(replica.state.epoch), lossSum: 0, count: 0, correct: 0,
                computeSeconds: 0, allreduceSeconds: 0, optimizerSeconds: 0, parameterHash: 0, waitSeconds: 0)
        if withHash { report.parameterHash = Self.hash(replica.training.workload.model.arena) }
        try tell(.stepReport(report))
    }

    /// Rank 0's checkpoint of the step, with every replica's buffers, RNG and error feedback, to the coordinator.
    private func sendCheckpoint() throws {
        let replica = job!.replica, training = replica.training, model = training.workload.model
        var state = replica.state
        state.rng = model.context.rng
        let file = Checkpoint.file(
            model: model, optimizer: training.optimizer, config: training.config, state: state, metadata: replica.stateMetadata,
            replicaBuffers: replica.replicas.map(\.buffers), replicaRNGs: replica.replicas.map(\.rng),
            compression: .init(factors: training.exchange.powerSGD?.factors, errors: replica.replicaErrors))
        try tell(.checkpoint(.init(globalStep: UInt64(state.globalStep), safetensors: [UInt8](Safetensors.encode(file)))))
    }

    /// Keeps the replica's state through a lost coordinator, for the one that comes back.
    private func keepState() {
        guard let replica = job?.replica else { return }
        let state = replica.carried ?? replica.encoded(replica.boundary)
        kept = (state.step, state.bytes, Self.hash(replica.training.workload.model.arena))
        keptErrorFeedback = replica.training.exchange.errorFeedback
        replica.training.ring.close()
        job = nil
        log("the coordinator at \(options.coordinator) was lost; this worker keeps its replica at step \(state.step)")
    }

    /// The worker's last words: where it stopped, its peak memory.
    private func sayDone() {
        if let job {
            let replica = job.replica, training = replica.training
            if let step = replica.report, step.stopping, replica.state.globalStep < training.totalSteps {
                log("stopped after step \(replica.state.globalStep) of \(training.totalSteps); the coordinator holds its checkpoint")
            }
            log(
                "done, peak RSS \(Self.peakResidentMegabytes()) MB (\(training.workload.model.arena.count) parameters, "
                    + "optimizer state \(training.optimizer.stateTensors.reduce(0) { $0 + $1.count }) values)")
        }
    }

    /// The replica `made` is this worker's job now; the machine's event for it.
    private func ready(_ made: Job, redoEndOfStep: Bool) -> WorkerState.Event {
        job = made
        return .replicaReady(
            made.plan, globalStep: made.replica.state.globalStep, redoEndOfStep: redoEndOfStep, keepsState: made.keepsState)
    }

    /// What a failed worker throws: the error itself where it is this worker's or the ring's; the
    /// coordinator's order as the machine words it (a refusal naming the coordinator).
    private func failureToReport(_ message: String) -> Error {
        if let failure, !(failure is CoordinatorOrder) { return failure }
        if case .abort(let a)? = failure as? CoordinatorOrder, rank < 0 {
            return ClusterError("the coordinator at \(options.coordinator) refused this worker: \(a.reason)")
        }
        return ClusterError(failure != nil ? message : "worker rank \(rank): \(message)")
    }

    /// What an error a directive ended in means for the machine: the coordinator's Abort (on either
    /// socket) or its Finish, its silence, a ring that gave up, or a fault of this worker's own.
    private func event(for error: Error, computing: Bool) -> WorkerState.Event {
        if let reason = reforms.abortReason { return .coordinator(.abort(.init(originRank: -1, reason: reason))) }
        if let order = error as? CoordinatorOrder {
            switch order {
            case .abort(let a): return .coordinator(.abort(a))
            case .finish: return .coordinator(.finish)
            }
        }
        if reforms.coordinatorLost { return .coordinatorSilent("the coordinator at \(options.coordinator) fell silent (\(error))") }
        if error is CollectiveError {
            ringFailure = "\(error)"
            return .ringFailed("\(error)", computing: computing)
        }
        return .failedLocally("\(error)")
    }

    /// What a worker holds of the job one coordinator runs: its settings, its place in the ring, its
    /// replica and that replica's plan for the state machine.
    struct Job {
        let config: TrainingConfig
        let bucketBytes: Int
        let membership: Membership
        let replica: Replica
        let plan: WorkerState.Plan
        /// The replica's state may outlive the coordinator (--coordinator-wait; nothing per replica).
        let keepsState: Bool
    }

    /// The replica an Assign describes, on its ring, with parameters from `source` (the machine's
    /// choice): the state this worker kept (a coordinator that came back), the members' state over a
    /// re-formed ring (a worker joining a running job), the coordinator's resume checkpoint, its
    /// starting weights, or a fresh initialization from the data.
    private func setUp(_ assign: Assign, from source: WorkerState.ParameterSource) throws -> Job {
        // A hostile or invalid assignment is refused before this worker does anything with it.
        let config = try AssignCheck(dataRoots: options.dataRoots, secure: options.security.keys != nil).validate(assign)
        if heartbeat == nil {
            control.socket.stopMonitor()
            // Heartbeats flow from here on: loading the data and building the model can take seconds.
            heartbeat = try Heartbeat(
                context: context, options: options, identity: ControlIdentity.heartbeat(of: identity), rank: rank,
                reforms: reforms, logger: logger)
            ProcessMemory.keepFreedBuffers()
        }
        let carried = source == .keptState ? kept.map { (step: $0.step, bytes: $0.bytes) } : nil
        // Read from memory: no file is written for it.
        let resumed =
            source != .checkpoint
            ? nil
            : try Checkpoint.Loaded(bytes: Data(assign.resumeCheckpoint), source: "the coordinator's resume checkpoint")
        served =
            !assign.dataServed
            ? nil
            : ServedData { [unowned self] request in
                try tell(.dataRequest(request))
                return try waitFor("the requested samples", within: 120) {
                    if case .dataRows(let r) = $0 { return r }; return nil
                }
            }
        let membership = Membership(
            epoch: assign.ringEpoch, rank: Int(assign.rank), ring: assign.ring, publicKeys: assign.ringPublicKeys,
            secretKey: assign.ringSecretKey)
        // Joining a running job (elastic in place): the members' state comes over the re-formed ring.
        let joining = source == .members, overRing = joining || source == .keptState
        let bucketBytes = max(4, Int(assign.bucketBytes))
        let workload = try Workloads.make(config, shard: membership.shard, metadata: resumed?.file.metadata ?? [:], source: served)
        let model = workload.model
        // Dropout masks differ per replica (each draws its own samples' masks).
        model.context.rng = .dropoutMasks(seed: config.seed, replica: rank)
        guard let collective = AllReduceAlgorithm(rawValue: config.collective ?? AllReduceAlgorithm.bySize.rawValue) else {
            throw ClusterError(
                "the coordinator's job asks for the collective \"\(config.collective ?? "")\", which this worker does not know")
        }
        // --link, --latency: range-checked with the rest of the Assign's configuration (`TrainingConfig.validate`)
        let link = config.linkBandwidth.flatMap { b in config.linkLatency.map { CollectiveCost(latency: $0, bandwidth: b) } }
        let ring =
            joining
            ? try formReformedRing(membership, layoutFingerprint: model.arena.layout.fingerprint, collective: collective, link: link)
            : try formRing(membership, layoutFingerprint: model.arena.layout.fingerprint, collective: collective, link: link)
        let optimizer = try Optimizer<Float>(config.optimizer, layout: model.arena.layout, ftrlParameters: model.ftrlParameters)
        var state = TrainingState(rng: model.context.rng)
        var loadedOverRing: Checkpoint.Loaded?
        if overRing {
            let loaded = try syncState(ring, carried: carried)
            loadedOverRing = loaded
            try loaded.restore(into: model, optimizer: optimizer, shard: membership.shard)
            state = loaded.state
            model.context.rng = .dropoutMasks(seed: config.seed &+ UInt64(state.globalStep), replica: rank)
            log(
                ""
                    + (joining
                        ? "joined the running job at step \(state.globalStep) (ring epoch \(membership.epoch))"
                        : "goes on from the state the workers kept, step \(state.globalStep)"))
        } else if let resumed {
            try resumed.restore(into: model, optimizer: optimizer, shard: membership.shard)
            state = resumed.state
            model.context.rng =
                resumed.replicaRNG(membership.shard) ?? .dropoutMasks(seed: config.seed &+ UInt64(state.globalStep), replica: rank)
        } else if source == .startingWeights {
            try StartingWeights(bytes: Data(assign.startingWeights), source: "the coordinator's starting weights").load(into: model)
        } else {
            try workload.fetch(epoch: 0)
            var failure: Error?
            workload.initializeFromData(reduce: { sums in
                do { _ = try sums.withUnsafeMutableBufferPointer { try ring.allReduce($0) } } catch { failure = failure ?? error }
            })
            if let failure { throw failure }
        }
        let training = Training(
            workload: workload, optimizer: optimizer, ring: ring, membership: membership, config: config, bucketBytes: bucketBytes)
        training.exchange.tracing = assign.timeline || ownTimeline != nil
        if let from = overRing ? loadedOverRing : resumed {
            try training.restoreCompression(from: from, shard: membership.shard, ownErrors: carried != nil ? keptErrorFeedback : nil)
        }
        let replica = Replica(training: training, state: state, stateRing: Replica.ring(of: overRing ? loadedOverRing : resumed))
        return job(config: config, bucketBytes: bucketBytes, membership: membership, replica: replica, assign: assign)
    }

    /// A replica's job: its plan for the state machine, and whether its state may outlive the coordinator.
    private func job(config: TrainingConfig, bucketBytes: Int, membership: Membership, replica: Replica, assign: Assign) -> Job {
        let model = replica.training.workload.model
        let keeps = options.coordinatorWait > 0 && Checkpoint.buffers(of: model).isEmpty
        let plan = WorkerState.Plan(
            rank: membership.rank, stepsPerEpoch: replica.training.workload.stepsPerEpoch, totalSteps: replica.training.totalSteps,
            hashEvery: Int(assign.hashEvery), checkpointEvery: Int(assign.checkpointEvery))
        return Job(config: config, bucketBytes: bucketBytes, membership: membership, replica: replica, plan: plan, keepsState: keeps)
    }

    /// The samples the coordinator serves (`Assign.data_served`), or nil: each worker reads --data.
    private var served: ServedData?
    /// The re-formations the coordinator announced (on either socket: the heartbeat thread notes one
    /// while the main thread waits in the ring, which then gives up).
    let reforms = ReformNotice()

    /// Parameters hash and step (and the step abandoned, after a re-formation) to the coordinator, then
    /// its Start (once every replica agrees).
    private func sendReadyAndAwaitStart(_ replica: Replica, abandonedStep: Int) throws {
        let model = replica.training.workload.model
        try tell(
            .ready(
                .init(
                    parameterHash: Self.hash(model.arena), layoutFingerprint: model.arena.layout.fingerprint,
                    globalStep: UInt64(replica.state.globalStep), abandonedStep: UInt64(abandonedStep))))
        try waitFor("the start", within: 120) {
            if case .start = $0 { return () }; return nil
        }
    }

    /// The ring of `membership`, formed with a handshake from each rank to its right neighbour. When it
    /// does not form, a neighbour this rank cannot connect to (a wrong --advertise interface, a
    /// firewall) is named.
    private func formRing(
        _ membership: Membership, layoutFingerprint: UInt64, collective: AllReduceAlgorithm, link: CollectiveCost?,
        listening: () throws -> Void = {}
    ) throws -> Ring {
        var ringOptions = RingOptions()
        ringOptions.allReduce = collective
        ringOptions.link = link
        ringOptions.jobID = options.jobID
        ringOptions.timeout = options.ringTimeout
        ringOptions.layoutFingerprint = layoutFingerprint
        ringOptions.epoch = membership.epoch
        ringOptions.abandon = { [reforms, epoch = membership.epoch] in reforms.abandons(ringEpoch: epoch) }
        ringOptions.logger = Logger(label: "ring")
        ringOptions.logger[metadataKey: "rank"] = "\(rank)"
        let (rank, addresses) = (membership.rank, membership.ring)
        noteRing(addresses)  // a joiner's first same-host ring may come with a Reform, not its Assign
        if let authenticator, !membership.publicKeys.isEmpty {
            let keys = try CurveKeyPair(secretKey: membership.secretKey), n = addresses.count
            ringOptions.curve = RingCurve(
                keys: keys, leftPublicKey: membership.publicKeys[(rank + n - 1) % n],
                rightPublicKey: membership.publicKeys[(rank + 1) % n], memberPublicKeys: membership.publicKeys, authenticator: authenticator
            )
        }
        let ring: Ring
        let right = (rank + 1) % addresses.count
        if addresses[rank].hasPrefix("tcp://") { releaseAdvertisedPort() }  // the ring binds it (retrying while libzmq lets go)
        do { ring = try Ring(context: context, rank: rank, addresses: addresses, options: ringOptions, listening: listening) } catch {
            if let e = error as? CollectiveError, e.abandoned { throw e }
            if right != rank, case .failure(let why) = Advertise.reach(addresses[right], within: 2) {
                throw ClusterError(
                    "rank \(rank) cannot reach its right neighbour rank \(right) at \(why). Check the address that worker "
                        + "advertises (--advertise INTERFACE or tcp://HOST:PORT) and that the port is open between the hosts")
            }
            throw ClusterError("rank \(rank) could not form the ring (\(addresses.joined(separator: " -> "))): \(error)")
        }
        if case .success(let seconds) = right == rank ? .success(0) : Advertise.reach(addresses[right], within: 2) {
            log(
                "ring address \(addresses[rank]); right neighbour rank \(right) at \(addresses[right]) reachable (\(String(format: "%.1f", seconds * 1000)) ms)"
                    + "; all-reduce by \(collective.rawValue)"
                    + (ring.linkCost.map {
                        " (links \(ringOptions.link == nil ? "measured" : "given"): "
                            + String(format: "%.0f us a hop, %.0f MB/s)", $0.latency * 1e6, $0.bandwidth / 1e6)
                    } ?? ""))
        }
        return ring
    }

    /// The ring of a re-formation: the old ring is closed (a survivor) or never was (a joiner) and the
    /// new address bound; say so, and connect once every member has (the coordinator's Start), so
    /// nothing goes to a neighbour's abandoned socket at the same address.
    private func formReformedRing(
        _ membership: Membership, layoutFingerprint: UInt64, collective: AllReduceAlgorithm, link: CollectiveCost?
    ) throws -> Ring {
        let listening = Reform(
            ringEpoch: membership.epoch, rank: UInt32(membership.rank), ring: membership.ring, reason: "listening")
        return try formRing(membership, layoutFingerprint: layoutFingerprint, collective: collective, link: link) { [self] in
            try tell(.reform(listening))
            try waitFor("the re-formed ring's start", within: 60) {
                if case .start = $0 { return () }; return nil
            }
        }
    }

    /// The training state every member of a re-formed ring continues from: each says the step it
    /// carries (a joiner none), and the lowest rank among those furthest along sends its state to all.
    private func syncState(_ ring: Ring, carried: (step: Int, bytes: [UInt8])?) throws -> Checkpoint.Loaded {
        let steps = try ring.allGather(withUnsafeBytes(of: Int64(carried?.step ?? -1).littleEndian, Array.init)).map { bytes -> Int64 in
            guard bytes.count == 8 else { throw ClusterError("a member sent \(bytes.count) bytes for its step") }
            return bytes.withUnsafeBytes { $0.loadUnaligned(as: Int64.self).littleEndian }
        }
        guard let furthest = steps.max(), furthest >= 0, let source = steps.firstIndex(of: furthest) else {
            throw ClusterError("no member of the re-formed ring carries a training state")
        }
        let states = try ring.allGather(rank == source ? carried?.bytes ?? [] : [])
        return try Checkpoint.Loaded(bytes: Data(states[source]), source: "rank \(source)'s state at step \(furthest)")
    }

    /// The coordinator's Reform of a ring newer than `epoch` (`urgent`: not one at a step boundary,
    /// which was sent before a failure), or nil when none comes within the coordinator's time-out and
    /// some. An Abort throws.
    private func awaitReform(after epoch: UInt32, urgent: Bool) throws -> Reform? {
        if let reform = reforms.pending(after: epoch, urgent: urgent) { return reform }
        if urgent, let why = ringFailure { log("\(why); waiting for the coordinator to re-form the ring", .warning) }
        ringFailure = nil
        let deadline = ContinuousClock.now + .seconds(options.coordinatorTimeout + 20)
        while ContinuousClock.now < deadline {
            if let reform = reforms.pending(after: epoch, urgent: urgent) { return reform }
            do { _ = try receive(until: min(deadline, .now + .milliseconds(100))) { _ in Optional<Void>.none } } catch let e
                as CollectiveError where e.abandoned
            {}
        }
        return reforms.pending(after: epoch, urgent: urgent)
    }

    /// The replica on the re-formed ring: the old ring closed, the new one formed, the state of the
    /// member furthest along (the lowest new rank among them) gathered by all, and the workload,
    /// model and optimizer made anew from it for this rank's new shard (the resume path, from memory).
    /// What a member carries in: after a failure, the state its last step left, before that step's
    /// end-of-step work (which is redone); at a step boundary (a join), its state as it is.
    private func reformed(_ old: Job, _ reform: Reform) throws -> Job {
        let replica = old.replica, config = old.config
        let carried = replica.carried ?? (reform.atBoundary ? replica.encoded(replica.state) : replica.encoded(replica.boundary))
        replica.carried = carried
        replica.training.ring.close()
        let membership = Membership(
            epoch: reform.ringEpoch, rank: Int(reform.rank), ring: reform.ring,
            publicKeys: reform.ringPublicKeys, secretKey: old.membership.secretKey)
        log(
            "\(reform.reason.prefix(300)); the ring re-forms as \(reform.ring.count) (epoch \(reform.ringEpoch))"
                + (reform.atBoundary ? " after step \(replica.state.globalStep)" : "") + ", this worker is rank \(rank) now")
        let ring = try formReformedRing(
            membership, layoutFingerprint: replica.training.workload.model.arena.layout.fingerprint,
            collective: replica.training.ring.options.allReduce, link: replica.training.ring.options.link)
        let loaded = try syncState(ring, carried: carried)
        let workload = try Workloads.make(config, shard: membership.shard, metadata: loaded.file.metadata, source: served)
        let model = workload.model
        let optimizer = try Optimizer<Float>(config.optimizer, layout: model.arena.layout, ftrlParameters: model.ftrlParameters)
        try loaded.restore(into: model, optimizer: optimizer, shard: membership.shard)
        model.context.rng = .dropoutMasks(seed: config.seed &+ UInt64(loaded.state.globalStep), replica: rank)
        let training = Training(
            workload: workload, optimizer: optimizer, ring: ring, membership: membership, config: config, bucketBytes: old.bucketBytes)
        training.exchange.tracing = replica.training.exchange.tracing
        // its own error feedback, as its last completed step left it (a lost member's is lost with it)
        try training.restoreCompression(from: loaded, shard: membership.shard, ownErrors: replica.training.exchange.errorFeedback)
        let next = Replica(training: training, state: loaded.state, stateRing: Replica.ring(of: loaded))
        next.report = replica.report
        return job(config: config, bucketBytes: old.bucketBytes, membership: membership, replica: next, assign: assignment!)
    }

    /// Says Hello until the coordinator assigns this worker a rank, or (nil) says the run has finished.
    /// Hello is repeated every second: one that reached a coordinator on its way out (a restarting one)
    /// is lost with it. While it waits it says what it sees: nothing answering, or a handshake the
    /// coordinator refused (another cluster key, or one side --insecure), which ends the wait at once.
    /// A worker that outlived its coordinator says which state it `carries` (steps, parameter hash).
    private func join(carrying carried: (step: Int, hash: UInt64)?, within seconds: Double = 120) throws -> Assign? {
        // a worker that kept its state has just closed its ring at the address it advertises
        releaseAdvertisedPort()
        if carried != nil { try control.reconnect(options.coordinator) }
        let advertised = try Advertise.reserve(options.advertise, portWait: carried == nil ? 0 : 5)
        advertisedPort = advertised.holder
        var hello = Hello(advertiseAddress: advertised.address, tetherVersion: "tether", threads: UInt32(Compute.threads))
        if let carried { (hello.carriedStep, hello.carriedHash) = (UInt64(carried.step), max(carried.hash, 1)) }
        if let folder = SameHostLinks.folder() { (hello.hostKey, hello.ipcFolder) = (SameHostLinks.key, folder) }
        var diagnosis = JoinDiagnosis(coordinator: options.coordinator, secure: options.security.keys != nil)
        log("waiting for the coordinator at \(options.coordinator)")
        let started = ContinuousClock.now, deadline = started + .milliseconds(Int(seconds * 1000))
        var nextHello = started
        while ContinuousClock.now < deadline {
            // No connection yet (nothing answers, or no handshake) leaves nothing to send on: try again.
            if ContinuousClock.now >= nextHello {
                nextHello = .now + .seconds(1)
                do { try control.send(.hello(hello), from: -1) } catch let e as ZeroMQError where e.code == EAGAIN {}
            }
            let answer = try receive(until: min(deadline, .now + .milliseconds(200))) { body -> Envelope.Body? in
                switch body {
                case .assign, .finish: body
                default: nil
                }
            }
            switch answer {
            case .assign(let assign)?: return assign
            case .finish?: return nil
            default: break
            }
            while let event = monitor.next(deadline: .now) { diagnosis.record(event) }
            switch diagnosis.verdict(waited: Double((ContinuousClock.now - started).components.seconds)) {
            case .refused(let why)?: throw ClusterError(why)
            case .say(let line)?: log("" + line)
            case nil: break
            }
        }
        throw ClusterError(
            "no assignment from the coordinator at \(options.coordinator) within \(Int(seconds)) s"
                + (diagnosis.summary.map { ": \($0)" } ?? ""))
    }

    /// Sends to the coordinator. A full queue (libzmq's high-water mark: the coordinator has not read
    /// for a while, or is gone and its connection not yet given up) waits until it drains, the
    /// heartbeat thread says the coordinator was lost or stopped the job (which then ends this send as
    /// any wait), or twice the coordinator's time-out has passed.
    private func tell(_ body: Envelope.Body) throws {
        let deadline = ContinuousClock.now + .seconds(2 * options.coordinatorTimeout)
        while true {
            do { return try control.send(body, from: rank) } catch let e as ZeroMQError
                where e.code == EAGAIN && ContinuousClock.now < deadline
            {
                try throwIfCoordinatorGone()
                Thread.sleep(forTimeInterval: 0.01)
            }
        }
    }

    /// Messages from the coordinator until `want` accepts one; an Abort or the deadline is an error.
    private func waitFor<T>(_ what: String, within seconds: Double, _ want: (Envelope.Body) -> T?) throws -> T {
        guard let value = try receive(until: .now + .milliseconds(Int(seconds * 1000)), want) else {
            throw ClusterError("no \(what) from the coordinator at \(options.coordinator) within \(Int(seconds)) s")
        }
        return value
    }

    /// Messages from the coordinator until `want` accepts one (nil at the deadline); an Abort is an error.
    /// A signal before this worker trains ends the wait (`JobInterrupted`); while it trains, a signal
    /// or a Stop is noted (the next step's vote).
    private func receive<T>(until deadline: ContinuousClock.Instant, _ want: (Envelope.Body) -> T?) throws -> T? {
        while ContinuousClock.now < deadline {
            try throwIfCoordinatorGone()
            try noteSignal()
            guard let (_, env) = try control.receive(deadline: min(deadline, .now + .milliseconds(200))) else { continue }
            guard let body = env.body else { continue }
            if let value = want(body) { return value }
            if body == .finish { throw CoordinatorOrder.finish }
            try note(body)
        }
        return nil
    }

    /// What the heartbeat thread heard ends any wait for the coordinator: its Abort, or its silence
    /// (unless this worker, having outlived it, is saying hello to the next one).
    private func throwIfCoordinatorGone() throws {
        if let reason = reforms.abortReason { throw CoordinatorOrder.abort(.init(originRank: -1, reason: reason)) }
        if reforms.coordinatorLost, !machine.rejoining {
            throw CollectiveError(message: "the coordinator at \(options.coordinator) was lost", abandoned: true)
        }
    }

    /// Reads what the coordinator sent while this worker computed.
    private func checkControl() throws {
        try noteSignal()
        while let (_, env) = try control.receive(deadline: .now) {
            if let body = env.body { try note(body) }
        }
    }

    /// Takes an order the coordinator sent while this worker did something else: a Stop or a join's
    /// Reform is kept for the state machine; an Abort, and a Reform after a loss (of a ring newer than
    /// this worker's: the step or wait in progress is abandoned), throw.
    private func note(_ body: Envelope.Body) throws {
        switch body {
        case .reform(let r):
            reforms.note(r)
            if r.atBoundary {
                noticed.append(.coordinator(.reform(r)))
            } else if machine.abandonsWork(for: r) {
                throw CollectiveError(message: "the coordinator re-forms the ring: \(r.reason)", abandoned: true)
            }
        case .abort(let a):
            throw CoordinatorOrder.abort(a)
        case .unassigned:
            // the coordinator at the address is not the one that assigned this worker: lost, as a silent one
            reforms.noteCoordinatorLost(generation: reforms.coordinators)
            throw CollectiveError(message: "the coordinator at \(options.coordinator) holds no rank for this worker", abandoned: true)
        case .stop(let s):
            log("\(s.reason.prefix(200)); stopping after the step in progress")
            noticed.append(.coordinator(.stop(s)))
        default: break
        }
    }

    /// A signal to this process, taken by the machine at once (it may end a wait): before the worker
    /// trains it ends now; while it trains, it votes to stop and tells the coordinator which signal.
    private func noteSignal() throws {
        guard let signal = StopSignal.signal else { return }
        for directive in handle(.signalled(signal)) { _ = try carryOut(directive) }
    }
    /// Its error feedback, kept with its replica through a lost coordinator.
    private var keptErrorFeedback: [Float]?
    /// The socket holding the tcp port this worker advertises, until its ring binds that port itself
    /// (kept while its ring links are unix sockets).
    private var advertisedPort: PortHold?
    private func releaseAdvertisedPort() {
        advertisedPort?.close()
        advertisedPort = nil
    }

    /// This process's peak resident set since it started (VmHWM). Not getrusage's ru_maxrss: Linux
    /// carries that over from the process that forked this one (`simulate`'s coordinator, with its data).
    public static func peakResidentMegabytes() -> Int {
        let status = (try? String(contentsOfFile: "/proc/self/status", encoding: .utf8)) ?? ""
        let line = status.split(separator: "\n").first { $0.hasPrefix("VmHWM:") } ?? ""
        return (Int(line.split(separator: " ").dropFirst().first ?? "") ?? 0) / 1024
    }

    /// XXH3-64 of the parameter values' bytes.
    static func hash(_ arena: ParameterArena<Float>) -> UInt64 {
        XXH3_64bits(arena.values, arena.count * MemoryLayout<Float>.stride)
    }
}
