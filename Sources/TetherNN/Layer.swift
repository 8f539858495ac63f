import TetherTensor

/// What every layer sees during a pass: the arena, whether this is training, and the run's RNG.
public final class ModelContext<T: Scalar> {
    public let arena: ParameterArena<T>
    /// Training mode: dropout drops and batch statistics are used and tracked.
    public var training = true
    /// Drives dropout masks; part of the checkpointed training state.
    public var rng: RNG
    /// Told during backward that the gradients at arena offsets >= its argument are final, by models
    /// that know (a cluster worker starts all-reducing them while backward goes on).
    public var gradientsReady: ((Int) -> Void)?
    /// Set by `freezeParameters` while the parameters stay as they are (inference over a loaded
    /// checkpoint): a weight-normalized layer then computes its weight g v / ||v|| once per freeze
    /// instead of every forward. A number per freeze, so a weight computed under an earlier one is not
    /// taken for this one's.
    public private(set) var frozen: Int?
    private var freezes = 0

    /// Promises that nothing changes the parameters until `thawParameters` (predict, bench predict).
    public func freezeParameters() {
        freezes += 1
        frozen = freezes
    }
    public func thawParameters() { frozen = nil }

    public init(arena: ParameterArena<T>, rng: RNG) {
        self.arena = arena
        self.rng = rng
    }
}

/// One forward/backward pair. `forward` keeps in the layer what `backward` needs (its cache);
/// `backward` is for the most recent `forward`, **accumulates** parameter gradients into the arena
/// and returns dL/dx, or nil when the caller said it does not need it (the first layer).
public protocol Layer<T>: AnyObject {
    associatedtype T: Scalar
    /// The arena entries the layer's backward accumulates gradients into (its own and any it shares).
    var parameterSlots: [ParameterSlot] { get }
    func forward(_ x: Tensor<T>, _ ctx: ModelContext<T>) -> Tensor<T>
    func backward(_ dy: Tensor<T>, _ ctx: ModelContext<T>, needsInputGradient: Bool) -> Tensor<T>?
}

extension Layer {
    public var parameterSlots: [ParameterSlot] { [] }
    /// Whether the layer learns anything (so the layers before it must pass gradients back).
    public var hasParameters: Bool { !parameterSlots.isEmpty }
}

/// Sums statistics over all replicas (identity in one process, an all-reduce in a cluster), so that
/// data-dependent initialization gives every replica the same parameters.
public typealias StatisticsReducer = (inout [Double]) -> Void

/// A layer with a data-dependent initialization (Salimans & Kingma 2016, section 3): it sets its own
/// parameters from the batch it is shown, then returns its output under the new parameters.
public protocol DataDependentInit<T>: Layer {
    func initializeFromData(_ x: Tensor<T>, _ ctx: ModelContext<T>, reduce: StatisticsReducer) -> Tensor<T>
}

/// A named non-trainable tensor that a checkpoint carries (e.g. a running mean).
public protocol BufferOwner: AnyObject {
    var bufferNames: [String] { get }
    func buffer(named: String) -> [Float]?
    func loadBuffer(named: String, _ values: [Float]) -> Bool
    /// For a buffer of one row per stream (a language model's carried state): the values in a row, so
    /// that the rows of all replicas can be dealt anew over another number of them. nil: the buffer is
    /// whole in every replica.
    func bufferRowLength(named: String) -> Int?
}

extension BufferOwner {
    public func bufferRowLength(named: String) -> Int? { nil }
}
