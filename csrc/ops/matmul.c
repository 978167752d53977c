/* matmul.c — matrix products of tensors, through df_gemm (ops/gemm.c).
 *
 * (..., n, k) x (..., k, m) -> (..., n, m) with the batch dims broadcast; a
 * 1-D operand is a row (left) or a column (right) vector, as in NumPy. Each
 * matrix is passed to BLAS in place when its last two dims form a row-major
 * or column-major matrix (so transposed views cost nothing), else copied. */
#include <limits.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include <cblas.h>

#include "../df.h"

/* How BLAS can read the last two dims of t: transposed or not, leading dim. */
static bool blas_layout(const df_tensor *t, CBLAS_TRANSPOSE *trans, int64_t *ld) {
  int64_t rows = t->size[t->ndim - 2], cols = t->size[t->ndim - 1];
  int64_t rs = t->stride[t->ndim - 2], cs = t->stride[t->ndim - 1];
  if (cols == 1) cs = 1; /* a size-1 dim's stride is arbitrary */
  if (rows == 1) rs = cols;
  if (cs == 1 && rs >= (cols > 1 ? cols : 1)) {
    *trans = CblasNoTrans;
    *ld = rs;
    return true;
  }
  if (rs == 1 && cs >= (rows > 1 ? rows : 1)) {
    *trans = CblasTrans;
    *ld = cs;
    return true;
  }
  return false;
}

static df_status blas_ready(const df_tensor *t, df_tensor **usable, CBLAS_TRANSPOSE *trans, int64_t *ld) {
  if (blas_layout(t, trans, ld)) {
    df_tensor_retain((df_tensor *)t);
    *usable = (df_tensor *)t;
    return DF_OK;
  }
  df_status st = df_tensor_clone(usable, t);
  if (st) return st;
  blas_layout(*usable, trans, ld);
  return DF_OK;
}

static df_status matmul_forward(df_tensor **out, const df_tensor *a_in, const df_tensor *b_in) {
  if (a_in->ndim < 1 || b_in->ndim < 1) return df_error(DF_EINVAL, "matmul: expected tensors of at least 1 dim, got 0-d");
  df_tensor *a = NULL, *b = NULL, *r = NULL, *av = NULL, *bv = NULL;
  df_status st;
  bool a_vec = a_in->ndim == 1, b_vec = b_in->ndim == 1;
  /* vectors become 1 x k and k x 1 matrices; those dims are dropped at the end */
  if (a_vec ? (st = df_tensor_unsqueeze(&av, a_in, 0)) : (st = DF_OK)) goto done;
  if (b_vec ? (st = df_tensor_unsqueeze(&bv, b_in, 1)) : (st = DF_OK)) goto done;
  const df_tensor *A = a_vec ? av : a_in, *B = b_vec ? bv : b_in;
  int64_t n = A->size[A->ndim - 2], k = A->size[A->ndim - 1], m = B->size[B->ndim - 1];
  if (B->size[B->ndim - 2] != k) {
    char b1[128], b2[128];
    st = df_error(DF_EINVAL, "matmul: shapes %s and %s don't match (inner dims %lld and %lld)",
                  df_format_shape(b1, sizeof b1, a_in->ndim, a_in->size), df_format_shape(b2, sizeof b2, b_in->ndim, b_in->size),
                  (long long)k, (long long)B->size[B->ndim - 2]);
    goto done;
  }
  if (n > INT_MAX || k > INT_MAX || m > INT_MAX) {
    st = df_error(DF_EINVAL, "matmul: matrix dims above %d are not supported by BLAS", INT_MAX);
    goto done;
  }
  int nb;
  int64_t size[DF_MAX_DIMS];
  if (df_broadcast_shape("matmul", A->ndim - 2, A->size, B->ndim - 2, B->size, &nb, size)) {
    char b1[128], b2[128];
    st = df_error(DF_EINVAL, "matmul: batch dims of shapes %s and %s cannot broadcast",
                  df_format_shape(b1, sizeof b1, a_in->ndim, a_in->size), df_format_shape(b2, sizeof b2, b_in->ndim, b_in->size));
    goto done;
  }
  if (nb + 2 > DF_MAX_DIMS) {
    st = df_error(DF_EINVAL, "matmul: result would have more than %d dims", DF_MAX_DIMS);
    goto done;
  }
  size[nb] = n;
  size[nb + 1] = m;
  /* BLAS overwrites the output (beta = 0); only k = 0 leaves it to us */
  if ((st = k == 0 ? df_tensor_zeros(&r, nb + 2, size) : df_tensor_empty(&r, nb + 2, size))) goto done;
  CBLAS_TRANSPOSE ta, tb;
  int64_t lda, ldb;
  if ((st = blas_ready(A, &a, &ta, &lda)) || (st = blas_ready(B, &b, &tb, &ldb))) goto done;
  if (n > 0 && m > 0 && k > 0) {
    int64_t batches = 1;
    for (int d = 0; d < nb; d++) batches *= size[d];
    float *rp = df_tensor_data(r);
    for (int64_t i = 0; i < batches; i++) {
      /* offsets of batch i in a and b, broadcasting their batch dims */
      int64_t rem = i, oa = 0, ob = 0;
      for (int d = nb - 1; d >= 0; d--) {
        int64_t idx = rem % size[d];
        rem /= size[d];
        int da = d - (nb - (a->ndim - 2)), db = d - (nb - (b->ndim - 2));
        if (da >= 0 && a->size[da] > 1) oa += idx * a->stride[da];
        if (db >= 0 && b->size[db] > 1) ob += idx * b->stride[db];
      }
      df_gemm(ta == CblasTrans, tb == CblasTrans, n, m, k, 1.0f, df_tensor_data(a) + oa, lda, df_tensor_data(b) + ob, ldb, 0.0f, rp + i * n * m, m);
    }
  }
  if (a_vec || b_vec) { /* drop the vector dims */
    int64_t vsize[DF_MAX_DIMS];
    int vn = 0;
    for (int d = 0; d < nb; d++) vsize[vn++] = size[d];
    if (!a_vec) vsize[vn++] = n;
    if (!b_vec) vsize[vn++] = m;
    df_tensor *squeezed;
    if ((st = df_tensor_view(&squeezed, r, vn, vsize))) goto done;
    df_tensor_release(r);
    r = squeezed;
  }
done:
  df_tensor_release(a);
  df_tensor_release(b);
  df_tensor_release(av);
  df_tensor_release(bv);
  if (st) {
    df_tensor_release(r);
    return st;
  }
  *out = r;
  return DF_OK;
}

