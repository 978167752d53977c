/* activation.h — elementwise.c's SiLU maps, for ops that fuse SiLU into
 * their own passes (group_norm_silu in nn.c), so there is one SiLU. */
#ifndef DF_ACTIVATION_H
#define DF_ACTIVATION_H

#include <stdint.h>

/* o[i] = silu(x[i]) over contiguous arrays; o may be x. The vector form
 * this CPU runs (core/vmath.h), the same arithmetic as D.silu. */
void df_silu_map(int64_t n, float *o, const float *x);
/* o[i] = g[i] silu'(x[i]); o may be g or x. */
void df_silu_grad_map(int64_t n, float *o, const float *g, const float *x);

#endif
