/* elementwise.c — unary and binary maps, clamp and where, with NumPy
 * broadcasting, through the strided loop driver of core/iter.h. Each op is
 * one scalar expression; the kernel macros give it a contiguous fast path
 * (which the compiler vectorises) and a strided fallback.
 *
 * exp, sigmoid and silu (and silu's gradient) are the exception: they need
 * exp, which the compiler cannot vectorise, and they sit on a U-Net's hot
 * path, so they run on the AVX-512 / AVX2 forms of core/vmath.h when the
 * CPU has them, a scalar loop over libm's expf otherwise. Every element
 * goes through the same vector code wherever it sits (a masked or padded
 * tail, a gathered strided run), so results don't depend on the thread
 * count or the layout. */
#include <assert.h>
#include <float.h>
#include <math.h>
#include <string.h>

#include "../core/iter.h"
#include "../core/vmath.h"
#include "../df.h"
#include "activation.h"

const char *const df_unary_names[DF_UNARY_COUNT] = {
    "neg", "abs", "exp", "log", "sqrt", "rsqrt", "sin", "cos", "tanh", "sigmoid", "relu", "silu", "gelu",
};
const char *const df_binary_names[DF_BINARY_COUNT] = {
    "add", "sub", "mul", "div", "pow", "maximum", "minimum", "eq", "ne", "lt", "le", "gt", "ge",
};
static_assert(DF_GELU + 1 == DF_UNARY_COUNT, "df_unary_names must list every unary op");
static_assert(DF_GE + 1 == DF_BINARY_COUNT, "df_binary_names must list every binary op");

/* The scalar forms, for CPUs without AVX2 (or not x86). sigmoid is
 * 1 / (1 + e), e = exp(-x): accurate for either sign, exactly 0 or 1 at
 * ±inf, NaN for NaN (and no branch on the sign, which would mispredict). */
static inline float sigmoid_of(float x) { return 1.0f / (1.0f + expf(-x)); }

/* x clamped to the finite floats (NaN stays NaN), so that x * 0 is 0 at ±inf */
static inline float finite_part(float x) { return x < -FLT_MAX ? -FLT_MAX : (x > FLT_MAX ? FLT_MAX : x); }

/* silu(-inf) = 0, its limit */
static inline float silu_of(float x) { return finite_part(x) * sigmoid_of(x); }

/* silu'(x) = s (1 + x (1 - s)), with 1 - s = e s (no cancellation), which
 * is 1 where e overflows */
static inline float silu_slope_of(float x) {
  float e = expf(-x), s = 1.0f / (1.0f + e), c = e < INFINITY ? e * s : 1.0f;
  return s * (1.0f + finite_part(x) * c);
}

/* ---- vector maps: exp, sigmoid, silu and silu's gradient ---------------
 * A map runs over contiguous arrays: o[i] = f(a[i]) for a forward,
 * o[i] = a[i] f'(b[i]) for a gradient (a = the incoming gradient, b = x).
 * Each has a scalar, an AVX2 and an AVX-512 form, picked per call. */

typedef void (*map_fn)(int64_t n, float *o, const float *a, const float *b);

typedef struct {
  map_fn form[3]; /* indexed by df_vmath_level; NULL where not compiled */
} map_forms;

static void exp_scalar(int64_t n, float *o, const float *a, const float *b) {
  (void)b;
  for (int64_t i = 0; i < n; i++) o[i] = expf(a[i]);
}
static void sigmoid_scalar(int64_t n, float *o, const float *a, const float *b) {
  (void)b;
  for (int64_t i = 0; i < n; i++) o[i] = sigmoid_of(a[i]);
}
static void silu_scalar(int64_t n, float *o, const float *a, const float *b) {
  (void)b;
  for (int64_t i = 0; i < n; i++) o[i] = silu_of(a[i]);
}
static void silu_grad_scalar(int64_t n, float *o, const float *a, const float *b) {
  for (int64_t i = 0; i < n; i++) o[i] = a[i] * silu_slope_of(b[i]);
}

#if DF_VMATH_X86

__attribute__((target("avx512f"))) static inline __m512 sigmoid512(__m512 x) {
  __m512 s, c;
  df_logistic512(x, &s, &c);
  return s;
}
__attribute__((target("avx512f"))) static inline __m512 silu512(__m512 x) {
  return _mm512_mul_ps(_mm512_max_ps(_mm512_set1_ps(-FLT_MAX), x), sigmoid512(x)); /* max keeps NaN (2nd operand) */
}
__attribute__((target("avx512f"))) static inline __m512 silu_grad512(__m512 g, __m512 x) {
  __m512 s, c;
  df_logistic512(x, &s, &c);
  __m512 xf = _mm512_min_ps(_mm512_set1_ps(FLT_MAX), _mm512_max_ps(_mm512_set1_ps(-FLT_MAX), x));
  return _mm512_mul_ps(g, _mm512_mul_ps(s, _mm512_fmadd_ps(xf, c, _mm512_set1_ps(1.0f))));
}

