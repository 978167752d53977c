/* unet.c — the denoising U-Net, assembled from the library's own ops.
 *
 * The architecture of DDPM / ADM (and of ../shared/bench/torch_unet.py):
 *   temb   = SiLU(Linear(SiLU(Linear(sinusoid(t, C))))  [+ class embedding before the last SiLU]
 *   h      = conv_in(x); every down block's output is pushed as a skip
 *   down   : per level, res_blocks ResBlocks (+ self-attention at the chosen
 *            resolutions), then a stride-2 3x3 conv between levels
 *   middle : ResBlock, attention, ResBlock
 *   up     : per level, res_blocks + 1 ResBlocks on cat(h, skip) (+ attention),
 *            then nearest 2x upsampling and a 3x3 conv between levels
 *   out    = conv_out(SiLU(GroupNorm(h)))
 *   ResBlock(x) = skip(x) + conv2(Dropout(SiLU(GN2(conv1(SiLU(GN1(x))) + Linear(temb)))))
 *   Attention(x) = x + proj(attention over the H*W positions of qkv(GN(x)))
 * Every op records its autograd node as usual, so backward needs nothing
 * here. Parameters are named like PyTorch's state_dict keys of the reference
 * ("down.0.0.conv1.weight"), so checkpoints map one to one. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../df.h"

typedef struct {
  df_tensor *w, *b;
} affine_t; /* a conv, linear or norm layer's weight and bias */

typedef struct {
  int cin, cout;
  affine_t norm1, conv1, temb, norm2, conv2, skip; /* skip.w NULL when cin == cout */
} resblock_t;

typedef struct {
  affine_t norm, qkv, proj;
} attention_t;

enum { BLOCK_RES, BLOCK_DOWN, BLOCK_UP };

typedef struct {
  int kind;
  resblock_t res;
  bool has_attention;
  attention_t attention;
  affine_t conv; /* BLOCK_DOWN / BLOCK_UP */
} block_t;

#define MAX_BLOCKS 64

struct df_unet {
  df_unet_config cfg;
  int nparams, cap;
  char **names;
  df_tensor **params;
  affine_t temb0, temb1, conv_in, norm_out, conv_out;
  df_tensor *class_emb; /* (num_classes + 1, 4C) or NULL */
  int ndown, nup;
  block_t down[MAX_BLOCKS], up[MAX_BLOCKS];
  resblock_t mid1, mid2;
  attention_t mid_attention;
};

/* ---- building: parameters with PyTorch's default initialisation ---------- */

typedef struct {
  df_unet *net;
  df_generator *gen;
  df_status st;
} builder;

/* A new parameter named prefix + name, uniform(-bound, bound) or constant. */
static df_tensor *param(builder *b, const char *prefix, const char *name, int ndim, const int64_t *size, float bound,
                        float constant) {
  if (b->st) return NULL;
  df_unet *net = b->net;
  if (net->nparams == net->cap) {
    int cap = net->cap ? 2 * net->cap : 64;
    char **names = df_malloc(sizeof *names * (size_t)cap);
    df_tensor **params = df_malloc(sizeof *params * (size_t)cap);
    if (!names || !params) {
      df_free(names);
      df_free(params);
      b->st = df_error(DF_ENOMEM, "UNet: out of memory");
      return NULL;
    }
    if (net->nparams) {
      memcpy(names, net->names, sizeof *names * (size_t)net->nparams);
      memcpy(params, net->params, sizeof *params * (size_t)net->nparams);
    }
    df_free(net->names);
    df_free(net->params);
    net->names = names;
    net->params = params;
    net->cap = cap;
  }
  size_t len = strlen(prefix) + strlen(name) + 1;
  char *full = df_malloc(len);
  df_tensor *t = NULL;
  if (!full) {
    b->st = df_error(DF_ENOMEM, "UNet: out of memory");
    return NULL;
  }
  snprintf(full, len, "%s%s", prefix, name);
  if ((b->st = df_tensor_empty(&t, ndim, size)) ||
      (b->st = bound > 0 ? df_rand_(t, b->gen, -bound, bound) : df_tensor_fill_(t, constant))) {
    df_free(full);
    df_tensor_release(t);
    return NULL;
  }
  t->requires_grad = true;
  net->names[net->nparams] = full;
  net->params[net->nparams] = t;
  net->nparams++;
  return t;
}

