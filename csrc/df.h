/* df.h — the public header of libdiffusion, the plain-C core of `diffusion`.
 *
 * The core never includes lua.h. Every function that can fail returns a
 * df_status and leaves a message in df_last_error(); it never aborts or exits
 * on user input. Ownership: a function that hands out a tensor through a
 * `df_tensor **out` gives the caller one reference (release it with
 * df_tensor_release); tensors passed as `const df_tensor *` are borrowed.
 * On failure *out is left untouched.
 *
 * Tensors are float32, N-d (N <= DF_MAX_DIMS), views over refcounted storage.
 * All dims and indices here are 0-based; the Lua binding converts from 1-based.
 */
#ifndef DF_H
#define DF_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define DF_MAX_DIMS 8

typedef enum {
  DF_OK = 0,
  DF_EINVAL, /* bad argument: shape, dim, index, value */
  DF_ENOMEM, /* allocation failed or size overflows */
  DF_EIO     /* file or format problem */
} df_status;

/* ---- errors (core/error.c) ---------------------------------------------- */

/* The message of the last failure on this thread. */
const char *df_last_error(void);
/* Formats the message and returns `code`, so a failure is `return df_error(...)`. */
df_status df_error(df_status code, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 2, 3)))
#endif
    ;
/* "{2,3,4}" into buf; returns buf. */
char *df_format_shape(char *buf, size_t cap, int ndim, const int64_t *size);

/* ---- allocation (core/alloc.c) ------------------------------------------ */

void *df_malloc(size_t bytes);           /* NULL on failure (or injected failure) */
void *df_calloc(size_t n, size_t size);
void df_free(void *p);
/* Tensor buffers: large ones are recycled through a bounded cache, because
 * fresh pages cost a page fault each. *capacity receives the usable size.
 * The buffers out and the cache together stay within 1.5 times the most
 * ever out at once (or 1 GiB, if more): a training step's buffers come back
 * from it the next step, and the resident memory stays near the step's own
 * peak. */
void *df_buffer_get(size_t bytes, bool zero, size_t *capacity);
void df_buffer_put(void *p, size_t capacity);
size_t df_buffer_cache_clear(void); /* returns the bytes given back */
size_t df_buffer_cache_bytes(void);
/* Bytes held by live tensor storages (the binding reports them to Lua's GC). */
size_t df_live_bytes(void);
/* Bytes of tensor storage allocated since the start (never decreases). */
size_t df_allocated_bytes(void);
/* Test hook: the n-th allocation from now fails (n >= 1); 0 turns it off. */
void df_alloc_fail_at(long n);
/* Allocations left before the injected failure (0: it has happened, or none
 * is armed), so a test can tell an operation that met no failure. */
long df_alloc_fail_pending(void);

/* ---- threads (core/threads.c) ------------------------------------------- */

/* Sets the pool's thread count (n >= 1); OpenBLAS stays single-threaded and
 * df_gemm spreads matrix products over the pool. */
df_status df_set_num_threads(int n);
int df_get_num_threads(void);
/* Runs fn(task, ctx) for task in [0, ntasks) on the pool; the caller joins
 * in. What a task computes must depend only on its index, never on which
 * thread ran it. A nested call runs inline. */
void df_parallel_for(int64_t ntasks, void (*fn)(int64_t task, void *ctx), void *ctx);
/* Work below this many elements (or element-sized steps) stays on one thread. */
#define DF_PARALLEL_GRAIN 32768
/* Tasks per thread that a loop is cut into where the grain allows: tasks are
 * taken in turn, so a thread whose core is busy with something else (a shared
 * machine) leaves its share to the others instead of holding them up. */
#define DF_TASKS_PER_THREAD 4
/* How to cut `items` units of work costing `cost` elements each: returns the
 * number of tasks (at most DF_TASKS_PER_THREAD per thread, each worth at
 * least DF_PARALLEL_GRAIN) and sets *per_task to the units per task. */
int64_t df_task_split(int64_t items, int64_t cost, int64_t *per_task);

/* ---- the CPU (core/cpu.c) ----------------------------------------------- */

/* The widest SIMD this CPU (and OS) runs: "avx512f", "avx2" (with FMA) or "scalar". */
const char *df_cpu_simd(void);
/* Measures the machine's FMA peak: `threads` threads (1..256) each run a loop
 * of independent fused multiply-adds for `seconds` (0 < s <= 60), all at
 * once; *gflops receives their total GFLOP/s (2 flops per lane per FMA).
 * simd: "avx512f", "avx2", "scalar", or NULL / "best" for df_cpu_simd(); one
 * this CPU lacks is DF_EINVAL. For benchmarks, never for tests of speed. */
df_status df_fma_peak(int threads, double seconds, const char *simd, double *gflops);

/* ---- storage and tensors (core/tensor.c) -------------------------------- */

typedef struct df_node df_node;

