/* reduce.c — sum, mean, var, std, max, min over all elements or given dims,
 * and max/min with their positions along one dim.
 *
 * The input is viewed as rows: kept dims outside, reduced dims inside (a
 * copy only when that view isn't contiguous). Each row is cut into fixed
 * blocks of REDUCE_BLOCK elements; a block's partial result (double) depends
 * only on its elements, and the partials are combined in block order, so the
 * result is the same whatever the thread count. */
#include <assert.h>
#include <math.h>
#include <string.h>

#include "../core/iter.h"
#include "../df.h"

#define REDUCE_BLOCK 65536

const char *const df_reduce_names[DF_REDUCE_COUNT] = {"sum", "mean", "var", "std", "max", "min"};
static_assert(DF_MIN + 1 == DF_REDUCE_COUNT, "df_reduce_names must list every reduction");

/* ---- rows: the input as (outer, inner), reduced dims innermost ---------- */

typedef struct {
  df_tensor *data; /* contiguous, owned */
  int64_t outer, inner;
  int out_ndim;
  int64_t out_size[DF_MAX_DIMS];
} rows_t;

static df_status make_rows(const char *name, const df_tensor *a, int ndims, const int *dims, bool keepdim, rows_t *r) {
  bool reduced[DF_MAX_DIMS] = {false};
  if (ndims == 0) {
    for (int d = 0; d < a->ndim; d++) reduced[d] = true;
  }
  for (int i = 0; i < ndims; i++) {
    if (dims[i] < 0 || dims[i] >= a->ndim)
      return df_error(DF_EINVAL, "%s: dim %d out of range for a %d-d tensor", name, dims[i] + 1, a->ndim);
    if (reduced[dims[i]]) return df_error(DF_EINVAL, "%s: dim %d given twice", name, dims[i] + 1);
    reduced[dims[i]] = true;
  }
  int perm[DF_MAX_DIMS], n = 0;
  r->outer = r->inner = 1;
  r->out_ndim = 0;
  for (int d = 0; d < a->ndim; d++) {
    if (reduced[d]) {
      if (keepdim) r->out_size[r->out_ndim++] = 1;
      continue;
    }
    perm[n++] = d;
    r->outer *= a->size[d];
    r->out_size[r->out_ndim++] = a->size[d];
  }
  for (int d = 0; d < a->ndim; d++)
    if (reduced[d]) {
      perm[n++] = d;
      r->inner *= a->size[d];
    }
  df_tensor *permuted;
  df_status st = df_tensor_permute(&permuted, a, perm);
  if (st) return st;
  st = df_tensor_contiguous(&r->data, permuted);
  df_tensor_release(permuted);
  return st;
}

/* ---- block partials ----------------------------------------------------- */

enum { PART_SUM, PART_SQDEV, PART_MAX, PART_MIN };

typedef struct {
  const float *x;
  int64_t inner, nblocks, items, items_per_task;
  int kind;
  const double *mean; /* per row, for PART_SQDEV */
  double *partial;    /* one per (row, block) */
} partial_job;

static double block_sum(const float *p, int64_t n) {
  double acc[8] = {0};
  int64_t i = 0;
  for (; i + 8 <= n; i += 8)
    for (int k = 0; k < 8; k++) acc[k] += p[i + k];
  for (; i < n; i++) acc[i & 7] += p[i];
  return ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]));
}

static double block_sqdev(const float *p, int64_t n, double mean) {
  double acc[8] = {0};
  int64_t i = 0;
  for (; i + 8 <= n; i += 8)
    for (int k = 0; k < 8; k++) {
      double d = p[i + k] - mean;
      acc[k] += d * d;
    }
  for (; i < n; i++) {
    double d = p[i] - mean;
    acc[i & 7] += d * d;
  }
  return ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]));
}

static double block_extreme(const float *p, int64_t n, bool want_max) {
  float best = p[0];
  for (int64_t i = 0; i < n; i++) {
    float v = p[i];
    if (v != v) return NAN;
    if (want_max ? v > best : v < best) best = v;
  }
  return best;
}

