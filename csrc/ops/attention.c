/* attention.c — scaled dot-product attention, forward and backward.
 *
 * q (..., Nq, d), k (..., Nk, d), v (..., Nk, dv) with the same batch dims
 * (B, H in a transformer) -> (..., Nq, dv):
 *   S = scale Q Kᵀ,  P = softmax(S) over the keys a query may attend,  O = P V.
 * The optional keep-mask broadcasts to (..., Nq, Nk); nonzero means "may
 * attend". A query that may attend nothing gets a zero row of P (and so a
 * zero output and zero gradients), not NaN.
 *
 * The products run batch by batch through df_gemm (blocks on the pool); the
 * row softmax runs on the pool, one row per item. P is kept
 * for the backward, so memory is O(batch Nq Nk), as in any non-fused
 * attention. */
#include <limits.h>
#include <math.h>
#include <string.h>

#include <cblas.h>

#include "../core/iter.h"
#include "../df.h"

#define SHAPE_BUF 128
#define NAME "scaled_dot_product_attention"

static char *shape_of(char *buf, const df_tensor *t) { return df_format_shape(buf, SHAPE_BUF, t->ndim, t->size); }

/* C (m x n) = alpha op(A) op(B) + beta C, row-major; empty products handled
 * here (BLAS wants leading dims >= 1 even when k is 0). */
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

static int64_t ld(int64_t n) { return n > 0 ? n : 1; }

/* ---- the row kernels -------------------------------------------------------- */

typedef struct {
  float *p;        /* (batches, nq, nk): scores in, probabilities out; backward: dP in, dS out */
  const float *pr; /* backward: the probabilities */
  const float *mask;
  const int64_t *mask_offset; /* per batch */
  int64_t mask_sq, mask_sk;   /* the mask's strides along queries and keys (0 when broadcast) */
  int64_t nq, nk, rows_per_task, rows;
} rows_job;

/* Masked, numerically stable softmax of each row of scores. */
static void softmax_task(int64_t task, void *arg) {
  const rows_job *j = arg;
  int64_t end = (task + 1) * j->rows_per_task;
  if (end > j->rows) end = j->rows;
  for (int64_t row = task * j->rows_per_task; row < end; row++) {
    float *p = j->p + row * j->nk;
    const float *m = j->mask ? j->mask + j->mask_offset[row / j->nq] + (row % j->nq) * j->mask_sq : NULL;
    float mx = -INFINITY;
    bool any = false;
    for (int64_t i = 0; i < j->nk; i++) {
      if (m && m[i * j->mask_sk] == 0.0f) continue;
      if (!any || p[i] > mx || p[i] != p[i]) mx = p[i];
      any = true;
    }
    if (!any) { /* nothing to attend: a zero row */
      memset(p, 0, sizeof(float) * (size_t)j->nk);
      continue;
    }
    double sum = 0;
    for (int64_t i = 0; i < j->nk; i++) {
      if (m && m[i * j->mask_sk] == 0.0f) {
        p[i] = 0.0f;
        continue;
      }
      p[i] = expf(p[i] - mx);
      sum += p[i];
    }
    float inv = (float)(1.0 / sum);
    for (int64_t i = 0; i < j->nk; i++) p[i] *= inv;
  }
}

/* dS = P (dP - sum(dP P)) per row, in place over dP; masked entries have P = 0. */
static void softmax_grad_task(int64_t task, void *arg) {
  const rows_job *j = arg;
  int64_t end = (task + 1) * j->rows_per_task;
  if (end > j->rows) end = j->rows;
  for (int64_t row = task * j->rows_per_task; row < end; row++) {
    float *dp = j->p + row * j->nk;
    const float *p = j->pr + row * j->nk;
    double dot = 0;
    for (int64_t i = 0; i < j->nk; i++) dot += (double)dp[i] * p[i];
    float s = (float)dot;
    for (int64_t i = 0; i < j->nk; i++) dp[i] = p[i] * (dp[i] - s);
  }
}

