import CTetherKernels
import CXXHash
import Foundation
import Logging
import TetherComm
import TetherMessages
import TetherNN
import TetherTensor
import TetherTrain

/// How a worker reaches its coordinator and its ring neighbours.
public struct WorkerOptions: Sendable {
    public var coordinator: String
    /// Where ring neighbours reach this worker: tcp://HOST:PORT (port 0: any free port on HOST).
    public var advertise: String
    public var jobID = "tether"
    /// A gradient exchange that waits longer than this for a neighbour fails, naming it.
    public var ringTimeout: Duration = .seconds(20)
    /// The coordinator is declared gone after this long without a heartbeat.
    public var coordinatorTimeout: Double = 10
    /// Once training: when the coordinator goes silent, keep the replica's state and wait this long for
    /// a coordinator to come back at the same address (0: end the process, as before).
    public var coordinatorWait: Double = 0
    /// Ends the process when the coordinator stops the job or goes silent, called on the heartbeat
    /// thread with the reason (already logged) while the main thread may be inside a GEMM or a
    /// collective: `_exit(1)` by default (exit's atexit handlers would tear down OpenBLAS under it);
    /// `tether worker --max-restarts` executes itself anew to join again.
    public var endProcess: @Sendable (String) -> Never = { _ in
        HostFiles.removeAll()
        _exit(1)
    }
    /// CURVE with the cluster key, or --insecure.
    public var security: ClusterSecurity = .insecure
    /// Folders the job's data may be read from (AssignCheck).
    public var dataRoots = AssignCheck.defaultDataRoots
    /// Write this worker's own Chrome trace of its steps here (the coordinator's --timeline merges
    /// every rank's; this one needs no coordinator flag and stays on the worker's host).
    public var timeline: String?
    public init(coordinator: String, advertise: String) { (self.coordinator, self.advertise) = (coordinator, advertise) }
}

extension TrainingConfig.Compression {
    /// The gradients' type on the wire.
    var wire: ChunkHeader.DType {
        switch self {
        case .none: .f32
        case .fp16: .f16
        case .bf16: .bf16
        case .powersgd: .f32
        }
    }
}

/// An order from the coordinator that ends what a worker was doing: its Abort (also a refusal before
/// this worker has a rank) or its Finish (a run that ended while a joiner set up).
enum CoordinatorOrder: Error, CustomStringConvertible {
    case abort(Abort)
    case finish
    var description: String {
        switch self {
        case .abort(let a): "the coordinator stopped the job: \(a.reason)"
        case .finish: "the coordinator says the run has finished"
        }
    }
}
