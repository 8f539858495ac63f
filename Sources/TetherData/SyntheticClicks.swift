import Foundation
import TetherTensor

/// Click logs shaped like Criteo's (26 categorical fields C1..C26, 13 numeric I1..I13) drawn from a
/// planted model in which part of the signal can only be memorized and part only generalized, so that
/// wide-only, deep-only and wide & deep separate as in Cheng et al. 2016, Table 1:
///
///   logit = -1.2 + first-order + generalization + memorization + numeric
///   - first-order: a small weight per (field, value); every model can learn it.
///   - generalization: sum over non-adjacent pairs of fields C1..C10 of <u_a, u_b>, where each value's
///     latent u is its cluster's centre plus noise (12 clusters shared by all fields). Holds for value
///     combinations never seen together: embeddings learn it, hashed crosses cannot (and the wide part
///     has no crosses of non-adjacent fields).
///   - memorization: for the adjacent pairs (C11, C12) ... (C20, C21), an arbitrary +-1 or 0 per value
///     combination: no shared structure, so only a per-combination weight (the wide crosses) fits it.
///   - numeric: tanh of each standard-normal I_j and one product; only the deep part sees numbers.
///
/// Values of field f are Zipf(1.05)-distributed over a cardinality of 20, 200, 2,000 or 20,000.
/// The same seed always gives the same rows; the held-out split is drawn from its own stream.
public enum SyntheticClicks {
    public static let fields = 26, numericFeatures = 13
    public static let crosses = (0..<fields - 1).map { [$0, $0 + 1] }
    static let latent = 6, clusters = 12
    static let generalizationFields = 0..<10, memorizationPairs = 10..<20

    public static func cardinality(_ f: Int) -> Int { [20, 200, 2000, 20000][f % 4] }

    /// `rows` rows of the split (`heldOut` draws a disjoint sample of the same model).
    public static func generate(rows: Int, seed: UInt64, heldOut: Bool) -> TabularDataset {
        let model = PlantedModel(seed: seed)
        var rng = RNG(seed: seed, stream: heldOut ? 0x4845_4C44 : 0x5452_4149)  // "HELD" / "TRAI"
        var categorical = [UInt64](repeating: 0, count: rows * fields)
        var numeric = [Float](repeating: 0, count: rows * numericFeatures)
        var labels = [Int32](repeating: 0, count: rows)
        var values = [Int](repeating: 0, count: fields), x = [Double](repeating: 0, count: numericFeatures)
        for r in 0..<rows {
            for f in 0..<fields {
                values[f] = model.sampleValue(field: f, &rng)
                categorical[r * fields + f] = mix(UInt64(values[f]))
            }
            for j in 0..<numericFeatures { x[j] = rng.nextNormal(); numeric[r * numericFeatures + j] = Float(x[j]) }
            let p = 1 / (1 + exp(-model.logit(values: values, numeric: x)))
            labels[r] = rng.nextUnitDouble() < p ? 1 : 0
        }
        return TabularDataset(
            categoricalNames: (1...fields).map { "C\($0)" }, numericNames: (1...numericFeatures).map { "I\($0)" },
            crosses: crosses, categorical: categorical, numeric: numeric, labels: labels)
    }

    static func mix(_ x: UInt64) -> UInt64 {
        var z = x &+ 0x9E37_79B9_7F4A_7C15
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }

    struct PlantedModel {
        let cumulative: [[Double]]  // per field: Zipf CDF over its values
        let firstOrder: [[Double]]  // per field, per value
        let latents: [[Double]]  // per field: (cardinality, latent)
        let seed: UInt64
        let generalizationScale: Double

        init(seed: UInt64) {
            self.seed = seed
            var rng = RNG(seed: seed, stream: 0x504C_414E)  // "PLAN"
            let centres = (0..<clusters).map { _ in (0..<latent).map { _ in rng.nextNormal() } }
            var cdf: [[Double]] = [], first: [[Double]] = [], lat: [[Double]] = []
            for f in 0..<fields {
                let n = cardinality(f)
                var total = 0.0
                let weights = (0..<n).map { 1 / pow(Double($0 + 1), 1.05) }
                cdf.append(
                    weights.map {
                        total += $0; return total
                    }.map { $0 / total })
                first.append((0..<n).map { _ in 0.3 * rng.nextNormal() })
                if generalizationFields.contains(f) {
                    var l = [Double](repeating: 0, count: n * latent)
                    for v in 0..<n {
                        let c = centres[rng.nextInt(below: clusters)]
                        for k in 0..<latent { l[v * latent + k] = c[k] + 0.3 * rng.nextNormal() }
                    }
                    lat.append(l)
                } else {
                    lat.append([])
                }
            }
            (cumulative, firstOrder, latents) = (cdf, first, lat)
            let pairs = generalizationFields.flatMap { a in generalizationFields.filter { $0 >= a + 2 } }.count
            generalizationScale = 1 / (Double(pairs) * Double(latent)).squareRoot() * 2
        }

        func sampleValue(field f: Int, _ rng: inout RNG) -> Int {
            let u = rng.nextUnitDouble(), c = cumulative[f]
            var (lo, hi) = (0, c.count - 1)
            while lo < hi { let mid = (lo + hi) / 2; if c[mid] < u { lo = mid + 1 } else { hi = mid } }
            return lo
        }

        func logit(values v: [Int], numeric x: [Double]) -> Double {
            var z = -1.2
            for f in 0..<fields { z += firstOrder[f][v[f]] }
            for a in generalizationFields {
                for b in generalizationFields where b >= a + 2 {
                    var dot = 0.0
                    for k in 0..<latent { dot += latents[a][v[a] * latent + k] * latents[b][v[b] * latent + k] }
                    z += generalizationScale * dot
                }
            }
            for a in memorizationPairs {
                switch mix(seed ^ mix(UInt64(a) << 40 ^ UInt64(v[a]) << 20 ^ UInt64(v[a + 1]))) % 4 {
                case 0: z += 1
                case 1: z -= 1
                default: break
                }
            }
            for j in 0..<numericFeatures { z += 0.4 * (j % 2 == 0 ? 1 : -1) * tanh(x[j]) }
            z += 0.5 * x[0] * x[1]
            return z
        }
    }
}
