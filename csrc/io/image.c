/* image.c — image files in and out, and resizing.
 *
 * Decoding and PNG encoding are stb_image and stb_image_write as Debian's
 * libstb-dev ships them: compiled into libstb (found through stb.pc), so only
 * their headers are included here, never their implementations.
 *
 * Tensors are (C, H, W), planar; stb's buffers are (H, W, C), interleaved.
 * A decode is capped from the header (stbi_info) before any pixel memory is
 * committed, so a small file claiming to be huge costs nothing. A save never
 * leaves a half-written file: it writes a temporary file next to the target,
 * fsyncs it and renames it over the target (atomic within one filesystem). */
#include <errno.h>
#include <fcntl.h>
#include <ctype.h>
#include <limits.h>
#include <math.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <unistd.h>

#include <stb_image.h>
#include <stb_image_write.h>

#include "../df.h"

static df_status check_range(const char *op, float lo, float hi) {
  if (!(isfinite(lo) && isfinite(hi) && lo < hi))
    return df_error(DF_EINVAL, "%s: the value range [%g, %g] must be finite with lo < hi", op, (double)lo, (double)hi);
  return DF_OK;
}

static const char *stb_reason(void) {
  const char *r = stbi_failure_reason();
  return r ? r : "no reason given";
}

/* ---- load ------------------------------------------------------------- */

/* The formats handed to stb_image, recognised by their first bytes. The
 * others it knows are refused: TGA (no signature, so stb tries it on any
 * unknown bytes), PSD and PIC (rare in image folders, little exercised) and
 * HDR (stb_image 2.27 loops forever on a truncated run-length scanline;
 * found by fuzzing). */
typedef enum { FMT_UNKNOWN, FMT_PNG, FMT_JPEG, FMT_BMP, FMT_GIF, FMT_PNM } image_format;

static image_format sniff_format(const unsigned char *b, size_t n) {
  if (n >= 8 && !memcmp(b, "\x89PNG\r\n\x1a\n", 8)) return FMT_PNG;
  if (n >= 3 && b[0] == 0xff && b[1] == 0xd8 && b[2] == 0xff) return FMT_JPEG;
  if (n >= 2 && b[0] == 'B' && b[1] == 'M') return FMT_BMP;
  if (n >= 6 && (!memcmp(b, "GIF87a", 6) || !memcmp(b, "GIF89a", 6))) return FMT_GIF;
  if (n >= 2 && b[0] == 'P' && (b[1] == '5' || b[1] == '6')) return FMT_PNM;
  return FMT_UNKNOWN;
}

static int next_byte(FILE *f) { return getc(f); }

/* Walks a PNG's chunks and checks each fits in the file: stb_image grows
 * its buffer to a chunk's declared length before reading it, so a few
 * bytes claiming a 2 GB IDAT would cost 2 GB (found by fuzzing). */
static df_status check_png(FILE *f, const char *path) {
  struct stat sb;
  if (fstat(fileno(f), &sb) != 0) return DF_OK;
  uint64_t size = (uint64_t)sb.st_size, pos = 8;
  while (pos + 8 <= size) {
    unsigned char head[8];
    if (fseek(f, (long)pos, SEEK_SET) != 0 || fread(head, 1, 8, f) != 8) return DF_OK;
    uint64_t len = (uint64_t)head[0] << 24 | (uint64_t)head[1] << 16 | (uint64_t)head[2] << 8 | head[3];
    if (len > size - pos - 8 || size - pos - 8 - len < 4) /* data and CRC must be in the file */
      return df_error(DF_EIO, "image.load: cannot decode %s: corrupt PNG: chunk \"%c%c%c%c\" at byte %llu declares %llu bytes, "
                      "past the end of the file (truncated?)", path, isprint(head[4]) ? head[4] : '?', isprint(head[5]) ? head[5] : '?',
                      isprint(head[6]) ? head[6] : '?', isprint(head[7]) ? head[7] : '?', (unsigned long long)pos,
                      (unsigned long long)len);
    if (!memcmp(head + 4, "IEND", 4)) break;
    pos += 12 + len;
  }
  return DF_OK;
}

