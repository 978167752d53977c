/* threads.c — the library's one thread pool.
 *
 * df_parallel_for hands out task indices [0, ntasks) to the workers and the
 * calling thread. Workers sleep on a condition variable between calls.
 * OpenBLAS is kept single-threaded: df_gemm (ops/gemm.c) splits products over
 * this pool instead, because OpenBLAS's own workers spin in sched_yield after
 * each call and stole the cores from ours.
 *
 * The caller never waits for a worker that has not started: a worker joins
 * a job through one atomic word (the job's generation, whether it is still
 * open, and how many workers are inside), and once the caller has run out
 * of tasks it closes the job and waits only for the workers inside. On a
 * shared machine a worker's core can be taken for a few milliseconds; the
 * caller then does the whole loop itself instead of waiting for it, loop
 * after loop. */
#include <pthread.h>
#include <stdatomic.h>
#include <unistd.h>

#include <cblas.h>

#include "../df.h"

#define MAX_THREADS 256

/* the entry word: generation << ENTRY_GEN_SHIFT | ENTRY_OPEN | workers inside */
#define ENTRY_INSIDE ((uint64_t)0xffff)
#define ENTRY_OPEN ((uint64_t)1 << 16)
#define ENTRY_GEN_SHIFT 17

typedef struct {
  pthread_mutex_t lock;
  pthread_cond_t wake, done;
  pthread_t workers[MAX_THREADS];
  int nworkers;       /* started worker threads */
  int nthreads;       /* threads used per call, caller included */
  _Atomic uint64_t generation; /* bumped for each job (read unlocked by spinning workers) */
  _Atomic uint64_t entry;      /* the current job's generation, open flag and workers inside */
  /* the current job */
  void (*fn)(int64_t, void *);
  void *ctx;
  int64_t ntasks;
  atomic_llong next_task;
} pool_t;

static pool_t pool = {
    .lock = PTHREAD_MUTEX_INITIALIZER,
    .wake = PTHREAD_COND_INITIALIZER,
    .done = PTHREAD_COND_INITIALIZER,
};
static pthread_mutex_t call_lock = PTHREAD_MUTEX_INITIALIZER; /* one job at a time */
static _Thread_local bool inside_parallel;
static bool initialised;

static void run_tasks(void) {
  inside_parallel = true;
  for (;;) {
    int64_t task = atomic_fetch_add(&pool.next_task, 1);
    if (task >= pool.ntasks) break;
    pool.fn(task, pool.ctx);
  }
  inside_parallel = false;
}

/* A worker that just finished a job spins a little before it sleeps, and so
 * does the caller waiting for the workers: a U-Net step is thousands of
 * short parallel loops, and a futex sleep and wake-up each time cost more
 * than some of the loops. */
#define SPIN_ROUNDS 20000

static inline void cpu_relax(void) {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#endif
}

/* Joins job `gen` if it is still open; false when it has closed or moved on. */
static bool join_job(uint64_t gen) {
  uint64_t e = atomic_load(&pool.entry);
  for (;;) {
    if (e >> ENTRY_GEN_SHIFT != gen || !(e & ENTRY_OPEN)) return false;
    if (atomic_compare_exchange_weak(&pool.entry, &e, e + 1)) return true;
  }
}

static void leave_job(void) {
  uint64_t before = atomic_fetch_sub(&pool.entry, 1);
  if (!(before & ENTRY_OPEN) && (before & ENTRY_INSIDE) == 1) { /* the last one out of a closed job */
    pthread_mutex_lock(&pool.lock);
    pthread_cond_signal(&pool.done);
    pthread_mutex_unlock(&pool.lock);
  }
}

