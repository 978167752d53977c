/* safetensors.c — checkpoints in the safetensors format
 * (https://github.com/huggingface/safetensors).
 *
 * A file is an 8-byte little-endian header length N, N bytes of UTF-8 JSON
 *   {"__metadata__": {"key": "value", ...},
 *    "name": {"dtype": "F32", "shape": [2, 3], "data_offsets": [begin, end]}, ...}
 * then the data area: each tensor's raw little-endian bytes at [begin, end),
 * counted from the byte after the header.
 *
 * Loading trusts nothing in the file. The JSON parser below is strict (no
 * trailing commas, no leading zeros, valid UTF-8, escapes checked) and every
 * limit is enforced before anything is allocated from it: the header length
 * against 100 MB and the file size, each tensor's byte range against the
 * data area and against dtype size x product(shape) (overflow-checked), and
 * the tensors must tile the data area exactly, in offset order, with no gap
 * and no overlap. So a tensor's allocation never exceeds the bytes the file
 * really holds.
 *
 * Saving writes F32 in name order (the same tensors always make the same
 * bytes), pads the header with spaces to a multiple of 8, and replaces the
 * target atomically: a temporary file in the same directory is written,
 * flushed and fsynced, then renamed over the target, and the directory is
 * fsynced (best effort: some file systems refuse). On any failure the
 * temporary file is removed and an old file at the path is left untouched.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "../df.h"

#if defined(__BYTE_ORDER__) && defined(__ORDER_LITTLE_ENDIAN__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
#define HOST_LE 1
#else
#define HOST_LE 0
#endif

#define CHUNK 16384        /* elements converted per step through a scratch buffer */
#define MAX_JSON_DEPTH 64  /* nesting allowed inside values we skip */

enum { DT_F32, DT_F16, DT_BF16, DT_OTHER };

/* ---- little-endian helpers ---------------------------------------------- */

static uint64_t get_u64le(const unsigned char *p) {
  uint64_t v = 0;
  for (int i = 7; i >= 0; i--) v = v << 8 | p[i];
  return v;
}

static void put_u64le(unsigned char *p, uint64_t v) {
  for (int i = 0; i < 8; i++) p[i] = (unsigned char)(v >> (8 * i));
}

static void put_f32le(unsigned char *p, float f) {
  uint32_t u;
  memcpy(&u, &f, 4);
  p[0] = (unsigned char)u, p[1] = (unsigned char)(u >> 8), p[2] = (unsigned char)(u >> 16), p[3] = (unsigned char)(u >> 24);
}

static float bits_to_float(uint32_t u) {
  float f;
  memcpy(&f, &u, 4);
  return f;
}

static float f32_from_le(const unsigned char *p) {
  return bits_to_float((uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24);
}

/* IEEE half -> float, exactly (subnormals, infinities and NaN payloads kept). */
static float f16_to_float(uint16_t h) {
  uint32_t sign = (uint32_t)(h & 0x8000u) << 16, exp = (h >> 10) & 0x1fu, mant = h & 0x3ffu;
  if (exp == 0x1f) return bits_to_float(sign | 0x7f800000u | mant << 13);
  if (exp != 0) return bits_to_float(sign | (exp + 112) << 23 | mant << 13);
  if (mant == 0) return bits_to_float(sign);
  /* subnormal: mant * 2^-24, normalised into a float's exponent range */
  int e = -1;
  do {
    mant <<= 1;
    e++;
  } while (!(mant & 0x400u));
  return bits_to_float(sign | (uint32_t)(112 - e) << 23 | (mant & 0x3ffu) << 13);
}

static float bf16_to_float(uint16_t h) { return bits_to_float((uint32_t)h << 16); }

/* ---- UTF-8 -------------------------------------------------------------- */

/* Length of the valid UTF-8 sequence at s (n bytes available), or 0. */
static size_t utf8_seq(const unsigned char *s, size_t n) {
  unsigned c = s[0];
  if (c < 0x80) return 1;
  size_t len;
  uint32_t cp, min;
  if (c >= 0xc2 && c <= 0xdf) len = 2, cp = c & 0x1f, min = 0x80;
  else if (c >= 0xe0 && c <= 0xef) len = 3, cp = c & 0x0f, min = 0x800;
  else if (c >= 0xf0 && c <= 0xf4) len = 4, cp = c & 0x07, min = 0x10000;
  else return 0;
  if (len > n) return 0;
  for (size_t i = 1; i < len; i++) {
    if ((s[i] & 0xc0) != 0x80) return 0;
    cp = cp << 6 | (s[i] & 0x3f);
  }
  if (cp < min || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff)) return 0;
  return len;
}

static bool utf8_valid(const char *s) {
  const unsigned char *p = (const unsigned char *)s;
  size_t n = strlen(s);
  while (n) {
    size_t k = utf8_seq(p, n);
    if (!k) return false;
    p += k, n -= k;
  }
  return true;
}

/* ---- the header parser -------------------------------------------------- */

typedef struct {
  const unsigned char *s;
  size_t n, pos;
  const char *path;
} json;

#if defined(__GNUC__)
__attribute__((format(printf, 3, 4)))
#endif
static df_status jerr(const json *j, size_t at, const char *fmt, ...) {
  char what[384];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(what, sizeof what, fmt, ap);
  va_end(ap);
  return df_error(DF_EIO, "load_safetensors: %s: invalid header at byte %zu: %s", j->path, at, what);
}

static void ws(json *j) {
  while (j->pos < j->n) {
    unsigned char c = j->s[j->pos];
    if (c != ' ' && c != '\t' && c != '\n' && c != '\r') break;
    j->pos++;
  }
}

/* What the value at the current position looks like, for "expected X, got Y". */
static const char *found(const json *j) {
  if (j->pos >= j->n) return "the end of the header";
  switch (j->s[j->pos]) {
    case '{': return "an object";
    case '[': return "an array";
    case '"': return "a string";
    case 't': case 'f': return "a boolean";
    case 'n': return "null";
    case '-': case '0': case '1': case '2': case '3': case '4': case '5': case '6': case '7': case '8': case '9':
      return "a number";
    default: return "an invalid character";
  }
}

