#include "tether_process.h"

#if defined(__GLIBC__)
#include <malloc.h>
void tether_keep_heap_memory(size_t mmap_threshold, size_t trim_threshold) {
    mallopt(M_MMAP_THRESHOLD, (int)mmap_threshold);
    mallopt(M_TRIM_THRESHOLD, (int)trim_threshold);
}
#else
void tether_keep_heap_memory(size_t mmap_threshold, size_t trim_threshold) { (void)mmap_threshold; (void)trim_threshold; }
#endif

uint64_t tether_shared_load(const uint64_t *counter) { return __atomic_load_n(counter, __ATOMIC_ACQUIRE); }
void tether_shared_store(uint64_t *counter, uint64_t value) { __atomic_store_n(counter, value, __ATOMIC_RELEASE); }

void tether_pending_add(long *pending, long n) { __atomic_fetch_add(pending, n, __ATOMIC_SEQ_CST); }
long tether_pending_load(const long *pending) { return __atomic_load_n(pending, __ATOMIC_ACQUIRE); }
void tether_pending_release(void *data, void *hint) {
    (void)data;
    __atomic_fetch_sub((long *)hint, 1, __ATOMIC_RELEASE);
}

#if defined(__linux__)
#include <signal.h>
#include <sys/prctl.h>
int tether_die_with_parent(void) { return prctl(PR_SET_PDEATHSIG, SIGKILL, 0, 0, 0); }
#else
int tether_die_with_parent(void) { return -1; }
#endif
