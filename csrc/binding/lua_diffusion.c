/* lua_diffusion.c — the Lua 5.4 binding of libdiffusion: module `diffusion.core`.
 *
 * The only C file that includes lua.h. Each function checks its Lua arguments
 * first (raising then is harmless: nothing is owned yet), pushes its result
 * userdata in an empty state before the core allocates (so __gc owns the
 * tensor from birth), calls the core, and turns a failure into a Lua error
 * carrying df_last_error(). Dims and indices are 1-based here, negative ones
 * count from the end; the core is 0-based.
 */
#include <malloc.h>
#include <math.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include <lauxlib.h>
#include <lua.h>

#include "../df.h"
#include "binding.h"


/* ---- tensor userdata ---------------------------------------------------- */

/* Pushes an empty tensor userdata; the core fills *slot on success. */
df_tensor **new_slot(lua_State *L) {
  tensor_box *box = lua_newuserdatauv(L, sizeof *box, 0);
  box->t = NULL;
  luaL_setmetatable(L, TENSOR_MT);
  return &box->t;
}

df_tensor *check_tensor(lua_State *L, int arg) {
  tensor_box *box = luaL_checkudata(L, arg, TENSOR_MT);
  if (!box->t) luaL_argerror(L, arg, "tensor is closed");
  return box->t;
}

df_tensor *test_tensor(lua_State *L, int arg) {
  tensor_box *box = luaL_testudata(L, arg, TENSOR_MT);
  if (box && !box->t) luaL_argerror(L, arg, "tensor is closed");
  return box ? box->t : NULL;
}

int fail(lua_State *L) { return luaL_error(L, "%s", df_last_error()); }

/* Lua's GC sees a tensor as a few bytes of userdata; the storage behind it
 * can be megabytes. So the binding collects on its own schedule: whenever
 * the tensor bytes allocated since the last collection exceed what was live
 * after it (and at least 16 MiB). Garbage tensors then never hold more than
 * about as much again as the live ones, and their buffers return to the
 * cache for the next step of a loop. */
#define GC_MIN_BYTES ((size_t)16 << 20)
static size_t gc_allocated_mark, gc_live_after;

void account_memory(lua_State *L) {
  size_t since = df_allocated_bytes() - gc_allocated_mark;
  if (since <= GC_MIN_BYTES || since <= gc_live_after) return;
  lua_gc(L, LUA_GCCOLLECT);
  gc_allocated_mark = df_allocated_bytes();
  gc_live_after = df_live_bytes();
}

/* Ends a function whose result slot is on top of the stack. */
int result(lua_State *L, df_status st) {
  if (st) return fail(L);
  account_memory(L);
  return 1;
}

float check_float(lua_State *L, int arg) { return (float)luaL_checknumber(L, arg); }

int64_t check_int(lua_State *L, int arg) { return (int64_t)luaL_checkinteger(L, arg); }

/* A 1-based dim (negative from the end) to a 0-based one; `extra` is 1 when
 * the dim may also be one past the end (unsqueeze, stack). */
int check_dim(lua_State *L, int arg, int ndim, int extra) {
  int64_t d = check_int(L, arg), n = ndim + extra;
  if (d < 0) d += n + 1;
  if (d < 1 || d > n) {
    int64_t given = lua_tointeger(L, arg);
    return luaL_argerror(L, arg, lua_pushfstring(L, "dim %I out of range for a %d-d tensor", (lua_Integer)given, ndim));
  }
  return (int)(d - 1);
}

int opt_dim(lua_State *L, int arg, int ndim, int def) {
  return lua_isnoneornil(L, arg) ? def : check_dim(L, arg, ndim, 0);
}

/* A 1-based position (negative from the end) along a dim of `size`. */
int64_t check_index(lua_State *L, int arg, int64_t size) {
  int64_t i = check_int(L, arg);
  if (i < 0) i += size + 1;
  if (i < 1 || i > size) {
    return luaL_argerror(L, arg, lua_pushfstring(L, "index %I out of range for a dim of size %I",
                                                 (lua_Integer)lua_tointeger(L, arg), (lua_Integer)size));
  }
  return i - 1;
}

/* A shape given as a table {2, 3} or as integers 2, 3 from `arg` on.
 * Returns the index of the first argument after it. */
int check_shape(lua_State *L, int arg, int *ndim, int64_t *size) {
  int n = 0;
  if (lua_istable(L, arg)) {
    lua_Integer len = (lua_Integer)lua_rawlen(L, arg);
    if (len > DF_MAX_DIMS) luaL_argerror(L, arg, lua_pushfstring(L, "a tensor has at most %d dims, got %I", DF_MAX_DIMS, len));
    for (int i = 1; i <= len; i++) {
      lua_rawgeti(L, arg, i);
      int isint;
      lua_Integer v = lua_tointegerx(L, -1, &isint);
      if (!isint)
        luaL_argerror(L, arg, lua_pushfstring(L, "size %d must be an integer, got %s", i, luaL_typename(L, -1)));
      lua_pop(L, 1);
      size[n++] = v;
    }
    arg++;
  } else {
    while (lua_type(L, arg) == LUA_TNUMBER) {
      if (n == DF_MAX_DIMS) luaL_argerror(L, arg, lua_pushfstring(L, "a tensor has at most %d dims", DF_MAX_DIMS));
      size[n++] = check_int(L, arg);
      arg++;
    }
  }
  for (int i = 0; i < n; i++)
    if (size[i] < 0) luaL_error(L, "shape: size %d is negative (%I)", i + 1, (lua_Integer)size[i]);
  *ndim = n;
  return arg;
}

#define SHAPE_MT "diffusion.Shape"

/* A shape is a plain list of integers whose metatable prints it as {2,3}
 * and compares it by value. */
/* Raises when an argument is left over after the shape (zeros(2, "x")). */
void check_shape_end(lua_State *L, int arg) {
  if (!lua_isnone(L, arg))
    luaL_argerror(L, arg, lua_pushfstring(L, "expected a size (an integer), got %s", luaL_typename(L, arg)));
}

void push_shape(lua_State *L, const df_tensor *t) {
  lua_createtable(L, t->ndim, 0);
  for (int d = 0; d < t->ndim; d++) {
    lua_pushinteger(L, t->size[d]);
    lua_rawseti(L, -2, d + 1);
  }
  luaL_setmetatable(L, SHAPE_MT);
}

static int l_shape_tostring(lua_State *L) {
  luaL_checktype(L, 1, LUA_TTABLE);
  luaL_Buffer b;
  luaL_buffinit(L, &b);
  luaL_addchar(&b, '{');
  lua_Integer n = (lua_Integer)lua_rawlen(L, 1);
  for (lua_Integer i = 1; i <= n; i++) {
    if (i > 1) luaL_addchar(&b, ',');
    lua_rawgeti(L, 1, i);
    luaL_addvalue(&b);
  }
  luaL_addchar(&b, '}');
  luaL_pushresult(&b);
  return 1;
}

static int l_shape_eq(lua_State *L) {
  lua_Integer n = (lua_Integer)lua_rawlen(L, 1);
  bool same = lua_istable(L, 1) && lua_istable(L, 2) && n == (lua_Integer)lua_rawlen(L, 2);
  for (lua_Integer i = 1; same && i <= n; i++) {
    lua_rawgeti(L, 1, i);
    lua_rawgeti(L, 2, i);
    same = lua_rawequal(L, -1, -2);
    lua_pop(L, 2);
  }
  lua_pushboolean(L, same);
  return 1;
}

/* ---- generators --------------------------------------------------------- */

