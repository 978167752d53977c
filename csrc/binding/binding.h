/* binding.h — what the binding's files share: the tensor userdata and the
 * argument checks. Internal to diffusion.core (hidden from other modules).
 * Each area's file defines df_lua_open_<area>, called from luaopen. */
#ifndef DF_BINDING_H
#define DF_BINDING_H

#include <lauxlib.h>
#include <lua.h>

#include "../df.h"

#define TENSOR_MT "diffusion.Tensor"
#define GENERATOR_MT "diffusion.Generator"

#if defined(__GNUC__)
#pragma GCC visibility push(hidden)
#endif

typedef struct {
  df_tensor *t; /* NULL once closed, or before the core filled it */
} tensor_box;

typedef struct {
  df_generator *g; /* &own, or the default generator */
  df_generator own;
} generator_box;

/* Pushes an empty tensor userdata; the core fills *slot on success. */
df_tensor **new_slot(lua_State *L);
df_tensor *check_tensor(lua_State *L, int arg);
df_tensor *test_tensor(lua_State *L, int arg); /* NULL when not a tensor */
int fail(lua_State *L);                        /* raises df_last_error() */
/* Ends a function whose result slot is on top: raises on failure, else 1. */
int result(lua_State *L, df_status st);
void account_memory(lua_State *L);
float check_float(lua_State *L, int arg);
int64_t check_int(lua_State *L, int arg);
/* A 1-based dim (negative from the end) to 0-based; extra = 1 allows ndim + 1. */
int check_dim(lua_State *L, int arg, int ndim, int extra);
int opt_dim(lua_State *L, int arg, int ndim, int def);
int64_t check_index(lua_State *L, int arg, int64_t size);
int check_shape(lua_State *L, int arg, int *ndim, int64_t *size);
void check_shape_end(lua_State *L, int arg);
void push_shape(lua_State *L, const df_tensor *t);
df_generator *opt_generator(lua_State *L, int arg);
double *check_numbers(lua_State *L, int arg, int64_t *n); /* a list or 1-d tensor, in a userdata left on the stack */
/* Sets each of `both` as D.name and x:name, each of `module_only` as D.name. */
void df_lua_register(lua_State *L, int module, int methods, const luaL_Reg *both, const luaL_Reg *module_only);

void df_lua_open_nn(lua_State *L, int module, int methods);    /* lua_nn.c */
void df_lua_open_conv(lua_State *L, int module, int methods);  /* lua_conv.c */
void df_lua_open_loss(lua_State *L, int module, int methods);  /* lua_loss.c */
void df_lua_open_optim(lua_State *L, int module, int methods); /* lua_optim.c */
void df_lua_open_io(lua_State *L, int module, int methods);    /* lua_io.c */
void df_lua_open_safetensors(lua_State *L, int module, int methods); /* lua_safetensors.c */
void df_lua_open_image(lua_State *L, int module, int methods);       /* lua_image.c */
void df_lua_open_schedule(lua_State *L, int module, int methods);    /* lua_schedule.c */
void df_lua_open_plot(lua_State *L, int module, int methods);        /* lua_plot.c */
void df_lua_open_unet(lua_State *L, int module, int methods);        /* lua_unet.c */
void df_lua_open_debug(lua_State *L, int module, int methods);       /* lua_debug.c: test hooks */

#if defined(__GNUC__)
#pragma GCC visibility pop
#endif

#endif
