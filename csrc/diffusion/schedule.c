/* schedule.c — noise schedules and the per-step kernels of the DDPM / DDIM
 * samplers.
 *
 * A schedule is kept in double (its betas and alpha_bar) and every derived
 * table is computed from them in double before it is rounded to float: the
 * quantities that matter near t = 1 are differences like 1 - alpha_bar
 * (1e-4 for the linear schedule), which float32 alpha_bar would get wrong in
 * the fourth digit. Timesteps follow the Lua convention t = 1..T (1 the least
 * noisy), stored at [t - 1], with alpha_bar_0 = 1 standing for clean data.
 *
 * The kernels are one per-sample mix, out = a[n] x + b[n] y (+ c z), used for
 * q_sample, posterior means, targets and predictions (per-sample
 * coefficients gathered from the tables), and for the sampler steps (one
 * set of coefficients for the whole batch, computed here in double). The
 * samplers themselves are Lua loops (lua/diffusion/sample.lua); C never calls
 * the model. */
#include <assert.h>
#include <math.h>
#include <string.h>

#include "../core/iter.h"
#include "../df.h"

const char *const df_schedule_kind_names[DF_SCHEDULE_KIND_COUNT] = {
    "linear", "scaled_linear", "cosine", "sigmoid", "betas", "alpha_bar",
};
const char *const df_schedule_table_names[DF_SCHED_TABLE_COUNT] = {
    "betas", "alphas", "alpha_bar", "alpha_bar_prev", "sqrt_alpha_bar", "sqrt_one_minus_alpha_bar",
    "snr", "log_snr", "sigma", "posterior_variance", "posterior_mean_coef1", "posterior_mean_coef2",
};
static_assert(DF_SCHEDULE_ALPHA_BAR + 1 == DF_SCHEDULE_KIND_COUNT, "df_schedule_kind_names must list every kind");
static_assert(DF_SCHED_POSTERIOR_MEAN_COEF2 + 1 == DF_SCHED_TABLE_COUNT, "df_schedule_table_names must list every table");

#define SCHEDULE_MAX_T 100000000 /* 1.6 GB of doubles: a bound that catches nonsense, not real schedules */

/* ---- building ----------------------------------------------------------- */

static const int64_t kind_nparams[DF_SCHEDULE_KIND_COUNT] = {2, 2, 2, 3, -1, -1}; /* -1: T values */

/* a named parameter that must be finite and in [lo, hi] (open at lo when open_lo) */
static df_status check_param(const char *op, const char *what, double v, double lo, double hi, bool open_lo) {
  if (isfinite(v) && (open_lo ? v > lo : v >= lo) && v <= hi) return DF_OK;
  return df_error(DF_EINVAL, "%s: %s must be in %s%g, %g], got %g", op, what, open_lo ? "(" : "[", lo, hi, v);
}

#define HALF_PI 1.57079632679489661923

static double cosine_f(double u, double s) {
  double c = cos((u + s) / (1.0 + s) * HALF_PI);
  return c * c;
}

static double sigmoid(double x) { return 1.0 / (1.0 + exp(-x)); }