/* saved[0] = a, saved[1] = b. With G the gradient as (..., n, m) matrices:
 * dA = G · Bᵀ and dB = Aᵀ · G; vectors were a 1 x k row or a k x 1 column. */
static df_status bw_matmul(df_node *n, const df_tensor *g, df_tensor **gi) {
  const df_tensor *a = n->saved[0], *b = n->saved[1];
  bool a_vec = a->ndim == 1, b_vec = b->ndim == 1;
  df_tensor *A = NULL, *B = NULL, *G = NULL, *G1 = NULL, *T = NULL, *R = NULL;
  df_status st = DF_OK;
  if (a_vec ? (st = df_tensor_unsqueeze(&A, a, 0)) : (df_tensor_retain((df_tensor *)a), A = (df_tensor *)a, DF_OK)) goto done;
  if (b_vec ? (st = df_tensor_unsqueeze(&B, b, 1)) : (df_tensor_retain((df_tensor *)b), B = (df_tensor *)b, DF_OK)) goto done;
  if (a_vec ? (st = df_tensor_unsqueeze(&G1, g, g->ndim - (b_vec ? 0 : 1))) : (df_tensor_retain((df_tensor *)g), G1 = (df_tensor *)g, DF_OK)) goto done;
  if (b_vec ? (st = df_tensor_unsqueeze(&G, G1, G1->ndim)) : (df_tensor_retain(G1), G = G1, DF_OK)) goto done;
  if (df_node_needs_grad(n, 0)) {
    if ((st = df_tensor_transpose(&T, B, B->ndim - 2, B->ndim - 1)) || (st = matmul_forward(&gi[0], G, T))) goto done;
    df_tensor_release(T);
    T = NULL;
  }
  if (df_node_needs_grad(n, 1)) {
    if ((st = df_tensor_transpose(&T, A, A->ndim - 2, A->ndim - 1)) || (st = matmul_forward(&R, T, G))) goto done;
    if (b_vec) { /* (..., k, 1) -> (..., k) */
      st = df_tensor_squeeze(&gi[1], R, R->ndim - 1);
    } else {
      gi[1] = R;
      R = NULL;
    }
  }
done:
  df_tensor_release(A);
  df_tensor_release(B);
  df_tensor_release(G);
  df_tensor_release(G1);
  df_tensor_release(T);
  df_tensor_release(R);
  return st;
}

df_status df_matmul(df_tensor **out, const df_tensor *a, const df_tensor *b) {
  bool previous = df_set_grad_enabled(false);
  df_tensor *r;
  df_status st = matmul_forward(&r, a, b);
  df_set_grad_enabled(previous);
  if (st) return st;
  const df_tensor *in[2] = {a, b};
  df_node *node;
  if ((st = df_autograd_record(r, "matmul", bw_matmul, 2, in, &node)) ||
      (node && ((st = df_node_save(node, 0, a)) || (st = df_node_save(node, 1, b))))) {
    df_tensor_release(r);
    return st;
  }
  *out = r;
  return DF_OK;
}

static double now_seconds(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

double df_bench_raw_sgemm(int n, int reps) {
  if (n < 1 || reps < 1) return 0;
  size_t count = (size_t)n * (size_t)n;
  float *a = df_malloc(count * sizeof(float)), *b = df_malloc(count * sizeof(float)), *c = df_malloc(count * sizeof(float));
  double best = 0;
  if (a && b && c) {
    for (size_t i = 0; i < count; i++) {
      a[i] = (float)(i % 7) * 0.25f;
      b[i] = (float)(i % 5) * 0.5f;
    }
    openblas_set_num_threads(df_get_num_threads()); /* OpenBLAS's own threading, for comparison */
    for (int r = 0; r < reps; r++) {
      double t0 = now_seconds();
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, n, n, n, 1.0f, a, n, b, n, 0.0f, c, n);
      double gflops = 2.0 * n * (double)n * n / (now_seconds() - t0) / 1e9;
      if (gflops > best) best = gflops;
    }
    openblas_set_num_threads(1);
  }
  df_free(a);
  df_free(b);
  df_free(c);
  return best;
}

const char *df_blas_info(void) {
  static char info[256];
  snprintf(info, sizeof info, "%s; core %s", openblas_get_config(), openblas_get_corename());
  return info;
}
