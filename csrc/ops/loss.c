/* loss.c — training losses, each averaged to a 0-d tensor, with their
 * backward passes side by side:
 *   mse_loss         mean(w[n] * (pred - target)^2), w per sample (dim 1) or 1
 *   l1_loss          mean(|pred - target|)
 *   bce_with_logits  mean(max(x, 0) - x y + log(1 + exp(-|x|)))  (stable for any x)
 *   cross_entropy    mean over rows of -sum_c q_c log_softmax(x)_c,
 *                    q = (1 - eps) onehot(target) + eps / C
 *
 * Inputs of any layout are read through contiguous copies (made only when
 * needed). Sums are accumulated in double over fixed blocks, combined in
 * block order, so a loss doesn't depend on the thread count. Gradients flow
 * to pred/logits and, where the loss is differentiable in them, to the
 * target and the mse weight (as in PyTorch); cross_entropy's class indices
 * get none. Shapes must match exactly: a loss never broadcasts, because a
 * silently broadcast target ((N) against (N, 1)) is a classic training bug. */
#include <math.h>
#include <string.h>

#include "../core/iter.h"
#include "../df.h"

#define LOSS_BLOCK DF_ITER_GRAIN /* elements per block: the unit of both work split and summation order */
#define STACK_PARTIALS 64

/* ---- blocked helpers ---------------------------------------------------- */

/* Sum of one block [begin, end) of the work, in double. */
typedef double (*block_sum_fn)(const void *ctx, int64_t begin, int64_t end);
/* Writes the outputs of [begin, end): disjoint between blocks. */
typedef void (*block_map_fn)(const void *ctx, int64_t begin, int64_t end);

typedef struct {
  block_sum_fn sum;
  block_map_fn map;
  const void *ctx;
  int64_t n, block;
  double *partial;
} block_job;

static void block_task(int64_t task, void *arg) {
  const block_job *j = arg;
  int64_t begin = task * j->block, end = begin + j->block < j->n ? begin + j->block : j->n;
  if (j->sum) j->partial[task] = j->sum(j->ctx, begin, end);
  else j->map(j->ctx, begin, end);
}

/* sum(ctx, ...) over [0, n) in blocks of `block` items, added in block order. */
static df_status blocked_sum(const char *name, int64_t n, int64_t block, block_sum_fn sum, const void *ctx,
                             double *total) {
  *total = 0.0;
  if (n <= 0) return DF_OK;
  int64_t nblocks = (n + block - 1) / block;
  double stack[STACK_PARTIALS], *partial = stack;
  if (nblocks > STACK_PARTIALS && !(partial = df_malloc(sizeof(double) * (size_t)nblocks)))
    return df_error(DF_ENOMEM, "%s: out of memory", name);
  block_job j = {.sum = sum, .ctx = ctx, .n = n, .block = block, .partial = partial};
  df_parallel_for(nblocks, block_task, &j);
  for (int64_t b = 0; b < nblocks; b++) *total += partial[b];
  if (partial != stack) df_free(partial);
  return DF_OK;
}

static void blocked_map(int64_t n, int64_t block, block_map_fn map, const void *ctx) {
  if (n <= 0) return;
  block_job j = {.map = map, .ctx = ctx, .n = n, .block = block};
  df_parallel_for((n + block - 1) / block, block_task, &j);
}

/* ---- shared checks and plumbing ----------------------------------------- */

static df_status check_same_shape(const char *name, const char *what_a, const df_tensor *a, const char *what_b,
                                  const df_tensor *b) {
  if (df_tensor_same_shape(a, b)) return DF_OK;
  char b1[128], b2[128];
  return df_error(DF_EINVAL, "%s: %s has shape %s but %s has shape %s (shapes must match exactly)", name, what_a,
                  df_format_shape(b1, sizeof b1, a->ndim, a->size), what_b, df_format_shape(b2, sizeof b2, b->ndim, b->size));
}

/* Contiguous versions of up to 3 tensors (NULL stays NULL), outside the graph. */
static df_status contiguous_all(int n, const df_tensor *const *in, df_tensor **out) {
  bool prev = df_set_grad_enabled(false);
  df_status st = DF_OK;
  for (int i = 0; i < n; i++) out[i] = NULL;
  for (int i = 0; i < n && !st; i++)
    if (in[i]) st = df_tensor_contiguous(&out[i], in[i]);
  df_set_grad_enabled(prev);
  if (st)
    for (int i = 0; i < n; i++) {
      df_tensor_release(out[i]);
      out[i] = NULL;
    }
  return st;
}

