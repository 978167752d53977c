/* conv_direct.c — direct AVX-512 convolution for stride 1, dilation 1,
 * one group, 1x1 and 3x3 kernels: every convolution of the U-Net but its
 * two downsampling ones.
 *
 * Why not im2col + GEMM here: at the U-Net's sizes (32-128 channels, 8x8 to
 * 32x32 planes) the copies around the product — the column matrix, BLAS's
 * own packing of it, col2im, reordering the chunk's output — cost as much
 * as the multiply-adds. These kernels read the image in place instead.
 *
 * An output plane is cut into vectors of 16 positions along a row; a plane
 * narrower than 16 packs several rows into one vector (see map_init). For
 * each vector and each kernel tap (ki, kj) a table holds where the 16 input
 * values start in the input plane and which lanes are inside it (the others
 * read as zero: the padding). The table is built once per call and serves
 * every image and channel.
 *
 *   forward      8 output channels x 3 vectors of accumulators (24 zmm);
 *                per input channel and tap: 3 masked loads, 8 broadcast
 *                weights, 24 FMAs. Weights are packed (O/8, C, taps, 8).
 *   grad input   the same kernel over dy with the weights transposed and
 *                flipped (stride 1: dx = conv(dy, flip(w)ᵀ), padding k-1-p).
 *   grad weight  vectors over 32 output channels x 12 (channel, tap)
 *                pairs, from dy transposed and x zero-padded per chunk of
 *                images (see "grad weight" below).
 * Two cases go elsewhere: 3x3 "same" convolutions on planes that cut into
 * Winograd tiles (ops/conv_winograd.c, forward and input gradient), and 1x1
 * convolutions on planes of whole vectors, a plain matrix product per image
 * through the register tile of ops/conv_tile.h (see "1x1" below).
 * Tasks cut work by shape only, so results are bitwise the same whatever
 * the thread count. */
#include "conv_direct.h"

#include "../core/vmath.h"

#include <stdatomic.h>
#include <string.h>

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define DIRECT_X86 1
#include "conv_tile.h"
#endif

#define LANES 16
#define OUT_BLOCK TILE_OUT /* output channels per forward tile (conv_tile.h) */
#define VEC_BLOCK 3  /* vectors per forward tile */
#ifndef IN_BLOCK
#define IN_BLOCK 144 /* (input channel, tap) pairs per forward pass over the plane: 16 channels of 3x3 */
#endif
#define MAX_IN_BLOCK 64 /* ... and at most this many channels (1x1: their rows for a tile stay in L1) */
#define OB_GROUP 4      /* output blocks of 8 per forward task */
#define DW_MIN_OUT 8    /* weight gradients with fewer output channels take im2col + GEMM */

static int direct_mode = 1; /* 1: where it applies, 0: never (tests compare both paths) */

/* AVX-512F on this CPU, unless DIFFUSION_SIMD narrows the vector code (core/vmath.h) */
static bool cpu_has_avx512(void) { return df_vmath_level_get() == DF_VMATH_AVX512; }

bool df_debug_conv_direct(bool on) {
  direct_mode = on ? 1 : 0;
  return cpu_has_avx512();
}

bool conv_direct_applies(int64_t kh, int64_t kw, const int stride[2], const int padding[2], const int dilation[2],
                         int groups) {
  if (!direct_mode || !cpu_has_avx512()) return false;
  if (stride[0] != 1 || stride[1] != 1 || dilation[0] != 1 || dilation[1] != 1 || groups != 1) return false;
  if (!((kh == 1 && kw == 1) || (kh == 3 && kw == 3))) return false;
  return padding[0] >= 0 && padding[0] <= kh - 1 && padding[1] >= 0 && padding[1] <= kw - 1;
}

/* The weight gradient's tiles are 32 output channels wide: a U-Net's last
 * convolution (one output channel) would fill them with one, so it goes
 * through im2col + GEMM. */
bool conv_direct_grad_weight_applies(const direct_geom *g) { return g->o >= DW_MIN_OUT; }

#ifdef DIRECT_X86 /* the rest needs the vector unit; elsewhere the two entry points refuse */

/* ---- the plane map: where each vector's taps read ---------------------- */

typedef struct {
  int64_t off;   /* element offset of lane 0 in the input plane (may be -p: lane masked) */
  uint16_t mask; /* lanes inside the plane */
} tap_t;

typedef struct {
  int64_t ih, iw, oh, ow, kh, kw, ph, pw;
  int64_t segs, vecs, taps; /* vectors per row, per plane; kh * kw */
  tap_t *in;                /* (vecs, taps) */
  tap_t *out;               /* (vecs): where the vector lands in the output plane */
} plane_map;

static uint16_t lane_range(int64_t lo, int64_t hi) { /* lanes lo .. hi - 1 */
  if (lo < 0) lo = 0;
  if (hi > LANES) hi = LANES;
  if (hi <= lo) return 0;
  uint32_t upto = hi == LANES ? 0xFFFFu : ((1u << hi) - 1u);
  return (uint16_t)(upto & ~((1u << lo) - 1u));
}

