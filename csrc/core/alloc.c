/* alloc.c — every allocation of the core goes through here, so that the
 * bytes held by tensors can be reported to Lua's GC and a test can make the
 * n-th allocation fail to prove that every error path is clean. */
#include <stdatomic.h>
#include <stdlib.h>

#include "../df.h"

static atomic_long fail_countdown; /* 0: off */

void df_alloc_fail_at(long n) { atomic_store(&fail_countdown, n > 0 ? n : 0); }

long df_alloc_fail_pending(void) { return atomic_load(&fail_countdown); }

static bool injected_failure(void) {
  long n = atomic_load(&fail_countdown);
  while (n > 0) {
    if (atomic_compare_exchange_weak(&fail_countdown, &n, n - 1)) return n == 1;
  }
  return false;
}

void *df_malloc(size_t bytes) {
  if (injected_failure()) return NULL;
  return malloc(bytes ? bytes : 1);
}

void *df_calloc(size_t n, size_t size) {
  if (injected_failure()) return NULL;
  return calloc(n ? n : 1, size ? size : 1);
}

void df_free(void *p) { free(p); }

/* ---- the buffer cache ---------------------------------------------------
 * Large tensor buffers are kept after release and handed out again for a
 * request of about the same size. Fresh pages cost a page fault each (on
 * some machines more than the arithmetic done on them), and training and
 * sampling loops ask for the same sizes every step. A request takes the
 * smallest cached buffer that fits it (at most a quarter larger); what the
 * cache may keep is bounded by budget() below; df_buffer_cache_clear
 * empties it. Off under AddressSanitizer, which must see frees. */
#include <pthread.h>
#include <string.h>

#define CACHE_MIN_BYTES ((size_t)256 << 10)
#define CACHE_SLOTS 2048

#if defined(__SANITIZE_ADDRESS__)
#define CACHE_ENABLED 0
#else
#define CACHE_ENABLED 1
#endif

static struct {
  pthread_mutex_t lock;
  void *ptr[CACHE_SLOTS];
  size_t bytes[CACHE_SLOTS];
  int count;
  size_t total;             /* bytes in the cache */
  size_t held, peak_held;   /* bytes of cacheable size handed out and not back yet; their peak */
} cache = {.lock = PTHREAD_MUTEX_INITIALIZER};

/* What the buffers handed out and the cache may hold together: half as
 * much again as the most ever handed out at once, and at least 1 GiB. A
 * training step's buffers come back from the cache the next step; the
 * half covers the mix of sizes changing over a step (the sizes live at the
 * forward's peak are not those at the backward's), and the floor a
 * sampling loop, whose few live buffers change size layer by layer. So a
 * steady loop takes no fresh pages, while a large step's resident memory
 * stays near the peak it needs: a buffer beyond that is given back (the
 * oldest first) rather than kept. */
#define BUDGET_FLOOR ((size_t)1 << 30)
static size_t budget(void) {
  size_t b = cache.peak_held + cache.peak_held / 2;
  return b > BUDGET_FLOOR ? b : BUDGET_FLOOR;
}

static void hold(size_t bytes) {
  cache.held += bytes;
  if (cache.held > cache.peak_held) cache.peak_held = cache.held;
}

static void evict_oldest(void) {
  free(cache.ptr[0]);
  cache.total -= cache.bytes[0];
  cache.count--;
  memmove(cache.ptr, cache.ptr + 1, sizeof(void *) * (size_t)cache.count);
  memmove(cache.bytes, cache.bytes + 1, sizeof(size_t) * (size_t)cache.count);
}

/* make room for `bytes` more (a new buffer, or one entering the cache) */
static void evict_for(size_t bytes) {
  while (cache.count > 0 && cache.total + bytes + cache.held > budget()) evict_oldest();
}

void *df_buffer_get(size_t bytes, bool zero, size_t *capacity) {
  *capacity = bytes;
  if (CACHE_ENABLED && bytes >= CACHE_MIN_BYTES) {
    void *hit = NULL;
    pthread_mutex_lock(&cache.lock);
    /* the smallest that fits, and at most a quarter more than asked (so
     * memory isn't wasted): a larger one stays for the request it fits */
    int best = -1;
    for (int i = cache.count - 1; i >= 0; i--)
      if (cache.bytes[i] >= bytes && cache.bytes[i] - bytes <= bytes / 4 &&
          (best < 0 || cache.bytes[i] < cache.bytes[best]))
        best = i;
    if (best >= 0) {
      hit = cache.ptr[best];
      *capacity = cache.bytes[best];
      cache.total -= cache.bytes[best];
      cache.count--;
      /* keep the rest in age order: the oldest go first */
      memmove(cache.ptr + best, cache.ptr + best + 1, sizeof(void *) * (size_t)(cache.count - best));
      memmove(cache.bytes + best, cache.bytes + best + 1, sizeof(size_t) * (size_t)(cache.count - best));
      hold(*capacity);
    } else {
      evict_for(bytes);
      hold(bytes);
    }
    pthread_mutex_unlock(&cache.lock);
    if (hit) {
      if (injected_failure()) { /* the hook sees every allocation, cached or not */
        df_buffer_put(hit, *capacity);
        return NULL;
      }
      if (zero) memset(hit, 0, bytes);
      return hit;
    }
  }
  void *fresh = zero ? df_calloc(bytes, 1) : df_malloc(bytes);
  if (!fresh && CACHE_ENABLED && bytes >= CACHE_MIN_BYTES) {
    pthread_mutex_lock(&cache.lock);
    cache.held -= bytes;
    pthread_mutex_unlock(&cache.lock);
  }
  return fresh;
}

void df_buffer_put(void *p, size_t capacity) {
  if (!p) return;
  if (CACHE_ENABLED && capacity >= CACHE_MIN_BYTES) {
    pthread_mutex_lock(&cache.lock);
    cache.held -= capacity;
    if (cache.count == CACHE_SLOTS) evict_oldest();
    evict_for(capacity);
    if (cache.total + capacity + cache.held <= budget()) {
      cache.ptr[cache.count] = p;
      cache.bytes[cache.count] = capacity;
      cache.count++;
      cache.total += capacity;
      p = NULL;
    }
    pthread_mutex_unlock(&cache.lock);
  }
  free(p);
}

size_t df_buffer_cache_clear(void) {
  pthread_mutex_lock(&cache.lock);
  size_t freed = cache.total;
  for (int i = 0; i < cache.count; i++) free(cache.ptr[i]);
  cache.count = 0;
  cache.total = 0;
  pthread_mutex_unlock(&cache.lock);
  return freed;
}

size_t df_buffer_cache_bytes(void) {
  pthread_mutex_lock(&cache.lock);
  size_t total = cache.total;
  pthread_mutex_unlock(&cache.lock);
  return total;
}
