import TetherTensor

/// A layer-private buffer that grows to the largest size asked of it and is reused across steps,
/// so that big per-step work areas (im2col columns) are not reallocated and re-faulted every step.
final class Scratch<T: Scalar> {
    private(set) var pointer: UnsafeMutablePointer<T> = .allocate(capacity: 0)
    private var capacity = 0

    /// At least `count` elements; contents are unspecified.
    func reserve(_ count: Int) -> UnsafeMutablePointer<T> {
        if count > capacity {
            pointer.deallocate()
            pointer = .allocate(capacity: count)
            capacity = count
        }
        return pointer
    }

    deinit { pointer.deallocate() }
}