typedef struct df_storage {
  float *data;
  uint64_t version; /* bumped by every in-place write, to catch changes to saved tensors */
  int64_t numel;
  size_t capacity; /* bytes behind data (>= numel * 4), for the buffer cache */
  int refcount;
} df_storage;

typedef struct df_tensor df_tensor;

struct df_tensor {
  df_storage *storage;
  int64_t offset; /* in elements */
  int ndim;
  int64_t size[DF_MAX_DIMS];
  int64_t stride[DF_MAX_DIMS]; /* in elements; 0 for expanded dims */
  int refcount;
  /* autograd: a leaf has requires_grad and no grad_fn; an op's result that
   * needs a gradient has the node that made it (one reference). */
  bool requires_grad;
  df_tensor *grad;  /* accumulated by backward into leaves (owned) */
  df_node *grad_fn; /* owned reference */
};

void df_tensor_retain(df_tensor *t);
void df_tensor_release(df_tensor *t); /* NULL is fine */

static inline float *df_tensor_data(const df_tensor *t) { return t->storage->data + t->offset; }
int64_t df_tensor_numel(const df_tensor *t);
bool df_tensor_is_contiguous(const df_tensor *t);
bool df_tensor_same_shape(const df_tensor *a, const df_tensor *b);
/* True when two dims of t address the same element (an expanded tensor). */
bool df_tensor_has_overlap(const df_tensor *t);

/* Checks a shape (0 <= ndim <= DF_MAX_DIMS, sizes >= 0, byte count fits)
 * and stores the element count in *numel. `op` names the caller in errors. */
df_status df_check_shape(const char *op, int ndim, const int64_t *size, int64_t *numel);

/* New contiguous tensors. */
df_status df_tensor_empty(df_tensor **out, int ndim, const int64_t *size);
df_status df_tensor_zeros(df_tensor **out, int ndim, const int64_t *size);
df_status df_tensor_full(df_tensor **out, int ndim, const int64_t *size, float value);
df_status df_arange(df_tensor **out, double start, double end, double step);
df_status df_linspace(df_tensor **out, double start, double end, int64_t n);
df_status df_eye(df_tensor **out, int64_t n, int64_t m);

/* Views: share storage with t. A size of -1 in view/reshape is inferred. */
df_status df_tensor_view(df_tensor **out, const df_tensor *t, int ndim, const int64_t *size);
df_status df_tensor_reshape(df_tensor **out, const df_tensor *t, int ndim, const int64_t *size); /* copies if it must */
df_status df_tensor_transpose(df_tensor **out, const df_tensor *t, int d0, int d1);
df_status df_tensor_permute(df_tensor **out, const df_tensor *t, const int *perm);
df_status df_tensor_narrow(df_tensor **out, const df_tensor *t, int dim, int64_t start, int64_t length);
df_status df_tensor_slice(df_tensor **out, const df_tensor *t, int dim, int64_t start, int64_t stop, int64_t step);
df_status df_tensor_select(df_tensor **out, const df_tensor *t, int dim, int64_t index);
df_status df_tensor_squeeze(df_tensor **out, const df_tensor *t, int dim); /* dim < 0: all size-1 dims */
df_status df_tensor_unsqueeze(df_tensor **out, const df_tensor *t, int dim);
df_status df_tensor_expand(df_tensor **out, const df_tensor *t, int ndim, const int64_t *size);
/* t itself (retained) when already contiguous, else a contiguous copy. */
df_status df_tensor_contiguous(df_tensor **out, const df_tensor *t);

/* Marks an in-place write of t's storage (for autograd's saved-tensor check). */
static inline void df_tensor_bump_version(df_tensor *t) { t->storage->version++; }
/* Fails when t can't be written in place: it requires grad (in grad mode)
 * or is expanded (several positions share one element). */
df_status df_check_inplace(const char *op, const df_tensor *t);
/* A new header over t's storage and geometry, without autograd links. */
df_status df_tensor_alias(df_tensor **out, const df_tensor *t);

/* Copies src into dst, broadcasting src to dst's shape. */
df_status df_tensor_copy_(df_tensor *dst, const df_tensor *src);
df_status df_tensor_fill_(df_tensor *t, float value);
df_status df_tensor_clone(df_tensor **out, const df_tensor *t);
df_status df_tensor_get(const df_tensor *t, const int64_t *index, float *value);
df_status df_tensor_set(df_tensor *t, const int64_t *index, float value);

df_status df_cat(df_tensor **out, int n, const df_tensor *const *ts, int dim);
df_status df_stack(df_tensor **out, int n, const df_tensor *const *ts, int dim);

/* Broadcast shape of a and b (NumPy rules) into out_size/out_ndim. */
df_status df_broadcast_shape(const char *op, int na, const int64_t *sa, int nb, const int64_t *sb,
                             int *out_ndim, int64_t *out_size);

/* ---- elementwise (ops/elementwise.c) ------------------------------------ */