/* Reads a PNM header (P5 or P6, then width, height and maxval, with
 * whitespace and # comments between) as stb_image does, and checks the
 * numbers before it sees them: its parser multiplies by 10 in an int
 * without a bound (signed overflow, found by fuzzing). Sizes up to 2^24
 * (stb_image's own dimension limit) and maxval up to 65535 pass. */
static df_status check_pnm(FILE *f, const char *path) {
  static const char *const what[3] = {"width", "height", "maxval"};
  static const long limit[3] = {1L << 24, 1L << 24, 65535};
  next_byte(f), next_byte(f); /* "P5" or "P6", sniffed already */
  int c = next_byte(f);
  for (int field = 0; field < 3; field++) {
    for (;;) { /* whitespace, then a comment up to the end of its line */
      while (c == ' ' || (c >= '\t' && c <= '\r')) c = next_byte(f);
      if (c != '#') break;
      while (c != EOF && c != '\n' && c != '\r') c = next_byte(f);
    }
    long value = 0;
    for (; c >= '0' && c <= '9'; c = next_byte(f)) {
      value = value * 10 + (c - '0');
      if (value > limit[field])
        return df_error(DF_EIO, "image.load: cannot decode %s: corrupt PNM: its %s is over %ld", path, what[field], limit[field]);
    }
  }
  return DF_OK;
}

/* Walks a JPEG's marker segments (and the entropy-coded data after each
 * scan) and checks what stb_image 2.27, which Debian ships, trusts; both
 * were found by fuzzing and are fixed upstream in 2.28:
 *  - a Huffman table (DHT) declares at most 256 codes: more, and the
 *    decoder writes past its tables;
 *  - a scan (SOS) only uses Huffman tables defined before it: an undefined
 *    one is uninitialised memory, on which the decoder can fail an assert()
 *    that Debian's libstb keeps, aborting the process.
 * Bytes past the end of the file count as zeros, as the decoder reads them.
 * Other damage is left to the decoder, which reports it. */
static df_status check_jpeg(FILE *f, const char *path) {
  bool defined[2][4] = {{false}}; /* [DC, AC][table id] */
  bool progressive = false;
  int c;
#define BYTE() ((c = next_byte(f)) == EOF ? 0 : c)
  if (next_byte(f) != 0xff || next_byte(f) != 0xd8) return DF_OK; /* sniffed already */
  for (;;) {
    c = next_byte(f);
    if (c == EOF) return DF_OK;
    if (c != 0xff) continue; /* entropy-coded data (or junk) between markers */
    do c = next_byte(f); while (c == 0xff); /* fill bytes */
    int marker = c;
    if (marker == EOF || marker == 0xd9) return DF_OK; /* end of image */
    if (marker == 0x00 || (marker >= 0xd0 && marker <= 0xd7) || marker == 0x01) continue; /* no length */
    int hi = next_byte(f), lo = next_byte(f);
    if (hi == EOF || lo == EOF) return DF_OK;
    long left = (long)(hi << 8 | lo) - 2;
    if (marker == 0xc0 || marker == 0xc1 || marker == 0xc2) progressive = marker == 0xc2;
    if (marker == 0xc4) { /* DHT: as the decoder reads it, a table at a time, even past the segment's end */
      while (left > 0) {
        int q = BYTE(), codes = 0;
        for (int i = 0; i < 16; i++) codes += BYTE();
        if (codes > 256)
          return df_error(DF_EIO, "image.load: cannot decode %s: corrupt JPEG: a Huffman table declares %d codes "
                          "(at most 256)", path, codes);
        if (q >> 4 <= 1 && (q & 15) <= 3) defined[q >> 4][q & 15] = true;
        for (int i = 0; i < codes; i++) BYTE();
        left -= 17 + codes;
      }
      continue;
    }
    if (marker == 0xda) { /* SOS: components, then spectral start and end, successive approximation */
      int ns = BYTE(), tables[4] = {0};
      if (ns < 1 || ns > 4) return DF_OK; /* the decoder refuses it */
      for (int i = 0; i < ns; i++) BYTE(), tables[i] = BYTE();
      int ss = BYTE(), se = BYTE(), ah = BYTE() >> 4;
      (void)se;
      for (int i = 0; i < ns; i++) {
        int td = tables[i] >> 4, ta = tables[i] & 15;
        bool needs_dc = progressive ? ss == 0 && ah == 0 : true, needs_ac = progressive ? ss > 0 : true;
        if ((needs_dc && td <= 3 && !defined[0][td]) || (needs_ac && ta <= 3 && !defined[1][ta]))
          return df_error(DF_EIO, "image.load: cannot decode %s: corrupt JPEG: a scan uses Huffman table %s %d, "
                          "which is not defined before it", path, needs_dc && td <= 3 && !defined[0][td] ? "DC" : "AC",
                          needs_dc && td <= 3 && !defined[0][td] ? td : ta);
      }
      left -= 1 + 2 * ns + 3;
    }
    while (left-- > 0)
      if (next_byte(f) == EOF) return DF_OK;
  }
#undef BYTE
}

