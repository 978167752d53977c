/* lua_conv.c — the Lua binding of the conv ops. */
#include "binding.h"

void df_lua_open_conv(lua_State *L, int module, int methods) {
  df_lua_register(L, module, methods, NULL, NULL);
}
