// Process and memory helpers Swift cannot express (variadic prctl, mallopt, C11 atomics on shared
// memory): not kernels, so apart from CTetherKernels.
#ifndef TETHER_PROCESS_H
#define TETHER_PROCESS_H
#include <stddef.h>
#include <stdint.h>

/// Raises glibc's mmap threshold and trim limit so that repeated large allocations (libzmq's
/// per-message buffers) reuse heap memory instead of fresh zero-filled mappings. Process-wide.
void tether_keep_heap_memory(size_t mmap_threshold, size_t trim_threshold);

/// A counter in memory shared between processes (a shared-memory lane's slots taken): read with
/// acquire, written with release ordering.
uint64_t tether_shared_load(const uint64_t *counter);
void tether_shared_store(uint64_t *counter, uint64_t value);

/// A count of buffers lent to another thread (libzmq's zero-copy sends): add before lending; the
/// borrower calls tether_pending_release (a zmq_free_fn) with the counter as its hint when done.
void tether_pending_add(long *pending, long n);
long tether_pending_load(const long *pending);
void tether_pending_release(void *data, void *hint);

/// Linux: asks the kernel to SIGKILL this process when its parent dies (prctl is variadic, which Swift
/// cannot call). Returns 0 on success, -1 elsewhere.
int tether_die_with_parent(void);

/// Starts `path` with `argv` and `envp` (NULL-terminated), standard output and error on `out_fd` and
/// `err_fd` (inherited when -1), in `folder` (this process's when NULL), with every other descriptor
/// closed, no signal blocked and every signal at its default; the child's pid in `pid`. Returns 0, or
/// an errno value. (Foundation's Process.run reads past a buffer while it looks for descriptors to
/// close: swift-corelibs-foundation#5472.)
int tether_spawn(const char *path, char *const argv[], char *const envp[], int out_fd, int err_fd, const char *folder, int *pid);

#endif
