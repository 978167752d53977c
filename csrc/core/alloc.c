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
 * sampling loops ask for the same sizes every step. Bounded by 1 GiB or
 * the peak of live tensor bytes, whichever is more (so a step's activations
 * fit and the peak RSS stays about that peak); emptied by
 * df_buffer_cache_clear. Off under AddressSanitizer, which must see frees. */
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
  size_t total, limit;
} cache = {.lock = PTHREAD_MUTEX_INITIALIZER, .limit = (size_t)1 << 30};

void *df_buffer_get(size_t bytes, bool zero, size_t *capacity) {
  *capacity = bytes;
  if (CACHE_ENABLED && bytes >= CACHE_MIN_BYTES) {
    void *hit = NULL;
    pthread_mutex_lock(&cache.lock);
    for (int i = cache.count - 1; i >= 0; i--) {
      /* accept up to a quarter more than asked, so memory isn't wasted */
      if (cache.bytes[i] >= bytes && cache.bytes[i] - bytes <= bytes / 4) {
        hit = cache.ptr[i];
        *capacity = cache.bytes[i];
        cache.total -= cache.bytes[i];
        cache.count--;
        cache.ptr[i] = cache.ptr[cache.count];
        cache.bytes[i] = cache.bytes[cache.count];
        break;
      }
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
  return zero ? df_calloc(bytes, 1) : df_malloc(bytes);
}

void df_buffer_put(void *p, size_t capacity) {
  if (!p) return;
  if (CACHE_ENABLED && capacity >= CACHE_MIN_BYTES) {
    pthread_mutex_lock(&cache.lock);
    /* make room: drop the oldest entries */
    /* as much as was ever live at once: a step's buffers all come back next step */
    size_t peak = df_peak_live_bytes(), limit = peak > cache.limit ? peak : cache.limit;
    while (cache.count > 0 && (cache.count == CACHE_SLOTS || cache.total + capacity > limit)) {
      free(cache.ptr[0]);
      cache.total -= cache.bytes[0];
      cache.count--;
      memmove(cache.ptr, cache.ptr + 1, sizeof(void *) * (size_t)cache.count);
      memmove(cache.bytes, cache.bytes + 1, sizeof(size_t) * (size_t)cache.count);
    }
    if (capacity <= limit) {
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