__attribute__((target("avx2,fma"))) static inline __m256 sigmoid256(__m256 x) {
  __m256 s, c;
  df_logistic256(x, &s, &c);
  return s;
}
__attribute__((target("avx2,fma"))) static inline __m256 silu256(__m256 x) {
  return _mm256_mul_ps(_mm256_max_ps(_mm256_set1_ps(-FLT_MAX), x), sigmoid256(x));
}
__attribute__((target("avx2,fma"))) static inline __m256 silu_grad256(__m256 g, __m256 x) {
  __m256 s, c;
  df_logistic256(x, &s, &c);
  __m256 xf = _mm256_min_ps(_mm256_set1_ps(FLT_MAX), _mm256_max_ps(_mm256_set1_ps(-FLT_MAX), x));
  return _mm256_mul_ps(g, _mm256_mul_ps(s, _mm256_fmadd_ps(xf, c, _mm256_set1_ps(1.0f))));
}

/* The loops: whole vectors, then the tail through a mask (AVX-512) or a
 * zero-padded copy (AVX2), so tail elements get the same arithmetic. */
#define MAP512(name, f)                                                                            \
  __attribute__((target("avx512f"))) static void name(int64_t n, float *o, const float *a,        \
                                                      const float *b) {                           \
    (void)b;                                                                                       \
    int64_t i = 0;                                                                                 \
    for (; i + 16 <= n; i += 16) _mm512_storeu_ps(o + i, f(_mm512_loadu_ps(a + i)));               \
    if (i < n) {                                                                                   \
      __mmask16 m = (__mmask16)((1u << (n - i)) - 1u);                                             \
      _mm512_mask_storeu_ps(o + i, m, f(_mm512_maskz_loadu_ps(m, a + i)));                         \
    }                                                                                              \
  }
#define GRAD_MAP512(name, f)                                                                       \
  __attribute__((target("avx512f"))) static void name(int64_t n, float *o, const float *a,        \
                                                      const float *b) {                           \
    int64_t i = 0;                                                                                 \
    for (; i + 16 <= n; i += 16) _mm512_storeu_ps(o + i, f(_mm512_loadu_ps(a + i), _mm512_loadu_ps(b + i))); \
    if (i < n) {                                                                                   \
      __mmask16 m = (__mmask16)((1u << (n - i)) - 1u);                                             \
      _mm512_mask_storeu_ps(o + i, m, f(_mm512_maskz_loadu_ps(m, a + i), _mm512_maskz_loadu_ps(m, b + i))); \
    }                                                                                              \
  }
#define MAP256(name, f)                                                                            \
  __attribute__((target("avx2,fma"))) static void name(int64_t n, float *o, const float *a,       \
                                                       const float *b) {                          \
    (void)b;                                                                                       \
    int64_t i = 0;                                                                                 \
    for (; i + 8 <= n; i += 8) _mm256_storeu_ps(o + i, f(_mm256_loadu_ps(a + i)));                 \
    if (i < n) {                                                                                   \
      float pa[8] = {0}, po[8];                                                                    \
      memcpy(pa, a + i, sizeof(float) * (size_t)(n - i));                                         \
      _mm256_storeu_ps(po, f(_mm256_loadu_ps(pa)));                                                \
      memcpy(o + i, po, sizeof(float) * (size_t)(n - i));                                          \
    }                                                                                              \
  }
#define GRAD_MAP256(name, f)                                                                       \
  __attribute__((target("avx2,fma"))) static void name(int64_t n, float *o, const float *a,       \
                                                       const float *b) {                          \
    int64_t i = 0;                                                                                 \
    for (; i + 8 <= n; i += 8) _mm256_storeu_ps(o + i, f(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i))); \
    if (i < n) {                                                                                   \
      float pa[8] = {0}, pb[8] = {0}, po[8];                                                       \
      memcpy(pa, a + i, sizeof(float) * (size_t)(n - i));                                         \
      memcpy(pb, b + i, sizeof(float) * (size_t)(n - i));                                         \
      _mm256_storeu_ps(po, f(_mm256_loadu_ps(pa), _mm256_loadu_ps(pb)));                           \
      memcpy(o + i, po, sizeof(float) * (size_t)(n - i));                                          \
    }                                                                                              \
  }

