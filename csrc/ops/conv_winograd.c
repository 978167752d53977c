/* conv_winograd.c — Winograd F(2x2, 3x3) for the U-Net's 3x3 "same"
 * convolutions (stride 1, padding 1) on CPUs with AVX-512.
 *
 * Why: a 2x2 block of outputs of a 3x3 convolution costs 36 multiply-adds
 * per input channel done directly, 16 in the Winograd domain (Lavin & Gray,
 * "Fast Algorithms for Convolutional Neural Networks", 2016): the direct
 * kernel already runs near the machine's peak, so fewer multiplies is what
 * is left. The transforms use only 0, ±1 and ±1/2; the results agree with
 * the direct convolution to float rounding (spec/conv_winograd_spec.lua).
 *
 *   weights  U = G g Gᵀ per (output, input) channel: 16 values, packed
 *            (O / 8, 16, C, 8).
 *   input    V = Bᵀ d B per 4x4 input patch d of a 2x2 output tile. A
 *            "tile vector" is 16 tiles of one image — along a tile row, or
 *            several short tile rows of a narrow plane — so each patch row
 *            is two plain loads and four lane permutations, no gathers.
 *   product  M[ξ] = U[ξ] V[ξ] for the 16 points ξ, a matrix product over
 *            the input channels: 8 outputs x 3 tile vectors of accumulators
 *            (ops/conv_tile.h).
 *   output   Y = Aᵀ M A (+ bias), interleaved back into output rows.
 *
 * A task takes a block of 3 tile vectors: it transforms their patches for
 * every input channel (kept in L2), then runs the products point by point
 * for a pass of up to 8 blocks of 8 output channels, and their output
 * transforms. Blocks are cut by shape alone
 * and each output is written by one block, so the result does not depend
 * on the thread count. */
#include "conv_direct.h"

#include "../core/vmath.h"

#include <stdatomic.h>
#include <string.h>

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define WINOGRAD_X86 1
#include "conv_tile.h"
#endif

#define WG_LANES 16
#define WG_POINTS 16  /* ξ: the 4x4 Winograd domain */
#define WG_OUT TILE_OUT /* output channels per product tile */
#define WG_VECS 3     /* tile vectors per block */
#define WG_MAX_C 512  /* a block's transformed input stays within L2 */
#define WG_MIN_C 8
#define WG_PASS_MIN_C 64 /* input channels from which a pass over the points takes several output blocks ... */
#define WG_PASS_BLOCKS 8 /* ... this many at most (M: 192 KiB) */
#define WG_PREFETCH_C 4 /* input channels ahead that input_transform fetches */
#define WG_MIN_O 8

static int winograd_mode = 1; /* 1: where it applies; 0: never (tests compare the paths) */

bool df_debug_conv_winograd(bool on) {
  winograd_mode = on ? 1 : 0;
  return df_vmath_level_get() == DF_VMATH_AVX512;
}

/* Which planes cut into tile vectors: W / 2 tiles per row, either a
 * multiple of 16 (one row per vector) or 4 or 8 (4 or 2 rows per vector),
 * and a whole number of vectors per image. */
bool conv_winograd_applies(const direct_geom *g) {
  if (!winograd_mode || df_vmath_level_get() != DF_VMATH_AVX512) return false;
  if (g->kh != 3 || g->kw != 3 || g->ph != 1 || g->pw != 1 || g->oh != g->h || g->ow != g->w) return false;
  /* with fewer than 8 input or output channels (a U-Net's first and last
   * convolutions) the transforms cost more than they save */
  if (g->h % 2 || g->w % 2 || g->c < WG_MIN_C || g->c > WG_MAX_C || g->o < WG_MIN_O) return false;
  int64_t tw = g->w / 2, th = g->h / 2;
  if (!(tw == 4 || tw == 8 || tw % WG_LANES == 0)) return false;
  return th * tw % WG_LANES == 0;
}

#ifdef WINOGRAD_X86

typedef struct {
  const direct_geom *g;
  const float *x, *upk, *bias; /* bias padded to a multiple of 8, or NULL */
  float *y;
  int64_t out_blocks, vecs_per_image, vecs, blocks;
  float *work;
  int64_t work_floats; /* per task: V (16, C, 48) then M (pass_blocks, 16, 8, 48) */
  int64_t v_point;     /* floats from one point's V (C, 48) to the next's */
  int64_t pass_blocks; /* output blocks per pass over the points */
  _Atomic int64_t next;
} wg_job;

