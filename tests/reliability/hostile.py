"""Legal-but-hostile uploads: valid image files whose shape, bit depth or size costs a server dearly.

Each case is a real file (Pillow, or a hand-built PNG of zero rows: a few hundred bytes for a legal image
of tens of megapixels) with the answer a bounded server gives: 200, or a 4xx naming the problem. Shared by
`test_fuzz_recommend`, `test_request_faults` and `bench/serve.py` (hostile-burst scenario).
"""

from __future__ import annotations

import functools
import io
import math
import struct
import zlib
from dataclasses import dataclass

import numpy as np
from PIL import Image


@dataclass(frozen=True)
class Hostile:
    name: str
    data: bytes
    status: int                  # what the server answers
    kind: str | None = None      # the error kind, for refusals
    crop: str | None = None
    heavy: bool = False          # decodes to more than serve.heavy_decode_mb (the heavy lane)


def encode(img: Image.Image, fmt: str, **kw: object) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def png(width: int, height: int, color_type: int = 2, bit_depth: int = 8) -> bytes:
    """A legal PNG of width x height black pixels, built row by row without holding the raster."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    channels = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}[color_type]
    row = b"\x00" * (1 + math.ceil(width * channels * bit_depth / 8))
    comp = zlib.compressobj(1)
    body = b"".join(comp.compress(row) for _ in range(height)) + comp.flush()
    header = struct.pack(">IIBBBBB", width, height, bit_depth, color_type, 0, 0, 0)
    palette = chunk(b"PLTE", bytes(range(256)) * 3) if color_type == 3 else b""
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + palette + chunk(b"IDAT", body)
            + chunk(b"IEND", b""))


def gradient16(width: int, height: int) -> bytes:
    """A 16-bit grayscale PNG with real content (a gradient): the float64 path made these cost GBs."""
    x = np.linspace(0, 65535, width, dtype=np.float32)
    y = np.linspace(0, 1, height, dtype=np.float32)[:, None]
    return encode(Image.fromarray((x[None, :] * y).astype(np.uint16)), "PNG", compress_level=1)


@functools.cache
def hostile_images() -> list[Hostile]:
    """The cases, at the default serve limits (max_decode_mb 96, max_aspect_ratio 20, min side 8)."""
    exif = Image.Exif()
    exif[0x0112] = 6
    frames = [Image.new("RGB", (600, 600), (i * 5 % 256, 0, 0)) for i in range(40)]
    gif = io.BytesIO()
    frames[0].save(gif, "GIF", save_all=True, append_images=frames[1:], duration=10, loop=0)
    large = png(4000, 3000)
    return [
        Hostile("thin_jpeg_10000x10", encode(Image.new("RGB", (10000, 10), (90, 20, 20)), "JPEG"), 422,
                "bad_shape"),
        Hostile("wide_png_65535x1", png(65535, 1, 0), 422, "bad_shape"),
        Hostile("tall_png_2x30000", png(2, 30000), 422, "bad_shape"),
        Hostile("one_pixel", encode(Image.new("RGB", (1, 1)), "PNG"), 422, "bad_shape"),
        Hostile("exif_rotated_strip_400x12", encode(Image.new("RGB", (400, 12)), "JPEG", exif=exif.tobytes()),
                422, "bad_shape"),
        Hostile("strip_crop_row_of_4000x3000_png", large, 422, "bad_crop", crop="0,1000,4000,1001"),
        Hostile("strip_crop_column_of_4000x3000_png", large, 422, "bad_crop", crop="10,0,11,3000"),
        Hostile("crop_at_the_aspect_limit_of_4000x3000_png", large, 200, crop="0,0,4000,200", heavy=True),
        Hostile("rgb_png_4000x3000", large, 200, heavy=True),
        Hostile("rgb_png_7000x7000_under_pixel_limit", png(7000, 7000), 413, "too_costly"),
        Hostile("palette_png_6000x6000", png(6000, 6000, 3), 413, "too_costly"),
        Hostile("gray16_png_3000x2000", gradient16(3000, 2000), 200, heavy=True),
        Hostile("gray16_png_7000x7000_under_pixel_limit", png(7000, 7000, 0, 16), 413, "too_costly"),
        Hostile("rgb48_png_3000x2000", png(3000, 2000, 2, 16), 200, heavy=True),
        Hostile("rgba64_png_2500x2500", png(2500, 2500, 6, 16), 200, heavy=True),
        Hostile("jpeg_6000x6000", encode(Image.new("RGB", (6000, 6000), (20, 90, 20)), "JPEG", quality=50),
                200),
        Hostile("cmyk_jpeg_4000x3000", encode(Image.new("CMYK", (4000, 3000), (0, 90, 20, 0)), "JPEG"), 200),
        Hostile("float_tiff_2000x2000", encode(Image.new("F", (2000, 2000), 3.5), "TIFF",
                                                       compression="tiff_deflate"), 200, heavy=True),
        Hostile("int32_tiff_2000x1500", encode(Image.new("I", (2000, 1500), 70000), "TIFF",
                                                        compression="tiff_deflate"), 200, heavy=True),
        Hostile("animated_gif_40_frames", gif.getvalue(), 200),
    ]
