/* lua_optim.c — the Lua binding of the optim ops. */
#include "binding.h"

void df_lua_open_optim(lua_State *L, int module, int methods) {
  df_lua_register(L, module, methods, NULL, NULL);
}
