/* tensor.c — storage, tensors as views over it, shape checks, views,
 * copy/fill/clone, cat/stack, creation, and the strided loop driver. */
#include <math.h>
#include <string.h>
#include <unistd.h>

#include "../df.h"
#include "iter.h"

/* ---- storage ------------------------------------------------------------ */

#include <stdatomic.h>
static atomic_size_t live_bytes, allocated_bytes;

size_t df_live_bytes(void) { return atomic_load(&live_bytes); }
size_t df_allocated_bytes(void) { return atomic_load(&allocated_bytes); }

static df_storage *storage_new(int64_t numel, bool zero) {
  df_storage *s = df_malloc(sizeof *s);
  if (!s) return NULL;
  size_t bytes = (size_t)numel * sizeof(float);
  s->data = df_buffer_get(bytes, zero, &s->capacity);
  if (!s->data) {
    df_free(s);
    return NULL;
  }
  s->numel = numel;
  s->refcount = 1;
  s->version = 0;
  atomic_fetch_add(&live_bytes, bytes);
  atomic_fetch_add(&allocated_bytes, bytes);
  return s;
}

static void storage_release(df_storage *s) {
  if (!s || --s->refcount > 0) return;
  atomic_fetch_sub(&live_bytes, (size_t)s->numel * sizeof(float));
  df_buffer_put(s->data, s->capacity);
  df_free(s);
}

/* ---- tensors ------------------------------------------------------------ */

void df_tensor_retain(df_tensor *t) { t->refcount++; }

void df_tensor_release(df_tensor *t) {
  if (!t || --t->refcount > 0) return;
  storage_release(t->storage);
  df_tensor_release(t->grad);
  df_node_release(t->grad_fn);
  df_free(t);
}

df_status df_check_inplace(const char *op, const df_tensor *t) {
  if (df_needs_grad(t))
    return df_error(DF_EINVAL, "%s: in-place operation on a tensor that requires grad "
                               "(use the out-of-place op, or run it inside D.no_grad)", op);
  if (df_tensor_has_overlap(t))
    return df_error(DF_EINVAL, "%s: cannot write in place into an expanded tensor (call contiguous first)", op);
  return DF_OK;
}

int64_t df_tensor_numel(const df_tensor *t) {
  int64_t n = 1;
  for (int d = 0; d < t->ndim; d++) n *= t->size[d];
  return n;
}

bool df_tensor_is_contiguous(const df_tensor *t) {
  int64_t expected = 1;
  for (int d = t->ndim - 1; d >= 0; d--) {
    if (t->size[d] == 1) continue;
    if (t->size[d] == 0) return true;
    if (t->stride[d] != expected) return false;
    expected *= t->size[d];
  }
  return true;
}

bool df_tensor_same_shape(const df_tensor *a, const df_tensor *b) {
  if (a->ndim != b->ndim) return false;
  for (int d = 0; d < a->ndim; d++)
    if (a->size[d] != b->size[d]) return false;
  return true;
}

bool df_tensor_has_overlap(const df_tensor *t) {
  if (df_tensor_numel(t) == 0) return false;
  for (int d = 0; d < t->ndim; d++)
    if (t->stride[d] == 0 && t->size[d] > 1) return true;
  return false;
}

df_status df_check_shape(const char *op, int ndim, const int64_t *size, int64_t *numel) {
  if (ndim < 0 || ndim > DF_MAX_DIMS)
    return df_error(DF_EINVAL, "%s: a tensor has at most %d dims, got %d", op, DF_MAX_DIMS, ndim);
  /* span: the product of the nonzero sizes, which bounds the contiguous
   * strides; an empty tensor's other dims must not overflow them either */
  int64_t n = 1, span = 1;
  for (int d = 0; d < ndim; d++) {
    if (size[d] < 0) return df_error(DF_EINVAL, "%s: size %lld of dim %d is negative", op, (long long)size[d], d + 1);
    if (__builtin_mul_overflow(span, size[d] ? size[d] : 1, &span) || span > (int64_t)(PTRDIFF_MAX / sizeof(float))) {
      char buf[128];
      return df_error(DF_ENOMEM, "%s: shape %s is too large to allocate", op, df_format_shape(buf, sizeof buf, ndim, size));
    }
    n = size[d] ? n * size[d] : 0; /* n <= span: no overflow */
  }
  if (numel) *numel = n;
  return DF_OK;
}

/* A tensor header for `storage` (retained), contiguous strides, offset 0. */
static df_tensor *tensor_header(df_storage *storage, int ndim, const int64_t *size) {
  df_tensor *t = df_malloc(sizeof *t);
  if (!t) return NULL;
  memset(t, 0, sizeof *t);
  t->storage = storage;
  storage->refcount++;
  t->ndim = ndim;
  t->refcount = 1;
  int64_t stride = 1;
  for (int d = ndim - 1; d >= 0; d--) {
    t->size[d] = size[d];
    t->stride[d] = stride;
    stride *= size[d];
  }
  return t;
}

