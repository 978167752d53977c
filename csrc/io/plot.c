/* plot.c — anti-aliased drawing into a canvas, for the line charts of
 * lua/diffusion/plot.lua (which does the layout: ranges, ticks, legend).
 *
 * A canvas is a contiguous (3, H, W) float tensor of 0..255 RGB values, saved
 * with df_image_save_png(canvas, path, 0, 255). Coordinates are pixels, x
 * rightwards and y downwards, pixel (i, j) covering [i, i + 1] x [j, j + 1].
 *
 * Every shape first accumulates its coverage (0..1 per pixel) in a mask over
 * its bounding box and is then blended once: the segments of a polyline meet
 * without darker joints, and the quads of a glyph overlap without darker
 * corners. Text is stb_easy_font's (Debian's libstb-dev, header only): it
 * gives each glyph as axis-aligned unit-wide quads, which scale to any size
 * and rotate by 90 degrees into rectangles again. */
#include <math.h>
#include <string.h>

#include "../df.h"

#if defined(__GNUC__)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmissing-braces"
#pragma GCC diagnostic ignored "-Wcast-align"
#endif
#include <stb_easy_font.h>
#if defined(__GNUC__)
#pragma GCC diagnostic pop
#endif

#define MAX_TEXT 4096 /* bytes of one label: a bound that catches nonsense */

#if defined(__GNUC__) /* the header's one function not used here (its global spacing stays 0) */
__attribute__((unused)) static void (*const unused_spacing)(float) = stb_easy_font_spacing;
#endif

static df_status check_canvas(const char *op, const df_tensor *c) {
  char buf[128];
  if (c->ndim != 3 || c->size[0] != 3 || c->size[1] < 1 || c->size[2] < 1)
    return df_error(DF_EINVAL, "%s: the canvas must be a (3, H, W) tensor, got shape %s", op,
                    df_format_shape(buf, sizeof buf, c->ndim, c->size));
  if (!df_tensor_is_contiguous(c)) return df_error(DF_EINVAL, "%s: the canvas must be contiguous", op);
  if (c->requires_grad || c->grad_fn) return df_error(DF_EINVAL, "%s: the canvas must not require grad", op);
  return DF_OK;
}

static df_status check_rgb(const char *op, const float rgb[3]) {
  for (int k = 0; k < 3; k++)
    if (!(rgb[k] >= 0.0f && rgb[k] <= 255.0f))
      return df_error(DF_EINVAL, "%s: colour component %d must be in [0, 255], got %g", op, k + 1, (double)rgb[k]);
  return DF_OK;
}

/* ---- coverage masks ----------------------------------------------------- */

typedef struct {
  int64_t x0, y0, w, h; /* the pixel box it covers */
  float *a;             /* (h, w) coverage */
} mask;

static double clampd(double v, double lo, double hi) { return v < lo ? lo : v > hi ? hi : v; }

/* A mask over [x0, x1) x [y0, y1) (pixels, any doubles) clipped to the canvas
 * and to clip; m->a is NULL when the box is empty. */
static df_status mask_init(mask *m, const df_tensor *canvas, double x0, double y0, double x1, double y1, const double clip[4],
                           const char *op) {
  double W = (double)canvas->size[2], H = (double)canvas->size[1];
  double cx0 = 0, cy0 = 0, cx1 = W, cy1 = H;
  if (clip) cx0 = clampd(clip[0], 0, W), cy0 = clampd(clip[1], 0, H), cx1 = clampd(clip[2], 0, W), cy1 = clampd(clip[3], 0, H);
  /* clamped before the conversion to integers, so huge or infinite coordinates are harmless */
  m->x0 = (int64_t)floor(clampd(x0, cx0, cx1));
  m->y0 = (int64_t)floor(clampd(y0, cy0, cy1));
  int64_t xe = (int64_t)ceil(clampd(x1, cx0, cx1)), ye = (int64_t)ceil(clampd(y1, cy0, cy1));
  /* a clip edge inside a pixel: that pixel is outside (the Lua side clips on whole pixels) */
  if (xe > (int64_t)floor(cx1)) xe = (int64_t)floor(cx1);
  if (ye > (int64_t)floor(cy1)) ye = (int64_t)floor(cy1);
  if (m->x0 < (int64_t)ceil(cx0)) m->x0 = (int64_t)ceil(cx0);
  if (m->y0 < (int64_t)ceil(cy0)) m->y0 = (int64_t)ceil(cy0);
  m->w = xe - m->x0, m->h = ye - m->y0;
  m->a = NULL;
  if (m->w <= 0 || m->h <= 0) return DF_OK;
  m->a = df_calloc((size_t)(m->w * m->h), sizeof(float));
  if (!m->a) return df_error(DF_ENOMEM, "%s: out of memory for a %lld x %lld mask", op, (long long)m->w, (long long)m->h);
  return DF_OK;
}

