import CTetherKernels
import CXXHash
import Foundation
import Logging
import TetherComm
import TetherMessages
import TetherNN
import TetherTensor
import TetherTrain

/// A thread of its own that sends a heartbeat every half second on a second DEALER and watches the
/// coordinator's: a Reform or an Abort from it, or its silence, is noted for the main thread (the ring
/// it waits in gives up; its state machine decides). A main thread that has not ended the process
/// `grace` seconds after an Abort, or a silence it may not outlive, is not waited for: the process ends
/// through `WorkerOptions.endProcess`, never exit: exit's atexit handlers would tear down OpenBLAS under
/// the main thread's running GEMM (a crash, seen). `stop` ends the thread and closes its socket, so
/// the context can terminate (zmq_ctx_term waits for every socket to close).
final class Heartbeat: @unchecked Sendable {
    private let stopped = StopFlag()
    private let done = DispatchSemaphore(value: 0)

    init(context: ZeroMQContext, options: WorkerOptions, identity: [UInt8], rank: Int, reforms: ReformNotice, logger: Logger) throws {
        let log: (String) -> Void = { logger.warning("\($0)") }
        let dealer = try ZeroMQSocket(context, .dealer, linger: .zero)
        try dealer.setRoutingID(identity)
        try dealer.setMaxMessageSize(ControlLimits.heartbeatMessageBytes)
        try dealer.setHighWaterMarks(send: ControlLimits.workerQueuedMessages, receive: ControlLimits.workerQueuedMessages)
        if let keys = options.security.keys { try dealer.secure(.client(keys, serverKey: keys.publicKey)) }
        // its connection's ends: a coordinator whose process ended is gone at once, not after the time-out
        let monitor = try dealer.monitor(ZMQEvents.connection)
        try dealer.connect(options.coordinator)
        let channel = ControlChannel(socket: dealer, jobID: options.jobID)
        let flag = stopped, finished = done, timeout = options.coordinatorTimeout, coordinator = options.coordinator,
            end = options.endProcess
        Thread {
            defer {
                channel.socket.stopMonitor()
                monitor.close()
                channel.socket.close()
                finished.signal()
            }
            var watch = LivenessWatch(timeout: timeout, now: Clock.now)
            var coordinators = reforms.coordinators
            // Set when the main thread was told to end (an Abort, or silence it cannot outlive): if it has
            // not ended by then (blocked in something that does not look), the process ends here.
            var endBy: (at: Double, reason: String)?
            // The coordinator that assigned this worker is gone (silent, its connection closed, or the
            // one answering holds no rank for this worker): under --coordinator-wait the main thread
            // keeps the replica and says hello to the next one; otherwise the process ends.
            func coordinatorGone(_ reason: String) {
                if !reforms.mayOutliveCoordinator {
                    if endBy == nil { log("\(reason); exiting, peak RSS \(Worker.peakResidentMegabytes()) MB") }
                    endBy = endBy ?? (Clock.now + Heartbeat.grace, reason)
                } else if !reforms.coordinatorLost {
                    log(reason)
                }
                reforms.noteCoordinatorLost(generation: coordinators)
            }
            while !flag.isSet {
                if reforms.coordinators != coordinators {
                    (coordinators, watch) = (reforms.coordinators, LivenessWatch(timeout: timeout, now: Clock.now))
                }
                if !reforms.coordinatorLost { try? channel.send(.heartbeat, from: rank) }
                let deadline = ContinuousClock.now + .milliseconds(500)
                while !flag.isSet, let message = try? channel.receive(deadline: deadline), let (_, env) = Optional(message) {
                    Self.watchConnection(monitor, &watch)
                    watch.heard(at: Clock.now)
                    if case .reform(let r) = env.body { reforms.note(r) }
                    // a coordinator that holds no rank for this worker: the one that assigned it is gone
                    if case .unassigned = env.body, !reforms.coordinatorLost, endBy == nil {
                        coordinatorGone(
                            "the coordinator at \(coordinator) holds no rank for this worker: it is not the one that assigned it")
                    }
                    if case .abort(let a) = env.body, endBy == nil {
                        log("the coordinator stopped the job: \(a.reason)")
                        reforms.noteAbort(a.reason)
                        endBy = (Clock.now + Heartbeat.grace, "the coordinator stopped the job: \(a.reason)")
                    }
                }
                Self.watchConnection(monitor, &watch)
                let silent = watch.silence(at: Clock.now), down = watch.disconnection(at: Clock.now)
                if !flag.isSet, reforms.coordinators == coordinators, silent != nil || down != nil {
                    let reason =
                        silent.map { "the coordinator at \(coordinator) has been silent for \(Int($0)) s" }
                        ?? "the coordinator at \(coordinator) closed its connection \(String(format: "%.1f", down!)) s ago (its process ended)"
                    coordinatorGone(reason)
                    watch = LivenessWatch(timeout: timeout, now: Clock.now)
                }
                if !flag.isSet, let e = endBy, Clock.now > e.at {
                    log("the main thread did not end the process; ending it, peak RSS \(Worker.peakResidentMegabytes()) MB")
                    end(e.reason)
                }
            }
        }.start()
    }

