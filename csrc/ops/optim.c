/* optim.c — optimizer update kernels: SGD (momentum, dampening, Nesterov,
 * L2 weight decay), Adam / AdamW, and lerp_ for EMA weights.
 *
 * They write parameters and optimizer state in place, record nothing for
 * autograd and bump the storage versions (a graph that saved a parameter
 * then refuses to backward through the stale value). Like every in-place op
 * they refuse a tensor that requires grad while grad mode is on: the Lua
 * optimizers run them inside no_grad, as PyTorch's do. Semantics follow
 * torch.optim (foreach=False) so results can be compared step by step.
 * Shapes must match exactly, and the operands of a step must not share
 * memory (the kernels use restrict pointers). Contiguous operands (the usual
 * case: parameters, their .grad and the state are all fresh tensors) take a
 * flat loop split over the pool; any other layout goes through the strided
 * iterator. */
#include <math.h>

#include "../core/iter.h"
#include "../df.h"

/* ---- the driver --------------------------------------------------------- */

typedef struct {
  df_iter_kernel kernel;
  const void *ctx;
  float *base[DF_ITER_MAX_OPS];
  int nop;
  int64_t n, block;
} flat_job;

static void flat_task(int64_t task, void *arg) {
  const flat_job *j = arg;
  int64_t begin = task * j->block, end = begin + j->block < j->n ? begin + j->block : j->n;
  float *p[DF_ITER_MAX_OPS];
  int64_t s[DF_ITER_MAX_OPS];
  for (int k = 0; k < j->nop; k++) {
    p[k] = j->base[k] + begin;
    s[k] = 1;
  }
  j->kernel(end - begin, p, s, j->ctx);
}

/* Runs kernel elementwise over ops (all of one shape, ops[0] the parameter). */
static df_status run_update(const char *name, int nop, const df_tensor *const *ops, df_iter_kernel kernel,
                            const void *ctx) {
  bool contiguous = true;
  for (int k = 0; k < nop; k++) contiguous &= df_tensor_is_contiguous(ops[k]);
  if (contiguous) {
    flat_job j = {.kernel = kernel, .ctx = ctx, .nop = nop, .n = df_tensor_numel(ops[0]), .block = DF_ITER_GRAIN};
    for (int k = 0; k < nop; k++) j.base[k] = df_tensor_data(ops[k]);
    df_parallel_for((j.n + j.block - 1) / j.block, flat_task, &j);
    return DF_OK;
  }
  df_iter it;
  df_status st = df_iter_init(&it, name, nop, ops);
  if (st) return st;
  df_iter_run(&it, kernel, ctx);
  return DF_OK;
}

static df_status check_match(const char *name, const char *what, const df_tensor *t, const df_tensor *param) {
  if (df_tensor_same_shape(t, param)) return DF_OK;
  char b1[128], b2[128];
  return df_error(DF_EINVAL, "%s: %s has shape %s but the parameter has shape %s", name, what,
                  df_format_shape(b1, sizeof b1, t->ndim, t->size), df_format_shape(b2, sizeof b2, param->ndim, param->size));
}

/* The kernels read and write each operand through its own restrict pointer. */
static df_status check_separate(const char *name, int nop, const df_tensor *const *ops, const char *const *what) {
  for (int i = 0; i < nop; i++)
    for (int j = i + 1; j < nop; j++)
      if (ops[i]->storage == ops[j]->storage)
        return df_error(DF_EINVAL, "%s: %s and %s share memory", name, what[i], what[j]);
  return DF_OK;
}

/* a hyperparameter that must be a number >= lo (and < hi when hi > lo) */
static df_status check_range(const char *name, const char *what, float v, float lo, float hi, bool below_hi) {
  if (v >= lo && (!below_hi || v < hi)) return DF_OK;
  if (below_hi) return df_error(DF_EINVAL, "%s: %s must be in [%g, %g), got %g", name, what, (double)lo, (double)hi, (double)v);
  return df_error(DF_EINVAL, "%s: %s must be >= %g, got %g", name, what, (double)lo, (double)v);
}

/* ---- SGD ---------------------------------------------------------------- */

typedef struct {
  float lr, momentum, dampening, weight_decay;
  bool nesterov, first;
} sgd_ctx;