/* the numbers at arg (a list, or a 1-d tensor) as doubles, in a userdata left on the stack */
double *check_numbers(lua_State *L, int arg, int64_t *n) {
  df_tensor *t = test_tensor(L, arg);
  if (t) {
    if (t->ndim != 1) luaL_argerror(L, arg, "expected a 1-d tensor of values");
    *n = t->size[0];
    double *v = lua_newuserdatauv(L, sizeof(double) * (size_t)(*n ? *n : 1), 0);
    const float *p = t->storage->data + t->offset;
    for (int64_t i = 0; i < *n; i++) v[i] = p[i * t->stride[0]];
    return v;
  }
  luaL_checktype(L, arg, LUA_TTABLE);
  *n = (int64_t)lua_rawlen(L, arg);
  double *v = lua_newuserdatauv(L, sizeof(double) * (size_t)(*n ? *n : 1), 0);
  for (int64_t i = 0; i < *n; i++) {
    lua_rawgeti(L, arg, (lua_Integer)i + 1);
    int isnum;
    v[i] = lua_tonumberx(L, -1, &isnum);
    if (!isnum)
      luaL_argerror(L, arg, lua_pushfstring(L, "value %I must be a number, got %s", (lua_Integer)i + 1, luaL_typename(L, -1)));
    lua_pop(L, 1);
  }
  return v;
}

df_generator *opt_generator(lua_State *L, int arg) {
  if (lua_isnoneornil(L, arg)) return df_default_generator();
  generator_box *box = luaL_checkudata(L, arg, GENERATOR_MT);
  return box->g;
}

static void push_generator(lua_State *L, df_generator *shared, uint64_t seed) {
  generator_box *box = lua_newuserdatauv(L, sizeof *box, 0);
  box->g = shared ? shared : &box->own;
  if (!shared) df_generator_seed(&box->own, seed);
  luaL_setmetatable(L, GENERATOR_MT);
}

static int l_generator_new(lua_State *L) {
  push_generator(L, NULL, (uint64_t)luaL_optinteger(L, 1, 0));
  return 1;
}

static int l_default_generator(lua_State *L) {
  push_generator(L, df_default_generator(), 0);
  return 1;
}

static int l_manual_seed(lua_State *L) {
  df_generator_seed(df_default_generator(), (uint64_t)luaL_checkinteger(L, 1));
  return 0;
}

static int l_generator_seed(lua_State *L) {
  generator_box *box = luaL_checkudata(L, 1, GENERATOR_MT);
  df_generator_seed(box->g, (uint64_t)luaL_checkinteger(L, 2));
  lua_settop(L, 1);
  return 1;
}

static int l_generator_get_state(lua_State *L) {
  df_generator *g = opt_generator(L, 1);
  lua_createtable(L, 0, 2);
  lua_pushinteger(L, (lua_Integer)g->seed);
  lua_setfield(L, -2, "seed");
  lua_pushinteger(L, (lua_Integer)g->offset);
  lua_setfield(L, -2, "offset");
  return 1;
}

static int l_generator_set_state(lua_State *L) {
  df_generator *g = opt_generator(L, 1);
  luaL_checktype(L, 2, LUA_TTABLE);
  lua_Integer v[2];
  const char *keys[2] = {"seed", "offset"};
  for (int i = 0; i < 2; i++) {
    lua_getfield(L, 2, keys[i]);
    int isint;
    v[i] = lua_tointegerx(L, -1, &isint);
    if (!isint) luaL_argerror(L, 2, lua_pushfstring(L, "state.%s must be an integer", keys[i]));
    lua_pop(L, 1);
  }
  g->seed = (uint64_t)v[0];
  g->offset = (uint64_t)v[1];
  return 0;
}

/* D.set_rng_state(state): restores the default generator */
static int l_set_rng_state(lua_State *L) {
  lua_pushnil(L);
  lua_insert(L, 1);
  return l_generator_set_state(L);
}

static int l_generator_tostring(lua_State *L) {
  generator_box *box = luaL_checkudata(L, 1, GENERATOR_MT);
  lua_pushfstring(L, "Generator(seed=%I, offset=%I)%s", (lua_Integer)box->g->seed, (lua_Integer)box->g->offset,
                  box->g == df_default_generator() ? " [default]" : "");
  return 1;
}

/* ---- creation ----------------------------------------------------------- */

static int l_zeros(lua_State *L) {
  int ndim;
  int64_t size[DF_MAX_DIMS];
  check_shape_end(L, check_shape(L, 1, &ndim, size));
  df_tensor **slot = new_slot(L);
  return result(L, df_tensor_zeros(slot, ndim, size));
}

static int fill_new(lua_State *L, int ndim, const int64_t *size, float value) {
  df_tensor **slot = new_slot(L);
  return result(L, df_tensor_full(slot, ndim, size, value));
}

static int l_ones(lua_State *L) {
  int ndim;
  int64_t size[DF_MAX_DIMS];
  check_shape_end(L, check_shape(L, 1, &ndim, size));
  return fill_new(L, ndim, size, 1.0f);
}

/* D.full({2, 3}, v) or D.full(2, 3, v): the last number is the value */
static int l_full(lua_State *L) {
  int ndim;
  int64_t size[DF_MAX_DIMS];
  if (lua_istable(L, 1)) {
    check_shape(L, 1, &ndim, size);
    float v = check_float(L, 2);
    check_shape_end(L, 3);
    return fill_new(L, ndim, size, v);
  }
  int nargs = lua_gettop(L);
  if (nargs < 1) return luaL_error(L, "full: expected a shape and a value");
  float v = check_float(L, nargs);
  lua_settop(L, nargs - 1);
  check_shape_end(L, check_shape(L, 1, &ndim, size));
  return fill_new(L, ndim, size, v);
}

enum { RAND_UNIFORM, RAND_NORMAL, RAND_INT };

/* Fills the new tensor on top of the stack (or fails). */
static int random_fill(lua_State *L, int kind, df_generator *g, double a, double b) {
  df_tensor *t = *(df_tensor **)lua_touserdata(L, -1);
  df_status st = kind == RAND_UNIFORM ? df_rand_(t, g, (float)a, (float)b)
               : kind == RAND_NORMAL  ? df_randn_(t, g, (float)a, (float)b)
                                      : df_randint_(t, g, (int64_t)a, (int64_t)b);
  return st ? fail(L) : 1;
}

static int random_new(lua_State *L, int kind, int shape_arg, double a, double b) {
  int ndim;
  int64_t size[DF_MAX_DIMS];
  int next = check_shape(L, shape_arg, &ndim, size);
  df_generator *g = opt_generator(L, next);
  check_shape_end(L, next + 1);
  df_tensor **slot = new_slot(L);
  if (df_tensor_empty(slot, ndim, size)) return fail(L);
  account_memory(L);
  return random_fill(L, kind, g, a, b);
}

static int l_rand(lua_State *L) { return random_new(L, RAND_UNIFORM, 1, 0, 1); }
static int l_randn(lua_State *L) { return random_new(L, RAND_NORMAL, 1, 0, 1); }
static int l_randint(lua_State *L) {
  int64_t lo = check_int(L, 1), hi = check_int(L, 2);
  return random_new(L, RAND_INT, 3, (double)lo, (double)hi);
}

static int like_new(lua_State *L, df_tensor *x) {
  df_tensor **slot = new_slot(L);
  if (df_tensor_empty(slot, x->ndim, x->size)) return fail(L);
  account_memory(L);
  return 1;
}

static int l_zeros_like(lua_State *L) {
  df_tensor *x = check_tensor(L, 1);
  df_tensor **slot = new_slot(L);
  return result(L, df_tensor_zeros(slot, x->ndim, x->size));
}

static int l_ones_like(lua_State *L) {
  df_tensor *x = check_tensor(L, 1);
  return fill_new(L, x->ndim, x->size, 1.0f);
}