typedef enum {
  DF_NEG, DF_ABS, DF_EXP, DF_LOG, DF_SQRT, DF_RSQRT, DF_SIN, DF_COS,
  DF_TANH, DF_SIGMOID, DF_RELU, DF_SILU, DF_GELU,
  DF_UNARY_COUNT
} df_unary_op;

typedef enum {
  DF_ADD, DF_SUB, DF_MUL, DF_DIV, DF_POW, DF_MAXIMUM, DF_MINIMUM,
  DF_EQ, DF_NE, DF_LT, DF_LE, DF_GT, DF_GE,
  DF_BINARY_COUNT
} df_binary_op;

extern const char *const df_unary_names[DF_UNARY_COUNT];
extern const char *const df_binary_names[DF_BINARY_COUNT];

df_status df_unary(df_unary_op op, df_tensor **out, const df_tensor *a);
df_status df_unary_(df_unary_op op, df_tensor *a);
df_status df_binary(df_binary_op op, df_tensor **out, const df_tensor *a, const df_tensor *b);
/* a op= b, with b broadcast to a's shape. */
df_status df_binary_(df_binary_op op, df_tensor *a, const df_tensor *b);
/* a op s, or s op a when scalar_first. */
df_status df_binary_scalar(df_binary_op op, df_tensor **out, const df_tensor *a, float s, bool scalar_first);
df_status df_binary_scalar_(df_binary_op op, df_tensor *a, float s);
/* Bounds may be -INFINITY / INFINITY for "none". */
df_status df_clamp(df_tensor **out, const df_tensor *a, float lo, float hi);
df_status df_clamp_(df_tensor *a, float lo, float hi);
/* cond != 0 ? a : b, all three broadcast together. */
df_status df_where(df_tensor **out, const df_tensor *cond, const df_tensor *a, const df_tensor *b);

/* ---- reductions (ops/reduce.c) ------------------------------------------ */

typedef enum { DF_SUM, DF_MEAN, DF_VAR, DF_STD, DF_MAX, DF_MIN, DF_REDUCE_COUNT } df_reduce_op;
extern const char *const df_reduce_names[DF_REDUCE_COUNT];

/* Reduces over `dims` (ndims of them; ndims == 0 means all). `correction`
 * is the variance's divisor offset (1: unbiased, 0: population). Sums are
 * accumulated in double over a fixed split, so results don't depend on the
 * thread count. */
df_status df_reduce(df_reduce_op op, df_tensor **out, const df_tensor *a, int ndims, const int *dims,
                    bool keepdim, int correction);
/* Max or min (op is DF_MAX or DF_MIN) along one dim, with the positions
 * (plus index_base) as floats. dim < 0: over all elements, flattened.
 * Either output may be NULL. The first of equal extremes wins; NaN wins. */
df_status df_argreduce(df_reduce_op op, df_tensor **values, df_tensor **indices, const df_tensor *a,
                       int dim, bool keepdim, int index_base);

/* ---- matrix products (ops/gemm.c, ops/matmul.c) -------------------------- */

/* C (m x n) = alpha op(A) op(B) + beta C, row-major, op = transpose when ta/tb.
 * Single-threaded BLAS on blocks cut by shape only and run on the pool, so
 * the result doesn't depend on the thread count. */
void df_gemm(bool ta, bool tb, int64_t m, int64_t n, int64_t k, float alpha, const float *A, int64_t lda, const float *B,
             int64_t ldb, float beta, float *C, int64_t ldc);


/* (..., n, k) x (..., k, m) -> (..., n, m); batch dims broadcast. */
df_status df_matmul(df_tensor **out, const df_tensor *a, const df_tensor *b);
/* GFLOP/s of cblas_sgemm on n x n matrices with no tensor machinery, for
 * comparing against df_matmul in benchmarks. */
double df_bench_raw_sgemm(int n, int reps);
const char *df_blas_info(void);

/* ---- random numbers (core/rng.c) ---------------------------------------- */

/* Philox4x32-10: element i of a request draws from counter block
 * (offset + i / 4), so the numbers depend only on (seed, offset), never on
 * the thread count or how the work is split. */
typedef struct df_generator {
  uint64_t seed;
  uint64_t offset; /* next unused counter block */
} df_generator;

df_generator *df_default_generator(void);
void df_generator_seed(df_generator *g, uint64_t seed);
/* Uniform in [lo, hi), normal(mean, std), integers in [lo, hi). */
df_status df_rand_(df_tensor *t, df_generator *g, float lo, float hi);
df_status df_randn_(df_tensor *t, df_generator *g, float mean, float std);
df_status df_randint_(df_tensor *t, df_generator *g, int64_t lo, int64_t hi);
/* Elements first .. first + count - 1 of a uniform [0, 1) draw made at
 * (seed, offset): bitwise what df_rand_(t, g, 0, 1) puts there, for ops that
 * use the numbers as they go (dropout) rather than keeping them. */
