/* lua_io.c — the Lua binding of file formats. */
#include <dirent.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "binding.h"

/* D.load_idx(path) -> tensor of floats 0..255, or nil, message when the file
 * can't be opened; a malformed file raises. */
static int l_load_idx(lua_State *L) {
  const char *path = luaL_checkstring(L, 1);
  FILE *probe = fopen(path, "rb");
  if (!probe) {
    lua_pushnil(L);
    lua_pushfstring(L, "load_idx: cannot open %s", path);
    return 2;
  }
  fclose(probe);
  df_tensor **slot = new_slot(L);
  return result(L, df_idx_load(slot, path));
}

/* The open directory lives in a userdata, so an error while names are
 * pushed (out of memory) still closes it, through __gc. */
typedef struct {
  DIR *dir;
} dir_box;

static int l_dir_gc(lua_State *L) {
  dir_box *box = lua_touserdata(L, 1);
  if (box->dir) closedir(box->dir);
  box->dir = NULL;
  return 0;
}

/* D.list_dir(path) -> sorted list of entry names (no "." or ".."), or nil, message */
static int l_list_dir(lua_State *L) {
  const char *path = luaL_checkstring(L, 1);
  lua_settop(L, 1);
  dir_box *box = lua_newuserdatauv(L, sizeof *box, 0);
  box->dir = NULL;
  luaL_setmetatable(L, "diffusion.Dir");
  if (!(box->dir = opendir(path))) {
    lua_pushnil(L);
    lua_pushfstring(L, "list_dir: cannot open %s: %s", path, strerror(errno));
    return 2;
  }
  lua_newtable(L);
  lua_Integer n = 0;
  struct dirent *e;
  while ((e = readdir(box->dir)) != NULL) {
    if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0) continue;
    lua_pushstring(L, e->d_name);
    lua_rawseti(L, -2, ++n);
  }
  closedir(box->dir);
  box->dir = NULL;
  /* sorted by table.sort, so the order doesn't depend on the file system */
  lua_getglobal(L, "table");
  lua_getfield(L, -1, "sort");
  lua_pushvalue(L, -3);
  lua_call(L, 1, 0);
  lua_pop(L, 1);
  return 1;
}

void df_lua_open_io(lua_State *L, int module, int methods) {
  static const luaL_Reg module_only[] = {{"load_idx", l_load_idx}, {"list_dir", l_list_dir}, {NULL, NULL}};
  df_lua_register(L, module, methods, NULL, module_only);
  luaL_newmetatable(L, "diffusion.Dir");
  lua_pushcfunction(L, l_dir_gc);
  lua_setfield(L, -2, "__gc");
  lua_pop(L, 1);
}
