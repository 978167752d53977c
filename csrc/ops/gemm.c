/* gemm.c — every matrix product of the library goes through df_gemm.
 *
 * OpenBLAS runs single-threaded; df_gemm cuts a product into blocks of
 * columns (or rows) and runs them on the library's own pool. So there is one
 * set of threads: OpenBLAS's workers never spin (in sched_yield) while ours
 * work, which cost a U-Net training step more than a third of its time when
 * both pools were active. The cut depends only on the shapes, never on the
 * thread count, so products are bitwise the same whatever the thread count. */
#include <cblas.h>

#include "../df.h"

#define GEMM_MIN_WORK ((int64_t)1 << 18) /* multiply-adds below which one call does it all */
#define GEMM_BLOCK 512   /* columns (or rows) per block: each block repacks the other operand */
#define GEMM_MIN_BLOCK 128 /* but mid-size products still get two blocks, for two threads */
#define GEMM_MAX_BLOCKS 16

typedef struct {
  bool ta, tb, split_n;
  int64_t m, n, k, lda, ldb, ldc, block;
  float alpha, beta;
  const float *A, *B;
  float *C;
} gemm_job;

static void gemm_task(int64_t task, void *arg) {
  const gemm_job *j = arg;
  int64_t lo = task * j->block, dim = j->split_n ? j->n : j->m;
  int64_t len = dim - lo < j->block ? dim - lo : j->block;
  const float *A = j->A, *B = j->B;
  float *C = j->C;
  int64_t m = j->m, n = j->n;
  if (j->split_n) { /* columns lo .. lo + len of op(B) and C */
    B += j->tb ? lo * j->ldb : lo;
    C += lo;
    n = len;
  } else { /* rows lo .. lo + len of op(A) and C */
    A += j->ta ? lo : lo * j->lda;
    C += lo * j->ldc;
    m = len;
  }
  cblas_sgemm(CblasRowMajor, j->ta ? CblasTrans : CblasNoTrans, j->tb ? CblasTrans : CblasNoTrans, (int)m, (int)n,
              (int)j->k, j->alpha, A, (int)j->lda, B, (int)j->ldb, j->beta, C, (int)j->ldc);
}

void df_gemm(bool ta, bool tb, int64_t m, int64_t n, int64_t k, float alpha, const float *A, int64_t lda, const float *B,
             int64_t ldb, float beta, float *C, int64_t ldc) {
  if (m <= 0 || n <= 0) return;
  gemm_job j = {ta, tb, n >= m, m, n, k, lda, ldb, ldc, 0, alpha, beta, A, B, C};
  int64_t dim = j.split_n ? n : m, work = m * n * (k > 0 ? k : 1);
  int64_t blocks = dim / GEMM_BLOCK;
  if (blocks < 2 && dim >= 2 * GEMM_MIN_BLOCK) blocks = 2;
  if (blocks > GEMM_MAX_BLOCKS) blocks = GEMM_MAX_BLOCKS;
  if (blocks < 1 || work < GEMM_MIN_WORK) blocks = 1;
  j.block = (dim + blocks - 1) / blocks;
  df_parallel_for((dim + j.block - 1) / j.block, gemm_task, &j);
}