MAP512(exp_avx512, df_exp512)
MAP512(sigmoid_avx512, sigmoid512)
MAP512(silu_avx512, silu512)
GRAD_MAP512(silu_grad_avx512, silu_grad512)
MAP256(exp_avx2, df_exp256)
MAP256(sigmoid_avx2, sigmoid256)
MAP256(silu_avx2, silu256)
GRAD_MAP256(silu_grad_avx2, silu_grad256)

#define FORMS(name) {{name##_scalar, name##_avx2, name##_avx512}}
#else
#define FORMS(name) {{name##_scalar, NULL, NULL}}
#endif

static const map_forms exp_forms = FORMS(exp);
static const map_forms sigmoid_forms = FORMS(sigmoid);
static const map_forms silu_forms = FORMS(silu);
static const map_forms silu_grad_forms = FORMS(silu_grad);

static map_fn pick(const map_forms *forms) {
  map_fn f = forms->form[df_vmath_level_get()];
  return f ? f : forms->form[DF_VMATH_SCALAR];
}

void df_silu_map(int64_t n, float *o, const float *x) { pick(&silu_forms)(n, o, x, NULL); }
void df_silu_grad_map(int64_t n, float *o, const float *g, const float *x) { pick(&silu_grad_forms)(n, o, g, x); }

#define GATHER_BLOCK 256

/* Runs a map as a df_iter kernel over operands (o, a) or (o, a, b, ...):
 * contiguous runs go straight to it, strided ones through blocks gathered
 * on the stack. */
static void run_map(const map_forms *forms, bool grad, int64_t n, float *const *p, const int64_t *s) {
  map_fn f = pick(forms);
  if (s[0] == 1 && s[1] == 1 && (!grad || s[2] == 1)) {
    f(n, p[0], p[1], grad ? p[2] : NULL);
    return;
  }
  float bo[GATHER_BLOCK], ba[GATHER_BLOCK], bb[GATHER_BLOCK];
  for (int64_t i0 = 0; i0 < n; i0 += GATHER_BLOCK) {
    int64_t m = n - i0 < GATHER_BLOCK ? n - i0 : GATHER_BLOCK;
    for (int64_t i = 0; i < m; i++) ba[i] = p[1][(i0 + i) * s[1]];
    if (grad)
      for (int64_t i = 0; i < m; i++) bb[i] = p[2][(i0 + i) * s[2]];
    f(m, bo, ba, grad ? bb : NULL);
    for (int64_t i = 0; i < m; i++) p[0][(i0 + i) * s[0]] = bo[i];
  }
}

static void k_exp(int64_t n, float *const *p, const int64_t *s, const void *ctx) {
  (void)ctx;
  run_map(&exp_forms, false, n, p, s);
}
static void k_sigmoid(int64_t n, float *const *p, const int64_t *s, const void *ctx) {
  (void)ctx;
  run_map(&sigmoid_forms, false, n, p, s);
}
static void k_silu(int64_t n, float *const *p, const int64_t *s, const void *ctx) {
  (void)ctx;
  run_map(&silu_forms, false, n, p, s);
}
/* over the operands (gi, g, x, y) */
static void g_silu(int64_t n, float *const *p, const int64_t *s, const void *ctx) {
  (void)ctx;
  run_map(&silu_grad_forms, true, n, p, s);
}

/* ---- unary -------------------------------------------------------------- */

#define UNARY_KERNEL(name, expr)                                                   \
  static void name(int64_t n, float *const *p, const int64_t *s, const void *ctx) { \
    (void)ctx;                                                                     \
    float *o = p[0];                                                               \
    const float *a = p[1];                                                         \
    if (s[0] == 1 && s[1] == 1) {                                                  \
      for (int64_t i = 0; i < n; i++) {                                            \
        float x = a[i];                                                            \
        o[i] = (expr);                                                             \
      }                                                                            \
    } else {                                                                       \
      for (int64_t i = 0; i < n; i++) {                                            \
        float x = a[i * s[1]];                                                     \
        o[i * s[0]] = (expr);                                                      \
      }                                                                            \
    }                                                                              \
  }

UNARY_KERNEL(k_neg, -x)
UNARY_KERNEL(k_abs, fabsf(x))
UNARY_KERNEL(k_log, logf(x))
UNARY_KERNEL(k_sqrt, sqrtf(x))
UNARY_KERNEL(k_rsqrt, 1.0f / sqrtf(x))
UNARY_KERNEL(k_sin, sinf(x))
UNARY_KERNEL(k_cos, cosf(x))
UNARY_KERNEL(k_tanh, tanhf(x))
UNARY_KERNEL(k_relu, x > 0.0f ? x : (x == x ? 0.0f : x))
UNARY_KERNEL(k_gelu, 0.5f * x * (1.0f + erff(x * 0.70710678118654752f))) /* exact (erf) form */

