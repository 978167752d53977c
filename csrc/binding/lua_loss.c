/* lua_loss.c — the Lua binding of the loss ops. */
#include "binding.h"

void df_lua_open_loss(lua_State *L, int module, int methods) {
  df_lua_register(L, module, methods, NULL, NULL);
}
