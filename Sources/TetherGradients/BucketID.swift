/// The bucket number each all-reduce of a step carries in its chunk headers beside the step, so that a
/// neighbour in another collective is named in the error. One namespace, told apart by the high bits:
/// dense gradient buckets are numbered from 0 in the order backward forms them (as they are, narrowed,
/// or PowerSGD's P factors with the rest); everything else sets a bit above them.
public enum BucketID {
    /// PowerSGD's Q factors of dense bucket `bucket`.
    public static func powerSGDQ(_ bucket: UInt32) -> UInt32 { 1 << 24 | bucket }
    /// Sparse table `table`'s row count, summed to choose between an all-gather and a dense all-reduce.
    public static func sparseRowCount(table: Int) -> UInt32 { 1 << 20 | UInt32(table) }
    /// Sparse table `table` summed as a dense all-reduce.
    public static func sparseDense(table: Int) -> UInt32 { 1 << 21 | UInt32(table) }
    /// The held-out loss and its count at an epoch's end.
    public static let evaluationLoss: UInt32 = 1 << 22
}