/* Bytes of physical memory: no tensor may be larger, whatever the kernel's
 * overcommit policy would let malloc promise. */
static int64_t physical_memory(void) {
  static int64_t bytes;
  if (!bytes) {
    long pages = sysconf(_SC_PHYS_PAGES), page = sysconf(_SC_PAGESIZE);
    bytes = pages > 0 && page > 0 ? (int64_t)pages * page : INT64_MAX;
  }
  return bytes;
}

static df_status tensor_alloc(df_tensor **out, int ndim, const int64_t *size, bool zero, const char *op) {
  int64_t numel;
  df_status st = df_check_shape(op, ndim, size, &numel);
  if (st) return st;
  if (numel > physical_memory() / (int64_t)sizeof(float)) {
    char buf[128];
    return df_error(DF_ENOMEM, "%s: a tensor of shape %s needs %lld bytes, more than this machine's memory (%lld bytes)",
                    op, df_format_shape(buf, sizeof buf, ndim, size), (long long)(numel * (int64_t)sizeof(float)),
                    (long long)physical_memory());
  }
  df_storage *s = storage_new(numel, zero);
  if (!s) {
    char buf[128];
    return df_error(DF_ENOMEM, "%s: cannot allocate %lld bytes for a tensor of shape %s", op,
                    (long long)(numel * (int64_t)sizeof(float)), df_format_shape(buf, sizeof buf, ndim, size));
  }
  df_tensor *t = tensor_header(s, ndim, size);
  storage_release(s); /* the header holds it now, or nobody does */
  if (!t) return df_error(DF_ENOMEM, "%s: out of memory", op);
  *out = t;
  return DF_OK;
}

df_status df_tensor_empty(df_tensor **out, int ndim, const int64_t *size) {
  return tensor_alloc(out, ndim, size, false, "empty");
}

df_status df_tensor_zeros(df_tensor **out, int ndim, const int64_t *size) {
  return tensor_alloc(out, ndim, size, true, "zeros");
}

df_status df_tensor_full(df_tensor **out, int ndim, const int64_t *size, float value) {
  df_tensor *t;
  df_status st = tensor_alloc(&t, ndim, size, false, "full");
  if (st) return st;
  df_tensor_fill_(t, value);
  *out = t;
  return DF_OK;
}

/* A new view header sharing t's storage, same geometry; caller adjusts it. */
static df_status view_of(df_tensor **out, const df_tensor *t, const char *op) {
  df_tensor *v = df_malloc(sizeof *v);
  if (!v) return df_error(DF_ENOMEM, "%s: out of memory", op);
  *v = *t;
  v->refcount = 1;
  v->requires_grad = false;
  v->grad = NULL;
  v->grad_fn = NULL;
  v->storage->refcount++;
  *out = v;
  return DF_OK;
}

df_status df_tensor_alias(df_tensor **out, const df_tensor *t) { return view_of(out, t, "alias"); }

static df_status check_dim(const char *op, const df_tensor *t, int dim, int extra) {
  if (dim < 0 || dim >= t->ndim + extra)
    return df_error(DF_EINVAL, "%s: dim %d out of range for a %d-d tensor", op, dim + 1, t->ndim);
  return DF_OK;
}

/* Resolves one -1 in `size` against numel. */
static df_status infer_size(const char *op, const df_tensor *t, int ndim, const int64_t *size, int64_t *resolved) {
  if (ndim < 0 || ndim > DF_MAX_DIMS)
    return df_error(DF_EINVAL, "%s: a tensor has at most %d dims, got %d", op, DF_MAX_DIMS, ndim);
  int64_t numel = df_tensor_numel(t), known = 1;
  int infer = -1;
  for (int d = 0; d < ndim; d++) {
    resolved[d] = size[d];
    if (size[d] == -1) {
      if (infer >= 0) return df_error(DF_EINVAL, "%s: only one size may be -1", op);
      infer = d;
    } else if (size[d] < 0) {
      return df_error(DF_EINVAL, "%s: size %lld of dim %d is negative", op, (long long)size[d], d + 1);
    } else if (__builtin_mul_overflow(known, size[d], &known)) {
      return df_error(DF_EINVAL, "%s: shape too large", op);
    }
  }
  if (infer >= 0) {
    if (known == 0 || numel % known != 0) {
      char buf[128];
      return df_error(DF_EINVAL, "%s: cannot infer -1 in shape %s for %lld elements", op,
                      df_format_shape(buf, sizeof buf, ndim, size), (long long)numel);
    }
    resolved[infer] = numel / known;
    known = numel;
  }
  if (known != numel) {
    char b1[128], b2[128];
    return df_error(DF_EINVAL, "%s: shape %s (%lld elements) does not match tensor of shape %s (%lld elements)", op,
                    df_format_shape(b1, sizeof b1, ndim, resolved), (long long)known,
                    df_format_shape(b2, sizeof b2, t->ndim, t->size), (long long)numel);
  }
  return DF_OK;
}