void df_uniform_at(float *dst, int64_t first, int64_t count, uint64_t seed, uint64_t offset);

/* ---- indexing and files (ops/index.c, io/idx.c) ------------------------- */

/* Slices of x along dim at the given positions: a 1-d tensor of integers
 * counted from index_base (0 in C, 1 from Lua). */
df_status df_index_select(df_tensor **out, const df_tensor *x, int dim, const df_tensor *index, int index_base);
/* An IDX file (MNIST format, unsigned bytes), gzipped or not, as floats 0..255. */
df_status df_idx_load(df_tensor **out, const char *path);

/* ---- neural-network ops (ops/nn.c, ops/conv.c, ops/loss.c, ops/optim.c) --
 * Each records its node for autograd like the ops above. Class indices and
 * embedding indices are 0-based floats here (the binding takes 1-based). */

/* x (..., in), w (out, in), b (out) or NULL -> (..., out) */
df_status df_linear(df_tensor **out, const df_tensor *x, const df_tensor *w, const df_tensor *b);

typedef struct {
  int stride[2], padding[2], dilation[2]; /* (h, w) */
  int groups;
} df_conv2d_params;
/* x (N, C, H, W), w (O, C / groups, kh, kw), b (O) or NULL -> (N, O, H', W') */
df_status df_conv2d(df_tensor **out, const df_tensor *x, const df_tensor *w, const df_tensor *b,
                    const df_conv2d_params *p);
/* x (N, C, H, W); kernel, stride, padding as (h, w); padded cells count as zeros
 * in the average (count_include_pad, PyTorch's default) */
df_status df_avg_pool2d(df_tensor **out, const df_tensor *x, const int kernel[2], const int stride[2],
                        const int padding[2]);
/* x (N, C, H, W) -> (N, C, H * scale[0], W * scale[1]) */
df_status df_upsample_nearest2d(df_tensor **out, const df_tensor *x, const int scale[2]);

/* x (N, C, ...) normalised over each of `groups` channel groups; w, b (C) or NULL */
df_status df_group_norm(df_tensor **out, const df_tensor *x, int groups, const df_tensor *w, const df_tensor *b,
                        float eps);
/* silu(group_norm(x)) in one pass, bitwise the pair's result; it keeps
 * only x, b and the per-group statistics for backward (which recomputes the
 * rest), not the pair's two full-size tensors. Arguments as group_norm. */
df_status df_group_norm_silu(df_tensor **out, const df_tensor *x, int groups, const df_tensor *w, const df_tensor *b,
                             float eps);
/* x normalised over its last `nlast` dims; w, b of those dims' shape or NULL */
df_status df_layer_norm(df_tensor **out, const df_tensor *x, int nlast, const df_tensor *w, const df_tensor *b,
                        float eps);
df_status df_softmax(df_tensor **out, const df_tensor *x, int dim);
df_status df_log_softmax(df_tensor **out, const df_tensor *x, int dim);
/* q (B, H, Nq, d), k (B, H, Nk, d), v (B, H, Nk, dv) -> (B, H, Nq, dv);
 * mask broadcastable to (B, H, Nq, Nk), nonzero = may attend, or NULL;
 * scale <= 0 means 1 / sqrt(d). */
df_status df_scaled_dot_product_attention(df_tensor **out, const df_tensor *q, const df_tensor *k, const df_tensor *v,
                                          const df_tensor *mask, float scale);
/* zeroes elements with probability p and scales the rest by 1 / (1 - p); identity when !train.
 * g NULL: the default generator. Backward redraws the mask from g's (seed, offset) as they were,
 * so no mask is kept. */
df_status df_dropout(df_tensor **out, const df_tensor *x, float p, bool train, df_generator *g);
/* indices (any shape, 0-based integer values), weight (num, dim) -> (..., dim) */
df_status df_embedding(df_tensor **out, const df_tensor *indices, const df_tensor *weight);
/* t (N) -> (N, dim): [sin(t f_0) .. sin(t f_{h-1}), cos(t f_0) .. cos(t f_{h-1})],
 * f_i = max_period^(-i / h), h = dim / 2 (a zero column pads an odd dim). No gradient. */
df_status df_timestep_embedding(df_tensor **out, const df_tensor *t, int dim, float max_period);

/* Losses, averaged to a 0-d tensor. */
/* mean((pred - target)^2); weight (N) or NULL weighs each sample (dim 1) */
df_status df_mse_loss(df_tensor **out, const df_tensor *pred, const df_tensor *target, const df_tensor *weight);
df_status df_l1_loss(df_tensor **out, const df_tensor *pred, const df_tensor *target);
df_status df_bce_with_logits(df_tensor **out, const df_tensor *logits, const df_tensor *target);
/* logits (N, C), target (N) of class indices in [0, C) */
df_status df_cross_entropy(df_tensor **out, const df_tensor *logits, const df_tensor *target, float label_smoothing);

