/* conv.c — 2-d convolution over NCHW tensors, forward and both backward
 * passes, lowered to matrix products (df_gemm) through im2col / col2im.
 *
 * For one image x[n] (C, H, W) the column matrix `col` has one row per
 * (input channel, kernel row, kernel column) and one column per output
 * position: (C * kh * kw) x (H' * W'). Group g owns the rows of its channels,
 * a K x L block with K = C/groups * kh * kw, L = H' * W', and its weights
 * are an Og x K row-major block of w, so
 *   forward   out[n]_g  = w_g · col_g                       (Og x L)
 *   grad x    dcol_g    = w_gᵀ · dout[n]_g, col2im into dx[n]
 *   grad w    dw_g     += dout[n]_g · col_gᵀ                (Og x K)
 *   grad b    db[o]     = sum of dout[:, o, :, :]
 * The batch is walked in chunks of images whose columns sit side by side,
 * so one product covers a whole chunk (see "im2col / col2im over a chunk"
 * below); df_gemm spreads each product over the pool, and im2col / col2im
 * run on the pool over disjoint (image, channel) pairs. Padding reads as
 * zeros. */
#include <limits.h>
#include <stdint.h>
#include <string.h>

#include <cblas.h>

#include "../core/iter.h"
#include "../df.h"
#include "conv_direct.h"

/* ---- geometry ------------------------------------------------------------ */

typedef struct {
  int64_t n, c, h, w;  /* input (N, C, H, W) */
  int64_t o, kh, kw;   /* weight (O, C / groups, kh, kw) */
  int64_t oh, ow;      /* output plane */
  int64_t groups, cg, og;
  int64_t k;           /* rows of one group's column block: cg * kh * kw */
  int64_t l;           /* output positions per image: oh * ow */
  int64_t sh, sw, ph, pw, dh, dw;
} conv_geom;

static void geom_init(conv_geom *g, const int64_t *xs, const int64_t *ws, const int stride[2], const int padding[2],
                      const int dilation[2], int groups) {
  g->n = xs[0];
  g->c = xs[1];
  g->h = xs[2];
  g->w = xs[3];
  g->o = ws[0];
  g->kh = ws[2];
  g->kw = ws[3];
  g->sh = stride[0];
  g->sw = stride[1];
  g->ph = padding[0];
  g->pw = padding[1];
  g->dh = dilation[0];
  g->dw = dilation[1];
  g->groups = groups;
  g->cg = ws[1];
  g->og = g->o / groups;
  g->k = g->cg * g->kh * g->kw;
  g->oh = (g->h + 2 * g->ph - g->dh * (g->kh - 1) - 1) / g->sh + 1;
  g->ow = (g->w + 2 * g->pw - g->dw * (g->kw - 1) - 1) / g->sw + 1;
  g->l = g->oh * g->ow;
}