/* operands (p, g[, buf]) */
static void k_sgd(int64_t n, float *const *ptr, const int64_t *s, const void *arg) {
  const sgd_ctx *c = arg;
  float *restrict p = ptr[0];
  const float *restrict g = ptr[1];
  const float lr = c->lr, mom = c->momentum, keep = 1.0f - c->dampening, wd = c->weight_decay;
  if (mom == 0.0f) {
    for (int64_t i = 0; i < n; i++) {
      float pv = p[i * s[0]];
      p[i * s[0]] = pv - lr * (g[i * s[1]] + wd * pv);
    }
    return;
  }
  float *restrict b = ptr[2];
  const bool first = c->first, nesterov = c->nesterov;
  for (int64_t i = 0; i < n; i++) {
    float pv = p[i * s[0]];
    float d = g[i * s[1]] + wd * pv;
    float bv = first ? d : mom * b[i * s[2]] + keep * d;
    b[i * s[2]] = bv;
    p[i * s[0]] = pv - lr * (nesterov ? d + mom * bv : bv);
  }
}

df_status df_sgd_step(df_tensor *param, const df_tensor *grad, df_tensor *buf, float lr, float momentum,
                      float dampening, float weight_decay, bool nesterov, bool first) {
  const char *name = "sgd";
  df_status st;
  if ((st = check_range(name, "lr", lr, 0.0f, 0.0f, false)) || (st = check_range(name, "momentum", momentum, 0.0f, 0.0f, false)) ||
      (st = check_range(name, "dampening", dampening, 0.0f, 0.0f, false)) ||
      (st = check_range(name, "weight_decay", weight_decay, 0.0f, 0.0f, false)))
    return st;
  if (nesterov && (momentum == 0.0f || dampening != 0.0f))
    return df_error(DF_EINVAL, "%s: nesterov needs momentum > 0 and dampening = 0, got momentum %g and dampening %g", name,
                    (double)momentum, (double)dampening);
  if (momentum != 0.0f && !buf) return df_error(DF_EINVAL, "%s: momentum %g needs a momentum buffer", name, (double)momentum);
  if ((st = check_match(name, "the gradient", grad, param)) || (st = df_check_inplace(name, param))) return st;
  if (momentum != 0.0f && ((st = check_match(name, "the momentum buffer", buf, param)) || (st = df_check_inplace(name, buf))))
    return st;
  sgd_ctx c = {lr, momentum, dampening, weight_decay, nesterov, first};
  const df_tensor *ops[3] = {param, grad, buf};
  static const char *const what[3] = {"the parameter", "the gradient", "the momentum buffer"};
  if ((st = check_separate(name, momentum != 0.0f ? 3 : 2, ops, what))) return st;
  if ((st = run_update(name, momentum != 0.0f ? 3 : 2, ops, k_sgd, &c))) return st;
  df_tensor_bump_version(param);
  if (momentum != 0.0f) df_tensor_bump_version(buf);
  return DF_OK;
}

/* ---- Adam, AdamW -------------------------------------------------------- */

typedef struct {
  float beta1, beta2, eps, weight_decay;
  float decay;        /* AdamW: p *= 1 - lr wd, else 1 */
  float step_size;    /* lr / (1 - beta1^t) */
  float inv_sqrt_bc2; /* 1 / sqrt(1 - beta2^t) */
  bool decoupled;
} adam_ctx;

/* operands (p, g, m, v); the parameters are copied to locals so the compiler
 * knows the stores can't change them, and can vectorise the contiguous loop */
#if defined(__GNUC__) && !defined(__clang__)
/* sqrtf of a non-negative number never sets errno; saying so lets GCC vectorise the loop */
__attribute__((optimize("no-math-errno")))
#endif
static void k_adam(int64_t n, float *const *ptr, const int64_t *s, const void *arg) {
  const adam_ctx *c = arg;
  float *restrict p = ptr[0], *restrict m = ptr[2], *restrict v = ptr[3];
  const float *restrict g = ptr[1];
  const float b1 = c->beta1, b2 = c->beta2, eps = c->eps, step_size = c->step_size, inv = c->inv_sqrt_bc2;
  const float decay = c->decoupled ? c->decay : 1.0f, wd = c->decoupled ? 0.0f : c->weight_decay;
  if (s[0] == 1 && s[1] == 1 && s[2] == 1 && s[3] == 1) {
    for (int64_t i = 0; i < n; i++) {
      float pv = p[i] * decay, gv = g[i] + wd * p[i];
      float mv = b1 * m[i] + (1.0f - b1) * gv, vv = b2 * v[i] + (1.0f - b2) * gv * gv;
      m[i] = mv;
      v[i] = vv;
      p[i] = pv - step_size * mv / (sqrtf(vv) * inv + eps);
    }
    return;
  }
  for (int64_t i = 0; i < n; i++) {
    float p0 = p[i * s[0]], pv = p0 * decay, gv = g[i * s[1]] + wd * p0;
    float mv = b1 * m[i * s[2]] + (1.0f - b1) * gv, vv = b2 * v[i * s[3]] + (1.0f - b2) * gv * gv;
    m[i * s[2]] = mv;
    v[i * s[3]] = vv;
    p[i * s[0]] = pv - step_size * mv / (sqrtf(vv) * inv + eps);
  }
}

