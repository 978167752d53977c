/* lua_safetensors.c — the Lua binding of the safetensors functions. */
#include "binding.h"

void df_lua_open_safetensors(lua_State *L, int module, int methods) {
  df_lua_register(L, module, methods, NULL, NULL);
}
