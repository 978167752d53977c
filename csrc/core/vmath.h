/* vmath.h — vectorised exp and the logistic function for the elementwise
 * kernels, in AVX-512F and AVX2+FMA forms that the caller picks at run time
 * (df_vmath_level_get, which ops/nn.c also asks for its AVX-512 row
 * loops); no -m flags needed, so the library still runs on any x86-64, and
 * elsewhere the callers keep their scalar loops. Internal to the core.
 *
 * exp(x) = 2^n exp(r): n = round(x / ln2), r = x - n ln2 in [-ln2/2, ln2/2]
 * (ln2 in two parts, so that with FMA the first subtraction is exact), exp(r)
 * by a degree-6 polynomial whose coefficients were fitted for the least
 * maximum relative error on that interval (3.8e-9 in exact arithmetic with
 * these float coefficients; about 1 ulp in float). 2^n is applied as two
 * exact powers of two, so the result rounds once even when it is subnormal;
 * x is first clamped to [-110, 89], which takes exp to exactly 0 below the
 * float range and to inf above it (NaN passes the clamp unchanged). Both
 * forms do the same operations in the same order, so they give the same
 * bits. */
#ifndef DF_VMATH_H
#define DF_VMATH_H

#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#if (defined(__x86_64__) || defined(__i386__)) && (defined(__GNUC__) || defined(__clang__))
#define DF_VMATH_X86 1
#include <immintrin.h>
#else
#define DF_VMATH_X86 0
#endif

typedef enum { DF_VMATH_SCALAR, DF_VMATH_AVX2, DF_VMATH_AVX512 } df_vmath_level;

/* The widest form this CPU runs. The environment variable DIFFUSION_SIMD
 * ("scalar" or "avx2") caps it, so tests can check the narrower forms on a
 * machine that has AVX-512; it is read once. */
static inline df_vmath_level df_vmath_level_get(void) {
  static atomic_int cached = -1;
  int level = atomic_load_explicit(&cached, memory_order_relaxed);
  if (level >= 0) return (df_vmath_level)level;
  level = DF_VMATH_SCALAR;
#if DF_VMATH_X86
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx512f")) level = DF_VMATH_AVX512;
  else if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) level = DF_VMATH_AVX2;
#endif
  const char *cap = getenv("DIFFUSION_SIMD");
  if (cap && strcmp(cap, "scalar") == 0) level = DF_VMATH_SCALAR;
  else if (cap && strcmp(cap, "avx2") == 0 && level > DF_VMATH_AVX2) level = DF_VMATH_AVX2;
  atomic_store_explicit(&cached, level, memory_order_relaxed);
  return (df_vmath_level)level;
}

#define DF_EXP_LO -110.0f /* exp(-110) is below half the least subnormal: 0 */
#define DF_EXP_HI 89.0f   /* exp(89) is above FLT_MAX: inf */
#define DF_LOG2E 0x1.715476p+0f
#define DF_LN2_HI 0x1.62e430p-1f /* ln2 = DF_LN2_HI + DF_LN2_LO */
#define DF_LN2_LO -0x1.05c610p-29f
#define DF_EXP_C2 0x1.fffffcp-2f
#define DF_EXP_C3 0x1.555492p-3f
#define DF_EXP_C4 0x1.5558f2p-5f
#define DF_EXP_C5 0x1.1239d4p-7f
#define DF_EXP_C6 0x1.6a2436p-10f

#if DF_VMATH_X86

/* ---- AVX-512F ------------------------------------------------------------ */