/* Strides for viewing t with a new shape without copying, when possible.
 * Walks the old dims from the innermost out in "chunks" of dims that are
 * contiguous among themselves; each chunk must be made of whole new dims. */
static bool view_strides(const df_tensor *t, int ndim, const int64_t *size, int64_t *stride) {
  if (df_tensor_numel(t) <= 1) { /* empty or one element: any strides do */
    int64_t s = 1;
    for (int d = ndim - 1; d >= 0; d--) {
      stride[d] = s;
      s *= size[d] ? size[d] : 1;
    }
    return true;
  }
  int view_d = ndim - 1;
  int64_t base = t->stride[t->ndim - 1], old_numel = 1, new_numel = 1;
  for (int d = t->ndim - 1; d >= 0; d--) {
    old_numel *= t->size[d];
    bool chunk_ends = d == 0 || (t->size[d - 1] != 1 && t->stride[d - 1] != old_numel * base);
    if (!chunk_ends) continue;
    while (view_d >= 0 && (new_numel < old_numel || size[view_d] == 1)) {
      stride[view_d] = new_numel * base;
      new_numel *= size[view_d];
      view_d--;
    }
    if (new_numel != old_numel) return false;
    if (d > 0) {
      base = t->stride[d - 1];
      old_numel = new_numel = 1;
    }
  }
  return view_d == -1;
}

/* ---- autograd for views, clone, cat, stack ------------------------------ */

/* Hands v to *out, first recording its node when t needs grad. */
static df_status finish_view(df_tensor **out, df_tensor *v, const df_tensor *t, const char *name, df_backward_fn bw,
                             const int64_t *iargs, int niargs) {
  df_node *node;
  const df_tensor *in[1] = {t};
  df_status st = df_autograd_record(v, name, bw, 1, in, &node);
  if (st) {
    df_tensor_release(v);
    return st;
  }
  for (int i = 0; node && i < niargs; i++) node->iarg[i] = iargs[i];
  *out = v;
  return DF_OK;
}

static df_status bw_reshape(df_node *n, const df_tensor *g, df_tensor **gi) {
  return df_tensor_reshape(&gi[0], g, n->inputs[0].ndim, n->inputs[0].size);
}

static df_status bw_identity(df_node *n, const df_tensor *g, df_tensor **gi) {
  (void)n;
  df_tensor_retain((df_tensor *)g);
  gi[0] = (df_tensor *)g;
  return DF_OK;
}

static df_status bw_transpose(df_node *n, const df_tensor *g, df_tensor **gi) {
  return df_tensor_transpose(&gi[0], g, (int)n->iarg[0], (int)n->iarg[1]);
}

static df_status bw_permute(df_node *n, const df_tensor *g, df_tensor **gi) {
  int inverse[DF_MAX_DIMS];
  for (int d = 0; d < g->ndim; d++) inverse[n->iarg[d]] = d;
  return df_tensor_permute(&gi[0], g, inverse);
}

/* slice and select: the gradient is g placed in a zero tensor of the input's
 * shape; iarg = {dim, start, stop, step, is_select} */
static df_status bw_slice(df_node *n, const df_tensor *g, df_tensor **gi) {
  df_tensor *z, *region;
  df_status st = df_tensor_zeros(&z, n->inputs[0].ndim, n->inputs[0].size);
  if (st) return st;
  int dim = (int)n->iarg[0];
  st = n->iarg[4] ? df_tensor_select(&region, z, dim, n->iarg[1])
                  : df_tensor_slice(&region, z, dim, n->iarg[1], n->iarg[2], n->iarg[3]);
  if (!st) {
    st = df_tensor_copy_(region, g);
    df_tensor_release(region);
  }
  if (st) {
    df_tensor_release(z);
    return st;
  }
  gi[0] = z;
  return DF_OK;
}

static df_status bw_cat(df_node *n, const df_tensor *g, df_tensor **gi) {
  int dim = (int)n->iarg[0];
  int64_t at = 0;
  for (int i = 0; i < n->ninputs; i++) {
    int64_t len = n->inputs[i].size[dim];
    if (df_node_needs_grad(n, i)) {
      df_status st = df_tensor_narrow(&gi[i], g, dim, at, len);
      if (st) return st;
    }
    at += len;
  }
  return DF_OK;
}

