/* nn.c — the neural-network layers that are not convolutions: linear,
 * group_norm (and group_norm_silu, the two fused), layer_norm, softmax,
 * log_softmax, dropout, embedding and the sinusoidal timestep embedding.
 * Each op's forward and backward sit side by side.
 *
 * Kernels work on contiguous copies (made with grad mode off, so the copies
 * are not part of the graph) and record one node of their own. Matrix work
 * goes to df_gemm (ops/gemm.c); the row loops run on the
 * pool over disjoint outputs, each output computed by one task in a fixed
 * order, so results don't depend on the thread count. Sums are accumulated
 * in double. */
#include <float.h>
#include <limits.h>
#include <math.h>
#include <string.h>

#include <cblas.h>

#include "../core/iter.h"
#include "../core/vmath.h"
#include "../df.h"
#include "activation.h"

/* ---- shared helpers ----------------------------------------------------- */

#define SHAPE_BUF 128

static char *shape_of(char *buf, const df_tensor *t) { return df_format_shape(buf, SHAPE_BUF, t->ndim, t->size); }

/* fn(begin, end, ctx) over [0, items) in tasks of at least DF_ITER_GRAIN
 * units of work, `cost` units per item. */
typedef void (*range_fn)(int64_t begin, int64_t end, void *ctx);

typedef struct {
  range_fn fn;
  void *ctx;
  int64_t items, per_task;
} range_job;

static void range_task(int64_t task, void *arg) {
  const range_job *j = arg;
  int64_t begin = task * j->per_task, end = begin + j->per_task;
  if (end > j->items) end = j->items;
  j->fn(begin, end, j->ctx);
}

static void parallel_range(int64_t items, int64_t cost, range_fn fn, void *ctx) {
  if (items <= 0) return;
  if (cost < 1) cost = 1;
  range_job j = {.fn = fn, .ctx = ctx, .items = items};
  int64_t ntasks = df_task_split(items, cost, &j.per_task);
  df_parallel_for(ntasks, range_task, &j);
}

/* C (m x n) = alpha op(A) op(B) + beta C, row-major. Empty products are
 * handled here: BLAS wants leading dims >= 1 even when k is 0. */