/* canvas = canvas (1 - a) + rgb a, and the mask freed */
static void mask_blend(mask *m, df_tensor *canvas, const float rgb[3]) {
  if (!m->a) return;
  int64_t W = canvas->size[2], plane = canvas->size[1] * W;
  float *p = df_tensor_data(canvas);
  for (int64_t j = 0; j < m->h; j++)
    for (int64_t i = 0; i < m->w; i++) {
      float a = m->a[j * m->w + i];
      if (a <= 0.0f) continue;
      if (a > 1.0f) a = 1.0f;
      float *px = p + (m->y0 + j) * W + m->x0 + i;
      for (int k = 0; k < 3; k++) px[k * plane] += a * (rgb[k] - px[k * plane]);
    }
  canvas->storage->version++;
  df_free(m->a);
  m->a = NULL;
}

/* adds the area of [x0, x1] x [y0, y1] inside each pixel */
static void cover_rect(mask *m, double x0, double y0, double x1, double y1) {
  double bx0 = (double)m->x0, by0 = (double)m->y0;
  x0 = clampd(x0, bx0, bx0 + (double)m->w), x1 = clampd(x1, bx0, bx0 + (double)m->w);
  y0 = clampd(y0, by0, by0 + (double)m->h), y1 = clampd(y1, by0, by0 + (double)m->h);
  if (!(x1 > x0 && y1 > y0)) return;
  int64_t i0 = (int64_t)floor(x0), i1 = (int64_t)ceil(x1), j0 = (int64_t)floor(y0), j1 = (int64_t)ceil(y1);
  for (int64_t j = j0; j < j1; j++) {
    double oy = fmin(y1, (double)(j + 1)) - fmax(y0, (double)j);
    if (oy <= 0) continue;
    for (int64_t i = i0; i < i1; i++) {
      double ox = fmin(x1, (double)(i + 1)) - fmax(x0, (double)i);
      if (ox > 0) m->a[(j - m->y0) * m->w + (i - m->x0)] += (float)(ox * oy);
    }
  }
}

/* coverage max(cover, r + 0.5 - distance to the segment a-b) at pixel centres;
 * with dash > 0, only along the dashes: dash pixels on, then a gap, counted
 * along the line from `start` pixels before a. */
