/* index.c — index_select: whole slices of x along a dim, picked by index.
 * The gradient scatter-adds back into the picked slices. */
#include <math.h>
#include <string.h>

#include "../df.h"

/* Validates indices (1-d, integers in [base, n + base)) into 0-based int64s. */
static df_status read_indices(const char *name, const df_tensor *index, int64_t n, int base, int64_t **out) {
  if (index->ndim != 1) return df_error(DF_EINVAL, "%s: indices must be a 1-d tensor, got %d-d", name, index->ndim);
  int64_t count = index->size[0];
  int64_t *ix = df_malloc(sizeof(int64_t) * (size_t)(count ? count : 1));
  if (!ix) return df_error(DF_ENOMEM, "%s: out of memory", name);
  const float *data = index->storage->data + index->offset;
  for (int64_t i = 0; i < count; i++) {
    float v = data[i * index->stride[0]] - (float)base;
    if (!(v >= 0 && v < (float)n) || v != floorf(v)) {
      df_free(ix);
      return df_error(DF_EINVAL, "%s: index %g at position %lld is not an integer in [%d, %lld]", name, v + (float)base,
                      (long long)i + 1, base, (long long)n - 1 + base);
    }
    ix[i] = (int64_t)v;
  }
  *out = ix;
  return DF_OK;
}

/* iarg[0] = dim, iarg[1] = index base; saved[0] = the indices */
static df_status bw_index_select(df_node *n, const df_tensor *g, df_tensor **gi) {
  int dim = (int)n->iarg[0];
  const df_edge *in = &n->inputs[0];
  int64_t *ix;
  df_status st = read_indices("index_select", n->saved[0], in->size[dim], (int)n->iarg[1], &ix);
  if (st) return st;
  df_tensor *r;
  if ((st = df_tensor_zeros(&r, in->ndim, in->size))) {
    df_free(ix);
    return st;
  }
  for (int64_t i = 0; i < g->size[dim] && !st; i++) {
    df_tensor *src, *dst;
    if ((st = df_tensor_select(&src, g, dim, i))) break;
    if (!(st = df_tensor_select(&dst, r, dim, ix[i]))) {
      st = df_binary_(DF_ADD, dst, src);
      df_tensor_release(dst);
    }
    df_tensor_release(src);
  }
  df_free(ix);
  if (st) {
    df_tensor_release(r);
    return st;
  }
  gi[0] = r;
  return DF_OK;
}

df_status df_index_select(df_tensor **out, const df_tensor *x, int dim, const df_tensor *index, int index_base) {
  if (dim < 0 || dim >= x->ndim)
    return df_error(DF_EINVAL, "index_select: dim %d out of range for a %d-d tensor", dim + 1, x->ndim);
  int64_t *ix;
  df_status st = read_indices("index_select", index, x->size[dim], index_base, &ix);
  if (st) return st;
  int64_t size[DF_MAX_DIMS];
  memcpy(size, x->size, sizeof size);
  size[dim] = index->size[0];
  df_tensor *r = NULL;
  bool previous = df_set_grad_enabled(false);
  if (!(st = df_tensor_empty(&r, x->ndim, size))) {
    for (int64_t i = 0; i < size[dim] && !st; i++) {
      df_tensor *src, *dst;
      if ((st = df_tensor_select(&src, x, dim, ix[i]))) break;
      if (!(st = df_tensor_select(&dst, r, dim, i))) {
        st = df_tensor_copy_(dst, src);
        df_tensor_release(dst);
      }
      df_tensor_release(src);
    }
  }
  df_set_grad_enabled(previous);
  df_free(ix);
  df_node *node;
  if (st || (st = df_autograd_record(r, "index_select", bw_index_select, 1, &x, &node)) ||
      (node && (st = df_node_save(node, 0, index)))) {
    df_tensor_release(r);
    return st;
  }
  if (node) {
    node->iarg[0] = dim;
    node->iarg[1] = index_base;
  }
  *out = r;
  return DF_OK;
}
