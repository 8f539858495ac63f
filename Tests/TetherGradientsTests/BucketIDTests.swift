import Testing
@testable import TetherGradients

@Suite struct BucketIDTests {
    /// Every kind of collective keeps to its own numbers: dense buckets (0..<2^20), their PowerSGD Q
    /// factors, each sparse table's row count and dense sum, and the evaluation's loss, at the edges of
    /// each range.
    @Test func noTwoCollectivesOfAStepShareANumber() {
        let dense: [UInt32] = [0, 1, 2, (1 << 20) - 1], tables = [0, 1, 7, (1 << 20) - 1]
        let kinds: [[UInt32]] = [
            dense, dense.map(BucketID.powerSGDQ), tables.map { BucketID.sparseRowCount(table: $0) },
            tables.map { BucketID.sparseDense(table: $0) }, [BucketID.evaluationLoss]
        ]
        for (i, a) in kinds.enumerated() {
            #expect(Set(a).count == a.count, "kind \(i) repeats a number")
            for (j, b) in kinds.enumerated() where j > i {
                #expect(Set(a).isDisjoint(with: b), "kinds \(i) and \(j) share \(Set(a).intersection(b).sorted())")
            }
        }
    }
}