/* Optimizer updates, in place on parameters (no autograd; bump versions). */
/* buf may be NULL when momentum == 0; first: buf is initialised from the gradient */
df_status df_sgd_step(df_tensor *param, const df_tensor *grad, df_tensor *buf, float lr, float momentum,
                      float dampening, float weight_decay, bool nesterov, bool first);
/* step counts from 1; decoupled: AdamW's weight decay, else Adam's L2 */
df_status df_adam_step(df_tensor *param, const df_tensor *grad, df_tensor *m, df_tensor *v, int64_t step, float lr,
                       float beta1, float beta2, float eps, float weight_decay, bool decoupled);
/* a += w * (b - a): EMA updates */
df_status df_lerp_(df_tensor *a, const df_tensor *b, float w);

/* ---- safetensors checkpoints (io/safetensors.c) ------------------------- */
/* File layout: an 8-byte little-endian header length N, N bytes of JSON
 * {"__metadata__": {string: string}, "name": {"dtype": "F32", "shape": [..],
 * "data_offsets": [begin, end]}, ...}, then the raw little-endian data
 * (offsets count from the byte after the header). */
#define DF_SAFETENSORS_MAX_HEADER 100000000 /* bytes (100 MB), as the reference reader */

/* A loaded checkpoint: the tensors in file (offset) order with their names,
 * and the metadata pairs in header order. Everything is owned by the struct
 * (df_safetensors_free); a caller may take a tensor over by setting its
 * slot to NULL. */
typedef struct df_safetensors {
  int64_t ntensors;
  char **names;
  df_tensor **tensors;
  int64_t nmeta;
  char **meta_keys, **meta_values;
} df_safetensors;

/* Writes n named tensors (any layout, expanded or strided; stored as F32)
 * and nmeta metadata pairs (arrays may be NULL when their count is 0) to
 * path. Tensors and metadata go in name order and the header is padded
 * with spaces to a multiple of 8, so the same input makes the same bytes.
 * Names: non-empty, unique, valid UTF-8, not "__metadata__"; metadata keys
 * unique and valid UTF-8. Atomic: a temporary file in path's directory is
 * written, fflushed and fsynced, then renamed over path (a symlink at path
 * is replaced, not followed), then the directory is fsynced (best effort).
 * On failure the temporary file is removed and an old file at path is left
 * untouched. DF_EINVAL for bad arguments (no file touched), DF_EIO when the
 * file system fails, DF_ENOMEM. */
df_status df_safetensors_save(const char *path, int64_t n, const char *const *names, const df_tensor *const *tensors,
                              int64_t nmeta, const char *const *meta_keys, const char *const *meta_values);
/* Reads path: F32, F16 and BF16 become float32 tensors; any other dtype
 * fails naming it. The file is checked before anything is allocated from
 * it: strict JSON (a failure names the header byte), header <= 100 MB and
 * inside the file, names non-empty and unique, shapes of <= DF_MAX_DIMS
 * non-negative sizes, every byte range inside the data area and exactly
 * dtype size x numel long, and the ranges tiling the data area in order
 * without gap or overlap. Unknown keys inside a tensor's entry are ignored
 * (as the reference reader does). DF_EIO for a file that can't be opened or
 * is malformed, the message naming path and the problem. */
df_status df_safetensors_load(df_safetensors **out, const char *path);
void df_safetensors_free(df_safetensors *ck); /* NULL is fine */

/* ---- images (io/image.c) ------------------------------------------------ */
/* Images are (C, H, W) float tensors, C = 1 (gray) or 3 (RGB). Byte values
 * 0..255 map linearly to [lo, hi]: lo = 0, hi = 255 keeps the bytes as they
 * are; lo = -1, hi = 1 is a model's range. */

/* Default cap on width * height * channels of a decoded image (64 Mi values). */
#define DF_IMAGE_MAX_VALUES ((int64_t)64 << 20)

/* Decodes a PNG, JPEG, BMP, GIF (first frame) or PNM (P5/P6) file
 * with stb_image, recognised by its first bytes (other files are refused).
 * channels: 1 or 3 converts to that; 0 keeps a gray file gray and makes
 * any other RGB (alpha is dropped, not composited).
 * max_values (0: DF_IMAGE_MAX_VALUES) caps width * height * channels, checked
 * from the header before anything is decoded. Needs lo < hi. */
df_status df_image_load(df_tensor **out, const char *path, int channels, int64_t max_values, float lo, float hi);
/* Writes x (C, H, W) with C = 1 or 3, or (H, W), as an 8-bit PNG: values map
 * from [lo, hi] to 0..255, rounded half up and clamped (NaN -> 0). Atomic: a
 * temporary file next to path is written, fsynced and renamed over path;
 * on failure it is removed and an existing file at path is left as it was.
 * DF_EIO for filesystem failures, DF_EINVAL for a bad tensor or range. */