#define TVL (WG_VECS * WG_LANES) /* tiles per block */

typedef struct {
  int64_t n, ty0, tx0; /* image, first tile row and column */
} tile_vec;

static tile_vec tile_vec_at(const wg_job *j, int64_t v) {
  int64_t tw = j->g->w / 2, vi = v % j->vecs_per_image;
  tile_vec t = {.n = v / j->vecs_per_image};
  if (tw >= WG_LANES) {
    t.ty0 = vi / (tw / WG_LANES);
    t.tx0 = vi % (tw / WG_LANES) * WG_LANES;
  } else {
    t.ty0 = vi * (WG_LANES / tw);
  }
  return t;
}

/* ---- transforms ------------------------------------------------------------ */

/* U = G g Gᵀ, G = [1 0 0; ½ ½ ½; ½ -½ ½; 0 0 1]; g read as w[o][c] or, for
 * the input gradient, as the flipped w[c][o] */
static void pack_weights(const direct_geom *g, const float *w, bool flip_transpose, int64_t out_blocks, float *upk) {
  memset(upk, 0, sizeof(float) * (size_t)(out_blocks * WG_POINTS * g->c * WG_OUT));
  for (int64_t o = 0; o < g->o; o++)
    for (int64_t c = 0; c < g->c; c++) {
      float k[3][3], gk[4][3], u[4][4];
      for (int t = 0; t < 9; t++)
        k[t / 3][t % 3] = flip_transpose ? w[(c * g->o + o) * 9 + (8 - t)] : w[(o * g->c + c) * 9 + t];
      for (int s = 0; s < 3; s++) {
        gk[0][s] = k[0][s];
        gk[1][s] = 0.5f * (k[0][s] + k[1][s] + k[2][s]);
        gk[2][s] = 0.5f * (k[0][s] - k[1][s] + k[2][s]);
        gk[3][s] = k[2][s];
      }
      for (int r = 0; r < 4; r++) {
        u[r][0] = gk[r][0];
        u[r][1] = 0.5f * (gk[r][0] + gk[r][1] + gk[r][2]);
        u[r][2] = 0.5f * (gk[r][0] - gk[r][1] + gk[r][2]);
        u[r][3] = gk[r][2];
      }
      for (int xi = 0; xi < WG_POINTS; xi++)
        upk[((o / WG_OUT * WG_POINTS + xi) * g->c + c) * WG_OUT + o % WG_OUT] = u[xi / 4][xi % 4];
    }
}

/* (a, b) as one vector; AVX-512F alone has no 8-float insert, so as doubles */
__attribute__((target("avx512f"), always_inline)) static inline __m512 join8(__m256 a, __m256 b) {
  return _mm512_castpd_ps(_mm512_insertf64x4(_mm512_castps_pd(_mm512_castps256_ps512(a)), _mm256_castps_pd(b), 1));
}

__attribute__((target("avx512f"), always_inline)) static inline __m256 upper8(__m512 v) {
  return _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(v), 1));
}

/* Patch row r of the 16 tiles as two vectors S = (lo, hi): 32 input values
 * in which tile l finds its middle pair at 2l, 2l + 1 (see input_transform) */
__attribute__((target("avx512f"), always_inline)) static inline void patch_row(const direct_geom *g, const float *xc,
                                                                               tile_vec t, int r, __m512 *lo,
                                                                               __m512 *hi, float *left,
                                                                               float *right) {
  int64_t tw = g->w / 2, H = g->h, W = g->w;
  *left = *right = 0.0f;
  if (tw >= WG_LANES) {
    int64_t iy = 2 * t.ty0 - 1 + r;
    if (iy < 0 || iy >= H) {
      *lo = *hi = _mm512_setzero_ps();
      return;
    }
    const float *row = xc + iy * W + 2 * t.tx0;
    *lo = _mm512_loadu_ps(row);
    *hi = _mm512_loadu_ps(row + WG_LANES);
    if (t.tx0 > 0) *left = row[-1];
    if (2 * t.tx0 + 2 * WG_LANES < W) *right = row[2 * WG_LANES];
  } else if (tw == 8) {
    int64_t iy = 2 * t.ty0 - 1 + r;
    *lo = iy >= 0 && iy < H ? _mm512_loadu_ps(xc + iy * W) : _mm512_setzero_ps();
    *hi = iy + 2 >= 0 && iy + 2 < H ? _mm512_loadu_ps(xc + (iy + 2) * W) : _mm512_setzero_ps();
  } else { /* tw == 4: four tile rows, 8 values each */
    __m256 q[4];
    for (int i = 0; i < 4; i++) {
      int64_t iy = 2 * t.ty0 - 1 + r + 2 * i;
      q[i] = iy >= 0 && iy < H ? _mm256_loadu_ps(xc + iy * W) : _mm256_setzero_ps();
    }
    *lo = join8(q[0], q[1]);
    *hi = join8(q[2], q[3]);
  }
}