static void release_all(int n, df_tensor **ts) {
  for (int i = 0; i < n; i++) df_tensor_release(ts[i]);
}

/* The incoming gradient of a 0-d loss, as a number. */
static float grad_value(const df_tensor *g) { return df_tensor_data(g)[0]; }

/* ---- mse_loss, l1_loss -------------------------------------------------- */

typedef struct {
  const float *p, *t, *w; /* w: per sample, or NULL */
  float *d;               /* pred - target, written by the forward */
  int64_t inner;          /* elements per sample */
  bool square;
} diff_ctx;

static double diff_block(const void *arg, int64_t begin, int64_t end) {
  const diff_ctx *c = arg;
  double acc = 0.0;
  for (int64_t i = begin; i < end; i++) {
    float d = c->p[i] - c->t[i];
    c->d[i] = d;
    double e = c->square ? (double)d * d : fabs((double)d);
    acc += c->w ? c->w[i / c->inner] * e : e;
  }
  return acc;
}

/* gradients over the saved difference: gp = s * w * f'(d), gt = -gp */
typedef struct {
  const float *d, *w;
  float *gp, *gt; /* either may be NULL */
  int64_t inner;
  float scale;
  bool square;
} diff_grad_ctx;

static void diff_grad_block(const void *arg, int64_t begin, int64_t end) {
  const diff_grad_ctx *c = arg;
  for (int64_t i = begin; i < end; i++) {
    float d = c->d[i];
    float f = c->square ? 2.0f * d : (d > 0.0f ? 1.0f : (d < 0.0f ? -1.0f : 0.0f));
    float v = c->scale * (c->w ? c->w[i / c->inner] : 1.0f) * f;
    if (c->gp) c->gp[i] = v;
    if (c->gt) c->gt[i] = -v;
  }
}

/* the weight's gradient: gw[n] = s * sum over sample n of d^2 */
typedef struct {
  const float *d;
  float *gw;
  int64_t inner;
  float scale;
} weight_grad_ctx;

static void weight_grad_block(const void *arg, int64_t begin, int64_t end) {
  const weight_grad_ctx *c = arg;
  for (int64_t n = begin; n < end; n++) {
    const float *d = c->d + n * c->inner;
    double acc = 0.0;
    for (int64_t i = 0; i < c->inner; i++) acc += (double)d[i] * d[i];
    c->gw[n] = (float)(c->scale * acc);
  }
}

/* saved[0] = pred - target (contiguous), saved[1] = weight (contiguous) or
 * NULL; iarg[0] = elements per sample, iarg[1] = square (mse) or not (l1).
 * Inputs: 0 pred, 1 target, 2 weight. */
static df_status bw_diff_loss(df_node *n, const df_tensor *g, df_tensor **gi) {
  const df_tensor *d = n->saved[0], *w = n->saved[1];
  int64_t numel = df_tensor_numel(d);
  bool square = n->iarg[1] != 0;
  float scale = grad_value(g) / (float)numel;
  df_tensor *gp = NULL, *gt = NULL, *gw = NULL;
  df_status st = DF_OK;
  if ((df_node_needs_grad(n, 0) && (st = df_tensor_empty(&gp, d->ndim, d->size))) ||
      (df_node_needs_grad(n, 1) && (st = df_tensor_empty(&gt, d->ndim, d->size))) ||
      (w && df_node_needs_grad(n, 2) && (st = df_tensor_empty(&gw, w->ndim, w->size)))) {
    df_tensor_release(gp);
    df_tensor_release(gt);
    return st;
  }
  diff_grad_ctx c = {.d = df_tensor_data(d), .w = w ? df_tensor_data(w) : NULL, .gp = gp ? df_tensor_data(gp) : NULL,
                     .gt = gt ? df_tensor_data(gt) : NULL, .inner = n->iarg[0], .scale = scale, .square = square};
  if (gp || gt) blocked_map(numel, LOSS_BLOCK, diff_grad_block, &c);
  if (gw) {
    weight_grad_ctx wc = {.d = df_tensor_data(d), .gw = df_tensor_data(gw), .inner = n->iarg[0], .scale = scale};
    int64_t rows = w->size[0], per = n->iarg[0] > 0 ? LOSS_BLOCK / n->iarg[0] : rows;
    blocked_map(rows, per > 0 ? per : 1, weight_grad_block, &wc);
  }
  gi[0] = gp;
  gi[1] = gt;
  if (w) gi[2] = gw;
  return DF_OK;
}