static df_status conv_check(const df_tensor *x, const df_tensor *w, const df_tensor *b, const df_conv2d_params *p,
                            conv_geom *g) {
  char b1[128], b2[128];
  if (x->ndim != 4)
    return df_error(DF_EINVAL, "conv2d: expected a 4-d input (N, C, H, W), got shape %s",
                    df_format_shape(b1, sizeof b1, x->ndim, x->size));
  if (w->ndim != 4)
    return df_error(DF_EINVAL, "conv2d: expected a 4-d weight (O, C / groups, kh, kw), got shape %s",
                    df_format_shape(b1, sizeof b1, w->ndim, w->size));
  if (p->stride[0] < 1 || p->stride[1] < 1)
    return df_error(DF_EINVAL, "conv2d: stride must be >= 1, got {%d,%d}", p->stride[0], p->stride[1]);
  if (p->padding[0] < 0 || p->padding[1] < 0)
    return df_error(DF_EINVAL, "conv2d: padding must be >= 0, got {%d,%d}", p->padding[0], p->padding[1]);
  if (p->dilation[0] < 1 || p->dilation[1] < 1)
    return df_error(DF_EINVAL, "conv2d: dilation must be >= 1, got {%d,%d}", p->dilation[0], p->dilation[1]);
  if (p->groups < 1) return df_error(DF_EINVAL, "conv2d: groups must be >= 1, got %d", p->groups);
  int64_t c = x->size[1], o = w->size[0], groups = p->groups;
  if (c % groups)
    return df_error(DF_EINVAL, "conv2d: input has %lld channels, not divisible by groups = %d", (long long)c, p->groups);
  if (o % groups)
    return df_error(DF_EINVAL, "conv2d: weight has %lld output channels, not divisible by groups = %d", (long long)o,
                    p->groups);
  if (w->size[1] != c / groups) {
    if (groups == 1)
      return df_error(DF_EINVAL, "conv2d: weight has %lld input channels, input has %lld", (long long)w->size[1],
                      (long long)c);
    return df_error(DF_EINVAL, "conv2d: weight has %lld input channels per group x %d groups, input has %lld",
                    (long long)w->size[1], p->groups, (long long)c);
  }
  if (w->size[2] < 1 || w->size[3] < 1)
    return df_error(DF_EINVAL, "conv2d: weight %s has an empty kernel", df_format_shape(b1, sizeof b1, w->ndim, w->size));
  if (b && (b->ndim != 1 || b->size[0] != o))
    return df_error(DF_EINVAL, "conv2d: bias must have shape {%lld} (one per output channel), got %s", (long long)o,
                    df_format_shape(b1, sizeof b1, b->ndim, b->size));
  /* the dilated kernel must fit in the padded input (sizes here are far below
   * INT64_MAX / INT_MAX, so dilation * (k - 1) can overflow only for absurd k) */
  for (int d = 0; d < 2; d++) {
    int64_t k = w->size[2 + d], dil = p->dilation[d];
    if (k - 1 > (INT64_MAX / 4) / dil)
      return df_error(DF_EINVAL, "conv2d: the dilated kernel is too large");
  }
  int64_t ekh = (int64_t)p->dilation[0] * (w->size[2] - 1) + 1, ekw = (int64_t)p->dilation[1] * (w->size[3] - 1) + 1;
  int64_t padh = x->size[2] + 2 * (int64_t)p->padding[0], padw = x->size[3] + 2 * (int64_t)p->padding[1];
  if (padh < ekh || padw < ekw)
    return df_error(DF_EINVAL,
                    "conv2d: input %s padded by {%d,%d} is %lldx%lld, smaller than the dilated kernel %lldx%lld "
                    "(the output would be empty)",
                    df_format_shape(b2, sizeof b2, x->ndim, x->size), p->padding[0], p->padding[1], (long long)padh,
                    (long long)padw, (long long)ekh, (long long)ekw);
  geom_init(g, x->size, w->size, p->stride, p->padding, p->dilation, p->groups);
  if (g->k > INT_MAX || g->l > INT_MAX || g->oh > INT_MAX || g->ow > INT_MAX || g->og > INT_MAX)
    return df_error(DF_EINVAL, "conv2d: matrix dims above %d are not supported by BLAS (kernel block %lld, output plane %lld)",
                    INT_MAX, (long long)g->k, (long long)g->l);
  /* the workspace: groups * k <= INT_MAX^2, so one more check bounds its bytes */
  if (g->groups * g->k > (int64_t)(SIZE_MAX / sizeof(float) / 2) / g->l)
    return df_error(DF_ENOMEM, "conv2d: the im2col workspace would be too large");
  return DF_OK;
}

/* ---- im2col / col2im over a chunk of images -------------------------------
 * The images of a chunk sit side by side in one column matrix: row
 * (c, ki, kj) holds, for image b of the chunk, its L output positions at
 * columns b * L .. b * L + L - 1 (leading dimension ld = chunk * L). One GEMM
 * then covers the whole chunk, which keeps BLAS efficient on the small
 * planes (8x8) of a U-Net's inner levels. */

typedef struct {
  const conv_geom *g;
  const float *x; /* im2col: the chunk's first image (C, H, W) */
  float *col;     /* (C * kh * kw, ld) */
  float *dx;      /* col2im: the chunk's first image gradient, accumulated */
  int64_t ld, per_task, items; /* items = images * C */
} col_job;

