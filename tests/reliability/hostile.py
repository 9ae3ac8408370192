"""Legal-but-hostile uploads: valid image files whose shape, bit depth, size or structure costs a server
dearly, or whose format the server does not accept.

Each case is a real file (Pillow, or hand-built: a PNG of zero rows is a few hundred bytes for a legal
image of tens of megapixels; a progressive JPEG whose last scan repeats thousands of times; a JPEG or PNG
flooded with empty segments or chunks; EPS and PSD signatures) with the answer a bounded server gives: 200,
or a 4xx naming the problem. Shared by `test_fuzz_recommend`, `test_request_faults`, `tests/serving/
test_attacks.py` and `bench/serve.py` (hostile uploads in the load).
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


def repeated_last_scan(width: int = 512, height: int = 512, times: int = 5000) -> bytes:
    """A progressive JPEG whose last scan is repeated `times` times: each repeat makes libjpeg refine (and
    for this, re-walk) every coefficient again; a 1 MB file kept Pillow busy for minutes."""
    x = np.linspace(0, 255, width, dtype=np.float32)[None, :, None]
    y = np.linspace(0, 255, height, dtype=np.float32)[:, None, None]
    pixels = np.broadcast_to((x + y) / 2, (height, width, 3)).astype(np.uint8)
    data = encode(Image.fromarray(pixels), "JPEG", quality=90, progressive=True)
    last = data.rindex(b"\xff\xda")
    scan = data[last:-2]
    return data[:-2] + scan * max(200, min(times, 2_000_000 // len(scan))) + b"\xff\xd9"


def jpeg_segment_flood(count: int = 1_000_000) -> bytes:
    """A small JPEG with `count` empty COM segments before its frame (4 bytes each, each parsed alone)."""
    data = encode(Image.new("RGB", (64, 64), (200, 10, 10)), "JPEG")
    return data[:2] + b"\xff\xfe\x00\x02" * count + data[2:]


def png_chunk_flood(count: int = 500_000) -> bytes:
    """A small PNG with `count` empty ancillary chunks before its image data (12 bytes each)."""
    data = encode(Image.new("RGB", (64, 64), (10, 200, 10)), "PNG")
    chunk = struct.pack(">I", 0) + b"teXt" + struct.pack(">I", zlib.crc32(b"teXt"))
    return data[:33] + chunk * count + data[33:]      # after the signature (8) and IHDR (25)


def eps() -> bytes:
    """An EPS file: Pillow hands these to Ghostscript, an external program, whenever one is installed."""
    return (b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 100 100\n%%EndComments\n"
            b"newpath 0 0 moveto 100 100 lineto stroke\nshowpage\n%%EOF\n")


def psd() -> bytes:
    """A Photoshop header (8BPS, 3 channels, 64x64, 8-bit RGB) with empty sections and raw zero pixels."""
    header = b"8BPS" + struct.pack(">H6xHIIHH", 1, 3, 64, 64, 8, 3)
    return header + struct.pack(">III", 0, 0, 0) + struct.pack(">H", 0) + bytes(3 * 64 * 64)


def mpo_phone_photo(width: int = 6000, height: int = 4000) -> bytes:
    """A 24 MP phone photo as phones write it: MPO (a JPEG, an MPF index, a second frame)."""
    img = Image.new("RGB", (width, height), (120, 90, 60))
    img.paste((30, 60, 150), (width // 4, height // 4, 3 * width // 4, 3 * height // 4))
    second = img.resize((width // 4, height // 4))
    return encode(img, "MPO", quality=85, save_all=True, append_images=[second])


@functools.cache
def hostile_images() -> list[Hostile]:
    """The cases, at the default serve limits (max_decode_mb 96, max_aspect_ratio 20, min side 8)."""
    exif = Image.Exif()
    exif[0x0112] = 6
    frames = [Image.new("RGB", (600, 600), (i * 5 % 256, 0, 0)) for i in range(40)]
    gif = io.BytesIO()
    frames[0].save(gif, "GIF", save_all=True, append_images=frames[1:], duration=10, loop=0)
    webp = io.BytesIO()
    frames[0].save(webp, "WEBP", save_all=True, append_images=frames[1:], duration=10, loop=0)
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
        Hostile("crop_at_the_aspect_limit_of_4000x3000_png", large, 200, crop="0,0,4000,200"),
        Hostile("rgb_png_4000x3000", large, 200),
        Hostile("rgb_png_7000x7000_under_pixel_limit", png(7000, 7000), 413, "too_costly"),
        Hostile("palette_png_6000x6000", png(6000, 6000, 3), 413, "too_costly"),
        Hostile("gray16_png_3000x2000", gradient16(3000, 2000), 200),
        Hostile("gray16_png_7000x7000_under_pixel_limit", png(7000, 7000, 0, 16), 413, "too_costly"),
        Hostile("rgb48_png_3000x2000", png(3000, 2000, 2, 16), 200),
        Hostile("rgba64_png_2500x2500", png(2500, 2500, 6, 16), 200),
        Hostile("jpeg_6000x6000", encode(Image.new("RGB", (6000, 6000), (20, 90, 20)), "JPEG", quality=50),
                200),
        Hostile("cmyk_jpeg_4000x3000", encode(Image.new("CMYK", (4000, 3000), (0, 90, 20, 0)), "JPEG"), 200),
        # formats outside serve.formats: refused by name, before their plugin runs
        Hostile("float_tiff_2000x2000", encode(Image.new("F", (2000, 2000), 3.5), "TIFF",
                                               compression="tiff_deflate"), 415, "unsupported_format"),
        Hostile("animated_gif_40_frames", gif.getvalue(), 415, "unsupported_format"),
        Hostile("eps_for_ghostscript", eps(), 415, "unsupported_format"),
        Hostile("psd_64x64", psd(), 415, "unsupported_format"),
        Hostile("animated_webp_40_frames", webp.getvalue(), 200),
        # structure that keeps a decoder busy: refused from a scan of the bytes, before any decoder runs
        Hostile("progressive_jpeg_last_scan_x5000", repeated_last_scan(), 413, "too_costly"),
        Hostile("jpeg_1m_empty_segments", jpeg_segment_flood(), 413, "too_costly"),
        Hostile("png_500k_empty_chunks", png_chunk_flood(), 413, "too_costly"),
        # a progressive 4:4:4 JPEG whose coefficient buffers (294 MB) the raster estimate alone missed
        Hostile("progressive_444_jpeg_7000x7000", encode(Image.new("RGB", (7000, 7000), (50, 60, 70)), "JPEG",
                                                         progressive=True, subsampling=0), 413, "too_costly"),
        Hostile("mpo_phone_photo_24mp", mpo_phone_photo(), 200),
    ]
