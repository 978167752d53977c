/* fuzz_header.c — libFuzzer harness for the safetensors header parser: the
 * strict JSON reader, the tensor entries and the "__metadata__" object that
 * holds a diffusion checkpoint's typed values (csrc/io/safetensors.c). The
 * typed values themselves ("n:0.5", "s:cosine", ...) are decoded in Lua by
 * lua/diffusion/checkpoint.lua; spec/fuzz_replay_spec.lua mutates those.
 *
 * Input: byte 0 is the length of the data area (0..255), the rest is the
 * header text. The harness frames it (8-byte length, header, data area of a
 * fixed byte pattern), so every mutation lands in the JSON, not the framing. */
#include "fuzz_roundtrip.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  if (size < 1) return 0;
  size_t data_len = data[0], hlen = size - 1, total = 8 + hlen + data_len;
  unsigned char *file = malloc(total);
  if (!file) return 0;
  for (int i = 0; i < 8; i++) file[i] = (unsigned char)((uint64_t)hlen >> (8 * i));
  memcpy(file + 8, data + 1, hlen);
  for (size_t i = 0; i < data_len; i++) file[8 + hlen + i] = (unsigned char)(i * 37 + 11);
  const char *path = fuzz_scratch("header");
  fuzz_write(path, file, total);
  free(file);
  return load_and_check(path, total);
}
