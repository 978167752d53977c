/* lua_image.c — the Lua binding of the image functions (io/image.c).
 *
 * Low-level entry points for lua/diffusion/image.lua, which parses the
 * option tables ({range = "[-1,1]", ...}) and builds grids and crops. They
 * are named with a leading underscore so `require "diffusion"` doesn't copy
 * them into D; users reach them as D.image.load / save / resize. */
#include <errno.h>
#include <stdio.h>
#include <string.h>

#include "binding.h"

/* core._image_load(path, channels, max_values, lo, hi) -> tensor, or nil,
 * message when the file can't be opened; a file that is not a readable
 * image (or is over the cap) raises. */
static int l_image_load(lua_State *L) {
  const char *path = luaL_checkstring(L, 1);
  lua_Integer channels = luaL_optinteger(L, 2, 0);
  lua_Integer max_values = luaL_optinteger(L, 3, 0);
  float lo = (float)luaL_optnumber(L, 4, 0), hi = (float)luaL_optnumber(L, 5, 255);
  luaL_argcheck(L, channels == 0 || channels == 1 || channels == 3, 2, "channels must be 1 or 3");
  luaL_argcheck(L, max_values >= 0, 3, "the size cap must be positive");
  FILE *probe = fopen(path, "rb");
  if (!probe) {
    int err = errno;
    lua_pushnil(L);
    lua_pushfstring(L, "image.load: cannot open %s: %s", path, strerror(err));
    return 2;
  }
  fclose(probe);
  df_tensor **slot = new_slot(L);
  return result(L, df_image_load(slot, path, (int)channels, (int64_t)max_values, lo, hi));
}

/* core._image_save_png(x, path, lo, hi) -> true, or nil, message when the
 * file system refuses (no such directory, disk full); a bad tensor raises. */
static int l_image_save_png(lua_State *L) {
  df_tensor *x = check_tensor(L, 1);
  const char *path = luaL_checkstring(L, 2);
  float lo = (float)luaL_optnumber(L, 3, -1), hi = (float)luaL_optnumber(L, 4, 1);
  df_status st = df_image_save_png(x, path, lo, hi);
  if (st == DF_EIO) {
    lua_pushnil(L);
    lua_pushstring(L, df_last_error());
    return 2;
  }
  if (st) return fail(L);
  lua_pushboolean(L, 1);
  return 1;
}

/* core._image_resize(x, h, w) -> tensor (..., h, w) */
static int l_image_resize(lua_State *L) {
  df_tensor *x = check_tensor(L, 1);
  int64_t h = check_int(L, 2), w = check_int(L, 3);
  df_tensor **slot = new_slot(L);
  return result(L, df_image_resize(slot, x, h, w));
}

void df_lua_open_image(lua_State *L, int module, int methods) {
  static const luaL_Reg module_only[] = {
      {"_image_load", l_image_load}, {"_image_save_png", l_image_save_png}, {"_image_resize", l_image_resize},
      {NULL, NULL}};
  df_lua_register(L, module, methods, NULL, module_only);
}