static df_status expect_char(json *j, char c, const char *context) {
  ws(j);
  if (j->pos < j->n && j->s[j->pos] == (unsigned char)c) {
    j->pos++;
    return DF_OK;
  }
  return jerr(j, j->pos, "expected '%c' %s, got %s", c, context, found(j));
}

static int hex_value(unsigned char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

static df_status hex4(json *j, uint32_t *v) {
  if (j->n - j->pos < 4) return jerr(j, j->pos, "\\u escape cut short by the end of the header");
  *v = 0;
  for (int i = 0; i < 4; i++) {
    int h = hex_value(j->s[j->pos + (size_t)i]);
    if (h < 0) return jerr(j, j->pos + (size_t)i, "\\u escape needs 4 hex digits");
    *v = *v << 4 | (uint32_t)h;
  }
  j->pos += 4;
  return DF_OK;
}

static size_t utf8_put(unsigned char *o, uint32_t cp) {
  if (cp < 0x80) return o[0] = (unsigned char)cp, 1;
  if (cp < 0x800) return o[0] = (unsigned char)(0xc0 | cp >> 6), o[1] = (unsigned char)(0x80 | (cp & 0x3f)), 2;
  if (cp < 0x10000) {
    o[0] = (unsigned char)(0xe0 | cp >> 12), o[1] = (unsigned char)(0x80 | (cp >> 6 & 0x3f));
    o[2] = (unsigned char)(0x80 | (cp & 0x3f));
    return 3;
  }
  o[0] = (unsigned char)(0xf0 | cp >> 18), o[1] = (unsigned char)(0x80 | (cp >> 12 & 0x3f));
  o[2] = (unsigned char)(0x80 | (cp >> 6 & 0x3f)), o[3] = (unsigned char)(0x80 | (cp & 0x3f));
  return 4;
}

/* A string at the current position. With out, its decoded bytes (owned,
 * NUL-terminated; *len excludes the NUL, so an embedded \u0000 shows as
 * strlen < *len); without, it is only checked. */
static df_status parse_string(json *j, char **out, size_t *len) {
  ws(j);
  if (j->pos >= j->n || j->s[j->pos] != '"') return jerr(j, j->pos, "expected a string, got %s", found(j));
  size_t start = ++j->pos, end = start;
  while (end < j->n && j->s[end] != '"') end += j->s[end] == '\\' ? 2 : 1;
  if (end >= j->n) return jerr(j, start - 1, "unterminated string");
  unsigned char *o = NULL;
  if (out && !(o = df_malloc(end - start + 1)))
    return df_error(DF_ENOMEM, "load_safetensors: %s: out of memory parsing the header", j->path);
  size_t k = 0;
  while (j->pos < end) {
    size_t at = j->pos;
    unsigned char c = j->s[at];
    df_status st = DF_OK;
    if (c < 0x20) {
      st = jerr(j, at, "control character 0x%02x in a string (it must be escaped)", c);
    } else if (c >= 0x80) {
      size_t sl = utf8_seq(j->s + at, end - at);
      if (!sl) st = jerr(j, at, "invalid UTF-8 in a string");
      else {
        if (o) memcpy(o + k, j->s + at, sl);
        k += sl, j->pos += sl;
      }
    } else if (c != '\\') {
      if (o) o[k] = c;
      k++, j->pos++;
    } else {
      unsigned char e = j->s[at + 1];
      j->pos += 2;
      const char *simple = strchr("\"\\/bfnrt", e);
      if (e && simple) {
        static const char map[] = "\"\\/\b\f\n\r\t";
        if (o) o[k] = (unsigned char)map[simple - "\"\\/bfnrt"];
        k++;
      } else if (e == 'u') {
        uint32_t cp;
        st = hex4(j, &cp);
        if (!st && cp >= 0xdc00 && cp <= 0xdfff) st = jerr(j, at, "\\u escape is a lone low surrogate");
        if (!st && cp >= 0xd800 && cp <= 0xdbff) {
          uint32_t lo = 0;
          if (j->pos + 1 >= end || j->s[j->pos] != '\\' || j->s[j->pos + 1] != 'u')
            st = jerr(j, at, "\\u escape is a high surrogate without its low half");
          else {
            j->pos += 2;
            st = hex4(j, &lo);
            if (!st && (lo < 0xdc00 || lo > 0xdfff))
              st = jerr(j, at, "\\u escape is a high surrogate without its low half");
            cp = 0x10000 + ((cp - 0xd800) << 10) + (lo - 0xdc00);
          }
        }
        if (!st) {
          unsigned char tmp[4];
          size_t sl = utf8_put(tmp, cp);
          if (o) memcpy(o + k, tmp, sl);
          k += sl;
        }
      } else {
        st = jerr(j, at, "invalid escape '\\%c' in a string", e >= 0x20 && e < 0x7f ? e : '?');
      }
    }
    if (st) {
      df_free(o);
      return st;
    }
  }
  j->pos = end + 1;
  if (o) {
    o[k] = 0;
    *out = (char *)o;
  }
  if (len) *len = k;
  return DF_OK;
}

/* An integer at the current position (JSON grammar, no fraction or
 * exponent), into *v; `what` names it in errors. */
static df_status parse_int(json *j, int64_t *v, const char *what) {
  ws(j);
  size_t at = j->pos, p = at;
  bool neg = p < j->n && j->s[p] == '-';
  if (neg) p++;
  if (p >= j->n || j->s[p] < '0' || j->s[p] > '9') return jerr(j, at, "%s must be an integer, got %s", what, found(j));
  if (j->s[p] == '0' && p + 1 < j->n && j->s[p + 1] >= '0' && j->s[p + 1] <= '9')
    return jerr(j, at, "%s: a number must not have a leading zero", what);
  uint64_t m = 0;
  for (; p < j->n && j->s[p] >= '0' && j->s[p] <= '9'; p++) {
    unsigned d = j->s[p] - '0';
    if (m > ((uint64_t)INT64_MAX - d) / 10) return jerr(j, at, "%s is out of range", what);
    m = m * 10 + d;
  }
  if (p < j->n && (j->s[p] == '.' || j->s[p] == 'e' || j->s[p] == 'E'))
    return jerr(j, at, "%s must be an integer, got a fraction or exponent", what);
  j->pos = p;
  *v = neg ? -(int64_t)m : (int64_t)m;
  return DF_OK;
}

/* Any JSON value, checked and skipped (for keys we don't use). */
static df_status skip_value(json *j, int depth) {
  ws(j);
  if (j->pos >= j->n) return jerr(j, j->pos, "expected a value, got the end of the header");
  size_t at = j->pos;
  unsigned char c = j->s[at];
  df_status st;
  if (c == '{' || c == '[') {
    if (depth >= MAX_JSON_DEPTH) return jerr(j, at, "values nested deeper than %d", MAX_JSON_DEPTH);
    char close = c == '{' ? '}' : ']';
    j->pos++;
    ws(j);
    if (j->pos < j->n && j->s[j->pos] == (unsigned char)close) return j->pos++, DF_OK;
    for (;;) {
      if (c == '{') {
        if ((st = parse_string(j, NULL, NULL))) return st;
        if ((st = expect_char(j, ':', "after an object key"))) return st;
      }
      if ((st = skip_value(j, depth + 1))) return st;
      ws(j);
      if (j->pos < j->n && j->s[j->pos] == ',') {
        j->pos++;
        continue;
      }
      return expect_char(j, close, c == '{' ? "or ',' in an object" : "or ',' in an array");
    }
  }
  if (c == '"') return parse_string(j, NULL, NULL);
  if (c == '-' || (c >= '0' && c <= '9')) {
    size_t p = at + (c == '-');
    if (p >= j->n || j->s[p] < '0' || j->s[p] > '9') return jerr(j, at, "invalid number");
    if (j->s[p] == '0' && p + 1 < j->n && j->s[p + 1] >= '0' && j->s[p + 1] <= '9')
      return jerr(j, at, "a number must not have a leading zero");
    while (p < j->n && j->s[p] >= '0' && j->s[p] <= '9') p++;
    if (p < j->n && j->s[p] == '.') {
      if (++p >= j->n || j->s[p] < '0' || j->s[p] > '9') return jerr(j, at, "invalid number");
      while (p < j->n && j->s[p] >= '0' && j->s[p] <= '9') p++;
    }
    if (p < j->n && (j->s[p] == 'e' || j->s[p] == 'E')) {
      p++;
      if (p < j->n && (j->s[p] == '+' || j->s[p] == '-')) p++;
      if (p >= j->n || j->s[p] < '0' || j->s[p] > '9') return jerr(j, at, "invalid number");
      while (p < j->n && j->s[p] >= '0' && j->s[p] <= '9') p++;
    }
    j->pos = p;
    return DF_OK;
  }
  static const char *const literals[] = {"true", "false", "null"};
  for (int i = 0; i < 3; i++) {
    size_t l = strlen(literals[i]);
    if (j->n - at >= l && !memcmp(j->s + at, literals[i], l)) {
      j->pos += l;
      return DF_OK;
    }
  }
  return jerr(j, at, "expected a value, got %s", found(j));
}

/* An array of at most `max` integers into v; *count receives how many. */
static df_status parse_int_array(json *j, int64_t *v, int max, int *count, const char *name, const char *key) {
  char what[96];
  ws(j);
  if (j->pos >= j->n || j->s[j->pos] != '[')
    return jerr(j, j->pos, "tensor \"%s\": %s must be an array, got %s", name, key, found(j));
  j->pos++;
  *count = 0;
  ws(j);
  if (j->pos < j->n && j->s[j->pos] == ']') return j->pos++, DF_OK;
  for (;;) {
    ws(j);
    if (*count == max) {
      return jerr(j, j->pos, "tensor \"%s\": %s has more than %d %s", name, key, max,
                  max == DF_MAX_DIMS ? "dims" : "elements");
    }
    snprintf(what, sizeof what, "tensor \"%s\": %s[%d]", name, key, *count);
    df_status st = parse_int(j, &v[*count], what);
    if (st) return st;
    (*count)++;
    ws(j);
    if (j->pos < j->n && j->s[j->pos] == ',') {
      j->pos++;
      continue;
    }
    return expect_char(j, ']', "or ',' in an array");
  }
}

/* ---- the header's entries ----------------------------------------------- */

typedef struct {
  char *name;
  int dtype;
  int ndim;
  int64_t shape[DF_MAX_DIMS];
  int64_t begin, end;
} entry;

typedef struct {
  char *key, *value;
} pair;

typedef struct {
  entry *e;
  size_t n, cap;
  pair *meta;
  size_t nmeta, capmeta;
} header;

static void header_free(header *h) {
  for (size_t i = 0; i < h->n; i++) df_free(h->e[i].name);
  for (size_t i = 0; i < h->nmeta; i++) df_free(h->meta[i].key), df_free(h->meta[i].value);
  df_free(h->e);
  df_free(h->meta);
}

/* Makes room for one more element in an array of `elem` bytes. */
static bool grow(void **arr, size_t n, size_t *cap, size_t elem) {
  if (n < *cap) return true;
  size_t ncap = *cap ? *cap * 2 : 16;
  void *p = df_malloc(ncap * elem);
  if (!p) return false;
  if (n) memcpy(p, *arr, n * elem);
  df_free(*arr);
  *arr = p;
  *cap = ncap;
  return true;
}

static const struct {
  const char *name;
  int size;
  int kind;
} dtypes[] = {
    {"F32", 4, DT_F32},   {"F16", 2, DT_F16},    {"BF16", 2, DT_BF16},   {"F64", 8, DT_OTHER},
    {"I64", 8, DT_OTHER}, {"I32", 4, DT_OTHER},  {"I16", 2, DT_OTHER},   {"I8", 1, DT_OTHER},
    {"U64", 8, DT_OTHER}, {"U32", 4, DT_OTHER},  {"U16", 2, DT_OTHER},   {"U8", 1, DT_OTHER},
    {"BOOL", 1, DT_OTHER}, {"F8_E4M3", 1, DT_OTHER}, {"F8_E5M2", 1, DT_OTHER}, {"C64", 8, DT_OTHER},
};

static const int dtype_size[] = {4, 2, 2};

/* {"dtype": ..., "shape": [...], "data_offsets": [b, e]} for tensor `name`,
 * checked against the data area of data_len bytes. */
static df_status parse_tensor(json *j, entry *t, uint64_t data_len) {
  const char *name = t->name;
  size_t at = (ws(j), j->pos);
  if (j->pos >= j->n || j->s[j->pos] != '{')
    return jerr(j, at, "tensor \"%s\" must be an object, got %s", name, found(j));
  j->pos++;
  bool have_dtype = false, have_shape = false, have_offsets = false;
  df_status st;
  ws(j);
  if (j->pos < j->n && j->s[j->pos] == '}') j->pos++;
  else {
    for (;;) {
      char *key = NULL;
      size_t key_at = (ws(j), j->pos);
      if ((st = parse_string(j, &key, NULL))) return st;
      if ((st = expect_char(j, ':', "after an object key"))) {
        df_free(key);
        return st;
      }
      bool *seen = !strcmp(key, "dtype") ? &have_dtype : !strcmp(key, "shape") ? &have_shape
                 : !strcmp(key, "data_offsets") ? &have_offsets : NULL;
      if (seen && *seen) st = jerr(j, key_at, "tensor \"%s\" has two \"%s\" keys", name, key);
      else if (seen == &have_dtype) {
        char *dt = NULL;
        size_t dt_at = (ws(j), j->pos);
        if (dt_at >= j->n || j->s[dt_at] != '"')
          st = jerr(j, dt_at, "tensor \"%s\": dtype must be a string, got %s", name, found(j));
        else if (!(st = parse_string(j, &dt, NULL))) {
          t->dtype = -1;
          for (size_t i = 0; i < sizeof dtypes / sizeof *dtypes; i++)
            if (!strcmp(dt, dtypes[i].name)) t->dtype = dtypes[i].kind;
          if (t->dtype == DT_OTHER)
            st = jerr(j, dt_at, "tensor \"%s\" has dtype %s; only F32, F16 and BF16 can be loaded", name, dt);
          else if (t->dtype < 0)
            st = jerr(j, dt_at, "tensor \"%s\" has unknown dtype \"%.64s\"", name, dt);
          df_free(dt);
        }
      } else if (seen == &have_shape) {
        size_t shape_at = (ws(j), j->pos);
        if (!(st = parse_int_array(j, t->shape, DF_MAX_DIMS, &t->ndim, name, "shape"))) {
          for (int d = 0; d < t->ndim && !st; d++)
            if (t->shape[d] < 0)
              st = jerr(j, shape_at, "tensor \"%s\": shape has a negative size (%lld)", name, (long long)t->shape[d]);
        }
      } else if (seen == &have_offsets) {
        int64_t off[2];
        int count;
        size_t off_at = (ws(j), j->pos);
        if (!(st = parse_int_array(j, off, 2, &count, name, "data_offsets")) && count != 2)
          st = jerr(j, off_at, "tensor \"%s\": data_offsets must be [begin, end], got %d numbers", name, count);
        if (!st && (off[0] < 0 || off[1] < 0))
          st = jerr(j, off_at, "tensor \"%s\": data_offsets must not be negative", name);
        t->begin = off[0], t->end = off[1];
      } else {
        st = skip_value(j, 1); /* an extra key: ignored, as the reference reader does */
      }
      df_free(key);
      if (st) return st;
      if (seen) *seen = true;
      ws(j);
      if (j->pos < j->n && j->s[j->pos] == ',') {
        j->pos++;
        continue;
      }
      if ((st = expect_char(j, '}', "or ',' in an object"))) return st;
      break;
    }
  }
  const char *missing = !have_dtype ? "dtype" : !have_shape ? "shape" : !have_offsets ? "data_offsets" : NULL;
  if (missing) return jerr(j, at, "tensor \"%s\" has no %s", name, missing);

  /* the byte range: inside the data area and exactly as long as the shape needs */
  if (t->end < t->begin)
    return jerr(j, at, "tensor \"%s\": data_offsets [%lld, %lld] end before they begin", name, (long long)t->begin,
                (long long)t->end);
  if ((uint64_t)t->end > data_len)
    return jerr(j, at, "tensor \"%s\": data_offsets [%lld, %lld] run past the data area (%llu bytes)", name,
                (long long)t->begin, (long long)t->end, (unsigned long long)data_len);
  uint64_t bytes = (uint64_t)dtype_size[t->dtype];
  bool overflow = false;
  for (int d = 0; d < t->ndim; d++) {
    uint64_t s = (uint64_t)t->shape[d];
    if (s && bytes > UINT64_MAX / s) overflow = true;
    else bytes *= s;
  }
  char shape[160];
  df_format_shape(shape, sizeof shape, t->ndim, t->shape);
  if (overflow) return jerr(j, at, "tensor \"%s\": shape %s is too large", name, shape);
  if (bytes != (uint64_t)(t->end - t->begin))
    return jerr(j, at, "tensor \"%s\": shape %s of %s needs %llu bytes, data_offsets [%lld, %lld] hold %lld", name,
                shape, dtypes[t->dtype].name, (unsigned long long)bytes, (long long)t->begin, (long long)t->end,
                (long long)(t->end - t->begin));
  return DF_OK;
}

/* "__metadata__": {"key": "value", ...} */
static df_status parse_metadata(json *j, header *h) {
  size_t at = (ws(j), j->pos);
  if (j->pos >= j->n || j->s[j->pos] != '{') return jerr(j, at, "__metadata__ must be an object, got %s", found(j));
  j->pos++;
  ws(j);
  if (j->pos < j->n && j->s[j->pos] == '}') return j->pos++, DF_OK;
  for (;;) {
    df_status st;
    char *key = NULL, *value = NULL;
    size_t klen, vlen, key_at = (ws(j), j->pos);
    if ((st = parse_string(j, &key, &klen))) return st;
    if (strlen(key) != klen) st = jerr(j, key_at, "__metadata__ key contains a NUL character");
    if (!st) st = expect_char(j, ':', "after an object key");
    size_t value_at = (ws(j), j->pos);
    if (!st && (value_at >= j->n || j->s[value_at] != '"'))
      st = jerr(j, value_at, "__metadata__ values must be strings; \"%s\" is %s", key, found(j));
    if (!st) st = parse_string(j, &value, &vlen);
    if (!st && strlen(value) != vlen) st = jerr(j, value_at, "__metadata__ value contains a NUL character");
    for (size_t i = 0; !st && i < h->nmeta; i++)
      if (!strcmp(h->meta[i].key, key)) st = jerr(j, key_at, "__metadata__ has the key \"%s\" twice", key);
    if (!st && !grow((void **)&h->meta, h->nmeta, &h->capmeta, sizeof *h->meta))
      st = df_error(DF_ENOMEM, "load_safetensors: %s: out of memory parsing the header", j->path);
    if (st) {
      df_free(key);
      df_free(value);
      return st;
    }
    h->meta[h->nmeta].key = key;
    h->meta[h->nmeta++].value = value;
    ws(j);
    if (j->pos < j->n && j->s[j->pos] == ',') {
      j->pos++;
      continue;
    }
    return expect_char(j, '}', "or ',' in __metadata__");
  }
}

static df_status parse_header(json *j, header *h, uint64_t data_len) {
  df_status st;
  if ((st = expect_char(j, '{', "at the start of the header"))) return st;
  bool have_meta = false;
  ws(j);
  if (j->pos < j->n && j->s[j->pos] == '}') j->pos++;
  else {
    for (;;) {
      char *key = NULL;
      size_t klen, key_at = (ws(j), j->pos);
      if ((st = parse_string(j, &key, &klen))) return st;
      if (!klen) st = jerr(j, key_at, "a tensor name is empty");
      else if (strlen(key) != klen) st = jerr(j, key_at, "tensor name \"%s...\" contains a NUL character", key);
      if (!st) st = expect_char(j, ':', "after an object key");
      if (!st && !strcmp(key, "__metadata__")) {
        df_free(key);
        if (have_meta) return jerr(j, key_at, "the header has two \"__metadata__\" keys");
        have_meta = true;
        if ((st = parse_metadata(j, h))) return st;
      } else {
        if (!st && !grow((void **)&h->e, h->n, &h->cap, sizeof *h->e))
          st = df_error(DF_ENOMEM, "load_safetensors: %s: out of memory parsing the header", j->path);
        if (st) {
          df_free(key);
          return st;
        }
        entry *t = &h->e[h->n++];
        memset(t, 0, sizeof *t);
        t->name = key; /* owned by h from here */
        if ((st = parse_tensor(j, t, data_len))) return st;
      }
      ws(j);
      if (j->pos < j->n && j->s[j->pos] == ',') {
        j->pos++;
        continue;
      }
      if ((st = expect_char(j, '}', "or ',' in the header object"))) return st;
      break;
    }
  }
  ws(j);
  if (j->pos < j->n) return jerr(j, j->pos, "unexpected data after the header object");
  return DF_OK;
}

static int by_name(const void *a, const void *b) {
  return strcmp(((const entry *)a)->name, ((const entry *)b)->name);
}

static int by_offset(const void *pa, const void *pb) {
  const entry *a = pa, *b = pb;
  if (a->begin != b->begin) return a->begin < b->begin ? -1 : 1;
  if (a->end != b->end) return a->end < b->end ? -1 : 1;
  return strcmp(a->name, b->name);
}

/* Names unique; byte ranges tiling [0, data_len) in order. Sorts h->e by offset. */
static df_status check_layout(header *h, const char *path, uint64_t data_len) {
  if (h->n > 1) qsort(h->e, h->n, sizeof *h->e, by_name);
  for (size_t i = 1; i < h->n; i++)
    if (!strcmp(h->e[i - 1].name, h->e[i].name))
      return df_error(DF_EIO, "load_safetensors: %s: duplicate tensor name \"%s\"", path, h->e[i].name);
  if (h->n > 1) qsort(h->e, h->n, sizeof *h->e, by_offset);
  uint64_t expected = 0;
  for (size_t i = 0; i < h->n; i++) {
    const entry *t = &h->e[i];
    if ((uint64_t)t->begin != expected) {
      const char *prev = i ? h->e[i - 1].name : NULL;
      if ((uint64_t)t->begin < expected)
        return df_error(DF_EIO, "load_safetensors: %s: tensor \"%s\" (data_offsets [%lld, %lld]) overlaps tensor \"%s\"",
                        path, t->name, (long long)t->begin, (long long)t->end, prev);
      return df_error(DF_EIO, "load_safetensors: %s: a gap of %llu bytes before tensor \"%s\" (data_offsets [%lld, %lld]); "
                      "tensors must be contiguous", path, (unsigned long long)((uint64_t)t->begin - expected), t->name,
                      (long long)t->begin, (long long)t->end);
    }
    expected = (uint64_t)t->end;
  }
  if (expected != data_len)
    return df_error(DF_EIO, "load_safetensors: %s: the data area has %llu bytes after the last tensor", path,
                    (unsigned long long)(data_len - expected));
  return DF_OK;
}

/* ---- loading ------------------------------------------------------------ */

void df_safetensors_free(df_safetensors *ck) {
  if (!ck) return;
  for (int64_t i = 0; i < ck->ntensors; i++) {
    if (ck->names) df_free(ck->names[i]);
    if (ck->tensors) df_tensor_release(ck->tensors[i]);
  }
  for (int64_t i = 0; i < ck->nmeta; i++) {
    if (ck->meta_keys) df_free(ck->meta_keys[i]);
    if (ck->meta_values) df_free(ck->meta_values[i]);
  }
  df_free(ck->names);
  df_free(ck->tensors);
  df_free(ck->meta_keys);
  df_free(ck->meta_values);
  df_free(ck);
}

/* Reads tensor e's bytes (the next ones in f) into a new float32 tensor. */
static df_status read_tensor(df_tensor **out, FILE *f, const entry *e, const char *path, unsigned char *scratch) {
  df_tensor *t = NULL;
  df_status st = df_tensor_empty(&t, e->ndim, e->shape);
  if (st) {
    char why[256];
    snprintf(why, sizeof why, "%s", df_last_error());
    return df_error(st, "load_safetensors: %s: tensor \"%s\": %s", path, e->name, why);
  }
  int64_t numel = df_tensor_numel(t);
  float *dst = df_tensor_data(t);
  int esize = dtype_size[e->dtype];
  for (int64_t done = 0; done < numel;) {
    size_t k = (size_t)(numel - done < CHUNK ? numel - done : CHUNK);
    bool direct = HOST_LE && e->dtype == DT_F32;
    unsigned char *buf = direct ? (unsigned char *)(dst + done) : scratch;
    if (fread(buf, (size_t)esize, k, f) != k) {
      df_tensor_release(t);
      return df_error(DF_EIO, "load_safetensors: %s: the file ended (or failed) while reading tensor \"%s\"", path,
                      e->name);
    }
    if (!direct) {
      for (size_t i = 0; i < k; i++) {
        const unsigned char *p = buf + i * (size_t)esize;
        uint16_t h = (uint16_t)(p[0] | p[1] << 8);
        dst[done + (int64_t)i] = e->dtype == DT_F32 ? f32_from_le(p) : e->dtype == DT_F16 ? f16_to_float(h) : bf16_to_float(h);
      }
    }
    done += (int64_t)k;
  }
  *out = t;
  return DF_OK;
}

df_status df_safetensors_load(df_safetensors **out, const char *path) {
  FILE *f = fopen(path, "rb");
  if (!f) return df_error(DF_EIO, "load_safetensors: cannot open %s: %s", path, strerror(errno));
  df_status st = DF_OK;
  header h = {0};
  unsigned char *text = NULL, *scratch = NULL;
  df_safetensors *ck = NULL;
  struct stat sb;
  if (fstat(fileno(f), &sb) != 0 || !S_ISREG(sb.st_mode)) {
    st = df_error(DF_EIO, "load_safetensors: %s is not a regular file", path);
    goto done;
  }
  uint64_t fsize = (uint64_t)sb.st_size;
  unsigned char lenbuf[8];
  if (fsize < 8 || fread(lenbuf, 1, 8, f) != 8) {
    st = df_error(DF_EIO, "load_safetensors: %s is too short for a safetensors file (%llu bytes; the header length "
                  "alone takes 8)", path, (unsigned long long)fsize);
    goto done;
  }
  uint64_t hlen = get_u64le(lenbuf);
  if (hlen > DF_SAFETENSORS_MAX_HEADER) {
    st = df_error(DF_EIO, "load_safetensors: %s: header length %llu exceeds the limit of %d bytes (100 MB)", path,
                  (unsigned long long)hlen, DF_SAFETENSORS_MAX_HEADER);
    goto done;
  }
  if (hlen > fsize - 8) {
    st = df_error(DF_EIO, "load_safetensors: %s: header length %llu runs past the end of the file (%llu bytes)", path,
                  (unsigned long long)hlen, (unsigned long long)fsize);
    goto done;
  }
  uint64_t data_len = fsize - 8 - hlen;
  if (!(text = df_malloc((size_t)hlen + 1))) {
    st = df_error(DF_ENOMEM, "load_safetensors: %s: out of memory for a header of %llu bytes", path,
                  (unsigned long long)hlen);
    goto done;
  }
  if (fread(text, 1, (size_t)hlen, f) != (size_t)hlen) {
    st = df_error(DF_EIO, "load_safetensors: %s: the file ended (or failed) inside the header", path);
    goto done;
  }
  json j = {text, (size_t)hlen, 0, path};
  if ((st = parse_header(&j, &h, data_len))) goto done;
  if ((st = check_layout(&h, path, data_len))) goto done;

  if (!(ck = df_calloc(1, sizeof *ck)) || !(ck->names = df_calloc(h.n, sizeof(char *))) ||
      !(ck->tensors = df_calloc(h.n, sizeof(df_tensor *))) || !(ck->meta_keys = df_calloc(h.nmeta, sizeof(char *))) ||
      !(ck->meta_values = df_calloc(h.nmeta, sizeof(char *))) || !(scratch = df_malloc(CHUNK * 4))) {
    st = df_error(DF_ENOMEM, "load_safetensors: %s: out of memory", path);
    goto done;
  }
  ck->ntensors = (int64_t)h.n;
  ck->nmeta = (int64_t)h.nmeta;
  for (size_t i = 0; i < h.nmeta; i++) {
    ck->meta_keys[i] = h.meta[i].key, ck->meta_values[i] = h.meta[i].value;
    h.meta[i].key = h.meta[i].value = NULL;
  }
  /* h.e is in offset order and tiles the data area, so the reads are sequential */
  for (size_t i = 0; i < h.n; i++) {
    if ((st = read_tensor(&ck->tensors[i], f, &h.e[i], path, scratch))) goto done;
    ck->names[i] = h.e[i].name;
    h.e[i].name = NULL;
  }
done:
  fclose(f);
  df_free(text);
  df_free(scratch);
  header_free(&h);
  if (st) {
    df_safetensors_free(ck);
    return st;
  }
  *out = ck;
  return DF_OK;
}

/* ---- saving ------------------------------------------------------------- */

typedef struct {
  char *p;
  size_t len, cap;
  bool failed;
} strbuf;

static void sb_put(strbuf *b, const char *s, size_t n) {
  if (b->failed) return;
  if (b->len + n + 1 > b->cap) {
    size_t ncap = b->cap ? b->cap : 256;
    while (ncap < b->len + n + 1) ncap *= 2;
    char *p = df_malloc(ncap);
    if (!p) {
      b->failed = true;
      return;
    }
    if (b->len) memcpy(p, b->p, b->len);
    df_free(b->p);
    b->p = p;
    b->cap = ncap;
  }
  memcpy(b->p + b->len, s, n);
  b->len += n;
}

static void sb_str(strbuf *b, const char *s) { sb_put(b, s, strlen(s)); }

static void sb_int(strbuf *b, int64_t v) {
  char tmp[32];
  int n = snprintf(tmp, sizeof tmp, "%lld", (long long)v);
  sb_put(b, tmp, (size_t)n);
}

/* A JSON string: quotes, backslashes and control characters escaped. */
static void sb_json_string(strbuf *b, const char *s) {
  sb_put(b, "\"", 1);
  for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
    char esc[8];
    switch (*p) {
      case '"': sb_put(b, "\\\"", 2); break;
      case '\\': sb_put(b, "\\\\", 2); break;
      case '\n': sb_put(b, "\\n", 2); break;
      case '\r': sb_put(b, "\\r", 2); break;
      case '\t': sb_put(b, "\\t", 2); break;
      default:
        if (*p < 0x20) {
          snprintf(esc, sizeof esc, "\\u%04x", *p);
          sb_put(b, esc, 6);
        } else {
          sb_put(b, (const char *)p, 1);
        }
    }
  }
  sb_put(b, "\"", 1);
}

