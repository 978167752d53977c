/* pool.c — average pooling and nearest-neighbour upsampling over NCHW
 * tensors, forward and backward side by side.
 *
 * Both work plane by plane (one (n, c) image each); a plane's output and its
 * input gradient depend on that plane alone, so planes are split over the
 * pool with no shared writes. avg_pool2d counts padded cells as zeros in the
 * average (PyTorch's count_include_pad) and has no ceil mode, so every
 * window divides by kh * kw. */
#include <stdint.h>
#include <string.h>

#include "../core/iter.h"
#include "../df.h"

typedef struct {
  int64_t planes, h, w, oh, ow;
  int64_t kh, kw, sh, sw, ph, pw; /* avg_pool2d; kh, kw are the scale for upsampling */
  const float *src;
  float *dst;
  int64_t per_task;
} plane_job;

static df_status check_4d(const char *op, const df_tensor *x) {
  if (x->ndim == 4) return DF_OK;
  char b[128];
  return df_error(DF_EINVAL, "%s: expected a 4-d input (N, C, H, W), got shape %s", op,
                  df_format_shape(b, sizeof b, x->ndim, x->size));
}

/* Runs task over the planes: src is read contiguous, dst written (zeroed when
 * zero, for kernels that accumulate). */
static df_status run_planes(df_tensor **out, const df_tensor *src_in, const int64_t *out_size, bool zero,
                            plane_job *j, int64_t cost, void (*task)(int64_t, void *)) {
  df_tensor *src, *dst = NULL;
  df_status st = df_tensor_contiguous(&src, src_in);
  if (st) return st;
  if ((st = zero ? df_tensor_zeros(&dst, 4, out_size) : df_tensor_empty(&dst, 4, out_size))) {
    df_tensor_release(src);
    return st;
  }
  j->src = df_tensor_data(src);
  j->dst = df_tensor_data(dst);
  df_parallel_for(df_task_split(j->planes, cost, &j->per_task), task, j);
  df_tensor_release(src);
  *out = dst;
  return DF_OK;
}

/* ---- avg_pool2d ---------------------------------------------------------- */

static void avg_forward_task(int64_t task, void *arg) {
  const plane_job *j = arg;
  int64_t p1 = (task + 1) * j->per_task < j->planes ? (task + 1) * j->per_task : j->planes;
  float inv = 1.0f / (float)(j->kh * j->kw);
  for (int64_t p = task * j->per_task; p < p1; p++) {
    const float *x = j->src + p * j->h * j->w;
    float *y = j->dst + p * j->oh * j->ow;
    for (int64_t oh = 0; oh < j->oh; oh++) {
      int64_t h0 = oh * j->sh - j->ph, h1 = h0 + j->kh;
      if (h0 < 0) h0 = 0;
      if (h1 > j->h) h1 = j->h;
      for (int64_t ow = 0; ow < j->ow; ow++) {
        int64_t w0 = ow * j->sw - j->pw, w1 = w0 + j->kw;
        if (w0 < 0) w0 = 0;
        if (w1 > j->w) w1 = j->w;
        float acc = 0;
        for (int64_t ih = h0; ih < h1; ih++)
          for (int64_t iw = w0; iw < w1; iw++) acc += x[ih * j->w + iw];
        y[oh * j->ow + ow] = acc * inv;
      }
    }
  }
}

/* dx += dout / (kh * kw) over each window's cells inside the input */
static void avg_backward_task(int64_t task, void *arg) {
  const plane_job *j = arg;
  int64_t p1 = (task + 1) * j->per_task < j->planes ? (task + 1) * j->per_task : j->planes;
  float inv = 1.0f / (float)(j->kh * j->kw);
  for (int64_t p = task * j->per_task; p < p1; p++) {
    const float *g = j->src + p * j->oh * j->ow;
    float *dx = j->dst + p * j->h * j->w;
    for (int64_t oh = 0; oh < j->oh; oh++) {
      int64_t h0 = oh * j->sh - j->ph, h1 = h0 + j->kh;
      if (h0 < 0) h0 = 0;
      if (h1 > j->h) h1 = j->h;
      for (int64_t ow = 0; ow < j->ow; ow++) {
        int64_t w0 = ow * j->sw - j->pw, w1 = w0 + j->kw;
        if (w0 < 0) w0 = 0;
        if (w1 > j->w) w1 = j->w;
        float v = g[oh * j->ow + ow] * inv;
        for (int64_t ih = h0; ih < h1; ih++)
          for (int64_t iw = w0; iw < w1; iw++) dx[ih * j->w + iw] += v;
      }
    }
  }
}

