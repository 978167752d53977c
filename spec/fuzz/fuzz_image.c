/* fuzz_image.c — libFuzzer harness for image decoding (df_image_load,
 * csrc/io/image.c, through stb_image, which the fuzz build compiles from
 * the same header with the sanitizers and coverage on: stb_impl.c). The
 * input is a whole file; its length picks the channel count asked for
 * (0 = as the file has them, 1 or 3), and the size cap is 1 Mi values so a
 * file claiming to be huge is refused before decoding. A decoded image must
 * have the asked channels, fit the cap and hold values in [lo, hi].
 * Seeds: spec/fuzz/corpus/image/. */
#include "fuzz_common.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define CAP ((int64_t)1 << 20)

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  static const int channel_choice[3] = {0, 1, 3};
  int channels = channel_choice[size % 3];
  const char *path = fuzz_scratch("image");
  fuzz_write(path, data, size);
  df_tensor *t = NULL;
  df_status st = df_image_load(&t, path, channels, CAP, -1.0f, 1.0f);
  if (st) {
    fuzz_check_message(st);
    fuzz_remove_scratch();
    return 0;
  }
  FUZZ_CHECK(t->ndim == 3, "ndim %d", t->ndim);
  FUZZ_CHECK(channels ? t->size[0] == channels : (t->size[0] == 1 || t->size[0] == 3), "channels %lld",
             (long long)t->size[0]);
  FUZZ_CHECK(t->size[1] > 0 && t->size[2] > 0 && df_tensor_numel(t) <= CAP, "shape");
  const float *p = df_tensor_data(t);
  for (int64_t i = 0, n = df_tensor_numel(t); i < n; i++) FUZZ_CHECK(p[i] >= -1.0f && p[i] <= 1.0f, "value %g", p[i]);
  df_tensor_release(t);
  fuzz_remove_scratch();
  return 0;
}
