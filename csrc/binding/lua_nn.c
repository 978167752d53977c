/* lua_nn.c — the Lua binding of the nn ops (csrc/ops/nn.c, attention.c),
 * each as D.name(x, ...) and x:name(...):
 *   D.linear(x, w [, b])
 *   D.group_norm(x, groups [, w [, b [, eps = 1e-5]]])
 *   D.group_norm_silu(x, groups [, w [, b [, eps = 1e-5]]])          silu(group_norm(...)), fused
 *   D.layer_norm(x, normalized_shape [, w [, b [, eps = 1e-5]]])   normalized_shape: {C} or {H, W} or C
 *   D.softmax(x, dim), D.log_softmax(x, dim)
 *   D.scaled_dot_product_attention(q, k, v [, mask [, scale]])
 *   D.dropout(x, p [, train = true [, generator]])
 *   D.embedding(indices, weight)                                       indices 1-based
 *   D.timestep_embedding(t, dim [, max_period = 10000])
 * Embedding indices are 1-based here, as everywhere in Lua; the core takes
 * them 0-based, so the binding checks them (naming the bad one as the user
 * wrote it) and passes a shifted copy. */
#include <math.h>

#include "binding.h"

static df_tensor *opt_tensor(lua_State *L, int arg) { return lua_isnoneornil(L, arg) ? NULL : check_tensor(L, arg); }

static float opt_eps(lua_State *L, int arg) { return (float)luaL_optnumber(L, arg, 1e-5); }

static int l_linear(lua_State *L) {
  df_tensor *x = check_tensor(L, 1), *w = check_tensor(L, 2), *b = opt_tensor(L, 3);
  df_tensor **slot = new_slot(L);
  return result(L, df_linear(slot, x, w, b));
}

typedef df_status (*group_norm_fn)(df_tensor **out, const df_tensor *x, int groups, const df_tensor *w,
                                   const df_tensor *b, float eps);

/* (x, groups [, w [, b [, eps]]]) for group_norm and group_norm_silu */
static int group_norm_call(lua_State *L, group_norm_fn op) {
  df_tensor *x = check_tensor(L, 1);
  lua_Integer groups = luaL_checkinteger(L, 2);
  df_tensor *w = opt_tensor(L, 3), *b = opt_tensor(L, 4);
  float eps = opt_eps(L, 5);
  if (groups < INT32_MIN || groups > INT32_MAX) luaL_argerror(L, 2, "groups out of range");
  df_tensor **slot = new_slot(L);
  return result(L, op(slot, x, (int)groups, w, b, eps));
}

static int l_group_norm(lua_State *L) { return group_norm_call(L, df_group_norm); }
static int l_group_norm_silu(lua_State *L) { return group_norm_call(L, df_group_norm_silu); }

/* normalized_shape: an integer or a table of them, equal to x's trailing dims */
static int check_normalized_shape(lua_State *L, int arg, const df_tensor *x) {
  int64_t size[DF_MAX_DIMS];
  int n;
  if (lua_type(L, arg) == LUA_TNUMBER) {
    size[0] = check_int(L, arg);
    n = 1;
  } else {
    luaL_checktype(L, arg, LUA_TTABLE);
    check_shape(L, arg, &n, size);
  }
  bool ok = n >= 1 && n <= x->ndim;
  for (int d = 0; ok && d < n; d++) ok = size[d] == x->size[x->ndim - n + d];
  if (!ok) {
    char b1[128], b2[128];
    luaL_error(L, "layer_norm: normalized_shape %s does not match the last dims of input %s",
               df_format_shape(b1, sizeof b1, n, size), df_format_shape(b2, sizeof b2, x->ndim, x->size));
  }
  return n;
}

static int l_layer_norm(lua_State *L) {
  df_tensor *x = check_tensor(L, 1);
  int nlast = check_normalized_shape(L, 2, x);
  df_tensor *w = opt_tensor(L, 3), *b = opt_tensor(L, 4);
  float eps = opt_eps(L, 5);
  df_tensor **slot = new_slot(L);
  return result(L, df_layer_norm(slot, x, nlast, w, b, eps));
}