/* Fills betas (is_alpha_bar false) or alpha_bar (true) of a named kind into v. */
static df_status named_values(df_schedule_kind kind, int64_t T, const double *p, const char *op, double *v,
                              bool *is_alpha_bar) {
  df_status st;
  *is_alpha_bar = false;
  switch (kind) {
  case DF_SCHEDULE_LINEAR:
  case DF_SCHEDULE_SCALED_LINEAR: {
    if ((st = check_param(op, "beta_start", p[0], 0.0, 1.0, true)) || (st = check_param(op, "beta_end", p[1], 0.0, 1.0, true)))
      return st;
    double a = p[0], b = p[1];
    if (kind == DF_SCHEDULE_SCALED_LINEAR) a = sqrt(a), b = sqrt(b);
    for (int64_t i = 0; i < T; i++) { /* numpy's linspace: the ends are exact */
      double x = T == 1 ? a : i == T - 1 ? b : a + (b - a) * (double)i / (double)(T - 1);
      v[i] = kind == DF_SCHEDULE_SCALED_LINEAR ? x * x : x;
    }
    return DF_OK;
  }
  case DF_SCHEDULE_COSINE: {
    double s = p[0], max_beta = p[1];
    if ((st = check_param(op, "s", s, 0.0, 1.0, false)) || (st = check_param(op, "max_beta", max_beta, 0.0, 1.0, true)))
      return st;
    for (int64_t i = 0; i < T; i++) {
      double beta = 1.0 - cosine_f((double)(i + 1) / (double)T, s) / cosine_f((double)i / (double)T, s);
      v[i] = beta < max_beta ? beta : max_beta;
    }
    return DF_OK;
  }
  case DF_SCHEDULE_SIGMOID: {
    double start = p[0], stop = p[1], tau = p[2];
    if (!isfinite(start) || !isfinite(stop) || !(start < stop))
      return df_error(DF_EINVAL, "%s: expected finite start < stop, got %g and %g", op, start, stop);
    if (!(tau > 0.0) || !isfinite(tau)) return df_error(DF_EINVAL, "%s: tau must be a finite number > 0, got %g", op, tau);
    double v0 = sigmoid(start / tau), v1 = sigmoid(stop / tau);
    for (int64_t i = 0; i < T; i++) {
      double u = (double)(i + 1) / (double)T;
      double ab = (v1 - sigmoid((u * (stop - start) + start) / tau)) / (v1 - v0);
      v[i] = ab < 1e-9 ? 1e-9 : ab > 1.0 ? 1.0 : ab;
    }
    *is_alpha_bar = true;
    return DF_OK;
  }
  default:
    return df_error(DF_EINVAL, "%s: unknown schedule kind %d", op, (int)kind);
  }
}

/* Checks betas and fills alpha_bar = cumprod(1 - beta). */
static df_status from_betas(double *betas, double *ab, int64_t T, const char *op) {
  double prod = 1.0;
  for (int64_t t = 1; t <= T; t++) {
    double b = betas[t - 1];
    if (b != b) return df_error(DF_EINVAL, "%s: beta[%lld] is NaN", op, (long long)t);
    if (!(b > 0.0 && b <= 1.0)) return df_error(DF_EINVAL, "%s: beta[%lld] = %g is not in (0, 1]", op, (long long)t, b);
    double next = prod * (1.0 - b);
    if (!(next > 0.0) && !(next == 0.0 && t == T)) /* only the last may be 0: zero terminal SNR */
      return df_error(DF_EINVAL, "%s: alpha_bar[%lld] = %g is not in (0, 1] (beta[%lld] = %g leaves no signal before the last "
                      "timestep)", op, (long long)t, next, (long long)t, b);
    if (!(next < prod))
      return df_error(DF_EINVAL, "%s: alpha_bar[%lld] = %.10g is not below alpha_bar[%lld] = %.10g (beta[%lld] = %g is too small "
                      "to change it; alpha_bar must be strictly decreasing)", op, (long long)t, next, (long long)t - 1, prod,
                      (long long)t, b);
    ab[t - 1] = prod = next;
  }
  return DF_OK;
}

/* Checks alpha_bar and fills betas = 1 - ab_t / ab_{t-1}. */
static df_status from_alpha_bar(double *betas, const double *ab, int64_t T, const char *op) {
  double prev = 1.0;
  for (int64_t t = 1; t <= T; t++) {
    double a = ab[t - 1];
    if (a != a) return df_error(DF_EINVAL, "%s: alpha_bar[%lld] is NaN", op, (long long)t);
    if (a == 0.0 && t < T)
      return df_error(DF_EINVAL, "%s: alpha_bar[%lld] = 0 is not in (0, 1] (only the last, alpha_bar[%lld], may be 0)", op,
                      (long long)t, (long long)T);
    if (!(a >= 0.0 && a <= 1.0)) return df_error(DF_EINVAL, "%s: alpha_bar[%lld] = %g is not in (0, 1]", op, (long long)t, a);
    if (!(a < prev))
      return df_error(DF_EINVAL, "%s: alpha_bar[%lld] = %.10g is not below alpha_bar[%lld] = %.10g (alpha_bar must be strictly "
                      "decreasing from alpha_bar_0 = 1)", op, (long long)t, a, (long long)t - 1, prev);
    betas[t - 1] = 1.0 - a / prev;
    prev = a;
  }
  return DF_OK;
}