static void im2col_task(int64_t task, void *arg) {
  const col_job *j = arg;
  const conv_geom *g = j->g;
  int64_t end = (task + 1) * j->per_task < j->items ? (task + 1) * j->per_task : j->items;
  for (int64_t item = task * j->per_task; item < end; item++) {
    int64_t b = item / g->c, c = item % g->c;
    const float *xp = j->x + (b * g->c + c) * g->h * g->w;
    for (int64_t ki = 0; ki < g->kh; ki++)
      for (int64_t kj = 0; kj < g->kw; kj++) {
        float *row = j->col + ((c * g->kh + ki) * g->kw + kj) * j->ld + b * g->l;
        int64_t iw0 = kj * g->dw - g->pw;
        for (int64_t oh = 0; oh < g->oh; oh++) {
          int64_t ih = oh * g->sh - g->ph + ki * g->dh;
          float *r = row + oh * g->ow;
          if (ih < 0 || ih >= g->h) {
            memset(r, 0, sizeof(float) * (size_t)g->ow);
            continue;
          }
          const float *xr = xp + ih * g->w;
          if (g->sw == 1) { /* one contiguous run, zeros where it leaves the row */
            int64_t lo = iw0 < 0 ? -iw0 : 0, hi = g->w - iw0 < g->ow ? g->w - iw0 : g->ow;
            if (hi < lo) hi = lo;
            for (int64_t ow = 0; ow < lo; ow++) r[ow] = 0.0f;
            if (hi > lo) memcpy(r + lo, xr + iw0 + lo, sizeof(float) * (size_t)(hi - lo));
            for (int64_t ow = hi; ow < g->ow; ow++) r[ow] = 0.0f;
            continue;
          }
          for (int64_t ow = 0; ow < g->ow; ow++) {
            int64_t iw = iw0 + ow * g->sw;
            r[ow] = iw >= 0 && iw < g->w ? xr[iw] : 0.0f;
          }
        }
      }
  }
}

static void col2im_task(int64_t task, void *arg) {
  const col_job *j = arg;
  const conv_geom *g = j->g;
  int64_t end = (task + 1) * j->per_task < j->items ? (task + 1) * j->per_task : j->items;
  for (int64_t item = task * j->per_task; item < end; item++) {
    int64_t b = item / g->c, c = item % g->c;
    float *dp = j->dx + (b * g->c + c) * g->h * g->w;
    for (int64_t ki = 0; ki < g->kh; ki++)
      for (int64_t kj = 0; kj < g->kw; kj++) {
        const float *row = j->col + ((c * g->kh + ki) * g->kw + kj) * j->ld + b * g->l;
        int64_t iw0 = kj * g->dw - g->pw;
        for (int64_t oh = 0; oh < g->oh; oh++) {
          int64_t ih = oh * g->sh - g->ph + ki * g->dh;
          if (ih < 0 || ih >= g->h) continue;
          const float *r = row + oh * g->ow;
          float *dr = dp + ih * g->w;
          if (g->sw == 1) {
            int64_t lo = iw0 < 0 ? -iw0 : 0, hi = g->w - iw0 < g->ow ? g->w - iw0 : g->ow;
            for (int64_t ow = lo; ow < hi; ow++) dr[iw0 + ow] += r[ow];
            continue;
          }
          for (int64_t ow = 0; ow < g->ow; ow++) {
            int64_t iw = iw0 + ow * g->sw;
            if (iw >= 0 && iw < g->w) dr[iw] += r[ow];
          }
        }
      }
  }
}

static void im2col(const conv_geom *g, const float *x, int64_t images, float *col) {
  col_job j = {.g = g, .x = x, .col = col, .ld = images * g->l, .items = images * g->c};
  df_parallel_for(df_task_split(j.items, g->kh * g->kw * g->l, &j.per_task), im2col_task, &j);
}

static void col2im(const conv_geom *g, const float *col, int64_t images, float *dx) {
  col_job j = {.g = g, .col = (float *)col, .dx = dx, .ld = images * g->l, .items = images * g->c};
  df_parallel_for(df_task_split(j.items, g->kh * g->kw * g->l, &j.per_task), col2im_task, &j);
}

/* (N, O, L) rows of images n0.. into the chunk layout (O, images * L), and back */
typedef struct {
  const conv_geom *g;
  float *chunk, *nol;
  int64_t images, per_task;
  bool to_chunk, accumulate;
} gather_job;

static void gather_task(int64_t task, void *arg) {
  const gather_job *j = arg;
  const conv_geom *g = j->g;
  int64_t items = j->images * g->o, end = (task + 1) * j->per_task < items ? (task + 1) * j->per_task : items;
  size_t bytes = sizeof(float) * (size_t)g->l;
  for (int64_t item = task * j->per_task; item < end; item++) {
    int64_t b = item / g->o, o = item % g->o;
    float *c = j->chunk + o * j->images * g->l + b * g->l, *r = j->nol + (b * g->o + o) * g->l;
    if (j->to_chunk) memcpy(c, r, bytes);
    else if (j->accumulate)
      for (int64_t i = 0; i < g->l; i++) r[i] += c[i];
    else memcpy(r, c, bytes);
  }
}

