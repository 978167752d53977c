/* iter.h — the strided loop driver shared by the elementwise ops, copy and
 * fill: operand 0 is the output and fixes the shape, the others broadcast to
 * it. Dims that are contiguous for every operand are merged, so the kernel
 * sees long runs with constant strides; the range is split over the thread
 * pool (elementwise results don't depend on the split). Internal to the core. */
#ifndef DF_ITER_H
#define DF_ITER_H

#include "../df.h"

#define DF_ITER_MAX_OPS 4
#define DF_ITER_GRAIN DF_PARALLEL_GRAIN /* elements per task, below which threads cost more than they give */

typedef struct {
  int nop;
  int ndim; /* after merging; >= 1 */
  int64_t numel;
  int64_t size[DF_MAX_DIMS];
  int64_t stride[DF_ITER_MAX_OPS][DF_MAX_DIMS];
  float *base[DF_ITER_MAX_OPS];
} df_iter;

/* n elements; ptr[i] and stride[i] of operand i along the run. */
typedef void (*df_iter_kernel)(int64_t n, float *const *ptr, const int64_t *stride, const void *ctx);

/* Fails (naming `op`) when an input does not broadcast to the output shape. */
df_status df_iter_init(df_iter *it, const char *op, int nop, const df_tensor *const *ops);
void df_iter_run(const df_iter *it, df_iter_kernel kernel, const void *ctx);

#endif
