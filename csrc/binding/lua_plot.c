/* lua_plot.c — the Lua binding of the chart drawing (csrc/io/plot.c), driven
 * by lua/diffusion/plot.lua. The canvas is a (3, H, W) tensor of 0..255
 * values, changed in place; colours are {r, g, b} lists of 0..255:
 *   D._plot_fill(canvas, x0, y0, x1, y1, rgb)
 *   D._plot_polyline(canvas, xs, ys, rgb, width, radius, dash, clip_x0, clip_y0, clip_x1, clip_y1)
 *       xs, ys: lists of numbers of one length (NaN / inf points break the line)
 *   D._plot_text(canvas, text, x, y, scale, vertical, rgb)
 *   D._plot_text_size(text, scale) -> width, height */
#include "binding.h"

static void check_rgb(lua_State *L, int arg, float rgb[3]) {
  luaL_checktype(L, arg, LUA_TTABLE);
  for (int k = 0; k < 3; k++) {
    lua_rawgeti(L, arg, k + 1);
    int isnum;
    double v = lua_tonumberx(L, -1, &isnum);
    if (!isnum) luaL_argerror(L, arg, lua_pushfstring(L, "colour component %d must be a number", k + 1));
    rgb[k] = (float)v;
    lua_pop(L, 1);
  }
}

static int l_plot_fill(lua_State *L) {
  df_tensor *canvas = check_tensor(L, 1);
  double x0 = luaL_checknumber(L, 2), y0 = luaL_checknumber(L, 3), x1 = luaL_checknumber(L, 4), y1 = luaL_checknumber(L, 5);
  float rgb[3];
  check_rgb(L, 6, rgb);
  if (df_plot_fill_rect(canvas, x0, y0, x1, y1, rgb)) return fail(L);
  return 0;
}

static int l_plot_polyline(lua_State *L) {
  lua_settop(L, 11);
  df_tensor *canvas = check_tensor(L, 1);
  float rgb[3];
  check_rgb(L, 4, rgb);
  double width = luaL_checknumber(L, 5), radius = luaL_checknumber(L, 6), dash = luaL_checknumber(L, 7);
  double clip[4];
  for (int k = 0; k < 4; k++) clip[k] = luaL_checknumber(L, 8 + k);
  int64_t n, ny;
  double *x = check_numbers(L, 2, &n), *y = check_numbers(L, 3, &ny);
  if (n != ny) return luaL_error(L, "plot.polyline: %I x values but %I y values", (lua_Integer)n, (lua_Integer)ny);
  if (df_plot_polyline(canvas, n, x, y, width, radius, dash, rgb, clip)) return fail(L);
  return 0;
}

static int l_plot_text(lua_State *L) {
  df_tensor *canvas = check_tensor(L, 1);
  const char *text = luaL_checkstring(L, 2);
  double x = luaL_checknumber(L, 3), y = luaL_checknumber(L, 4), scale = luaL_checknumber(L, 5);
  bool vertical = lua_toboolean(L, 6);
  float rgb[3];
  check_rgb(L, 7, rgb);
  if (df_plot_text(canvas, text, x, y, scale, vertical, rgb)) return fail(L);
  return 0;
}

static int l_plot_text_size(lua_State *L) {
  const char *text = luaL_checkstring(L, 1);
  double scale = luaL_optnumber(L, 2, 1.0), w, h;
  if (df_plot_text_size(text, scale, &w, &h)) return fail(L);
  lua_pushnumber(L, w);
  lua_pushnumber(L, h);
  return 2;
}

static const luaL_Reg module_only[] = {{"_plot_fill", l_plot_fill},
                                       {"_plot_polyline", l_plot_polyline},
                                       {"_plot_text", l_plot_text},
                                       {"_plot_text_size", l_plot_text_size},
                                       {NULL, NULL}};

void df_lua_open_plot(lua_State *L, int module, int methods) { df_lua_register(L, module, methods, NULL, module_only); }