static void gather(const conv_geom *g, float *chunk, float *nol, int64_t images, bool to_chunk, bool accumulate) {
  gather_job j = {.g = g, .chunk = chunk, .nol = nol, .images = images, .to_chunk = to_chunk, .accumulate = accumulate};
  df_parallel_for(df_task_split(images * g->o, g->l, &j.per_task), gather_task, &j);
}

/* Images per chunk: the column and output blocks stay within a few MiB. */
#define CHUNK_FLOATS ((int64_t)1 << 21)
static int64_t chunk_images(const conv_geom *g) {
  int64_t per_image = (g->groups * g->k + g->o) * g->l;
  int64_t images = per_image > 0 ? CHUNK_FLOATS / per_image : g->n;
  if (images < 1) images = 1;
  return images < g->n ? images : g->n;
}

/* the direct kernels' view of a convolution they apply to */
static direct_geom direct_of(const conv_geom *g) {
  return (direct_geom){.n = g->n, .c = g->c, .h = g->h, .w = g->w, .o = g->o, .kh = g->kh, .kw = g->kw,
                       .ph = g->ph, .pw = g->pw, .oh = g->oh, .ow = g->ow};
}

static bool use_direct(const conv_geom *g) {
  int stride[2] = {(int)g->sh, (int)g->sw}, padding[2] = {(int)g->ph, (int)g->pw}, dilation[2] = {(int)g->dh, (int)g->dw};
  return g->n > 0 && g->k > 0 && g->og > 0 &&
         conv_direct_applies(g->kh, g->kw, stride, padding, dilation, (int)g->groups);
}

/* ---- forward ------------------------------------------------------------- */

/* x (N, C, H, W), w (O, C / groups, kh, kw), b (O) or NULL -> (N, O, H', W') */
static df_status conv_forward(df_tensor **out, const df_tensor *x_in, const df_tensor *w_in, const df_tensor *b,
                              const conv_geom *g) {
  df_tensor *x = NULL, *w = NULL, *r = NULL, *bc = NULL;
  float *col = NULL, *tmp = NULL;
  int64_t size[4] = {g->n, g->o, g->oh, g->ow};
  df_status st;
  if ((st = df_tensor_contiguous(&x, x_in)) || (st = df_tensor_contiguous(&w, w_in)) ||
      (st = df_tensor_empty(&r, 4, size)))
    goto done;
  if (use_direct(g)) {
    direct_geom dg = direct_of(g);
    if (!(b && (st = df_tensor_contiguous(&bc, b))))
      st = conv_direct_forward(&dg, df_tensor_data(x), df_tensor_data(w), false, bc ? df_tensor_data(bc) : NULL,
                               df_tensor_data(r));
    goto done;
  }
  bool products = g->k > 0 && g->og > 0;
  int64_t chunk = chunk_images(g);
  if (g->n > 0 && products &&
      (!(col = df_malloc(sizeof(float) * (size_t)(g->groups * g->k * chunk * g->l))) ||
       !(tmp = df_malloc(sizeof(float) * (size_t)(g->o * chunk * g->l))))) {
    st = df_error(DF_ENOMEM, "conv2d: out of memory for the im2col workspace");
    goto done;
  }
  const float *xp = df_tensor_data(x), *wp = df_tensor_data(w);
  const float *bp = b ? df_tensor_data(b) : NULL;
  float *op = df_tensor_data(r);
  if (!products) memset(op, 0, sizeof(float) * (size_t)(g->n * g->o * g->l));
  for (int64_t n0 = 0; products && n0 < g->n; n0 += chunk) {
    int64_t images = g->n - n0 < chunk ? g->n - n0 : chunk, ld = images * g->l;
    im2col(g, xp + n0 * g->c * g->h * g->w, images, col);
    if (bp) { /* the products add onto the bias (beta = 1) */
      for (int64_t o = 0; o < g->o; o++) {
        float v = bp[o * b->stride[0]];
        for (int64_t i = 0; i < ld; i++) tmp[o * ld + i] = v;
      }
    }
    for (int64_t gi = 0; gi < g->groups; gi++)
      df_gemm(false, false, g->og, ld, g->k, 1.0f, wp + gi * g->og * g->k, g->k, col + gi * g->k * ld, ld, bp ? 1.0f : 0.0f, tmp + gi * g->og * ld, ld);
    gather(g, tmp, op + n0 * g->o * g->l, images, false, false);
  }
  if (!products && bp) {
    for (int64_t n = 0; n < g->n; n++)
      for (int64_t o = 0; o < g->o; o++)
        for (int64_t i = 0; i < g->l; i++) op[(n * g->o + o) * g->l + i] = bp[o * b->stride[0]];
  }
done:
  df_free(col);
  df_free(tmp);
  df_tensor_release(bc);
  df_tensor_release(x);
  df_tensor_release(w);
  if (st) {
    df_tensor_release(r);
    return st;
  }
  *out = r;
  return DF_OK;
}