static void run_rows(rows_job *j, void (*fn)(int64_t, void *)) {
  if (j->rows == 0 || j->nk == 0) return;
  int64_t threads = df_get_num_threads(), min_rows = (DF_ITER_GRAIN + 4 * j->nk - 1) / (4 * j->nk);
  j->rows_per_task = (j->rows + threads - 1) / threads;
  if (j->rows_per_task < min_rows) j->rows_per_task = min_rows;
  df_parallel_for((j->rows + j->rows_per_task - 1) / j->rows_per_task, fn, j);
}

/* ---- forward ---------------------------------------------------------------- */

typedef struct {
  int bd;                         /* batch dims */
  int64_t batches, nq, nk, d, dv; /* batches = product of the batch dims */
  float scale;
} dims_t;

static df_status check_args(const df_tensor *q, const df_tensor *k, const df_tensor *v, const df_tensor *mask,
                            float scale, dims_t *dm) {
  char b1[SHAPE_BUF], b2[SHAPE_BUF], b3[SHAPE_BUF];
  if (q->ndim < 2 || q->ndim != k->ndim || q->ndim != v->ndim)
    return df_error(DF_EINVAL, NAME ": q, k and v must have the same number of dims (at least 2, e.g. (B, H, N, d)), "
                               "got %s, %s and %s", shape_of(b1, q), shape_of(b2, k), shape_of(b3, v));
  int bd = q->ndim - 2;
  for (int d = 0; d < bd; d++)
    if (k->size[d] != q->size[d] || v->size[d] != q->size[d])
      return df_error(DF_EINVAL, NAME ": the batch dims of q %s, k %s and v %s differ", shape_of(b1, q), shape_of(b2, k),
                      shape_of(b3, v));
  if (k->size[bd + 1] != q->size[bd + 1])
    return df_error(DF_EINVAL, NAME ": q %s and k %s have different feature sizes (%lld and %lld)", shape_of(b1, q),
                    shape_of(b2, k), (long long)q->size[bd + 1], (long long)k->size[bd + 1]);
  if (v->size[bd] != k->size[bd])
    return df_error(DF_EINVAL, NAME ": k %s and v %s have different numbers of keys (%lld and %lld)", shape_of(b1, k),
                    shape_of(b2, v), (long long)k->size[bd], (long long)v->size[bd]);
  dm->bd = bd;
  dm->batches = 1;
  for (int d = 0; d < bd; d++) dm->batches *= q->size[d];
  dm->nq = q->size[bd];
  dm->nk = k->size[bd];
  dm->d = q->size[bd + 1];
  dm->dv = v->size[bd + 1];
  if (dm->nq > INT_MAX || dm->nk > INT_MAX || dm->d > INT_MAX || dm->dv > INT_MAX)
    return df_error(DF_EINVAL, NAME ": matrix dims above %d are not supported by BLAS", INT_MAX);
  if (mask) {
    int64_t target[DF_MAX_DIMS];
    memcpy(target, q->size, sizeof(int64_t) * (size_t)bd);
    target[bd] = dm->nq;
    target[bd + 1] = dm->nk;
    bool ok = mask->ndim <= q->ndim;
    for (int d = 0; ok && d < mask->ndim; d++) {
      int64_t s = mask->size[d], t = target[q->ndim - mask->ndim + d];
      ok = s == t || s == 1;
    }
    if (!ok)
      return df_error(DF_EINVAL, NAME ": mask %s does not broadcast to the attention shape %s", shape_of(b1, mask),
                      df_format_shape(b2, sizeof b2, q->ndim, target));
  }
  if (isnan(scale) || isinf(scale)) return df_error(DF_EINVAL, NAME ": scale must be finite, got %g", (double)scale);
  dm->scale = scale > 0.0f ? scale : dm->d > 0 ? (float)(1.0 / sqrt((double)dm->d)) : 1.0f;
  return DF_OK;
}

