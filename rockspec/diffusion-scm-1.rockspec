rockspec_format = "3.0"
package = "diffusion"
version = "scm-1"
source = {
  url = "git+file:///dev/null", -- built from a checkout: luarocks make rockspec/diffusion-scm-1.rockspec
}
description = {
  summary = "Diffusion models from the ground up: tensors, autograd, U-Net, samplers, in C with a Lua API",
  detailed = [[
A Lua 5.4 extension module with a C11 core: float32 N-d tensors with NumPy
broadcasting, views, reductions, OpenBLAS matrix products, counter-based
random numbers and a thread pool, exposed as Lua objects.
]],
  license = "MIT",
}
dependencies = {
  "lua >= 5.4, < 5.5",
}
build = {
  -- The Makefile finds OpenBLAS (libopenblas-dev) and stb (libstb-dev) through
  -- pkg-config, falling back to Debian's paths; zlib is zlib1g-dev.
  type = "make",
  build_variables = {
    CFLAGS = "$(CFLAGS)",
    LIBFLAG = "$(LIBFLAG)",
    LUA_INCDIR = "$(LUA_INCDIR)",
  },
  install_variables = {
    INST_LIBDIR = "$(LIBDIR)",
    INST_LUADIR = "$(LUADIR)",
  },
  -- the `diffusion` command; it needs Debian's lua-argparse
  install = {
    bin = { diffusion = "lua/bin/diffusion" },
  },
}