df_status df_adam_step(df_tensor *param, const df_tensor *grad, df_tensor *m, df_tensor *v, int64_t step, float lr,
                       float beta1, float beta2, float eps, float weight_decay, bool decoupled) {
  const char *name = decoupled ? "adamw" : "adam";
  df_status st;
  if (step < 1) return df_error(DF_EINVAL, "%s: step counts from 1, got %lld", name, (long long)step);
  if ((st = check_range(name, "lr", lr, 0.0f, 0.0f, false)) || (st = check_range(name, "beta1", beta1, 0.0f, 1.0f, true)) ||
      (st = check_range(name, "beta2", beta2, 0.0f, 1.0f, true)) || (st = check_range(name, "eps", eps, 0.0f, 0.0f, false)) ||
      (st = check_range(name, "weight_decay", weight_decay, 0.0f, 0.0f, false)))
    return st;
  if ((st = check_match(name, "the gradient", grad, param)) || (st = check_match(name, "exp_avg", m, param)) ||
      (st = check_match(name, "exp_avg_sq", v, param)) || (st = df_check_inplace(name, param)) ||
      (st = df_check_inplace(name, m)) || (st = df_check_inplace(name, v)))
    return st;
  double bc1 = 1.0 - pow(beta1, (double)step), bc2 = 1.0 - pow(beta2, (double)step);
  adam_ctx c = {.beta1 = beta1, .beta2 = beta2, .eps = eps, .weight_decay = weight_decay,
                .decay = decoupled ? 1.0f - lr * weight_decay : 1.0f, .step_size = (float)(lr / bc1),
                .inv_sqrt_bc2 = (float)(1.0 / sqrt(bc2)), .decoupled = decoupled};
  const df_tensor *ops[4] = {param, grad, m, v};
  static const char *const what[4] = {"the parameter", "the gradient", "exp_avg", "exp_avg_sq"};
  if ((st = check_separate(name, 4, ops, what))) return st;
  if ((st = run_update(name, 4, ops, k_adam, &c))) return st;
  df_tensor_bump_version(param);
  df_tensor_bump_version(m);
  df_tensor_bump_version(v);
  return DF_OK;
}

/* ---- lerp_ -------------------------------------------------------------- */

/* operands (a, b) */
static void k_lerp(int64_t n, float *const *ptr, const int64_t *s, const void *arg) {
  const float w = *(const float *)arg;
  float *a = ptr[0];
  const float *b = ptr[1];
  if (s[0] == 1 && s[1] == 1) {
    for (int64_t i = 0; i < n; i++) a[i] += w * (b[i] - a[i]);
  } else {
    for (int64_t i = 0; i < n; i++) a[i * s[0]] += w * (b[i * s[1]] - a[i * s[0]]);
  }
}

static bool same_strides(const df_tensor *a, const df_tensor *b) {
  for (int d = 0; d < a->ndim; d++)
    if (a->size[d] > 1 && a->stride[d] != b->stride[d]) return false;
  return true;
}

df_status df_lerp_(df_tensor *a, const df_tensor *b, float w) {
  const char *name = "lerp_";
  df_status st;
  if (!df_tensor_same_shape(a, b)) {
    char b1[128], b2[128];
    return df_error(DF_EINVAL, "%s: the tensors have shapes %s and %s (shapes must match exactly)", name,
                    df_format_shape(b1, sizeof b1, a->ndim, a->size), df_format_shape(b2, sizeof b2, b->ndim, b->size));
  }
  if (w != w) return df_error(DF_EINVAL, "%s: the weight is NaN", name);
  if ((st = df_check_inplace(name, a))) return st;
  df_tensor *copy = NULL;
  if (a->storage == b->storage && (a->offset != b->offset || !same_strides(a, b))) {
    /* b reads a's memory in another layout: writing a would change b's elements before they are read */
    bool prev = df_set_grad_enabled(false);
    st = df_tensor_clone(&copy, b);
    df_set_grad_enabled(prev);
    if (st) return st;
    b = copy;
  }
  const df_tensor *ops[2] = {a, b};
  st = run_update(name, 2, ops, k_lerp, &w);
  df_tensor_release(copy);
  if (st) return st;
  df_tensor_bump_version(a);
  return DF_OK;
}