static df_status diff_loss(const char *name, bool square, df_tensor **out, const df_tensor *pred,
                           const df_tensor *target, const df_tensor *weight) {
  df_status st = check_same_shape(name, "pred", pred, "target", target);
  if (st) return st;
  int64_t inner = 1;
  if (weight) {
    if (pred->ndim == 0) return df_error(DF_EINVAL, "%s: a per-sample weight needs pred with a batch dim, got a 0-d pred", name);
    if (weight->ndim != 1 || weight->size[0] != pred->size[0]) {
      char b1[128], b2[128];
      return df_error(DF_EINVAL, "%s: weight has shape %s, expected {%lld} (one weight per sample of pred %s)", name,
                      df_format_shape(b1, sizeof b1, weight->ndim, weight->size), (long long)pred->size[0],
                      df_format_shape(b2, sizeof b2, pred->ndim, pred->size));
    }
    inner = pred->size[0] > 0 ? df_tensor_numel(pred) / pred->size[0] : 1;
  }
  const df_tensor *in[3] = {pred, target, weight};
  df_tensor *c[3], *d = NULL, *r = NULL;
  if ((st = contiguous_all(3, in, c))) return st;
  if ((st = df_tensor_empty(&d, pred->ndim, pred->size))) goto done;
  int64_t numel = df_tensor_numel(pred);
  diff_ctx ctx = {.p = df_tensor_data(c[0]), .t = df_tensor_data(c[1]), .w = c[2] ? df_tensor_data(c[2]) : NULL,
                  .d = df_tensor_data(d), .inner = inner, .square = square};
  double total;
  if ((st = blocked_sum(name, numel, LOSS_BLOCK, diff_block, &ctx, &total))) goto done;
  if ((st = df_tensor_full(&r, 0, NULL, (float)(total / (double)numel)))) goto done; /* 0 elements: NaN */
  df_node *node;
  if ((st = df_autograd_record(r, name, bw_diff_loss, weight ? 3 : 2, in, &node)) || !node) goto done;
  node->iarg[0] = inner;
  node->iarg[1] = square;
  if ((st = df_node_save(node, 0, d))) goto done;
  if (weight) st = df_node_save(node, 1, c[2]);
done:
  release_all(3, c);
  df_tensor_release(d);
  if (st) {
    df_tensor_release(r);
    return st;
  }
  *out = r;
  return DF_OK;
}

df_status df_mse_loss(df_tensor **out, const df_tensor *pred, const df_tensor *target, const df_tensor *weight) {
  return diff_loss("mse_loss", true, out, pred, target, weight);
}

df_status df_l1_loss(df_tensor **out, const df_tensor *pred, const df_tensor *target) {
  return diff_loss("l1_loss", false, out, pred, target, NULL);
}

/* ---- bce_with_logits ---------------------------------------------------- */

static inline float stable_sigmoid(float x) {
  if (x >= 0.0f) return 1.0f / (1.0f + expf(-x));
  float e = expf(x);
  return e / (1.0f + e);
}

typedef struct {
  const float *x, *y;
  float *gx, *gy; /* backward only; either may be NULL */
  float scale;
} bce_ctx;

static double bce_block(const void *arg, int64_t begin, int64_t end) {
  const bce_ctx *c = arg;
  double acc = 0.0;
  for (int64_t i = begin; i < end; i++) {
    double x = c->x[i], y = c->y[i];
    acc += (x > 0.0 ? x : 0.0) - x * y + log1p(exp(-fabs(x)));
  }
  return acc;
}