/* Vectors run along output rows, 16 positions each. A plane narrower than
 * 16 whose rows tile 16 lanes (ow = 1, 2, 4, 8) and whose input rows are as
 * wide (iw = ow: stride 1, "same" padding) packs several rows into one
 * vector instead: positions v * 16 + l in raster order, which are again 16
 * consecutive input values for every tap, so one masked load still reads a
 * tap. An 8x8 plane is then 4 full vectors rather than 8 half-empty ones. */
static df_status map_init(plane_map *m, int64_t ih, int64_t iw, int64_t oh, int64_t ow, int64_t kh, int64_t kw,
                          int64_t ph, int64_t pw) {
  *m = (plane_map){.ih = ih, .iw = iw, .oh = oh, .ow = ow, .kh = kh, .kw = kw, .ph = ph, .pw = pw};
  bool packed = ow < LANES && LANES % ow == 0 && iw == ow;
  m->segs = packed ? 1 : (ow + LANES - 1) / LANES;
  m->vecs = packed ? (oh * ow + LANES - 1) / LANES : oh * m->segs;
  m->taps = kh * kw;
  m->in = df_malloc(sizeof(tap_t) * (size_t)(m->vecs * m->taps + m->vecs));
  if (!m->in) return df_error(DF_ENOMEM, "conv2d: out of memory for the convolution's plane map");
  m->out = m->in + m->vecs * m->taps;
  for (int64_t v = 0; v < m->vecs; v++) {
    /* lane 0's output position; lane l sits l positions further in raster order */
    int64_t p0 = packed ? v * LANES : (v / m->segs) * ow + (v % m->segs) * LANES;
    int64_t y0 = p0 / ow, x0 = p0 % ow;
    int64_t live = packed ? oh * ow - p0 : ow - x0;
    m->out[v] = (tap_t){.off = p0, .mask = lane_range(0, live)};
    for (int64_t ki = 0; ki < kh; ki++)
      for (int64_t kj = 0; kj < kw; kj++) {
        uint16_t mask = 0;
        for (int64_t l = 0; l < LANES; l++) {
          if (!(m->out[v].mask >> l & 1)) continue;
          int64_t y = packed ? (p0 + l) / ow : y0, x = packed ? (p0 + l) % ow : x0 + l;
          int64_t iy = y + ki - ph, ix = x + kj - pw;
          if (iy >= 0 && iy < ih && ix >= 0 && ix < iw) mask |= (uint16_t)(1u << l);
        }
        m->in[v * m->taps + ki * kw + kj] = mask ? (tap_t){(y0 + ki - ph) * iw + x0 + kj - pw, mask} : (tap_t){0, 0};
      }
  }
  return DF_OK;
}

/* lane 0 of a tap may sit before its plane (off = -1, lane masked): the
 * address is formed as an integer so no out-of-object pointer exists in C */
#define TAP_ADDR(base, off) ((const float *)((uintptr_t)(base) + (uintptr_t)((off) * (int64_t)sizeof(float))))

/* ---- forward ------------------------------------------------------------- */

typedef struct {
  const plane_map *m;
  const float *x;   /* (N, C, ih, iw) */
  const float *wpk; /* (blocks, C, taps, OUT_BLOCK) */
  const float *bias; /* (blocks * OUT_BLOCK) padded, or NULL */
  float *y;          /* (N, O, oh, ow) */
  int64_t c, o, blocks, vec_parts;
} fwd_job;

/* named accumulators, as in conv_tile.h (whose TILE_ROW and TILE_FMA this
 * tile shares); they start from the bias or the sums so far, and the loads
 * and stores are masked */
#define ACC_DECL(o)                                                                                   \
  __m512 a##o##_0 = start(bias, y, o, live_o, out_plane, &out[0], c0), a##o##_1 = a##o##_0, a##o##_2 = a##o##_0; \
  if (R > 1) a##o##_1 = start(bias, y, o, live_o, out_plane, &out[1], c0);                               \
  if (R > 2) a##o##_2 = start(bias, y, o, live_o, out_plane, &out[2], c0);
