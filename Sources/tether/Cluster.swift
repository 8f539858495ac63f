import CTetherProcess
import ArgumentParser
import Foundation
import Logging
import TetherCluster
import TetherComm
import TetherProcess
import TetherTensor
import TetherTrain

/// `tether coordinator`: the job's coordinator, waiting for `--workers` workers.
struct CoordinatorCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "coordinator", abstract: "Coordinate a data-parallel job of separate worker processes.")

    @Option(help: "Address to listen on for workers, e.g. tcp://0.0.0.0:7070.") var listen = "tcp://0.0.0.0:7070"
    @Option(help: "Workers in the job.") var workers: Int
    @Option(help: "Job identifier (workers must give the same).") var jobID = "tether"
    @Option(help: "Run directory for metrics.jsonl and checkpoint.safetensors.") var runDir = "runs/cluster"
    @Flag(
        help:
            "With --resume: a run that has already finished is not an error; the workers that join are told so and everything exits 0 (the container entrypoint sets it, so a restart policy does not loop)."
    )
    var finishedOk = false
    @OptionGroup var security: SecurityOptions
    @OptionGroup var job: ClusterJob
    @OptionGroup var output: OutputOptions
    @OptionGroup var observability: ObservabilityOptions
    @OptionGroup var logs: LogOptions

    func validate() throws {
        guard workers >= 1 else { throw ValidationError("--workers must be at least 1") }
        try job.validate(workers: workers)
        try validateAddress(listen, flag: "--listen")
    }

    func run() throws {
        MemoryLimit.set(nil, holder: "this coordinator")
        if try output.printedConfig(
            "coordinator", job.config(runDirectory: runDir), ["run_dir": runDir, "resume": job.resume, "workers": workers, "listen": listen]
        ) {
            return
        }
        StopSignal.install()
        logs.bootstrap(quiet: output.quiet)
        let sinks: [any MetricsSink]
        do { sinks = try observability.sinks(progress: output.progress) } catch { exitWithError(error) }
        try job.restarting(runDirectory: runDir, what: "waiting for workers again") { resume, force in
            var options = Coordinator.Options(listen: listen, workers: workers)
            options.force = force
            (options.jobID, options.finishedIsDone) = (jobID, finishedOk)
            options.security = try security.security()
            options.workerFlags =
                (jobID == "tether" ? [] : ["--job-id", jobID])
                + (security.insecure ? ["--insecure"] : security.keyFile.map { ["--key-file", $0] } ?? [])
            let coordinator = try job.coordinator(options, runDirectory: runDir, resume: resume, progress: output.progress, sinks: sinks)
            do { try coordinator.run() } catch let stopped as JobInterrupted {
                try output.printSummary(coordinator)
                throw stopped
            } catch { throw ClusterJob.TrainingFailure(error: error) }
            try output.printSummary(coordinator)
        }
    }
}

