/* lua_nn.c — the Lua binding of the nn ops. */
#include "binding.h"

void df_lua_open_nn(lua_State *L, int module, int methods) {
  df_lua_register(L, module, methods, NULL, NULL);
}