static void cover_segment(mask *m, double ax, double ay, double bx, double by, double r, double dash, double start) {
  double pad = r + 1.0;
  int64_t i0 = (int64_t)floor(clampd(fmin(ax, bx) - pad, (double)m->x0, (double)(m->x0 + m->w)));
  int64_t i1 = (int64_t)ceil(clampd(fmax(ax, bx) + pad, (double)m->x0, (double)(m->x0 + m->w)));
  int64_t j0 = (int64_t)floor(clampd(fmin(ay, by) - pad, (double)m->y0, (double)(m->y0 + m->h)));
  int64_t j1 = (int64_t)ceil(clampd(fmax(ay, by) + pad, (double)m->y0, (double)(m->y0 + m->h)));
  double dx = bx - ax, dy = by - ay, len2 = dx * dx + dy * dy;
  for (int64_t j = j0; j < j1; j++)
    for (int64_t i = i0; i < i1; i++) {
      double px = (double)i + 0.5 - ax, py = (double)j + 0.5 - ay;
      double s = len2 > 0 ? clampd((px * dx + py * dy) / len2, 0.0, 1.0) : 0.0;
      double ex = px - s * dx, ey = py - s * dy;
      double c = r + 0.5 - sqrt(ex * ex + ey * ey);
      if (c > 0 && dash > 0) { /* soft ends of the dash: half a pixel either side */
        double period = dash + fmax(0.6 * dash, 2 * r + 1), along = fmod(start + s * sqrt(len2), period);
        c = fmin(c, fmin(along + 0.5, dash - along + 0.5));
      }
      if (c <= 0) continue;
      float *a = &m->a[(j - m->y0) * m->w + (i - m->x0)];
      if ((float)c > *a) *a = (float)c;
    }
}

/* ---- shapes ------------------------------------------------------------- */

df_status df_plot_fill_rect(df_tensor *canvas, double x0, double y0, double x1, double y1, const float rgb[3]) {
  const char *op = "plot.fill_rect";
  df_status st;
  if ((st = check_canvas(op, canvas)) || (st = check_rgb(op, rgb))) return st;
  if (!(isfinite(x0) && isfinite(y0) && isfinite(x1) && isfinite(y1)))
    return df_error(DF_EINVAL, "%s: the corners must be finite, got (%g, %g) and (%g, %g)", op, x0, y0, x1, y1);
  mask m;
  if ((st = mask_init(&m, canvas, x0, y0, x1, y1, NULL, op))) return st;
  if (m.a) cover_rect(&m, x0, y0, x1, y1);
  mask_blend(&m, canvas, rgb);
  return DF_OK;
}

df_status df_plot_polyline(df_tensor *canvas, int64_t n, const double *x, const double *y, double width, double radius,
                           double dash, const float rgb[3], const double clip[4]) {
  const char *op = "plot.polyline";
  df_status st;
  if ((st = check_canvas(op, canvas)) || (st = check_rgb(op, rgb))) return st;
  if (!(width >= 0 && width <= 1000) || !(radius >= 0 && radius <= 1000) || !(dash >= 0 && dash <= 1000))
    return df_error(DF_EINVAL, "%s: the line width, marker radius and dash length must be in [0, 1000], got %g, %g and %g", op,
                    width, radius, dash);
  for (int k = 0; k < 4; k++)
    if (!isfinite(clip[k])) return df_error(DF_EINVAL, "%s: the clip rectangle must be finite", op);
  /* the box of every finite point, padded by what is drawn around it */
  double pad = fmax(width / 2, radius) + 1.0, bx0 = INFINITY, by0 = INFINITY, bx1 = -INFINITY, by1 = -INFINITY;
  for (int64_t i = 0; i < n; i++) {
    if (!isfinite(x[i]) || !isfinite(y[i])) continue;
    bx0 = fmin(bx0, x[i]), bx1 = fmax(bx1, x[i]), by0 = fmin(by0, y[i]), by1 = fmax(by1, y[i]);
  }
  if (!(bx0 <= bx1)) return DF_OK; /* nothing finite */
  mask m;
  if ((st = mask_init(&m, canvas, bx0 - pad, by0 - pad, bx1 + pad, by1 + pad, clip, op))) return st;
  if (!m.a) return DF_OK;
  bool line = width > 0, dots = radius > 0;
  double along = 0; /* the length of line drawn so far, for the dashes */
  for (int64_t i = 0; i < n; i++) {
    bool here = isfinite(x[i]) && isfinite(y[i]);
    if (!here) continue;
    if (line && i + 1 < n && isfinite(x[i + 1]) && isfinite(y[i + 1])) { /* a NaN or inf point breaks the line */
      cover_segment(&m, x[i], y[i], x[i + 1], y[i + 1], width / 2, dash, along);
      along += hypot(x[i + 1] - x[i], y[i + 1] - y[i]);
    } else if (line && (i == 0 || !isfinite(x[i - 1]) || !isfinite(y[i - 1]))) {
      cover_segment(&m, x[i], y[i], x[i], y[i], width / 2, 0, 0); /* an isolated point: a dot of the line's width */
    }
    if (dots) cover_segment(&m, x[i], y[i], x[i], y[i], radius, 0, 0);
  }
  mask_blend(&m, canvas, rgb);
  return DF_OK;
}