df_status df_image_load(df_tensor **out, const char *path, int channels, int64_t max_values, float lo, float hi) {
  if (channels != 0 && channels != 1 && channels != 3)
    return df_error(DF_EINVAL, "image.load: channels must be 1 or 3 (0: as the file has them), got %d", channels);
  if (max_values < 0)
    return df_error(DF_EINVAL, "image.load: the size cap must be positive, got %lld", (long long)max_values);
  if (max_values == 0) max_values = DF_IMAGE_MAX_VALUES;
  df_status st = check_range("image.load", lo, hi);
  if (st) return st;

  /* one FILE for both the header probe and the decode, so they see the same file */
  FILE *f = fopen(path, "rb");
  if (!f) return df_error(DF_EIO, "image.load: cannot open %s: %s", path, strerror(errno));
  unsigned char *pixels = NULL;
  df_tensor *t = NULL;
  int w, h, comp;
  unsigned char magic[16];
  size_t got = fread(magic, 1, sizeof magic, f);
  image_format format = sniff_format(magic, got);
  if (format == FMT_UNKNOWN) {
    st = df_error(DF_EIO, "image.load: %s is not an image this library reads (unknown image type%s; it reads PNG, "
                  "JPEG, BMP, GIF and PNM (P5/P6))", path, got == 0 ? ": the file is empty" : "");
    goto done;
  }
  rewind(f);
  if (format == FMT_JPEG && (st = check_jpeg(f, path))) goto done;
  if (format == FMT_PNM && (st = check_pnm(f, path))) goto done;
  if (format == FMT_PNG && (st = check_png(f, path))) goto done;
  rewind(f);
  if (!stbi_info_from_file(f, &w, &h, &comp)) {
    st = df_error(DF_EIO, "image.load: %s is not an image stb_image can read (%s)", path, stb_reason());
    goto done;
  }
  int c = channels ? channels : comp <= 2 ? 1 : 3; /* gray(+alpha) -> 1, RGB(A) -> 3 */
  if (w <= 0 || h <= 0) {
    st = df_error(DF_EIO, "image.load: %s declares a %dx%d image", path, w, h);
    goto done;
  }
  if ((int64_t)w > max_values / ((int64_t)h * c)) { /* w * h * c > max_values, without overflowing (found by fuzzing) */
    st = df_error(DF_EIO, "image.load: %s is %dx%d with %d channel(s) = %.0f values, over the cap of %lld", path, w,
                  h, c, (double)w * h * c, (long long)max_values);
    goto done;
  }
  /* decoded with the file's own channels and converted here: stb_image
   * 2.27's conversion misreads 16-bit PNM (a heap overread, found by
   * fuzzing), and this way no decoder sees a channel request at all */
  int dw, dh, dcomp;
  pixels = stbi_load_from_file(f, &dw, &dh, &dcomp, 0);
  if (!pixels) {
    st = df_error(DF_EIO, "image.load: cannot decode %s (%s)", path, stb_reason());
    goto done;
  }
  if (dw != w || dh != h || dcomp < 1 || dcomp > 4) { /* the header and the decoder disagree: trust neither */
    st = df_error(DF_EIO, "image.load: %s decoded as %dx%d with %d channel(s) but its header says %dx%d", path, dw, dh,
                  dcomp, w, h);
    goto done;
  }
  if ((st = df_tensor_empty(&t, 3, (const int64_t[]){c, h, w}))) goto done;
  float *p = df_tensor_data(t);
  const double scale = ((double)hi - lo) / 255.0;
  const int64_t plane = (int64_t)h * w;
  for (int64_t i = 0; i < plane; i++) {
    const unsigned char *px = pixels + i * dcomp;
    int v[3];
    if (dcomp <= 2) { /* gray (+ alpha, dropped) */
      v[0] = v[1] = v[2] = px[0];
    } else if (c == 3) { /* RGB (+ alpha, dropped) */
      v[0] = px[0], v[1] = px[1], v[2] = px[2];
    } else { /* RGB to gray with stb_image's weights, as its own conversion does */
      v[0] = (px[0] * 77 + px[1] * 150 + px[2] * 29) >> 8;
    }
    for (int ch = 0; ch < c; ch++) p[ch * plane + i] = (float)(lo + v[ch] * scale);
  }
done:
  if (pixels) stbi_image_free(pixels);
  fclose(f);
  if (st) {
    df_tensor_release(t);
    return st;
  }
  *out = t;
  return DF_OK;
}