static int l_full_like(lua_State *L) {
  df_tensor *x = check_tensor(L, 1);
  return fill_new(L, x->ndim, x->size, check_float(L, 2));
}

static int l_rand_like(lua_State *L) {
  df_tensor *x = check_tensor(L, 1);
  df_generator *g = opt_generator(L, 2);
  like_new(L, x);
  return random_fill(L, RAND_UNIFORM, g, 0, 1);
}

static int l_randn_like(lua_State *L) {
  df_tensor *x = check_tensor(L, 1);
  df_generator *g = opt_generator(L, 2);
  like_new(L, x);
  return random_fill(L, RAND_NORMAL, g, 0, 1);
}

static int l_randint_like(lua_State *L) {
  df_tensor *x = check_tensor(L, 1);
  int64_t lo = check_int(L, 2), hi = check_int(L, 3);
  df_generator *g = opt_generator(L, 4);
  like_new(L, x);
  return random_fill(L, RAND_INT, g, (double)lo, (double)hi);
}

/* x:uniform_(lo, hi [, gen]), x:normal_(mean, std [, gen]) */
static int l_uniform_(lua_State *L) {
  df_tensor *x = check_tensor(L, 1);
  double lo = luaL_optnumber(L, 2, 0), hi = luaL_optnumber(L, 3, 1);
  df_generator *g = opt_generator(L, 4);
  (void)x;
  lua_settop(L, 1);
  return random_fill(L, RAND_UNIFORM, g, lo, hi);
}

static int l_normal_(lua_State *L) {
  df_tensor *x = check_tensor(L, 1);
  double mean = luaL_optnumber(L, 2, 0), std = luaL_optnumber(L, 3, 1);
  df_generator *g = opt_generator(L, 4);
  (void)x;
  lua_settop(L, 1);
  return random_fill(L, RAND_NORMAL, g, mean, std);
}

static int l_arange(lua_State *L) {
  double start = 0, stop, step = 1;
  if (lua_isnoneornil(L, 2)) {
    stop = luaL_checknumber(L, 1);
  } else {
    start = luaL_checknumber(L, 1);
    stop = luaL_checknumber(L, 2);
    step = luaL_optnumber(L, 3, 1);
  }
  df_tensor **slot = new_slot(L);
  return result(L, df_arange(slot, start, stop, step));
}

static int l_linspace(lua_State *L) {
  double a = luaL_checknumber(L, 1), b = luaL_checknumber(L, 2);
  int64_t n = check_int(L, 3);
  df_tensor **slot = new_slot(L);
  return result(L, df_linspace(slot, a, b, n));
}

static int l_eye(lua_State *L) {
  int64_t n = check_int(L, 1), m = luaL_optinteger(L, 2, n);
  if (n < 0 || m < 0) return luaL_error(L, "eye: sizes must be >= 0, got %I and %I", (lua_Integer)n, (lua_Integer)m);
  df_tensor **slot = new_slot(L);
  return result(L, df_eye(slot, n, m));
}

/* D.tensor(nested table or number). The shape comes from the first element
 * at each depth; every other element must agree with it. */
static void table_fill(lua_State *L, int depth, int ndim, const int64_t *size, float **dst, int64_t *path) {
  if (depth == ndim) {
    int isnum;
    lua_Number v = lua_tonumberx(L, -1, &isnum);
    if (!isnum) {
      luaL_Buffer b;
      luaL_buffinit(L, &b);
      for (int d = 0; d < depth; d++) lua_pushfstring(L, "[%I]", (lua_Integer)path[d] + 1), luaL_addvalue(&b);
      luaL_pushresult(&b);
      luaL_error(L, "tensor: expected a number at %s, got %s", lua_tostring(L, -1), luaL_typename(L, -2));
    }
    *(*dst)++ = (float)v;
    return;
  }
  if (!lua_istable(L, -1) || (int64_t)lua_rawlen(L, -1) != size[depth]) {
    bool is_table = lua_istable(L, -1);
    int64_t got = is_table ? (int64_t)lua_rawlen(L, -1) : 0;
    luaL_Buffer b;
    luaL_buffinit(L, &b);
    for (int d = 0; d < depth; d++) lua_pushfstring(L, "[%I]", (lua_Integer)path[d] + 1), luaL_addvalue(&b);
    luaL_pushresult(&b);
    if (is_table)
      luaL_error(L, "tensor: ragged nested table: expected %I elements at %s, got %I", (lua_Integer)size[depth],
                 lua_tostring(L, -1), (lua_Integer)got);
    luaL_error(L, "tensor: ragged nested table: expected a table at %s, got %s", lua_tostring(L, -1), luaL_typename(L, -2));
  }
  luaL_checkstack(L, 4, "tensor: nesting too deep");
  for (int64_t i = 0; i < size[depth]; i++) {
    path[depth] = i;
    lua_rawgeti(L, -1, (lua_Integer)i + 1);
    table_fill(L, depth + 1, ndim, size, dst, path);
    lua_pop(L, 1);
  }
}

static int l_tensor(lua_State *L) {
  if (lua_type(L, 1) == LUA_TNUMBER) {
    df_tensor **slot = new_slot(L);
    return result(L, df_tensor_full(slot, 0, NULL, (float)lua_tonumber(L, 1)));
  }
  luaL_checktype(L, 1, LUA_TTABLE);
  int ndim = 0;
  int64_t size[DF_MAX_DIMS];
  lua_pushvalue(L, 1);
  while (lua_istable(L, -1)) {
    if (ndim == DF_MAX_DIMS) return luaL_error(L, "tensor: nested deeper than %d levels", DF_MAX_DIMS);
    size[ndim++] = (int64_t)lua_rawlen(L, -1);
    if (size[ndim - 1] == 0) break;
    lua_rawgeti(L, -1, 1);
    lua_remove(L, -2);
  }
  lua_pop(L, 1);
  df_tensor **slot = new_slot(L);
  if (df_tensor_empty(slot, ndim, size)) return fail(L);
  float *dst = df_tensor_data(*slot);
  int64_t path[DF_MAX_DIMS];
  lua_pushvalue(L, 1);
  table_fill(L, 0, ndim, size, &dst, path);
  lua_pop(L, 1);
  account_memory(L);
  return 1;
}

/* ---- information -------------------------------------------------------- */

static int l_shape(lua_State *L) {
  push_shape(L, check_tensor(L, 1));
  return 1;
}

static int l_size(lua_State *L) {
  df_tensor *x = check_tensor(L, 1);
  if (lua_isnoneornil(L, 2)) {
    push_shape(L, x);
    return 1;
  }
  lua_pushinteger(L, x->size[check_dim(L, 2, x->ndim, 0)]);
  return 1;
}

static int l_stride(lua_State *L) {
  df_tensor *x = check_tensor(L, 1);
  lua_createtable(L, x->ndim, 0);
  for (int d = 0; d < x->ndim; d++) {
    lua_pushinteger(L, x->stride[d]);
    lua_rawseti(L, -2, d + 1);
  }
  return 1;
}

static int l_dim(lua_State *L) {
  lua_pushinteger(L, check_tensor(L, 1)->ndim);
  return 1;
}

static int l_numel(lua_State *L) {
  lua_pushinteger(L, df_tensor_numel(check_tensor(L, 1)));
  return 1;
}

static int l_is_contiguous(lua_State *L) {
  lua_pushboolean(L, df_tensor_is_contiguous(check_tensor(L, 1)));
  return 1;
}

static int l_same_storage(lua_State *L) {
  lua_pushboolean(L, check_tensor(L, 1)->storage == check_tensor(L, 2)->storage);
  return 1;
}

