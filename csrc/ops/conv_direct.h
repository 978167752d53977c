/* conv_direct.h — direct convolution kernels (ops/conv_direct.c) for the
 * convolutions a U-Net uses: stride 1, dilation 1, one group, 1x1 or 3x3,
 * padding 0 .. k - 1, float NCHW, on CPUs with AVX-512. conv.c picks them
 * where conv_direct_applies() says so and keeps im2col + GEMM for the rest. */
#ifndef DF_CONV_DIRECT_H
#define DF_CONV_DIRECT_H

#include <stdbool.h>
#include <stdint.h>

#include "../df.h"

typedef struct {
  int64_t n, c, h, w; /* input (N, C, H, W) */
  int64_t o, kh, kw;  /* weight (O, C, kh, kw) */
  int64_t ph, pw;     /* padding */
  int64_t oh, ow;     /* output plane: h + 2 ph - kh + 1, w + 2 pw - kw + 1 */
} direct_geom;

/* Whether the direct kernels run this convolution (the CPU has AVX-512F,
 * the shape is one of theirs, and df_debug_conv_direct has not turned them
 * off); and, when they do, whether they also take its weight gradient. */
bool conv_direct_applies(int64_t kh, int64_t kw, const int stride[2], const int padding[2], const int dilation[2],
                         int groups);

/* y (N, O, oh, ow) = conv(x, w) + bias (bias may be NULL). When
 * flip_transpose is set, w is read as the (C, O, kh, kw) weight of the
 * convolution being differentiated, transposed and flipped: so the gradient
 * of the input of a stride-1 convolution is this same forward pass over the
 * output's gradient (padding k - 1 - p). */
df_status conv_direct_forward(const direct_geom *g, const float *x, const float *w, bool flip_transpose,
                              const float *bias, float *y);

bool conv_direct_grad_weight_applies(const direct_geom *g);

/* dw (O, C, kh, kw) = sum over images and positions of dy x shifted; dw is
 * overwritten. Summed in an order fixed by the shapes alone. */
df_status conv_direct_grad_weight(const direct_geom *g, const float *x, const float *dy, float *dw);

/* Winograd F(2x2, 3x3) (ops/conv_winograd.c): for 3x3 convolutions with
 * padding 1 on planes it can cut into vectors of 16 tiles; conv_direct_forward
 * hands those to it. Same contract as conv_direct_forward. */
bool conv_winograd_applies(const direct_geom *g);
df_status conv_winograd_forward(const direct_geom *g, const float *x, const float *w, bool flip_transpose,
                                const float *bias, float *y);

#endif
