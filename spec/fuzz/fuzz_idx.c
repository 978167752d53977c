/* fuzz_idx.c — libFuzzer harness for the IDX reader (df_idx_load,
 * csrc/io/idx.c), plain and gzipped. The input is loaded as it is (zlib
 * reads a gzip file or passes a plain one through), then gzipped by the
 * harness and loaded again: both loads must agree (same error or the same
 * tensor), and a loaded tensor must hold bytes 0..255 and no more values
 * than the data holds. Seeds: spec/fuzz/corpus/idx/. */
#include <stdint.h>
#include <zlib.h>

#include "fuzz_common.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void check_tensor(const df_tensor *t, size_t data_bytes) {
  int64_t n = df_tensor_numel(t);
  FUZZ_CHECK(t->ndim >= 1 && t->ndim <= DF_MAX_DIMS, "ndim %d", t->ndim);
  FUZZ_CHECK((uint64_t)n <= data_bytes, "%lld values from %zu bytes", (long long)n, data_bytes);
  const float *p = df_tensor_data(t);
  for (int64_t i = 0; i < n; i++) FUZZ_CHECK(p[i] >= 0 && p[i] <= 255 && p[i] == (float)(int)p[i], "value %g", p[i]);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  const char *path = fuzz_scratch("idx");
  fuzz_write(path, data, size);
  df_tensor *plain = NULL, *gz = NULL;
  df_status st_plain = df_idx_load(&plain, path);
  if (st_plain) fuzz_check_message(st_plain);
  /* the same bytes gzipped: what a .gz download of this file would be */
  char gzpath[300];
  snprintf(gzpath, sizeof gzpath, "%s.gz", path);
  gzFile g = gzopen(gzpath, "wb");
  if (!g) exit(2);
  if (size && gzwrite(g, data, (unsigned)size) != (int)size) exit(2);
  if (gzclose(g) != Z_OK) exit(2);
  df_status st_gz = df_idx_load(&gz, gzpath);
  if (st_gz) fuzz_check_message(st_gz);
  /* a file that is itself gzip is unpacked once by the first load and
   * twice-wrapped in the second, so the two only agree for plain input */
  bool is_gzip = size >= 2 && data[0] == 0x1f && data[1] == 0x8b;
  if (plain) check_tensor(plain, is_gzip ? SIZE_MAX : size);
  if (gz) check_tensor(gz, is_gzip ? SIZE_MAX : size);
  if (!is_gzip) {
    FUZZ_CHECK((st_plain == DF_OK) == (st_gz == DF_OK), "plain: %s; gzipped: %s", st_plain ? "fails" : "loads",
               st_gz ? df_last_error() : "loads");
    if (plain && gz) {
      FUZZ_CHECK(plain->ndim == gz->ndim && df_tensor_same_shape(plain, gz), "shapes differ");
      FUZZ_CHECK(memcmp(df_tensor_data(plain), df_tensor_data(gz), (size_t)df_tensor_numel(plain) * 4) == 0,
                 "values differ");
    }
  }
  df_tensor_release(plain);
  df_tensor_release(gz);
  fuzz_remove_scratch();
  return 0;
}