/// `tether worker`: one replica, joining a coordinator.
struct WorkerCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "worker", abstract: "Join a coordinator's job as one data-parallel replica.")

    @Option(help: "The coordinator's address, e.g. tcp://10.0.0.1:7070.") var coordinator: String
    @Option(
        help:
            "Address ring neighbours reach this worker at: tcp://HOST:PORT (port 0: any free port) or an interface name with an optional :PORT (eth0, eth0:7071)."
    ) var advertise = "tcp://127.0.0.1:0"
    @Option(help: "Job identifier (as given to the coordinator).") var jobID = "tether"
    @Option(
        help:
            "After the job stops with a failure, join the coordinator again (a coordinator with --max-restarts resumes the job), up to N times."
    )
    var maxRestarts = 0
    @Option(
        help:
            "When the coordinator falls silent while this worker trains, keep the replica's state and wait this many seconds for a coordinator to come back at the same address (restarted with --resume, it goes on from the workers' state: nothing lost); 0 exits at once."
    )
    var coordinatorWait = 0.0
    @Option(help: "Seconds without a message from the coordinator before it is taken for gone.") var coordinatorTimeout = 10.0
    @Option(
        help:
            "A folder the job's data may be read from (repeatable); a job naming data outside them is refused. Default: /usr/share/datasets, /usr/share/games/fortunes and the current folder."
    )
    var dataRoot: [String] = []
    @OptionGroup var security: SecurityOptions
    @OptionGroup var threads: ResourceOptions
    @OptionGroup var jobFile: JobFileOption
    @Option(help: "Write this worker's own Chrome trace of its steps to FILE (the coordinator's --timeline merges every rank's).")
    var timeline: String?
    @Flag(help: "Print nothing but errors.") var quiet = false
    @OptionGroup var logs: LogOptions

    func validate() throws {
        guard maxRestarts >= 0 else { throw ValidationError("--max-restarts must be at least 0") }
        guard coordinatorWait >= 0 else { throw ValidationError("--coordinator-wait must be at least 0") }
        guard coordinatorTimeout > 0 else { throw ValidationError("--coordinator-timeout must be positive") }
        try validateAddress(coordinator, flag: "--coordinator")
    }

    func run() throws {
        threads.apply(holder: "this worker")
        logs.bootstrap(quiet: quiet)
        let logger = Logger(label: "worker")
        ProcessLifetime.forWorker()
        var options = WorkerOptions(coordinator: coordinator, advertise: advertise)
        (options.jobID, options.coordinatorWait, options.coordinatorTimeout) = (jobID, coordinatorWait, coordinatorTimeout)
        options.timeline = timeline
        do { options.security = try security.security() } catch { exitWithError(error) }
        if security.insecure { logger.warning("\(ClusterSecurity.insecureWarning)") }
        if !dataRoot.isEmpty { options.dataRoots = dataRoot }
        if maxRestarts > 0 {
            let (restarts, coordinator) = (maxRestarts, coordinator)
            options.endProcess = { _ in Self.joinAgain(coordinator, restartsLeft: restarts - 1) }
        }
        do {
            try Worker(options, logger: logger).run()
            // stopped gracefully by a signal to this process: its status says so
            if StopSignal.requested { throw ExitCode(StopSignal.exitStatus) }
        } catch let e as ExitCode {
            throw e
        } catch let interrupted as JobInterrupted {
            FileHandle.standardError.write(Data("tether \(interrupted)\n".utf8))
            throw ExitCode(interrupted.status)
        } catch {
            if ProcessInfo.processInfo.environment[ProcessLifetime.restartsVariable] != nil {
                logger.notice("stopped: \(error); the job restarts from its last checkpoint (simulate --max-restarts)")
                throw ExitCode(1)
            }
            guard maxRestarts > 0 else {
                // however a worker ends, it says its peak memory (cluster/chaos checks every one's)
                logger.notice("stopping, peak RSS \(Worker.peakResidentMegabytes()) MB")
                exitWithError(error)
            }
            logger.notice("stopped: \(error)")
            Self.joinAgain(coordinator, restartsLeft: maxRestarts - 1)
        }
    }

    /// Executes this program anew with one restart fewer: a clean process (no thread of the failed job
    /// is left, whatever it was blocked in) that joins the coordinator again. The last --max-restarts
    /// given wins, over a job file's or a TETHER_ variable's.
    static func joinAgain(_ coordinator: String, restartsLeft: Int) -> Never {
        let logger = Logger(label: "worker")
        logger.notice("joining \(coordinator) again (\(restartsLeft) restarts left)")
        let arguments = CommandLine.arguments + ["--max-restarts", String(restartsLeft)]
        var argv: [UnsafeMutablePointer<CChar>?] = arguments.map { strdup($0) } + [nil]
        HostFiles.removeAll()  // the new process makes its own
        execv("/proc/self/exe", &argv)
        logger.critical("cannot execute itself again: \(String(cString: strerror(errno)))")
        _exit(1)
    }
}

