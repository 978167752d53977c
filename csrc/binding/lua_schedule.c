/* lua_schedule.c — the Lua binding of the schedule functions. */
#include "binding.h"

void df_lua_open_schedule(lua_State *L, int module, int methods) {
  df_lua_register(L, module, methods, NULL, NULL);
}
