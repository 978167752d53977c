# diffusion — build, test and install.
#   make          build build/libdiffusion.a and the Lua module build/diffusion/core.so
#   make test     run the whole suite (last line: "N passed, M failed")
#   make asan     the suite under AddressSanitizer + UBSan
#   make valgrind the suite under valgrind's leak checker
#   make bench    examples/benchmark.lua: diffusion vs PyTorch (BENCH_ARGS="--configs tiny ...")
#   make bench-tensor  examples/bench_tensor.lua: matmul vs raw sgemm, elementwise bandwidth
#   make clean
# luarocks (rockspec/diffusion-scm-1.rockspec) calls `make` and `make install`
# with CFLAGS, LIBFLAG, LUA_INCDIR, INST_LIBDIR and INST_LUADIR set.

LUA        ?= lua5.4
BUSTED     ?= $(shell command -v busted 2>/dev/null || echo /usr/bin/busted)
PKG_CONFIG ?= pkg-config
MULTIARCH  := $(shell $(CC) -print-multiarch 2>/dev/null)

LUA_INCDIR ?= $(shell $(PKG_CONFIG) --variable=includedir lua5.4 2>/dev/null)/lua5.4
BLAS_CFLAGS ?= $(shell $(PKG_CONFIG) --cflags openblas 2>/dev/null || echo -I/usr/include/$(MULTIARCH)/openblas-pthread)
BLAS_LIBS   ?= $(shell $(PKG_CONFIG) --libs openblas 2>/dev/null || echo -lopenblas)
# stb_image / stb_image_write: Debian's libstb-dev ships compiled (libstb) with stb.pc
STB_CFLAGS  ?= $(shell $(PKG_CONFIG) --cflags stb 2>/dev/null || echo -I/usr/include/stb)
STB_LIBS    ?= $(shell $(PKG_CONFIG) --libs stb 2>/dev/null || echo -lstb)

CFLAGS   ?= -O3
LIBFLAG  ?= -shared
WARNINGS := -Wall -Wextra -Wpedantic -Wshadow -Wstrict-prototypes -Wmissing-prototypes \
            -Wformat=2 -Wundef -Wvla -Wpointer-arith -Wcast-align
DF_CFLAGS := -std=c11 -D_POSIX_C_SOURCE=200809L -fPIC -fno-math-errno $(WARNINGS) $(BLAS_CFLAGS) $(STB_CFLAGS)
ifdef WERROR
DF_CFLAGS += -Werror
endif
LIBS := $(BLAS_LIBS) $(STB_LIBS) -lz -lm -lpthread

BUILD  ?= build
CORE_SRC    := $(wildcard csrc/core/*.c csrc/autograd/*.c csrc/ops/*.c csrc/diffusion/*.c csrc/models/*.c csrc/io/*.c)
BINDING_SRC := $(wildcard csrc/binding/*.c)
HEADERS     := $(wildcard csrc/*.h csrc/*/*.h)
CORE_OBJ    := $(CORE_SRC:csrc/%.c=$(BUILD)/obj/%.o)
BINDING_OBJ := $(BINDING_SRC:csrc/%.c=$(BUILD)/obj/%.o)

LIB    := $(BUILD)/libdiffusion.a
MODULE := $(BUILD)/diffusion/core.so

# the environment that makes `require "diffusion"` load this checkout's build $(1)
test_env = LUA_PATH="$(CURDIR)/lua/?.lua;$(CURDIR)/lua/?/init.lua;$(CURDIR)/spec/?.lua;;" \
           LUA_CPATH="$(CURDIR)/$(1)/?.so;;"
SPECS ?= spec

.PHONY: all test asan valgrind bench bench-tensor install clean

all: $(MODULE)

$(BUILD)/obj/%.o: csrc/%.c $(HEADERS) Makefile
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) $(DF_CFLAGS) -c $< -o $@

$(BUILD)/obj/binding/%.o: csrc/binding/%.c $(HEADERS) Makefile
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) $(DF_CFLAGS) -I$(LUA_INCDIR) -c $< -o $@

$(LIB): $(CORE_OBJ)
	$(AR) rcs $@ $^

# -z nodelete: the pool's threads sleep inside this library, so it must stay
# mapped after lua_close unloads the module.
$(MODULE): $(BINDING_OBJ) $(LIB)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) $(LIBFLAG) -Wl,-z,nodelete -o $@ $(BINDING_OBJ) $(LIB) $(LIBS)

test: $(MODULE)
	@$(call test_env,$(BUILD)) $(LUA) $(BUSTED) --output=spec/summary_output.lua $(SPECS)