typedef struct {
  const char *name;
  int64_t index;
} named;

static int named_cmp(const void *a, const void *b) { return strcmp(((const named *)a)->name, ((const named *)b)->name); }

/* Sorts n strings (with their positions) into *out and checks them:
 * non-NULL, valid UTF-8, unique; `what` names them in errors. */
static df_status sorted_names(named **out, int64_t n, const char *const *s, const char *what) {
  named *v = df_malloc((size_t)(n ? n : 1) * sizeof *v);
  if (!v) return df_error(DF_ENOMEM, "save_safetensors: out of memory");
  df_status st = DF_OK;
  for (int64_t i = 0; i < n && !st; i++) {
    v[i].name = s[i], v[i].index = i;
    if (!s[i]) st = df_error(DF_EINVAL, "save_safetensors: %s %lld is NULL", what, (long long)i);
    else if (!utf8_valid(s[i])) st = df_error(DF_EINVAL, "save_safetensors: %s \"%s\" is not valid UTF-8", what, s[i]);
  }
  if (!st && n > 1) {
    qsort(v, (size_t)n, sizeof *v, named_cmp);
    for (int64_t i = 1; i < n && !st; i++)
      if (!strcmp(v[i - 1].name, v[i].name)) st = df_error(DF_EINVAL, "save_safetensors: duplicate %s \"%s\"", what, v[i].name);
  }
  if (st) {
    df_free(v);
    return st;
  }
  *out = v;
  return DF_OK;
}