static void *worker_main(void *arg) {
  int id = (int)(intptr_t)arg;
  uint64_t seen = 0;
  for (;;) {
    for (int i = 0; i < SPIN_ROUNDS && atomic_load_explicit(&pool.generation, memory_order_acquire) == seen; i++)
      cpu_relax();
    pthread_mutex_lock(&pool.lock);
    while (atomic_load(&pool.generation) == seen || id >= pool.nthreads - 1) pthread_cond_wait(&pool.wake, &pool.lock);
    seen = atomic_load(&pool.generation);
    pthread_mutex_unlock(&pool.lock);
    if (join_job(seen)) {
      run_tasks();
      leave_job();
    }
  }
  return NULL;
}

static int default_threads(void) {
  long n = sysconf(_SC_NPROCESSORS_ONLN);
  if (n < 1) n = 1;
  return n > MAX_THREADS ? MAX_THREADS : (int)n;
}

static void ensure_init(void) {
  if (initialised) return;
  initialised = true;
  pool.nthreads = default_threads();
  openblas_set_num_threads(1);
}

/* Starts workers up to n - 1; on failure runs with fewer threads. */
static void grow_workers(int n) {
  while (pool.nworkers < n - 1) {
    if (pthread_create(&pool.workers[pool.nworkers], NULL, worker_main,
                       (void *)(intptr_t)pool.nworkers) != 0)
      break;
    pool.nworkers++;
  }
}

df_status df_set_num_threads(int n) {
  if (n < 1 || n > MAX_THREADS)
    return df_error(DF_EINVAL, "set_num_threads: expected 1 to %d threads, got %d", MAX_THREADS, n);
  pthread_mutex_lock(&call_lock);
  ensure_init();
  pthread_mutex_lock(&pool.lock);
  pool.nthreads = n;
  pthread_mutex_unlock(&pool.lock);
  pthread_mutex_unlock(&call_lock);
  return DF_OK;
}

int64_t df_task_split(int64_t items, int64_t cost, int64_t *per_task) {
  int64_t tasks = (int64_t)df_get_num_threads() * DF_TASKS_PER_THREAD;
  int64_t per = (items + tasks - 1) / tasks;
  int64_t min_items = cost > 0 ? (DF_PARALLEL_GRAIN + cost - 1) / cost : items;
  if (per < min_items) per = min_items;
  if (per < 1) per = 1;
  *per_task = per;
  return items > 0 ? (items + per - 1) / per : 0;
}

int df_get_num_threads(void) {
  ensure_init();
  return pool.nthreads;
}

void df_parallel_for(int64_t ntasks, void (*fn)(int64_t, void *), void *ctx) {
  if (ntasks <= 0) return;
  ensure_init();
  if (ntasks == 1 || pool.nthreads == 1 || inside_parallel || pthread_mutex_trylock(&call_lock) != 0) {
    for (int64_t t = 0; t < ntasks; t++) fn(t, ctx);
    return;
  }
  grow_workers(pool.nthreads);
  pthread_mutex_lock(&pool.lock);
  pool.fn = fn;
  pool.ctx = ctx;
  pool.ntasks = ntasks;
  atomic_store(&pool.next_task, 0);
  uint64_t gen = atomic_load(&pool.generation) + 1;
  atomic_store(&pool.entry, gen << ENTRY_GEN_SHIFT | ENTRY_OPEN); /* no worker is inside: the last job closed empty */
  atomic_store(&pool.generation, gen);
  pthread_cond_broadcast(&pool.wake);
  pthread_mutex_unlock(&pool.lock);

  run_tasks();

  /* every task is taken: close the job to latecomers, wait for those inside */
  atomic_fetch_and(&pool.entry, ~ENTRY_OPEN);
  for (int i = 0; i < SPIN_ROUNDS && (atomic_load_explicit(&pool.entry, memory_order_acquire) & ENTRY_INSIDE); i++)
    cpu_relax();
  pthread_mutex_lock(&pool.lock);
  while (atomic_load(&pool.entry) & ENTRY_INSIDE) pthread_cond_wait(&pool.done, &pool.lock);
  pthread_mutex_unlock(&pool.lock);
  pthread_mutex_unlock(&call_lock);
}