/// `tether simulate`: a coordinator in this process and N worker processes on this machine, over
/// loopback tcp: the whole cluster with one command.
struct Simulate: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Run a coordinator and N worker processes on this machine.")

    @Option(help: "Worker processes.") var workers = 2
    @Option(help: "Run directory for metrics.jsonl and checkpoint.safetensors.") var runDir = "runs/simulate"
    @Option(help: "Compute threads per worker (default: the cores divided among the workers).") var threads: Int?
    @Flag(
        help:
            "No encryption and no authentication on the loopback sockets (by default simulate makes a cluster key of its own for each run)."
    )
    var insecure = false
    @OptionGroup var job: ClusterJob
    @OptionGroup var output: OutputOptions
    @OptionGroup var observability: ObservabilityOptions
    @OptionGroup var logs: LogOptions

    func validate() throws {
        guard workers >= 1 else { throw ValidationError("--workers must be at least 1") }
        if let threads, threads < 1 { throw ValidationError("--threads must be at least 1") }
        try job.validate(workers: workers)
    }

    func run() throws {
        if try output.printedConfig(
            "simulate", job.config(runDirectory: runDir), ["run_dir": runDir, "resume": job.resume, "workers": workers])
        {
            return
        }
        StopSignal.install()
        logs.bootstrap(quiet: output.quiet)
        let sinks: [any MetricsSink]
        do { sinks = try observability.sinks(progress: output.progress) } catch { exitWithError(error) }
        try job.restarting(runDirectory: runDir, what: "with \(workers) new workers") { try runJob(resume: $0, force: $1, sinks: sinks) }
    }

    /// One attempt: a coordinator and fresh worker processes. Set-up errors (flags, data, the run
    /// directory) are thrown as they are; failures of the running job as `TrainingFailure`, after the
    /// workers have been reaped.
    private func runJob(resume: Bool, force: Bool, sinks: [any MetricsSink]) throws {
        let jobID = "simulate-\(getpid())"
        var children: [ChildProcess] = []
        var options = Coordinator.Options(listen: "tcp://127.0.0.1:0", workers: workers)
        (options.jobID, options.force) = (jobID, force)
        let key = try EphemeralClusterKey(prefix: "tether-simulate", insecure: insecure)
        defer { withExtendedLifetime(key) {} }  // its file stays until the job is over
        if let keys = key.keys { options.security = .curve(keys) }
        let coordinator = try job.coordinator(options, runDirectory: runDir, resume: resume, progress: output.progress, sinks: sinks)
        do {
            let perWorker = threads ?? max(1, ProcessInfo.processInfo.activeProcessorCount / workers)
            for _ in 0..<workers {
                let arguments =
                    [
                        "worker", "--coordinator", coordinator.boundAddress, "--advertise", "tcp://127.0.0.1:0", "--job-id", jobID,
                        "--threads", String(perWorker)
                    ]
                    + key.flags + ["--data-root", "/"]  // the workers read what this user's coordinator reads
                    + (output.quiet ? ["--quiet"] : []) + logs.passedOn
                // TETHER_* settings are the coordinator's (JobSettings); a worker would refuse them.
                var env = ProcessInfo.processInfo.environment.filter { !$0.key.hasPrefix("TETHER_") || $0.key == SampleAudit.variable }
                env["OPENBLAS_NUM_THREADS"] = String(perWorker)
                env[ProcessLifetime.parentVariable] = String(getpid())
                if job.maxRestarts > 0 { env[ProcessLifetime.restartsVariable] = "1" }
                children.append(try ChildProcess(ChildProcess.tether, arguments, environment: env))
            }
            // A worker that exits with an error before it could tell the coordinator (a bad setting) stops
            // the job now; one killed by a signal is named by rank when its heartbeats stop.
            coordinator.failure = {
                children.lazy.compactMap { child -> String? in
                    guard case .exited(let status)? = child.ending, status != 0 else { return nil }
                    return "worker process \(child.processIdentifier) exited with status \(status) (its error is above)"
                }.first
            }
            try coordinator.run()
            ChildProcess.reap(children, within: 10)
            try output.printSummary(coordinator)
        } catch let stopped as JobInterrupted {
            ChildProcess.reap(children, within: 10)  // told Finish, they exit
            try output.printSummary(coordinator)
            throw stopped
        } catch {
            ChildProcess.reap(children, within: 2)
            throw ClusterJob.TrainingFailure(error: error)
        }
    }
}