static df_status bw_stack(df_node *n, const df_tensor *g, df_tensor **gi) {
  for (int i = 0; i < n->ninputs; i++) {
    if (!df_node_needs_grad(n, i)) continue;
    df_status st = df_tensor_select(&gi[i], g, (int)n->iarg[0], i);
    if (st) return st;
  }
  return DF_OK;
}

df_status df_tensor_view(df_tensor **out, const df_tensor *t, int ndim, const int64_t *size) {
  int64_t resolved[DF_MAX_DIMS], stride[DF_MAX_DIMS];
  df_status st = infer_size("view", t, ndim, size, resolved);
  if (st) return st;
  if (!view_strides(t, ndim, resolved, stride)) {
    char b1[128], b2[128];
    return df_error(DF_EINVAL, "view: cannot view tensor of shape %s as %s without copying (use reshape)",
                    df_format_shape(b1, sizeof b1, t->ndim, t->size), df_format_shape(b2, sizeof b2, ndim, resolved));
  }
  df_tensor *v = NULL;
  if ((st = view_of(&v, t, "view"))) return st;
  v->ndim = ndim;
  for (int d = 0; d < ndim; d++) {
    v->size[d] = resolved[d];
    v->stride[d] = stride[d];
  }
  return finish_view(out, v, t, "view", bw_reshape, NULL, 0);
}

df_status df_tensor_reshape(df_tensor **out, const df_tensor *t, int ndim, const int64_t *size) {
  int64_t resolved[DF_MAX_DIMS], stride[DF_MAX_DIMS];
  df_status st = infer_size("reshape", t, ndim, size, resolved);
  if (st) return st;
  if (view_strides(t, ndim, resolved, stride)) return df_tensor_view(out, t, ndim, resolved);
  df_tensor *c;
  if ((st = df_tensor_clone(&c, t))) return st;
  st = df_tensor_view(out, c, ndim, resolved);
  df_tensor_release(c);
  return st;
}

df_status df_tensor_transpose(df_tensor **out, const df_tensor *t, int d0, int d1) {
  df_status st;
  if ((st = check_dim("transpose", t, d0, 0)) || (st = check_dim("transpose", t, d1, 0))) return st;
  df_tensor *v = NULL;
  if ((st = view_of(&v, t, "transpose"))) return st;
  v->size[d0] = t->size[d1];
  v->size[d1] = t->size[d0];
  v->stride[d0] = t->stride[d1];
  v->stride[d1] = t->stride[d0];
  int64_t dims[2] = {d0, d1};
  return finish_view(out, v, t, "transpose", bw_transpose, dims, 2);
}

df_status df_tensor_permute(df_tensor **out, const df_tensor *t, const int *perm) {
  bool seen[DF_MAX_DIMS] = {false};
  for (int d = 0; d < t->ndim; d++) {
    if (perm[d] < 0 || perm[d] >= t->ndim || seen[perm[d]])
      return df_error(DF_EINVAL, "permute: expected a permutation of 1..%d, dim %d appears twice or is out of range",
                      t->ndim, perm[d] + 1);
    seen[perm[d]] = true;
  }
  df_tensor *v = NULL;
  df_status st = view_of(&v, t, "permute");
  if (st) return st;
  int64_t dims[DF_MAX_DIMS];
  for (int d = 0; d < t->ndim; d++) {
    v->size[d] = t->size[perm[d]];
    v->stride[d] = t->stride[perm[d]];
    dims[d] = perm[d];
  }
  return finish_view(out, v, t, "permute", bw_permute, dims, t->ndim);
}

df_status df_tensor_slice(df_tensor **out, const df_tensor *t, int dim, int64_t start, int64_t stop, int64_t step) {
  df_status st = check_dim("slice", t, dim, 0);
  if (st) return st;
  if (step < 1) return df_error(DF_EINVAL, "slice: step must be positive, got %lld", (long long)step);
  if (start < 0 || stop < start || stop > t->size[dim])
    return df_error(DF_EINVAL, "slice: range [%lld, %lld) out of bounds for dim %d of size %lld", (long long)start + 1,
                    (long long)stop + 1, dim + 1, (long long)t->size[dim]);
  df_tensor *v = NULL;
  if ((st = view_of(&v, t, "slice"))) return st;
  v->offset += start * t->stride[dim];
  v->size[dim] = (stop - start + step - 1) / step;
  v->stride[dim] = t->stride[dim] * step;
  int64_t args[5] = {dim, start, stop, step, 0};
  return finish_view(out, v, t, "slice", bw_slice, args, 5);
}

df_status df_tensor_narrow(df_tensor **out, const df_tensor *t, int dim, int64_t start, int64_t length) {
  df_status st = check_dim("narrow", t, dim, 0);
  if (st) return st;
  if (start < 0 || length < 0 || start > t->size[dim] - length)
    return df_error(DF_EINVAL, "narrow: start %lld and length %lld out of bounds for dim %d of size %lld",
                    (long long)start + 1, (long long)length, dim + 1, (long long)t->size[dim]);
  return df_tensor_slice(out, t, dim, start, start + length, 1);
}

