// The process's compute threads: one pool that every parallel kernel and every split GEMM shares.
//
// OpenBLAS runs single-threaded inside it. Its own pthread server would otherwise keep a second set
// of threads on the same cores, spinning in sched_yield between GEMMs while ours ran im2col or pooling
// (15% of a two-thread CNN step; docs/ARCHITECTURE.md).
//
// One job at a time: the caller publishes (fn, context, tasks), then a new `job` word, and takes tasks
// itself; workers spin briefly for the next job, then sleep on a condition variable. Tasks are
// claimed by a shared counter, so which thread runs which task varies; a kernel whose result must not
// depend on that writes disjoint outputs per task (or per-task partial sums, added in task order).
// A job started from inside a task runs inline in that task's thread (with its worker index); one
// started while another thread's job runs, inline in its caller as worker 0.
#include "tether_kernels.h"
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdlib.h>

#if defined(__x86_64__)
#define CPU_RELAX() __builtin_ia32_pause()
#else
#define CPU_RELAX() ((void)0)
#endif

enum { MAX_THREADS = 256, WORKER_SPINS = 1 << 14, CALLER_SPINS = 1 << 12 };

static struct {
    pthread_mutex_t lock;
    pthread_cond_t wake;
    _Atomic int threads;               // taking part in a job, counting the caller, by default
    int started;                       // workers created
    // The current job: its number times 512, plus how many workers take part in it (worker i does
    // when i < that count). One word, so a worker never pairs a job with another job's count.
    _Atomic unsigned long job;
    tether_pool_task fn;
    void *context;
    long tasks;
    _Atomic long next;  // the next unclaimed task
    _Atomic int busy;   // workers still in the current job
    _Atomic int active; // a job is running
} pool = {PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, 1, 0};

static _Thread_local long in_task_of = -1;  // the worker index while running a task, else -1

static void take_tasks(long worker) {
    in_task_of = worker;
    for (long t; (t = atomic_fetch_add_explicit(&pool.next, 1, memory_order_relaxed)) < pool.tasks;)
        pool.fn(pool.context, t, worker);
    in_task_of = -1;
}

// A worker's start: its index and the job word when it was made (a job after that one is its first).
typedef struct {
    long index;
    unsigned long seen;
} worker_start;

static void *worker_main(void *arg) {
    worker_start start = *(worker_start *)arg;
    free(arg);
    long index = start.index;
    unsigned long seen = start.seen;
    for (;;) {
        unsigned long now;
        for (int spins = 0; (now = atomic_load_explicit(&pool.job, memory_order_acquire)) == seen;) {
            if (++spins < WORKER_SPINS) {
                CPU_RELAX();
                continue;
            }
            pthread_mutex_lock(&pool.lock);
            while (atomic_load_explicit(&pool.job, memory_order_acquire) == seen)
                pthread_cond_wait(&pool.wake, &pool.lock);
            pthread_mutex_unlock(&pool.lock);
        }
        seen = now;
        if (index >= (long)(now % 512)) continue;  // not taking part in this job
        take_tasks(index + 1);
        atomic_fetch_sub_explicit(&pool.busy, 1, memory_order_release);
    }
    return NULL;
}

static _Thread_local int threads_here;  // this thread's own count (tether_pool_use_threads_here), or 0

// Grows the pool to threads - 1 workers (fewer if the system refuses threads); returns the size it has.
static int grow(int threads) {
    if (threads < 1) threads = 1;
    if (threads > MAX_THREADS) threads = MAX_THREADS;
    pthread_mutex_lock(&pool.lock);
    while (pool.started < threads - 1) {
        pthread_t id;
        worker_start *start = malloc(sizeof *start);
        if (!start) break;
        // read under the lock that publishing a job takes: no job can start between this and the worker
        *start = (worker_start){pool.started, atomic_load(&pool.job)};
        if (pthread_create(&id, NULL, worker_main, start) != 0) {
            free(start);
            break;
        }
        pthread_detach(id);
        pool.started++;
    }
    int size = pool.started + 1 < threads ? pool.started + 1 : threads;
    pthread_mutex_unlock(&pool.lock);
    return size;
}

int tether_pool_set_threads(int threads) {
    int size = grow(threads);
    atomic_store(&pool.threads, size);
    return size;
}

int tether_pool_use_threads_here(int threads) {
    int before = threads_here;
    threads_here = threads > 0 ? grow(threads) : 0;
    return before;
}

int tether_pool_threads(void) { return threads_here > 0 ? threads_here : atomic_load(&pool.threads); }

int tether_pool_in_task(void) { return in_task_of >= 0; }

void tether_pool_run(long tasks, tether_pool_task fn, void *context) {
    int expected = 0, workers = tether_pool_threads() - 1;
    if (tasks <= 1 || workers < 1 || in_task_of >= 0 ||
        !atomic_compare_exchange_strong_explicit(&pool.active, &expected, 1, memory_order_acquire, memory_order_relaxed)) {
        long worker = in_task_of >= 0 ? in_task_of : 0;
        for (long t = 0; t < tasks; t++) fn(context, t, worker);
        return;
    }
    pool.fn = fn;
    pool.context = context;
    pool.tasks = tasks;
    atomic_store_explicit(&pool.next, 0, memory_order_relaxed);
    atomic_store_explicit(&pool.busy, workers, memory_order_relaxed);
    pthread_mutex_lock(&pool.lock);
    unsigned long number = atomic_load_explicit(&pool.job, memory_order_relaxed) / 512 + 1;
    atomic_store_explicit(&pool.job, number * 512 + (unsigned long)workers, memory_order_release);
    pthread_cond_broadcast(&pool.wake);
    pthread_mutex_unlock(&pool.lock);
    take_tasks(0);
    for (int spins = 0; atomic_load_explicit(&pool.busy, memory_order_acquire) != 0;) {
        if (++spins < CALLER_SPINS) CPU_RELAX();
        else sched_yield();  // a worker was descheduled (more threads than cores)
    }
    atomic_store_explicit(&pool.active, 0, memory_order_release);
}