/// A ZeroMQ endpoint as a flag takes it: tcp://HOST:PORT (or ipc://PATH), never a bare HOST:PORT.
func validateAddress(_ address: String, flag: String) throws {
    guard address.hasPrefix("tcp://") || address.hasPrefix("ipc://") else {
        // a port alone means every interface (a listening flag) or this host (a connecting one)
        let hint =
            address.contains("://")
            ? ""
            : UInt16(address) != nil
                ? " (did you mean tcp://\(flag == "--listen" ? "0.0.0.0" : "127.0.0.1"):\(address)?)" : " (did you mean tcp://\(address)?)"
        throw ValidationError("\(flag) takes tcp://HOST:PORT, got \(address)" + hint)
    }
}

/// What `coordinator` and `simulate` share: the training flags and how the job runs them.
struct ClusterJob: ParsableArguments {
    @OptionGroup var training: TrainingOptions
    @Flag(help: "Continue the run in --run-dir from its checkpoint.") var resume = false
    @Flag(help: "Start a new run in a --run-dir that holds one, deleting its checkpoint and metrics.") var force = false
    @Option(help: "Compare the replicas' parameter hashes every N steps.") var hashEvery = 50
    @Option(
        help: "Gradient bucket size in MB: buckets start all-reducing during backward once this much is final (the same on every worker).")
    var bucketMb = 1.0
    @Flag(help: "Serve the samples to the workers over ZeroMQ (each holds only what its shard reads) instead of each reading --data.")
    var serveData = false
    @Option(
        help:
            "After a failure while training (a worker died, went silent or diverged), resume the job from its last checkpoint, up to N times: simulate with new worker processes, coordinator with the workers that join again."
    )
    var maxRestarts = 0
    @Option(help: "Seconds without a message before a worker is declared dead.") var heartbeatTimeout = 5.0
    @Option(
        help:
            "Elastic: start (or restart) with as few as this many workers once no other has joined for --last-call seconds, and when a worker is lost while training, carry on in place with the rest while this many remain (no process restarts; the step in flight is redone); the global batch stays --batch x --workers."
    )
    var minWorkers: Int?
    @Option(help: "Seconds an elastic job waits for more workers after the last one joined.") var lastCall = 10.0
    @Option(
        help:
            "The gradients on the wire: none (f32); fp16 (IEEE half) or bf16 (bfloat16): half the bytes, summed in f32 on arrival; powersgd: each weight matrix as two rank-R factors (PowerSGD, as DDP's powerSGD_hook). With error feedback: each worker adds what its compression lost to its next step's gradient."
    )
    var compression: TrainingConfig.Compression?
    @Option(
        help:
            "How the workers all-reduce f32 gradients: by-size (the default: per bucket, a rule of its size, the number of workers and the links (given by --link and --latency; measured when the ring forms where workers talk over tcp, taken on a grid so that the same links choose alike; a nominal 10gbit at 50us on one host), so every run on the same links sums alike: recursive doubling for small buckets, halving-doubling for medium ones on many workers or slow links, the ring otherwise), ring (2(N-1) steps: bandwidth-optimal), recursive-doubling (log2 N exchanges of whole buffers), halving-doubling (2 log2 N steps with partners across the ring), tree (up a binomial tree to rank 0 and down again, whole buffers) or auto (per bucket size, the fastest of the schedules a latency-bandwidth model of the links leaves in, each timed on the first steps: the choice, and so the last bits, can differ between runs). With --compression fp16/bf16, halving-doubling carries the 16-bit values too (asked for, or chosen by size); the other schedules take the ring."
    )
    var collective: AllReduceAlgorithm?
    @Option(
        help:
            "With --latency: the links --collective by-size chooses for, each way (e.g. 1gbit, 10gbit, 25gbit), as `tether plan --link` takes them, instead of measuring them when the ring forms: the same choices on every run."
    )
    var link: String?
    @Option(help: "With --link: one message's latency over a link (e.g. 50us, 0.2ms).") var latency: String?
    @Option(
        help:
            "PowerSGD's rank R (default \(TrainingConfig.defaultPowerSGDRank)): a rows x cols gradient travels as (rows + cols) x R values; higher keeps more."
    )
    var powersgdRank: Int?
    @Option(
        help:
            "Plain all-reduces before this step, PowerSGD from it (default \(TrainingConfig.defaultPowerSGDStartStep), as DDP's start_powerSGD_iter: early gradients change fast)."
    )
    var powersgdStartStep: Int?
    @Flag(
        inversion: .prefixedNo,
        help: "With --compression: carry what each worker's compression lost into its next step (error feedback; on by default).")
    var errorFeedback: Bool?
    @Option(
        help:
            "Write a Chrome trace of every rank's steps (forward and backward, each bucket's all-reduce and PowerSGD's phases, the exchange left after backward, the optimizer) and the job's events to FILE: open it in Perfetto (ui.perfetto.dev) or chrome://tracing."
    )
    var timeline: String?
    @Option(
        help:
            "What an elastic job does when a worker is lost: in-place (the survivors go on, the step in flight redone) or restart (the job stops and resumes from its last checkpoint with the workers there are, --max-restarts; what torchrun does)."
    )
    var onLoss: Coordinator.OnLoss = .inPlace
    @OptionGroup var jobFile: JobFileOption

