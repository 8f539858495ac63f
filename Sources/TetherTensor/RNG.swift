/// The one seeded random source of a Tether run: xoshiro256** (Blackman & Vigna 2018), seeded through
/// SplitMix64. Same seed, same stream on every machine and every process; the state is four words, so
/// checkpoints carry it and a resumed run draws exactly what an uninterrupted one would.
public struct RNG: RandomNumberGenerator, Sendable, Equatable, Codable {
    public private(set) var state: [UInt64]

    public init(seed: UInt64) {
        var sm = seed
        state = (0..<4).map { _ in RNG.splitMix64(&sm) }
    }

    /// A stream for a named purpose derived from a seed, so that e.g. the shuffle of epoch 3 does not
    /// depend on how many numbers initialization drew.
    public init(seed: UInt64, stream: UInt64) {
        var sm = seed ^ (stream &* 0x9E37_79B9_7F4A_7C15)
        self.init(seed: RNG.splitMix64(&sm))
    }

    public init(state: [UInt64]) throws {
        guard state.count == 4, state.contains(where: { $0 != 0 }) else { throw TensorError.invalidRNGState }
        self.state = state
    }

    static func splitMix64(_ x: inout UInt64) -> UInt64 {
        x &+= 0x9E37_79B9_7F4A_7C15
        var z = x
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }

    @inline(__always)
    public mutating func next() -> UInt64 {
        let result = ((state[1] &* 5) << 7 | (state[1] &* 5) >> 57) &* 9
        let t = state[1] << 17
        state[2] ^= state[0]; state[3] ^= state[1]; state[1] ^= state[2]; state[0] ^= state[3]
        state[2] ^= t
        state[3] = state[3] << 45 | state[3] >> 19
        return result
    }

    /// Uniform in [0, 1) with 53 random bits.
    @inline(__always)
    public mutating func nextUnitDouble() -> Double { Double(next() >> 11) * 0x1.0p-53 }

    /// Standard normal by Box-Muller (one of the pair is used, so the stream position is simple).
    public mutating func nextNormal() -> Double {
        let u1 = 1 - nextUnitDouble(), u2 = nextUnitDouble()
        return (-2 * log(u1)).squareRoot() * cos(2 * Double.pi * u2)
    }

    /// Uniform integer in 0..<bound without modulo bias (Lemire 2019).
    public mutating func nextInt(below bound: Int) -> Int {
        precondition(bound > 0)
        return Int(next(upperBound: UInt64(bound)))
    }

    /// A uniformly random permutation of 0..<n (Fisher-Yates).
    public mutating func permutation(_ n: Int) -> [Int] {
        var p = Array(0..<n)
        if n > 1 { for i in stride(from: n - 1, to: 0, by: -1) { p.swapAt(i, nextInt(below: i + 1)) } }
        return p
    }
}

#if canImport(Glibc)
    import Glibc
#elseif canImport(Darwin)
    import Darwin
#endif
