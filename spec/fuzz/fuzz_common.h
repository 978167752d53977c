/* fuzz_common.h — what the libFuzzer harnesses share. The readers under test
 * take a path, so each input is written to a per-process scratch file
 * (in /dev/shm when there is one: no disk traffic) and read from there;
 * the harness removes it after each input, so only a crash leaves one.
 * A property that fails on a successful load aborts, so libFuzzer records
 * the input as a crash, like any sanitizer report. */
#ifndef DF_FUZZ_COMMON_H
#define DF_FUZZ_COMMON_H

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "../../csrc/df.h"

#define FUZZ_CHECK(cond, ...)                                   \
  do {                                                          \
    if (!(cond)) {                                              \
      fprintf(stderr, "fuzz property failed: %s: ", #cond);     \
      fprintf(stderr, __VA_ARGS__);                             \
      fprintf(stderr, "\n");                                    \
      abort();                                                  \
    }                                                           \
  } while (0)

static char fuzz_path_buf[256];

static void fuzz_remove_scratch(void) {
  char other[300];
  unlink(fuzz_path_buf);
  snprintf(other, sizeof other, "%s.gz", fuzz_path_buf);
  unlink(other);
  snprintf(other, sizeof other, "%s.out", fuzz_path_buf);
  unlink(other);
}

/* The scratch file's path for this process (made once). */
static const char *fuzz_scratch(const char *harness) {
  if (!fuzz_path_buf[0]) {
    const char *dir = access("/dev/shm", W_OK) == 0 ? "/dev/shm" : getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp";
    snprintf(fuzz_path_buf, sizeof fuzz_path_buf, "%s/df-fuzz-%s-%ld", dir, harness, (long)getpid());
    atexit(fuzz_remove_scratch);
  }
  return fuzz_path_buf;
}

/* Writes n bytes to path; aborts if the file system refuses (not a finding). */
static void fuzz_write(const char *path, const void *data, size_t n) {
  FILE *f = fopen(path, "wb");
  if (!f || (n && fwrite(data, 1, n, f) != n) || fclose(f) != 0) {
    perror(path);
    exit(2);
  }
}

/* Every failure must leave a message (the binding raises it as a Lua error). */
static void fuzz_check_message(df_status st) {
  const char *msg = df_last_error();
  FUZZ_CHECK(st == DF_EIO || st == DF_EINVAL || st == DF_ENOMEM, "status %d", (int)st);
  FUZZ_CHECK(msg && msg[0] && strcmp(msg, "unknown error") != 0, "no message for status %d", (int)st);
}

#endif
