/* lua_debug.c — test-only hooks, as core._debug (D._debug from Lua):
 *
 *   D._debug.fail_alloc_at(n [, "core" | "lua"])
 *     makes the n-th allocation from now fail (n >= 1; 0 or nil turns the
 *     hook off). "core" (the default) counts the C core's allocations
 *     (df_malloc and friends: tensors, workspaces, file buffers); "lua"
 *     counts the Lua allocator's growing requests, so the binding's own Lua
 *     allocations (userdata, tables, strings) fail too.
 *   D._debug.alloc_pending() -> allocations left before the armed failure
 *     (0 when it has happened or none is armed): an operation that
 *     succeeds with a count left met no failure at all.
 *   D._debug.reset() turns every hook off.
 *   D._debug.conv_direct(on) -> whether this CPU can run the direct
 *     convolution kernels; on = false sends every conv2d through im2col +
 *     GEMM (reset turns them back on), so specs compare the two paths.
 *   D._debug.conv_winograd(on) -> whether this CPU can run the Winograd
 *     kernel; on = false sends the 3x3 convolutions it would take to the
 *     direct kernel instead (reset turns it back on).
 *
 * They prove that every error path is clean (a Lua error, nothing leaked,
 * the process healthy afterwards), as Lua's own testes/memerr.lua does for
 * the interpreter. Nothing else in the library uses them.
 */
#include <stdbool.h>

#include "binding.h"

/* The Lua allocator is wrapped only while a "lua" failure is armed. Lua
 * retries a failed allocation once after an emergency collection, so the
 * armed request is refused twice: itself and its retry (the same request
 * again, right after). Any other request ends the refusals. */
static struct {
  lua_Alloc orig;
  void *orig_ud;
  bool installed;
  long countdown; /* growing requests left before the refused one */
  bool refusing;  /* the refused request's retry is still to come */
  void *ptr;      /* the refused request */
  size_t osize, nsize;
} lua_hook;

static void *failing_alloc(void *ud, void *ptr, size_t osize, size_t nsize) {
  (void)ud;
  bool grows = nsize > 0 && (ptr == NULL || nsize > osize); /* for a new block osize is its type */
  if (grows) {
    if (lua_hook.refusing && ptr == lua_hook.ptr && osize == lua_hook.osize && nsize == lua_hook.nsize) {
      lua_hook.refusing = false; /* the retry after the emergency collection */
      return NULL;
    }
    lua_hook.refusing = false;
    if (lua_hook.countdown > 0 && --lua_hook.countdown == 0) {
      lua_hook.refusing = true;
      lua_hook.ptr = ptr, lua_hook.osize = osize, lua_hook.nsize = nsize;
      return NULL;
    }
  }
  return lua_hook.orig(lua_hook.orig_ud, ptr, osize, nsize);
}

static void lua_hook_off(lua_State *L) {
  if (lua_hook.installed) lua_setallocf(L, lua_hook.orig, lua_hook.orig_ud);
  lua_hook.installed = false;
  lua_hook.countdown = 0;
  lua_hook.refusing = false;
}

static int l_fail_alloc_at(lua_State *L) {
  lua_Integer n = luaL_optinteger(L, 1, 0);
  static const char *const kinds[] = {"core", "lua", NULL};
  int kind = luaL_checkoption(L, 2, "core", kinds);
  luaL_argcheck(L, n >= 0, 1, "the allocation count must be >= 0");
  df_alloc_fail_at(0);
  lua_hook_off(L);
  if (n == 0) return 0;
  if (kind == 0) {
    df_alloc_fail_at((long)n);
  } else {
    lua_hook.orig = lua_getallocf(L, &lua_hook.orig_ud);
    lua_hook.countdown = (long)n;
    lua_hook.installed = true;
    lua_setallocf(L, failing_alloc, NULL);
  }
  return 0;
}

static int l_alloc_pending(lua_State *L) {
  lua_pushinteger(L, lua_hook.installed ? lua_hook.countdown : df_alloc_fail_pending());
  return 1;
}

static int l_reset(lua_State *L) {
  df_alloc_fail_at(0);
  lua_hook_off(L);
  df_debug_conv_direct(true);
  df_debug_conv_winograd(true);
  return 0;
}

static int l_conv_direct(lua_State *L) {
  luaL_checktype(L, 1, LUA_TBOOLEAN);
  lua_pushboolean(L, df_debug_conv_direct(lua_toboolean(L, 1)));
  return 1;
}

static int l_conv_winograd(lua_State *L) {
  luaL_checktype(L, 1, LUA_TBOOLEAN);
  lua_pushboolean(L, df_debug_conv_winograd(lua_toboolean(L, 1)));
  return 1;
}

void df_lua_open_debug(lua_State *L, int module, int methods) {
  (void)methods;
  static const luaL_Reg hooks[] = {
      {"fail_alloc_at", l_fail_alloc_at}, {"alloc_pending", l_alloc_pending}, {"reset", l_reset},
      {"conv_direct", l_conv_direct}, {"conv_winograd", l_conv_winograd}, {NULL, NULL}};
  luaL_newlib(L, hooks);
  lua_setfield(L, module, "_debug");
}
