/* lua_safetensors.c — the Lua binding of the safetensors functions.
 *
 *   D.save_safetensors(path, tensors [, metadata]) -> true, or nil, message
 *     tensors: a table name -> tensor (any layout); metadata: a table of
 *     string -> string (numbers are converted as tostring does). Misuse (a
 *     non-tensor value, a bad name or metadata type) raises; a file system
 *     failure (no such directory, disk full) returns nil, message. Either
 *     way an old file at path is left untouched.
 *   D.load_safetensors(path) -> tensors, metadata
 *     a file that can't be opened gives nil, message; a malformed one raises
 *     an error naming the file and the problem.
 */
#include <errno.h>
#include <stdio.h>
#include <string.h>

#include "binding.h"

#define CHECKPOINT_MT "diffusion.SafetensorsCheckpoint" /* internal: owns a loaded file until Lua has it */

typedef struct {
  df_safetensors *ck; /* NULL when empty */
} checkpoint_box;

static int checkpoint_gc(lua_State *L) {
  checkpoint_box *box = luaL_checkudata(L, 1, CHECKPOINT_MT);
  df_safetensors_free(box->ck);
  box->ck = NULL;
  return 0;
}

/* The string at idx (a string or a number, converted as tostring does) as
 * a C string anchored in the table at `anchor`; raises for other types or
 * embedded NULs. `what` names the value in errors. */
static const char *anchored_string(lua_State *L, int idx, int anchor, lua_Integer *slot, const char *what) {
  int type = lua_type(L, idx);
  if (type != LUA_TSTRING && type != LUA_TNUMBER)
    luaL_error(L, "save_safetensors: %s must be a string or a number, got %s", what, luaL_typename(L, idx));
  size_t len;
  const char *s = luaL_tolstring(L, idx, &len); /* pushes a copy: the key in place stays untouched */
  if (strlen(s) != len) luaL_error(L, "save_safetensors: %s contains a NUL character", what);
  lua_rawseti(L, anchor, ++*slot);
  return s; /* kept alive by the anchor table */
}

static int l_save_safetensors(lua_State *L) {
  const char *path = luaL_checkstring(L, 1);
  luaL_checktype(L, 2, LUA_TTABLE);
  if (!lua_isnoneornil(L, 3)) luaL_checktype(L, 3, LUA_TTABLE);
  lua_settop(L, 3);

  /* first pass: check every entry and count */
  lua_Integer n = 0, nmeta = 0;
  lua_pushnil(L);
  while (lua_next(L, 2)) {
    if (lua_type(L, -2) != LUA_TSTRING)
      return luaL_error(L, "save_safetensors: tensor names must be strings, got a %s key", luaL_typename(L, -2));
    size_t len;
    const char *name = lua_tolstring(L, -2, &len);
    if (strlen(name) != len) return luaL_error(L, "save_safetensors: a tensor name contains a NUL character");
    tensor_box *box = luaL_testudata(L, -1, TENSOR_MT);
    if (!box) return luaL_error(L, "save_safetensors: tensors[\"%s\"] is a %s, not a tensor", name, luaL_typename(L, -1));
    if (!box->t) return luaL_error(L, "save_safetensors: tensors[\"%s\"] is closed", name);
    lua_pop(L, 1);
    n++;
  }
  if (lua_istable(L, 3)) {
    lua_pushnil(L);
    while (lua_next(L, 3)) {
      lua_pop(L, 1);
      nmeta++;
    }
  }

  /* scratch arrays, owned by Lua; converted metadata strings anchored in a table */
  const char **names = lua_newuserdatauv(L, (size_t)(2 * n + 2 * nmeta + 1) * sizeof(void *), 0);
  const df_tensor **tensors = (const df_tensor **)(names + n);
  const char **keys = (const char **)(tensors + n), **values = keys + nmeta;
  lua_createtable(L, (int)(2 * nmeta), 0);
  int anchor = lua_gettop(L);
  lua_Integer i = 0, anchored = 0;
  lua_pushnil(L);
  while (lua_next(L, 2)) {
    names[i] = lua_tostring(L, -2);
    tensors[i++] = ((tensor_box *)lua_touserdata(L, -1))->t;
    lua_pop(L, 1);
  }
  i = 0;
  if (lua_istable(L, 3)) {
    lua_pushnil(L);
    while (lua_next(L, 3)) {
      keys[i] = anchored_string(L, -2, anchor, &anchored, "a metadata key");
      const char *key = keys[i];
      char what[96];
      snprintf(what, sizeof what, "metadata[\"%.60s\"]", key);
      values[i++] = anchored_string(L, -1, anchor, &anchored, what);
      lua_pop(L, 1);
    }
  }
  /* a failed save raises, so a training loop can't lose a checkpoint unnoticed */
  df_status st = df_safetensors_save(path, (int64_t)n, names, tensors, (int64_t)nmeta, keys, values);
  if (st) return fail(L);
  lua_pushboolean(L, 1);
  return 1;
}

static int l_load_safetensors(lua_State *L) {
  const char *path = luaL_checkstring(L, 1);
  FILE *probe = fopen(path, "rb");
  if (!probe) {
    int err = errno;
    lua_pushnil(L);
    lua_pushfstring(L, "load_safetensors: cannot open %s: %s", path, strerror(err));
    return 2;
  }
  fclose(probe);
  checkpoint_box *box = lua_newuserdatauv(L, sizeof *box, 0);
  box->ck = NULL;
  luaL_setmetatable(L, CHECKPOINT_MT);
  if (df_safetensors_load(&box->ck, path)) return fail(L);
  df_safetensors *ck = box->ck;
  lua_createtable(L, 0, ck->ntensors < 1 << 24 ? (int)ck->ntensors : 1 << 24);
  for (int64_t i = 0; i < ck->ntensors; i++) {
    df_tensor **slot = new_slot(L);
    *slot = ck->tensors[i]; /* the userdata owns it now */
    ck->tensors[i] = NULL;
    lua_setfield(L, -2, ck->names[i]);
  }
  lua_createtable(L, 0, ck->nmeta < 1 << 24 ? (int)ck->nmeta : 1 << 24);
  for (int64_t i = 0; i < ck->nmeta; i++) {
    lua_pushstring(L, ck->meta_values[i]);
    lua_setfield(L, -2, ck->meta_keys[i]);
  }
  df_safetensors_free(ck);
  box->ck = NULL;
  account_memory(L);
  return 2;
}

void df_lua_open_safetensors(lua_State *L, int module, int methods) {
  static const luaL_Reg module_only[] = {
      {"save_safetensors", l_save_safetensors}, {"load_safetensors", l_load_safetensors}, {NULL, NULL}};
  if (luaL_newmetatable(L, CHECKPOINT_MT)) {
    lua_pushcfunction(L, checkpoint_gc);
    lua_setfield(L, -2, "__gc");
    lua_pushcfunction(L, checkpoint_gc);
    lua_setfield(L, -2, "__close");
  }
  lua_pop(L, 1);
  df_lua_register(L, module, methods, NULL, module_only);
}
