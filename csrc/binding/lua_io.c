/* lua_io.c — the Lua binding of file formats. */
#include <stdio.h>

#include "binding.h"

/* D.load_idx(path) -> tensor of floats 0..255, or nil, message when the file
 * can't be opened; a malformed file raises. */
static int l_load_idx(lua_State *L) {
  const char *path = luaL_checkstring(L, 1);
  FILE *probe = fopen(path, "rb");
  if (!probe) {
    lua_pushnil(L);
    lua_pushfstring(L, "load_idx: cannot open %s", path);
    return 2;
  }
  fclose(probe);
  df_tensor **slot = new_slot(L);
  return result(L, df_idx_load(slot, path));
}

void df_lua_open_io(lua_State *L, int module, int methods) {
  static const luaL_Reg module_only[] = {{"load_idx", l_load_idx}, {NULL, NULL}};
  df_lua_register(L, module, methods, NULL, module_only);
}
