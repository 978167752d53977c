/* lua_unet.c — the C U-Net as a userdata; lua/diffusion/unet.lua wraps it
 * as an nn.Module. */
#include <string.h>

#include "binding.h"

#define UNET_MT "diffusion.UNetCore"

typedef struct {
  df_unet *net;
} unet_box;

static df_unet *check_unet(lua_State *L, int arg) {
  unet_box *box = luaL_checkudata(L, arg, UNET_MT);
  if (!box->net) luaL_argerror(L, arg, "UNet has been freed");
  return box->net;
}

static int int_field(lua_State *L, int table, const char *key, int def) {
  lua_getfield(L, table, key);
  int isint;
  lua_Integer v = lua_tointegerx(L, -1, &isint);
  if (lua_isnil(L, -1)) v = def;
  else if (!isint) luaL_error(L, "UNet: %s must be an integer, got %s", key, luaL_typename(L, -1));
  lua_pop(L, 1);
  if (v < -1000000 || v > 1000000) luaL_error(L, "UNet: %s = %I is out of range", key, (lua_Integer)v);
  return (int)v;
}

/* reads a list of small integers into out; returns the count */
static int int_list(lua_State *L, int table, const char *key, int *out, int max) {
  lua_getfield(L, table, key);
  if (lua_isnil(L, -1)) {
    lua_pop(L, 1);
    return -1;
  }
  if (!lua_istable(L, -1)) luaL_error(L, "UNet: %s must be a list of integers", key);
  int n = (int)lua_rawlen(L, -1);
  if (n > max) luaL_error(L, "UNet: %s has %d entries, at most %d allowed", key, n, max);
  for (int i = 0; i < n; i++) {
    lua_rawgeti(L, -1, i + 1);
    int isint;
    lua_Integer v = lua_tointegerx(L, -1, &isint);
    if (!isint || v < 0 || v > 1000000) luaL_error(L, "UNet: %s[%d] must be a non-negative integer", key, i + 1);
    out[i] = (int)v;
    lua_pop(L, 1);
  }
  lua_pop(L, 1);
  return n;
}

/* core.unet_new(config [, generator]) */
static int l_unet_new(lua_State *L) {
  luaL_checktype(L, 1, LUA_TTABLE);
  df_generator *gen = opt_generator(L, 2);
  df_unet_config c;
  memset(&c, 0, sizeof c);
  c.in_channels = int_field(L, 1, "in_channels", 1);
  c.out_channels = int_field(L, 1, "out_channels", c.in_channels);
  c.channels = int_field(L, 1, "channels", 64);
  c.res_blocks = int_field(L, 1, "res_blocks", 2);
  c.heads = int_field(L, 1, "heads", 1);
  c.groups = int_field(L, 1, "groups", 32);
  c.num_classes = int_field(L, 1, "num_classes", 0);
  c.image_size = int_field(L, 1, "image_size", 32);
  lua_getfield(L, 1, "dropout");
  c.dropout = (float)luaL_optnumber(L, -1, 0.1);
  lua_pop(L, 1);
  c.nmult = int_list(L, 1, "mult", c.mult, DF_UNET_MAX_LEVELS);
  if (c.nmult < 0) {
    c.nmult = 3;
    c.mult[0] = 1;
    c.mult[1] = 2;
    c.mult[2] = 2;
  }
  c.nattn = int_list(L, 1, "attention", c.attn_res, DF_UNET_MAX_LEVELS);
  if (c.nattn < 0) {
    c.nattn = 1;
    c.attn_res[0] = 8;
  }
  unet_box *box = lua_newuserdatauv(L, sizeof *box, 0);
  box->net = NULL;
  luaL_setmetatable(L, UNET_MT);
  if (df_unet_new(&box->net, &c, gen)) return fail(L);
  return 1;
}

/* core.unet_params(net) -> { {name, tensor}, ... } */
static int l_unet_params(lua_State *L) {
  df_unet *net = check_unet(L, 1);
  int n = df_unet_num_params(net);
  lua_createtable(L, n, 0);
  for (int i = 0; i < n; i++) {
    lua_createtable(L, 2, 0);
    lua_pushstring(L, df_unet_param_name(net, i));
    lua_rawseti(L, -2, 1);
    df_tensor **slot = new_slot(L);
    *slot = df_unet_param(net, i);
    df_tensor_retain(*slot);
    lua_rawseti(L, -2, 2);
    lua_rawseti(L, -2, i + 1);
  }
  return 1;
}

/* core.unet_config(net) -> the config as a table */
static int l_unet_config(lua_State *L) {
  const df_unet_config *c = df_unet_get_config(check_unet(L, 1));
  lua_newtable(L);
#define SET_INT(field)          \
  lua_pushinteger(L, c->field); \
  lua_setfield(L, -2, #field)
  SET_INT(in_channels);
  SET_INT(out_channels);
  SET_INT(channels);
  SET_INT(res_blocks);
  SET_INT(heads);
  SET_INT(groups);
  SET_INT(num_classes);
  SET_INT(image_size);
#undef SET_INT
  lua_pushnumber(L, c->dropout);
  lua_setfield(L, -2, "dropout");
  lua_createtable(L, c->nmult, 0);
  for (int i = 0; i < c->nmult; i++) {
    lua_pushinteger(L, c->mult[i]);
    lua_rawseti(L, -2, i + 1);
  }
  lua_setfield(L, -2, "mult");
  lua_createtable(L, c->nattn, 0);
  for (int i = 0; i < c->nattn; i++) {
    lua_pushinteger(L, c->attn_res[i]);
    lua_rawseti(L, -2, i + 1);
  }
  lua_setfield(L, -2, "attention");
  return 1;
}

/* core.unet_forward(net, x, t, y_or_nil, train [, generator]); y holds 1-based labels */
static int l_unet_forward(lua_State *L) {
  df_unet *net = check_unet(L, 1);
  df_tensor *x = check_tensor(L, 2), *t = check_tensor(L, 3);
  df_tensor *y = lua_isnoneornil(L, 4) ? NULL : check_tensor(L, 4);
  bool train = lua_toboolean(L, 5);
  df_generator *gen = opt_generator(L, 6);
  df_tensor **y0 = NULL;
  if (y) { /* 0-based labels, in a userdata owned by the stack */
    y0 = new_slot(L);
    bool previous = df_set_grad_enabled(false);
    df_status st = df_binary_scalar(DF_SUB, y0, y, 1.0f, false);
    df_set_grad_enabled(previous);
    if (st) return fail(L);
  }
  df_tensor **slot = new_slot(L);
  return result(L, df_unet_forward(slot, net, x, t, y0 ? *y0 : NULL, train, gen));
}

static int l_unet_gc(lua_State *L) {
  unet_box *box = luaL_checkudata(L, 1, UNET_MT);
  df_unet_free(box->net);
  box->net = NULL;
  return 0;
}

void df_lua_open_unet(lua_State *L, int module, int methods) {
  static const luaL_Reg module_only[] = {
      {"unet_new", l_unet_new}, {"unet_params", l_unet_params}, {"unet_config", l_unet_config},
      {"unet_forward", l_unet_forward}, {NULL, NULL}};
  df_lua_register(L, module, methods, NULL, module_only);
  luaL_newmetatable(L, UNET_MT);
  lua_pushcfunction(L, l_unet_gc);
  lua_setfield(L, -2, "__gc");
  lua_pop(L, 1);
}