static bool write_all(FILE *f, const void *p, size_t n) { return fwrite(p, 1, n, f) == n; }

/* t's elements in row-major order as little-endian F32. */
static bool write_tensor(FILE *f, const df_tensor *t, unsigned char *buf) {
  int64_t numel = df_tensor_numel(t);
  if (numel == 0) return true;
  const float *data = df_tensor_data(t);
  if (HOST_LE && df_tensor_is_contiguous(t)) return fwrite(data, sizeof(float), (size_t)numel, f) == (size_t)numel;
  int64_t idx[DF_MAX_DIMS] = {0}, off = 0;
  size_t fill = 0;
  for (int64_t i = 0; i < numel; i++) {
    put_f32le(buf + 4 * fill, data[off]);
    if (++fill == CHUNK) {
      if (!write_all(f, buf, 4 * fill)) return false;
      fill = 0;
    }
    for (int d = t->ndim - 1; d >= 0; d--) {
      off += t->stride[d];
      if (++idx[d] < t->size[d]) break;
      off -= t->stride[d] * t->size[d];
      idx[d] = 0;
    }
  }
  return write_all(f, buf, 4 * fill);
}

/* The header JSON, padded with spaces to a multiple of 8 bytes. */
static df_status build_header(strbuf *b, const named *order, int64_t n, const df_tensor *const *tensors,
                              const named *morder, int64_t nmeta, const char *const *meta_values) {
  sb_str(b, "{");
  if (nmeta) {
    sb_str(b, "\"__metadata__\":{");
    for (int64_t i = 0; i < nmeta; i++) {
      if (i) sb_str(b, ",");
      sb_json_string(b, morder[i].name);
      sb_str(b, ":");
      sb_json_string(b, meta_values[morder[i].index]);
    }
    sb_str(b, "}");
  }
  int64_t offset = 0;
  for (int64_t i = 0; i < n; i++) {
    const df_tensor *t = tensors[order[i].index];
    if (i || nmeta) sb_str(b, ",");
    sb_json_string(b, order[i].name);
    sb_str(b, ":{\"dtype\":\"F32\",\"shape\":[");
    for (int d = 0; d < t->ndim; d++) {
      if (d) sb_str(b, ",");
      sb_int(b, t->size[d]);
    }
    int64_t bytes = df_tensor_numel(t) * (int64_t)sizeof(float);
    sb_str(b, "],\"data_offsets\":[");
    sb_int(b, offset);
    sb_str(b, ",");
    sb_int(b, offset + bytes);
    sb_str(b, "]}");
    offset += bytes;
  }
  sb_str(b, "}");
  while (!b->failed && b->len % 8) sb_str(b, " ");
  return b->failed ? df_error(DF_ENOMEM, "save_safetensors: out of memory building the header") : DF_OK;
}