df_status df_image_save_png(const df_tensor *x, const char *path, float lo, float hi);
/* Resizes the last two dims of x (..., H, W) to (..., h, w), each axis on
 * its own: a box filter with fractional coverage where it shrinks (area
 * averaging), bilinear with half-pixel centres where it grows or keeps its
 * size. Weights sum to 1, so a constant image stays constant. No gradient. */
df_status df_image_resize(df_tensor **out, const df_tensor *x, int64_t h, int64_t w);

/* ---- chart drawing (io/plot.c) ----------------------------------------- */
/* Anti-aliased drawing for lua/diffusion/plot.lua. The canvas is a
 * contiguous (3, H, W) float tensor of 0..255 RGB values, changed in place
 * (no autograd); coordinates are pixels, x rightwards, y downwards. Colours
 * are 0..255. */
df_status df_plot_fill_rect(df_tensor *canvas, double x0, double y0, double x1, double y1, const float rgb[3]);
/* The n points joined by a line of `width` pixels (0: none; dashes `dash`
 * pixels long when dash > 0) with a disc of `radius` at each point (0: none);
 * a non-finite point breaks the line. Only pixels inside clip {x0, y0, x1, y1}
 * change. */
df_status df_plot_polyline(df_tensor *canvas, int64_t n, const double *x, const double *y, double width, double radius,
                           double dash, const float rgb[3], const double clip[4]);
/* stb_easy_font text, 12 * scale pixels a line; (x, y) is the top-left
 * corner, or with vertical (read bottom to top) the bottom-left one. Bytes
 * outside printable ASCII are drawn as '?'. */
df_status df_plot_text(df_tensor *canvas, const char *text, double x, double y, double scale, bool vertical, const float rgb[3]);
df_status df_plot_text_size(const char *text, double scale, double *w, double *h);

/* ---- noise schedules and sampler steps (diffusion/schedule.c) --------- */
/* A schedule is defined by its betas, or by alpha_bar (the kinds below); the
 * named kinds compute them in double from their parameters:
 *   linear        {beta_start, beta_end}: betas = linspace(beta_start, beta_end, T)
 *   scaled_linear {beta_start, beta_end}: betas = linspace(sqrt(beta_start), sqrt(beta_end), T)^2
 *   cosine        {s, max_beta}: betas = min(1 - f(t / T) / f((t - 1) / T), max_beta),
 *                 f(u) = cos^2((u + s) / (1 + s) pi / 2)      (Nichol & Dhariwal 2021)
 *   sigmoid       {start, stop, tau}: alpha_bar = (v(1) - v(t / T)) / (v(1) - v(0)) clipped
 *                 into [1e-9, 1], v(u) = sigmoid((u (stop - start) + start) / tau)  (Chen 2023)
 *   betas, alpha_bar: the T values themselves.
 * Timestep t = 1..T (1 the least noisy) lives at [t - 1]; alpha_bar_0 = 1. The
 * values are validated: betas in (0, 1], alpha_bar in (0, 1] and strictly
 * decreasing from alpha_bar_0, no NaN; only alpha_bar_T may be 0 (zero
 * terminal SNR: beta_T = 1, log_snr_T = -inf, sigma_T = inf). */
typedef enum {
  DF_SCHEDULE_LINEAR, DF_SCHEDULE_SCALED_LINEAR, DF_SCHEDULE_COSINE, DF_SCHEDULE_SIGMOID,
  DF_SCHEDULE_BETAS, DF_SCHEDULE_ALPHA_BAR,
  DF_SCHEDULE_KIND_COUNT
} df_schedule_kind;
extern const char *const df_schedule_kind_names[DF_SCHEDULE_KIND_COUNT];

/* The tables derived from a schedule, each (T), computed in double:
 * alpha_bar_prev = alpha_bar_{t-1}; snr = ab / (1 - ab); sigma = sqrt((1 - ab) / ab);
 * posterior_variance = (1 - ab_prev) / (1 - ab) beta (0 at t = 1);
 * posterior mean = coef1 x0 + coef2 x_t, coef1 = beta sqrt(ab_prev) / (1 - ab),
 * coef2 = (1 - ab_prev) sqrt(alpha) / (1 - ab). */
typedef enum {
  DF_SCHED_BETAS, DF_SCHED_ALPHAS, DF_SCHED_ALPHA_BAR, DF_SCHED_ALPHA_BAR_PREV, DF_SCHED_SQRT_ALPHA_BAR,
  DF_SCHED_SQRT_ONE_MINUS_ALPHA_BAR, DF_SCHED_SNR, DF_SCHED_LOG_SNR, DF_SCHED_SIGMA, DF_SCHED_POSTERIOR_VARIANCE,
  DF_SCHED_POSTERIOR_MEAN_COEF1, DF_SCHED_POSTERIOR_MEAN_COEF2,
  DF_SCHED_TABLE_COUNT
} df_schedule_table;
extern const char *const df_schedule_table_names[DF_SCHED_TABLE_COUNT];