df_status df_schedule_init(df_schedule *s, df_schedule_kind kind, int64_t T, const double *params, int64_t nparams,
                           const char *op) {
  s->T = 0;
  s->betas = s->alpha_bar = NULL;
  if ((unsigned)kind >= DF_SCHEDULE_KIND_COUNT) return df_error(DF_EINVAL, "%s: unknown schedule kind %d", op, (int)kind);
  if (T < 1 || T > SCHEDULE_MAX_T)
    return df_error(DF_EINVAL, "%s: T must be an integer in [1, %d], got %lld", op, SCHEDULE_MAX_T, (long long)T);
  int64_t want = kind_nparams[kind] < 0 ? T : kind_nparams[kind];
  if (nparams != want)
    return df_error(DF_EINVAL, "%s: a %s schedule takes %lld values, got %lld", op, df_schedule_kind_names[kind],
                    (long long)want, (long long)nparams);
  double *block = df_malloc(sizeof(double) * 2 * (size_t)T);
  if (!block) return df_error(DF_ENOMEM, "%s: out of memory for T = %lld", op, (long long)T);
  double *betas = block, *ab = block + T;
  bool is_alpha_bar = kind == DF_SCHEDULE_ALPHA_BAR;
  df_status st = DF_OK;
  if (kind == DF_SCHEDULE_BETAS) memcpy(betas, params, sizeof(double) * (size_t)T);
  else if (kind == DF_SCHEDULE_ALPHA_BAR) memcpy(ab, params, sizeof(double) * (size_t)T);
  else if (!(st = named_values(kind, T, params, op, betas, &is_alpha_bar)) && is_alpha_bar)
    memcpy(ab, betas, sizeof(double) * (size_t)T); /* sigmoid defines alpha_bar */
  if (!st) st = is_alpha_bar ? from_alpha_bar(betas, ab, T, op) : from_betas(betas, ab, T, op);
  if (st) {
    df_free(block);
    return st;
  }
  s->T = T;
  s->betas = betas;
  s->alpha_bar = ab;
  return DF_OK;
}

void df_schedule_free(df_schedule *s) {
  df_free(s->betas); /* the block holding both */
  s->betas = s->alpha_bar = NULL;
  s->T = 0;
}

double df_schedule_value(const df_schedule *s, df_schedule_table which, int64_t t) {
  double beta = s->betas[t - 1], ab = s->alpha_bar[t - 1], ab_prev = t > 1 ? s->alpha_bar[t - 2] : 1.0;
  double one_minus = 1.0 - ab, alpha = 1.0 - beta;
  switch (which) {
  case DF_SCHED_BETAS: return beta;
  case DF_SCHED_ALPHAS: return alpha;
  case DF_SCHED_ALPHA_BAR: return ab;
  case DF_SCHED_ALPHA_BAR_PREV: return ab_prev;
  case DF_SCHED_SQRT_ALPHA_BAR: return sqrt(ab);
  case DF_SCHED_SQRT_ONE_MINUS_ALPHA_BAR: return sqrt(one_minus);
  case DF_SCHED_SNR: return ab / one_minus;
  case DF_SCHED_LOG_SNR: return ab > 0.0 ? log(ab) - log(one_minus) : -INFINITY;
  case DF_SCHED_SIGMA: return ab > 0.0 ? sqrt(one_minus / ab) : INFINITY; /* zero terminal SNR: pure noise */
  case DF_SCHED_POSTERIOR_VARIANCE: return (1.0 - ab_prev) / one_minus * beta;
  case DF_SCHED_POSTERIOR_MEAN_COEF1: return beta * sqrt(ab_prev) / one_minus;
  case DF_SCHED_POSTERIOR_MEAN_COEF2: return (1.0 - ab_prev) * sqrt(alpha) / one_minus;
  default: return NAN;
  }
}