static int l_len(lua_State *L) {
  df_tensor *x = check_tensor(L, 1);
  if (x->ndim == 0) return luaL_error(L, "#: a 0-d tensor has no length (use numel)");
  lua_pushinteger(L, x->size[0]);
  return 1;
}

/* ---- element access ----------------------------------------------------- */

static void check_indices(lua_State *L, df_tensor *x, int first, int64_t *index, const char *name) {
  int given = lua_gettop(L) - first + 1;
  if (given != x->ndim) luaL_error(L, "%s: expected %d indices for a %d-d tensor, got %d", name, x->ndim, x->ndim, given);
  for (int d = 0; d < x->ndim; d++) index[d] = check_index(L, first + d, x->size[d]);
}

static int l_get(lua_State *L) {
  df_tensor *x = check_tensor(L, 1);
  int64_t index[DF_MAX_DIMS];
  check_indices(L, x, 2, index, "get");
  float v;
  if (df_tensor_get(x, index, &v)) return fail(L);
  lua_pushnumber(L, v);
  return 1;
}

static int l_set(lua_State *L) {
  df_tensor *x = check_tensor(L, 1);
  float v = check_float(L, 2);
  int64_t index[DF_MAX_DIMS];
  check_indices(L, x, 3, index, "set");
  if (df_tensor_set(x, index, v)) return fail(L);
  lua_settop(L, 1);
  return 1;
}

static int l_item(lua_State *L) {
  df_tensor *x = check_tensor(L, 1);
  if (df_tensor_numel(x) != 1)
    return luaL_error(L, "item: expected a tensor with one element, got %I", (lua_Integer)df_tensor_numel(x));
  int64_t zero[DF_MAX_DIMS] = {0};
  float v;
  df_tensor_get(x, zero, &v);
  lua_pushnumber(L, v);
  return 1;
}

static void push_nested(lua_State *L, const df_tensor *t, int dim, int64_t off) {
  if (dim == t->ndim) {
    lua_pushnumber(L, t->storage->data[off]);
    return;
  }
  luaL_checkstack(L, 4, "totable");
  lua_createtable(L, (int)(t->size[dim] < 1 << 24 ? t->size[dim] : 0), 0);
  for (int64_t i = 0; i < t->size[dim]; i++) {
    push_nested(L, t, dim + 1, off + i * t->stride[dim]);
    lua_rawseti(L, -2, (lua_Integer)i + 1);
  }
}

static int l_totable(lua_State *L) {
  df_tensor *x = check_tensor(L, 1);
  push_nested(L, x, 0, x->offset);
  return 1;
}

/* x[i]: a number for a 1-d tensor, else the view x:select(1, i) */
static int l_index(lua_State *L) {
  if (lua_type(L, 2) == LUA_TNUMBER) {
    df_tensor *x = check_tensor(L, 1);
    if (x->ndim == 0) return luaL_error(L, "index: a 0-d tensor cannot be indexed (use item)");
    int64_t i = check_index(L, 2, x->size[0]);
    if (x->ndim == 1) {
      lua_pushnumber(L, x->storage->data[x->offset + i * x->stride[0]]);
      return 1;
    }
    df_tensor **slot = new_slot(L);
    return result(L, df_tensor_select(slot, x, 0, i));
  }
  lua_pushvalue(L, 2);
  lua_rawget(L, lua_upvalueindex(1)); /* the methods table */
  if (!lua_isnil(L, -1) || lua_type(L, 2) != LUA_TSTRING) return 1;
  /* autograd fields: x.grad, x.requires_grad, x.is_leaf, x.grad_fn */
  df_tensor *x = check_tensor(L, 1);
  const char *key = lua_tostring(L, 2);
  if (strcmp(key, "grad") == 0) {
    if (!x->grad) return 1; /* nil */
    tensor_box *box = lua_newuserdatauv(L, sizeof *box, 0);
    box->t = x->grad;
    df_tensor_retain(x->grad);
    luaL_setmetatable(L, TENSOR_MT);
  } else if (strcmp(key, "requires_grad") == 0) {
    lua_pushboolean(L, x->requires_grad);
  } else if (strcmp(key, "is_leaf") == 0) {
    lua_pushboolean(L, x->grad_fn == NULL);
  } else if (strcmp(key, "grad_fn") == 0) {
    if (x->grad_fn) lua_pushstring(L, x->grad_fn->name);
    else lua_pushnil(L);
  }
  return 1;
}

/* x[i] = v: sets an element of a 1-d tensor, or fills/copies the slice */
static int l_newindex(lua_State *L) {
  df_tensor *x = check_tensor(L, 1);
  if (lua_type(L, 2) == LUA_TSTRING && strcmp(lua_tostring(L, 2), "requires_grad") == 0) {
    if (!lua_isboolean(L, 3)) return luaL_error(L, "requires_grad: expected a boolean, got %s", luaL_typename(L, 3));
    return df_set_requires_grad(x, lua_toboolean(L, 3)) ? fail(L) : 0;
  }
  if (lua_type(L, 2) == LUA_TSTRING && strcmp(lua_tostring(L, 2), "grad") == 0) {
    df_tensor *g = lua_isnil(L, 3) ? NULL : check_tensor(L, 3);
    if (g && !df_tensor_same_shape(g, x)) return luaL_error(L, "grad: the gradient must have the tensor's shape");
    if (g) df_tensor_retain(g);
    df_tensor_release(x->grad);
    x->grad = g;
    return 0;
  }
  if (lua_type(L, 2) != LUA_TNUMBER)
    return luaL_error(L, "Tensor: cannot set field '%s' (only integer indices can be assigned)", luaL_tolstring(L, 2, NULL));
  if (x->ndim == 0) return luaL_error(L, "index: a 0-d tensor cannot be indexed (use fill_)");
  int64_t i = check_index(L, 2, x->size[0]);
  df_tensor *src = test_tensor(L, 3);
  float v = src ? 0.0f : check_float(L, 3);
  df_tensor **slot = new_slot(L);
  if (df_tensor_select(slot, x, 0, i)) return fail(L);
  df_status st = src ? df_tensor_copy_(*slot, src) : df_tensor_fill_(*slot, v);
  return st ? fail(L) : 0;
}

/* ---- views -------------------------------------------------------------- */

static int l_view(lua_State *L) {
  df_tensor *x = check_tensor(L, 1);
  int ndim = 0;
  int64_t size[DF_MAX_DIMS];
  if (lua_istable(L, 2)) {
    lua_Integer len = (lua_Integer)lua_rawlen(L, 2);
    if (len > DF_MAX_DIMS) return luaL_argerror(L, 2, "too many dims");
    for (int i = 1; i <= len; i++) {
      lua_rawgeti(L, 2, i);
      int isint;
      size[ndim++] = lua_tointegerx(L, -1, &isint);
      if (!isint) return luaL_argerror(L, 2, "sizes must be integers");
      lua_pop(L, 1);
    }
  } else {
    for (int arg = 2; arg <= lua_gettop(L); arg++) {
      if (ndim == DF_MAX_DIMS) return luaL_argerror(L, arg, "too many dims");
      size[ndim++] = check_int(L, arg);
    }
  }
  bool is_view = lua_toboolean(L, lua_upvalueindex(1));
  df_tensor **slot = new_slot(L);
  return result(L, is_view ? df_tensor_view(slot, x, ndim, size) : df_tensor_reshape(slot, x, ndim, size));
}

static int l_flatten(lua_State *L) {
  df_tensor *x = check_tensor(L, 1);
  int64_t n = -1;
  df_tensor **slot = new_slot(L);
  return result(L, df_tensor_reshape(slot, x, 1, &n));
}