/* Fetches the input rows that tile vector t reads in channel plane xc: each
 * channel's rows are in a page of their own (a 32 x 32 plane is 4 KiB), so
 * the hardware prefetchers, which stop at page boundaries, never get going,
 * and every channel would wait for L3. */
__attribute__((target("avx512f"), always_inline)) static inline void prefetch_patch(const direct_geom *g,
                                                                                    const float *xc, tile_vec t) {
  int64_t tw = g->w / 2, W = g->w, rows = tw >= WG_LANES ? 1 : WG_LANES / tw;
  int64_t y0 = 2 * t.ty0 - 1, y1 = 2 * (t.ty0 + rows); /* inclusive */
  int64_t x0 = 2 * t.tx0 - 1, x1 = tw >= WG_LANES ? 2 * (t.tx0 + WG_LANES) : W - 1;
  if (y0 < 0) y0 = 0;
  if (y1 > g->h - 1) y1 = g->h - 1;
  if (x0 < 0) x0 = 0;
  if (x1 > W - 1) x1 = W - 1;
  for (int64_t iy = y0; iy <= y1; iy++) {
    uintptr_t first = (uintptr_t)(xc + iy * W + x0) & ~(uintptr_t)63, last = (uintptr_t)(xc + iy * W + x1);
    for (uintptr_t p = first; p <= last; p += 64) _mm_prefetch((const char *)p, _MM_HINT_T0);
  }
}

/* V = Bᵀ d B, Bᵀ = [1 0 -1 0; 0 1 1 0; 0 -1 1 0; 0 1 0 -1], for the 16
 * tiles of t and every input channel, into V (16, C, TVL) with points
 * v_point floats apart, whose first column for these tiles V points at */
__attribute__((target("avx512f"))) static void input_transform(const wg_job *j, tile_vec t, float *V) {
  const direct_geom *g = j->g;
  int64_t tw = g->w / 2, seg = tw < WG_LANES ? tw : WG_LANES;
  __mmask16 keep_a = 0, keep_d = 0; /* lanes whose left / right neighbour is inside the segment */
  for (int l = 0; l < WG_LANES; l++) {
    if (l % seg != 0) keep_a |= (__mmask16)(1u << l);
    if (l % seg != seg - 1) keep_d |= (__mmask16)(1u << l);
  }
  const __m512i even = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
  const __m512i one = _mm512_set1_epi32(1), odd = _mm512_add_epi32(even, one);
  const __m512i before = _mm512_sub_epi32(even, one), after = _mm512_add_epi32(odd, one);
  for (int64_t c = 0; c < g->c; c++) {
    const float *xc = j->x + (t.n * g->c + c) * g->h * g->w;
    if (c + WG_PREFETCH_C < g->c) prefetch_patch(g, xc + WG_PREFETCH_C * g->h * g->w, t);
    __m512 z[4][4];
    for (int r = 0; r < 4; r++) {
      __m512 lo, hi;
      float left, right;
      patch_row(g, xc, t, r, &lo, &hi, &left, &right);
      __m512 a = _mm512_maskz_permutex2var_ps(keep_a, lo, before, hi);
      __m512 b = _mm512_permutex2var_ps(lo, even, hi), cc = _mm512_permutex2var_ps(lo, odd, hi);
      __m512 d = _mm512_maskz_permutex2var_ps(keep_d, lo, after, hi);
      if (tw >= WG_LANES) {
        a = _mm512_mask_mov_ps(a, 1, _mm512_set1_ps(left));
        d = _mm512_mask_mov_ps(d, (__mmask16)0x8000, _mm512_set1_ps(right));
      }
      z[r][0] = _mm512_sub_ps(a, cc);
      z[r][1] = _mm512_add_ps(b, cc);
      z[r][2] = _mm512_sub_ps(cc, b);
      z[r][3] = _mm512_sub_ps(b, d);
    }
    for (int s = 0; s < 4; s++) {
      float *v = V + c * TVL;
      _mm512_storeu_ps(v + (0 * 4 + s) * j->v_point, _mm512_sub_ps(z[0][s], z[2][s]));
      _mm512_storeu_ps(v + (1 * 4 + s) * j->v_point, _mm512_add_ps(z[1][s], z[2][s]));
      _mm512_storeu_ps(v + (2 * 4 + s) * j->v_point, _mm512_sub_ps(z[2][s], z[1][s]));
      _mm512_storeu_ps(v + (3 * 4 + s) * j->v_point, _mm512_sub_ps(z[1][s], z[3][s]));
    }
  }
}

