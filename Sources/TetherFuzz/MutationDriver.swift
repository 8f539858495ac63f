import Foundation

/// A seeded mutation fuzzer of our own, for CI and for machines without libFuzzer: each input is a
/// seed changed by a few random edits (bit flips, boundary integers written over 1, 2, 4 or 8 bytes,
/// bytes inserted, removed or repeated, a cut, a splice of another seed), run through the target and
/// timed. The same seed gives the same inputs. A trap ends the process, as it would under libFuzzer.
public struct MutationDriver {
    public struct Report: Sendable {
        public var inputs = 0
        /// The slowest input and its time.
        public var slowest: Duration = .zero
        public var slowestInput: [UInt8] = []
    }

    let target: FuzzTarget
    let seeds: [[UInt8]]
    var state: UInt64
    /// The largest input made (bytes).
    public var maxLength = 1 << 16

    public init(_ target: FuzzTarget, seed: UInt64) {
        (self.target, seeds, state) = (target, target.seeds.isEmpty ? [[]] : target.seeds, seed &+ 0x9E37_79B9_7F4A_7C15)
    }

    /// splitmix64
    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
    mutating func below(_ n: Int) -> Int { n <= 1 ? 0 : Int(next() % UInt64(n)) }

    static let boundaries: [UInt64] = [
        0, 1, 0x7F, 0x80, 0xFF, 0x7FFF, 0xFFFF, 0x7FFF_FFFF, 0x8000_0000, 0xFFFF_FFFF,
        1 << 32, 1 << 62, 0x7FFF_FFFF_FFFF_FFFF, 0x8000_0000_0000_0000, .max
    ]

    /// One mutated input.
    public mutating func mutate() -> [UInt8] {
        var b = seeds[below(seeds.count)]
        for _ in 0...below(4) {
            switch below(8) {
            case 0 where !b.isEmpty: b[below(b.count)] ^= UInt8(1 << below(8))
            case 1 where !b.isEmpty:
                let width = [1, 2, 4, 8][below(4)], at = below(b.count)
                let v = Self.boundaries[below(Self.boundaries.count)]
                for i in 0..<width where at + i < b.count { b[at + i] = UInt8(truncatingIfNeeded: v >> (8 * UInt64(i))) }
            case 2: b.insert(contentsOf: (0...below(16)).map { _ in UInt8(truncatingIfNeeded: next()) }, at: below(b.count + 1))
            case 3 where !b.isEmpty:
                let at = below(b.count)
                b.removeSubrange(at..<min(b.count, at + 1 + below(16)))
            case 4 where !b.isEmpty:
                let at = below(b.count), n = 1 + below(min(64, b.count - at))
                b.insert(contentsOf: b[at..<at + n], at: below(b.count + 1))
            case 5 where !b.isEmpty: b.removeLast(below(b.count))
            case 6:
                let other = seeds[below(seeds.count)]
                if !other.isEmpty { b += other[below(other.count)...] }
            default:
                if !b.isEmpty { b[below(b.count)] = UInt8(truncatingIfNeeded: next()) }
            }
        }
        if b.count > maxLength { b.removeLast(b.count - maxLength) }
        return b
    }

    /// Runs the seeds, then `inputs` mutated inputs.
    public mutating func run(inputs: Int) -> Report {
        var report = Report()
        for i in 0..<seeds.count + inputs {
            let input = i < seeds.count ? seeds[i] : mutate()
            let t0 = ContinuousClock.now
            target.run(input)
            let took = ContinuousClock.now - t0
            report.inputs += 1
            if took > report.slowest { (report.slowest, report.slowestInput) = (took, input) }
        }
        return report
    }
}
