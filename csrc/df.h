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
 * fresh pages cost a page fault each. *capacity receives the usable size. */
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

/* ---- threads (core/threads.c) ------------------------------------------- */

/* Sets the library's thread count and OpenBLAS's to the same n (n >= 1). */
df_status df_set_num_threads(int n);
int df_get_num_threads(void);
/* Runs fn(task, ctx) for task in [0, ntasks) on the pool; the caller joins
 * in. What a task computes must depend only on its index, never on which
 * thread ran it. A nested call runs inline. */
void df_parallel_for(int64_t ntasks, void (*fn)(int64_t task, void *ctx), void *ctx);

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

/* ---- matmul (ops/matmul.c) ---------------------------------------------- */

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
/* zeroes elements with probability p and scales the rest by 1 / (1 - p); identity when !train */
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
/* SAFETENSORS-PROTOTYPES */

/* ---- images (io/image.c) ------------------------------------------------ */
/* IMAGE-PROTOTYPES */

/* ---- noise schedules and sampler steps (diffusion/schedule.c, diffusion/sampler.c) */
/* SCHEDULE-PROTOTYPES */

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

#endif
