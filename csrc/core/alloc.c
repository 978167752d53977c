/* alloc.c — every allocation of the core goes through here, so that the
 * bytes held by tensors can be reported to Lua's GC and a test can make the
 * n-th allocation fail to prove that every error path is clean. */
#include <stdatomic.h>
#include <stdlib.h>

#include "../df.h"

static atomic_long fail_countdown; /* 0: off */

void df_alloc_fail_at(long n) { atomic_store(&fail_countdown, n > 0 ? n : 0); }

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
