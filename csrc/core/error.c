/* error.c — the last error message, one per thread, and shape formatting. */
#include <stdarg.h>
#include <stdio.h>

#include "../df.h"

static _Thread_local char last_error[512];

const char *df_last_error(void) { return last_error[0] ? last_error : "unknown error"; }

df_status df_error(df_status code, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(last_error, sizeof last_error, fmt, ap);
  va_end(ap);
  return code;
}

char *df_format_shape(char *buf, size_t cap, int ndim, const int64_t *size) {
  size_t used = 0;
  used += (size_t)snprintf(buf, cap, "{");
  for (int d = 0; d < ndim && used < cap; d++)
    used += (size_t)snprintf(buf + used, cap - used, d ? ",%lld" : "%lld", (long long)size[d]);
  if (used < cap) snprintf(buf + used, cap - used, "}");
  return buf;
}
