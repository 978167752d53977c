/* lua_conv.c — the Lua binding of the conv ops:
 *   D.conv2d(x, w [, b] [, opts])   opts = {stride =, padding =, dilation =, groups =}
 *   D.avg_pool2d(x, kernel [, stride [, padding]])
 *   D.upsample_nearest2d(x, scale)
 * and the same as methods of x. A size pair is one integer (both dims) or
 * {h, w}. The core checks the values (>= 1 and so on); here only that they
 * are integers that fit an int. */
#include <limits.h>
#include <string.h>

#include "binding.h"

/* The integer at stack index idx into *v; `arg` and `what` name it in errors. */
static void to_int(lua_State *L, int arg, int idx, const char *what, int *v) {
  int isint;
  lua_Integer i = lua_tointegerx(L, idx, &isint);
  if (!isint || lua_type(L, idx) != LUA_TNUMBER)
    luaL_argerror(L, arg, lua_pushfstring(L, "%s must be an integer, got %s", what, luaL_typename(L, idx)));
  if (i < INT_MIN || i > INT_MAX) luaL_argerror(L, arg, lua_pushfstring(L, "%s %I is out of range", what, i));
  *v = (int)i;
}

/* The pair at stack index idx: an integer for both dims, or {h, w}. */
static void to_pair(lua_State *L, int arg, int idx, const char *what, int p[2]) {
  idx = lua_absindex(L, idx);
  if (lua_type(L, idx) == LUA_TNUMBER) {
    to_int(L, arg, idx, what, &p[0]);
    p[1] = p[0];
    return;
  }
  if (!lua_istable(L, idx) || lua_rawlen(L, idx) != 2)
    luaL_argerror(L, arg, lua_pushfstring(L, "%s must be an integer or {h, w}, got %s", what,
                                          lua_istable(L, idx) ? "a table of another length" : luaL_typename(L, idx)));
  for (int i = 0; i < 2; i++) {
    lua_rawgeti(L, idx, i + 1);
    to_int(L, arg, -1, what, &p[i]);
    lua_pop(L, 1);
  }
}

static void check_pair(lua_State *L, int arg, const char *what, int p[2]) { to_pair(L, arg, arg, what, p); }

/* opts = {stride = n or {sh, sw}, padding = ..., dilation = ..., groups = n} */
static void check_conv_opts(lua_State *L, int arg, df_conv2d_params *p) {
  if (lua_isnoneornil(L, arg)) return;
  luaL_checktype(L, arg, LUA_TTABLE);
  lua_pushnil(L);
  while (lua_next(L, arg)) {
    const char *key = lua_type(L, -2) == LUA_TSTRING ? lua_tostring(L, -2) : NULL;
    if (key && strcmp(key, "stride") == 0) to_pair(L, arg, -1, "stride", p->stride);
    else if (key && strcmp(key, "padding") == 0) to_pair(L, arg, -1, "padding", p->padding);
    else if (key && strcmp(key, "dilation") == 0) to_pair(L, arg, -1, "dilation", p->dilation);
    else if (key && strcmp(key, "groups") == 0) to_int(L, arg, -1, "groups", &p->groups);
    else
      luaL_argerror(L, arg, lua_pushfstring(L, "unknown option '%s' (expected stride, padding, dilation or groups)",
                                            key ? key : luaL_typename(L, -2)));
    lua_pop(L, 1);
  }
}

/* D.conv2d(x, w [, b] [, opts]); opts may take b's place when there is no bias */
static int l_conv2d(lua_State *L) {
  df_tensor *x = check_tensor(L, 1), *w = check_tensor(L, 2), *b = NULL;
  int opts = 4;
  if (lua_istable(L, 3)) {
    opts = 3;
    if (!lua_isnone(L, 4)) luaL_argerror(L, 4, "nothing may follow the options table");
  } else if (!lua_isnoneornil(L, 3)) {
    b = check_tensor(L, 3);
  }
  df_conv2d_params p = {.stride = {1, 1}, .padding = {0, 0}, .dilation = {1, 1}, .groups = 1};
  check_conv_opts(L, opts, &p);
  df_tensor **slot = new_slot(L);
  return result(L, df_conv2d(slot, x, w, b, &p));
}

/* D.avg_pool2d(x, kernel [, stride [, padding]]); stride defaults to kernel */
static int l_avg_pool2d(lua_State *L) {
  df_tensor *x = check_tensor(L, 1);
  int kernel[2], stride[2], padding[2] = {0, 0};
  check_pair(L, 2, "kernel", kernel);
  if (lua_isnoneornil(L, 3)) memcpy(stride, kernel, sizeof stride);
  else check_pair(L, 3, "stride", stride);
  if (!lua_isnoneornil(L, 4)) check_pair(L, 4, "padding", padding);
  df_tensor **slot = new_slot(L);
  return result(L, df_avg_pool2d(slot, x, kernel, stride, padding));
}

/* D.upsample_nearest2d(x, scale) */
static int l_upsample_nearest2d(lua_State *L) {
  df_tensor *x = check_tensor(L, 1);
  int scale[2];
  check_pair(L, 2, "scale", scale);
  df_tensor **slot = new_slot(L);
  return result(L, df_upsample_nearest2d(slot, x, scale));
}

void df_lua_open_conv(lua_State *L, int module, int methods) {
  static const luaL_Reg both[] = {
      {"conv2d", l_conv2d}, {"avg_pool2d", l_avg_pool2d}, {"upsample_nearest2d", l_upsample_nearest2d}, {NULL, NULL}};
  df_lua_register(L, module, methods, both, NULL);
}