static const df_iter_kernel unary_kernels[DF_UNARY_COUNT] = {
    k_neg, k_abs, k_exp, k_log, k_sqrt, k_rsqrt, k_sin, k_cos, k_tanh, k_sigmoid, k_relu, k_silu, k_gelu,
};

static df_status check_unary(df_unary_op op) {
  if ((unsigned)op >= DF_UNARY_COUNT) return df_error(DF_EINVAL, "unary: unknown op %d", (int)op);
  return DF_OK;
}

/* Runs kernel over ops (ops[0] is the output). */
static df_status apply(const char *name, int nop, const df_tensor *const *ops, df_iter_kernel kernel, const void *ctx) {
  df_iter it;
  df_status st = df_iter_init(&it, name, nop, ops);
  if (st) return st;
  df_iter_run(&it, kernel, ctx);
  return DF_OK;
}

/* Gradients: gi = g * f'(x), written with x (the input) and y (the output),
 * over the operands (gi, g, x, y). */
#define UNARY_GRAD_KERNEL(name, expr)                                              \
  static void name(int64_t n, float *const *p, const int64_t *s, const void *ctx) { \
    (void)ctx;                                                                     \
    if (s[0] == 1 && s[1] == 1 && s[2] == 1 && s[3] == 1) {                        \
      float *o = p[0];                                                             \
      const float *gp = p[1], *xp = p[2], *yp = p[3];                              \
      for (int64_t i = 0; i < n; i++) {                                            \
        float gv = gp[i], x = xp[i], y = yp[i];                                    \
        (void)x;                                                                   \
        (void)y;                                                                   \
        o[i] = (expr);                                                             \
      }                                                                            \
      return;                                                                      \
    }                                                                              \
    for (int64_t i = 0; i < n; i++) {                                              \
      float gv = p[1][i * s[1]], x = p[2][i * s[2]], y = p[3][i * s[3]];           \
      (void)x;                                                                     \
      (void)y;                                                                     \
      p[0][i * s[0]] = (expr);                                                     \
    }                                                                              \
  }

UNARY_GRAD_KERNEL(g_neg, -gv)
UNARY_GRAD_KERNEL(g_abs, x > 0.0f ? gv : (x < 0.0f ? -gv : 0.0f))
UNARY_GRAD_KERNEL(g_exp, gv * y)
UNARY_GRAD_KERNEL(g_log, gv / x)
UNARY_GRAD_KERNEL(g_sqrt, 0.5f * gv / y)
UNARY_GRAD_KERNEL(g_rsqrt, -0.5f * gv * y * y * y)
UNARY_GRAD_KERNEL(g_sin, gv * cosf(x))
UNARY_GRAD_KERNEL(g_cos, -gv * sinf(x))
UNARY_GRAD_KERNEL(g_tanh, gv * (1.0f - y * y))
UNARY_GRAD_KERNEL(g_sigmoid, gv * y * (1.0f - y)) /* from the saved output, as PyTorch */
UNARY_GRAD_KERNEL(g_relu, x > 0.0f ? gv : 0.0f)
UNARY_GRAD_KERNEL(g_gelu, gv * (0.5f * (1.0f + erff(x * 0.70710678118654752f)) +
                                x * 0.39894228040143268f * expf(-0.5f * x * x)))

static const df_iter_kernel unary_grad_kernels[DF_UNARY_COUNT] = {
    g_neg, g_abs, g_exp, g_log, g_sqrt, g_rsqrt, g_sin, g_cos, g_tanh, g_sigmoid, g_relu, g_silu, g_gelu,
};
/* what each gradient reads: 1 = the input x, 2 = the output y */
static const unsigned char unary_grad_reads[DF_UNARY_COUNT] = {0, 1, 2, 1, 2, 2, 1, 1, 2, 2, 1, 1, 1};

/* saved[0] = x, saved[1] = y (when the gradient reads them); iarg[0] = op */
static df_status bw_unary(df_node *n, const df_tensor *g, df_tensor **gi) {
  df_unary_op op = (df_unary_op)n->iarg[0];
  const df_tensor *x = n->saved[0] ? n->saved[0] : g, *y = n->saved[1] ? n->saved[1] : g;
  df_tensor *r;
  df_status st = df_tensor_empty(&r, g->ndim, g->size);
  if (st) return st;
  const df_tensor *ops[4] = {r, g, x, y};
  if ((st = apply(df_unary_names[op], 4, ops, unary_grad_kernels[op], NULL))) {
    df_tensor_release(r);
    return st;
  }
  gi[0] = r;
  return DF_OK;
}