/* conv: (cout, cin, k, k) weights and a bias, bound 1/sqrt(fan_in) */
static affine_t conv(builder *b, const char *prefix, int cin, int cout, int k) {
  char p[160]; /* room for a 128-byte prefix and the dot */
  snprintf(p, sizeof p, "%s.", prefix);
  int64_t ws[4] = {cout, cin, k, k}, bs[1] = {cout};
  float bound = 1.0f / sqrtf((float)(cin * k * k));
  affine_t a = {param(b, p, "weight", 4, ws, bound, 0), param(b, p, "bias", 1, bs, bound, 0)};
  return a;
}

static affine_t linear(builder *b, const char *prefix, int cin, int cout) {
  char p[160]; /* room for a 128-byte prefix and the dot */
  snprintf(p, sizeof p, "%s.", prefix);
  int64_t ws[2] = {cout, cin}, bs[1] = {cout};
  float bound = 1.0f / sqrtf((float)cin);
  affine_t a = {param(b, p, "weight", 2, ws, bound, 0), param(b, p, "bias", 1, bs, bound, 0)};
  return a;
}

static affine_t norm(builder *b, const char *prefix, int ch) {
  char p[160]; /* room for a 128-byte prefix and the dot */
  snprintf(p, sizeof p, "%s.", prefix);
  int64_t s[1] = {ch};
  affine_t a = {param(b, p, "weight", 1, s, 0, 1.0f), param(b, p, "bias", 1, s, 0, 0.0f)};
  return a;
}

static resblock_t resblock(builder *b, const char *prefix, int cin, int cout, int temb_ch) {
  char p[128];
  resblock_t r = {.cin = cin, .cout = cout};
#define SUB(name) (snprintf(p, sizeof p, "%s." name, prefix), p)
  r.norm1 = norm(b, SUB("norm1"), cin);
  r.conv1 = conv(b, SUB("conv1"), cin, cout, 3);
  r.temb = linear(b, SUB("temb_proj"), temb_ch, cout);
  r.norm2 = norm(b, SUB("norm2"), cout);
  r.conv2 = conv(b, SUB("conv2"), cout, cout, 3);
  if (cin != cout) r.skip = conv(b, SUB("skip"), cin, cout, 1);
  return r;
}

static attention_t attention(builder *b, const char *prefix, int ch) {
  char p[128];
  attention_t a;
  a.norm = norm(b, SUB("norm"), ch);
  a.qkv = conv(b, SUB("qkv"), ch, 3 * ch, 1);
  a.proj = conv(b, SUB("proj_out"), ch, ch, 1);
#undef SUB
  return a;
}

static df_status check_config(const df_unet_config *c) {
  if (c->in_channels < 1 || c->out_channels < 1 || c->channels < 1)
    return df_error(DF_EINVAL, "UNet: in_channels, out_channels and channels must be positive");
  if (c->nmult < 1 || c->nmult > DF_UNET_MAX_LEVELS)
    return df_error(DF_EINVAL, "UNet: mult must list 1 to %d levels, got %d", DF_UNET_MAX_LEVELS, c->nmult);
  if (c->res_blocks < 1 || c->res_blocks > 8) return df_error(DF_EINVAL, "UNet: res_blocks must be 1 to 8, got %d", c->res_blocks);
  if (c->groups < 1 || c->heads < 1) return df_error(DF_EINVAL, "UNet: groups and heads must be positive");
  if (c->dropout < 0 || c->dropout >= 1) return df_error(DF_EINVAL, "UNet: dropout must be in [0, 1), got %g", c->dropout);
  if (c->num_classes < 0) return df_error(DF_EINVAL, "UNet: num_classes must be >= 0, got %d", c->num_classes);
  if (c->image_size < 1 || c->image_size % (1 << (c->nmult - 1)) != 0)
    return df_error(DF_EINVAL, "UNet: image_size %d must be divisible by 2^(levels - 1) = %d", c->image_size,
                    1 << (c->nmult - 1));
  if (c->channels % 2) return df_error(DF_EINVAL, "UNet: channels must be even (for the timestep embedding), got %d", c->channels);
  for (int i = 0; i < c->nmult; i++) {
    int ch = c->channels * c->mult[i];
    if (c->mult[i] < 1) return df_error(DF_EINVAL, "UNet: mult[%d] must be positive, got %d", i + 1, c->mult[i]);
    if (ch % c->groups) return df_error(DF_EINVAL, "UNet: %d channels at level %d are not divisible by %d groups", ch, i + 1, c->groups);
    if (ch % c->heads) return df_error(DF_EINVAL, "UNet: %d channels at level %d are not divisible by %d heads", ch, i + 1, c->heads);
  }
  if (c->channels % c->groups) return df_error(DF_EINVAL, "UNet: channels %d are not divisible by %d groups", c->channels, c->groups);
  return DF_OK;
}

