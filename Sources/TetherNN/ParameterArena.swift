#if canImport(Glibc)
    import Glibc
#elseif canImport(Darwin)
    import Darwin
#endif
import TetherTensor

/// How a parameter is initialized, drawn from the run's RNG in registration order.
public enum ParameterInit: Sendable, Equatable {
    case zeros
    case constant(Double)
    case normal(std: Double)
    case uniform(bound: Double)
}

/// Where one named parameter lives in the arena. Layers hold slots, never buffers; two layers that
/// hold the same slot share the parameter (tied weights) and accumulate into one gradient.
public struct ParameterSlot: Hashable, Sendable {
    public let index: Int
    public let offset: Int
    public let count: Int
}

/// The names, shapes and offsets of every parameter of a model, in registration order.
public struct ArenaLayout: Sendable, Equatable {
    public struct Entry: Sendable, Equatable {
        public let name: String  // PyTorch-style: "layers.0.weight_v"
        public let shape: [Int]
        public let offset: Int
        public let count: Int
        public let initializer: ParameterInit
        /// Its gradient lives in a `SparseRows`, never in the arena's gradient buffer.
        public let sparseGradient: Bool
    }
    public private(set) var entries: [Entry] = []
    public private(set) var totalCount = 0

    public init() {}

    /// Registers a parameter; the name must be new.
    public mutating func add(_ name: String, shape: [Int], initializer: ParameterInit, sparseGradient: Bool = false) -> ParameterSlot {
        precondition(!entries.contains { $0.name == name }, "parameter \(name) registered twice")
        let count = shape.reduce(1, *)
        entries.append(
            Entry(name: name, shape: shape, offset: totalCount, count: count, initializer: initializer, sparseGradient: sparseGradient))
        defer { totalCount += count }
        return ParameterSlot(index: entries.count - 1, offset: totalCount, count: count)
    }

    public func slot(named name: String) -> ParameterSlot? {
        entries.firstIndex { $0.name == name }.map { ParameterSlot(index: $0, offset: entries[$0].offset, count: entries[$0].count) }
    }

    /// A hash of names, shapes and order: two replicas with different layouts never agree on it.
    public var fingerprint: UInt64 {
        var h: UInt64 = 0xCBF2_9CE4_8422_2325  // FNV-1a
        func mix(_ s: String) { for b in s.utf8 { h = (h ^ UInt64(b)) &* 0x100_0000_01B3 } }
        for e in entries { mix(e.name); mix(e.shape.map(String.init).joined(separator: "x")); mix(";") }
        return h
    }
}

/// All parameters of a model in one contiguous buffer, their gradients in a second of the same layout.
/// The gradient buffer is what the all-reduce reduces; optimizers walk both in one pass.
public final class ParameterArena<T: Scalar> {
    public let layout: ArenaLayout
    public let values: UnsafeMutablePointer<T>
    public let grads: UnsafeMutablePointer<T>
    public var count: Int { layout.totalCount }

    public init(layout: ArenaLayout) {
        self.layout = layout
        values = .allocate(capacity: max(layout.totalCount, 1))
        T.fill(values, 0, count: layout.totalCount)
        // calloc: the gradient pages of sparse tables are never touched, so never become resident.
        grads = calloc(max(layout.totalCount, 1), MemoryLayout<T>.stride)!.bindMemory(to: T.self, capacity: max(layout.totalCount, 1))
        denseRanges = layout.entries.reduce(into: []) { ranges, e in
            guard !e.sparseGradient else { return }
            if let last = ranges.last, last.upperBound == e.offset {
                ranges[ranges.count - 1] = last.lowerBound..<e.offset + e.count
            } else {
                ranges.append(e.offset..<e.offset + e.count)
            }
        }
    }

    /// The parts of the gradient buffer that hold gradients (all but the sparse tables'), merged.
    public let denseRanges: [Range<Int>]

    deinit {
        values.deallocate()
        free(grads)
    }

    @inline(__always) public func value(_ s: ParameterSlot) -> UnsafeMutablePointer<T> { values + s.offset }
    @inline(__always) public func grad(_ s: ParameterSlot) -> UnsafeMutablePointer<T> { grads + s.offset }

    public func zeroGrads() { for r in denseRanges { T.fill(grads + r.lowerBound, 0, count: r.count) } }

    /// Fills every parameter from its initializer, in registration order.
    public func initialize(rng: inout RNG) {
        for e in layout.entries {
            let p = values + e.offset
            switch e.initializer {
            case .zeros: T.fill(p, 0, count: e.count)
            case .constant(let c): T.fill(p, T(c), count: e.count)
            case .normal(let std): T.fillNormal(p, mean: 0, std: std, rng: &rng, count: e.count)
            case .uniform(let bound): T.fillUniform(p, low: -bound, high: bound, rng: &rng, count: e.count)
            }
        }
    }

    /// Copies of the values as Float, by entry, e.g. for checkpoints.
    public func valuesAsFloats() -> [Float] {
        [Float](unsafeUninitializedCapacity: count) { buf, n in
            if count > 0 { T.convert(buf.baseAddress!, toFloats: values, count: count) }
            n = count
        }
    }

    /// The values of all parameters hashed (FNV-1a over the bytes): replicas compare this to agree.
    public func valueHash() -> UInt64 {
        var h: UInt64 = 0xCBF2_9CE4_8422_2325
        let bytes = UnsafeRawBufferPointer(start: values, count: count * MemoryLayout<T>.stride)
        for b in bytes { h = (h ^ UInt64(b)) &* 0x100_0000_01B3 }
        return h
    }
}