df_status df_unary(df_unary_op op, df_tensor **out, const df_tensor *a) {
  df_status st = check_unary(op);
  if (st) return st;
  df_tensor *r;
  if ((st = df_tensor_empty(&r, a->ndim, a->size))) return st;
  const df_tensor *ops[2] = {r, a};
  apply(df_unary_names[op], 2, ops, unary_kernels[op], NULL);
  df_node *node;
  if ((st = df_autograd_record(r, df_unary_names[op], bw_unary, 1, &a, &node)) ||
      (node && (unary_grad_reads[op] & 1) && (st = df_node_save(node, 0, a))) ||
      (node && (unary_grad_reads[op] & 2) && (st = df_node_save(node, 1, r)))) {
    df_tensor_release(r);
    return st;
  }
  if (node) node->iarg[0] = op;
  *out = r;
  return DF_OK;
}

df_status df_unary_(df_unary_op op, df_tensor *a) {
  df_status st = check_unary(op);
  if (st || (st = df_check_inplace(df_unary_names[op], a))) return st;
  const df_tensor *ops[2] = {a, a};
  if ((st = apply(df_unary_names[op], 2, ops, unary_kernels[op], NULL))) return st;
  df_tensor_bump_version(a);
  return DF_OK;
}

/* ---- binary ------------------------------------------------------------- */

#define BINARY_KERNEL(name, expr)                                                  \
  static void name(int64_t n, float *const *p, const int64_t *s, const void *ctx) { \
    (void)ctx;                                                                     \
    float *o = p[0];                                                               \
    const float *a = p[1], *b = p[2];                                              \
    if (s[0] == 1 && s[1] == 1 && s[2] == 1) {                                     \
      for (int64_t i = 0; i < n; i++) {                                            \
        float x = a[i], y = b[i];                                                  \
        o[i] = (expr);                                                             \
      }                                                                            \
    } else if (s[0] == 1 && s[1] == 1 && s[2] == 0) {                              \
      const float y = b[0];                                                        \
      for (int64_t i = 0; i < n; i++) {                                            \
        float x = a[i];                                                            \
        o[i] = (expr);                                                             \
      }                                                                            \
    } else if (s[0] == 1 && s[1] == 0 && s[2] == 1) {                              \
      const float x = a[0];                                                        \
      for (int64_t i = 0; i < n; i++) {                                            \
        float y = b[i];                                                            \
        o[i] = (expr);                                                             \
      }                                                                            \
    } else {                                                                       \
      for (int64_t i = 0; i < n; i++) {                                            \
        float x = a[i * s[1]], y = b[i * s[2]];                                    \
        o[i * s[0]] = (expr);                                                      \
      }                                                                            \
    }                                                                              \
  }

/* maximum/minimum propagate NaN, as PyTorch does */
BINARY_KERNEL(k_add, x + y)
BINARY_KERNEL(k_sub, x - y)
BINARY_KERNEL(k_mul, x * y)
BINARY_KERNEL(k_div, x / y)
BINARY_KERNEL(k_pow, powf(x, y))
BINARY_KERNEL(k_maximum, x != x || x > y ? x : y)
BINARY_KERNEL(k_minimum, x != x || x < y ? x : y)
BINARY_KERNEL(k_eq, (float)(x == y))
BINARY_KERNEL(k_ne, (float)(x != y))
BINARY_KERNEL(k_lt, (float)(x < y))
BINARY_KERNEL(k_le, (float)(x <= y))
BINARY_KERNEL(k_gt, (float)(x > y))
BINARY_KERNEL(k_ge, (float)(x >= y))

static const df_iter_kernel binary_kernels[DF_BINARY_COUNT] = {
    k_add, k_sub, k_mul, k_div, k_pow, k_maximum, k_minimum, k_eq, k_ne, k_lt, k_le, k_gt, k_ge,
};

static df_status check_binary(df_binary_op op) {
  if ((unsigned)op >= DF_BINARY_COUNT) return df_error(DF_EINVAL, "binary: unknown op %d", (int)op);
  return DF_OK;
}

static df_status binary_forward(df_binary_op op, df_tensor **out, const df_tensor *a, const df_tensor *b) {
  df_status st = check_binary(op);
  if (st) return st;
  int ndim;
  int64_t size[DF_MAX_DIMS];
  if ((st = df_broadcast_shape(df_binary_names[op], a->ndim, a->size, b->ndim, b->size, &ndim, size))) return st;
  df_tensor *r;
  if ((st = df_tensor_empty(&r, ndim, size))) return st;
  const df_tensor *ops[3] = {r, a, b};
  apply(df_binary_names[op], 3, ops, binary_kernels[op], NULL);
  *out = r;
  return DF_OK;
}