typedef struct df_schedule {
  int64_t T;
  double *betas;     /* (T), owned: one df_malloc block with alpha_bar */
  double *alpha_bar; /* (T) */
} df_schedule;

/* Builds s (betas and alpha_bar) from a kind and its nparams parameters (T of
 * them for DF_SCHEDULE_BETAS / DF_SCHEDULE_ALPHA_BAR); `op` names the caller
 * in errors. On failure s holds nothing. */
df_status df_schedule_init(df_schedule *s, df_schedule_kind kind, int64_t T, const double *params, int64_t nparams,
                           const char *op);
void df_schedule_free(df_schedule *s); /* idempotent */
/* The value of table `which` at t = 1..T (in double). */
double df_schedule_value(const df_schedule *s, df_schedule_table which, int64_t t);
/* The whole table as a (T) float tensor. */
df_status df_schedule_tensor(df_tensor **out, const df_schedule *s, df_schedule_table which);
/* table (T), t (N) timesteps counted from base (1 from Lua) -> (N) table[t[n] - base];
 * the timesteps must be integers in [base, T - 1 + base]. No gradient. */
df_status df_schedule_gather(df_tensor **out, const df_tensor *table, const df_tensor *t, int base, const char *op);
/* x, y (N, ...) of one shape; a, b (N) or one element -> out[n, ...] = a[n] x[n, ...] + b[n] y[n, ...]:
 * q_sample, posterior means, v targets. b and y may be NULL (out = a x). Records
 * autograd for x and y, not for the coefficients. */
df_status df_schedule_combine(df_tensor **out, const df_tensor *a, const df_tensor *x, const df_tensor *b,
                              const df_tensor *y, const char *op);
/* Sampler steps from timestep t to an earlier one (0 <= alpha_bar_t < alpha_bar_prev <= 1),
 * for a batch that shares t. x0 is the (clipped) predicted x0; xt, x0 and noise
 * have one shape; noise may be NULL (no noise term: the last step, eta = 0).
 * DDPM ancestral (Ho et al. 2020), beta = 1 - ab_t / ab_prev:
 *   x_prev = coef1 x0 + coef2 x_t + sigma z, sigma^2 = beta_tilde or beta.
 * DDIM (Song et al. 2020): sigma = eta sqrt((1 - ab_prev) / (1 - ab_t)) sqrt(1 - ab_t / ab_prev),
 *   x_prev = sqrt(ab_prev) x0 + sqrt(1 - ab_prev - sigma^2) eps + sigma z, with
 *   eps = (x_t - sqrt(ab_t) x0) / sqrt(1 - ab_t) folded into the coefficients.
 * No gradient (samplers run under no_grad). */
df_status df_ddpm_step(df_tensor **out, const df_tensor *xt, const df_tensor *x0, const df_tensor *noise,
                       double alpha_bar_t, double alpha_bar_prev, bool beta_tilde);
df_status df_ddim_step(df_tensor **out, const df_tensor *xt, const df_tensor *x0, const df_tensor *noise,
                       double alpha_bar_t, double alpha_bar_prev, double eta);

/* ---- the U-Net (models/unet.c) ------------------------------------------ */

#define DF_UNET_MAX_LEVELS 8

typedef struct {
  int in_channels, out_channels;
  int channels;                    /* C: the first level's width */
  int nmult, mult[DF_UNET_MAX_LEVELS]; /* level widths C * mult[i]; resolution halves per level */
  int res_blocks;                  /* ResBlocks per level going down (one more going up) */
  int nattn, attn_res[DF_UNET_MAX_LEVELS]; /* resolutions with self-attention */
  int heads, groups;               /* attention heads, GroupNorm groups */
  float dropout;
  int num_classes;                 /* 0: unconditional; else labels 0..num_classes, the last one "null" */
  int image_size;                  /* the training resolution (attention resolutions refer to it) */
} df_unet_config;

typedef struct df_unet df_unet;

/* Builds a U-Net with PyTorch's default initialisation from gen. */
df_status df_unet_new(df_unet **out, const df_unet_config *cfg, df_generator *gen);
void df_unet_free(df_unet *net);
const df_unet_config *df_unet_get_config(const df_unet *net);
/* Parameters in a stable order, named like the reference's state_dict keys;
 * the tensors are owned by the net (retain to keep one). */
int df_unet_num_params(const df_unet *net);
const char *df_unet_param_name(const df_unet *net, int i);
df_tensor *df_unet_param(const df_unet *net, int i);
/* x (N, in, H, W), t (N) timesteps, y (N) 0-based labels or NULL -> (N, out, H, W) */
df_status df_unet_forward(df_tensor **out, const df_unet *net, const df_tensor *x, const df_tensor *t, const df_tensor *y,
                          bool train, df_generator *gen);