/* ---- backward ------------------------------------------------------------ */

typedef struct {
  const conv_geom *g;
  const float *dout; /* (N, O, L) */
  float *db;
  int64_t per_task;
} bias_job;

/* Each plane is summed in 16 float lanes (which the compiler vectorises),
 * the planes in double: the order is fixed by the shape alone. */
static double plane_sum(const float *p, int64_t l) {
  float lanes[16] = {0};
  int64_t i = 0;
  for (; i + 16 <= l; i += 16)
    for (int k = 0; k < 16; k++) lanes[k] += p[i + k];
  double acc = 0;
  for (int k = 0; k < 16; k++) acc += lanes[k];
  for (; i < l; i++) acc += p[i];
  return acc;
}

static void bias_task(int64_t task, void *arg) {
  const bias_job *j = arg;
  const conv_geom *g = j->g;
  int64_t o1 = (task + 1) * j->per_task < g->o ? (task + 1) * j->per_task : g->o;
  for (int64_t o = task * j->per_task; o < o1; o++) {
    double acc = 0;
    for (int64_t n = 0; n < g->n; n++) acc += plane_sum(j->dout + (n * g->o + o) * g->l, g->l);
    j->db[o] = (float)acc;
  }
}

/* iarg = {stride h, w, padding h, w, dilation h, w, groups}; inputs x, w[, b];
 * saved[0] = x (when w needs a gradient), saved[1] = w (when x does). */
