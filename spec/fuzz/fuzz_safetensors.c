/* fuzz_safetensors.c — libFuzzer harness for the safetensors reader
 * (df_safetensors_load, csrc/io/safetensors.c): the input is a whole file.
 * A load must fail with a message or give a checkpoint that survives a
 * save/load round trip unchanged. Seeds: spec/fuzz/corpus/safetensors/. */
#include "fuzz_roundtrip.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  const char *path = fuzz_scratch("safetensors");
  fuzz_write(path, data, size);
  df_safetensors *ck = NULL;
  df_status st = df_safetensors_load(&ck, path);
  if (st) {
    fuzz_check_message(st);
    fuzz_remove_scratch();
    return 0;
  }
  check_loaded_checkpoint(ck, path, size);
  df_safetensors_free(ck);
  fuzz_remove_scratch();
  return 0;
}
