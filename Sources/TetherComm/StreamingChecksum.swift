import CXXHash

/// XXH3-64 taken piece by piece; the same value as `Ring.checksum` of the pieces joined.
final class StreamingChecksum {
    private let state: OpaquePointer

    init() {
        guard let state = XXH3_createState() else { fatalError("XXH3_createState: out of memory") }
        self.state = state
    }

    deinit { XXH3_freeState(state) }

    func reset() { XXH3_64bits_reset(state) }

    func update(_ p: UnsafeRawPointer, _ count: Int) {
        #if arch(x86_64)
            XXH3_64bits_update_dispatch(state, p, count)
        #else
            XXH3_64bits_update(state, p, count)
        #endif
    }

    func digest() -> UInt64 { XXH3_64bits_digest(state) }
}