static void partial_task(int64_t task, void *arg) {
  const partial_job *j = arg;
  int64_t end = (task + 1) * j->items_per_task;
  if (end > j->items) end = j->items;
  for (int64_t item = task * j->items_per_task; item < end; item++) {
    int64_t row = item / j->nblocks, begin = (item % j->nblocks) * REDUCE_BLOCK;
    int64_t n = j->inner - begin < REDUCE_BLOCK ? j->inner - begin : REDUCE_BLOCK;
    const float *p = j->x + row * j->inner + begin;
    switch (j->kind) {
    case PART_SUM: j->partial[item] = block_sum(p, n); break;
    case PART_SQDEV: j->partial[item] = block_sqdev(p, n, j->mean[row]); break;
    case PART_MAX: j->partial[item] = block_extreme(p, n, true); break;
    default: j->partial[item] = block_extreme(p, n, false); break;
    }
  }
}

/* Fills partial[outer * nblocks] for the rows in r. */
static void run_partials(const rows_t *r, int kind, const double *mean, double *partial, int64_t nblocks) {
  partial_job j = {.x = df_tensor_data(r->data), .inner = r->inner, .nblocks = nblocks,
                   .items = r->outer * nblocks, .kind = kind, .mean = mean, .partial = partial};
  /* enough items per task to be worth a thread, never more tasks than threads */
  int64_t per_item = r->inner < REDUCE_BLOCK ? r->inner : REDUCE_BLOCK;
  int64_t min_items = per_item > 0 ? (DF_ITER_GRAIN + per_item - 1) / per_item : j.items;
  int64_t threads = df_get_num_threads();
  j.items_per_task = (j.items + threads - 1) / threads;
  if (j.items_per_task < min_items) j.items_per_task = min_items;
  if (j.items_per_task < 1) j.items_per_task = 1;
  df_parallel_for((j.items + j.items_per_task - 1) / j.items_per_task, partial_task, &j);
}

static df_status reduce_forward(df_reduce_op op, df_tensor **out, const df_tensor *a, int ndims, const int *dims,
                                bool keepdim, int correction) {
  if ((unsigned)op >= DF_REDUCE_COUNT) return df_error(DF_EINVAL, "reduce: unknown op %d", (int)op);
  const char *name = df_reduce_names[op];
  rows_t r;
  df_status st = make_rows(name, a, ndims, dims, keepdim, &r);
  if (st) return st;
  if (r.inner == 0 && (op == DF_MAX || op == DF_MIN)) {
    df_tensor_release(r.data);
    return df_error(DF_EINVAL, "%s: cannot reduce over zero elements", name);
  }
  df_tensor *res = NULL;
  int64_t nblocks = r.inner > 0 ? (r.inner + REDUCE_BLOCK - 1) / REDUCE_BLOCK : 1;
  size_t count = (size_t)(r.outer * nblocks);
  double *partial = df_malloc(sizeof(double) * count);
  double *mean = (op == DF_VAR || op == DF_STD) ? df_malloc(sizeof(double) * (size_t)r.outer) : NULL;
  if (!partial || ((op == DF_VAR || op == DF_STD) && !mean)) {
    st = df_error(DF_ENOMEM, "%s: out of memory", name);
    goto done;
  }
  if ((st = df_tensor_empty(&res, r.out_ndim, r.out_size))) goto done;
  float *o = df_tensor_data(res);
  if (r.inner == 0) {
    for (int64_t i = 0; i < r.outer; i++) o[i] = op == DF_SUM ? 0.0f : NAN;
    goto done;
  }
  int kind = op == DF_MAX ? PART_MAX : op == DF_MIN ? PART_MIN : PART_SUM;
  run_partials(&r, kind, NULL, partial, nblocks);
  for (int64_t i = 0; i < r.outer; i++) {
    double acc = partial[i * nblocks];
    for (int64_t b = 1; b < nblocks; b++) {
      double v = partial[i * nblocks + b];
      if (kind == PART_SUM) acc += v;
      else if (v != v || acc != acc) acc = NAN;
      else if (kind == PART_MAX ? v > acc : v < acc) acc = v;
    }
    if (op == DF_MEAN || op == DF_VAR || op == DF_STD) acc /= (double)r.inner;
    if (mean) mean[i] = acc;
    o[i] = (float)acc;
  }
  if (mean) {
    run_partials(&r, PART_SQDEV, mean, partial, nblocks);
    double denom = (double)(r.inner - correction);
    for (int64_t i = 0; i < r.outer; i++) {
      double acc = 0;
      for (int64_t b = 0; b < nblocks; b++) acc += partial[i * nblocks + b];
      double var = denom > 0 ? acc / denom : NAN;
      o[i] = (float)(op == DF_STD ? sqrt(var) : var);
    }
  }
done:
  df_free(partial);
  df_free(mean);
  df_tensor_release(r.data);
  if (st) {
    df_tensor_release(res);
    return st;
  }
  *out = res;
  return DF_OK;
}