df_status df_schedule_tensor(df_tensor **out, const df_schedule *s, df_schedule_table which) {
  if ((unsigned)which >= DF_SCHED_TABLE_COUNT) return df_error(DF_EINVAL, "schedule: unknown table %d", (int)which);
  df_tensor *r;
  df_status st = df_tensor_empty(&r, 1, &s->T);
  if (st) return st;
  float *p = df_tensor_data(r);
  for (int64_t t = 1; t <= s->T; t++) p[t - 1] = (float)df_schedule_value(s, which, t);
  *out = r;
  return DF_OK;
}

/* ---- gathering per-sample coefficients ---------------------------------- */

df_status df_schedule_gather(df_tensor **out, const df_tensor *table, const df_tensor *t, int base, const char *op) {
  char buf[128];
  if (table->ndim != 1) return df_error(DF_EINVAL, "%s: the table must be 1-d, got %s", op, df_format_shape(buf, sizeof buf, table->ndim, table->size));
  if (t->ndim != 1)
    return df_error(DF_EINVAL, "%s: timesteps must be a 1-d tensor (N), got %s", op, df_format_shape(buf, sizeof buf, t->ndim, t->size));
  int64_t T = table->size[0], n = t->size[0];
  df_tensor *r;
  df_status st = df_tensor_empty(&r, 1, &n);
  if (st) return st;
  const float *tv = t->storage->data + t->offset, *tab = table->storage->data + table->offset;
  float *p = df_tensor_data(r);
  for (int64_t i = 0; i < n; i++) {
    float v = tv[i * t->stride[0]];
    if (!(v >= (float)base && v <= (float)(T - 1 + base)) || v != floorf(v)) {
      df_tensor_release(r);
      return df_error(DF_EINVAL, "%s: timestep %g at position %lld is not an integer in [%d, %lld]", op, (double)v,
                      (long long)i + 1, base, (long long)(T - 1 + base));
    }
    p[i] = tab[((int64_t)v - base) * table->stride[0]];
  }
  *out = r;
  return DF_OK;
}

/* ---- the mix kernel ----------------------------------------------------- */

/* out = sum_k coef[k][n] src[k], over contiguous operands of numel `total`,
 * sample n = i / inner; coef[k] has stride cstride[k] (0: one for all). */
typedef struct {
  float *out;
  const float *src[3];
  const float *coef[3];
  int64_t cstride[3];
  int nterms;
  int64_t total, inner, block;
} mix_job;

static void mix_task(int64_t task, void *arg) {
  const mix_job *j = arg;
  int64_t begin = task * j->block, end = begin + j->block < j->total ? begin + j->block : j->total;
  const float *x = j->src[0], *y = j->src[1], *z = j->src[2];
  float *o = j->out;
  for (int64_t i = begin; i < end;) {
    int64_t n = i / j->inner, stop = (n + 1) * j->inner < end ? (n + 1) * j->inner : end;
    float a = j->coef[0][n * j->cstride[0]];
    float b = j->nterms > 1 ? j->coef[1][n * j->cstride[1]] : 0.0f;
    float c = j->nterms > 2 ? j->coef[2][n * j->cstride[2]] : 0.0f;
    switch (j->nterms) {
    case 1: for (; i < stop; i++) o[i] = a * x[i]; break;
    case 2: for (; i < stop; i++) o[i] = a * x[i] + b * y[i]; break;
    default: for (; i < stop; i++) o[i] = a * x[i] + b * y[i] + c * z[i]; break;
    }
  }
}

/* out = sum_k coef[k] src[k] with src[0] fixing the shape (the others must
 * match it) and inner = elements per coefficient. No autograd here. */
