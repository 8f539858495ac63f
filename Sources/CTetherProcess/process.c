#define _GNU_SOURCE
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

#include <signal.h>
#include <errno.h>
#include <spawn.h>
int tether_spawn(const char *path, char *const argv[], char *const envp[], int out_fd, int err_fd, const char *folder, int *pid) {
    posix_spawn_file_actions_t actions;
    posix_spawnattr_t attributes;
    int rc = posix_spawn_file_actions_init(&actions);
    if (rc != 0) return rc;
    rc = posix_spawnattr_init(&attributes);
    if (rc != 0) { posix_spawn_file_actions_destroy(&actions); return rc; }
    if (rc == 0 && out_fd >= 0) rc = posix_spawn_file_actions_adddup2(&actions, out_fd, 1);
    if (rc == 0 && err_fd >= 0) rc = posix_spawn_file_actions_adddup2(&actions, err_fd, 2);
#if defined(__GLIBC__)
    if (rc == 0 && folder != NULL) rc = posix_spawn_file_actions_addchdir_np(&actions, folder);
    if (rc == 0) rc = posix_spawn_file_actions_addclosefrom_np(&actions, 3);
#else
    if (folder != NULL) rc = ENOSYS;
#endif
    sigset_t none, all;
    sigemptyset(&none);
    sigfillset(&all);
    if (rc == 0) rc = posix_spawnattr_setsigmask(&attributes, &none);
    if (rc == 0) rc = posix_spawnattr_setsigdefault(&attributes, &all);
    if (rc == 0) rc = posix_spawnattr_setflags(&attributes, POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF);
    pid_t child = 0;
    if (rc == 0) rc = posix_spawn(&child, path, &actions, &attributes, argv, envp);
    if (rc == 0) *pid = child;
    posix_spawnattr_destroy(&attributes);
    posix_spawn_file_actions_destroy(&actions);
    return rc;
}