static int l_transpose(lua_State *L) {
  df_tensor *x = check_tensor(L, 1);
  int d0, d1;
  if (lua_isnoneornil(L, 2) && lua_isnoneornil(L, 3)) { /* x:t() */
    if (x->ndim != 2) return luaL_error(L, "t: expected a 2-d tensor, got %d-d (give the dims to transpose)", x->ndim);
    d0 = 0;
    d1 = 1;
  } else {
    d0 = check_dim(L, 2, x->ndim, 0);
    d1 = check_dim(L, 3, x->ndim, 0);
  }
  df_tensor **slot = new_slot(L);
  return result(L, df_tensor_transpose(slot, x, d0, d1));
}

static int l_permute(lua_State *L) {
  df_tensor *x = check_tensor(L, 1);
  int perm[DF_MAX_DIMS];
  bool table = lua_istable(L, 2);
  int given = table ? (int)lua_rawlen(L, 2) : lua_gettop(L) - 1;
  if (given != x->ndim) return luaL_error(L, "permute: expected %d dims for a %d-d tensor, got %d", x->ndim, x->ndim, given);
  for (int d = 0; d < x->ndim; d++) {
    if (table) lua_rawgeti(L, 2, d + 1);
    else lua_pushvalue(L, d + 2);
    perm[d] = check_dim(L, lua_gettop(L), x->ndim, 0);
    lua_pop(L, 1);
  }
  df_tensor **slot = new_slot(L);
  return result(L, df_tensor_permute(slot, x, perm));
}

static int l_narrow(lua_State *L) {
  df_tensor *x = check_tensor(L, 1);
  int dim = check_dim(L, 2, x->ndim, 0);
  int64_t start = check_index(L, 3, x->size[dim]), length = check_int(L, 4);
  df_tensor **slot = new_slot(L);
  return result(L, df_tensor_narrow(slot, x, dim, start, length));
}

/* x:slice(dim, first, last [, step]): inclusive, like string.sub */
static int l_slice(lua_State *L) {
  df_tensor *x = check_tensor(L, 1);
  int dim = check_dim(L, 2, x->ndim, 0);
  int64_t n = x->size[dim];
  int64_t first = luaL_optinteger(L, 3, 1), last = luaL_optinteger(L, 4, -1), step = luaL_optinteger(L, 5, 1);
  if (first < 0) first += n + 1;
  if (last < 0) last += n + 1;
  if (first < 1) first = 1;
  if (first > n) first = n + 1; /* past the end: empty, as string.sub */
  if (last > n) last = n;
  if (last < first) last = first - 1; /* empty */
  df_tensor **slot = new_slot(L);
  return result(L, df_tensor_slice(slot, x, dim, first - 1, last, step));
}

static int l_select(lua_State *L) {
  df_tensor *x = check_tensor(L, 1);
  int dim = check_dim(L, 2, x->ndim, 0);
  int64_t i = check_index(L, 3, x->size[dim]);
  df_tensor **slot = new_slot(L);
  return result(L, df_tensor_select(slot, x, dim, i));
}

static int l_squeeze(lua_State *L) {
  df_tensor *x = check_tensor(L, 1);
  int dim = opt_dim(L, 2, x->ndim, -1);
  df_tensor **slot = new_slot(L);
  return result(L, df_tensor_squeeze(slot, x, dim));
}

static int l_unsqueeze(lua_State *L) {
  df_tensor *x = check_tensor(L, 1);
  int dim = check_dim(L, 2, x->ndim, 1);
  df_tensor **slot = new_slot(L);
  return result(L, df_tensor_unsqueeze(slot, x, dim));
}

static int l_expand(lua_State *L) {
  df_tensor *x = check_tensor(L, 1);
  int ndim;
  int64_t size[DF_MAX_DIMS];
  df_tensor *other = test_tensor(L, 2);
  if (other) {
    ndim = other->ndim;
    memcpy(size, other->size, sizeof size);
  } else if (lua_istable(L, 2)) {
    ndim = (int)lua_rawlen(L, 2);
    if (ndim > DF_MAX_DIMS) return luaL_argerror(L, 2, "too many dims");
    for (int i = 0; i < ndim; i++) {
      lua_rawgeti(L, 2, i + 1);
      size[i] = luaL_checkinteger(L, -1);
      lua_pop(L, 1);
    }
  } else {
    ndim = lua_gettop(L) - 1;
    if (ndim > DF_MAX_DIMS) return luaL_argerror(L, 2, "too many dims");
    for (int i = 0; i < ndim; i++) size[i] = check_int(L, i + 2);
  }
  df_tensor **slot = new_slot(L);
  return result(L, df_tensor_expand(slot, x, ndim, size));
}

static int l_contiguous(lua_State *L) {
  df_tensor *x = check_tensor(L, 1);
  if (df_tensor_is_contiguous(x)) {
    lua_settop(L, 1);
    return 1;
  }
  df_tensor **slot = new_slot(L);
  return result(L, df_tensor_clone(slot, x));
}

static int l_clone(lua_State *L) {
  df_tensor *x = check_tensor(L, 1);
  df_tensor **slot = new_slot(L);
  return result(L, df_tensor_clone(slot, x));
}

static int l_copy_(lua_State *L) {
  df_tensor *x = check_tensor(L, 1), *src = check_tensor(L, 2);
  if (df_tensor_copy_(x, src)) return fail(L);
  lua_settop(L, 1);
  return 1;
}

static int l_fill_(lua_State *L) {
  df_tensor *x = check_tensor(L, 1);
  if (df_tensor_fill_(x, check_float(L, 2))) return fail(L);
  lua_settop(L, 1);
  return 1;
}

static int l_zero_(lua_State *L) {
  df_tensor *x = check_tensor(L, 1);
  if (df_tensor_fill_(x, 0.0f)) return fail(L);
  lua_settop(L, 1);
  return 1;
}

/* D.cat({a, b, ...} [, dim]), D.stack({a, b, ...} [, dim]) */
static int join(lua_State *L, bool stack) {
  luaL_checktype(L, 1, LUA_TTABLE);
  lua_settop(L, 2); /* the optional dim stays at 2, scratch goes above */
  int n = (int)luaL_len(L, 1);
  if (n < 1) return luaL_argerror(L, 1, "expected a non-empty list of tensors");
  /* the array of pointers lives in a userdata, so an error frees it */
  const df_tensor **ts = lua_newuserdatauv(L, sizeof(df_tensor *) * (size_t)n, 0);
  for (int i = 0; i < n; i++) {
    lua_rawgeti(L, 1, i + 1);
    tensor_box *box = luaL_testudata(L, -1, TENSOR_MT);
    if (!box || !box->t) return luaL_argerror(L, 1, lua_pushfstring(L, "element %d is not a tensor", i + 1));
    ts[i] = box->t;
    lua_pop(L, 1);
  }
  int dim = lua_isnoneornil(L, 2) ? 0 : check_dim(L, 2, ts[0]->ndim, stack ? 1 : 0);
  df_tensor **slot = new_slot(L);
  return result(L, stack ? df_stack(slot, n, ts, dim) : df_cat(slot, n, ts, dim));
}

static int l_cat(lua_State *L) { return join(L, false); }
static int l_stack(lua_State *L) { return join(L, true); }

/* ---- elementwise -------------------------------------------------------- */

static int l_unary(lua_State *L) {
  df_unary_op op = (df_unary_op)lua_tointeger(L, lua_upvalueindex(1));
  df_tensor *x = check_tensor(L, 1);
  df_tensor **slot = new_slot(L);
  return result(L, df_unary(op, slot, x));
}

static int l_unary_(lua_State *L) {
  df_unary_op op = (df_unary_op)lua_tointeger(L, lua_upvalueindex(1));
  df_tensor *x = check_tensor(L, 1);
  if (df_unary_(op, x)) return fail(L);
  lua_settop(L, 1);
  return 1;
}