static int l_softmax(lua_State *L) {
  df_tensor *x = check_tensor(L, 1);
  int dim = check_dim(L, 2, x->ndim, 0);
  df_tensor **slot = new_slot(L);
  return result(L, df_softmax(slot, x, dim));
}

static int l_log_softmax(lua_State *L) {
  df_tensor *x = check_tensor(L, 1);
  int dim = check_dim(L, 2, x->ndim, 0);
  df_tensor **slot = new_slot(L);
  return result(L, df_log_softmax(slot, x, dim));
}

static int l_attention(lua_State *L) {
  df_tensor *q = check_tensor(L, 1), *k = check_tensor(L, 2), *v = check_tensor(L, 3), *mask = opt_tensor(L, 4);
  float scale = (float)luaL_optnumber(L, 5, 0.0);
  df_tensor **slot = new_slot(L);
  return result(L, df_scaled_dot_product_attention(slot, q, k, v, mask, scale));
}

static int l_dropout(lua_State *L) {
  df_tensor *x = check_tensor(L, 1);
  float p = check_float(L, 2);
  bool train = lua_isnoneornil(L, 3) ? true : lua_toboolean(L, 3);
  df_generator *g = opt_generator(L, 4);
  df_tensor **slot = new_slot(L);
  return result(L, df_dropout(slot, x, p, train, g));
}

static int l_embedding(lua_State *L) {
  df_tensor *indices = check_tensor(L, 1), *weight = check_tensor(L, 2);
  lua_settop(L, 2);
  df_tensor **shifted = new_slot(L); /* kept on the stack: __gc owns it */
  bool prev = df_set_grad_enabled(false);
  df_status st = df_binary_scalar(DF_SUB, shifted, indices, 1.0f, false);
  df_set_grad_enabled(prev);
  if (st) return fail(L);
  /* checked here so the message shows the index as written; shape errors are left to the core */
  if (weight->ndim == 2) {
    int64_t rows = weight->size[0], count = df_tensor_numel(*shifted);
    const float *ix = df_tensor_data(*shifted); /* a fresh contiguous tensor */
    for (int64_t i = 0; i < count; i++) {
      float v = ix[i];
      if (v >= 0.0f && v < (float)rows && v == floorf(v)) continue;
      v += 1.0f;
      if (v == floorf(v) && fabsf(v) < 1e15f) /* an integer: shown without ".0" */
        lua_pushfstring(L, "%I", (lua_Integer)v);
      else
        lua_pushfstring(L, "%f", (lua_Number)v);
      char shape[128];
      return luaL_error(L, "embedding: index %s (element %I) is not a row of the weight %s: expected an integer in 1..%I",
                        lua_tostring(L, -1), (lua_Integer)i + 1,
                        df_format_shape(shape, sizeof shape, weight->ndim, weight->size), (lua_Integer)rows);
    }
  }
  df_tensor **slot = new_slot(L);
  return result(L, df_embedding(slot, *shifted, weight));
}

static int l_timestep_embedding(lua_State *L) {
  df_tensor *t = check_tensor(L, 1);
  lua_Integer dim = luaL_checkinteger(L, 2);
  float max_period = (float)luaL_optnumber(L, 3, 10000.0);
  if (dim < INT32_MIN || dim > INT32_MAX) luaL_argerror(L, 2, "dim out of range");
  df_tensor **slot = new_slot(L);
  return result(L, df_timestep_embedding(slot, t, (int)dim, max_period));
}

static const luaL_Reg functions[] = {
    {"linear", l_linear},
    {"group_norm", l_group_norm},
    {"group_norm_silu", l_group_norm_silu},
    {"layer_norm", l_layer_norm},
    {"softmax", l_softmax},
    {"log_softmax", l_log_softmax},
    {"scaled_dot_product_attention", l_attention},
    {"dropout", l_dropout},
    {"embedding", l_embedding},
    {"timestep_embedding", l_timestep_embedding},
    {NULL, NULL}};

void df_lua_open_nn(lua_State *L, int module, int methods) { df_lua_register(L, module, methods, functions, NULL); }
