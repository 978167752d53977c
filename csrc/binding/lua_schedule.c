/* lua_schedule.c — the Lua binding of the noise schedules and sampler steps
 * (csrc/diffusion/schedule.c). Low-level functions that lua/diffusion/
 * schedule.lua and sample.lua drive; timesteps are 1-based here as in C's
 * tables (t = 1..T):
 *   D._schedule(kind, T, params, op) -> {betas = tensor, ..., _values = {betas = {doubles}, ...}}
 *       params: a list of numbers (or a 1-d tensor, for "betas" / "alpha_bar")
 *   D._schedule_gather(table, t, op) -> (N) table[t[n]]
 *   D._schedule_combine(a, x [, b, y [, op]]) -> a[n] x + b[n] y (a, b numbers or (N) tensors)
 *   D._ddpm_step(xt, x0, noise_or_nil, alpha_bar_t, alpha_bar_prev, beta_tilde)
 *   D._ddim_step(xt, x0, noise_or_nil, alpha_bar_t, alpha_bar_prev, eta) */
#include <string.h>

#include "binding.h"

#define SCHEDULE_BOX_MT "diffusion.ScheduleBox"

/* __gc of the box that owns a df_schedule while the binding fills Lua tables
 * (any of which may raise a memory error) */
static int l_schedule_box_gc(lua_State *L) {
  df_schedule_free(luaL_checkudata(L, 1, SCHEDULE_BOX_MT));
  return 0;
}

static int l_schedule(lua_State *L) {
  const char *kind_name = luaL_checkstring(L, 1);
  int64_t T = check_int(L, 2);
  const char *op = luaL_optstring(L, 4, "schedule");
  int kind = 0;
  while (kind < DF_SCHEDULE_KIND_COUNT && strcmp(df_schedule_kind_names[kind], kind_name) != 0) kind++;
  if (kind == DF_SCHEDULE_KIND_COUNT) return luaL_argerror(L, 1, lua_pushfstring(L, "unknown schedule kind '%s'", kind_name));
  int64_t n;
  double *params = check_numbers(L, 3, &n);
  df_schedule *s = lua_newuserdatauv(L, sizeof *s, 0);
  memset(s, 0, sizeof *s);
  luaL_setmetatable(L, SCHEDULE_BOX_MT);
  int box = lua_gettop(L);
  if (df_schedule_init(s, (df_schedule_kind)kind, T, params, n, op)) return fail(L);
  lua_createtable(L, 0, DF_SCHED_TABLE_COUNT + 1); /* the result */
  lua_createtable(L, 0, DF_SCHED_TABLE_COUNT);     /* _values */
  for (int k = 0; k < DF_SCHED_TABLE_COUNT; k++) {
    df_tensor **slot = new_slot(L);
    if (df_schedule_tensor(slot, s, (df_schedule_table)k)) return fail(L);
    lua_setfield(L, -3, df_schedule_table_names[k]);
    lua_createtable(L, (int)T, 0);
    for (int64_t t = 1; t <= T; t++) {
      lua_pushnumber(L, df_schedule_value(s, (df_schedule_table)k, t));
      lua_rawseti(L, -2, (lua_Integer)t);
    }
    lua_setfield(L, -2, df_schedule_table_names[k]);
  }
  lua_setfield(L, -2, "_values");
  df_schedule_free(s); /* now, rather than at the next collection */
  lua_remove(L, box);
  account_memory(L);
  return 1;
}

static int l_schedule_gather(lua_State *L) {
  df_tensor *table = check_tensor(L, 1), *t = check_tensor(L, 2);
  const char *op = luaL_optstring(L, 3, "schedule_gather");
  df_tensor **slot = new_slot(L);
  return result(L, df_schedule_gather(slot, table, t, 1, op));
}

/* a tensor, or a number made into a one-element tensor kept on the stack */
static df_tensor *coef_arg(lua_State *L, int arg) {
  df_tensor *t = test_tensor(L, arg);
  if (t) return t;
  if (lua_type(L, arg) != LUA_TNUMBER)
    luaL_argerror(L, arg, lua_pushfstring(L, "expected a number or a Tensor, got %s", luaL_typename(L, arg)));
  float v = check_float(L, arg);
  df_tensor **slot = new_slot(L);
  int64_t one = 1;
  if (df_tensor_full(slot, 1, &one, v)) fail(L);
  lua_replace(L, arg);
  return *slot;
}

static int l_schedule_combine(lua_State *L) {
  lua_settop(L, 5);
  df_tensor *x = check_tensor(L, 2);
  df_tensor *y = lua_isnil(L, 4) ? NULL : check_tensor(L, 4);
  const char *op = luaL_optstring(L, 5, "schedule_combine");
  df_tensor *a = coef_arg(L, 1);
  df_tensor *b = y ? coef_arg(L, 3) : NULL;
  df_tensor **slot = new_slot(L);
  return result(L, df_schedule_combine(slot, a, x, b, y, op));
}

static int l_ddpm_step(lua_State *L) {
  df_tensor *xt = check_tensor(L, 1), *x0 = check_tensor(L, 2);
  df_tensor *noise = lua_isnoneornil(L, 3) ? NULL : check_tensor(L, 3);
  double ab_t = luaL_checknumber(L, 4), ab_prev = luaL_checknumber(L, 5);
  luaL_checktype(L, 6, LUA_TBOOLEAN);
  bool beta_tilde = lua_toboolean(L, 6);
  df_tensor **slot = new_slot(L);
  return result(L, df_ddpm_step(slot, xt, x0, noise, ab_t, ab_prev, beta_tilde));
}

static int l_ddim_step(lua_State *L) {
  df_tensor *xt = check_tensor(L, 1), *x0 = check_tensor(L, 2);
  df_tensor *noise = lua_isnoneornil(L, 3) ? NULL : check_tensor(L, 3);
  double ab_t = luaL_checknumber(L, 4), ab_prev = luaL_checknumber(L, 5), eta = luaL_checknumber(L, 6);
  df_tensor **slot = new_slot(L);
  return result(L, df_ddim_step(slot, xt, x0, noise, ab_t, ab_prev, eta));
}

static const luaL_Reg module_only[] = {
    {"_schedule", l_schedule}, {"_schedule_gather", l_schedule_gather}, {"_schedule_combine", l_schedule_combine},
    {"_ddpm_step", l_ddpm_step}, {"_ddim_step", l_ddim_step}, {NULL, NULL}};

void df_lua_open_schedule(lua_State *L, int module, int methods) {
  luaL_newmetatable(L, SCHEDULE_BOX_MT);
  lua_pushcfunction(L, l_schedule_box_gc);
  lua_setfield(L, -2, "__gc");
  lua_pop(L, 1);
  df_lua_register(L, module, methods, NULL, module_only);
}