/* d(a op b)/da and /db times g, over the operands (gi, g, a, b); ties of
 * maximum/minimum split the gradient evenly, as PyTorch does. */
typedef struct {
  df_binary_op op;
  int which; /* 0: gradient for a, 1: for b */
} binary_grad_ctx;

#define GRAD_LOOP(expr)                                                   \
  for (int64_t i = 0; i < n; i++) {                                       \
    float gv = p[1][i * s[1]], x = p[2][i * s[2]], y = p[3][i * s[3]];    \
    (void)gv, (void)x;                                                    \
    (void)y;                                                              \
    p[0][i * s[0]] = (expr);                                              \
  }                                                                       \
  break;

static void k_binary_grad(int64_t n, float *const *p, const int64_t *s, const void *ctx) {
  const binary_grad_ctx *c = ctx;
  switch (c->op * 2 + c->which) {
  case DF_ADD * 2: case DF_ADD * 2 + 1: case DF_SUB * 2: GRAD_LOOP(gv)
  case DF_SUB * 2 + 1: GRAD_LOOP(-gv)
  case DF_MUL * 2: GRAD_LOOP(gv * y)
  case DF_MUL * 2 + 1: GRAD_LOOP(gv * x)
  case DF_DIV * 2: GRAD_LOOP(gv / y)
  case DF_DIV * 2 + 1: GRAD_LOOP(-gv * x / (y * y))
  case DF_POW * 2: GRAD_LOOP(y == 0.0f ? 0.0f : gv * y * powf(x, y - 1.0f))
  case DF_POW * 2 + 1: GRAD_LOOP(x == 0.0f && y >= 0.0f ? 0.0f : gv * powf(x, y) * logf(x))
  case DF_MAXIMUM * 2: GRAD_LOOP(x > y ? gv : (x == y ? 0.5f * gv : 0.0f))
  case DF_MAXIMUM * 2 + 1: GRAD_LOOP(y > x ? gv : (x == y ? 0.5f * gv : 0.0f))
  case DF_MINIMUM * 2: GRAD_LOOP(x < y ? gv : (x == y ? 0.5f * gv : 0.0f))
  case DF_MINIMUM * 2 + 1: GRAD_LOOP(y < x ? gv : (x == y ? 0.5f * gv : 0.0f))
  default: GRAD_LOOP(0.0f) /* comparisons: never recorded */
  }
}

/* The gradient for input `which` of a op b, in g's (broadcast) shape. */
static df_status binary_grad(df_binary_op op, int which, const df_tensor *g, const df_tensor *a, const df_tensor *b,
                             df_tensor **gi) {
  if (op == DF_ADD || (op == DF_SUB && which == 0)) { /* g itself */
    df_tensor_retain((df_tensor *)g);
    *gi = (df_tensor *)g;
    return DF_OK;
  }
  df_tensor *r;
  df_status st = df_tensor_empty(&r, g->ndim, g->size);
  if (st) return st;
  binary_grad_ctx c = {op, which};
  const df_tensor *ops[4] = {r, g, a, b};
  if ((st = apply(df_binary_names[op], 4, ops, k_binary_grad, &c))) {
    df_tensor_release(r);
    return st;
  }
  *gi = r;
  return DF_OK;
}

static bool is_differentiable(df_binary_op op) { return op <= DF_MINIMUM; }

/* add and sub never read their operands' values for the gradient, so they
 * save nothing (a U-Net's residual adds would keep two activations each) */
static bool grad_reads_operands(df_binary_op op) { return op != DF_ADD && op != DF_SUB; }

/* saved[0] = a, saved[1] = b (when the gradient reads them, else g stands
 * in); iarg[0] = op */
static df_status bw_binary(df_node *n, const df_tensor *g, df_tensor **gi) {
  df_binary_op op = (df_binary_op)n->iarg[0];
  const df_tensor *a = n->saved[0] ? n->saved[0] : g, *b = n->saved[1] ? n->saved[1] : g;
  df_status st = DF_OK;
  for (int which = 0; which < 2 && !st; which++)
    if (df_node_needs_grad(n, which)) st = binary_grad(op, which, g, a, b, &gi[which]);
  return st;
}

df_status df_binary(df_binary_op op, df_tensor **out, const df_tensor *a, const df_tensor *b) {
  df_tensor *r;
  df_status st = binary_forward(op, &r, a, b);
  if (st || !is_differentiable(op)) {
    if (!st) *out = r;
    return st;
  }
  const df_tensor *in[2] = {a, b};
  df_node *node;
  if ((st = df_autograd_record(r, df_binary_names[op], bw_binary, 2, in, &node)) ||
      (node && grad_reads_operands(op) && ((st = df_node_save(node, 0, a)) || (st = df_node_save(node, 1, b))))) {
    df_tensor_release(r);
    return st;
  }
  if (node) node->iarg[0] = op;
  *out = r;
  return DF_OK;
}