/* Creates a new file next to path (same directory, so rename is atomic),
 * with the usual permissions (0666 less the umask). */
static df_status create_temp(const char *path, char **tmp_out, FILE **f_out) {
  static atomic_ulong counter;
  const char *slash = strrchr(path, '/');
  size_t dirlen = slash ? (size_t)(slash - path) + 1 : 0;
  size_t cap = strlen(path) + 64;
  char *tmp = df_malloc(cap);
  if (!tmp) return df_error(DF_ENOMEM, "save_safetensors: out of memory");
  for (int attempt = 0; attempt < 100; attempt++) {
    snprintf(tmp, cap, "%.*s.%s.tmp-%ld-%lu", (int)dirlen, path, path + dirlen, (long)getpid(),
             (unsigned long)atomic_fetch_add(&counter, 1));
    int fd = open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0666);
    if (fd < 0) {
      if (errno == EEXIST) continue;
      df_status st = df_error(DF_EIO, "save_safetensors: cannot create a temporary file for %s: %s", path, strerror(errno));
      df_free(tmp);
      return st;
    }
    FILE *f = fdopen(fd, "wb");
    if (!f) {
      df_status st = df_error(DF_EIO, "save_safetensors: cannot open %s: %s", tmp, strerror(errno));
      close(fd);
      unlink(tmp);
      df_free(tmp);
      return st;
    }
    *tmp_out = tmp;
    *f_out = f;
    return DF_OK;
  }
  df_free(tmp);
  return df_error(DF_EIO, "save_safetensors: cannot create a temporary file for %s: too many name collisions", path);
}