/* x's shape (4 sizes) and the parameters into a job */
static void avg_job(plane_job *j, const int64_t *xs, const int64_t *k) {
  *j = (plane_job){.planes = xs[0] * xs[1], .h = xs[2], .w = xs[3], .kh = k[0], .kw = k[1], .sh = k[2], .sw = k[3],
                   .ph = k[4], .pw = k[5]};
  j->oh = (j->h + 2 * j->ph - j->kh) / j->sh + 1;
  j->ow = (j->w + 2 * j->pw - j->kw) / j->sw + 1;
}

/* iarg = {kh, kw, sh, sw, ph, pw}; nothing saved (the pool is linear) */
static df_status bw_avg_pool2d(df_node *node, const df_tensor *grad, df_tensor **gi) {
  const df_edge *ex = &node->inputs[0];
  plane_job j;
  avg_job(&j, ex->size, node->iarg);
  return run_planes(&gi[0], grad, ex->size, true, &j, j.oh * j.ow * j.kh * j.kw, avg_backward_task);
}

df_status df_avg_pool2d(df_tensor **out, const df_tensor *x, const int kernel[2], const int stride[2],
                        const int padding[2]) {
  df_status st = check_4d("avg_pool2d", x);
  if (st) return st;
  char b[128];
  if (kernel[0] < 1 || kernel[1] < 1)
    return df_error(DF_EINVAL, "avg_pool2d: kernel must be >= 1, got {%d,%d}", kernel[0], kernel[1]);
  if (stride[0] < 1 || stride[1] < 1)
    return df_error(DF_EINVAL, "avg_pool2d: stride must be >= 1, got {%d,%d}", stride[0], stride[1]);
  if (padding[0] < 0 || padding[1] < 0)
    return df_error(DF_EINVAL, "avg_pool2d: padding must be >= 0, got {%d,%d}", padding[0], padding[1]);
  if (padding[0] > kernel[0] / 2 || padding[1] > kernel[1] / 2)
    return df_error(DF_EINVAL, "avg_pool2d: padding {%d,%d} must be at most half the kernel {%d,%d}", padding[0],
                    padding[1], kernel[0], kernel[1]);
  int64_t padh = x->size[2] + 2 * (int64_t)padding[0], padw = x->size[3] + 2 * (int64_t)padding[1];
  if (padh < kernel[0] || padw < kernel[1])
    return df_error(DF_EINVAL,
                    "avg_pool2d: input %s padded by {%d,%d} is %lldx%lld, smaller than the kernel %dx%d "
                    "(the output would be empty)",
                    df_format_shape(b, sizeof b, x->ndim, x->size), padding[0], padding[1], (long long)padh,
                    (long long)padw, kernel[0], kernel[1]);
  int64_t params[6] = {kernel[0], kernel[1], stride[0], stride[1], padding[0], padding[1]};
  plane_job j;
  avg_job(&j, x->size, params);
  int64_t size[4] = {x->size[0], x->size[1], j.oh, j.ow};
  bool previous = df_set_grad_enabled(false);
  df_tensor *r;
  st = run_planes(&r, x, size, false, &j, j.oh * j.ow * j.kh * j.kw, avg_forward_task);
  df_set_grad_enabled(previous);
  if (st) return st;
  df_node *node;
  if ((st = df_autograd_record(r, "avg_pool2d", bw_avg_pool2d, 1, &x, &node))) {
    df_tensor_release(r);
    return st;
  }
  if (node) memcpy(node->iarg, params, sizeof params);
  *out = r;
  return DF_OK;
}

/* ---- upsample_nearest2d --------------------------------------------------- */