/* d/dx = sigmoid(x) - y, d/dy = -x */
static void bce_grad_block(const void *arg, int64_t begin, int64_t end) {
  const bce_ctx *c = arg;
  for (int64_t i = begin; i < end; i++) {
    if (c->gx) c->gx[i] = c->scale * (stable_sigmoid(c->x[i]) - c->y[i]);
    if (c->gy) c->gy[i] = -c->scale * c->x[i];
  }
}

/* saved[0] = logits, saved[1] = target (both contiguous) */
static df_status bw_bce(df_node *n, const df_tensor *g, df_tensor **gi) {
  const df_tensor *x = n->saved[0], *y = n->saved[1];
  int64_t numel = df_tensor_numel(x);
  df_tensor *gx = NULL, *gy = NULL;
  df_status st;
  if ((df_node_needs_grad(n, 0) && (st = df_tensor_empty(&gx, x->ndim, x->size))) ||
      (df_node_needs_grad(n, 1) && (st = df_tensor_empty(&gy, x->ndim, x->size)))) {
    df_tensor_release(gx);
    return st;
  }
  bce_ctx c = {.x = df_tensor_data(x), .y = df_tensor_data(y), .gx = gx ? df_tensor_data(gx) : NULL,
               .gy = gy ? df_tensor_data(gy) : NULL, .scale = grad_value(g) / (float)numel};
  blocked_map(numel, LOSS_BLOCK, bce_grad_block, &c);
  gi[0] = gx;
  gi[1] = gy;
  return DF_OK;
}

df_status df_bce_with_logits(df_tensor **out, const df_tensor *logits, const df_tensor *target) {
  const char *name = "bce_with_logits";
  df_status st = check_same_shape(name, "logits", logits, "target", target);
  if (st) return st;
  const df_tensor *in[2] = {logits, target};
  df_tensor *c[2], *r = NULL;
  if ((st = contiguous_all(2, in, c))) return st;
  int64_t numel = df_tensor_numel(logits);
  bce_ctx ctx = {.x = df_tensor_data(c[0]), .y = df_tensor_data(c[1])};
  double total;
  if ((st = blocked_sum(name, numel, LOSS_BLOCK, bce_block, &ctx, &total))) goto done;
  if ((st = df_tensor_full(&r, 0, NULL, (float)(total / (double)numel)))) goto done;
  df_node *node;
  if ((st = df_autograd_record(r, name, bw_bce, 2, in, &node)) || !node) goto done;
  if (!(st = df_node_save(node, 0, c[0]))) st = df_node_save(node, 1, c[1]);
done:
  release_all(2, c);
  if (st) {
    df_tensor_release(r);
    return st;
  }
  *out = r;
  return DF_OK;
}

/* ---- cross_entropy ------------------------------------------------------ */

typedef struct {
  const float *x, *y; /* x (N, C) contiguous, y (N) class indices */
  double *lse;        /* (N): log-sum-exp of each row, kept for the backward */
  float *gx;          /* backward: (N, C) */
  int64_t classes;
  double smoothing;
  float scale;
} ce_ctx;

/* per row: lse - (1 - eps) x_y - (eps / C) sum_c x_c, with lse = m + log sum exp(x - m) */
static double ce_block(const void *arg, int64_t begin, int64_t end) {
  const ce_ctx *c = arg;
  const int64_t C = c->classes;
  double acc = 0.0;
  for (int64_t n = begin; n < end; n++) {
    const float *x = c->x + n * C;
    float m = x[0];
    for (int64_t k = 1; k < C; k++) m = x[k] > m || x[k] != x[k] ? x[k] : m;
    double s = 0.0, sx = 0.0;
    for (int64_t k = 0; k < C; k++) { /* expf of a value <= 0: accurate, and much cheaper than exp */
      s += expf(x[k] - m);
      sx += x[k];
    }
    double lse = m + log(s);
    c->lse[n] = lse;
    acc += lse - (1.0 - c->smoothing) * x[(int64_t)c->y[n]] - c->smoothing / (double)C * sx;
  }
  return acc;
}

/* d/dx_c = scale * (softmax_c - q_c) */
static void ce_grad_block(const void *arg, int64_t begin, int64_t end) {
  const ce_ctx *c = arg;
  const int64_t C = c->classes;
  const double off = c->smoothing / (double)C, on = 1.0 - c->smoothing + off;
  for (int64_t n = begin; n < end; n++) {
    const float *x = c->x + n * C;
    float *gx = c->gx + n * C;
    int64_t y = (int64_t)c->y[n];
    const float lse = (float)c->lse[n], s = c->scale, soff = (float)(c->scale * off);
    for (int64_t k = 0; k < C; k++) gx[k] = s * expf(x[k] - lse) - soff;
    gx[y] -= (float)(c->scale * (on - off));
  }
}

