/* fuzz_safetensors.c — libFuzzer harness for the safetensors reader
 * (df_safetensors_load, csrc/io/safetensors.c): the input is a whole file.
 * A load must fail with a message or give a checkpoint that survives a
 * save/load round trip unchanged. Seeds: spec/fuzz/corpus/safetensors/. */
#include "fuzz_roundtrip.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  const char *path = fuzz_scratch("safetensors");
  fuzz_write(path, data, size);
  return load_and_check(path, size);
}
