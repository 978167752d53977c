/* rng.c — counter-based random numbers (Philox4x32-10, Salmon et al. 2011).
 *
 * A generator is (seed, offset). A request for n numbers uses counter blocks
 * offset .. offset + ceil(n / 4) - 1, each giving four 32-bit words, and then
 * advances offset past them. Element i uses block offset + i / 4 only, so
 * any split of the work over threads gives the same numbers. */
#include <math.h>

#include "../df.h"
#include "iter.h"
#include "vmath.h"

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

#if DF_VMATH_X86
/* The same ten rounds on 16 consecutive counter blocks at once, one block a
 * lane: out[4 * b + k] = word k of block ctr + b, bitwise as philox(). */
__attribute__((target("avx512f"))) static inline __m512i mulhi_epu32(__m512i a, __m512i b) {
  __m512i even = _mm512_srli_epi64(_mm512_mul_epu32(a, b), 32);
  __m512i odd = _mm512_mul_epu32(_mm512_srli_epi64(a, 32), _mm512_srli_epi64(b, 32));
  return _mm512_mask_blend_epi32(0xAAAA, even, odd);
}

__attribute__((target("avx512f"))) static void philox16(uint64_t ctr, uint64_t key, uint32_t out[64]) {
  const __m512i lane = _mm512_set_epi32(15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0);
  /* 64-bit counters ctr + b: low words add with a carry into the high words */
  __m512i lo = _mm512_add_epi32(_mm512_set1_epi32((int)(uint32_t)ctr), lane);
  __mmask16 carry = _mm512_cmplt_epu32_mask(lo, lane);
  __m512i hi = _mm512_mask_add_epi32(_mm512_set1_epi32((int)(uint32_t)(ctr >> 32)), carry,
                                     _mm512_set1_epi32((int)(uint32_t)(ctr >> 32)), _mm512_set1_epi32(1));
  __m512i c0 = lo, c1 = hi, c2 = _mm512_setzero_si512(), c3 = _mm512_setzero_si512();
  const __m512i m0 = _mm512_set1_epi32((int)0xD2511F53u), m1 = _mm512_set1_epi32((int)0xCD9E8D57u);
  uint32_t k0 = (uint32_t)key, k1 = (uint32_t)(key >> 32);
  for (int round = 0; round < 10; round++) {
    __m512i hi0 = mulhi_epu32(m0, c0), lo0 = _mm512_mullo_epi32(m0, c0);
    __m512i hi1 = mulhi_epu32(m1, c2), lo1 = _mm512_mullo_epi32(m1, c2);
    c0 = _mm512_xor_si512(_mm512_xor_si512(hi1, c1), _mm512_set1_epi32((int)k0));
    c1 = lo1;
    c2 = _mm512_xor_si512(_mm512_xor_si512(hi0, c3), _mm512_set1_epi32((int)k1));
    c3 = lo0;
    k0 += 0x9E3779B9u;
    k1 += 0xBB67AE85u;
  }
  uint32_t w[4][16];
  _mm512_storeu_si512(w[0], c0);
  _mm512_storeu_si512(w[1], c1);
  _mm512_storeu_si512(w[2], c2);
  _mm512_storeu_si512(w[3], c3);
  for (int b = 0; b < 16; b++)
    for (int k = 0; k < 4; k++) out[4 * b + k] = w[k][b];
}
#endif

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
  uint32_t words[64]; /* 16 blocks' words, made at once where the CPU can */
  int64_t words_from = -1;
#if DF_VMATH_X86
  bool wide = df_vmath_level_get() == DF_VMATH_AVX512;
#endif
  for (int64_t blk = task * j->blocks_per_task; blk < end; blk++) {
    uint32_t w[4];
    float v[4];
#if DF_VMATH_X86
    if (wide && (words_from < 0 || blk >= words_from + 16)) {
      words_from = blk;
      philox16(j->offset + (uint64_t)blk, j->seed, words);
    }
    if (wide) memcpy(w, words + 4 * (blk - words_from), sizeof w);
    else
#endif
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

/* blocks of 16 counters' uniform [0, 1) draws at once: (w >> 8) 2^-24, exactly u01 */
#if DF_VMATH_X86
__attribute__((target("avx512f"))) static void uniform64(uint64_t ctr, uint64_t key, float out[64]) {
  uint32_t words[64];
  philox16(ctr, key, words);
  for (int k = 0; k < 64; k += 16) {
    __m512i w = _mm512_srli_epi32(_mm512_loadu_si512(words + k), 8);
    _mm512_storeu_ps(out + k, _mm512_mul_ps(_mm512_cvtepi32_ps(w), _mm512_set1_ps(0x1p-24f)));
  }
}
#endif

void df_uniform_at(float *dst, int64_t first, int64_t count, uint64_t seed, uint64_t offset) {
#if DF_VMATH_X86
  bool wide = df_vmath_level_get() == DF_VMATH_AVX512;
#endif
  int64_t i = first, end = first + count;
  while (i < end) {
    float v[64];
    int64_t blk = i / 4, from = blk * 4, made = 4;
#if DF_VMATH_X86
    if (wide) {
      uniform64(offset + (uint64_t)blk, seed, v);
      made = 64;
    } else
#endif
    {
      uint32_t w[4];
      philox(offset + (uint64_t)blk, seed, w);
      for (int k = 0; k < 4; k++) v[k] = u01(w[k]);
    }
    int64_t stop = from + made < end ? from + made : end;
    for (; i < stop; i++) dst[i - first] = v[i - from];
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