static int64_t rows_per_block(int64_t classes) {
  int64_t r = classes > 0 ? LOSS_BLOCK / classes : LOSS_BLOCK;
  return r > 0 ? r : 1;
}

/* saved[0] = logits, saved[1] = target (contiguous); extra = lse (N doubles);
 * scalar[0] = label smoothing */
static df_status bw_cross_entropy(df_node *n, const df_tensor *g, df_tensor **gi) {
  const df_tensor *x = n->saved[0];
  df_tensor *gx;
  df_status st = df_tensor_empty(&gx, x->ndim, x->size);
  if (st) return st;
  ce_ctx c = {.x = df_tensor_data(x), .y = df_tensor_data(n->saved[1]), .lse = n->extra, .gx = df_tensor_data(gx),
              .classes = x->size[1], .smoothing = n->scalar[0], .scale = grad_value(g) / (float)x->size[0]};
  blocked_map(x->size[0], rows_per_block(c.classes), ce_grad_block, &c);
  gi[0] = gx;
  return DF_OK;
}

df_status df_cross_entropy(df_tensor **out, const df_tensor *logits, const df_tensor *target, float label_smoothing) {
  const char *name = "cross_entropy";
  char b1[128], b2[128];
  if (logits->ndim != 2)
    return df_error(DF_EINVAL, "%s: logits must be (N, C), got shape %s", name,
                    df_format_shape(b1, sizeof b1, logits->ndim, logits->size));
  int64_t N = logits->size[0], C = logits->size[1];
  if (target->ndim != 1 || target->size[0] != N)
    return df_error(DF_EINVAL, "%s: target has shape %s, expected {%lld} (one class index per row of logits %s)", name,
                    df_format_shape(b1, sizeof b1, target->ndim, target->size), (long long)N,
                    df_format_shape(b2, sizeof b2, logits->ndim, logits->size));
  if (!(label_smoothing >= 0.0f && label_smoothing <= 1.0f))
    return df_error(DF_EINVAL, "%s: label_smoothing must be in [0, 1], got %g", name, (double)label_smoothing);
  if (C == 0 && N > 0) return df_error(DF_EINVAL, "%s: logits have 0 classes", name);
  const df_tensor *in[2] = {logits, target};
  df_tensor *c[2], *r = NULL;
  double *lse = NULL;
  df_status st = contiguous_all(2, in, c);
  if (st) return st;
  const float *y = df_tensor_data(c[1]);
  for (int64_t n = 0; n < N; n++)
    if (!(y[n] >= 0.0f && y[n] < (float)C && y[n] == floorf(y[n]))) {
      st = df_error(DF_EINVAL, "%s: target[%lld] = %g is not a class index in [0, %lld)", name, (long long)n,
                    (double)y[n], (long long)C);
      goto done;
    }
  if (!(lse = df_malloc(sizeof(double) * (size_t)(N > 0 ? N : 1)))) {
    st = df_error(DF_ENOMEM, "%s: out of memory", name);
    goto done;
  }
  ce_ctx ctx = {.x = df_tensor_data(c[0]), .y = y, .lse = lse, .classes = C, .smoothing = label_smoothing};
  double total;
  if ((st = blocked_sum(name, N, rows_per_block(C), ce_block, &ctx, &total))) goto done;
  if ((st = df_tensor_full(&r, 0, NULL, (float)(total / (double)N)))) goto done;
  df_node *node;
  if ((st = df_autograd_record(r, name, bw_cross_entropy, 1, in, &node)) || !node) goto done;
  node->scalar[0] = label_smoothing;
  node->extra = lse;
  lse = NULL;
  if (!(st = df_node_save(node, 0, c[0]))) st = df_node_save(node, 1, c[1]);
done:
  df_free(lse);
  release_all(2, c);
  if (st) {
    df_tensor_release(r);
    return st;
  }
  *out = r;
  return DF_OK;
}