static df_status mix(df_tensor **out, int nterms, const df_tensor *const *src, const float *const *coef,
                     const int64_t *cstride, int64_t inner) {
  const df_tensor *x = src[0];
  df_tensor *r = NULL, *c[3] = {NULL, NULL, NULL};
  df_status st = df_tensor_empty(&r, x->ndim, x->size);
  for (int k = 0; k < nterms && !st; k++) st = df_tensor_contiguous(&c[k], src[k]);
  if (!st) {
    mix_job j = {.out = df_tensor_data(r), .nterms = nterms, .total = df_tensor_numel(x), .inner = inner > 0 ? inner : 1,
                 .block = DF_ITER_GRAIN};
    for (int k = 0; k < nterms; k++) {
      j.src[k] = df_tensor_data(c[k]);
      j.coef[k] = coef[k];
      j.cstride[k] = cstride[k];
    }
    if (j.total > 0) df_parallel_for((j.total + j.block - 1) / j.block, mix_task, &j);
  }
  for (int k = 0; k < 3; k++) df_tensor_release(c[k]);
  if (st) {
    df_tensor_release(r);
    return st;
  }
  *out = r;
  return DF_OK;
}

static df_status check_same(const char *op, const char *what, const df_tensor *t, const char *ref_name, const df_tensor *ref) {
  if (df_tensor_same_shape(t, ref)) return DF_OK;
  char b1[128], b2[128];
  return df_error(DF_EINVAL, "%s: %s has shape %s but %s has shape %s", op, what, df_format_shape(b1, sizeof b1, t->ndim, t->size),
                  ref_name, df_format_shape(b2, sizeof b2, ref->ndim, ref->size));
}

/* a per-sample coefficient: N or 1 elements, contiguous along its one dim */
static df_status check_coef(const char *op, const char *what, const df_tensor *a, int64_t n, int64_t *stride) {
  int64_t numel = df_tensor_numel(a);
  if (a->ndim <= 1 && (numel == n || numel == 1)) {
    *stride = numel == 1 ? 0 : a->stride[0];
    return DF_OK;
  }
  char b1[128];
  return df_error(DF_EINVAL, "%s: %s must hold one coefficient per sample (%lld) or one for all, got shape %s", op, what,
                  (long long)n, df_format_shape(b1, sizeof b1, a->ndim, a->size));
}

/* ---- combine: out = a[n] x + b[n] y, with autograd for x and y ----------- */

static df_status combine_raw(df_tensor **out, const df_tensor *a, const df_tensor *x, const df_tensor *b, const df_tensor *y,
                             const char *op) {
  char b1[128];
  if (x->ndim < 1) return df_error(DF_EINVAL, "%s: expected a batch (N, ...), got shape %s", op, df_format_shape(b1, sizeof b1, x->ndim, x->size));
  int64_t n = x->size[0], stride[2] = {0, 0};
  df_status st;
  if ((st = check_coef(op, "the first coefficient", a, n, &stride[0]))) return st;
  if (y && (st = check_coef(op, "the second coefficient", b, n, &stride[1]))) return st;
  if (y && (st = check_same(op, "the second tensor", y, "the first", x))) return st;
  const df_tensor *src[2] = {x, y};
  const float *coef[2] = {df_tensor_data(a), y ? df_tensor_data(b) : NULL};
  return mix(out, y ? 2 : 1, src, coef, stride, n > 0 ? df_tensor_numel(x) / n : 1);
}

/* saved[0] = a, saved[1] = b; inputs (x[, y]) */
static df_status bw_combine(df_node *node, const df_tensor *g, df_tensor **gi) {
  df_status st = DF_OK;
  for (int k = 0; k < node->ninputs && !st; k++)
    if (df_node_needs_grad(node, k)) st = combine_raw(&gi[k], node->saved[k], g, NULL, NULL, "schedule_combine backward");
  return st;
}

df_status df_schedule_combine(df_tensor **out, const df_tensor *a, const df_tensor *x, const df_tensor *b,
                              const df_tensor *y, const char *op) {
  if ((b == NULL) != (y == NULL)) return df_error(DF_EINVAL, "%s: the second coefficient and tensor come together", op);
  df_tensor *r;
  df_status st = combine_raw(&r, a, x, b, y, op);
  if (st) return st;
  const df_tensor *inputs[2] = {x, y};
  df_node *node;
  if ((st = df_autograd_record(r, "schedule_combine", bw_combine, y ? 2 : 1, inputs, &node)) ||
      (node && (st = df_node_save(node, 0, a))) || (node && y && (st = df_node_save(node, 1, b)))) {
    df_tensor_release(r);
    return st;
  }
  *out = r;
  return DF_OK;
}

