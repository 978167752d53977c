/* fuzz_roundtrip.h — what holds for any checkpoint the safetensors reader
 * accepts: sizes consistent with the file, and a save of what was loaded
 * loads back bit for bit (names, shapes, values, metadata). */
#ifndef DF_FUZZ_ROUNDTRIP_H
#define DF_FUZZ_ROUNDTRIP_H

#include "fuzz_common.h"

static void check_loaded_checkpoint(const df_safetensors *ck, const char *path, size_t file_size) {
  FUZZ_CHECK(ck->ntensors >= 0 && ck->nmeta >= 0, "negative counts");
  uint64_t values = 0;
  for (int64_t i = 0; i < ck->ntensors; i++) {
    const df_tensor *t = ck->tensors[i];
    FUZZ_CHECK(ck->names[i] && ck->names[i][0], "tensor %lld has no name", (long long)i);
    FUZZ_CHECK(t && df_tensor_is_contiguous(t), "tensor %s", ck->names[i]);
    values += (uint64_t)df_tensor_numel(t);
  }
  /* the smallest dtype takes 2 bytes a value: nothing is made from thin air */
  FUZZ_CHECK(values * 2 <= file_size, "%llu values from a file of %zu bytes", (unsigned long long)values, file_size);

  char out[300];
  snprintf(out, sizeof out, "%s.out", path);
  df_status st = df_safetensors_save(out, ck->ntensors, (const char *const *)ck->names,
                                     (const df_tensor *const *)ck->tensors, ck->nmeta,
                                     (const char *const *)ck->meta_keys, (const char *const *)ck->meta_values);
  FUZZ_CHECK(st == DF_OK, "re-saving a loaded checkpoint failed: %s", df_last_error());
  df_safetensors *again = NULL;
  st = df_safetensors_load(&again, out);
  FUZZ_CHECK(st == DF_OK, "a re-saved checkpoint does not load: %s", df_last_error());
  FUZZ_CHECK(again->ntensors == ck->ntensors && again->nmeta == ck->nmeta, "counts differ after a round trip");
  for (int64_t i = 0; i < ck->ntensors; i++) {
    int64_t k = 0;
    while (k < again->ntensors && strcmp(again->names[k], ck->names[i]) != 0) k++;
    FUZZ_CHECK(k < again->ntensors, "tensor %s lost in a round trip", ck->names[i]);
    const df_tensor *a = ck->tensors[i], *b = again->tensors[k];
    FUZZ_CHECK(a->ndim == b->ndim && df_tensor_same_shape(a, b), "tensor %s changed shape", ck->names[i]);
    FUZZ_CHECK(memcmp(df_tensor_data(a), df_tensor_data(b), (size_t)df_tensor_numel(a) * sizeof(float)) == 0,
               "tensor %s changed values", ck->names[i]);
  }
  for (int64_t i = 0; i < ck->nmeta; i++) {
    int64_t k = 0;
    while (k < again->nmeta && strcmp(again->meta_keys[k], ck->meta_keys[i]) != 0) k++;
    FUZZ_CHECK(k < again->nmeta, "metadata %s lost in a round trip", ck->meta_keys[i]);
    FUZZ_CHECK(strcmp(again->meta_values[k], ck->meta_values[i]) == 0, "metadata %s changed", ck->meta_keys[i]);
  }
  df_safetensors_free(again);
}

/* Loads the file at path (file_size bytes): a clean error, or a checkpoint
 * that passes check_loaded_checkpoint; then removes the scratch file. */
static int load_and_check(const char *path, size_t file_size) {
  df_safetensors *ck = NULL;
  df_status st = df_safetensors_load(&ck, path);
  if (st) {
    fuzz_check_message(st);
  } else {
    check_loaded_checkpoint(ck, path, file_size);
    df_safetensors_free(ck);
  }
  fuzz_remove_scratch();
  return 0;
}

#endif