__attribute__((target("avx512f"))) static inline __m512 df_exp512(__m512 x) {
  /* max/min return their second operand when either is NaN: keep x there */
  x = _mm512_min_ps(_mm512_set1_ps(DF_EXP_HI), _mm512_max_ps(_mm512_set1_ps(DF_EXP_LO), x));
  __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(DF_LOG2E)), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(DF_LN2_HI), x);
  r = _mm512_fnmadd_ps(n, _mm512_set1_ps(DF_LN2_LO), r);
  __m512 p = _mm512_fmadd_ps(_mm512_set1_ps(DF_EXP_C6), r, _mm512_set1_ps(DF_EXP_C5));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(DF_EXP_C4));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(DF_EXP_C3));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(DF_EXP_C2));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
  /* 2^n = 2^n1 2^n2, n1 = floor(n / 2): both in [-80, 64], normal floats */
  __m512i ni = _mm512_cvtps_epi32(n);
  __m512i n1 = _mm512_srai_epi32(ni, 1), n2 = _mm512_sub_epi32(ni, n1);
  __m512i bias = _mm512_set1_epi32(127);
  __m512 s1 = _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_add_epi32(n1, bias), 23));
  __m512 s2 = _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_add_epi32(n2, bias), 23));
  return _mm512_mul_ps(_mm512_mul_ps(p, s1), s2);
}

/* s = 1 / (1 + exp(-x)) and c = 1 - s, each to a few ulp: from
 * t = exp(-|x|) in (0, 1], so nothing overflows and 1 - s is never formed
 * by cancellation. s is exactly 0 or 1 for large |x| and at ±inf; NaN gives
 * NaN in both. */
__attribute__((target("avx512f"))) static inline void df_logistic512(__m512 x, __m512 *s, __m512 *c) {
  __m512 neg_abs = _mm512_castsi512_ps(_mm512_or_si512(_mm512_castps_si512(x), _mm512_set1_epi32(INT32_MIN)));
  __m512 t = df_exp512(neg_abs);
  __m512 q = _mm512_div_ps(_mm512_set1_ps(1.0f), _mm512_add_ps(_mm512_set1_ps(1.0f), t)); /* 1 / (1 + t) */
  __m512 a = _mm512_mul_ps(t, q);                                                           /* t / (1 + t) */
  __mmask16 pos = _mm512_cmp_ps_mask(x, _mm512_setzero_ps(), _CMP_GE_OQ);
  *s = _mm512_mask_blend_ps(pos, a, q);
  *c = _mm512_mask_blend_ps(pos, q, a);
}

/* ---- AVX2 + FMA: the same operations, 8 lanes --------------------------- */

__attribute__((target("avx2,fma"))) static inline __m256 df_exp256(__m256 x) {
  x = _mm256_min_ps(_mm256_set1_ps(DF_EXP_HI), _mm256_max_ps(_mm256_set1_ps(DF_EXP_LO), x));
  __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(DF_LOG2E)), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(DF_LN2_HI), x);
  r = _mm256_fnmadd_ps(n, _mm256_set1_ps(DF_LN2_LO), r);
  __m256 p = _mm256_fmadd_ps(_mm256_set1_ps(DF_EXP_C6), r, _mm256_set1_ps(DF_EXP_C5));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(DF_EXP_C4));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(DF_EXP_C3));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(DF_EXP_C2));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f));
  __m256i ni = _mm256_cvtps_epi32(n);
  __m256i n1 = _mm256_srai_epi32(ni, 1), n2 = _mm256_sub_epi32(ni, n1);
  __m256i bias = _mm256_set1_epi32(127);
  __m256 s1 = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_add_epi32(n1, bias), 23));
  __m256 s2 = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_add_epi32(n2, bias), 23));
  return _mm256_mul_ps(_mm256_mul_ps(p, s1), s2);
}

__attribute__((target("avx2,fma"))) static inline void df_logistic256(__m256 x, __m256 *s, __m256 *c) {
  __m256 neg_abs = _mm256_or_ps(x, _mm256_set1_ps(-0.0f));
  __m256 t = df_exp256(neg_abs);
  __m256 q = _mm256_div_ps(_mm256_set1_ps(1.0f), _mm256_add_ps(_mm256_set1_ps(1.0f), t));
  __m256 a = _mm256_mul_ps(t, q);
  __m256 pos = _mm256_cmp_ps(x, _mm256_setzero_ps(), _CMP_GE_OQ);
  *s = _mm256_blendv_ps(a, q, pos);
  *c = _mm256_blendv_ps(q, a, pos);
}

#endif /* DF_VMATH_X86 */

#endif