df_status df_tensor_select(df_tensor **out, const df_tensor *t, int dim, int64_t index) {
  df_status st = check_dim("select", t, dim, 0);
  if (st) return st;
  if (index < 0 || index >= t->size[dim])
    return df_error(DF_EINVAL, "select: index %lld out of range for dim %d of size %lld", (long long)index + 1, dim + 1,
                    (long long)t->size[dim]);
  df_tensor *v = NULL;
  if ((st = view_of(&v, t, "select"))) return st;
  v->offset += index * t->stride[dim];
  for (int d = dim; d < t->ndim - 1; d++) {
    v->size[d] = t->size[d + 1];
    v->stride[d] = t->stride[d + 1];
  }
  v->ndim--;
  int64_t args[5] = {dim, index, index + 1, 1, 1};
  return finish_view(out, v, t, "select", bw_slice, args, 5);
}

df_status df_tensor_squeeze(df_tensor **out, const df_tensor *t, int dim) {
  df_status st;
  if (dim >= 0 && (st = check_dim("squeeze", t, dim, 0))) return st;
  df_tensor *v = NULL;
  if ((st = view_of(&v, t, "squeeze"))) return st;
  int n = 0;
  for (int d = 0; d < t->ndim; d++) {
    bool drop = t->size[d] == 1 && (dim < 0 || d == dim);
    if (drop) continue;
    v->size[n] = t->size[d];
    v->stride[n] = t->stride[d];
    n++;
  }
  v->ndim = n;
  return finish_view(out, v, t, "squeeze", bw_reshape, NULL, 0);
}

df_status df_tensor_unsqueeze(df_tensor **out, const df_tensor *t, int dim) {
  df_status st = check_dim("unsqueeze", t, dim, 1);
  if (st) return st;
  if (t->ndim >= DF_MAX_DIMS) return df_error(DF_EINVAL, "unsqueeze: a tensor has at most %d dims", DF_MAX_DIMS);
  df_tensor *v = NULL;
  if ((st = view_of(&v, t, "unsqueeze"))) return st;
  for (int d = t->ndim; d > dim; d--) {
    v->size[d] = t->size[d - 1];
    v->stride[d] = t->stride[d - 1];
  }
  v->size[dim] = 1;
  v->stride[dim] = dim < t->ndim ? t->stride[dim] * t->size[dim] : 1;
  v->ndim++;
  return finish_view(out, v, t, "unsqueeze", bw_reshape, NULL, 0);
}

df_status df_tensor_expand(df_tensor **out, const df_tensor *t, int ndim, const int64_t *size) {
  char b1[128], b2[128];
  if (ndim < t->ndim || ndim > DF_MAX_DIMS)
    return df_error(DF_EINVAL, "expand: cannot expand shape %s to %d dims",
                    df_format_shape(b1, sizeof b1, t->ndim, t->size), ndim);
  int64_t new_size[DF_MAX_DIMS], new_stride[DF_MAX_DIMS];
  for (int d = ndim - 1, s = t->ndim - 1; d >= 0; d--, s--) {
    int64_t want = size[d];
    if (s >= 0) {
      if (want == -1) want = t->size[s];
      if (t->size[s] == want) {
        new_stride[d] = t->stride[s];
      } else if (t->size[s] == 1 && want >= 0) {
        new_stride[d] = 0;
      } else {
        return df_error(DF_EINVAL, "expand: cannot expand shape %s to %s",
                        df_format_shape(b1, sizeof b1, t->ndim, t->size), df_format_shape(b2, sizeof b2, ndim, size));
      }
    } else {
      if (want < 0)
        return df_error(DF_EINVAL, "expand: size %lld is invalid for a new leading dim", (long long)want);
      new_stride[d] = 0;
    }
    new_size[d] = want;
  }
  df_status st = df_check_shape("expand", ndim, new_size, NULL);
  if (st) return st;
  df_tensor *v = NULL;
  if ((st = view_of(&v, t, "expand"))) return st;
  v->ndim = ndim;
  memcpy(v->size, new_size, sizeof(int64_t) * (size_t)ndim);
  memcpy(v->stride, new_stride, sizeof(int64_t) * (size_t)ndim);
  return finish_view(out, v, t, "expand", bw_identity, NULL, 0); /* the engine sums g back to t's shape */
}

df_status df_tensor_contiguous(df_tensor **out, const df_tensor *t) {
  if (df_tensor_is_contiguous(t)) {
    df_tensor_retain((df_tensor *)t);
    *out = (df_tensor *)t;
    return DF_OK;
  }
  return df_tensor_clone(out, t);
}

/* ---- the strided loop driver -------------------------------------------- */