/* True when b reads memory of a in a different layout, so writing a in
 * place would change b's elements before they are read. */
static bool aliases_differently(const df_tensor *a, const df_tensor *b) {
  if (a->storage != b->storage) return false;
  if (a->offset != b->offset || a->ndim != b->ndim) return true;
  for (int d = 0; d < a->ndim; d++)
    if (a->size[d] != b->size[d] || (a->size[d] > 1 && a->stride[d] != b->stride[d])) return true;
  return false;
}

df_status df_binary_(df_binary_op op, df_tensor *a, const df_tensor *b) {
  df_status st = check_binary(op);
  if (st || (st = df_check_inplace(df_binary_names[op], a))) return st;
  int ndim;
  int64_t size[DF_MAX_DIMS];
  if ((st = df_broadcast_shape(df_binary_names[op], a->ndim, a->size, b->ndim, b->size, &ndim, size))) return st;
  if (ndim != a->ndim || memcmp(size, a->size, sizeof(int64_t) * (size_t)ndim) != 0) {
    char b1[128], b2[128];
    return df_error(DF_EINVAL, "%s_: result shape %s differs from the in-place tensor's %s", df_binary_names[op],
                    df_format_shape(b1, sizeof b1, ndim, size), df_format_shape(b2, sizeof b2, a->ndim, a->size));
  }
  df_tensor *copy = NULL;
  if (aliases_differently(a, b)) {
    bool previous = df_set_grad_enabled(false);
    st = df_tensor_clone(&copy, b);
    df_set_grad_enabled(previous);
    if (st) return st;
    b = copy;
  }
  const df_tensor *ops[3] = {a, a, b};
  st = apply(df_binary_names[op], 3, ops, binary_kernels[op], NULL);
  df_tensor_release(copy);
  if (!st) df_tensor_bump_version(a);
  return st;
}

/* A 0-d tensor on the stack holding one number: never retained or freed. */
typedef struct {
  df_storage storage;
  df_tensor tensor;
  float value;
} scalar_tensor;

static const df_tensor *scalar_init(scalar_tensor *s, float v) {
  memset(s, 0, sizeof *s);
  s->value = v;
  s->storage = (df_storage){.data = &s->value, .numel = 1, .refcount = 1};
  s->tensor.storage = &s->storage;
  s->tensor.refcount = 1;
  return &s->tensor;
}

/* scalar[0] = the number, iarg[0] = op, iarg[1] = scalar_first; saved[0] = a
 * (when the gradient reads it, else g stands in) */
static df_status bw_binary_scalar(df_node *n, const df_tensor *g, df_tensor **gi) {
  scalar_tensor tmp;
  const df_tensor *s = scalar_init(&tmp, (float)n->scalar[0]), *a = n->saved[0] ? n->saved[0] : g;
  bool first = n->iarg[1];
  return binary_grad((df_binary_op)n->iarg[0], first ? 1 : 0, g, first ? s : a, first ? a : s, &gi[0]);
}

df_status df_binary_scalar(df_binary_op op, df_tensor **out, const df_tensor *a, float s, bool scalar_first) {
  scalar_tensor tmp;
  const df_tensor *b = scalar_init(&tmp, s);
  df_tensor *r;
  df_status st = scalar_first ? binary_forward(op, &r, b, a) : binary_forward(op, &r, a, b);
  if (st || !is_differentiable(op)) {
    if (!st) *out = r;
    return st;
  }
  df_node *node;
  if ((st = df_autograd_record(r, df_binary_names[op], bw_binary_scalar, 1, &a, &node)) ||
      (node && grad_reads_operands(op) && (st = df_node_save(node, 0, a)))) {
    df_tensor_release(r);
    return st;
  }
  if (node) {
    node->iarg[0] = op;
    node->iarg[1] = scalar_first;
    node->scalar[0] = s;
  }
  *out = r;
  return DF_OK;
}

df_status df_binary_scalar_(df_binary_op op, df_tensor *a, float s) {
  scalar_tensor tmp;
  return df_binary_(op, a, scalar_init(&tmp, s));
}

/* ---- clamp, where ------------------------------------------------------- */

typedef struct {
  float lo, hi;
} clamp_bounds;