    /// How long the main thread has to end the process itself once told to.
    static let grace = 5.0

    /// Notes in `watch` what the heartbeat socket's monitor says of its connection to the coordinator.
    static func watchConnection(_ monitor: ZeroMQMonitor, _ watch: inout LivenessWatch) {
        while let event = monitor.next(deadline: .now) {
            if event.connected || event.handshakeSucceeded { watch.connectionUp() }
            if event.disconnected { watch.connectionDown(at: Clock.now) }
        }
    }

    /// Ends the thread and waits until its socket is closed.
    func stop() {
        stopped.set()
        done.wait()
    }
}

/// What the coordinator announced on either socket, for the main thread to act on: its re-formations
/// (elastic in place), its Abort, and whether it was lost. The heartbeat thread notes them while the
/// main thread may wait in the ring, which asks `abandons` and gives up.
final class ReformNotice: @unchecked Sendable {
    private let lock = NSLock()
    /// The newest Reform after a loss, and the newest of any kind (a join's is at a step boundary).
    private var newestUrgent: Reform?, newest: Reform?
    private var lost = false, outlives = false, abort: String?

    /// Set by the main thread once this worker trains with a state worth keeping through a lost coordinator.
    var mayOutliveCoordinator: Bool {
        get { lock.withLock { outlives } }
        set { lock.withLock { outlives = newValue } }
    }
    /// Set by the heartbeat thread when the coordinator went silent.
    var coordinatorLost: Bool { lock.withLock { lost } }
    /// Notes the silence of the coordinator of `generation`; of an earlier one (a new coordinator
    /// assigned this worker while the heartbeat thread counted the old one's silence), nothing.
    func noteCoordinatorLost(generation observed: Int) { lock.withLock { if observed == generation { lost = true } } }
    /// The coordinator's Abort, heard on the heartbeat socket.
    var abortReason: String? { lock.withLock { abort } }
    func noteAbort(_ reason: String) { lock.withLock { abort = abort ?? reason } }

    /// A new coordinator assigned this worker: its ring epochs count from 0 again, and its silence is
    /// counted from now (the heartbeat thread watches `coordinators` change).
    func reset() { lock.withLock { (newest, newestUrgent, lost, generation) = (nil, nil, false, generation + 1) } }
    private var generation = 0
    /// How many coordinators this worker has had since the first.
    var coordinators: Int { lock.withLock { generation } }

    func note(_ reform: Reform) {
        lock.withLock {
            if reform.ringEpoch > (newest?.ringEpoch ?? 0) { newest = reform }
            if !reform.atBoundary, reform.ringEpoch > (newestUrgent?.ringEpoch ?? 0) { newestUrgent = reform }
        }
    }

    /// Whether the ring of `ringEpoch` is to be given up: a newer one was announced after a loss, the
    /// coordinator stopped the job, or it was lost. Asked by a waiting collective every 50 ms: one lock.
    func abandons(ringEpoch: UInt32) -> Bool {
        lock.withLock { lost || abort != nil || (newestUrgent?.ringEpoch ?? 0) > ringEpoch }
    }

    /// The newest Reform of a later epoch than `epoch` (`urgent`: the newest after a loss), if any.
    func pending(after epoch: UInt32, urgent: Bool) -> Reform? {
        lock.withLock { (urgent ? newestUrgent : newest).flatMap { $0.ringEpoch > epoch ? $0 : nil } }
    }
}