df_status df_iter_init(df_iter *it, const char *op, int nop, const df_tensor *const *ops) {
  const df_tensor *o = ops[0];
  int nd = o->ndim;
  it->nop = nop;
  it->numel = df_tensor_numel(o);
  /* strides of every operand aligned to the output's dims */
  int64_t stride[DF_ITER_MAX_OPS][DF_MAX_DIMS];
  for (int i = 0; i < nop; i++) {
    const df_tensor *t = ops[i];
    if (t->ndim > nd) goto mismatch;
    for (int d = nd - 1, s = t->ndim - 1; d >= 0; d--, s--) {
      if (s < 0) {
        stride[i][d] = 0;
      } else if (t->size[s] == o->size[d]) {
        stride[i][d] = o->size[d] == 1 ? 0 : t->stride[s];
      } else if (t->size[s] == 1) {
        stride[i][d] = 0;
      } else {
        goto mismatch;
      }
    }
    it->base[i] = df_tensor_data(t);
  }
  /* merge dims (from the innermost out), dropping size-1 dims; m* hold the
   * merged dims innermost-first */
  int64_t msize[DF_MAX_DIMS], mstride[DF_ITER_MAX_OPS][DF_MAX_DIMS];
  int n = 0;
  for (int d = nd - 1; d >= 0; d--) {
    if (o->size[d] == 1) continue;
    bool merge = n > 0;
    for (int i = 0; i < nop && merge; i++) merge = stride[i][d] == mstride[i][n - 1] * msize[n - 1];
    if (merge) {
      msize[n - 1] *= o->size[d];
      continue;
    }
    msize[n] = o->size[d];
    for (int i = 0; i < nop; i++) mstride[i][n] = stride[i][d];
    n++;
  }
  if (n == 0) { /* a single element */
    msize[0] = it->numel ? 1 : 0;
    for (int i = 0; i < nop; i++) mstride[i][0] = 0;
    n = 1;
  }
  /* store outermost-first */
  it->ndim = n;
  for (int d = 0; d < n; d++) {
    it->size[d] = msize[n - 1 - d];
    for (int i = 0; i < nop; i++) it->stride[i][d] = mstride[i][n - 1 - d];
  }
  return DF_OK;
mismatch:;
  char b1[128], b2[128];
  for (int i = 1; i < nop; i++) {
    int dummy_nd;
    int64_t dummy[DF_MAX_DIMS];
    if (df_broadcast_shape(op, o->ndim, o->size, ops[i]->ndim, ops[i]->size, &dummy_nd, dummy)) return DF_EINVAL;
  }
  return df_error(DF_EINVAL, "%s: shape %s does not broadcast to %s", op,
                  df_format_shape(b1, sizeof b1, ops[nop - 1]->ndim, ops[nop - 1]->size),
                  df_format_shape(b2, sizeof b2, o->ndim, o->size));
}

typedef struct {
  const df_iter *it;
  df_iter_kernel kernel;
  const void *ctx;
  int64_t ntasks;
} iter_job;

static void iter_task(int64_t task, void *arg) {
  const iter_job *job = arg;
  const df_iter *it = job->it;
  int64_t begin = it->numel * task / job->ntasks, end = it->numel * (task + 1) / job->ntasks;
  int last = it->ndim - 1;
  int64_t idx[DF_MAX_DIMS];
  int64_t rem = begin;
  for (int d = last; d >= 0; d--) {
    idx[d] = rem % it->size[d];
    rem /= it->size[d];
  }
  int64_t inner_stride[DF_ITER_MAX_OPS];
  for (int i = 0; i < it->nop; i++) inner_stride[i] = it->stride[i][last];
  for (int64_t pos = begin; pos < end;) {
    float *ptr[DF_ITER_MAX_OPS];
    for (int i = 0; i < it->nop; i++) {
      int64_t off = 0;
      for (int d = 0; d <= last; d++) off += idx[d] * it->stride[i][d];
      ptr[i] = it->base[i] + off;
    }
    int64_t n = it->size[last] - idx[last];
    if (n > end - pos) n = end - pos;
    job->kernel(n, ptr, inner_stride, job->ctx);
    pos += n;
    idx[last] += n;
    for (int d = last; d > 0 && idx[d] == it->size[d]; d--) {
      idx[d] = 0;
      idx[d - 1]++;
    }
  }
}

void df_iter_run(const df_iter *it, df_iter_kernel kernel, const void *ctx) {
  if (it->numel == 0) return;
  int64_t ntasks = (it->numel + DF_ITER_GRAIN - 1) / DF_ITER_GRAIN;
  int64_t most = (int64_t)df_get_num_threads() * DF_TASKS_PER_THREAD;
  if (ntasks > most) ntasks = most;
  iter_job job = {it, kernel, ctx, ntasks};
  df_parallel_for(ntasks, iter_task, &job);
}