static void k_clamp(int64_t n, float *const *p, const int64_t *s, const void *ctx) {
  const clamp_bounds *c = ctx;
  const float lo = c->lo, hi = c->hi;
  float *o = p[0];
  const float *a = p[1];
  for (int64_t i = 0; i < n; i++) {
    float x = a[i * s[1]];
    o[i * s[0]] = x < lo ? lo : (x > hi ? hi : x); /* NaN stays NaN */
  }
}

static df_status check_bounds(float lo, float hi) {
  if (isnan(lo) || isnan(hi) || lo > hi) return df_error(DF_EINVAL, "clamp: bounds must satisfy min <= max, got %g and %g", lo, hi);
  return DF_OK;
}

/* gradient passes where lo <= x <= hi; operands (gi, g, x) */
static void k_clamp_grad(int64_t n, float *const *p, const int64_t *s, const void *ctx) {
  const clamp_bounds *c = ctx;
  for (int64_t i = 0; i < n; i++) {
    float x = p[2][i * s[2]];
    p[0][i * s[0]] = x >= c->lo && x <= c->hi ? p[1][i * s[1]] : 0.0f;
  }
}

/* saved[0] = x, scalar = {lo, hi} */
static df_status bw_clamp(df_node *n, const df_tensor *g, df_tensor **gi) {
  df_tensor *r;
  df_status st = df_tensor_empty(&r, g->ndim, g->size);
  if (st) return st;
  clamp_bounds c = {(float)n->scalar[0], (float)n->scalar[1]};
  const df_tensor *ops[3] = {r, g, n->saved[0]};
  if ((st = apply("clamp", 3, ops, k_clamp_grad, &c))) {
    df_tensor_release(r);
    return st;
  }
  gi[0] = r;
  return DF_OK;
}

df_status df_clamp(df_tensor **out, const df_tensor *a, float lo, float hi) {
  df_status st = check_bounds(lo, hi);
  if (st) return st;
  df_tensor *r;
  if ((st = df_tensor_empty(&r, a->ndim, a->size))) return st;
  clamp_bounds c = {lo, hi};
  const df_tensor *ops[2] = {r, a};
  apply("clamp", 2, ops, k_clamp, &c);
  df_node *node;
  if ((st = df_autograd_record(r, "clamp", bw_clamp, 1, &a, &node)) || (node && (st = df_node_save(node, 0, a)))) {
    df_tensor_release(r);
    return st;
  }
  if (node) {
    node->scalar[0] = lo;
    node->scalar[1] = hi;
  }
  *out = r;
  return DF_OK;
}

df_status df_clamp_(df_tensor *a, float lo, float hi) {
  df_status st = check_bounds(lo, hi);
  if (st || (st = df_check_inplace("clamp_", a))) return st;
  clamp_bounds c = {lo, hi};
  const df_tensor *ops[2] = {a, a};
  if ((st = apply("clamp_", 2, ops, k_clamp, &c))) return st;
  df_tensor_bump_version(a);
  return DF_OK;
}

static void k_where(int64_t n, float *const *p, const int64_t *s, const void *ctx) {
  (void)ctx;
  for (int64_t i = 0; i < n; i++)
    p[0][i * s[0]] = p[1][i * s[1]] != 0.0f ? p[2][i * s[2]] : p[3][i * s[3]];
}

/* saved[0] = cond: the gradient goes to a where cond holds, else to b */
static df_status bw_where(df_node *n, const df_tensor *g, df_tensor **gi) {
  scalar_tensor zero;
  const df_tensor *z = scalar_init(&zero, 0.0f);
  df_status st = DF_OK;
  if (df_node_needs_grad(n, 0)) st = df_where(&gi[0], n->saved[0], g, z);
  if (!st && df_node_needs_grad(n, 1)) st = df_where(&gi[1], n->saved[0], z, g);
  return st;
}

df_status df_where(df_tensor **out, const df_tensor *cond, const df_tensor *a, const df_tensor *b) {
  int n1, n2;
  int64_t s1[DF_MAX_DIMS], s2[DF_MAX_DIMS];
  df_status st;
  if ((st = df_broadcast_shape("where", cond->ndim, cond->size, a->ndim, a->size, &n1, s1)) ||
      (st = df_broadcast_shape("where", n1, s1, b->ndim, b->size, &n2, s2)))
    return st;
  df_tensor *r;
  if ((st = df_tensor_empty(&r, n2, s2))) return st;
  const df_tensor *ops[4] = {r, cond, a, b};
  apply("where", 4, ops, k_where, NULL);
  const df_tensor *in[2] = {a, b};
  df_node *node;
  if ((st = df_autograd_record(r, "where", bw_where, 2, in, &node)) || (node && (st = df_node_save(node, 0, cond)))) {
    df_tensor_release(r);
    return st;
  }
  *out = r;
  return DF_OK;
}