static float check_operand_number(lua_State *L, int arg, const char *name) {
  if (lua_type(L, arg) != LUA_TNUMBER) {
    lua_pushfstring(L, "%s: expected a number or a Tensor, got %s", name, luaL_typename(L, arg));
    return (float)luaL_argerror(L, arg, lua_tostring(L, -1));
  }
  return (float)lua_tonumber(L, arg);
}

static int l_binary(lua_State *L) {
  df_binary_op op = (df_binary_op)lua_tointeger(L, lua_upvalueindex(1));
  const char *name = df_binary_names[op];
  df_tensor *a = test_tensor(L, 1), *b = test_tensor(L, 2);
  df_status st;
  if (a && b) {
    df_tensor **slot = new_slot(L);
    st = df_binary(op, slot, a, b);
  } else if (a) {
    float s = check_operand_number(L, 2, name);
    df_tensor **slot = new_slot(L);
    st = df_binary_scalar(op, slot, a, s, false);
  } else if (b) {
    float s = check_operand_number(L, 1, name);
    df_tensor **slot = new_slot(L);
    st = df_binary_scalar(op, slot, b, s, true);
  } else {
    return luaL_error(L, "%s: expected at least one Tensor, got %s and %s", name, luaL_typename(L, 1), luaL_typename(L, 2));
  }
  return result(L, st);
}

static int l_binary_(lua_State *L) {
  df_binary_op op = (df_binary_op)lua_tointeger(L, lua_upvalueindex(1));
  df_tensor *a = check_tensor(L, 1), *b = test_tensor(L, 2);
  df_status st = b ? df_binary_(op, a, b) : df_binary_scalar_(op, a, check_operand_number(L, 2, df_binary_names[op]));
  if (st) return fail(L);
  lua_settop(L, 1);
  return 1;
}

static void clamp_bounds(lua_State *L, float *lo, float *hi) {
  *lo = lua_isnoneornil(L, 2) ? -INFINITY : check_float(L, 2);
  *hi = lua_isnoneornil(L, 3) ? INFINITY : check_float(L, 3);
}

static int l_clamp(lua_State *L) {
  df_tensor *x = check_tensor(L, 1);
  float lo, hi;
  clamp_bounds(L, &lo, &hi);
  df_tensor **slot = new_slot(L);
  return result(L, df_clamp(slot, x, lo, hi));
}

static int l_clamp_(lua_State *L) {
  df_tensor *x = check_tensor(L, 1);
  float lo, hi;
  clamp_bounds(L, &lo, &hi);
  if (df_clamp_(x, lo, hi)) return fail(L);
  lua_settop(L, 1);
  return 1;
}

/* A tensor argument, or a number made into a 0-d tensor kept on the stack. */
static df_tensor *tensor_or_number(lua_State *L, int arg) {
  df_tensor *t = test_tensor(L, arg);
  if (t) return t;
  float v = check_operand_number(L, arg, "where");
  df_tensor **slot = new_slot(L);
  if (df_tensor_full(slot, 0, NULL, v)) fail(L);
  lua_replace(L, arg);
  return *slot;
}

static int l_where(lua_State *L) {
  df_tensor *cond = check_tensor(L, 1);
  df_tensor *a = tensor_or_number(L, 2), *b = tensor_or_number(L, 3);
  df_tensor **slot = new_slot(L);
  return result(L, df_where(slot, cond, a, b));
}

/* ---- reductions --------------------------------------------------------- */

/* dims from arg: nil (all), an integer, or a table of integers */
static int check_dims(lua_State *L, int arg, const df_tensor *x, int *dims) {
  if (lua_isnoneornil(L, arg)) return 0;
  if (!lua_istable(L, arg)) {
    dims[0] = check_dim(L, arg, x->ndim, 0);
    return 1;
  }
  int n = (int)lua_rawlen(L, arg);
  if (n > x->ndim) return luaL_argerror(L, arg, "more dims than the tensor has");
  for (int i = 0; i < n; i++) {
    lua_rawgeti(L, arg, i + 1);
    dims[i] = check_dim(L, lua_gettop(L), x->ndim, 0);
    lua_pop(L, 1);
  }
  if (n == 0) return luaL_argerror(L, arg, "empty list of dims");
  return n;
}

/* x:sum([dims [, keepdim]]), x:var([dims [, keepdim [, correction]]]) */
static int l_reduce(lua_State *L) {
  df_reduce_op op = (df_reduce_op)lua_tointeger(L, lua_upvalueindex(1));
  df_tensor *x = check_tensor(L, 1);
  int dims[DF_MAX_DIMS];
  int ndims = check_dims(L, 2, x, dims);
  bool keepdim = lua_toboolean(L, 3);
  int correction = (int)luaL_optinteger(L, 4, 1);
  if ((op == DF_MAX || op == DF_MIN) && ndims == 1) { /* values and positions */
    df_tensor **values = new_slot(L), **indices = new_slot(L);
    if (df_argreduce(op, values, indices, x, dims[0], keepdim, 1)) return fail(L);
    account_memory(L);
    return 2;
  }
  df_tensor **slot = new_slot(L);
  return result(L, df_reduce(op, slot, x, ndims, dims, keepdim, correction));
}

/* x:argmax([dim [, keepdim]]): 1-based positions; over all elements, flattened, without dim */
static int l_argreduce(lua_State *L) {
  df_reduce_op op = (df_reduce_op)lua_tointeger(L, lua_upvalueindex(1));
  df_tensor *x = check_tensor(L, 1);
  int dim = opt_dim(L, 2, x->ndim, -1);
  bool keepdim = lua_toboolean(L, 3);
  df_tensor **slot = new_slot(L);
  return result(L, df_argreduce(op, NULL, slot, x, dim, keepdim, 1));
}

/* x:index_select(dim, indices): indices is a 1-d tensor or a Lua list, 1-based */
static int l_index_select(lua_State *L) {
  df_tensor *x = check_tensor(L, 1);
  int dim = check_dim(L, 2, x->ndim, 0);
  df_tensor *index = test_tensor(L, 3);
  if (!index) { /* a list: made into a tensor owned by a userdata on the stack */
    luaL_checktype(L, 3, LUA_TTABLE);
    int64_t n = (int64_t)lua_rawlen(L, 3);
    df_tensor **list = new_slot(L);
    if (df_tensor_empty(list, 1, &n)) return fail(L);
    float *p = df_tensor_data(*list);
    for (int64_t i = 0; i < n; i++) {
      lua_rawgeti(L, 3, (lua_Integer)i + 1);
      int isnum;
      p[i] = (float)lua_tonumberx(L, -1, &isnum);
      if (!isnum) return luaL_argerror(L, 3, "indices must be numbers");
      lua_pop(L, 1);
    }
    index = *list;
  }
  df_tensor **slot = new_slot(L);
  return result(L, df_index_select(slot, x, dim, index, 1));
}

static int l_matmul(lua_State *L) {
  df_tensor *a = check_tensor(L, 1), *b = check_tensor(L, 2);
  df_tensor **slot = new_slot(L);
  return result(L, df_matmul(slot, a, b));
}

/* ---- autograd ----------------------------------------------------------- */

/* x:backward([grad [, retain_graph]]) */
static int l_backward(lua_State *L) {
  df_tensor *x = check_tensor(L, 1);
  df_tensor *grad = lua_isnoneornil(L, 2) ? NULL : check_tensor(L, 2);
  bool retain = lua_toboolean(L, 3);
  if (df_backward(x, grad, retain)) return fail(L);
  account_memory(L);
  return 0;
}