/* ---- max/min with positions --------------------------------------------- */

typedef struct {
  const float *x;
  int64_t inner, rows_per_task, outer;
  bool want_max;
  float base;
  float *values, *indices; /* either may be NULL */
} arg_job;

static void arg_task(int64_t task, void *arg) {
  const arg_job *j = arg;
  int64_t end = (task + 1) * j->rows_per_task;
  if (end > j->outer) end = j->outer;
  for (int64_t row = task * j->rows_per_task; row < end; row++) {
    const float *p = j->x + row * j->inner;
    int64_t best = 0;
    for (int64_t i = 1; i < j->inner && p[best] == p[best]; i++) {
      float v = p[i];
      if (v != v || (j->want_max ? v > p[best] : v < p[best])) best = i;
    }
    if (j->values) j->values[row] = p[best];
    if (j->indices) j->indices[row] = (float)best + j->base;
  }
}

static df_status argreduce_forward(df_reduce_op op, df_tensor **values, df_tensor **indices, const df_tensor *a,
                                   int dim, bool keepdim, int index_base) {
  if (op != DF_MAX && op != DF_MIN) return df_error(DF_EINVAL, "argreduce: op must be max or min");
  const char *name = op == DF_MAX ? "argmax" : "argmin";
  rows_t r;
  df_status st = make_rows(name, a, dim < 0 ? 0 : 1, &dim, keepdim, &r);
  if (st) return st;
  df_tensor *v = NULL, *ix = NULL;
  if (r.inner == 0) {
    st = df_error(DF_EINVAL, "%s: cannot reduce over zero elements", name);
    goto fail;
  }
  if ((values && (st = df_tensor_empty(&v, r.out_ndim, r.out_size))) ||
      (indices && (st = df_tensor_empty(&ix, r.out_ndim, r.out_size))))
    goto fail;
  arg_job j = {.x = df_tensor_data(r.data), .inner = r.inner, .outer = r.outer, .want_max = op == DF_MAX,
               .base = (float)index_base, .values = v ? df_tensor_data(v) : NULL,
               .indices = ix ? df_tensor_data(ix) : NULL};
  int64_t threads = df_get_num_threads(), min_rows = (DF_ITER_GRAIN + r.inner - 1) / r.inner;
  j.rows_per_task = (r.outer + threads - 1) / threads;
  if (j.rows_per_task < min_rows) j.rows_per_task = min_rows;
  df_parallel_for((r.outer + j.rows_per_task - 1) / j.rows_per_task, arg_task, &j);
  df_tensor_release(r.data);
  if (values) *values = v;
  if (indices) *indices = ix;
  return DF_OK;
fail:
  df_tensor_release(r.data);
  df_tensor_release(v);
  df_tensor_release(ix);
  return st;
}

/* ---- autograd ------------------------------------------------------------
 * iarg = {op, ndims, keepdim, correction, dims...}; saved[0] = the input,
 * saved[1] = the result (for std, max, min). */

/* t, shaped like the result, viewed with the reduced dims kept as size 1. */
static df_status keepdim_view(const df_node *n, const df_tensor *t, df_tensor **out) {
  const df_edge *in = &n->inputs[0];
  int ndims = (int)n->iarg[1];
  int64_t size[DF_MAX_DIMS];
  for (int d = 0; d < in->ndim; d++) {
    bool reduced = ndims == 0;
    for (int i = 0; i < ndims; i++) reduced |= n->iarg[4 + i] == d;
    size[d] = reduced ? 1 : in->size[d];
  }
  return df_tensor_reshape(out, t, in->ndim, size);
}