/* out = O, probs = P (batch..., Nq, Nk); qc, kc, vc = the contiguous inputs. */
static df_status attention_forward(df_tensor **out, df_tensor **probs, df_tensor *qc, df_tensor *kc, df_tensor *vc,
                                   const df_tensor *mask, const dims_t *dm) {
  int64_t size[DF_MAX_DIMS], nq = dm->nq, nk = dm->nk, d = dm->d, dv = dm->dv;
  memcpy(size, qc->size, sizeof(int64_t) * (size_t)dm->bd);
  df_tensor *p = NULL, *o = NULL, *mexp = NULL;
  int64_t *moff = NULL;
  df_status st;
  size[dm->bd] = nq;
  size[dm->bd + 1] = nk;
  if ((st = df_tensor_empty(&p, dm->bd + 2, size))) goto done;
  size[dm->bd + 1] = dv;
  if ((st = df_tensor_empty(&o, dm->bd + 2, size))) goto done;
  rows_job j = {.p = df_tensor_data(p), .nq = nq, .nk = nk, .rows = dm->batches * nq};
  if (mask) { /* an expanded view: broadcast dims have stride 0; one offset per batch */
    size[dm->bd + 1] = nk;
    if ((st = df_tensor_expand(&mexp, mask, dm->bd + 2, size))) goto done;
    if (!(moff = df_malloc(sizeof(int64_t) * (size_t)(dm->batches > 0 ? dm->batches : 1)))) {
      st = df_error(DF_ENOMEM, NAME ": out of memory");
      goto done;
    }
    for (int64_t b = 0; b < dm->batches; b++) {
      int64_t rem = b, off = 0;
      for (int dd = dm->bd - 1; dd >= 0; dd--) {
        off += (rem % size[dd]) * mexp->stride[dd];
        rem /= size[dd];
      }
      moff[b] = off;
    }
    j.mask = df_tensor_data(mexp);
    j.mask_offset = moff;
    j.mask_sq = mexp->stride[dm->bd];
    j.mask_sk = mexp->stride[dm->bd + 1];
  }
  const float *qp = df_tensor_data(qc), *kp = df_tensor_data(kc), *vp = df_tensor_data(vc);
  float *pp = df_tensor_data(p), *op = df_tensor_data(o);
  for (int64_t b = 0; b < dm->batches; b++)
    gemm(false, true, nq, nk, d, dm->scale, qp + b * nq * d, ld(d), kp + b * nk * d, ld(d), 0.0f, pp + b * nq * nk, ld(nk));
  run_rows(&j, softmax_task);
  for (int64_t b = 0; b < dm->batches; b++)
    gemm(false, false, nq, dv, nk, 1.0f, pp + b * nq * nk, ld(nk), vp + b * nk * dv, ld(dv), 0.0f, op + b * nq * dv, ld(dv));
done:
  df_free(moff);
  df_tensor_release(mexp);
  if (st) {
    df_tensor_release(p);
    df_tensor_release(o);
    return st;
  }
  *out = o;
  *probs = p;
  return DF_OK;
}

/* ---- backward ----------------------------------------------------------------
 * saved[0..2] = the contiguous q, k, v; saved[3] = P; scalar[0] = scale.
 *   dV = Pᵀ dO,  dP = dO Vᵀ,  dS = P (dP - rowsum(dP P)),  dQ = scale dS K,  dK = scale dSᵀ Q */