static bool has_attention(const df_unet_config *c, int resolution) {
  for (int i = 0; i < c->nattn; i++)
    if (c->attn_res[i] == resolution) return true;
  return false;
}

void df_unet_free(df_unet *net) {
  if (!net) return;
  for (int i = 0; i < net->nparams; i++) {
    df_free(net->names[i]);
    df_tensor_release(net->params[i]);
  }
  df_free(net->names);
  df_free(net->params);
  df_free(net);
}

df_status df_unet_new(df_unet **out, const df_unet_config *cfg, df_generator *gen) {
  df_status st = check_config(cfg);
  if (st) return st;
  df_unet *net = df_calloc(1, sizeof *net);
  if (!net) return df_error(DF_ENOMEM, "UNet: out of memory");
  net->cfg = *cfg;
  builder b = {net, gen, DF_OK};
  int C = cfg->channels, temb_ch = 4 * C;
  net->temb0 = linear(&b, "temb.0", C, temb_ch);
  net->temb1 = linear(&b, "temb.2", temb_ch, temb_ch);
  if (cfg->num_classes > 0) {
    int64_t s[2] = {cfg->num_classes + 1, temb_ch};
    net->class_emb = param(&b, "", "class_emb.weight", 2, s, 1.7320508f, 0); /* U(-√3, √3): unit variance */
  }
  net->conv_in = conv(&b, "conv_in", cfg->in_channels, C, 3);
  int skip_ch[4 * MAX_BLOCKS], nskip = 0, cur = C, res = cfg->image_size;
  skip_ch[nskip++] = C;
  char p[64];
  for (int level = 0; level < cfg->nmult; level++) {
    for (int i = 0; i < cfg->res_blocks; i++) {
      block_t *blk = &net->down[net->ndown];
      blk->kind = BLOCK_RES;
      snprintf(p, sizeof p, "down.%d.0", net->ndown);
      blk->res = resblock(&b, p, cur, C * cfg->mult[level], temb_ch);
      cur = C * cfg->mult[level];
      if ((blk->has_attention = has_attention(cfg, res))) {
        snprintf(p, sizeof p, "down.%d.1", net->ndown);
        blk->attention = attention(&b, p, cur);
      }
      net->ndown++;
      skip_ch[nskip++] = cur;
    }
    if (level != cfg->nmult - 1) {
      block_t *blk = &net->down[net->ndown];
      blk->kind = BLOCK_DOWN;
      snprintf(p, sizeof p, "down.%d.0.conv", net->ndown);
      blk->conv = conv(&b, p, cur, cur, 3);
      net->ndown++;
      skip_ch[nskip++] = cur;
      res /= 2;
    }
  }
  net->mid1 = resblock(&b, "mid1", cur, cur, temb_ch);
  net->mid_attention = attention(&b, "mid_attn", cur);
  net->mid2 = resblock(&b, "mid2", cur, cur, temb_ch);
  for (int level = cfg->nmult - 1; level >= 0; level--) {
    for (int i = 0; i < cfg->res_blocks + 1; i++) {
      block_t *blk = &net->up[net->nup];
      blk->kind = BLOCK_RES;
      snprintf(p, sizeof p, "up.%d.0", net->nup);
      blk->res = resblock(&b, p, cur + skip_ch[--nskip], C * cfg->mult[level], temb_ch);
      cur = C * cfg->mult[level];
      if ((blk->has_attention = has_attention(cfg, res))) {
        snprintf(p, sizeof p, "up.%d.1", net->nup);
        blk->attention = attention(&b, p, cur);
      }
      net->nup++;
    }
    if (level != 0) {
      block_t *blk = &net->up[net->nup];
      blk->kind = BLOCK_UP;
      snprintf(p, sizeof p, "up.%d.0.conv", net->nup);
      blk->conv = conv(&b, p, cur, cur, 3);
      net->nup++;
      res *= 2;
    }
  }
  net->norm_out = norm(&b, "norm_out", cur);
  net->conv_out = conv(&b, "conv_out", cur, cfg->out_channels, 3);
  if (b.st) {
    df_unet_free(net);
    return b.st;
  }
  *out = net;
  return DF_OK;
}