    func validate() throws {
        guard hashEvery >= 1 else { throw ValidationError("--hash-every must be positive") }
        guard maxRestarts >= 0 else { throw ValidationError("--max-restarts must be at least 0") }
        guard bucketMb > 0, bucketMb <= 1024 else { throw ValidationError("--bucket-mb must be in (0, 1024], got \(bucketMb)") }
        guard heartbeatTimeout > 0 else { throw ValidationError("--heartbeat-timeout must be positive") }
        guard lastCall > 0 else { throw ValidationError("--last-call must be positive") }
    }

    /// What needs the job's worker count.
    func validate(workers: Int) throws {
        if let minWorkers, !(1...workers).contains(minWorkers) {
            throw ValidationError("--min-workers must be in 1...\(workers) (--workers)")
        }
    }

    /// The coordinator of a fresh job, or of the run in `runDirectory` resumed (`--resume`, or a restart).
    func coordinator(
        _ given: Coordinator.Options, runDirectory: String, resume: Bool, progress: ProgressDisplay, sinks: [any MetricsSink]
    ) throws -> Coordinator {
        var options = given
        options.timeline = timeline
        (options.hashEvery, options.bucketBytes, options.serveData) = (hashEvery, max(4, Int(bucketMb * 1_048_576)), serveData)
        (options.heartbeatTimeout, options.minWorkers, options.lastCall, options.onLoss) = (
            heartbeatTimeout, minWorkers ?? options.workers, lastCall, onLoss
        )
        return try Coordinator(
            options: options, config: config(runDirectory: runDirectory, resume: resume), runDirectory: URL(fileURLWithPath: runDirectory),
            resume: resume, progress: progress, sinks: sinks)
    }