static df_status bw_attention(df_node *n, const df_tensor *g, df_tensor **gi) {
  const df_tensor *q = n->saved[0], *k = n->saved[1], *v = n->saved[2], *p = n->saved[3];
  int bd = q->ndim - 2;
  int64_t batches = 1, nq = q->size[bd], nk = k->size[bd], d = q->size[bd + 1], dv = v->size[bd + 1];
  for (int i = 0; i < bd; i++) batches *= q->size[i];
  float scale = (float)n->scalar[0];
  bool need_q = df_node_needs_grad(n, 0), need_k = df_node_needs_grad(n, 1), need_v = df_node_needs_grad(n, 2);
  df_tensor *gc = NULL, *ds = NULL, *dq = NULL, *dk = NULL, *dvt = NULL;
  df_status st;
  if ((st = df_tensor_contiguous(&gc, g))) return st;
  const float *gp = df_tensor_data(gc), *pp = df_tensor_data(p), *qp = df_tensor_data(q), *kp = df_tensor_data(k),
              *vp = df_tensor_data(v);
  if (need_v) {
    if ((st = df_tensor_empty(&dvt, v->ndim, v->size))) goto done;
    float *o = df_tensor_data(dvt);
    for (int64_t b = 0; b < batches; b++)
      gemm(true, false, nk, dv, nq, 1.0f, pp + b * nq * nk, ld(nk), gp + b * nq * dv, ld(dv), 0.0f, o + b * nk * dv, ld(dv));
  }
  if (need_q || need_k) {
    if ((st = df_tensor_empty(&ds, p->ndim, p->size))) goto done;
    float *sp = df_tensor_data(ds);
    for (int64_t b = 0; b < batches; b++)
      gemm(false, true, nq, nk, dv, 1.0f, gp + b * nq * dv, ld(dv), vp + b * nk * dv, ld(dv), 0.0f, sp + b * nq * nk, ld(nk));
    rows_job j = {.p = sp, .pr = pp, .nq = nq, .nk = nk, .rows = batches * nq};
    run_rows(&j, softmax_grad_task);
    if (need_q) {
      if ((st = df_tensor_empty(&dq, q->ndim, q->size))) goto done;
      float *o = df_tensor_data(dq);
      for (int64_t b = 0; b < batches; b++)
        gemm(false, false, nq, d, nk, scale, sp + b * nq * nk, ld(nk), kp + b * nk * d, ld(d), 0.0f, o + b * nq * d, ld(d));
    }
    if (need_k) {
      if ((st = df_tensor_empty(&dk, k->ndim, k->size))) goto done;
      float *o = df_tensor_data(dk);
      for (int64_t b = 0; b < batches; b++)
        gemm(true, false, nk, d, nq, scale, sp + b * nq * nk, ld(nk), qp + b * nq * d, ld(d), 0.0f, o + b * nk * d, ld(d));
    }
  }
done:
  df_tensor_release(gc);
  df_tensor_release(ds);
  if (st) {
    df_tensor_release(dq);
    df_tensor_release(dk);
    df_tensor_release(dvt);
    return st;
  }
  gi[0] = dq;
  gi[1] = dk;
  gi[2] = dvt;
  return DF_OK;
}

df_status df_scaled_dot_product_attention(df_tensor **out, const df_tensor *q, const df_tensor *k, const df_tensor *v,
                                          const df_tensor *mask, float scale) {
  dims_t dm = {0};
  df_status st = check_args(q, k, v, mask, scale, &dm);
  if (st) return st;
  bool previous = df_set_grad_enabled(false);
  df_tensor *qc = NULL, *kc = NULL, *vc = NULL, *o = NULL, *p = NULL;
  if (!(st = df_tensor_contiguous(&qc, q)) && !(st = df_tensor_contiguous(&kc, k)) &&
      !(st = df_tensor_contiguous(&vc, v)))
    st = attention_forward(&o, &p, qc, kc, vc, mask, &dm);
  df_set_grad_enabled(previous);
  const df_tensor *in[3] = {q, k, v};
  df_node *node = NULL;
  if (!st && !(st = df_autograd_record(o, NAME, bw_attention, 3, in, &node)) && node) {
    node->scalar[0] = dm.scale;
    if (!(st = df_node_save(node, 0, qc)) && !(st = df_node_save(node, 1, kc)) && !(st = df_node_save(node, 2, vc)))
      st = df_node_save(node, 3, p);
  }
  df_tensor_release(qc);
  df_tensor_release(kc);
  df_tensor_release(vc);
  df_tensor_release(p);
  if (st) {
    df_tensor_release(o);
    return st;
  }
  *out = o;
  return DF_OK;
}