/* ---- autograd (autograd/engine.c) --------------------------------------
 *
 * An op whose input requires grad (while grad mode is on) records a node on
 * its result: the backward function, edges to the inputs (their nodes, or the
 * leaf tensors themselves) and what it saved. Nodes are refcounted and hang
 * off the tensors, so dropping the result frees the graph and the
 * activations it kept. df_backward walks the graph in reverse topological
 * order; gradients that come back in a broadcast shape are summed down to
 * the input's shape there, once, so ops never undo broadcasting themselves.
 */

#define DF_NODE_MAX_SAVED 6

/* grad_in has one slot per input, NULL on entry; fill the slots that
 * df_node_needs_grad reports (new references, any broadcast-compatible shape). */
typedef df_status (*df_backward_fn)(df_node *node, const df_tensor *grad_out, df_tensor **grad_in);

typedef struct df_edge {
  df_node *node;   /* the input's grad_fn (retained), or NULL */
  df_tensor *leaf; /* the input itself when it is a leaf needing grad (retained), or NULL */
  int ndim;        /* the input's shape, to sum broadcast gradients down to */
  int64_t size[DF_MAX_DIMS];
} df_edge;

struct df_node {
  int refcount;
  const char *name; /* the op, for errors */
  df_backward_fn backward;
  int ninputs;
  df_edge *inputs;
  df_tensor *saved[DF_NODE_MAX_SAVED]; /* aliases without autograd links */
  uint64_t saved_version[DF_NODE_MAX_SAVED];
  double scalar[4]; /* op parameters */
  int64_t iarg[2 * DF_MAX_DIMS];
  void *extra; /* op-owned data, freed with df_free */
  /* Recomputation instead of keeping a result: an op that can run its
   * forward again from what it saved sets forward_again; a consumer that
   * would save that result marks the slot with the input's index + 1 in
   * recompute and leaves saved[slot] empty (df_node_save_input). */
  df_status (*forward_again)(df_node *self, df_tensor **out);
  signed char recompute[DF_NODE_MAX_SAVED];
  uint64_t result_version; /* its result's storage version when recorded: changed since, no recomputing */
  /* during backward */
  df_tensor *pending;
  int dependencies;
  uint64_t visit_mark;
  bool released; /* its saved tensors were freed by a backward */
  df_node *next_free; /* intrusive stack for releasing long chains */
};

bool df_grad_enabled(void);
bool df_set_grad_enabled(bool on); /* returns the previous mode */
/* True when grad mode is on and t requires grad. */
bool df_needs_grad(const df_tensor *t);
bool df_any_needs_grad(int n, const df_tensor *const *ts);
/* Makes `out` the result of a new node when an input needs grad; *node is
 * the node (borrowed: out owns it) or NULL when nothing needs recording. On
 * failure the caller releases out. */
df_status df_autograd_record(df_tensor *out, const char *name, df_backward_fn backward, int ninputs,
                             const df_tensor *const *inputs, df_node **node);
df_status df_node_save(df_node *node, int slot, const df_tensor *t);
/* Saves input `input` in `slot` — or, when that input is the fresh result
 * of an op with forward_again (group_norm_silu, say), only a note to
 * recompute it in backward: a conv2d after a fused GroupNorm+SiLU then
 * keeps no copy of its input. */
df_status df_node_save_input(df_node *node, int slot, int input, const df_tensor *t);
/* The tensor in `slot` (a new reference): the saved one, or recomputed by
 * its producer (whose own saved tensors are checked first). */
df_status df_node_saved(df_node *node, int slot, df_tensor **out);
/* producer->forward_again, its saved tensors checked, with grad mode off */
df_status df_node_forward_again(df_node *producer, df_tensor **out);
bool df_node_needs_grad(const df_node *node, int input);
void df_node_retain(df_node *node);
void df_node_release(df_node *node);
/* Backpropagates from root: grad (NULL means 1 for a one-element root).
 * Without retain_graph, the saved tensors are freed as the walk goes. */
df_status df_backward(df_tensor *root, const df_tensor *grad, bool retain_graph);
/* A new tensor sharing t's storage, cut from the graph. */
df_status df_detach(df_tensor **out, const df_tensor *t);
df_status df_set_requires_grad(df_tensor *t, bool on);
/* Sums g over the dims that broadcasting added or expanded, to shape size. */
df_status df_sum_to_shape(df_tensor **out, const df_tensor *g, int ndim, const int64_t *size);
/* Test hook: scales the gradient computed by the named op's backward by
 * factor (1 restores it), so tests can prove the gradient checker catches
 * a wrong backward. NULL name turns it off. */
void df_debug_corrupt_backward(const char *name, float factor);
/* Test hook: on = false makes conv2d take im2col + GEMM everywhere, so tests
 * can compare the direct kernels (ops/conv_direct.c) against it; returns
 * whether the direct kernels can run on this CPU at all. */
bool df_debug_conv_direct(bool on);
/* Test hook: on = false sends 3x3 convolutions the Winograd kernel would
 * take to the direct one instead; returns whether the CPU can run it. */
bool df_debug_conv_winograd(bool on);

#endif