const df_unet_config *df_unet_get_config(const df_unet *net) { return &net->cfg; }
int df_unet_num_params(const df_unet *net) { return net->nparams; }
const char *df_unet_param_name(const df_unet *net, int i) { return i >= 0 && i < net->nparams ? net->names[i] : NULL; }
df_tensor *df_unet_param(const df_unet *net, int i) { return i >= 0 && i < net->nparams ? net->params[i] : NULL; }

/* ---- forward -------------------------------------------------------------
 * Each step makes a new tensor and releases what no later step reads; the
 * autograd graph keeps what backward needs. */

typedef struct {
  const df_unet *net;
  bool train;
  df_generator *gen;
  const df_tensor *temb; /* (N, 4C), after its SiLU */
} ctx_t;

/* *h = f(*h): releases the old value */
#define STEP(call)            \
  do {                        \
    df_tensor *next_ = NULL;  \
    st = (call);              \
    if (st) goto fail;        \
    df_tensor_release(cur_);  \
    cur_ = next_;             \
  } while (0)

/* fused: keeps only x and the group statistics for backward */
static df_status gn_silu(const affine_t *n, int groups, const df_tensor *x, df_tensor **out) {
  return df_group_norm_silu(out, x, groups, n->w, n->b, 1e-5f);
}

static df_status conv3(const affine_t *c, const df_tensor *x, int stride, int pad, df_tensor **out) {
  df_conv2d_params p = {{stride, stride}, {pad, pad}, {1, 1}, 1};
  return df_conv2d(out, x, c->w, c->b, &p);
}

static df_status resblock_forward(const ctx_t *c, const resblock_t *r, const df_tensor *x, df_tensor **out) {
  int groups = c->net->cfg.groups;
  df_tensor *cur_ = NULL, *t = NULL, *skip = NULL;
  df_status st;
  STEP(gn_silu(&r->norm1, groups, x, &next_));
  STEP(conv3(&r->conv1, cur_, 1, 1, &next_));
  /* + Linear(temb) per channel */
  if ((st = df_linear(&t, c->temb, r->temb.w, r->temb.b))) goto fail;
  {
    int64_t shape[4] = {t->size[0], t->size[1], 1, 1};
    df_tensor *t4;
    if ((st = df_tensor_view(&t4, t, 4, shape))) goto fail;
    df_tensor_release(t);
    t = t4;
  }
  STEP(df_binary(DF_ADD, &next_, cur_, t));
  STEP(gn_silu(&r->norm2, groups, cur_, &next_));
  if (c->net->cfg.dropout > 0) STEP(df_dropout(&next_, cur_, c->net->cfg.dropout, c->train, c->gen));
  STEP(conv3(&r->conv2, cur_, 1, 1, &next_));
  if (r->skip.w) {
    df_conv2d_params p = {{1, 1}, {0, 0}, {1, 1}, 1};
    if ((st = df_conv2d(&skip, x, r->skip.w, r->skip.b, &p))) goto fail;
    STEP(df_binary(DF_ADD, &next_, skip, cur_));
  } else {
    STEP(df_binary(DF_ADD, &next_, x, cur_));
  }
  df_tensor_release(t);
  df_tensor_release(skip);
  *out = cur_;
  return DF_OK;
fail:
  df_tensor_release(cur_);
  df_tensor_release(t);
  df_tensor_release(skip);
  return st;
}