static void gemm(bool ta, bool tb, int64_t m, int64_t n, int64_t k, float alpha, const float *a, int64_t lda,
                 const float *b, int64_t ldb, float beta, float *c, int64_t ldc) {
  if (m == 0 || n == 0) return;
  if (k == 0) {
    for (int64_t i = 0; i < m; i++)
      for (int64_t j = 0; j < n; j++) c[i * ldc + j] = beta == 0.0f ? 0.0f : beta * c[i * ldc + j];
    return;
  }
  df_gemm(ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
}

static df_status check_eps(const char *op, float eps) {
  if (!(eps >= 0.0f) || isinf(eps)) return df_error(DF_EINVAL, "%s: eps must be finite and >= 0, got %g", op, (double)eps);
  return DF_OK;
}

/* ---- linear --------------------------------------------------------------
 * x (..., in) viewed as X (M, in); Y (M, out) = X Wᵀ + b.
 * saved[0] = x, saved[1] = w. */

static df_status linear_forward(df_tensor **out, const df_tensor *x, const df_tensor *w, const df_tensor *b) {
  char b1[SHAPE_BUF], b2[SHAPE_BUF];
  if (w->ndim != 2) return df_error(DF_EINVAL, "linear: weight must be 2-d (out, in), got %s", shape_of(b1, w));
  if (x->ndim < 1) return df_error(DF_EINVAL, "linear: input must have at least 1 dim, got a 0-d tensor");
  int64_t nout = w->size[0], nin = w->size[1];
  if (x->size[x->ndim - 1] != nin)
    return df_error(DF_EINVAL, "linear: input %s has %lld features, weight %s expects %lld", shape_of(b1, x),
                    (long long)x->size[x->ndim - 1], shape_of(b2, w), (long long)nin);
  if (b && (b->ndim != 1 || b->size[0] != nout))
    return df_error(DF_EINVAL, "linear: bias must have shape {%lld} for weight %s, got %s", (long long)nout,
                    shape_of(b1, w), shape_of(b2, b));
  int64_t m = 1, size[DF_MAX_DIMS];
  for (int d = 0; d < x->ndim - 1; d++) {
    m *= x->size[d];
    size[d] = x->size[d];
  }
  size[x->ndim - 1] = nout;
  if (m > INT_MAX || nin > INT_MAX || nout > INT_MAX)
    return df_error(DF_EINVAL, "linear: matrix dims above %d are not supported by BLAS", INT_MAX);
  df_tensor *xc = NULL, *wc = NULL, *bc = NULL, *y = NULL;
  df_status st;
  if ((st = df_tensor_contiguous(&xc, x)) || (st = df_tensor_contiguous(&wc, w)) ||
      (b && (st = df_tensor_contiguous(&bc, b))) || (st = df_tensor_empty(&y, x->ndim, size)))
    goto done;
  float *yp = df_tensor_data(y);
  if (bc) { /* every row starts as the bias; BLAS adds X Wᵀ onto it */
    const float *bp = df_tensor_data(bc);
    for (int64_t i = 0; i < m; i++) memcpy(yp + i * nout, bp, sizeof(float) * (size_t)nout);
  }
  gemm(false, true, m, nout, nin, 1.0f, df_tensor_data(xc), nin > 0 ? nin : 1, df_tensor_data(wc), nin > 0 ? nin : 1,
       bc ? 1.0f : 0.0f, yp, nout);
done:
  df_tensor_release(xc);
  df_tensor_release(wc);
  df_tensor_release(bc);
  if (st) {
    df_tensor_release(y);
    return st;
  }
  *out = y;
  return DF_OK;
}

/* dX = G W, dW = Gᵀ X, db = column sums of G */
static df_status bw_linear(df_node *n, const df_tensor *g, df_tensor **gi) {
  const df_tensor *x = n->saved[0], *w = n->saved[1];
  int64_t nout = w->size[0], nin = w->size[1], m = 1;
  for (int d = 0; d < x->ndim - 1; d++) m *= x->size[d];
  int64_t ld_in = nin > 0 ? nin : 1, ld_out = nout > 0 ? nout : 1;
  df_tensor *gc = NULL, *xc = NULL, *wc = NULL;
  df_status st = df_tensor_contiguous(&gc, g);
  if (st) return st;
  if (df_node_needs_grad(n, 0)) {
    if ((st = df_tensor_contiguous(&wc, w)) || (st = df_tensor_empty(&gi[0], x->ndim, x->size))) goto done;
    gemm(false, false, m, nin, nout, 1.0f, df_tensor_data(gc), ld_out, df_tensor_data(wc), ld_in, 0.0f,
         df_tensor_data(gi[0]), ld_in);
  }
  if (df_node_needs_grad(n, 1)) {
    if ((st = df_tensor_contiguous(&xc, x)) || (st = df_tensor_empty(&gi[1], 2, w->size))) goto done;
    gemm(true, false, nout, nin, m, 1.0f, df_tensor_data(gc), ld_out, df_tensor_data(xc), ld_in, 0.0f,
         df_tensor_data(gi[1]), ld_in);
  }
  if (n->ninputs > 2 && df_node_needs_grad(n, 2)) {
    if (g->ndim == 1) {
      df_tensor_retain(gc);
      gi[2] = gc;
    } else {
      int dims[DF_MAX_DIMS];
      for (int d = 0; d < g->ndim - 1; d++) dims[d] = d;
      st = df_reduce(DF_SUM, &gi[2], gc, g->ndim - 1, dims, false, 0);
    }
  }
done:
  df_tensor_release(gc);
  df_tensor_release(xc);
  df_tensor_release(wc);
  return st;
}

df_status df_linear(df_tensor **out, const df_tensor *x, const df_tensor *w, const df_tensor *b) {
  bool previous = df_set_grad_enabled(false);
  df_tensor *y = NULL;
  df_status st = linear_forward(&y, x, w, b);
  df_set_grad_enabled(previous);
  if (st) return st;
  const df_tensor *in[3] = {x, w, b};
  df_node *node;
  if ((st = df_autograd_record(y, "linear", bw_linear, b ? 3 : 2, in, &node)) ||
      (node && ((st = df_node_save(node, 0, x)) || (st = df_node_save(node, 1, w))))) {
    df_tensor_release(y);
    return st;
  }
  *out = y;
  return DF_OK;
}

/* ---- normalisation (group_norm, layer_norm) --------------------------------
 * Both see x as R rows of L elements, each row normalised by its own mean
 * and biased variance. The affine parameters are a flat vector of A values;
 * element j of row r uses index (r % G) * (L / S) + j / S. group_norm: rows
 * are (sample, group), G = groups, S = the spatial size, so the index is the
 * channel. layer_norm: G = 1, S = 1, so the index is the position in the row.
 *
 * group_norm_silu is silu(group_norm(x)) in one pass: each row is
 * normalised, then goes through SiLU while it is still in cache. It saves
 * only x (and b, to recompute the normalised values) and the statistics, not
 * the two full-size results the pair would keep; its backward recomputes
 * h = group_norm(x) and silu'(h) row by row, into the memory of dx, then runs
 * group_norm's backward on that.
 *
 * iarg = {R, L, G, S, slot of w or -1, slot of b or -1, fused with SiLU};
 * saved[0] = x, saved[1] = w, saved[2] = b (group_norm_silu only);
 * extra = mean[R] then rstd[R] (floats). */

/* group_norm_silu's SiLU: elementwise.c's own maps (ops/activation.h), in
 * place over a row — the same arithmetic as D.silu, so the fused op gives
 * bitwise what the pair gives. */
static void silu_row(int64_t n, float *y) { df_silu_map(n, y, y); }
static void silu_grad_row(int64_t n, float *h, const float *g) { df_silu_grad_map(n, h, g, h); }

typedef struct {
  const float *x, *g, *w, *b;
  float *y;     /* forward: output; backward: dx, or NULL when not wanted */
  float *mean, *rstd;
  double *acc_w, *acc_b; /* backward: per affine index, either may be NULL */
  /* backward: per (row, channel in row) sums of g and g xhat, or NULL; for
   * span > 1, and for group_norm_silu also at span 1 */
  double *part_g, *part_gx;
  int64_t rows, len, groups, span, per; /* per = L / S affine indices in a row */
  float eps;
  void (*silu)(int64_t n, float *y);                          /* group_norm_silu's forward, else NULL */
  void (*silu_grad)(int64_t n, float *h, const float *g);     /* its backward (with y set), else NULL */
} norm_job;

/* The row loops are written once (the *_body functions, always inlined) and
 * compiled twice: for any CPU, and with AVX-512 where it runs, picked per
 * call. Sums run in double over NORM_LANES interleaved lanes: element i of
 * a run goes to lane i % NORM_LANES, and the lanes are added in a fixed
 * order at the end. The lanes are GCC/Clang vectors of 8, which each
 * compilation maps onto its own registers (2 zmm, or 8 xmm), so the order
 * of every sum depends on the data alone: both compilations, and any
 * thread count, give the same bits. */
#define NORM_LANES 16
/* floats per block of the statistics pass: its two sweeps stay in L1 */
#define NORM_BLOCK 4096

#define NORM_INLINE static inline __attribute__((always_inline))

typedef float norm_f8 __attribute__((vector_size(8 * sizeof(float))));
typedef double norm_d8 __attribute__((vector_size(8 * sizeof(double))));

/* 8 floats from p, as floats (f8) or widened to doubles (d8) */
#define LOAD_F8(dst, p) memcpy(&(dst), (p), sizeof(norm_f8))
#define LOAD_D8(dst, p)                     \
  do {                                      \
    norm_f8 load_tmp_;                      \
    LOAD_F8(load_tmp_, p);                  \
    (dst) = __builtin_convertvector(load_tmp_, norm_d8); \
  } while (0)

/* the two vectors of lanes (0-7, 8-15) into an array, for the tail */
NORM_INLINE void lanes_store(double *acc, const norm_d8 *lo, const norm_d8 *hi) {
  memcpy(acc, lo, sizeof *lo);
  memcpy(acc + 8, hi, sizeof *hi);
}

NORM_INLINE double lanes_total(const double *acc) {
  double half[NORM_LANES / 2];
  for (int k = 0; k < NORM_LANES / 2; k++) half[k] = acc[k] + acc[k + NORM_LANES / 2];
  double quarter[NORM_LANES / 4];
  for (int k = 0; k < NORM_LANES / 4; k++) quarter[k] = half[k] + half[k + NORM_LANES / 4];
  double sum = 0;
  for (int k = 0; k < NORM_LANES / 4; k++) sum += quarter[k];
  return sum;
}

NORM_INLINE double sum_of(const float *x, int64_t n) {
  norm_d8 lo = {0}, hi = {0}, v;
  int64_t i = 0;
  for (; i + NORM_LANES <= n; i += NORM_LANES) {
    LOAD_D8(v, x + i);
    lo += v;
    LOAD_D8(v, x + i + 8);
    hi += v;
  }
  double acc[NORM_LANES];
  lanes_store(acc, &lo, &hi);
  for (int k = 0; i < n; i++, k++) acc[k] += x[i];
  return lanes_total(acc);
}

/* sum of (x - mean)^2 */
NORM_INLINE double squared_deviations(const float *x, int64_t n, double mean) {
  norm_d8 lo = {0}, hi = {0}, v;
  int64_t i = 0;
  for (; i + NORM_LANES <= n; i += NORM_LANES) {
    LOAD_D8(v, x + i);
    v -= mean;
    lo += v * v;
    LOAD_D8(v, x + i + 8);
    v -= mean;
    hi += v * v;
  }
  double acc[NORM_LANES];
  lanes_store(acc, &lo, &hi);
  for (int k = 0; i < n; i++, k++) {
    double d = x[i] - mean;
    acc[k] += d * d;
  }
  return lanes_total(acc);
}

/* The mean and the sum of squared deviations of a row in one sweep over
 * memory: each block of NORM_BLOCK floats is summed, then its deviations
 * from its own mean (a second sweep, from L1), and the blocks are merged
 * with the pairwise update of Chan, Golub and LeVeque. A row of one block
 * is the plain two-pass computation. */
NORM_INLINE void row_moments(const float *x, int64_t len, double *mean_out, double *m2_out) {
  double mean = 0, m2 = 0;
  int64_t count = 0;
  for (int64_t b0 = 0; b0 < len; b0 += NORM_BLOCK) {
    int64_t n = len - b0 < NORM_BLOCK ? len - b0 : NORM_BLOCK;
    double block_mean = sum_of(x + b0, n) / (double)n;
    double block_m2 = squared_deviations(x + b0, n, block_mean);
    int64_t total = count + n;
    double delta = block_mean - mean;
    mean += delta * ((double)n / (double)total);
    m2 += block_m2 + delta * delta * ((double)count * (double)n / (double)total);
    count = total;
  }
  *mean_out = mean;
  *m2_out = m2;
}

/* Row r of the output: y = (x - m) rstd w + b, per affine index. The
 * backward of group_norm_silu recomputes it with this same code, so it
 * gets the forward's bits. */
NORM_INLINE void normalise_row(const norm_job *j, int64_t r, const float *x, float *y, float m, float rstd) {
  int64_t a0 = (r % j->groups) * j->per;
  for (int64_t c = 0; c < j->per; c++) {
    float scale = j->w ? j->w[a0 + c] * rstd : rstd, shift = j->b ? j->b[a0 + c] : 0.0f;
    const float *xs = x + c * j->span;
    float *ys = y + c * j->span;
    for (int64_t s = 0; s < j->span; s++) ys[s] = (xs[s] - m) * scale + shift;
  }
}

NORM_INLINE void norm_forward_body(int64_t r0, int64_t r1, const norm_job *j) {
  for (int64_t r = r0; r < r1; r++) {
    const float *x = j->x + r * j->len;
    float *y = j->y + r * j->len;
    double mean, m2;
    row_moments(x, j->len, &mean, &m2);
    float rstd = (float)(1.0 / sqrt(m2 / (double)j->len + j->eps)), m = (float)mean;
    j->mean[r] = m;
    j->rstd[r] = rstd;
    normalise_row(j, r, x, y, m, rstd);
    if (j->silu) j->silu(j->len, y); /* while the row is in cache */
  }
}

/* Over n elements: *sum_g = sum of g w, *sum_gx = sum of g w xhat, with
 * xhat = (x - m) rstd (in float, as the forward pass) and w = 1 when NULL. */
NORM_INLINE void gradient_sums(const float *g, const float *x, const float *w, int64_t n, float m, float rstd,
                               double *sum_g, double *sum_gx) {
  norm_d8 g_lo = {0}, g_hi = {0}, gx_lo = {0}, gx_hi = {0}, gv, wv, xd;
  norm_f8 xf;
  int64_t i = 0;
  for (; i + NORM_LANES <= n; i += NORM_LANES) {
    for (int half = 0; half < 2; half++) {
      int64_t at = i + 8 * half;
      LOAD_D8(gv, g + at);
      if (w) {
        LOAD_D8(wv, w + at);
        gv *= wv;
      }
      LOAD_F8(xf, x + at);
      xf = (xf - m) * rstd;
      xd = __builtin_convertvector(xf, norm_d8);
      if (half == 0) {
        g_lo += gv;
        gx_lo += gv * xd;
      } else {
        g_hi += gv;
        gx_hi += gv * xd;
      }
    }
  }
  double ag[NORM_LANES], agx[NORM_LANES];
  lanes_store(ag, &g_lo, &g_hi);
  lanes_store(agx, &gx_lo, &gx_hi);
  for (int k = 0; i < n; i++, k++) {
    double gw = w ? (double)g[i] * w[i] : (double)g[i], xhat = (x[i] - m) * rstd;
    ag[k] += gw;
    agx[k] += gw * xhat;
  }
  *sum_g = lanes_total(ag);
  *sum_gx = lanes_total(agx);
}

/* dx = rstd (dxhat - mean(dxhat) - xhat mean(dxhat xhat)), dxhat = g w.
 * One sweep gathers the two means (per channel when the row has spatial
 * extent, keeping each channel's sums for the affine gradients), a second
 * writes dx. For group_norm_silu, g is first replaced by g silu'(h), made
 * in dx's row from the recomputed output h (dx is then written over it,
 * each element after it is read). */
NORM_INLINE void norm_backward_body(int64_t r0, int64_t r1, const norm_job *j) {
  for (int64_t r = r0; r < r1; r++) {
    const float *x = j->x + r * j->len, *g = j->g + r * j->len;
    float m = j->mean[r], rstd = j->rstd[r];
    if (j->silu_grad) {
      float *h = j->y + r * j->len;
      normalise_row(j, r, x, h, m, rstd);
      j->silu_grad(j->len, h, g);
      g = h;
    }
    int64_t a0 = (r % j->groups) * j->per;
    double s1 = 0, s2 = 0;
    if (j->span == 1) { /* one weight per element (layer_norm) */
      gradient_sums(g, x, j->w ? j->w + a0 : NULL, j->len, m, rstd, &s1, &s2);
      if (j->part_g) /* group_norm_silu of (N, C): each element is a channel */
        for (int64_t c = 0; c < j->len; c++) {
          j->part_g[r * j->per + c] = g[c];
          j->part_gx[r * j->per + c] = (double)g[c] * ((x[c] - m) * rstd);
        }
    } else {
      for (int64_t c = 0; c < j->per; c++) {
        double sg, sgx, wc = j->w ? j->w[a0 + c] : 1.0;
        gradient_sums(g + c * j->span, x + c * j->span, NULL, j->span, m, rstd, &sg, &sgx);
        if (j->part_g) {
          j->part_g[r * j->per + c] = sg;
          j->part_gx[r * j->per + c] = sgx;
        }
        s1 += wc * sg;
        s2 += wc * sgx;
      }
    }
    if (!j->y) continue;
    float *dx = j->y + r * j->len;
    float m1 = (float)(s1 / (double)j->len), m2 = (float)(s2 / (double)j->len);
    if (j->span == 1) {
      for (int64_t s = 0; s < j->len; s++) {
        float xhat = (x[s] - m) * rstd, wc = j->w ? j->w[a0 + s] : 1.0f;
        dx[s] = rstd * (g[s] * wc - m1 - xhat * m2);
      }
      continue;
    }
    for (int64_t c = 0; c < j->per; c++) {
      float wc = j->w ? j->w[a0 + c] : 1.0f;
      const float *xs = x + c * j->span, *gs = g + c * j->span;
      float *dxs = dx + c * j->span;
      for (int64_t s = 0; s < j->span; s++) {
        float xhat = (xs[s] - m) * rstd;
        dxs[s] = rstd * (gs[s] * wc - m1 - xhat * m2);
      }
    }
  }
}

static void norm_forward_generic(int64_t r0, int64_t r1, void *arg) { norm_forward_body(r0, r1, arg); }
static void norm_backward_generic(int64_t r0, int64_t r1, void *arg) { norm_backward_body(r0, r1, arg); }
#if DF_VMATH_X86
__attribute__((target("avx512f"))) static void norm_forward_avx512(int64_t r0, int64_t r1, void *arg) {
  norm_forward_body(r0, r1, arg);
}
__attribute__((target("avx512f"))) static void norm_backward_avx512(int64_t r0, int64_t r1, void *arg) {
  norm_backward_body(r0, r1, arg);
}
#endif

static range_fn norm_forward_rows(void) {
#if DF_VMATH_X86
  if (df_vmath_level_get() == DF_VMATH_AVX512) return norm_forward_avx512;
#endif
  return norm_forward_generic;
}

static range_fn norm_backward_rows(void) {
#if DF_VMATH_X86
  if (df_vmath_level_get() == DF_VMATH_AVX512) return norm_backward_avx512;
#endif
  return norm_backward_generic;
}

/* The affine gradients from the per-(row, channel) sums of the rows pass:
 * acc_w[a] = sum over samples of part_gx, acc_b[a] of part_g, samples in
 * order. Row n * groups + gi, channel c is affine index gi * per + c, and
 * sits at (n * groups + gi) * per + c = n * naffine + a in the sums. */
static void norm_affine_from_parts(const norm_job *j) {
  int64_t naffine = j->groups * j->per, samples = j->rows / j->groups;
  for (int64_t a = 0; a < naffine; a++) {
    double sw = 0, sb = 0;
    for (int64_t n = 0; n < samples; n++) {
      sw += j->part_gx[n * naffine + a];
      sb += j->part_g[n * naffine + a];
    }
    if (j->acc_w) j->acc_w[a] = sw;
    if (j->acc_b) j->acc_b[a] = sb;
  }
}

/* Rows without spatial extent (layer_norm): acc_w[a] = sum of g xhat,
 * acc_b[a] = sum of g over the elements using affine index a, for a in
 * [a0, a1); rows in order, so the sums don't depend on the split. */
static void norm_backward_affine(int64_t a0, int64_t a1, void *arg) {
  const norm_job *j = arg;
  for (int64_t a = a0; a < a1; a++) {
    if (j->acc_w) j->acc_w[a] = 0;
    if (j->acc_b) j->acc_b[a] = 0;
  }
  for (int64_t r = 0; r < j->rows; r++) {
    int64_t first = (r % j->groups) * j->per; /* the row's affine indices: [first, first + per) */
    int64_t lo = a0 > first ? a0 : first, hi = a1 < first + j->per ? a1 : first + j->per;
    if (lo >= hi) continue;
    const float *x = j->x + r * j->len, *g = j->g + r * j->len;
    float m = j->mean[r], rstd = j->rstd[r];
    for (int64_t a = lo; a < hi; a++) {
      int64_t s0 = (a - first) * j->span;
      double sw = 0, sb = 0;
      for (int64_t s = s0; s < s0 + j->span; s++) {
        sw += (double)g[s] * ((x[s] - m) * rstd);
        sb += g[s];
      }
      if (j->acc_w) j->acc_w[a] += sw;
      if (j->acc_b) j->acc_b[a] += sb;
    }
  }
}

/* x, w, b already checked; groups and span as described above; silu:
 * group_norm_silu. */
static df_status norm_forward(const char *name, df_tensor **out, float **stats, const df_tensor *x, const df_tensor *w,
                              const df_tensor *b, int64_t rows, int64_t groups, int64_t span, float eps, bool silu) {
  df_tensor *xc = NULL, *wc = NULL, *bc = NULL, *y = NULL;
  float *st_buf = df_malloc(sizeof(float) * (size_t)(2 * rows + 1));
  df_status st = DF_OK;
  if (!st_buf) {
    st = df_error(DF_ENOMEM, "%s: out of memory", name);
    goto done;
  }
  if ((st = df_tensor_contiguous(&xc, x)) || (w && (st = df_tensor_contiguous(&wc, w))) ||
      (b && (st = df_tensor_contiguous(&bc, b))) || (st = df_tensor_empty(&y, x->ndim, x->size)))
    goto done;
  int64_t len = rows > 0 ? df_tensor_numel(x) / rows : 0;
  if (len > 0) {
    norm_job j = {.x = df_tensor_data(xc), .w = wc ? df_tensor_data(wc) : NULL, .b = bc ? df_tensor_data(bc) : NULL,
                  .y = df_tensor_data(y), .mean = st_buf, .rstd = st_buf + rows, .rows = rows, .len = len,
                  .groups = groups, .span = span, .per = len / span, .eps = eps,
                  .silu = silu ? silu_row : NULL};
    parallel_range(rows, 2 * len, norm_forward_rows(), &j);
  }
done:
  df_tensor_release(xc);
  df_tensor_release(wc);
  df_tensor_release(bc);
  if (st) {
    df_free(st_buf);
    df_tensor_release(y);
    return st;
  }
  *stats = st_buf;
  *out = y;
  return DF_OK;
}

static df_status bw_norm(df_node *n, const df_tensor *g, df_tensor **gi) {
  int64_t rows = n->iarg[0], len = n->iarg[1], groups = n->iarg[2], span = n->iarg[3];
  int iw = (int)n->iarg[4], ib = (int)n->iarg[5];
  bool silu = n->iarg[6] != 0;
  const df_tensor *x = n->saved[0], *w = iw >= 0 ? n->saved[1] : NULL, *b = silu && ib >= 0 ? n->saved[2] : NULL;
  const float *stats = n->extra;
  bool need_x = df_node_needs_grad(n, 0), need_w = df_node_needs_grad(n, iw), need_b = df_node_needs_grad(n, ib);
  bool want_dx = need_x || silu; /* group_norm_silu makes g silu'(h) in dx's memory */
  int64_t per = span > 0 ? len / span : 0, naffine = groups * per;
  df_tensor *xc = NULL, *wc = NULL, *bc = NULL, *gc = NULL, *dx = NULL, *dw = NULL, *db = NULL;
  double *acc = NULL, *part = NULL;
  df_status st;
  if ((st = df_tensor_contiguous(&xc, x)) || (st = df_tensor_contiguous(&gc, g)) ||
      (w && (st = df_tensor_contiguous(&wc, w))) || (b && (st = df_tensor_contiguous(&bc, b))))
    goto done;
  if ((want_dx && (st = df_tensor_empty(&dx, x->ndim, x->size))) || /* every element is written */
      (need_w && (st = df_tensor_zeros(&dw, w->ndim, w->size))) ||
      (need_b && (st = df_tensor_zeros(&db, n->inputs[ib].ndim, n->inputs[ib].size))))
    goto done;
  if (len > 0 && rows > 0) {
    norm_job j = {.x = df_tensor_data(xc), .g = df_tensor_data(gc), .w = wc ? df_tensor_data(wc) : NULL,
                  .b = bc ? df_tensor_data(bc) : NULL, .y = want_dx ? df_tensor_data(dx) : NULL,
                  .mean = (float *)stats, .rstd = (float *)stats + rows, .rows = rows, .len = len, .groups = groups,
                  .span = span, .per = per, .silu_grad = silu ? silu_grad_row : NULL};
    /* with SiLU, g silu'(h) exists only inside the rows pass: the affine
     * sums come from there at any span */
    bool affine = need_w || need_b, parts = affine && (span > 1 || silu);
    if (affine) {
      /* acc: the affine sums; part: the rows pass's per-(row, channel) sums */
      size_t nacc = (size_t)(2 * naffine), npart = parts ? (size_t)(2 * rows * per) : 0;
      if (!(acc = df_malloc(sizeof(double) * nacc)) || (npart && !(part = df_malloc(sizeof(double) * npart)))) {
        st = df_error(DF_ENOMEM, "%s: out of memory", n->name);
        goto done;
      }
      j.acc_w = need_w ? acc : NULL;
      j.acc_b = need_b ? acc + naffine : NULL;
      if (parts) {
        j.part_g = part;
        j.part_gx = part + rows * per;
      }
    }
    if (want_dx || parts) parallel_range(rows, (silu ? 5 : 3) * len, norm_backward_rows(), &j);
    if (parts) norm_affine_from_parts(&j);
    else if (affine) parallel_range(naffine, rows * span, norm_backward_affine, &j);
    for (int64_t a = 0; affine && a < naffine; a++) {
      if (need_w) df_tensor_data(dw)[a] = (float)acc[a];
      if (need_b) df_tensor_data(db)[a] = (float)acc[naffine + a];
    }
  }
done:
  df_free(acc);
  df_free(part);
  df_tensor_release(xc);
  df_tensor_release(wc);
  df_tensor_release(bc);
  df_tensor_release(gc);
  if (st || !need_x) df_tensor_release(dx);
  if (st) {
    df_tensor_release(dw);
    df_tensor_release(db);
    return st;
  }
  if (need_x) gi[0] = dx;
  if (need_w) gi[iw] = dw;
  if (need_b) gi[ib] = db;
  return DF_OK;
}

/* group_norm_silu's result again, bitwise, from its saved x, w and b: a
 * consumer that needs it in backward (conv2d's weight gradient) keeps no
 * copy of it (df_node_save_input) */
static df_status norm_forward_again(df_node *n, df_tensor **out) {
  int iw = (int)n->iarg[4], ib = (int)n->iarg[5];
  float *stats = NULL;
  df_status st = norm_forward(n->name, out, &stats, n->saved[0], iw >= 0 ? n->saved[1] : NULL,
                              ib >= 0 ? n->saved[2] : NULL, n->iarg[0], n->iarg[2], n->iarg[3], (float)n->scalar[0], true);
  df_free(stats);
  return st;
}

static df_status norm_op(const char *name, df_tensor **out, const df_tensor *x, const df_tensor *w, const df_tensor *b,
                         int64_t rows, int64_t groups, int64_t span, float eps, bool silu) {
  bool previous = df_set_grad_enabled(false);
  df_tensor *y = NULL;
  float *stats = NULL;
  df_status st = norm_forward(name, &y, &stats, x, w, b, rows, groups, span, eps, silu);
  df_set_grad_enabled(previous);
  if (st) return st;
  const df_tensor *in[3] = {x, w ? w : b, w ? b : NULL};
  int ninputs = 1 + (w != NULL) + (b != NULL);
  df_node *node = NULL;
  st = df_autograd_record(y, name, bw_norm, ninputs, in, &node);
  if (!st && node && !(st = df_node_save(node, 0, x)) && w) st = df_node_save(node, 1, w);
  if (!st && node && silu && b) st = df_node_save(node, 2, b);
  if (st || !node) {
    df_free(stats);
    if (st) {
      df_tensor_release(y);
      return st;
    }
    *out = y;
    return DF_OK;
  }
  node->extra = stats; /* freed with the node */
  int64_t len = rows > 0 ? df_tensor_numel(x) / rows : 0;
  int64_t iargs[7] = {rows, len, groups, span, w ? 1 : -1, b ? (w ? 2 : 1) : -1, silu};
  memcpy(node->iarg, iargs, sizeof iargs);
  node->scalar[0] = eps;
  if (silu) node->forward_again = norm_forward_again;
  *out = y;
  return DF_OK;
}

static df_status group_norm_op(const char *name, bool silu, df_tensor **out, const df_tensor *x, int groups,
                               const df_tensor *w, const df_tensor *b, float eps) {
  char b1[SHAPE_BUF], b2[SHAPE_BUF];
  if (x->ndim < 2) return df_error(DF_EINVAL, "%s: expected an input (N, C, ...), got %s", name, shape_of(b1, x));
  int64_t c = x->size[1];
  if (groups < 1) return df_error(DF_EINVAL, "%s: groups must be >= 1, got %d", name, groups);
  if (c % groups != 0)
    return df_error(DF_EINVAL, "%s: %lld channels of input %s do not divide into %d groups", name, (long long)c,
                    shape_of(b1, x), groups);
  const df_tensor *affine[2] = {w, b};
  const char *what[2] = {"weight", "bias"};
  for (int i = 0; i < 2; i++)
    if (affine[i] && (affine[i]->ndim != 1 || affine[i]->size[0] != c))
      return df_error(DF_EINVAL, "%s: %s must have shape {%lld} (the channels of input %s), got %s", name, what[i],
                      (long long)c, shape_of(b1, x), shape_of(b2, affine[i]));
  df_status st = check_eps(name, eps);
  if (st) return st;
  int64_t span = 1;
  for (int d = 2; d < x->ndim; d++) span *= x->size[d];
  return norm_op(name, out, x, w, b, x->size[0] * groups, groups, span, eps, silu);
}

df_status df_group_norm(df_tensor **out, const df_tensor *x, int groups, const df_tensor *w, const df_tensor *b,
                        float eps) {
  return group_norm_op("group_norm", false, out, x, groups, w, b, eps);
}

df_status df_group_norm_silu(df_tensor **out, const df_tensor *x, int groups, const df_tensor *w, const df_tensor *b,
                             float eps) {
  return group_norm_op("group_norm_silu", true, out, x, groups, w, b, eps);
}

df_status df_layer_norm(df_tensor **out, const df_tensor *x, int nlast, const df_tensor *w, const df_tensor *b,
                        float eps) {
  char b1[SHAPE_BUF], b2[SHAPE_BUF], b3[SHAPE_BUF];
  if (nlast < 1 || nlast > x->ndim)
    return df_error(DF_EINVAL, "layer_norm: cannot normalise over the last %d dims of input %s", nlast, shape_of(b1, x));
  int lead = x->ndim - nlast;
  const df_tensor *affine[2] = {w, b};
  const char *what[2] = {"weight", "bias"};
  for (int i = 0; i < 2; i++) {
    if (!affine[i]) continue;
    bool ok = affine[i]->ndim == nlast;
    for (int d = 0; ok && d < nlast; d++) ok = affine[i]->size[d] == x->size[lead + d];
    if (!ok)
      return df_error(DF_EINVAL, "layer_norm: %s of shape %s does not match the normalised shape %s of input %s", what[i],
                      shape_of(b1, affine[i]), df_format_shape(b2, sizeof b2, nlast, x->size + lead),
                      shape_of(b3, x));
  }
  df_status st = check_eps("layer_norm", eps);
  if (st) return st;
  int64_t rows = 1;
  for (int d = 0; d < lead; d++) rows *= x->size[d];
  return norm_op("layer_norm", out, x, w, b, rows, 1, 1, eps, false);
}

/* ---- softmax, log_softmax ------------------------------------------------
 * x viewed as (outer, n, inner); each line of n elements, stride inner, is
 * one item. saved[0] = the output y; iarg[0] = dim, iarg[1] = log. */

typedef struct {
  const float *x, *g;
  float *y; /* forward: output; backward: dx (and y is read from x's slot) */
  int64_t n, inner;
  bool log;
} softmax_job;

static void softmax_lines(int64_t l0, int64_t l1, void *arg) {
  const softmax_job *j = arg;
  int64_t n = j->n, step = j->inner;
  for (int64_t line = l0; line < l1; line++) {
    int64_t base = (line / step) * n * step + line % step;
    const float *x = j->x + base;
    float *y = j->y + base;
    float mx = -INFINITY;
    for (int64_t i = 0; i < n; i++)
      if (x[i * step] > mx || x[i * step] != x[i * step]) mx = x[i * step];
    if (mx != mx) { /* NaN in the line */
      for (int64_t i = 0; i < n; i++) y[i * step] = NAN;
      continue;
    }
    double sum = 0;
    for (int64_t i = 0; i < n; i++) {
      float e = expf(x[i * step] - mx);
      if (!j->log) y[i * step] = e;
      sum += e;
    }
    if (j->log) { /* (x - max) - log(sum): no cancellation against a large max */
      float ls = (float)log(sum);
      for (int64_t i = 0; i < n; i++) y[i * step] = (x[i * step] - mx) - ls;
    } else {
      float inv = (float)(1.0 / sum);
      for (int64_t i = 0; i < n; i++) y[i * step] *= inv;
    }
  }
}

/* softmax: dx = y (g - sum(g y));  log_softmax: dx = g - exp(y) sum(g) */
static void softmax_grad_lines(int64_t l0, int64_t l1, void *arg) {
  const softmax_job *j = arg;
  int64_t n = j->n, step = j->inner;
  for (int64_t line = l0; line < l1; line++) {
    int64_t base = (line / step) * n * step + line % step;
    const float *y = j->x + base, *g = j->g + base;
    float *dx = j->y + base;
    double acc = 0;
    for (int64_t i = 0; i < n; i++) acc += j->log ? (double)g[i * step] : (double)g[i * step] * y[i * step];
    float s = (float)acc;
    for (int64_t i = 0; i < n; i++)
      dx[i * step] = j->log ? g[i * step] - expf(y[i * step]) * s : y[i * step] * (g[i * step] - s);
  }
}

static void lines_of(const df_tensor *t, int dim, int64_t *outer, int64_t *n, int64_t *inner) {
  *outer = *inner = 1;
  for (int d = 0; d < dim; d++) *outer *= t->size[d];
  for (int d = dim + 1; d < t->ndim; d++) *inner *= t->size[d];
  *n = t->size[dim];
}

static df_status bw_softmax(df_node *node, const df_tensor *g, df_tensor **gi) {
  const df_tensor *y = node->saved[0];
  int64_t outer, n, inner;
  lines_of(y, (int)node->iarg[0], &outer, &n, &inner);
  df_tensor *gc = NULL, *dx = NULL;
  df_status st;
  if ((st = df_tensor_contiguous(&gc, g)) || (st = df_tensor_empty(&dx, y->ndim, y->size))) {
    df_tensor_release(gc);
    return st;
  }
  softmax_job j = {.x = df_tensor_data(y), .g = df_tensor_data(gc), .y = df_tensor_data(dx), .n = n, .inner = inner,
                   .log = node->iarg[1] != 0};
  parallel_range(outer * inner, 3 * n, softmax_grad_lines, &j);
  df_tensor_release(gc);
  gi[0] = dx;
  return DF_OK;
}

static df_status softmax_op(const char *name, bool log, df_tensor **out, const df_tensor *x, int dim) {
  if (dim < 0 || dim >= x->ndim) return df_error(DF_EINVAL, "%s: dim %d out of range for a %d-d tensor", name, dim + 1, x->ndim);
  bool previous = df_set_grad_enabled(false);
  df_tensor *xc = NULL, *y = NULL;
  df_status st;
  if (!(st = df_tensor_contiguous(&xc, x)) && !(st = df_tensor_empty(&y, x->ndim, x->size))) {
    int64_t outer, n, inner;
    lines_of(x, dim, &outer, &n, &inner);
    softmax_job j = {.x = df_tensor_data(xc), .y = df_tensor_data(y), .n = n, .inner = inner, .log = log};
    parallel_range(outer * inner, 3 * n, softmax_lines, &j);
  }
  df_tensor_release(xc);
  df_set_grad_enabled(previous);
  df_node *node;
  if (st || (st = df_autograd_record(y, name, bw_softmax, 1, &x, &node)) || (node && (st = df_node_save(node, 0, y)))) {
    df_tensor_release(y);
    return st;
  }
  if (node) {
    node->iarg[0] = dim;
    node->iarg[1] = log;
  }
  *out = y;
  return DF_OK;
}

df_status df_softmax(df_tensor **out, const df_tensor *x, int dim) { return softmax_op("softmax", false, out, x, dim); }

df_status df_log_softmax(df_tensor **out, const df_tensor *x, int dim) {
  return softmax_op("log_softmax", true, out, x, dim);
}

/* ---- dropout ---------------------------------------------------------------
 * The keep mask comes from df_rand_: element i is kept when its uniform draw
 * u_i >= p, so the mask depends only on the generator's (seed, offset).
 * Backward draws it again from a copy of (seed, offset) as they were before
 * the forward's draw, so the node keeps no mask, and the shared generator is
 * left alone (a backward run twice gets the same mask).
 * iarg = {seed, offset} (bit copies); scalar[0] = p. The identity node saves
 * nothing. */

static df_status bw_identity(df_node *n, const df_tensor *g, df_tensor **gi) {
  (void)n;
  df_tensor_retain((df_tensor *)g);
  gi[0] = (df_tensor *)g;
  return DF_OK;
}

typedef struct {
  float *out;
  const float *other; /* NULL: out holds the draws, and becomes the mask */
  float p, scale;
  uint64_t seed, offset;
} mask_job;

#define MASK_PIECE 1024 /* draws made at once, on the stack */

/* out[i] = (u_i >= p ? scale : 0) * other[i], u_i drawn piece by piece as it
 * goes: one pass over memory rather than three (draw, mask, multiply), and
 * bitwise the same as those (the product commutes) */
static void mask_range(int64_t i0, int64_t i1, void *arg) {
  const mask_job *j = arg;
  if (!j->other) {
    for (int64_t i = i0; i < i1; i++) j->out[i] = j->out[i] >= j->p ? j->scale : 0.0f;
    return;
  }
  float u[MASK_PIECE];
  for (int64_t a = i0; a < i1; a += MASK_PIECE) {
    int64_t n = i1 - a < MASK_PIECE ? i1 - a : MASK_PIECE;
    df_uniform_at(u, a, n, j->seed, j->offset);
    for (int64_t k = 0; k < n; k++) j->out[a + k] = (u[k] >= j->p ? j->scale : 0.0f) * j->other[a + k];
  }
}

/* out (contiguous, in place) = the scaled mask (0 or 1 / (1 - p)) times
 * other, drawing from g and advancing it as df_rand_ does. Where other is
 * not contiguous: the mask drawn into out, then multiplied by other. */
static df_status mask_times(df_tensor *out, const df_tensor *other, float p, df_generator *g) {
  mask_job j = {.out = df_tensor_data(out), .p = p, .scale = (float)(1.0 / (1.0 - (double)p))};
  int64_t numel = df_tensor_numel(out);
  if (df_tensor_is_contiguous(other) && df_tensor_numel(other) == numel) {
    j.other = df_tensor_data((df_tensor *)other);
    j.seed = g->seed;
    j.offset = g->offset;
    df_tensor_bump_version(out);
    parallel_range(numel, 16, mask_range, &j);
    g->offset += (uint64_t)((numel + 3) / 4); /* as df_rand_ would */
    return DF_OK;
  }
  df_status st = df_rand_(out, g, 0.0f, 1.0f);
  if (st) return st;
  parallel_range(numel, 1, mask_range, &j);
  return df_binary_(DF_MUL, out, other);
}

static df_status bw_dropout(df_node *n, const df_tensor *g, df_tensor **gi) {
  df_generator at_forward;
  memcpy(&at_forward.seed, &n->iarg[0], sizeof at_forward.seed);
  memcpy(&at_forward.offset, &n->iarg[1], sizeof at_forward.offset);
  df_tensor *dx;
  df_status st = df_tensor_empty(&dx, n->inputs[0].ndim, n->inputs[0].size);
  if (st) return st;
  if ((st = mask_times(dx, g, (float)n->scalar[0], &at_forward))) {
    df_tensor_release(dx);
    return st;
  }
  gi[0] = dx;
  return DF_OK;
}

/* dropout's result again: its input recomputed by the op that made it,
 * times the mask redrawn from the saved generator state (or the input
 * itself, for dropout in eval mode or p = 0) */
static df_status dropout_forward_again(df_node *n, df_tensor **out) {
  df_tensor *x, *y;
  df_status st = df_node_forward_again(n->inputs[0].node, &x);
  if (st || n->backward == bw_identity) {
    *out = st ? NULL : x;
    return st;
  }
  df_generator at_forward;
  memcpy(&at_forward.seed, &n->iarg[0], sizeof at_forward.seed);
  memcpy(&at_forward.offset, &n->iarg[1], sizeof at_forward.offset);
  if (!(st = df_tensor_empty(&y, x->ndim, x->size)) && (st = mask_times(y, x, (float)n->scalar[0], &at_forward)))
    df_tensor_release(y);
  df_tensor_release(x);
  if (!st) *out = y;
  return st;
}

/* when dropout's input can be recomputed (its producer's own result, not
 * written in place since), so can its result */
static void dropout_may_recompute(df_node *node, const df_tensor *x) {
  df_node *producer = node->inputs[0].node;
  if (producer && producer->forward_again && x->grad_fn == producer &&
      x->storage->version == producer->result_version)
    node->forward_again = dropout_forward_again;
}

df_status df_dropout(df_tensor **out, const df_tensor *x, float p, bool train, df_generator *g) {
  if (!(p >= 0.0f && p < 1.0f)) return df_error(DF_EINVAL, "dropout: p must be in [0, 1), got %g", (double)p);
  df_tensor *y = NULL;
  df_status st;
  df_node *node;
  if (!train || p == 0.0f) {
    if ((st = df_tensor_alias(&y, x))) return st;
    if ((st = df_autograd_record(y, "dropout", bw_identity, 1, &x, &node))) {
      df_tensor_release(y);
      return st;
    }
    if (node) dropout_may_recompute(node, x);
    *out = y;
    return DF_OK;
  }
  if (!g) g = df_default_generator();
  df_generator before = *g;
  bool previous = df_set_grad_enabled(false);
  if (!(st = df_tensor_empty(&y, x->ndim, x->size))) st = mask_times(y, x, p, g);
  df_set_grad_enabled(previous);
  if (st || (st = df_autograd_record(y, "dropout", bw_dropout, 1, &x, &node))) {
    df_tensor_release(y);
    return st;
  }
  if (node) {
    memcpy(&node->iarg[0], &before.seed, sizeof before.seed);
    memcpy(&node->iarg[1], &before.offset, sizeof before.offset);
    node->scalar[0] = p;
    dropout_may_recompute(node, x);
  }
  *out = y;
  return DF_OK;
}

/* ---- embedding ---------------------------------------------------------------
 * out[i, :] = weight[index[i], :]; backward scatter-adds g's rows into a
 * zero gradient for weight, split over weight's columns (disjoint outputs;
 * each column sums in index order). saved[0] = the contiguous indices. */

typedef struct {
  const float *idx, *src;
  float *dst;
  int64_t count, dim;
  int64_t row_stride, col_stride; /* weight's, for the forward gather */
} embed_job;

static void embed_gather(int64_t i0, int64_t i1, void *arg) {
  const embed_job *j = arg;
  for (int64_t i = i0; i < i1; i++) {
    const float *row = j->src + (int64_t)j->idx[i] * j->row_stride;
    float *o = j->dst + i * j->dim;
    for (int64_t c = 0; c < j->dim; c++) o[c] = row[c * j->col_stride];
  }
}

static void embed_scatter(int64_t c0, int64_t c1, void *arg) {
  const embed_job *j = arg; /* src = g (count, dim), dst = dW (num, dim) */
  for (int64_t i = 0; i < j->count; i++) {
    const float *g = j->src + i * j->dim;
    float *d = j->dst + (int64_t)j->idx[i] * j->dim;
    for (int64_t c = c0; c < c1; c++) d[c] += g[c];
  }
}

static df_status bw_embedding(df_node *n, const df_tensor *g, df_tensor **gi) {
  const df_tensor *idx = n->saved[0];
  const df_edge *w = &n->inputs[0];
  df_tensor *gc = NULL, *dw = NULL;
  df_status st;
  if ((st = df_tensor_contiguous(&gc, g)) || (st = df_tensor_zeros(&dw, w->ndim, w->size))) {
    df_tensor_release(gc);
    return st;
  }
  embed_job j = {.idx = df_tensor_data(idx), .src = df_tensor_data(gc), .dst = df_tensor_data(dw),
                 .count = df_tensor_numel(idx), .dim = w->size[1]};
  parallel_range(j.dim, j.count, embed_scatter, &j);
  df_tensor_release(gc);
  gi[0] = dw;
  return DF_OK;
}

df_status df_embedding(df_tensor **out, const df_tensor *indices, const df_tensor *weight) {
  char b1[SHAPE_BUF];
  if (weight->ndim != 2) return df_error(DF_EINVAL, "embedding: weight must be 2-d (num, dim), got %s", shape_of(b1, weight));
  if (indices->ndim + 1 > DF_MAX_DIMS)
    return df_error(DF_EINVAL, "embedding: indices %s would give a result of more than %d dims", shape_of(b1, indices),
                    DF_MAX_DIMS);
  int64_t num = weight->size[0], dim = weight->size[1];
  bool previous = df_set_grad_enabled(false);
  df_tensor *idx = NULL, *y = NULL;
  df_status st = df_tensor_contiguous(&idx, indices);
  df_set_grad_enabled(previous);
  if (st) return st;
  const float *ip = df_tensor_data(idx);
  int64_t count = df_tensor_numel(idx);
  for (int64_t i = 0; i < count && !st; i++) {
    float v = ip[i];
    if (!(v == floorf(v)) || isinf(v))
      st = df_error(DF_EINVAL, "embedding: index %g is not an integer", (double)v);
    else if (v < 0 || v >= (float)num)
      st = df_error(DF_EINVAL, "embedding: index %g out of range for a weight of %lld rows", (double)v, (long long)num);
  }
  int64_t size[DF_MAX_DIMS];
  memcpy(size, indices->size, sizeof(int64_t) * (size_t)indices->ndim);
  size[indices->ndim] = dim;
  if (st || (st = df_tensor_empty(&y, indices->ndim + 1, size))) goto fail;
  embed_job j = {.idx = ip, .src = df_tensor_data(weight), .dst = df_tensor_data(y), .count = count, .dim = dim,
                 .row_stride = weight->stride[0], .col_stride = weight->stride[1]};
  parallel_range(count, dim, embed_gather, &j);
  df_node *node;
  if ((st = df_autograd_record(y, "embedding", bw_embedding, 1, &weight, &node)) ||
      (node && (st = df_node_save(node, 0, idx))))
    goto fail;
  df_tensor_release(idx);
  *out = y;
  return DF_OK;
fail:
  df_tensor_release(idx);
  df_tensor_release(y);
  return st;
}

/* ---- timestep embedding ----------------------------------------------------
 * t (N) -> (N, dim): sin(t f_i) in columns [0, h), cos(t f_i) in [h, 2h),
 * f_i = max_period^(-i / h), h = dim / 2; an odd dim ends with a zero
 * column. Computed in double. No gradient. */

df_status df_timestep_embedding(df_tensor **out, const df_tensor *t, int dim, float max_period) {
  char b1[SHAPE_BUF];
  if (t->ndim != 1) return df_error(DF_EINVAL, "timestep_embedding: expected timesteps of shape (N), got %s", shape_of(b1, t));
  if (dim < 1) return df_error(DF_EINVAL, "timestep_embedding: dim must be >= 1, got %d", dim);
  if (!(max_period > 0.0f) || isinf(max_period))
    return df_error(DF_EINVAL, "timestep_embedding: max_period must be finite and > 0, got %g", (double)max_period);
  int64_t nt = t->size[0], half = dim / 2, size[2] = {nt, dim};
  df_tensor *y;
  df_status st = df_tensor_zeros(&y, 2, size);
  if (st) return st;
  const float *tp = df_tensor_data(t);
  float *yp = df_tensor_data(y);
  for (int64_t r = 0; r < nt; r++) {
    double tv = tp[r * t->stride[0]];
    for (int64_t i = 0; i < half; i++) {
      double arg = tv * pow((double)max_period, -(double)i / (double)half);
      yp[r * dim + i] = (float)sin(arg);
      yp[r * dim + half + i] = (float)cos(arg);
    }
  }
  *out = y;
  return DF_OK;
}