/* ---- text --------------------------------------------------------------- */

/* A copy of text stb_easy_font can index safely (it reads a table at
 * byte - 32): bytes outside printable ASCII become '?'. */
static df_status sanitize(char **out, const char *text, const char *op) {
  size_t len = strlen(text);
  if (len > MAX_TEXT) return df_error(DF_EINVAL, "%s: text of %zu bytes is longer than %d", op, len, MAX_TEXT);
  char *s = df_malloc(len + 1);
  if (!s) return df_error(DF_ENOMEM, "%s: out of memory", op);
  for (size_t i = 0; i < len; i++) {
    unsigned char c = (unsigned char)text[i];
    s[i] = c == '\n' || (c >= 32 && c < 127) ? (char)c : '?';
  }
  s[len] = 0;
  *out = s;
  return DF_OK;
}

df_status df_plot_text_size(const char *text, double scale, double *w, double *h) {
  char *s;
  df_status st = sanitize(&s, text, "plot.text_size");
  if (st) return st;
  *w = stb_easy_font_width(s) * scale;
  *h = stb_easy_font_height(s) * scale;
  df_free(s);
  return DF_OK;
}

df_status df_plot_text(df_tensor *canvas, const char *text, double x, double y, double scale, bool vertical, const float rgb[3]) {
  const char *op = "plot.text";
  df_status st;
  if ((st = check_canvas(op, canvas)) || (st = check_rgb(op, rgb))) return st;
  if (!(scale > 0 && scale <= 100)) return df_error(DF_EINVAL, "%s: scale must be in (0, 100], got %g", op, scale);
  if (!isfinite(x) || !isfinite(y)) return df_error(DF_EINVAL, "%s: the position must be finite, got (%g, %g)", op, x, y);
  char *s;
  if ((st = sanitize(&s, text, op))) return st;
  double tw = stb_easy_font_width(s) * scale, th = stb_easy_font_height(s) * scale;
  mask m;
  st = vertical ? mask_init(&m, canvas, x, y - tw, x + th, y, NULL, op) : mask_init(&m, canvas, x, y, x + tw, y + th, NULL, op);
  if (st || !m.a) {
    df_free(s);
    return st;
  }
  /* one glyph at a time into a fixed buffer: 64 quads is more than any glyph has */
  float quads[64 * 16];
  float gx = 0, gy = 0;
  for (char *c = s; *c; c++) {
    if (*c == '\n') {
      gx = 0, gy += 12;
      continue;
    }
    char one[2] = {*c, 0};
    int nq = stb_easy_font_print(gx, gy, one, NULL, quads, (int)sizeof quads);
    for (int q = 0; q < nq; q++) { /* a quad's vertices 0 and 2 are opposite corners */
      double qx0 = quads[q * 16 + 0], qy0 = quads[q * 16 + 1], qx1 = quads[q * 16 + 8], qy1 = quads[q * 16 + 9];
      if (vertical) /* rotated a quarter turn anticlockwise about (x, y): reads bottom to top */
        cover_rect(&m, x + qy0 * scale, y - qx1 * scale, x + qy1 * scale, y - qx0 * scale);
      else
        cover_rect(&m, x + qx0 * scale, y + qy0 * scale, x + qx1 * scale, y + qy1 * scale);
    }
    gx += (float)stb_easy_font_width(one);
  }
  df_free(s);
  mask_blend(&m, canvas, rgb);
  return DF_OK;
}