static df_status attention_forward(const ctx_t *c, const attention_t *a, const df_tensor *x, df_tensor **out) {
  int64_t B = x->size[0], C = x->size[1], H = x->size[2], W = x->size[3];
  int heads = c->net->cfg.heads;
  int64_t hd = C / heads;
  df_tensor *cur_ = NULL, *q = NULL, *k = NULL, *v = NULL, *qkv = NULL;
  df_conv2d_params p1 = {{1, 1}, {0, 0}, {1, 1}, 1};
  df_status st;
  if ((st = df_group_norm(&cur_, x, c->net->cfg.groups, a->norm.w, a->norm.b, 1e-5f))) goto fail;
  STEP(df_conv2d(&next_, cur_, a->qkv.w, a->qkv.b, &p1)); /* (B, 3C, H, W) */
  {
    int64_t shape[5] = {B, 3, heads, hd, H * W};
    if ((st = df_tensor_view(&qkv, cur_, 5, shape))) goto fail; /* (B, 3, heads, hd, HW) */
  }
  df_tensor *parts[3] = {NULL, NULL, NULL};
  for (int i = 0; i < 3; i++) {
    df_tensor *sel = NULL;
    st = df_tensor_select(&sel, qkv, 1, i);
    if (!st) st = df_tensor_transpose(&parts[i], sel, 2, 3); /* (B, heads, HW, hd) */
    df_tensor_release(sel);
    if (st) { /* the parts made so far are not yet in q, k, v */
      for (int j = 0; j < i; j++) df_tensor_release(parts[j]);
      goto fail;
    }
  }
  q = parts[0];
  k = parts[1];
  v = parts[2];
  STEP(df_scaled_dot_product_attention(&next_, q, k, v, NULL, 0)); /* (B, heads, HW, hd) */
  STEP(df_tensor_transpose(&next_, cur_, 2, 3));                   /* (B, heads, hd, HW) */
  {
    int64_t shape[4] = {B, C, H, W};
    STEP(df_tensor_reshape(&next_, cur_, 4, shape));
  }
  STEP(df_conv2d(&next_, cur_, a->proj.w, a->proj.b, &p1));
  STEP(df_binary(DF_ADD, &next_, x, cur_));
  df_tensor_release(q);
  df_tensor_release(k);
  df_tensor_release(v);
  df_tensor_release(qkv);
  *out = cur_;
  return DF_OK;
fail:
  df_tensor_release(cur_);
  df_tensor_release(q);
  df_tensor_release(k);
  df_tensor_release(v);
  df_tensor_release(qkv);
  return st;
}

static df_status block_forward(const ctx_t *c, const block_t *blk, const df_tensor *x, df_tensor **out) {
  df_status st;
  if (blk->kind == BLOCK_DOWN) return conv3(&blk->conv, x, 2, 1, out);
  if (blk->kind == BLOCK_UP) {
    df_tensor *up;
    int scale[2] = {2, 2};
    if ((st = df_upsample_nearest2d(&up, x, scale))) return st;
    st = conv3(&blk->conv, up, 1, 1, out);
    df_tensor_release(up);
    return st;
  }
  df_tensor *h;
  if ((st = resblock_forward(c, &blk->res, x, &h))) return st;
  if (!blk->has_attention) {
    *out = h;
    return DF_OK;
  }
  st = attention_forward(c, &blk->attention, h, out);
  df_tensor_release(h);
  return st;
}

