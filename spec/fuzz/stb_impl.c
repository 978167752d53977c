/* stb_impl.c — the stb_image and stb_image_write implementations, for the
 * fuzz build only. The library links Debian's compiled libstb; the fuzzers
 * compile the same headers here instead, so the sanitizers and libFuzzer's
 * coverage reach inside the decoders. Three UBSan checks are off for this
 * file only, for findings in stb that are formally undefined but harmless as
 * compiled, and that the library can't patch (it links Debian's libstb):
 *   pointer-overflow, nonnull-attribute: on a zero-length PNG IDAT chunk stb
 *     adds 0 to a NULL buffer and memcpys 0 bytes to it;
 *   shift: on corrupt JPEG entropy data the bit reader's count goes negative
 *     and it shifts by 32 or more (garbage pixels for a corrupt file; the
 *     reads stay inside its buffers). Fixed upstream in stb_image 2.28.
 * AddressSanitizer stays on: any real out-of-bounds access is still found. */
#define STB_IMAGE_IMPLEMENTATION
#define STB_IMAGE_WRITE_IMPLEMENTATION
#include <stb_image.h>
#include <stb_image_write.h>