#define ACC_STORE(o)                                                                             \
  if (o < live_o) {                                                                              \
    _mm512_mask_storeu_ps(y + o * out_plane + out[0].off, out[0].mask, a##o##_0);                \
    if (R > 1) _mm512_mask_storeu_ps(y + o * out_plane + out[1].off, out[1].mask, a##o##_1);     \
    if (R > 2) _mm512_mask_storeu_ps(y + o * out_plane + out[2].off, out[2].mask, a##o##_2);     \
  }

/* an accumulator's start: the bias (or 0) before the first block of input
 * channels, then what the earlier blocks left in y */
__attribute__((target("avx512f"), always_inline)) static inline __m512 start(const float *bias, const float *y, int o,
                                                                             int64_t live_o, int64_t out_plane,
                                                                             const tap_t *out, int64_t c0) {
  if (c0 > 0) return o < live_o ? _mm512_maskz_loadu_ps(out->mask, y + o * out_plane + out->off) : _mm512_setzero_ps();
  return bias ? _mm512_set1_ps(bias[o]) : _mm512_setzero_ps();
}

/* output channels ob * 8 .. + 7 at vectors first .. first + R - 1 of one image,
 * input channels c0 .. c1 - 1 */
__attribute__((target("avx512f"), always_inline)) static inline void fwd_tile(const fwd_job *j, const float *x,
                                                                              const float *wpk, const float *bias,
                                                                              float *y, int64_t live_o, int64_t first,
                                                                              int64_t c0, int64_t c1, const int R) {
  const plane_map *m = j->m;
  const int64_t taps = m->taps, in_plane = m->ih * m->iw, out_plane = m->oh * m->ow;
  const tap_t *out = &m->out[first];
  TILE_ROW(ACC_DECL)
  const tap_t *t0 = m->in + first * taps, *t1 = R > 1 ? t0 + taps : t0, *t2 = R > 2 ? t0 + 2 * taps : t0;
  for (int64_t c = c0; c < c1; c++) {
    const float *xc = x + c * in_plane, *u = wpk + c * taps * OUT_BLOCK;
    for (int64_t t = 0; t < taps; t++, u += OUT_BLOCK) {
      __m512 v0 = _mm512_maskz_loadu_ps(t0[t].mask, TAP_ADDR(xc, t0[t].off)), v1 = v0, v2 = v0;
      if (R > 1) v1 = _mm512_maskz_loadu_ps(t1[t].mask, TAP_ADDR(xc, t1[t].off));
      if (R > 2) v2 = _mm512_maskz_loadu_ps(t2[t].mask, TAP_ADDR(xc, t2[t].off));
      TILE_ROW(TILE_FMA)
    }
  }
  TILE_ROW(ACC_STORE)
}

/* A task: one image, a group of up to OB_GROUP output blocks, a range of
 * the plane's vectors. Loop order: input-channel block, tile, output block —
 * the tile's input rows are read once from L2 and serve every output block
 * of the group from L1 (a 1x1 convolution lives on that reuse), and a
 * block's weights stay in L1 while the tiles sweep the plane; the sums carry
 * over from one input-channel block to the next in y. */
__attribute__((target("avx512f"))) static void fwd_task(int64_t task, void *arg) {
  const fwd_job *j = arg;
  const plane_map *m = j->m;
  int64_t groups = (j->blocks + OB_GROUP - 1) / OB_GROUP;
  int64_t part = task % j->vec_parts, grp = (task / j->vec_parts) % groups, n = task / j->vec_parts / groups;
  int64_t tiles = (m->vecs + VEC_BLOCK - 1) / VEC_BLOCK, per = (tiles + j->vec_parts - 1) / j->vec_parts;
  int64_t v_lo = part * per * VEC_BLOCK, v_hi = (part + 1) * per * VEC_BLOCK;
  if (v_hi > m->vecs) v_hi = m->vecs;
  int64_t ob0 = grp * OB_GROUP, ob1 = ob0 + OB_GROUP < j->blocks ? ob0 + OB_GROUP : j->blocks;
  const float *x = j->x + n * j->c * m->ih * m->iw;
  int64_t block = IN_BLOCK / m->taps < MAX_IN_BLOCK ? IN_BLOCK / m->taps : MAX_IN_BLOCK;
  for (int64_t c0 = 0; c0 < j->c; c0 += block) {
    int64_t c1 = c0 + block < j->c ? c0 + block : j->c;
    for (int64_t v = v_lo; v < v_hi;) {
      /* tiles of 3 vectors; the last 4 as 2 + 2 (an 8x8 plane is 4), not 3 + 1 */
      int64_t left = v_hi - v, r = left >= VEC_BLOCK && left != 4 ? VEC_BLOCK : (left >= 2 ? 2 : 1);
      for (int64_t ob = ob0; ob < ob1; ob++) {
        const float *wpk = j->wpk + ob * j->c * m->taps * OUT_BLOCK, *bias = j->bias ? j->bias + ob * OUT_BLOCK : NULL;
        float *y = j->y + (n * j->o + ob * OUT_BLOCK) * m->oh * m->ow;
        int64_t live_o = j->o - ob * OUT_BLOCK < OUT_BLOCK ? j->o - ob * OUT_BLOCK : OUT_BLOCK;
        if (r == VEC_BLOCK) fwd_tile(j, x, wpk, bias, y, live_o, v, c0, c1, VEC_BLOCK);
        else if (r == 2) fwd_tile(j, x, wpk, bias, y, live_o, v, c0, c1, 2);
        else fwd_tile(j, x, wpk, bias, y, live_o, v, c0, c1, 1);
      }
      v += r;
    }
  }
}

/* weights (O, C, kh, kw) -> (O / 8, C, taps, 8), zero-padded; for the input
 * gradient (flip_transpose), the weight (C', O', kh, kw) of the convolution
 * being differentiated gives w'[o][c][t] = w[c][o][taps - 1 - t] */
static void pack_weights(const float *w, int64_t o_count, int64_t c_count, int64_t taps, bool flip_transpose,
                         float *wpk) {
  int64_t blocks = (o_count + OUT_BLOCK - 1) / OUT_BLOCK;
  for (int64_t ob = 0; ob < blocks; ob++)
    for (int64_t c = 0; c < c_count; c++)
      for (int64_t t = 0; t < taps; t++)
        for (int64_t i = 0; i < OUT_BLOCK; i++) {
          int64_t o = ob * OUT_BLOCK + i;
          float v = 0.0f;
          if (o < o_count) v = flip_transpose ? w[(c * o_count + o) * taps + (taps - 1 - t)] : w[(o * c_count + c) * taps + t];
          wpk[((ob * c_count + c) * taps + t) * OUT_BLOCK + i] = v;
        }
}

/* ---- 1x1 over whole vectors: a plain matrix product per image -------------
 * y[n] (O, P) = w (O, C) x[n] (C, P) + bias, P = H W a multiple of 16: the
 * image is already the product's right-hand side, channels P floats apart,
 * so the tile reads it in place, with no masks or tap table. A task takes
 * one image and a block of up to 3 vectors of positions (the last 4 of a
 * plane as 2 + 2), for every block of 8 output channels. */

typedef struct {
  const float *x, *wpk, *bias; /* wpk (O / 8, C, 8); bias padded to a multiple of 8, or NULL */
  float *y;
  int64_t c, o, out_blocks, plane, vecs, blocks, n; /* vecs and blocks per image; images */
  float *slabs;                                   /* per task: C x 3 vectors */
  _Atomic int64_t next;                           /* the next (image, block) unit to take */
} pointwise_job;

/* blocks of 3 vectors in a plane of `vecs`; what is left (0 .. 2, or 4
 * taken as 2 + 2) follows them */
static int64_t pointwise_threes(int64_t vecs) {
  return vecs % VEC_BLOCK == 1 && vecs >= 4 ? (vecs - 4) / VEC_BLOCK : vecs / VEC_BLOCK;
}

/* block b of a plane of `vecs` vectors: its first vector and its width */
static int64_t pointwise_block(int64_t vecs, int64_t b, int *width) {
  int64_t threes = pointwise_threes(vecs);
  if (b < threes) {
    *width = VEC_BLOCK;
    return b * VEC_BLOCK;
  }
  int64_t rest = vecs - threes * VEC_BLOCK;
  *width = rest == 4 ? 2 : (int)rest;
  return threes * VEC_BLOCK + (b - threes) * 2;
}

static int64_t pointwise_blocks(int64_t vecs) {
  int64_t threes = pointwise_threes(vecs), rest = vecs - threes * VEC_BLOCK;
  return threes + (rest == 4 ? 2 : rest > 0);
}

/* one (image, block) unit into the task's slab */
__attribute__((target("avx512f"))) static void pointwise_unit(const pointwise_job *j, int64_t unit, float *slab) {
  int64_t n = unit / j->blocks;
  int width;
  int64_t p0 = pointwise_block(j->vecs, unit % j->blocks, &width) * LANES, ld = width * LANES;
  /* the block's slab of x (C, ld) copied together first: read in place, its C
   * rows lie a plane apart (4 KiB for 32 x 32), all in the same few L1 sets,
   * and every output block would fetch them again from L2 */
  const float *x = j->x + n * j->c * j->plane + p0;
  for (int64_t c = 0; c < j->c; c++) memcpy(slab + c * ld, x + c * j->plane, sizeof(float) * (size_t)ld);
  for (int64_t ob = 0; ob < j->out_blocks; ob++) {
    const float *u = j->wpk + ob * j->c * OUT_BLOCK, *b = j->bias ? j->bias + ob * OUT_BLOCK : NULL;
    float *y = j->y + (n * j->o + ob * OUT_BLOCK) * j->plane + p0;
    int rows = j->o - ob * OUT_BLOCK < OUT_BLOCK ? (int)(j->o - ob * OUT_BLOCK) : OUT_BLOCK;
    if (width == 3) tile_product(u, slab, ld, j->c, b, y, j->plane, rows, 3);
    else if (width == 2) tile_product(u, slab, ld, j->c, b, y, j->plane, rows, 2);
    else tile_product(u, slab, ld, j->c, b, y, j->plane, rows, 1);
  }
}

/* one task per thread, each with its own slab, taking units in turn */
static void pointwise_task(int64_t task, void *arg) {
  pointwise_job *j = arg;
  float *slab = j->slabs + task * j->c * VEC_BLOCK * LANES;
  for (int64_t u; (u = atomic_fetch_add(&j->next, 1)) < j->blocks * j->n;) pointwise_unit(j, u, slab);
}

#endif /* DIRECT_X86 */

df_status conv_direct_forward(const direct_geom *g, const float *x, const float *w, bool flip_transpose,
                              const float *bias, float *y) {
#ifdef DIRECT_X86
  if (conv_winograd_applies(g)) return conv_winograd_forward(g, x, w, flip_transpose, bias, y);
  int64_t blocks = (g->o + OUT_BLOCK - 1) / OUT_BLOCK, taps = g->kh * g->kw;
  bool pointwise = taps == 1 && g->oh * g->ow % LANES == 0;
  plane_map m = {.in = NULL};
  float *wpk = df_malloc(sizeof(float) * (size_t)(blocks * g->c * taps * OUT_BLOCK + blocks * OUT_BLOCK));
  if (!wpk) return df_error(DF_ENOMEM, "conv2d: out of memory for the packed weights");
  df_status st = pointwise ? DF_OK : map_init(&m, g->h, g->w, g->oh, g->ow, g->kh, g->kw, g->ph, g->pw);
  if (st) {
    df_free(wpk);
    return st;
  }
  float *bpk = NULL;
  pack_weights(w, g->o, g->c, taps, flip_transpose, wpk);
  if (bias) {
    bpk = wpk + blocks * g->c * taps * OUT_BLOCK;
    for (int64_t i = 0; i < blocks * OUT_BLOCK; i++) bpk[i] = i < g->o ? bias[i] : 0.0f;
  }
  if (pointwise) {
    int64_t vecs = g->oh * g->ow / LANES;
    pointwise_job pj = {.x = x, .wpk = wpk, .bias = bpk, .y = y, .c = g->c, .o = g->o, .out_blocks = blocks,
                        .plane = g->oh * g->ow, .vecs = vecs, .blocks = pointwise_blocks(vecs), .n = g->n};
    int64_t units = g->n * pj.blocks, tasks = df_get_num_threads() < units ? df_get_num_threads() : units;
    size_t capacity;
    pj.slabs = df_buffer_get(sizeof(float) * (size_t)(tasks * g->c * VEC_BLOCK * LANES), false, &capacity);
    if (!pj.slabs) {
      st = df_error(DF_ENOMEM, "conv2d: out of memory for a 1x1 convolution's slabs");
    } else {
      atomic_init(&pj.next, 0);
      df_parallel_for(tasks, pointwise_task, &pj);
      df_buffer_put(pj.slabs, capacity);
    }
  } else {
    /* images x output blocks, and more tasks per plane when those are few */
    int64_t tiles = (m.vecs + VEC_BLOCK - 1) / VEC_BLOCK, units = g->n * ((blocks + OB_GROUP - 1) / OB_GROUP);
    int64_t parts = 1;
    while (units * parts < 16 && parts * 2 <= tiles) parts *= 2;
    fwd_job j = {.m = &m, .x = x, .wpk = wpk, .bias = bpk, .y = y, .c = g->c, .o = g->o, .blocks = blocks,
                 .vec_parts = parts};
    df_parallel_for(units * parts, fwd_task, &j);
  }
  df_free(wpk);
  df_free(m.in);
  return st;
#else
  (void)g, (void)x, (void)w, (void)flip_transpose, (void)bias, (void)y;
  return df_error(DF_EINVAL, "conv2d: the direct kernels need an x86-64 CPU with AVX-512");
#endif
}

/* ---- grad weight -------------------------------------------------------------
 * dw[o][c][ki][kj] = sum over images and output positions (y, x) of
 * dy[o][y][x] * x[c][y + ki - ph][x + kj - pw]. Here the sum runs over
 * scalars, so the vectors run over output channels instead: per image, dy
 * is transposed to (O / 32, positions, 32) and x is copied into a
 * zero-padded plane (C rounded up), so every tap is a plain offset. A tile
 * holds 2 vectors of 16 output channels x 12 (input channel, tap) pairs:
 * 4 channels x the 3 taps of one kernel row for 3x3, 12 channels for 1x1.
 * Per position: 2 vector loads of dy, 12 broadcasts of x, 24 FMAs.
 * The batch is cut into chunks of images (by shape alone); a task takes one
 * chunk whole — its copies, then image by image every tile over it, a tile's
 * sums going from registers to the chunk's own partial sums (C, taps, O)
 * and back, so one image's copies are read from L2, not the whole chunk's
 * from L3 (2.4x as fast at 128 channels, 16 x 16, on a Cascade Lake). The
 * chunks' sums are added in chunk order at the end, so the result does not
 * depend on the thread count, and no task waits for another. */

#ifdef DIRECT_X86

#define DW_OUT 32                 /* output channels per tile: 2 vectors */
#define DW_PREFETCH 8             /* positions ahead */
#define DW_PAIRS 12               /* (input channel, tap) pairs per tile */
#define DW_MIN_POSITIONS 4096     /* a chunk of images has at least this many positions ... */
#define DW_CHUNK_BYTES ((int64_t)8 << 20) /* ... its copies stay about this small ... */
#define DW_MIN_CHUNKS 8           /* ... and a batch that allows it has this many chunks */

typedef struct {
  const direct_geom *g;
  const float *x, *dy;
  float *partial; /* (chunks, C_pad, taps, O_pad) */
  int64_t c_pad, o_pad, hp, wp, plane, l, taps, chunk, chunks; /* plane: floats between copied planes */
  int64_t o_tiles, c_tiles, rows; /* tiles: o_tiles x c_tiles x rows (kernel rows, 1 for 1x1) */
  size_t work_bytes;
  atomic_int failed; /* a task's workspace could not be had */
} dw_job;

/* x's plane (n, c), or NULL for a padding channel */
static const float *x_plane(const dw_job *j, int64_t n, int64_t c) {
  return c < j->g->c ? j->x + (n * j->g->c + c) * j->g->h * j->g->w : NULL;
}

/* where copied image b's dy for output channels ot * DW_OUT .. starts in the
 * copies: (L, DW_OUT), so a tile reads one contiguous stream */
static int64_t dy_tile_offset(const dw_job *j, int64_t b, int64_t ot) { return (b * j->o_tiles + ot) * j->l * DW_OUT; }

/* dst rows i = 0..15 (ldd apart) = column i of the 16 x 16 block at src
 * (rows lds apart), in registers: interleave pairs of floats, then of
 * float pairs, then 4 x 4 blocks of 128-bit lanes */
__attribute__((target("avx512f"))) static void transpose16(const float *src, int64_t lds, float *dst, int64_t ldd) {
  __m512 r[16], u[16];
  for (int i = 0; i < 16; i++) r[i] = _mm512_loadu_ps(src + i * lds);
  for (int i = 0; i < 16; i += 2) { /* lane k of r[i], r[i + 1]: rows i, i + 1 of columns 4k .. 4k + 3, interleaved */
    __m512 lo = _mm512_unpacklo_ps(r[i], r[i + 1]), hi = _mm512_unpackhi_ps(r[i], r[i + 1]);
    r[i] = lo;
    r[i + 1] = hi;
  }
  for (int g = 0; g < 16; g += 4) { /* lane k of u[g + c]: rows g .. g + 3 of column 4k + c */
    __m512d a = _mm512_castps_pd(r[g]), b = _mm512_castps_pd(r[g + 1]);
    __m512d cc = _mm512_castps_pd(r[g + 2]), d = _mm512_castps_pd(r[g + 3]);
    u[g + 0] = _mm512_castpd_ps(_mm512_unpacklo_pd(a, cc));
    u[g + 1] = _mm512_castpd_ps(_mm512_unpackhi_pd(a, cc));
    u[g + 2] = _mm512_castpd_ps(_mm512_unpacklo_pd(b, d));
    u[g + 3] = _mm512_castpd_ps(_mm512_unpackhi_pd(b, d));
  }
  for (int c = 0; c < 4; c++) { /* column 4k + c: lane k of u[c], u[4 + c], u[8 + c], u[12 + c] */
    __m512 v0 = _mm512_shuffle_f32x4(u[c], u[4 + c], 0x44), v1 = _mm512_shuffle_f32x4(u[c], u[4 + c], 0xEE);
    __m512 v2 = _mm512_shuffle_f32x4(u[8 + c], u[12 + c], 0x44), v3 = _mm512_shuffle_f32x4(u[8 + c], u[12 + c], 0xEE);
    _mm512_storeu_ps(dst + (0 + c) * ldd, _mm512_shuffle_f32x4(v0, v2, 0x88));
    _mm512_storeu_ps(dst + (4 + c) * ldd, _mm512_shuffle_f32x4(v0, v2, 0xDD));
    _mm512_storeu_ps(dst + (8 + c) * ldd, _mm512_shuffle_f32x4(v1, v3, 0x88));
    _mm512_storeu_ps(dst + (12 + c) * ldd, _mm512_shuffle_f32x4(v1, v3, 0xDD));
  }
}

/* image n into the chunk's copies at slot b: x zero-padded (C_pad, hp, wp),
 * dy transposed (O_pad / DW_OUT, L, DW_OUT) */
static void dw_copy_image(const dw_job *j, int64_t n, int64_t b, float *xpad, float *dyt) {
  const direct_geom *g = j->g;
  int64_t plane = j->plane;
  for (int64_t c = 0; c < j->c_pad; c++) {
    float *dst = xpad + (b * j->c_pad + c) * plane;
    const float *src = x_plane(j, n, c);
    for (int64_t y = 0; y < j->hp; y++) {
      float *row = dst + y * j->wp;
      int64_t sy = y - g->ph;
      if (!src || sy < 0 || sy >= g->h) {
        memset(row, 0, sizeof(float) * (size_t)j->wp);
        continue;
      }
      for (int64_t x = 0; x < g->pw; x++) row[x] = 0.0f;
      memcpy(row + g->pw, src + sy * g->w, sizeof(float) * (size_t)g->w);
      for (int64_t x = g->pw + g->w; x < j->wp; x++) row[x] = 0.0f;
    }
  }
  const float *src = j->dy + n * g->o * j->l;
  for (int64_t p0 = 0; p0 < j->l; p0 += 16) /* 16 x 16 blocks: whole cache lines both ways */
    for (int64_t o0 = 0; o0 < j->o_pad; o0 += 16) {
      float *dst = dyt + dy_tile_offset(j, b, o0 / DW_OUT) + o0 % DW_OUT;
      if (p0 + 16 <= j->l && o0 + 16 <= g->o) {
        transpose16(src + o0 * j->l + p0, j->l, dst + p0 * DW_OUT, DW_OUT);
        continue;
      }
      for (int64_t p = p0; p < p0 + 16 && p < j->l; p++) {
        float *row = dst + p * DW_OUT;
        for (int64_t o = o0; o < o0 + 16; o++) row[o - o0] = o < g->o ? src[o * j->l + p] : 0.0f;
      }
    }
}

#define PAIRS(M) M(0, 0) M(0, 1) M(0, 2) M(1, 0) M(1, 1) M(1, 2) M(2, 0) M(2, 1) M(2, 2) M(3, 0) M(3, 1) M(3, 2)
#define DWO_DECL(i, k) __m512 s##i##k##_0 = _mm512_setzero_ps(), s##i##k##_1 = s##i##k##_0;
#define DWO_FMA(i, k)                                  \
  {                                                    \
    __m512 xv = _mm512_set1_ps(xr##i[pos + jo##k]);    \
    s##i##k##_0 = _mm512_fmadd_ps(xv, d0, s##i##k##_0); \
    s##i##k##_1 = _mm512_fmadd_ps(xv, d1, s##i##k##_1); \
  }
#define DWO_LOAD(i, k)                                                           \
  {                                                                              \
    const float *p = partial_at(j, partial, c_of(j, c0, i, k), tap_of(j, ki, k), o0); \
    s##i##k##_0 = _mm512_loadu_ps(p);                                            \
    s##i##k##_1 = _mm512_loadu_ps(p + 16);                                       \
  }
#define DWO_STORE(i, k)                                                          \
  {                                                                              \
    float *p = partial_at(j, partial, c_of(j, c0, i, k), tap_of(j, ki, k), o0);  \
    _mm512_storeu_ps(p, s##i##k##_0);                                            \
    _mm512_storeu_ps(p + 16, s##i##k##_1);                                       \
  }

/* the (channel, tap) of pair (i, k): 3x3 — channel c0 + i, tap (ki, k);
 * 1x1 — channel c0 + 3 i + k */
static inline int64_t c_of(const dw_job *j, int64_t c0, int i, int k) { return j->taps == 9 ? c0 + i : c0 + 3 * i + k; }
static inline int64_t tap_of(const dw_job *j, int64_t ki, int k) { return j->taps == 9 ? ki * 3 + k : 0; }

/* where pair (c, t)'s sums for output channels o0 .. o0 + 31 are kept (padding channels too) */
static inline float *partial_at(const dw_job *j, float *partial, int64_t c, int64_t t, int64_t o0) {
  return partial + (c * j->taps + t) * j->o_pad + o0;
}

/* one tile over copied image b, adding to the chunk's partial sums (or starting them, for
 * the chunk's first image): the sums go on in the same order as if they had stayed in registers */
__attribute__((target("avx512f"))) static void dw_tile(const dw_job *j, const float *xpad, const float *dyt,
                                                       int64_t b, float *partial, int64_t tile) {
  const direct_geom *g = j->g;
  int64_t ot = tile / (j->c_tiles * j->rows), rest = tile % (j->c_tiles * j->rows);
  int64_t ct = rest / j->rows, ki = rest % j->rows;
  int64_t o0 = ot * DW_OUT, c0 = ct * (j->taps == 9 ? 4 : DW_PAIRS), plane = j->plane;
  /* pair (i, k) reads xr_i[pos + jo_k]: 3x3 — row base of channel c0 + i at kernel row ki, jo = kj;
   * 1x1 — channel c0 + 3 i, jo = k planes further */
  int64_t jo0 = 0, jo1 = j->taps == 9 ? 1 : plane, jo2 = j->taps == 9 ? 2 : 2 * plane;
  int64_t stride_i = j->taps == 9 ? plane : 3 * plane;
  PAIRS(DWO_DECL)
  if (b > 0) {
    PAIRS(DWO_LOAD)
  }
  const float *xb = xpad + (b * j->c_pad + c0) * plane + ki * j->wp;
  const float *xr0 = xb, *xr1 = xb + stride_i, *xr2 = xb + 2 * stride_i, *xr3 = xb + 3 * stride_i;
  const float *d = dyt + dy_tile_offset(j, b, ot);
  for (int64_t y = 0; y < g->oh; y++)
    for (int64_t x = 0; x < g->ow; x++, d += DW_OUT) {
      int64_t pos = y * j->wp + x;
      /* dy's stream, fetched ahead: its loads stall otherwise (12% on a Cascade Lake) */
      _mm_prefetch((const char *)(d + DW_PREFETCH * DW_OUT), _MM_HINT_T0);
      _mm_prefetch((const char *)(d + DW_PREFETCH * DW_OUT + 16), _MM_HINT_T0);
      __m512 d0 = _mm512_loadu_ps(d), d1 = _mm512_loadu_ps(d + 16);
      PAIRS(DWO_FMA)
    }
  PAIRS(DWO_STORE)
}

static void dw_chunk_task(int64_t chunk, void *arg) {
  dw_job *j = arg;
  int64_t n0 = chunk * j->chunk, images = j->g->n - n0 < j->chunk ? j->g->n - n0 : j->chunk;
  size_t capacity;
  float *xpad = df_buffer_get(j->work_bytes, false, &capacity); /* recycled: fresh pages fault */
  if (!xpad) {
    atomic_store(&j->failed, 1);
    return;
  }
  float *dyt = xpad + j->chunk * j->c_pad * j->plane;
  for (int64_t b = 0; b < images; b++) dw_copy_image(j, n0 + b, b, xpad, dyt);
  float *partial = j->partial + chunk * j->c_pad * j->taps * j->o_pad;
  /* image by image, every tile over it: one image's copies stay in L2 while its tiles read them */
  for (int64_t b = 0; b < images; b++)
    for (int64_t tile = 0; tile < j->o_tiles * j->c_tiles * j->rows; tile++) dw_tile(j, xpad, dyt, b, partial, tile);
  df_buffer_put(xpad, capacity);
}

typedef struct {
  float *partial; /* chunk 0's rows become the totals */
  float *dw;
  int64_t c, o, o_pad, taps, chunks, chunk_floats;
} dw_out_job;

/* dw (O, C, taps) = the chunks' partial sums (C_pad, taps, O_pad) added in
 * chunk order: one (channel, tap) row of O_pad sums per task, added up
 * contiguously in chunk 0's row, then written out across dw */
static void dw_out_task(int64_t row, void *arg) {
  const dw_out_job *j = arg;
  float *sum = j->partial + row * j->o_pad;
  for (int64_t k = 1; k < j->chunks; k++) {
    const float *p = j->partial + k * j->chunk_floats + row * j->o_pad;
    for (int64_t o = 0; o < j->o; o++) sum[o] += p[o];
  }
  for (int64_t o = 0; o < j->o; o++) j->dw[o * j->c * j->taps + row] = sum[o];
}

#endif /* DIRECT_X86 */

df_status conv_direct_grad_weight(const direct_geom *g, const float *x, const float *dy, float *dw) {
#ifdef DIRECT_X86
  bool three = g->kh == 3;
  dw_job j = {.g = g, .x = x, .dy = dy, .taps = g->kh * g->kw, .l = g->oh * g->ow};
  j.o_pad = (g->o + DW_OUT - 1) / DW_OUT * DW_OUT;
  int64_t c_block = three ? 4 : DW_PAIRS;
  j.c_pad = (g->c + c_block - 1) / c_block * c_block;
  j.hp = g->h + 2 * g->ph;
  j.wp = g->w + 2 * g->pw;
  j.o_tiles = j.o_pad / DW_OUT;
  j.c_tiles = j.c_pad / c_block;
  j.rows = three ? 3 : 1;
  /* images per chunk: enough positions to keep a tile busy, copies about L2-sized, enough chunks for the threads */
  /* copied planes a cache line further apart where they would be a multiple of 1 KiB:
   * a 1x1 tile reads 12 of them at once, and they would share a few L1 sets */
  j.plane = j.hp * j.wp % 256 == 0 ? j.hp * j.wp + 16 : j.hp * j.wp;
  int64_t per_image = (j.c_pad * j.plane + j.l * j.o_pad) * (int64_t)sizeof(float);
  int64_t chunk = (DW_MIN_POSITIONS + j.l - 1) / j.l;
  if (chunk * per_image > DW_CHUNK_BYTES) chunk = DW_CHUNK_BYTES / per_image;
  if (chunk > g->n / DW_MIN_CHUNKS) chunk = g->n / DW_MIN_CHUNKS;
  if (chunk < 1) chunk = 1;
  j.chunk = chunk;
  j.chunks = (g->n + chunk - 1) / chunk;
  j.work_bytes = (size_t)(chunk * per_image);
  int64_t chunk_floats = j.c_pad * j.taps * j.o_pad;
  size_t partial_bytes = sizeof(float) * (size_t)(j.chunks * chunk_floats), partial_capacity;
  j.partial = df_buffer_get(partial_bytes, false, &partial_capacity);
  if (!j.partial) return df_error(DF_ENOMEM, "conv2d: out of memory for the weight gradient's partial sums");
  atomic_init(&j.failed, 0);
  df_parallel_for(j.chunks, dw_chunk_task, &j);
  if (atomic_load(&j.failed)) {
    df_buffer_put(j.partial, partial_capacity);
    return df_error(DF_ENOMEM, "conv2d: out of memory for the weight gradient's workspace");
  }
  dw_out_job out = {.partial = j.partial, .dw = dw, .c = g->c, .o = g->o, .o_pad = j.o_pad, .taps = j.taps,
                    .chunks = j.chunks, .chunk_floats = chunk_floats};
  df_parallel_for(g->c * j.taps, dw_out_task, &out); /* rows (c, t) of the real channels */
  df_buffer_put(j.partial, partial_capacity);
  return DF_OK;
#else
  (void)g, (void)x, (void)dy, (void)dw;
  return df_error(DF_EINVAL, "conv2d: the direct kernels need an x86-64 CPU with AVX-512");
#endif
}