static int l_detach(lua_State *L) {
  df_tensor *x = check_tensor(L, 1);
  df_tensor **slot = new_slot(L);
  return result(L, df_detach(slot, x));
}

/* x:requires_grad_([on]): returns x */
static int l_requires_grad_(lua_State *L) {
  df_tensor *x = check_tensor(L, 1);
  bool on = lua_isnoneornil(L, 2) ? true : lua_toboolean(L, 2);
  if (df_set_requires_grad(x, on)) return fail(L);
  lua_settop(L, 1);
  return 1;
}

/* D.set_grad_enabled(on): returns the previous mode */
static int l_set_grad_enabled(lua_State *L) {
  luaL_checktype(L, 1, LUA_TBOOLEAN);
  lua_pushboolean(L, df_set_grad_enabled(lua_toboolean(L, 1)));
  return 1;
}

static int l_is_grad_enabled(lua_State *L) {
  lua_pushboolean(L, df_grad_enabled());
  return 1;
}

/* test hook: D._debug_corrupt_backward("sigmoid", 1.1) scales that op's gradients */
static int l_debug_corrupt_backward(lua_State *L) {
  static char name[64];
  if (lua_isnoneornil(L, 1)) {
    df_debug_corrupt_backward(NULL, 1.0f);
    return 0;
  }
  snprintf(name, sizeof name, "%s", luaL_checkstring(L, 1));
  df_debug_corrupt_backward(name, (float)luaL_optnumber(L, 2, 1.1));
  return 0;
}

/* ---- lifetime ----------------------------------------------------------- */

/* __gc and __close: idempotent */
static int l_release(lua_State *L) {
  tensor_box *box = luaL_checkudata(L, 1, TENSOR_MT);
  df_tensor_release(box->t);
  box->t = NULL;
  return 0;
}

/* ---- threads, memory, benchmarks ---------------------------------------- */

static int l_set_num_threads(lua_State *L) {
  lua_Integer n = luaL_checkinteger(L, 1);
  if (n < 1 || n > 256) return luaL_argerror(L, 1, "expected 1 to 256 threads");
  if (df_set_num_threads((int)n)) return fail(L);
  return 0;
}

static int l_get_num_threads(lua_State *L) {
  lua_pushinteger(L, df_get_num_threads());
  return 1;
}

static int l_memory_allocated(lua_State *L) {
  lua_pushinteger(L, (lua_Integer)df_live_bytes());
  return 1;
}

/* D.empty_cache(): frees the recycled buffers kept for reuse; returns bytes */
static int l_empty_cache(lua_State *L) {
  lua_pushinteger(L, (lua_Integer)df_buffer_cache_clear());
  return 1;
}

static int l_cached_bytes(lua_State *L) {
  lua_pushinteger(L, (lua_Integer)df_buffer_cache_bytes());
  return 1;
}

static int l_raw_sgemm_gflops(lua_State *L) {
  lua_Integer n = luaL_checkinteger(L, 1), reps = luaL_optinteger(L, 2, 5);
  if (n < 1 || n > 16384 || reps < 1) return luaL_argerror(L, 1, "expected 1 <= n <= 16384 and reps >= 1");
  lua_pushnumber(L, df_bench_raw_sgemm((int)n, (int)reps));
  return 1;
}

/* D.clock(): seconds on a monotonic wall clock, for timing and progress */
static int l_clock(lua_State *L) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  lua_pushnumber(L, (lua_Number)ts.tv_sec + 1e-9 * (lua_Number)ts.tv_nsec);
  return 1;
}

static int l_blas_info(lua_State *L) {
  lua_pushstring(L, df_blas_info());
  return 1;
}

/* D.cpu_simd(): "avx512f", "avx2" or "scalar", the widest this CPU runs */
static int l_cpu_simd(lua_State *L) {
  lua_pushstring(L, df_cpu_simd());
  return 1;
}

/* a value for an error message: a number or string as it is, else its type */
static const char *shown(lua_State *L, int idx) {
  int type = lua_type(L, idx);
  if (type == LUA_TSTRING) return lua_pushfstring(L, "'%s'", lua_tostring(L, idx));
  if (type == LUA_TNUMBER) return luaL_tolstring(L, idx, NULL);
  return luaL_typename(L, idx);
}

/* D.fma_peak{threads = n, seconds = s, simd = "best"}: the machine's FMA peak
 * in GFLOP/s, measured on n threads at once for s seconds (defaults: the pool's
 * thread count, 0.5 s, the widest SIMD). */
static int l_fma_peak(lua_State *L) {
  lua_Integer threads = df_get_num_threads();
  lua_Number seconds = 0.5;
  const char *simd = "best";
  if (!lua_isnoneornil(L, 1)) {
    luaL_checktype(L, 1, LUA_TTABLE);
    lua_pushnil(L);
    while (lua_next(L, 1)) {
      lua_pop(L, 1);
      const char *key = lua_type(L, -1) == LUA_TSTRING ? lua_tostring(L, -1) : NULL;
      if (!key || (strcmp(key, "threads") && strcmp(key, "seconds") && strcmp(key, "simd")))
        return luaL_error(L, "fma_peak: unknown option %s (expected threads, seconds, simd)", shown(L, -1));
    }
    if (lua_getfield(L, 1, "threads") != LUA_TNIL) {
      if (!lua_isinteger(L, -1)) return luaL_error(L, "fma_peak: threads must be an integer, got %s", shown(L, -1));
      threads = lua_tointeger(L, -1);
    }
    if (lua_getfield(L, 1, "seconds") != LUA_TNIL) {
      if (lua_type(L, -1) != LUA_TNUMBER) return luaL_error(L, "fma_peak: seconds must be a number, got %s", shown(L, -1));
      seconds = lua_tonumber(L, -1);
    }
    if (lua_getfield(L, 1, "simd") != LUA_TNIL) {
      if (lua_type(L, -1) != LUA_TSTRING) return luaL_error(L, "fma_peak: simd must be a string, got %s", shown(L, -1));
      simd = lua_tostring(L, -1);
    }
  }
  if (threads < 1 || threads > 256) return luaL_error(L, "fma_peak: threads must be 1 to 256, got %I", threads);
  double gflops = 0;
  if (seconds != seconds) return luaL_error(L, "fma_peak: seconds must be > 0 and <= 60, got nan");
  if (df_fma_peak((int)threads, (double)seconds, simd, &gflops)) return fail(L);
  lua_pushnumber(L, gflops);
  return 1;
}

/* ---- registration ------------------------------------------------------- */

/* functions that are both D.f(x, ...) and x:f(...) */
static const luaL_Reg tensor_functions[] = {
    {"zeros_like", l_zeros_like}, {"ones_like", l_ones_like}, {"full_like", l_full_like},
    {"rand_like", l_rand_like}, {"randn_like", l_randn_like}, {"randint_like", l_randint_like},
    {"uniform_", l_uniform_}, {"normal_", l_normal_},
    {"shape", l_shape}, {"size", l_size}, {"stride", l_stride}, {"dim", l_dim}, {"numel", l_numel},
    {"is_contiguous", l_is_contiguous}, {"same_storage", l_same_storage},
    {"get", l_get}, {"set", l_set}, {"item", l_item}, {"totable", l_totable},
    {"flatten", l_flatten}, {"transpose", l_transpose}, {"t", l_transpose}, {"permute", l_permute},
    {"narrow", l_narrow}, {"slice", l_slice}, {"select", l_select}, {"squeeze", l_squeeze},
    {"unsqueeze", l_unsqueeze}, {"expand", l_expand}, {"expand_as", l_expand}, {"contiguous", l_contiguous},
    {"clone", l_clone}, {"copy_", l_copy_}, {"copy", l_copy_}, {"fill_", l_fill_}, {"fill", l_fill_},
    {"backward", l_backward}, {"detach", l_detach}, {"requires_grad_", l_requires_grad_},
    {"zero_", l_zero_}, {"clamp", l_clamp}, {"clamp_", l_clamp_}, {"where", l_where}, {"matmul", l_matmul}, {"index_select", l_index_select},
    {NULL, NULL}};