/* Y = Aᵀ M A, Aᵀ = [1 1 1 0; 0 1 -1 -1], plus the bias, written as the
 * 2x2 outputs of the 16 tiles of t in output channel o. M: 16 vectors,
 * `stride` floats apart. */
__attribute__((target("avx512f"))) static void output_transform(const wg_job *j, tile_vec t, int64_t o,
                                                                  const float *M, int64_t stride, float bias) {
  const direct_geom *g = j->g;
  int64_t tw = g->w / 2, W = g->w;
  __m512 q[2][4];
  for (int s = 0; s < 4; s++) {
    __m512 m0 = _mm512_loadu_ps(M + (0 * 4 + s) * stride), m1 = _mm512_loadu_ps(M + (1 * 4 + s) * stride);
    __m512 m2 = _mm512_loadu_ps(M + (2 * 4 + s) * stride), m3 = _mm512_loadu_ps(M + (3 * 4 + s) * stride);
    q[0][s] = _mm512_add_ps(_mm512_add_ps(m0, m1), m2);
    q[1][s] = _mm512_sub_ps(_mm512_sub_ps(m1, m2), m3);
  }
  const __m512i lo_idx = _mm512_setr_epi32(0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6, 22, 7, 23);
  const __m512i hi_idx = _mm512_add_epi32(lo_idx, _mm512_set1_epi32(8));
  const __m512 b = _mm512_set1_ps(bias);
  float *yk = j->y + (t.n * g->o + o) * g->h * W;
  for (int a = 0; a < 2; a++) {
    __m512 y0 = _mm512_add_ps(_mm512_add_ps(_mm512_add_ps(q[a][0], q[a][1]), q[a][2]), b);
    __m512 y1 = _mm512_add_ps(_mm512_sub_ps(_mm512_sub_ps(q[a][1], q[a][2]), q[a][3]), b);
    __m512 lo = _mm512_permutex2var_ps(y0, lo_idx, y1), hi = _mm512_permutex2var_ps(y0, hi_idx, y1);
    int64_t oy = 2 * t.ty0 + a;
    if (tw >= WG_LANES) {
      _mm512_storeu_ps(yk + oy * W + 2 * t.tx0, lo);
      _mm512_storeu_ps(yk + oy * W + 2 * t.tx0 + WG_LANES, hi);
    } else if (tw == 8) {
      _mm512_storeu_ps(yk + oy * W, lo);
      _mm512_storeu_ps(yk + (oy + 2) * W, hi);
    } else {
      _mm256_storeu_ps(yk + oy * W, _mm512_castps512_ps256(lo));
      _mm256_storeu_ps(yk + (oy + 2) * W, upper8(lo));
      _mm256_storeu_ps(yk + (oy + 4) * W, _mm512_castps512_ps256(hi));
      _mm256_storeu_ps(yk + (oy + 6) * W, upper8(hi));
    }
  }
}