/* ---- save ------------------------------------------------------------- */

/* stb_image_write hands the encoded PNG to this callback (in one piece, as
 * the library is written today, but any number of pieces works). */
typedef struct {
  int fd;
  int err; /* first errno, 0 while all is well */
} png_sink;

static void sink_write(void *ctx, void *data, int size) {
  png_sink *s = ctx;
  const char *p = data;
  size_t left = size > 0 ? (size_t)size : 0;
  while (left && !s->err) {
    ssize_t k = write(s->fd, p, left);
    if (k < 0) {
      if (errno != EINTR) s->err = errno;
      continue;
    }
    p += k;
    left -= (size_t)k;
  }
}

/* Best effort: makes the rename itself durable. A failure here doesn't undo
 * a save that has already happened, so it is not reported. */
static void sync_parent_dir(const char *path) {
  const char *slash = strrchr(path, '/');
  char *dir = NULL;
  const char *name = ".";
  if (slash) {
    size_t n = slash == path ? 1 : (size_t)(slash - path);
    if (!(dir = df_malloc(n + 1))) return;
    memcpy(dir, path, n);
    dir[n] = '\0';
    name = dir;
  }
  int fd = open(name, O_RDONLY);
  if (fd >= 0) {
    (void)fsync(fd);
    close(fd);
  }
  df_free(dir);
}

