/* lua_io.c — the Lua binding of the io ops. */
#include "binding.h"

void df_lua_open_io(lua_State *L, int module, int methods) {
  df_lua_register(L, module, methods, NULL, NULL);
}