/* fsync of path's directory, so the rename itself survives a crash. Best
 * effort: the new file is already in place, and some file systems refuse. */
static void sync_directory(const char *path) {
  const char *slash = strrchr(path, '/');
  char dir[4096];
  if (!slash) snprintf(dir, sizeof dir, ".");
  else if (slash == path) snprintf(dir, sizeof dir, "/");
  else if ((size_t)(slash - path) < sizeof dir) snprintf(dir, sizeof dir, "%.*s", (int)(slash - path), path);
  else return;
  int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) return;
  (void)fsync(fd);
  close(fd);
}

df_status df_safetensors_save(const char *path, int64_t n, const char *const *names, const df_tensor *const *tensors,
                              int64_t nmeta, const char *const *meta_keys, const char *const *meta_values) {
  if (!path || !*path) return df_error(DF_EINVAL, "save_safetensors: the path is empty");
  if (n < 0 || nmeta < 0) return df_error(DF_EINVAL, "save_safetensors: negative count");
  if ((n && (!names || !tensors)) || (nmeta && (!meta_keys || !meta_values)))
    return df_error(DF_EINVAL, "save_safetensors: NULL array with a nonzero count");
  for (int64_t i = 0; i < n; i++) {
    if (!tensors[i]) return df_error(DF_EINVAL, "save_safetensors: tensor %lld is NULL", (long long)i);
    if (names[i] && !*names[i]) return df_error(DF_EINVAL, "save_safetensors: a tensor name is empty");
    if (names[i] && !strcmp(names[i], "__metadata__"))
      return df_error(DF_EINVAL, "save_safetensors: \"__metadata__\" is reserved and can't name a tensor");
  }
  for (int64_t i = 0; i < nmeta; i++)
    if (!meta_values[i]) return df_error(DF_EINVAL, "save_safetensors: metadata value %lld is NULL", (long long)i);
  for (int64_t i = 0; i < nmeta; i++)
    if (meta_values[i] && !utf8_valid(meta_values[i]))
      return df_error(DF_EINVAL, "save_safetensors: metadata value \"%s\" is not valid UTF-8", meta_values[i]);

  named *order = NULL, *morder = NULL;
  strbuf hb = {0};
  unsigned char *buf = NULL;
  char *tmp = NULL;
  FILE *f = NULL;
  df_status st;
  if ((st = sorted_names(&order, n, names, "tensor name"))) goto done;
  if ((st = sorted_names(&morder, nmeta, meta_keys, "metadata key"))) goto done;
  if ((st = build_header(&hb, order, n, tensors, morder, nmeta, meta_values))) goto done;
  if (!(buf = df_malloc(CHUNK * 4))) {
    st = df_error(DF_ENOMEM, "save_safetensors: out of memory");
    goto done;
  }
  if ((st = create_temp(path, &tmp, &f))) goto done;
  unsigned char lenbuf[8];
  put_u64le(lenbuf, (uint64_t)hb.len);
  bool ok = write_all(f, lenbuf, 8) && write_all(f, hb.p, hb.len);
  for (int64_t i = 0; ok && i < n; i++) ok = write_tensor(f, tensors[order[i].index], buf);
  if (!ok || fflush(f) != 0 || fsync(fileno(f)) != 0) {
    st = df_error(DF_EIO, "save_safetensors: writing %s failed: %s", tmp, strerror(errno));
    goto done;
  }
  FILE *closing = f;
  f = NULL;
  if (fclose(closing) != 0) {
    st = df_error(DF_EIO, "save_safetensors: writing %s failed: %s", tmp, strerror(errno));
    goto done;
  }
  if (rename(tmp, path) != 0) {
    st = df_error(DF_EIO, "save_safetensors: cannot replace %s: %s", path, strerror(errno));
    goto done;
  }
  df_free(tmp);
  tmp = NULL; /* renamed: nothing to remove */
  sync_directory(path);
done:
  if (f) fclose(f);
  if (tmp) {
    unlink(tmp);
    df_free(tmp);
  }
  df_free(order);
  df_free(morder);
  df_free(hb.p);
  df_free(buf);
  return st;
}