static df_status write_png_atomic(const char *path, const unsigned char *pixels, int w, int h, int c) {
  static atomic_uint counter;
  size_t cap = strlen(path) + 48;
  char *tmp = df_malloc(cap);
  if (!tmp) return df_error(DF_ENOMEM, "image.save: out of memory");
  int fd = -1;
  for (int attempt = 0; attempt < 100; attempt++) {
    snprintf(tmp, cap, "%s.tmp-%ld-%u", path, (long)getpid(), atomic_fetch_add(&counter, 1));
    fd = open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0666); /* 0666: the umask applies, as for fopen */
    if (fd >= 0 || errno != EEXIST) break;
  }
  df_status st = DF_OK;
  if (fd < 0) {
    st = df_error(DF_EIO, "image.save: cannot create a temporary file next to %s: %s", path, strerror(errno));
    df_free(tmp);
    return st;
  }
  png_sink sink = {fd, 0};
  if (!stbi_write_png_to_func(sink_write, &sink, w, h, c, pixels, w * c)) {
    st = df_error(DF_ENOMEM, "image.save: stb_image_write could not encode %s (out of memory)", path);
  } else if (sink.err) {
    st = df_error(DF_EIO, "image.save: writing %s failed: %s", tmp, strerror(sink.err));
  } else if (fsync(fd) != 0) {
    st = df_error(DF_EIO, "image.save: flushing %s failed: %s", tmp, strerror(errno));
  }
  if (close(fd) != 0 && !st) st = df_error(DF_EIO, "image.save: closing %s failed: %s", tmp, strerror(errno));
  if (!st && rename(tmp, path) != 0)
    st = df_error(DF_EIO, "image.save: cannot rename %s to %s: %s", tmp, path, strerror(errno));
  if (st)
    unlink(tmp);
  else
    sync_parent_dir(path);
  df_free(tmp);
  return st;
}

df_status df_image_save_png(const df_tensor *x, const char *path, float lo, float hi) {
  char b[128];
  int64_t c, h, w, sc, sh, sw;
  if (x->ndim == 2) {
    c = 1, h = x->size[0], w = x->size[1];
    sc = 0, sh = x->stride[0], sw = x->stride[1];
  } else if (x->ndim == 3) {
    c = x->size[0], h = x->size[1], w = x->size[2];
    sc = x->stride[0], sh = x->stride[1], sw = x->stride[2];
  } else {
    return df_error(DF_EINVAL, "image.save: expected a (C, H, W) or (H, W) tensor, got shape %s",
                    df_format_shape(b, sizeof b, x->ndim, x->size));
  }
  if (c != 1 && c != 3)
    return df_error(DF_EINVAL, "image.save: a PNG is written from 1 (gray) or 3 (RGB) channels, got shape %s",
                    df_format_shape(b, sizeof b, x->ndim, x->size));
  if (h == 0 || w == 0)
    return df_error(DF_EINVAL, "image.save: the image is empty (shape %s)", df_format_shape(b, sizeof b, x->ndim, x->size));
  /* stb_image_write sizes its buffers as int: (w * c + 1) * h filter bytes */
  if (w > INT_MAX / 4 || h > INT_MAX / 4 || (w * c + 1) * h > INT_MAX / 2)
    return df_error(DF_EINVAL, "image.save: shape %s is too large for a PNG written by stb_image_write",
                    df_format_shape(b, sizeof b, x->ndim, x->size));
  df_status st = check_range("image.save", lo, hi);
  if (st) return st;

  unsigned char *pixels = df_malloc((size_t)(c * h * w));
  if (!pixels) return df_error(DF_ENOMEM, "image.save: out of memory for a %lldx%lld image", (long long)w, (long long)h);
  const float *p = df_tensor_data(x);
  const double scale = 255.0 / ((double)hi - lo);
  for (int64_t y = 0; y < h; y++)
    for (int64_t i = 0; i < w; i++)
      for (int64_t ch = 0; ch < c; ch++) {
        double q = ((double)p[ch * sc + y * sh + i * sw] - lo) * scale;
        unsigned char v;
        if (!(q > 0)) /* also NaN */
          v = 0;
        else if (q >= 255)
          v = 255;
        else
          v = (unsigned char)floor(q + 0.5); /* half up: 127.5 -> 128 */
        pixels[(y * w + i) * c + ch] = v;
      }
  st = write_png_atomic(path, pixels, (int)w, (int)h, (int)c);
  df_free(pixels);
  return st;
}

/* ---- resize ----------------------------------------------------------- */