/* ---- copy, fill, clone, get/set ----------------------------------------- */

static void copy_kernel(int64_t n, float *const *p, const int64_t *s, const void *ctx) {
  (void)ctx;
  float *dst = p[0];
  const float *src = p[1];
  if (s[0] == 1 && s[1] == 1) {
    memmove(dst, src, (size_t)n * sizeof(float));
  } else {
    for (int64_t i = 0; i < n; i++) dst[i * s[0]] = src[i * s[1]];
  }
}

static void fill_kernel(int64_t n, float *const *p, const int64_t *s, const void *ctx) {
  float v = *(const float *)ctx, *dst = p[0];
  if (s[0] == 1) {
    for (int64_t i = 0; i < n; i++) dst[i] = v;
  } else {
    for (int64_t i = 0; i < n; i++) dst[i * s[0]] = v;
  }
}

df_status df_tensor_copy_(df_tensor *dst, const df_tensor *src) {
  df_status st = df_check_inplace("copy_", dst);
  if (st) return st;
  const df_tensor *ops[2] = {dst, src};
  df_iter it;
  if ((st = df_iter_init(&it, "copy_", 2, ops))) return st;
  df_iter_run(&it, copy_kernel, NULL);
  df_tensor_bump_version(dst);
  return DF_OK;
}

df_status df_tensor_fill_(df_tensor *t, float value) {
  df_status st = df_check_inplace("fill_", t);
  if (st) return st;
  const df_tensor *ops[1] = {t};
  df_iter it;
  if ((st = df_iter_init(&it, "fill_", 1, ops))) return st;
  df_iter_run(&it, fill_kernel, &value);
  df_tensor_bump_version(t);
  return DF_OK;
}

df_status df_tensor_clone(df_tensor **out, const df_tensor *t) {
  df_tensor *c;
  df_status st = tensor_alloc(&c, t->ndim, t->size, false, "clone");
  if (st) return st;
  if ((st = df_tensor_copy_(c, t))) {
    df_tensor_release(c);
    return st;
  }
  return finish_view(out, c, t, "clone", bw_identity, NULL, 0);
}

static df_status element_offset(const char *op, const df_tensor *t, const int64_t *index, int64_t *offset) {
  int64_t off = t->offset;
  for (int d = 0; d < t->ndim; d++) {
    if (index[d] < 0 || index[d] >= t->size[d])
      return df_error(DF_EINVAL, "%s: index %lld out of range for dim %d of size %lld", op, (long long)index[d] + 1, d + 1,
                      (long long)t->size[d]);
    off += index[d] * t->stride[d];
  }
  *offset = off;
  return DF_OK;
}

df_status df_tensor_get(const df_tensor *t, const int64_t *index, float *value) {
  int64_t off = 0;
  df_status st = element_offset("get", t, index, &off);
  if (st) return st;
  *value = t->storage->data[off];
  return DF_OK;
}

df_status df_tensor_set(df_tensor *t, const int64_t *index, float value) {
  int64_t off = 0;
  df_status st;
  if (df_needs_grad(t)) return df_check_inplace("set", t);
  if ((st = element_offset("set", t, index, &off))) return st;
  t->storage->data[off] = value;
  df_tensor_bump_version(t);
  return DF_OK;
}

/* ---- broadcasting, cat, stack ------------------------------------------- */

df_status df_broadcast_shape(const char *op, int na, const int64_t *sa, int nb, const int64_t *sb, int *out_ndim,
                             int64_t *out_size) {
  int n = na > nb ? na : nb;
  for (int d = n - 1, i = na - 1, j = nb - 1; d >= 0; d--, i--, j--) {
    int64_t x = i >= 0 ? sa[i] : 1, y = j >= 0 ? sb[j] : 1;
    if (x != y && x != 1 && y != 1) {
      char b1[128], b2[128];
      return df_error(DF_EINVAL, "%s: shapes %s and %s cannot broadcast", op, df_format_shape(b1, sizeof b1, na, sa),
                      df_format_shape(b2, sizeof b2, nb, sb));
    }
    out_size[d] = x == 1 ? y : x;
  }
  *out_ndim = n;
  return DF_OK;
}