static void up_forward_task(int64_t task, void *arg) {
  const plane_job *j = arg;
  int64_t p1 = (task + 1) * j->per_task < j->planes ? (task + 1) * j->per_task : j->planes;
  for (int64_t p = task * j->per_task; p < p1; p++) {
    const float *x = j->src + p * j->h * j->w;
    float *y = j->dst + p * j->oh * j->ow;
    for (int64_t oh = 0; oh < j->oh; oh++) {
      const float *xr = x + (oh / j->kh) * j->w;
      float *yr = y + oh * j->ow;
      if (oh % j->kh) { /* a repeat of the row above */
        memcpy(yr, yr - j->ow, sizeof(float) * (size_t)j->ow);
        continue;
      }
      for (int64_t iw = 0; iw < j->w; iw++)
        for (int64_t s = 0; s < j->kw; s++) yr[iw * j->kw + s] = xr[iw];
    }
  }
}

/* dx[i, j] = the sum of dout over the sh x sw block it was copied to */
static void up_backward_task(int64_t task, void *arg) {
  const plane_job *j = arg;
  int64_t p1 = (task + 1) * j->per_task < j->planes ? (task + 1) * j->per_task : j->planes;
  for (int64_t p = task * j->per_task; p < p1; p++) {
    const float *g = j->src + p * j->oh * j->ow;
    float *dx = j->dst + p * j->h * j->w;
    for (int64_t ih = 0; ih < j->h; ih++)
      for (int64_t iw = 0; iw < j->w; iw++) {
        float acc = 0;
        for (int64_t a = 0; a < j->kh; a++) {
          const float *gr = g + (ih * j->kh + a) * j->ow + iw * j->kw;
          for (int64_t s = 0; s < j->kw; s++) acc += gr[s];
        }
        dx[ih * j->w + iw] = acc;
      }
  }
}

static void up_job(plane_job *j, const int64_t *xs, const int64_t *scale) {
  *j = (plane_job){.planes = xs[0] * xs[1], .h = xs[2], .w = xs[3], .kh = scale[0], .kw = scale[1]};
  j->oh = j->h * j->kh;
  j->ow = j->w * j->kw;
}

/* iarg = {sh, sw} */
static df_status bw_upsample_nearest2d(df_node *node, const df_tensor *grad, df_tensor **gi) {
  const df_edge *ex = &node->inputs[0];
  plane_job j;
  up_job(&j, ex->size, node->iarg);
  return run_planes(&gi[0], grad, ex->size, false, &j, j.oh * j.ow, up_backward_task);
}

df_status df_upsample_nearest2d(df_tensor **out, const df_tensor *x, const int scale[2]) {
  df_status st = check_4d("upsample_nearest2d", x);
  if (st) return st;
  if (scale[0] < 1 || scale[1] < 1)
    return df_error(DF_EINVAL, "upsample_nearest2d: scale must be >= 1, got {%d,%d}", scale[0], scale[1]);
  if (x->size[2] > INT64_MAX / 4 / scale[0] || x->size[3] > INT64_MAX / 4 / scale[1]) {
    char b[128];
    return df_error(DF_ENOMEM, "upsample_nearest2d: input %s scaled by {%d,%d} is too large to allocate",
                    df_format_shape(b, sizeof b, x->ndim, x->size), scale[0], scale[1]);
  }
  int64_t params[2] = {scale[0], scale[1]};
  plane_job j;
  up_job(&j, x->size, params);
  int64_t size[4] = {x->size[0], x->size[1], j.oh, j.ow}, numel;
  if ((st = df_check_shape("upsample_nearest2d", 4, size, &numel))) return st;
  bool previous = df_set_grad_enabled(false);
  df_tensor *r;
  st = run_planes(&r, x, size, false, &j, j.oh * j.ow, up_forward_task);
  df_set_grad_enabled(previous);
  if (st) return st;
  df_node *node;
  if ((st = df_autograd_record(r, "upsample_nearest2d", bw_upsample_nearest2d, 1, &x, &node))) {
    df_tensor_release(r);
    return st;
  }
  if (node) memcpy(node->iarg, params, sizeof params);
  *out = r;
  return DF_OK;
}
