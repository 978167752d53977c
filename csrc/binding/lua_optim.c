/* lua_optim.c — the Lua binding of the optimizer kernels (csrc/ops/optim.c).
 * The underscore functions are the low-level steps that lua/diffusion/optim.lua
 * drives (one call per parameter); lerp_ is public:
 *   D._sgd_step(p, g, buf_or_nil, lr, momentum, dampening, weight_decay, nesterov, first)
 *   D._adam_step(p, g, m, v, step, lr, beta1, beta2, eps, weight_decay, decoupled)
 *   D.lerp_(a, b, w) and a:lerp_(b, w): a += w * (b - a), returns a */
#include "binding.h"

static bool check_boolean(lua_State *L, int arg) {
  luaL_checktype(L, arg, LUA_TBOOLEAN);
  return lua_toboolean(L, arg);
}

static int l_sgd_step(lua_State *L) {
  df_tensor *p = check_tensor(L, 1), *g = check_tensor(L, 2);
  df_tensor *buf = lua_isnil(L, 3) ? NULL : check_tensor(L, 3);
  float lr = check_float(L, 4), momentum = check_float(L, 5), dampening = check_float(L, 6), wd = check_float(L, 7);
  bool nesterov = check_boolean(L, 8), first = check_boolean(L, 9);
  if (df_sgd_step(p, g, buf, lr, momentum, dampening, wd, nesterov, first)) return fail(L);
  return 0;
}

static int l_adam_step(lua_State *L) {
  df_tensor *p = check_tensor(L, 1), *g = check_tensor(L, 2), *m = check_tensor(L, 3), *v = check_tensor(L, 4);
  int64_t step = check_int(L, 5);
  float lr = check_float(L, 6), beta1 = check_float(L, 7), beta2 = check_float(L, 8), eps = check_float(L, 9);
  float wd = check_float(L, 10);
  bool decoupled = check_boolean(L, 11);
  if (df_adam_step(p, g, m, v, step, lr, beta1, beta2, eps, wd, decoupled)) return fail(L);
  return 0;
}

static int l_lerp_(lua_State *L) {
  df_tensor *a = check_tensor(L, 1), *b = check_tensor(L, 2);
  float w = check_float(L, 3);
  if (df_lerp_(a, b, w)) return fail(L);
  lua_settop(L, 1);
  return 1;
}

static const luaL_Reg both[] = {{"lerp_", l_lerp_}, {NULL, NULL}};
static const luaL_Reg module_only[] = {{"_sgd_step", l_sgd_step}, {"_adam_step", l_adam_step}, {NULL, NULL}};

void df_lua_open_optim(lua_State *L, int module, int methods) {
  df_lua_register(L, module, methods, both, module_only);
}