df_status df_cat(df_tensor **out, int n, const df_tensor *const *ts, int dim) {
  if (n < 1) return df_error(DF_EINVAL, "cat: expected at least one tensor");
  const df_tensor *first = ts[0];
  df_status st = check_dim("cat", first, dim, 0);
  if (st) return st;
  int64_t size[DF_MAX_DIMS];
  memcpy(size, first->size, sizeof size);
  size[dim] = 0;
  for (int i = 0; i < n; i++) {
    const df_tensor *t = ts[i];
    bool ok = t->ndim == first->ndim;
    for (int d = 0; ok && d < t->ndim; d++) ok = d == dim || t->size[d] == first->size[d];
    if (!ok) {
      char b1[128], b2[128];
      return df_error(DF_EINVAL, "cat: tensor %d has shape %s, expected %s except in dim %d", i + 1,
                      df_format_shape(b1, sizeof b1, t->ndim, t->size),
                      df_format_shape(b2, sizeof b2, first->ndim, first->size), dim + 1);
    }
    size[dim] += t->size[dim];
  }
  df_tensor *r;
  if ((st = tensor_alloc(&r, first->ndim, size, false, "cat"))) return st;
  int64_t at = 0;
  for (int i = 0; i < n && !st; i++) {
    df_tensor *part;
    if ((st = df_tensor_narrow(&part, r, dim, at, ts[i]->size[dim]))) break;
    st = df_tensor_copy_(part, ts[i]);
    df_tensor_release(part);
    at += ts[i]->size[dim];
  }
  df_node *node;
  if (st || (st = df_autograd_record(r, "cat", bw_cat, n, ts, &node))) {
    df_tensor_release(r);
    return st;
  }
  if (node) node->iarg[0] = dim;
  *out = r;
  return DF_OK;
}

df_status df_stack(df_tensor **out, int n, const df_tensor *const *ts, int dim) {
  if (n < 1) return df_error(DF_EINVAL, "stack: expected at least one tensor");
  df_status st = check_dim("stack", ts[0], dim, 1);
  if (st) return st;
  if (ts[0]->ndim >= DF_MAX_DIMS) return df_error(DF_EINVAL, "stack: a tensor has at most %d dims", DF_MAX_DIMS);
  for (int i = 1; i < n; i++) {
    if (!df_tensor_same_shape(ts[i], ts[0])) {
      char b1[128], b2[128];
      return df_error(DF_EINVAL, "stack: tensor %d has shape %s, expected %s", i + 1,
                      df_format_shape(b1, sizeof b1, ts[i]->ndim, ts[i]->size),
                      df_format_shape(b2, sizeof b2, ts[0]->ndim, ts[0]->size));
    }
  }
  int64_t size[DF_MAX_DIMS];
  for (int d = 0, s = 0; d <= ts[0]->ndim; d++) size[d] = d == dim ? n : ts[0]->size[s++];
  df_tensor *r;
  if ((st = tensor_alloc(&r, ts[0]->ndim + 1, size, false, "stack"))) return st;
  for (int i = 0; i < n && !st; i++) {
    df_tensor *part;
    if ((st = df_tensor_select(&part, r, dim, i))) break;
    st = df_tensor_copy_(part, ts[i]);
    df_tensor_release(part);
  }
  df_node *node;
  if (st || (st = df_autograd_record(r, "stack", bw_stack, n, ts, &node))) {
    df_tensor_release(r);
    return st;
  }
  if (node) node->iarg[0] = dim;
  *out = r;
  return DF_OK;
}

/* ---- creation ----------------------------------------------------------- */

df_status df_arange(df_tensor **out, double start, double end, double step) {
  if (step == 0 || isnan(step) || isnan(start) || isnan(end))
    return df_error(DF_EINVAL, "arange: step must be nonzero and bounds must not be NaN");
  double count = ceil((end - start) / step);
  if (count < 0) count = 0;
  if (!(count < 9.0e15)) return df_error(DF_ENOMEM, "arange: %g elements is too many", count);
  int64_t n = (int64_t)count;
  df_tensor *t;
  df_status st = tensor_alloc(&t, 1, &n, false, "arange");
  if (st) return st;
  float *p = df_tensor_data(t);
  for (int64_t i = 0; i < n; i++) p[i] = (float)(start + (double)i * step);
  *out = t;
  return DF_OK;
}

df_status df_linspace(df_tensor **out, double start, double end, int64_t n) {
  if (n < 0) return df_error(DF_EINVAL, "linspace: number of points must be >= 0, got %lld", (long long)n);
  df_tensor *t;
  df_status st = tensor_alloc(&t, 1, &n, false, "linspace");
  if (st) return st;
  float *p = df_tensor_data(t);
  double step = n > 1 ? (end - start) / (double)(n - 1) : 0;
  for (int64_t i = 0; i < n; i++) p[i] = (float)(i == n - 1 && n > 1 ? end : start + (double)i * step);
  *out = t;
  return DF_OK;
}

df_status df_eye(df_tensor **out, int64_t n, int64_t m) {
  int64_t size[2] = {n, m};
  df_tensor *t;
  df_status st = tensor_alloc(&t, 2, size, true, "eye");
  if (st) return st;
  float *p = df_tensor_data(t);
  for (int64_t i = 0; i < n && i < m; i++) p[i * m + i] = 1.0f;
  *out = t;
  return DF_OK;
}