/* One axis of a separable resize: output o reads `count[o]` consecutive
 * inputs from first[o], with weights weight[o * taps ...]. */
typedef struct {
  int64_t *first;
  int *count;
  double *weight;
  int taps;
} axis_map;

static void axis_free(axis_map *m) {
  df_free(m->first);
  df_free(m->count);
  df_free(m->weight);
  m->first = NULL, m->count = NULL, m->weight = NULL;
}

static df_status axis_build(axis_map *m, int64_t in, int64_t out) {
  const double s = (double)in / (double)out;
  m->taps = out < in ? (int)ceil(s) + 2 : 2;
  m->first = df_malloc((size_t)out * sizeof *m->first);
  m->count = df_malloc((size_t)out * sizeof *m->count);
  m->weight = df_malloc((size_t)out * (size_t)m->taps * sizeof *m->weight);
  if (!m->first || !m->count || !m->weight) {
    axis_free(m);
    return df_error(DF_ENOMEM, "image.resize: out of memory");
  }
  for (int64_t o = 0; o < out; o++) {
    double *wt = m->weight + o * m->taps;
    int n = 0;
    if (out < in) { /* area: the input interval [a, b) this output covers */
      double a = (double)o * s, b = (double)(o + 1) * s;
      int64_t i0 = (int64_t)floor(a), i1 = (int64_t)ceil(b);
      if (i1 > in) i1 = in;
      if (i1 - i0 > m->taps) i1 = i0 + m->taps; /* cannot happen; keeps writes in bounds */
      for (int64_t i = i0; i < i1; i++) {
        double lo = fmax(a, (double)i), hi = fmin(b, (double)(i + 1));
        wt[n++] = hi > lo ? hi - lo : 0;
      }
      m->first[o] = i0;
    } else { /* bilinear, half-pixel centres, edges clamped */
      double src = ((double)o + 0.5) * s - 0.5;
      if (src < 0) src = 0;
      if (src > (double)(in - 1)) src = (double)(in - 1);
      int64_t i0 = (int64_t)floor(src);
      double frac = src - (double)i0;
      m->first[o] = i0;
      wt[n++] = 1 - frac;
      if (frac > 0 && i0 + 1 < in) wt[n++] = frac;
    }
    double sum = 0;
    for (int k = 0; k < n; k++) sum += wt[k];
    for (int k = 0; k < n; k++) wt[k] /= sum;
    m->count[o] = n;
  }
  return DF_OK;
}

typedef struct {
  const float *src;
  float *dst;
  const axis_map *map;
  int64_t in_w, out_w; /* row lengths (pass 1) */
  int64_t in_h, out_h, width; /* plane geometry (pass 2) */
  int64_t rows, rows_per_task;
} resize_job;

/* pass 1: each row of W inputs -> w outputs */
static void resize_rows(int64_t task, void *ctx) {
  const resize_job *j = ctx;
  int64_t r0 = task * j->rows_per_task, r1 = r0 + j->rows_per_task < j->rows ? r0 + j->rows_per_task : j->rows;
  const axis_map *m = j->map;
  for (int64_t r = r0; r < r1; r++) {
    const float *in = j->src + r * j->in_w;
    float *o = j->dst + r * j->out_w;
    for (int64_t x = 0; x < j->out_w; x++) {
      const double *wt = m->weight + x * m->taps;
      const float *p = in + m->first[x];
      double acc = 0;
      for (int k = 0; k < m->count[x]; k++) acc += wt[k] * p[k];
      o[x] = (float)acc;
    }
  }
}

