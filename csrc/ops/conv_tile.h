/* conv_tile.h — the register tile both ops/conv_winograd.c (its product per
 * Winograd point) and ops/conv_direct.c (1x1 convolutions) run: a matrix
 * product M (8, 16 R) = U (C, 8)ᵀ V (C, 16 R) over C, with 8 x R vectors of
 * 16 accumulators (R = 1 .. 3, 24 zmm at most) — per step of C, R vector
 * loads, 8 broadcasts, 8 R FMAs. V's rows and M's rows are ldv and ldm
 * floats apart, so V can be a slab of an image (1x1: channels x positions)
 * and M a slab of the output. Only for files built with AVX-512 in reach. */
#ifndef DF_CONV_TILE_H
#define DF_CONV_TILE_H

#include <immintrin.h>
#include <stdint.h>

#define TILE_OUT 8    /* rows of M: output channels */
#define TILE_LANES 16 /* floats per vector */

/* The accumulators are named variables, not an array: GCC keeps an array of
 * 24 vectors on the stack, with a store per FMA. */
#define TILE_ROW(M) M(0) M(1) M(2) M(3) M(4) M(5) M(6) M(7)
#define TILE_DECL(o)                                                      \
  __m512 a##o##_0 = bias ? _mm512_set1_ps(bias[o]) : _mm512_setzero_ps(), \
         a##o##_1 = a##o##_0, a##o##_2 = a##o##_0;
#define TILE_FMA(o)                                          \
  {                                                          \
    __m512 wv = _mm512_set1_ps(u[o]);                        \
    a##o##_0 = _mm512_fmadd_ps(wv, v0, a##o##_0);            \
    if (R > 1) a##o##_1 = _mm512_fmadd_ps(wv, v1, a##o##_1); \
    if (R > 2) a##o##_2 = _mm512_fmadd_ps(wv, v2, a##o##_2); \
  }
#define TILE_STORE(o)                                                         \
  if (o < rows) {                                                             \
    _mm512_storeu_ps(M + o * ldm, a##o##_0);                                  \
    if (R > 1) _mm512_storeu_ps(M + o * ldm + TILE_LANES, a##o##_1);          \
    if (R > 2) _mm512_storeu_ps(M + o * ldm + 2 * TILE_LANES, a##o##_2);      \
  }

/* M = bias + Uᵀ V: U is C rows of 8 (packed), bias 8 values or NULL; only
 * M's first `rows` rows are written */
__attribute__((target("avx512f"), always_inline)) static inline void tile_product(const float *U, const float *V,
                                                                                  int64_t ldv, int64_t C,
                                                                                  const float *bias, float *M,
                                                                                  int64_t ldm, int rows, const int R) {
  TILE_ROW(TILE_DECL)
  for (int64_t c = 0; c < C; c++) {
    const float *u = U + c * TILE_OUT, *v = V + c * ldv;
    __m512 v0 = _mm512_loadu_ps(v), v1 = v0, v2 = v0;
    if (R > 1) v1 = _mm512_loadu_ps(v + TILE_LANES);
    if (R > 2) v2 = _mm512_loadu_ps(v + 2 * TILE_LANES);
    TILE_ROW(TILE_FMA)
  }
  TILE_ROW(TILE_STORE)
}

#endif
