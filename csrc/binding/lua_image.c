/* lua_image.c — the Lua binding of the image functions. */
#include "binding.h"

void df_lua_open_image(lua_State *L, int module, int methods) {
  df_lua_register(L, module, methods, NULL, NULL);
}
