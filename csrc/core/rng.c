/* rng.c — counter-based random numbers (Philox4x32-10, Salmon et al. 2011).
 *
 * A generator is (seed, offset). A request for n numbers uses counter blocks
 * offset .. offset + ceil(n / 4) - 1, each giving four 32-bit words, and then
 * advances offset past them. Element i uses block offset + i / 4 only, so
 * any split of the work over threads gives the same numbers. */
#include <math.h>

#include "../df.h"
#include "iter.h"

static df_generator default_gen = {.seed = 0x853c49e6748fea9bULL, .offset = 0};

df_generator *df_default_generator(void) { return &default_gen; }

void df_generator_seed(df_generator *g, uint64_t seed) {
  g->seed = seed;
  g->offset = 0;
}

static inline uint32_t mulhilo(uint32_t a, uint32_t b, uint32_t *hi) {
  uint64_t p = (uint64_t)a * b;
  *hi = (uint32_t)(p >> 32);
  return (uint32_t)p;
}

/* Ten Philox rounds on counter block `ctr` with the 64-bit key `key`. */
static void philox(uint64_t ctr, uint64_t key, uint32_t out[4]) {
  uint32_t c0 = (uint32_t)ctr, c1 = (uint32_t)(ctr >> 32), c2 = 0, c3 = 0;
  uint32_t k0 = (uint32_t)key, k1 = (uint32_t)(key >> 32);
  for (int round = 0; round < 10; round++) {
    uint32_t hi0, hi1;
    uint32_t lo0 = mulhilo(0xD2511F53u, c0, &hi0);
    uint32_t lo1 = mulhilo(0xCD9E8D57u, c2, &hi1);
    c0 = hi1 ^ c1 ^ k0;
    c1 = lo1;
    c2 = hi0 ^ c3 ^ k1;
    c3 = lo0;
    k0 += 0x9E3779B9u;
    k1 += 0xBB67AE85u;
  }
  out[0] = c0;
  out[1] = c1;
  out[2] = c2;
  out[3] = c3;
}

/* [0, 1) with 24 bits, and (0, 1] for logarithms */
static inline float u01(uint32_t x) { return (float)(x >> 8) * 0x1p-24f; }
static inline float u01_open0(uint32_t x) { return (float)((x >> 8) + 1) * 0x1p-24f; }

enum { DIST_UNIFORM, DIST_NORMAL, DIST_INT };

typedef struct {
  float *data; /* contiguous destination */
  int64_t numel, blocks_per_task;
  uint64_t seed, offset;
  int dist;
  float a, b; /* lo/hi or mean/std */
  uint64_t range;
  int64_t lo;
} rng_job;

static void rng_task(int64_t task, void *arg) {
  const rng_job *j = arg;
  int64_t nblocks = (j->numel + 3) / 4;
  int64_t end = (task + 1) * j->blocks_per_task;
  if (end > nblocks) end = nblocks;
  for (int64_t blk = task * j->blocks_per_task; blk < end; blk++) {
    uint32_t w[4];
    float v[4];
    philox(j->offset + (uint64_t)blk, j->seed, w);
    switch (j->dist) {
    case DIST_UNIFORM:
      for (int k = 0; k < 4; k++) {
        v[k] = j->a + (j->b - j->a) * u01(w[k]);
        if (v[k] >= j->b && j->b > j->a) v[k] = nextafterf(j->b, j->a); /* rounding must not reach hi */
      }
      break;
    case DIST_NORMAL: /* Box-Muller on two pairs */
      for (int k = 0; k < 4; k += 2) {
        float radius = sqrtf(-2.0f * logf(u01_open0(w[k])));
        float angle = 6.283185307179586f * u01(w[k + 1]);
        v[k] = j->a + j->b * radius * cosf(angle);
        v[k + 1] = j->a + j->b * radius * sinf(angle);
      }
      break;
    default: /* integers: floor(word * range / 2^32); bias below range / 2^32 <= 2^-7 */
      for (int k = 0; k < 4; k++) v[k] = (float)(j->lo + (int64_t)(((uint64_t)w[k] * j->range) >> 32));
      break;
    }
    int64_t base = blk * 4;
    for (int k = 0; k < 4 && base + k < j->numel; k++) j->data[base + k] = v[k];
  }
}

static df_status fill_random(const char *name, df_tensor *t, df_generator *g, rng_job j) {
  df_status st = df_check_inplace(name, t);
  if (st) return st;
  if (!g) g = &default_gen;
  /* draw into a contiguous buffer so element order, not memory layout, picks the numbers */
  df_tensor *dst = t;
  df_tensor_bump_version(t);
  if (!df_tensor_is_contiguous(t) && (st = df_tensor_empty(&dst, t->ndim, t->size))) return st;
  j.data = df_tensor_data(dst);
  j.numel = df_tensor_numel(t);
  j.seed = g->seed;
  j.offset = g->offset;
  int64_t nblocks = (j.numel + 3) / 4, threads = df_get_num_threads();
  j.blocks_per_task = (nblocks + threads - 1) / threads;
  if (j.blocks_per_task < DF_ITER_GRAIN / 4) j.blocks_per_task = DF_ITER_GRAIN / 4;
  df_parallel_for((nblocks + j.blocks_per_task - 1) / j.blocks_per_task, rng_task, &j);
  g->offset += (uint64_t)nblocks;
  if (dst != t) {
    st = df_tensor_copy_(t, dst);
    df_tensor_release(dst);
    return st;
  }
  return DF_OK;
}

df_status df_rand_(df_tensor *t, df_generator *g, float lo, float hi) {
  if (!(lo <= hi) || isinf(lo) || isinf(hi)) return df_error(DF_EINVAL, "rand: expected finite lo <= hi, got %g and %g", lo, hi);
  return fill_random("rand", t, g, (rng_job){.dist = DIST_UNIFORM, .a = lo, .b = hi});
}

df_status df_randn_(df_tensor *t, df_generator *g, float mean, float std) {
  if (!isfinite(mean) || !(std >= 0) || isinf(std))
    return df_error(DF_EINVAL, "randn: expected a finite mean and std >= 0, got %g and %g", mean, std);
  return fill_random("randn", t, g, (rng_job){.dist = DIST_NORMAL, .a = mean, .b = std});
}

df_status df_randint_(df_tensor *t, df_generator *g, int64_t lo, int64_t hi) {
  if (hi <= lo) return df_error(DF_EINVAL, "randint: expected low < high, got %lld and %lld", (long long)lo, (long long)hi);
  if (hi - lo > (1LL << 24) || lo < -(1LL << 24) || hi > (1LL << 24))
    return df_error(DF_EINVAL, "randint: bounds must lie within +-2^24 (exact in float32), got [%lld, %lld)", (long long)lo,
                    (long long)hi);
  return fill_random("randint", t, g, (rng_job){.dist = DIST_INT, .lo = lo, .range = (uint64_t)(hi - lo)});
}
