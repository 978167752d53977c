/* write_images.c — writes the image seeds that the project's Lua API can't
 * (it saves PNG only), through the same libstb's stb_image_write: JPEG,
 * BMP and PNG with 2 and 4 channels. Run by
 * spec/fuzz/make_seeds.lua (`make fuzz-seeds`); not part of the library.
 *   write_images DIR */
#include <stdio.h>
#include <stdlib.h>

#include <stb_image_write.h>

int main(int argc, char **argv) {
  if (argc != 2) {
    fprintf(stderr, "usage: %s DIR\n", argv[0]);
    return 2;
  }
  enum { W = 8, H = 6 };
  unsigned char px[W * H * 4];
  for (int y = 0; y < H; y++)
    for (int x = 0; x < W; x++)
      for (int c = 0; c < 4; c++) {
        px[(y * W + x) * 4 + c] = (unsigned char)((x * 37 + y * 59 + c * 83) & 255);
      }
  char path[4096];
  int ok = 1;
#define OUT(name) (snprintf(path, sizeof path, "%s/%s", argv[1], name), path)
  ok &= stbi_write_jpg(OUT("rgb.jpg"), W, H, 3, px, 90);
  ok &= stbi_write_jpg(OUT("gray.jpg"), W, H, 1, px, 50);
  ok &= stbi_write_bmp(OUT("rgb.bmp"), W, H, 3, px);
  ok &= stbi_write_bmp(OUT("rgba.bmp"), W, H, 4, px);
  ok &= stbi_write_png(OUT("gray-alpha.png"), W, H, 2, px, W * 2);
  ok &= stbi_write_png(OUT("rgba.png"), W, H, 4, px, W * 4);
  if (!ok) {
    fprintf(stderr, "write_images: a write failed\n");
    return 1;
  }
  return 0;
}