/* ---- sampler steps ------------------------------------------------------ */

static df_status check_step(const char *op, const df_tensor *xt, const df_tensor *x0, const df_tensor *noise, double ab_t,
                            double ab_prev) {
  df_status st;
  if ((st = check_same(op, "x0", x0, "x_t", xt)) || (noise && (st = check_same(op, "the noise", noise, "x_t", xt)))) return st;
  /* alpha_bar_t = 0 (a zero terminal SNR schedule's first step) is fine: x_t is pure noise, eps = x_t */
  if (!(ab_t >= 0.0 && ab_t < ab_prev && ab_prev <= 1.0))
    return df_error(DF_EINVAL, "%s: expected 0 <= alpha_bar_t < alpha_bar_prev <= 1, got alpha_bar_t = %g and alpha_bar_prev = %g",
                    op, ab_t, ab_prev);
  return DF_OK;
}

/* x_prev = c[0] xt + c[1] x0 (+ c[2] noise), one set of coefficients for the batch */
static df_status step_mix(df_tensor **out, const df_tensor *xt, const df_tensor *x0, const df_tensor *noise, const double c[3]) {
  const df_tensor *src[3] = {xt, x0, noise};
  float coef[3] = {(float)c[0], (float)c[1], (float)c[2]};
  const float *cp[3] = {&coef[0], &coef[1], &coef[2]};
  const int64_t stride[3] = {0, 0, 0};
  bool prev = df_set_grad_enabled(false);
  df_status st = mix(out, noise && c[2] != 0.0 ? 3 : 2, src, cp, stride, df_tensor_numel(xt));
  df_set_grad_enabled(prev);
  return st;
}

df_status df_ddpm_step(df_tensor **out, const df_tensor *xt, const df_tensor *x0, const df_tensor *noise,
                       double alpha_bar_t, double alpha_bar_prev, bool beta_tilde) {
  df_status st = check_step("ddpm_step", xt, x0, noise, alpha_bar_t, alpha_bar_prev);
  if (st) return st;
  double alpha = alpha_bar_t / alpha_bar_prev, beta = 1.0 - alpha, one_minus = 1.0 - alpha_bar_t;
  double var = beta_tilde ? (1.0 - alpha_bar_prev) / one_minus * beta : beta;
  double c[3] = {(1.0 - alpha_bar_prev) * sqrt(alpha) / one_minus, beta * sqrt(alpha_bar_prev) / one_minus, sqrt(var)};
  return step_mix(out, xt, x0, noise, c);
}

df_status df_ddim_step(df_tensor **out, const df_tensor *xt, const df_tensor *x0, const df_tensor *noise,
                       double alpha_bar_t, double alpha_bar_prev, double eta) {
  df_status st = check_step("ddim_step", xt, x0, noise, alpha_bar_t, alpha_bar_prev);
  if (st) return st;
  if (!(eta >= 0.0) || !isfinite(eta)) return df_error(DF_EINVAL, "ddim_step: eta must be a finite number >= 0, got %g", eta);
  double one_minus = 1.0 - alpha_bar_t, one_minus_prev = 1.0 - alpha_bar_prev;
  double var = eta * eta * (one_minus_prev / one_minus) * (1.0 - alpha_bar_t / alpha_bar_prev);
  double dir = one_minus_prev - var; /* the share of eps that stays deterministic */
  if (dir < 0.0) {
    if (dir > -1e-12 * one_minus_prev) dir = 0.0; /* rounding at eta = 1 with alpha_bar_prev near 1 */
    else
      return df_error(DF_EINVAL, "ddim_step: eta = %g makes sigma^2 = %g exceed 1 - alpha_bar_prev = %g", eta, var, one_minus_prev);
  }
  /* eps = (x_t - sqrt(ab_t) x0) / sqrt(1 - ab_t), folded in */
  double k = sqrt(dir / one_minus);
  double c[3] = {k, sqrt(alpha_bar_prev) - k * sqrt(alpha_bar_t), sqrt(var)};
  return step_mix(out, xt, x0, noise, c);
}