static df_status bw_reduce(df_node *n, const df_tensor *g, df_tensor **gi) {
  df_reduce_op op = (df_reduce_op)n->iarg[0];
  const df_edge *in = &n->inputs[0];
  int ndims = (int)n->iarg[1], dims[DF_MAX_DIMS];
  for (int i = 0; i < ndims; i++) dims[i] = (int)n->iarg[4 + i];
  int64_t count = 1;
  for (int d = 0; d < in->ndim; d++) {
    bool reduced = ndims == 0;
    for (int i = 0; i < ndims; i++) reduced |= dims[i] == d;
    if (reduced) count *= in->size[d];
  }
  df_tensor *gk = NULL, *t1 = NULL, *t2 = NULL, *t3 = NULL, *r = NULL;
  df_status st = keepdim_view(n, g, &gk);
  if (st) return st;
  const df_tensor *x = n->saved[0];
  switch (op) {
  case DF_SUM:
    st = df_tensor_expand(&r, gk, in->ndim, in->size);
    break;
  case DF_MEAN:
    if (!(st = df_binary_scalar(DF_MUL, &t1, gk, 1.0f / (float)count, false))) st = df_tensor_expand(&r, t1, in->ndim, in->size);
    break;
  case DF_VAR:
  case DF_STD: { /* d var = 2 (x - mean) / (N - c);  d std = d var / (2 std) */
    float denom = (float)(count - n->iarg[3]);
    if ((st = df_reduce(DF_MEAN, &t1, x, ndims, dims, true, 0)) || (st = df_binary(DF_SUB, &t2, x, t1))) break;
    df_tensor_release(t1);
    t1 = NULL;
    if (op == DF_VAR) {
      if (!(st = df_binary_scalar(DF_MUL, &t1, gk, 2.0f / denom, false))) st = df_binary(DF_MUL, &r, t2, t1);
    } else {
      if ((st = keepdim_view(n, n->saved[1], &t3)) || (st = df_binary(DF_DIV, &t1, gk, t3))) break;
      df_tensor_release(t3);
      t3 = NULL;
      if (!(st = df_binary_scalar(DF_MUL, &t3, t1, 1.0f / denom, false))) st = df_binary(DF_MUL, &r, t2, t3);
    }
    break;
  }
  default: { /* max, min: shared evenly by the positions holding the extreme */
    if ((st = keepdim_view(n, n->saved[1], &t1)) || (st = df_binary(DF_EQ, &t2, x, t1))) break;
    df_tensor_release(t1);
    t1 = NULL;
    if ((st = df_reduce(DF_SUM, &t1, t2, ndims, dims, true, 0)) || (st = df_binary(DF_DIV, &t3, gk, t1))) break;
    st = df_binary(DF_MUL, &r, t2, t3);
    break;
  }
  }
  df_tensor_release(gk);
  df_tensor_release(t1);
  df_tensor_release(t2);
  df_tensor_release(t3);
  if (st) {
    df_tensor_release(r);
    return st;
  }
  gi[0] = r;
  return DF_OK;
}

static df_status record_reduce(df_tensor *r, df_reduce_op op, const df_tensor *a, int ndims, const int *dims,
                               bool keepdim, int correction) {
  df_node *node;
  df_status st = df_autograd_record(r, df_reduce_names[op], bw_reduce, 1, &a, &node);
  if (st || !node) return st;
  node->iarg[0] = op;
  node->iarg[1] = ndims;
  node->iarg[2] = keepdim;
  node->iarg[3] = correction;
  for (int i = 0; i < ndims; i++) node->iarg[4 + i] = dims[i];
  if (op != DF_SUM && op != DF_MEAN && (st = df_node_save(node, 0, a))) return st;
  if ((op == DF_STD || op == DF_MAX || op == DF_MIN) && (st = df_node_save(node, 1, r))) return st;
  return DF_OK;
}

df_status df_reduce(df_reduce_op op, df_tensor **out, const df_tensor *a, int ndims, const int *dims, bool keepdim,
                    int correction) {
  bool previous = df_set_grad_enabled(false); /* the internal views are not part of the graph */
  df_tensor *r = NULL;
  df_status st = reduce_forward(op, &r, a, ndims, dims, keepdim, correction);
  df_set_grad_enabled(previous);
  if (st) return st;
  if ((st = record_reduce(r, op, a, ndims, dims, keepdim, correction))) {
    df_tensor_release(r);
    return st;
  }
  *out = r;
  return DF_OK;
}

df_status df_argreduce(df_reduce_op op, df_tensor **values, df_tensor **indices, const df_tensor *a, int dim,
                       bool keepdim, int index_base) {
  bool previous = df_set_grad_enabled(false);
  df_tensor *v = NULL, *ix = NULL;
  df_status st = argreduce_forward(op, values ? &v : NULL, indices ? &ix : NULL, a, dim, keepdim, index_base);
  df_set_grad_enabled(previous);
  if (st) return st;
  if (v && (st = record_reduce(v, op, a, dim < 0 ? 0 : 1, &dim, keepdim, 0))) {
    df_tensor_release(v);
    df_tensor_release(ix);
    return st;
  }
  if (values) *values = v;
  if (indices) *indices = ix;
  return DF_OK;
}