    /// The job's training settings: the flags over a new run's defaults, or (resuming) over the checkpoint's.
    func config(runDirectory: String, resume: Bool? = nil) throws -> TrainingConfig {
        var base = TrainingConfig()
        if resume ?? self.resume {
            base = try Checkpoint.Loaded(URL(fileURLWithPath: runDirectory).appendingPathComponent(Checkpoint.fileName)).config
        }
        var config = try training.applied(to: base)
        if let compression { config.compression = compression == TrainingConfig.Compression.none ? nil : compression }
        if let collective { config.collective = collective == .bySize ? nil : collective.rawValue }
        if link != nil || latency != nil {
            guard let link, let latency else { throw ValidationError("--link and --latency go together: the links by-size chooses for") }
            guard config.collective == nil else {
                throw ValidationError(
                    "--link and --latency are the links --collective by-size chooses for; this job all-reduces by \(config.collective!)")
            }
            (config.linkBandwidth, config.linkLatency) = (try Plan.bytesPerSecond(link), try Plan.seconds(latency))
        }
        if let powersgdRank { config.powerSGDRank = powersgdRank }
        if let powersgdStartStep { config.powerSGDStartStep = powersgdStartStep }
        if let errorFeedback { config.errorFeedback = errorFeedback ? nil : false }
        return config
    }

    /// A job that was set up and then failed while training: the failure a restart may recover from.
    struct TrainingFailure: Error { let error: Error }

    /// Runs `attempt` (resuming if --resume), and again after each `TrainingFailure` up to
    /// --max-restarts times: from the run's last checkpoint, or from the start if it failed before its
    /// first (deleting the failed attempt's metrics). Set-up errors and interrupts end the job at once.
    func restarting(runDirectory: String, what: String, _ attempt: (_ resume: Bool, _ force: Bool) throws -> Void) throws {
        var (resume, force) = (self.resume, self.force)
        for restart in 0... {
            do {
                try attempt(resume, force)
                return
            } catch let failure as TrainingFailure where restart < maxRestarts && !StopSignal.requested {
                resume =
                    resume
                    || FileManager.default.fileExists(
                        atPath: URL(fileURLWithPath: runDirectory).appendingPathComponent(Checkpoint.fileName).path)
                force = !resume
                let how = resume ? "resuming \(runDirectory) from its last checkpoint" : "starting over (no checkpoint yet)"
                let logger = Logger(label: "job")
                logger.error("\(failure.error)")
                logger.notice("restart \(restart + 1) of \(maxRestarts): \(how), \(what)")
            } catch let failure as TrainingFailure {
                try Self.stop(failure.error)
            } catch {
                try Self.stop(error)
            }
        }
    }

    /// Ends a stopped or failed job: after a signal (here or to a worker) with 128 + the signal (130 for
    /// Ctrl-C, 143 for SIGTERM), else the error on one line.
    static func stop(_ error: Error) throws -> Never {
        if let stopped = error as? JobInterrupted {
            FileHandle.standardError.write(Data("tether: \(stopped)\n".utf8))
            throw ExitCode(stopped.status)
        }
        if StopSignal.requested {
            FileHandle.standardError.write(Data("tether: \(error)\n".utf8))
            throw ExitCode(StopSignal.exitStatus)
        }
        exitWithError(error)
    }
}

/// A worker process must never outlive a failed job: it takes SIGINT and SIGTERM (a parent spawning it
/// from a thread with those signals blocked passes the mask on) as a graceful stop, a second one ends it
/// at once; one started by `simulate` asks the kernel to kill it when that parent dies.
enum ProcessLifetime {
    static let parentVariable = "TETHER_SIMULATE_PARENT"
    /// Set by `simulate --max-restarts` for its workers: a worker's failure is then one step of a job
    /// that restarts, said as such (the coordinator says `error:` if the job itself ends in one).
    static let restartsVariable = "TETHER_SIMULATE_RESTARTS"

    static func forWorker() {
        var none = sigset_t()
        sigemptyset(&none)
        pthread_sigmask(SIG_SETMASK, &none, nil)
        StopSignal.install()
        StopSignal.lossNote("this worker's step in progress is lost; the job's last checkpoint is the one its coordinator wrote")
        if let parent = ProcessInfo.processInfo.environment[parentVariable].flatMap(Int32.init) {
            _ = tether_die_with_parent()
            if getppid() != parent { exit(1) }  // the parent died before the request took effect
        }
    }
}

extension Coordinator.OnLoss: ExpressibleByArgument {}
extension TrainingConfig.Compression: ExpressibleByArgument {}