ASAN_BUILD ?= build-asan
ASAN_FLAGS := -O1 -g -fno-omit-frame-pointer -fsanitize=address,undefined -fno-sanitize-recover=all
asan:
	$(MAKE) BUILD=$(ASAN_BUILD) CFLAGS="$(ASAN_FLAGS)" LIBFLAG="-shared -fsanitize=address,undefined" all
	@LD_PRELOAD="$$($(CC) -print-file-name=libasan.so) $$($(CC) -print-file-name=libubsan.so)" \
	  ASAN_OPTIONS=detect_leaks=1:allocator_may_return_null=1:abort_on_error=0 \
	  LSAN_OPTIONS=suppressions=$(CURDIR)/spec/lsan.supp:print_suppressions=0 \
	  UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
	  $(call test_env,$(ASAN_BUILD)) $(LUA) $(BUSTED) --output=spec/summary_output.lua $(SPECS)

valgrind: $(MODULE)
	@$(call test_env,$(BUILD)) valgrind --leak-check=full --show-leak-kinds=definite --errors-for-leak-kinds=definite --error-exitcode=3 -q \
	  $(LUA) $(BUSTED) --output=spec/summary_output.lua $(SPECS)

BENCH_ARGS ?=
bench: $(MODULE)
	@$(call test_env,$(BUILD)) $(LUA) examples/benchmark.lua $(BENCH_ARGS)

bench-tensor: $(MODULE)
	@$(call test_env,$(BUILD)) $(LUA) examples/bench_tensor.lua

# Fuzzing (spec/fuzz/, docs/robustness.md), with clang's libFuzzer + ASan + UBSan:
#   make fuzz [FUZZ_SECONDS=60] [FUZZ_HARNESSES="idx image"]  fuzz each harness in turn
#   make fuzz-replay   each seed and regression file once (no fuzzing)
#   make fuzz-seeds    regenerate the seed corpora spec/fuzz/corpus/ with this build
FUZZ_CC        ?= clang
FUZZ_BUILD     ?= build-fuzz
FUZZ_SECONDS   ?= 60
FUZZ_HARNESSES ?= safetensors header idx image
FUZZ_FLAGS     := -O1 -g -fno-omit-frame-pointer -fsanitize=address,undefined -fno-sanitize-recover=all
FUZZ_CORE_OBJ  := $(CORE_SRC:csrc/%.c=$(FUZZ_BUILD)/obj/%.o)

$(FUZZ_BUILD)/obj/%.o: csrc/%.c $(HEADERS) Makefile
	@mkdir -p $(dir $@)
	$(FUZZ_CC) $(FUZZ_FLAGS) -fsanitize=fuzzer-no-link $(DF_CFLAGS) -c $< -o $@

$(FUZZ_BUILD)/stb_impl.o: spec/fuzz/stb_impl.c
	@mkdir -p $(dir $@)
	$(FUZZ_CC) $(FUZZ_FLAGS) -fsanitize=fuzzer-no-link -fno-sanitize=pointer-overflow,nonnull-attribute,shift $(STB_CFLAGS) -w -c $< -o $@

$(FUZZ_BUILD)/fuzz_%: spec/fuzz/fuzz_%.c $(wildcard spec/fuzz/*.h) $(FUZZ_CORE_OBJ) $(FUZZ_BUILD)/stb_impl.o
	$(FUZZ_CC) $(FUZZ_FLAGS) -fsanitize=fuzzer $(DF_CFLAGS) $< $(FUZZ_CORE_OBJ) $(FUZZ_BUILD)/stb_impl.o \
	  $(BLAS_LIBS) -lz -lm -lpthread -o $@

fuzz: $(FUZZ_HARNESSES:%=$(FUZZ_BUILD)/fuzz_%)
	@sh spec/fuzz/run.sh fuzz $(FUZZ_BUILD) $(FUZZ_SECONDS) $(FUZZ_HARNESSES)

fuzz-replay: $(FUZZ_HARNESSES:%=$(FUZZ_BUILD)/fuzz_%)
	@sh spec/fuzz/run.sh replay $(FUZZ_BUILD) 0 $(FUZZ_HARNESSES)

fuzz-seeds: $(MODULE)
	$(CC) $(STB_CFLAGS) spec/fuzz/write_images.c $(STB_LIBS) -lm -o $(BUILD)/write_images
	@$(call test_env,$(BUILD)) $(LUA) spec/fuzz/make_seeds.lua spec/fuzz/corpus $(BUILD)/write_images

.PHONY: fuzz fuzz-replay fuzz-seeds
.SECONDARY: $(FUZZ_CORE_OBJ) $(FUZZ_BUILD)/stb_impl.o

INST_LIBDIR ?= $(BUILD)/install/lib
INST_LUADIR ?= $(BUILD)/install/lua
install: $(MODULE)
	mkdir -p $(INST_LIBDIR)/diffusion $(INST_LUADIR)/diffusion
	cp $(MODULE) $(INST_LIBDIR)/diffusion/core.so
	cp lua/diffusion/*.lua $(INST_LUADIR)/diffusion/

clean:
	rm -rf build build-*