/* pass 2: output row r of plane b mixes input rows of the same plane */
static void resize_cols(int64_t task, void *ctx) {
  const resize_job *j = ctx;
  int64_t r0 = task * j->rows_per_task, r1 = r0 + j->rows_per_task < j->rows ? r0 + j->rows_per_task : j->rows;
  const axis_map *m = j->map;
  for (int64_t r = r0; r < r1; r++) {
    int64_t b = r / j->out_h, y = r % j->out_h;
    const double *wt = m->weight + y * m->taps;
    const float *plane = j->src + b * j->in_h * j->width + m->first[y] * j->width;
    float *o = j->dst + r * j->width;
    for (int64_t x = 0; x < j->width; x++) {
      double acc = 0;
      for (int k = 0; k < m->count[y]; k++) acc += wt[k] * plane[k * j->width + x];
      o[x] = (float)acc;
    }
  }
}

static int64_t rows_per_task(int64_t rows, int64_t row_len) {
  int64_t per = ((int64_t)1 << 14) / (row_len > 0 ? row_len : 1); /* about 16K outputs a task */
  if (per < 1) per = 1;
  return per < rows ? per : rows;
}

df_status df_image_resize(df_tensor **out, const df_tensor *x, int64_t h, int64_t w) {
  char b[128];
  if (x->ndim < 2)
    return df_error(DF_EINVAL, "image.resize: expected a (..., H, W) tensor, got shape %s",
                    df_format_shape(b, sizeof b, x->ndim, x->size));
  int64_t H = x->size[x->ndim - 2], W = x->size[x->ndim - 1];
  if (h < 1 || w < 1) return df_error(DF_EINVAL, "image.resize: the new size %lldx%lld must be positive", (long long)h, (long long)w);
  if (H < 1 || W < 1)
    return df_error(DF_EINVAL, "image.resize: cannot resize an empty image (shape %s)",
                    df_format_shape(b, sizeof b, x->ndim, x->size));
  int64_t size[DF_MAX_DIMS], numel;
  memcpy(size, x->size, sizeof size);
  size[x->ndim - 2] = h;
  size[x->ndim - 1] = w;
  df_status st = df_check_shape("image.resize", x->ndim, size, &numel);
  if (st) return st;
  int64_t batch = 1;
  for (int d = 0; d < x->ndim - 2; d++) batch *= x->size[d];

  axis_map mx = {0}, my = {0};
  df_tensor *src = NULL, *t = NULL;
  float *tmp = NULL;
  if ((st = axis_build(&mx, W, w)) || (st = axis_build(&my, H, h))) goto done;
  /* the intermediate (batch, H, w) must fit in memory like any tensor */
  int64_t tmp_numel;
  if ((st = df_check_shape("image.resize", 3, (const int64_t[]){batch, H, w}, &tmp_numel))) goto done;
  tmp = df_malloc((size_t)(tmp_numel > 0 ? tmp_numel : 1) * sizeof *tmp);
  if (!tmp) {
    st = df_error(DF_ENOMEM, "image.resize: out of memory");
    goto done;
  }
  bool prev = df_set_grad_enabled(false); /* reading x only: no node for the copy */
  st = df_tensor_contiguous(&src, x);
  df_set_grad_enabled(prev);
  if (st || (st = df_tensor_empty(&t, x->ndim, size))) goto done;
  if (batch > 0) {
    resize_job j1 = {.src = df_tensor_data(src), .dst = tmp, .map = &mx, .in_w = W, .out_w = w, .rows = batch * H};
    j1.rows_per_task = rows_per_task(j1.rows, w);
    df_parallel_for((j1.rows + j1.rows_per_task - 1) / j1.rows_per_task, resize_rows, &j1);
    resize_job j2 = {.src = tmp, .dst = df_tensor_data(t), .map = &my, .in_h = H, .out_h = h, .width = w,
                     .rows = batch * h};
    j2.rows_per_task = rows_per_task(j2.rows, w);
    df_parallel_for((j2.rows + j2.rows_per_task - 1) / j2.rows_per_task, resize_cols, &j2);
  }
done:
  axis_free(&mx);
  axis_free(&my);
  df_free(tmp);
  df_tensor_release(src);
  if (st) {
    df_tensor_release(t);
    return st;
  }
  *out = t;
  return DF_OK;
}