__attribute__((target("avx512f"))) static void wg_block(const wg_job *j, int64_t block, float *V, float *M) {
  const direct_geom *g = j->g;
  int64_t v0 = block * WG_VECS, R = j->vecs - v0 < WG_VECS ? j->vecs - v0 : WG_VECS;
  tile_vec tv[WG_VECS];
  for (int64_t r = 0; r < R; r++) {
    tv[r] = tile_vec_at(j, v0 + r);
    input_transform(j, tv[r], V + r * WG_LANES);
  }
  /* point by point, a pass of output blocks over each: the point's V
   * (C x 48 floats) stays in L1 while the blocks' U stream past, where
   * output block by output block it would come from L2 each time. With few
   * channels V is small and a pass of one block keeps M in L1 instead. */
  for (int64_t ob0 = 0; ob0 < j->out_blocks; ob0 += j->pass_blocks) {
    int64_t ob1 = ob0 + j->pass_blocks < j->out_blocks ? ob0 + j->pass_blocks : j->out_blocks;
    for (int xi = 0; xi < WG_POINTS; xi++) {
      const float *Vx = V + xi * j->v_point;
      for (int64_t ob = ob0; ob < ob1; ob++) {
        const float *U = j->upk + (ob * WG_POINTS + xi) * g->c * WG_OUT;
        float *Mx = M + ((ob - ob0) * WG_POINTS + xi) * WG_OUT * TVL;
        if (R == 3) tile_product(U, Vx, TVL, g->c, NULL, Mx, TVL, WG_OUT, 3);
        else if (R == 2) tile_product(U, Vx, TVL, g->c, NULL, Mx, TVL, WG_OUT, 2);
        else tile_product(U, Vx, TVL, g->c, NULL, Mx, TVL, WG_OUT, 1);
      }
    }
    for (int64_t ob = ob0; ob < ob1; ob++) {
      int64_t live = g->o - ob * WG_OUT < WG_OUT ? g->o - ob * WG_OUT : WG_OUT;
      const float *Mb = M + (ob - ob0) * WG_POINTS * WG_OUT * TVL;
      for (int64_t i = 0; i < live; i++)
        for (int64_t r = 0; r < R; r++)
          output_transform(j, tv[r], ob * WG_OUT + i, Mb + i * TVL + r * WG_LANES, WG_OUT * TVL,
                           j->bias ? j->bias[ob * WG_OUT + i] : 0.0f);
    }
  }
}

/* one task per thread, each with its own workspace, taking blocks in turn */
static void wg_task(int64_t task, void *arg) {
  wg_job *j = arg;
  float *V = j->work + task * j->work_floats, *M = V + WG_POINTS * j->v_point;
  for (int64_t b; (b = atomic_fetch_add(&j->next, 1)) < j->blocks;) wg_block(j, b, V, M);
}

#endif /* WINOGRAD_X86 */

df_status conv_winograd_forward(const direct_geom *g, const float *x, const float *w, bool flip_transpose,
                                const float *bias, float *y) {
#ifdef WINOGRAD_X86
  int64_t out_blocks = (g->o + WG_OUT - 1) / WG_OUT, vecs_per_image = g->h / 2 * (g->w / 2) / WG_LANES;
  int64_t vecs = g->n * vecs_per_image, blocks = (vecs + WG_VECS - 1) / WG_VECS;
  int64_t tasks = df_get_num_threads() < blocks ? df_get_num_threads() : blocks;
  /* a cache line between points: C x 48 floats is a multiple of 4 KiB for
   * C = 64, 128, ..., and the 16 points' rows would all fall in one L1 set */
  int64_t v_point = g->c * TVL + WG_LANES;
  int64_t pass_blocks = g->c < WG_PASS_MIN_C ? 1 : out_blocks < WG_PASS_BLOCKS ? out_blocks : WG_PASS_BLOCKS;
  int64_t work_floats = WG_POINTS * v_point + pass_blocks * WG_POINTS * WG_OUT * TVL + WG_LANES; /* + a cache line between tasks */
  int64_t upk_floats = out_blocks * WG_POINTS * g->c * WG_OUT, bias_floats = bias ? out_blocks * WG_OUT : 0;
  /* from the buffer cache: the same sizes come back every step, and fresh
   * pages would cost a page fault each */
  size_t capacity;
  float *mem = df_buffer_get(sizeof(float) * (size_t)(upk_floats + bias_floats + tasks * work_floats), false, &capacity);
  if (!mem) return df_error(DF_ENOMEM, "conv2d: out of memory for the Winograd workspace");
  wg_job j = {.g = g, .x = x, .upk = mem, .y = y, .out_blocks = out_blocks, .vecs_per_image = vecs_per_image,
              .vecs = vecs, .blocks = blocks, .work = mem + upk_floats + bias_floats, .work_floats = work_floats,
              .v_point = v_point, .pass_blocks = pass_blocks};
  atomic_init(&j.next, 0);
  pack_weights(g, w, flip_transpose, out_blocks, mem);
  if (bias) {
    float *bp = mem + upk_floats;
    for (int64_t i = 0; i < bias_floats; i++) bp[i] = i < g->o ? bias[i] : 0.0f;
    j.bias = bp;
  }
  df_parallel_for(tasks, wg_task, &j);
  df_buffer_put(mem, capacity);
  return DF_OK;
#else
  (void)g, (void)x, (void)w, (void)flip_transpose, (void)bias, (void)y;
  return df_error(DF_EINVAL, "conv2d: the Winograd kernels need an x86-64 CPU with AVX-512");
#endif
}