/* module-only functions */
static const luaL_Reg module_functions[] = {
    {"tensor", l_tensor}, {"zeros", l_zeros}, {"ones", l_ones}, {"full", l_full}, {"arange", l_arange},
    {"linspace", l_linspace}, {"eye", l_eye}, {"rand", l_rand}, {"randn", l_randn}, {"randint", l_randint},
    {"cat", l_cat}, {"stack", l_stack},
    {"Generator", l_generator_new}, {"default_generator", l_default_generator}, {"manual_seed", l_manual_seed},
    {"get_rng_state", l_generator_get_state}, {"set_rng_state", l_set_rng_state},
    {"set_num_threads", l_set_num_threads}, {"get_num_threads", l_get_num_threads},
    {"memory_allocated", l_memory_allocated}, {"raw_sgemm_gflops", l_raw_sgemm_gflops}, {"blas_info", l_blas_info},
    {"cpu_simd", l_cpu_simd}, {"fma_peak", l_fma_peak},
    {"clock", l_clock}, {"set_grad_enabled", l_set_grad_enabled}, {"is_grad_enabled", l_is_grad_enabled},
    {"_debug_corrupt_backward", l_debug_corrupt_backward}, {"empty_cache", l_empty_cache}, {"cached_bytes", l_cached_bytes},
    {NULL, NULL}};

static const luaL_Reg generator_methods[] = {
    {"seed", l_generator_seed}, {"get_state", l_generator_get_state}, {"set_state", l_generator_set_state},
    {NULL, NULL}};

static const struct {
  const char *name;
  df_binary_op op;
} operators[] = {{"__add", DF_ADD}, {"__sub", DF_SUB}, {"__mul", DF_MUL}, {"__div", DF_DIV}, {"__pow", DF_POW}};

void df_lua_register(lua_State *L, int module, int methods, const luaL_Reg *both, const luaL_Reg *module_only) {
  for (const luaL_Reg *r = both; r && r->name; r++) {
    lua_pushcfunction(L, r->func);
    lua_pushvalue(L, -1);
    lua_setfield(L, methods, r->name);
    lua_setfield(L, module, r->name);
  }
  for (const luaL_Reg *r = module_only; r && r->name; r++) {
    lua_pushcfunction(L, r->func);
    lua_setfield(L, module, r->name);
  }
}

/* Sets name = closure(fn, op) in the tables at `methods` and `module`. */
static void register_op(lua_State *L, int methods, int module, const char *name, lua_CFunction fn, int op) {
  lua_pushinteger(L, op);
  lua_pushcclosure(L, fn, 1);
  lua_pushvalue(L, -1);
  lua_setfield(L, methods, name);
  lua_setfield(L, module, name);
}

int luaopen_diffusion_core(lua_State *L);

int luaopen_diffusion_core(lua_State *L) {
#if defined(__GLIBC__)
  /* A training step frees and reallocates the same few hundred buffers. With
   * glibc's defaults, those over 128 KiB are mmapped and unmapped each time,
   * and the heap top is trimmed, so every step pays a page fault per 4 KiB
   * (a third of a U-Net step on some machines). Keep freed memory for reuse;
   * buffers over 32 MiB go through the library's own buffer cache. */
  mallopt(M_MMAP_THRESHOLD, 32 << 20);
  mallopt(M_TRIM_THRESHOLD, 1 << 30);
#endif
  luaL_newlib(L, module_functions);
  int module = lua_gettop(L);
  lua_newtable(L); /* methods */
  int methods = lua_gettop(L);
  luaL_setfuncs(L, tensor_functions, 0);
  for (const luaL_Reg *r = tensor_functions; r->name; r++) {
    lua_getfield(L, methods, r->name);
    lua_setfield(L, module, r->name);
  }
  char name[32];
  for (int op = 0; op < DF_UNARY_COUNT; op++) {
    register_op(L, methods, module, df_unary_names[op], l_unary, op);
    snprintf(name, sizeof name, "%s_", df_unary_names[op]);
    register_op(L, methods, module, name, l_unary_, op);
  }
  for (int op = 0; op < DF_BINARY_COUNT; op++) {
    register_op(L, methods, module, df_binary_names[op], l_binary, op);
    snprintf(name, sizeof name, "%s_", df_binary_names[op]);
    register_op(L, methods, module, name, l_binary_, op);
  }
  for (int op = 0; op < DF_REDUCE_COUNT; op++) register_op(L, methods, module, df_reduce_names[op], l_reduce, op);
  register_op(L, methods, module, "argmax", l_argreduce, DF_MAX);
  register_op(L, methods, module, "argmin", l_argreduce, DF_MIN);
  lua_pushboolean(L, 1);
  lua_pushcclosure(L, l_view, 1);
  lua_setfield(L, methods, "view");
  lua_pushboolean(L, 0);
  lua_pushcclosure(L, l_view, 1);
  lua_pushvalue(L, -1);
  lua_setfield(L, methods, "reshape");
  lua_setfield(L, module, "reshape");

  df_lua_open_nn(L, module, methods);
  df_lua_open_conv(L, module, methods);
  df_lua_open_loss(L, module, methods);
  df_lua_open_optim(L, module, methods);
  df_lua_open_io(L, module, methods);
  df_lua_open_safetensors(L, module, methods);
  df_lua_open_image(L, module, methods);
  df_lua_open_schedule(L, module, methods);
  df_lua_open_plot(L, module, methods);
  df_lua_open_unet(L, module, methods);
  df_lua_open_debug(L, module, methods);

  luaL_newmetatable(L, TENSOR_MT);
  int mt = lua_gettop(L);
  for (size_t i = 0; i < sizeof operators / sizeof operators[0]; i++) {
    lua_pushinteger(L, operators[i].op);
    lua_pushcclosure(L, l_binary, 1);
    lua_setfield(L, mt, operators[i].name);
  }
  lua_pushinteger(L, DF_NEG);
  lua_pushcclosure(L, l_unary, 1);
  lua_setfield(L, mt, "__unm");
  lua_pushcfunction(L, l_len);
  lua_setfield(L, mt, "__len");
  lua_pushcfunction(L, l_release);
  lua_setfield(L, mt, "__gc");
  lua_pushcfunction(L, l_release);
  lua_setfield(L, mt, "__close");
  lua_pushvalue(L, methods);
  lua_pushcclosure(L, l_index, 1);
  lua_setfield(L, mt, "__index");
  lua_pushcfunction(L, l_newindex);
  lua_setfield(L, mt, "__newindex");
  lua_pushvalue(L, methods);
  lua_setfield(L, module, "Tensor"); /* the methods table: the Lua layer adds to it */
  lua_pushvalue(L, mt);
  lua_setfield(L, module, "_Tensor_mt");
  lua_pop(L, 1);

  luaL_newmetatable(L, SHAPE_MT);
  lua_pushcfunction(L, l_shape_tostring);
  lua_setfield(L, -2, "__tostring");
  lua_pushcfunction(L, l_shape_eq);
  lua_setfield(L, -2, "__eq");
  lua_pop(L, 1);

  luaL_newmetatable(L, GENERATOR_MT);
  luaL_newlib(L, generator_methods);
  lua_setfield(L, -2, "__index");
  lua_pushcfunction(L, l_generator_tostring);
  lua_setfield(L, -2, "__tostring");
  lua_pop(L, 1);

  lua_settop(L, module);
  return 1;
}
