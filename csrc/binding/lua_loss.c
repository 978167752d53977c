/* lua_loss.c — the Lua binding of the loss ops (csrc/ops/loss.c):
 *   D.mse_loss(pred, target [, weight])
 *   D.l1_loss(pred, target)
 *   D.bce_with_logits(logits, target)
 *   D.cross_entropy(logits, target [, {label_smoothing = 0}])
 * Class indices are 1-based here, as everywhere in Lua; the core takes them
 * 0-based, so cross_entropy checks them (naming the bad one as the user wrote
 * it) and passes a shifted copy. */
#include <math.h>

#include "binding.h"

static int l_mse_loss(lua_State *L) {
  df_tensor *pred = check_tensor(L, 1), *target = check_tensor(L, 2);
  df_tensor *weight = lua_isnoneornil(L, 3) ? NULL : check_tensor(L, 3);
  df_tensor **slot = new_slot(L);
  return result(L, df_mse_loss(slot, pred, target, weight));
}

static int l_l1_loss(lua_State *L) {
  df_tensor *pred = check_tensor(L, 1), *target = check_tensor(L, 2);
  df_tensor **slot = new_slot(L);
  return result(L, df_l1_loss(slot, pred, target));
}

static int l_bce_with_logits(lua_State *L) {
  df_tensor *logits = check_tensor(L, 1), *target = check_tensor(L, 2);
  df_tensor **slot = new_slot(L);
  return result(L, df_bce_with_logits(slot, logits, target));
}

static float opt_label_smoothing(lua_State *L, int arg) {
  if (lua_isnoneornil(L, arg)) return 0.0f;
  luaL_checktype(L, arg, LUA_TTABLE);
  lua_getfield(L, arg, "label_smoothing");
  float eps = 0.0f;
  if (!lua_isnil(L, -1)) {
    if (lua_type(L, -1) != LUA_TNUMBER)
      luaL_argerror(L, arg, lua_pushfstring(L, "label_smoothing must be a number, got %s", luaL_typename(L, -1)));
    eps = (float)lua_tonumber(L, -1);
  }
  lua_pop(L, 1);
  return eps;
}

static int l_cross_entropy(lua_State *L) {
  df_tensor *logits = check_tensor(L, 1), *target = check_tensor(L, 2);
  float eps = opt_label_smoothing(L, 3);
  lua_settop(L, 2);
  /* 1-based class indices, checked here so the message shows them as written;
   * shape errors are left to the core */
  if (logits->ndim == 2 && target->ndim == 1 && target->size[0] == logits->size[0]) {
    int64_t classes = logits->size[1];
    const float *y = target->storage->data + target->offset;
    for (int64_t n = 0; n < target->size[0]; n++) {
      float v = y[n * target->stride[0]];
      if (v >= 1.0f && v <= (float)classes && v == floorf(v)) continue;
      if (v == floorf(v) && fabsf(v) < 1e15f) /* an integer: shown without ".0" */
        lua_pushfstring(L, "%I", (lua_Integer)v);
      else
        lua_pushfstring(L, "%f", (lua_Number)v);
      return luaL_error(L, "cross_entropy: target[%I] = %s is not a class index in 1..%I", (lua_Integer)n + 1,
                        lua_tostring(L, -1), (lua_Integer)classes);
    }
  }
  df_tensor **shifted = new_slot(L); /* kept on the stack: __gc owns it */
  bool prev = df_set_grad_enabled(false);
  df_status st = df_binary_scalar(DF_SUB, shifted, target, 1.0f, false);
  df_set_grad_enabled(prev);
  if (st) return fail(L);
  df_tensor **slot = new_slot(L);
  return result(L, df_cross_entropy(slot, logits, *shifted, eps));
}

static const luaL_Reg module_functions[] = {
    {"mse_loss", l_mse_loss}, {"l1_loss", l_l1_loss}, {"bce_with_logits", l_bce_with_logits},
    {"cross_entropy", l_cross_entropy}, {NULL, NULL}};

void df_lua_open_loss(lua_State *L, int module, int methods) {
  df_lua_register(L, module, methods, NULL, module_functions);
}
