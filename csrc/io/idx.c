/* idx.c — the IDX format of MNIST and Fashion-MNIST, plain or gzipped.
 *
 * Header: two zero bytes, a type byte (0x08 = unsigned byte, the only type
 * these datasets use), the number of dims, then each dim as a big-endian
 * uint32. Nothing is allocated from the header's word: for a plain file the
 * declared size is checked against the file's size first; a gzipped one is
 * read in chunks as it inflates (the buffer at most doubles past the data
 * that really arrived), so a header that lies costs no more memory than the
 * file really holds. */
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>

#include <zlib.h>

#include "../df.h"

#define CHUNK ((size_t)1 << 20)

df_status df_idx_load(df_tensor **out, const char *path) {
  gzFile f = gzopen(path, "rb"); /* reads uncompressed files as they are */
  if (!f) return df_error(DF_EIO, "load_idx: cannot open %s: %s", path, strerror(errno ? errno : ENOENT));
  df_status st = DF_OK;
  unsigned char *bytes = NULL, header[4];
  df_tensor *t = NULL;
  int got = gzread(f, header, 4);
  if (got != 4) {
    st = df_error(DF_EIO, "load_idx: %s is too short for an IDX header (%d bytes)", path, got < 0 ? 0 : got);
    goto done;
  }
  if (header[0] != 0 || header[1] != 0) {
    st = df_error(DF_EIO, "load_idx: %s is not an IDX file (bad magic %02x %02x)", path, header[0], header[1]);
    goto done;
  }
  if (header[2] != 0x08) {
    st = df_error(DF_EIO, "load_idx: %s has data type 0x%02x; only unsigned bytes (0x08) are supported", path, header[2]);
    goto done;
  }
  int ndim = header[3];
  if (ndim < 1 || ndim > DF_MAX_DIMS) {
    st = df_error(DF_EIO, "load_idx: %s declares %d dims (1 to %d allowed)", path, ndim, DF_MAX_DIMS);
    goto done;
  }
  int64_t size[DF_MAX_DIMS], numel = 1;
  for (int d = 0; d < ndim; d++) {
    unsigned char b[4];
    if (gzread(f, b, 4) != 4) {
      st = df_error(DF_EIO, "load_idx: %s is truncated inside its header", path);
      goto done;
    }
    size[d] = (int64_t)b[0] << 24 | (int64_t)b[1] << 16 | (int64_t)b[2] << 8 | (int64_t)b[3];
  }
  if ((st = df_check_shape("load_idx", ndim, size, &numel))) {
    char why[256]; /* "load_idx: shape ... is too large": name the file too */
    snprintf(why, sizeof why, "%s", df_last_error() + strlen("load_idx: "));
    st = df_error(st, "load_idx: %s: %s", path, why);
    goto done;
  }
  if (gzdirect(f)) { /* not compressed: the file's size tells the data's, before anything is allocated */
    struct stat sb;
    uint64_t header_bytes = 4 + 4 * (uint64_t)ndim;
    if (stat(path, &sb) == 0 && S_ISREG(sb.st_mode)) {
      uint64_t data = (uint64_t)sb.st_size > header_bytes ? (uint64_t)sb.st_size - header_bytes : 0;
      if (data < (uint64_t)numel) {
        char b[128];
        st = df_error(DF_EIO, "load_idx: %s is truncated: shape %s needs %lld bytes of data, the file has %llu", path,
                      df_format_shape(b, sizeof b, ndim, size), (long long)numel, (unsigned long long)data);
        goto done;
      }
      if (data > (uint64_t)numel) {
        st = df_error(DF_EIO, "load_idx: %s has data after the %lld bytes its header declares", path, (long long)numel);
        goto done;
      }
    }
  }
  /* read up to numel bytes, growing the buffer (doubling) only as data arrives */
  size_t have = 0, cap = 0;
  while (have < (size_t)numel) {
    if (have == cap) {
      size_t step = cap > CHUNK ? cap : CHUNK;
      size_t want = (size_t)numel - cap > step ? cap + step : (size_t)numel;
      unsigned char *grown = df_malloc(want);
      if (!grown) {
        st = df_error(DF_ENOMEM, "load_idx: out of memory reading %s", path);
        goto done;
      }
      if (have) memcpy(grown, bytes, have);
      df_free(bytes);
      bytes = grown;
      cap = want;
    }
    size_t ask = cap - have < ((size_t)1 << 30) ? cap - have : ((size_t)1 << 30); /* gzread counts in int */
    int n = gzread(f, bytes + have, (unsigned)ask);
    if (n < 0) {
      int code;
      st = df_error(DF_EIO, "load_idx: %s is corrupt: %s", path, gzerror(f, &code));
      goto done;
    }
    if (n == 0) break;
    have += (size_t)n;
  }
  if (have < (size_t)numel) {
    char b[128];
    st = df_error(DF_EIO, "load_idx: %s is truncated: shape %s needs %lld bytes of data, the file has %zu", path,
                  df_format_shape(b, sizeof b, ndim, size), (long long)numel, have);
    goto done;
  }
  unsigned char extra;
  if (gzread(f, &extra, 1) == 1) {
    st = df_error(DF_EIO, "load_idx: %s has data after the %lld bytes its header declares", path, (long long)numel);
    goto done;
  }
  if ((st = df_tensor_empty(&t, ndim, size))) goto done;
  float *p = df_tensor_data(t);
  for (int64_t i = 0; i < numel; i++) p[i] = (float)bytes[i];
done:
  gzclose(f);
  df_free(bytes);
  if (st) {
    df_tensor_release(t);
    return st;
  }
  *out = t;
  return DF_OK;
}