static df_status check_inputs(const df_unet *net, const df_tensor *x, const df_tensor *t, const df_tensor *y) {
  const df_unet_config *c = &net->cfg;
  char b[128];
  if (x->ndim != 4 || x->size[1] != c->in_channels)
    return df_error(DF_EINVAL, "UNet: x must be (N, %d, H, W), got %s", c->in_channels, df_format_shape(b, sizeof b, x->ndim, x->size));
  int64_t div = 1 << (c->nmult - 1);
  if (x->size[2] % div || x->size[3] % div || x->size[2] < div)
    return df_error(DF_EINVAL, "UNet: image size %lldx%lld must be a multiple of %lld", (long long)x->size[2],
                    (long long)x->size[3], (long long)div);
  if (t->ndim != 1 || t->size[0] != x->size[0])
    return df_error(DF_EINVAL, "UNet: t must be (N) = (%lld), got %s", (long long)x->size[0], df_format_shape(b, sizeof b, t->ndim, t->size));
  if (y && !net->class_emb) return df_error(DF_EINVAL, "UNet: class labels given to a model built without num_classes");
  if (y && (y->ndim != 1 || y->size[0] != x->size[0]))
    return df_error(DF_EINVAL, "UNet: y must be (N) = (%lld), got %s", (long long)x->size[0], df_format_shape(b, sizeof b, y->ndim, y->size));
  return DF_OK;
}

df_status df_unet_forward(df_tensor **out, const df_unet *net, const df_tensor *x, const df_tensor *t, const df_tensor *y,
                          bool train, df_generator *gen) {
  df_status st = check_inputs(net, x, t, y);
  if (st) return st;
  const df_unet_config *cfg = &net->cfg;
  df_tensor *cur_ = NULL, *temb = NULL, *skips[4 * MAX_BLOCKS] = {NULL};
  int nskips = 0;
  /* time (and class) embedding */
  {
    df_tensor *e = NULL, *a = NULL;
    if ((st = df_timestep_embedding(&e, t, cfg->channels, 10000.0f))) goto fail;
    df_tensor *l0;
    st = df_linear(&l0, e, net->temb0.w, net->temb0.b);
    df_tensor_release(e);
    if (st) goto fail;
    st = df_unary(DF_SILU, &a, l0);
    df_tensor_release(l0);
    if (st) goto fail;
    st = df_linear(&temb, a, net->temb1.w, net->temb1.b);
    df_tensor_release(a);
    if (st) goto fail;
    if (y) {
      df_tensor *ce, *sum;
      if ((st = df_embedding(&ce, y, net->class_emb))) goto fail;
      st = df_binary(DF_ADD, &sum, temb, ce);
      df_tensor_release(ce);
      if (st) goto fail;
      df_tensor_release(temb);
      temb = sum;
    }
    df_tensor *act;
    if ((st = df_unary(DF_SILU, &act, temb))) goto fail;
    df_tensor_release(temb);
    temb = act;
  }
  ctx_t c = {net, train, gen, temb};
  if ((st = conv3(&net->conv_in, x, 1, 1, &cur_))) goto fail;
  df_tensor_retain(cur_);
  skips[nskips++] = cur_;
  for (int i = 0; i < net->ndown; i++) {
    STEP(block_forward(&c, &net->down[i], cur_, &next_));
    df_tensor_retain(cur_);
    skips[nskips++] = cur_;
  }
  STEP(resblock_forward(&c, &net->mid1, cur_, &next_));
  STEP(attention_forward(&c, &net->mid_attention, cur_, &next_));
  STEP(resblock_forward(&c, &net->mid2, cur_, &next_));
  for (int i = 0; i < net->nup; i++) {
    if (net->up[i].kind == BLOCK_RES) {
      df_tensor *skip = skips[--nskips];
      const df_tensor *pair[2] = {cur_, skip};
      df_tensor *joined;
      st = df_cat(&joined, 2, pair, 1);
      df_tensor_release(skip);
      skips[nskips] = NULL;
      if (st) goto fail;
      df_tensor_release(cur_);
      cur_ = joined;
    }
    STEP(block_forward(&c, &net->up[i], cur_, &next_));
  }
  STEP(gn_silu(&net->norm_out, cfg->groups, cur_, &next_));
  STEP(conv3(&net->conv_out, cur_, 1, 1, &next_));
  df_tensor_release(temb);
  for (int i = 0; i < nskips; i++) df_tensor_release(skips[i]);
  *out = cur_;
  return DF_OK;
fail:
  df_tensor_release(cur_);
  df_tensor_release(temb);
  for (int i = 0; i < nskips; i++) df_tensor_release(skips[i]);
  return st;
}