static df_status bw_conv2d(df_node *node, const df_tensor *grad, df_tensor **gi) {
  const df_edge *ex = &node->inputs[0], *ew = &node->inputs[1];
  int stride[2] = {(int)node->iarg[0], (int)node->iarg[1]}, padding[2] = {(int)node->iarg[2], (int)node->iarg[3]};
  int dilation[2] = {(int)node->iarg[4], (int)node->iarg[5]};
  conv_geom g;
  geom_init(&g, ex->size, ew->size, stride, padding, dilation, (int)node->iarg[6]);
  bool need_x = df_node_needs_grad(node, 0), need_w = df_node_needs_grad(node, 1);
  bool need_b = node->ninputs > 2 && df_node_needs_grad(node, 2);
  bool products = g.k > 0 && g.og > 0;
  df_tensor *dout = NULL, *saved_x = NULL, *x = NULL, *w = NULL, *dx = NULL, *dw = NULL, *db = NULL;
  float *col = NULL, *tmp = NULL;
  df_status st;
  int64_t chunk = chunk_images(&g);
  direct_geom dg = direct_of(&g);
  bool direct_x = use_direct(&g), direct_w = direct_x && conv_direct_grad_weight_applies(&dg);
  bool gemm_x = need_x && !direct_x, gemm_w = need_w && !direct_w; /* what im2col + GEMM does */
  if ((st = df_tensor_contiguous(&dout, grad))) goto done;
  /* the GEMM path adds into its gradients; the direct kernels write them whole */
  if (need_x && ((st = df_tensor_contiguous(&w, node->saved[1])) ||
                 (st = (gemm_x ? df_tensor_zeros : df_tensor_empty)(&dx, 4, ex->size))))
    goto done;
  if (need_w && ((st = df_node_saved(node, 0, &saved_x)) || (st = df_tensor_contiguous(&x, saved_x)) ||
                 (st = (gemm_w ? df_tensor_zeros : df_tensor_empty)(&dw, 4, ew->size))))
    goto done;
  if (need_b && (st = df_tensor_empty(&db, 1, &g.o))) goto done;
  float *gp = df_tensor_data(dout);
  if (need_w && direct_w && (st = conv_direct_grad_weight(&dg, df_tensor_data(x), gp, df_tensor_data(dw)))) goto done;
  if (need_x && direct_x) { /* dx = conv(dout, flipped wᵀ), padding k - 1 - p, back onto the input plane */
    direct_geom back = {.n = g.n, .c = g.o, .h = g.oh, .w = g.ow, .o = g.c, .kh = g.kh, .kw = g.kw,
                        .ph = g.kh - 1 - g.ph, .pw = g.kw - 1 - g.pw, .oh = g.h, .ow = g.w};
    if ((st = conv_direct_forward(&back, gp, df_tensor_data(w), true, NULL, df_tensor_data(dx)))) goto done;
  }
  if ((gemm_x || gemm_w) && g.n > 0 && products &&
      (!(col = df_malloc(sizeof(float) * (size_t)(g.groups * g.k * chunk * g.l))) ||
       !(tmp = df_malloc(sizeof(float) * (size_t)(g.o * chunk * g.l))))) {
    st = df_error(DF_ENOMEM, "conv2d: out of memory for the im2col workspace");
    goto done;
  }
  for (int64_t n0 = 0; products && (gemm_x || gemm_w) && n0 < g.n; n0 += chunk) {
    int64_t images = g.n - n0 < chunk ? g.n - n0 : chunk, ld = images * g.l;
    gather(&g, tmp, gp + n0 * g.o * g.l, images, true, false); /* dout of the chunk as (O, images * L) */
    if (gemm_w) {
      float *dwp = df_tensor_data(dw);
      im2col(&g, df_tensor_data(x) + n0 * g.c * g.h * g.w, images, col);
      for (int64_t gr = 0; gr < g.groups; gr++)
        df_gemm(false, true, g.og, g.k, ld, 1.0f, tmp + gr * g.og * ld, ld, col + gr * g.k * ld, ld, 1.0f, dwp + gr * g.og * g.k, g.k);
    }
    if (gemm_x) {
      const float *wp = df_tensor_data(w);
      for (int64_t gr = 0; gr < g.groups; gr++)
        df_gemm(true, false, g.k, ld, g.og, 1.0f, wp + gr * g.og * g.k, g.k, tmp + gr * g.og * ld, ld, 0.0f, col + gr * g.k * ld, ld);
      col2im(&g, col, images, df_tensor_data(dx) + n0 * g.c * g.h * g.w);
    }
  }
  if (need_b) {
    bias_job j = {.g = &g, .dout = gp, .db = df_tensor_data(db)};
    df_parallel_for(df_task_split(g.o, g.n * g.l, &j.per_task), bias_task, &j);
  }
done:
  df_free(col);
  df_free(tmp);
  df_tensor_release(dout);
  df_tensor_release(saved_x);
  df_tensor_release(x);
  df_tensor_release(w);
  if (st) {
    df_tensor_release(dx);
    df_tensor_release(dw);
    df_tensor_release(db);
    return st;
  }
  gi[0] = dx;
  gi[1] = dw;
  if (need_b) gi[2] = db;
  return DF_OK;
}

df_status df_conv2d(df_tensor **out, const df_tensor *x, const df_tensor *w, const df_tensor *b,
                    const df_conv2d_params *p) {
  static const df_conv2d_params defaults = {.stride = {1, 1}, .padding = {0, 0}, .dilation = {1, 1}, .groups = 1};
  if (!p) p = &defaults;
  conv_geom g;
  df_status st = conv_check(x, w, b, p, &g);
  if (st) return st;
  bool previous = df_set_grad_enabled(false); /* internal copies are not part of the graph */
  df_tensor *r;
  st = conv_forward(&r, x, w, b, &g);
  df_set_grad_enabled(previous);
  if (st) return st;
  const df_tensor *in[3] = {x, w, b};
  df_node *node;
  if ((st = df_autograd_record(r, "conv2d", bw_conv2d, b ? 3 : 2, in, &node))) goto fail;
  if (node) {
    node->iarg[0] = p->stride[0];
    node->iarg[1] = p->stride[1];
    node->iarg[2] = p->padding[0];
    node->iarg[3] = p->padding[1];
    node->iarg[4] = p->dilation[0];
    node->iarg[5] = p->dilation[1];
    node->iarg[6] = p->groups;
    /* x may be recomputed in backward instead (after group_norm_silu, say) */
    if ((df_node_needs_grad(node, 1) && (st = df_node_save_input(node, 0, 0, x))) ||
        (df_node_needs_grad(node, 0) && (st = df_node_save(node, 1, w))))
      goto fail;
  }
  *out = r;
  return DF_OK;
fail:
  df_tensor_release(r);
  return st;
}
