"""Bounded decoding (`probe_image`, `decode_bounded`) and the shared decode/preprocess paths it must match."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image, ImageFile

from fashionrec.core.errors import DataError, ImageRefused
from fashionrec.data.images import (
    DecodeLimits,
    Preprocessing,
    decode_bounded,
    open_image,
    probe_image,
    to_rgb,
)


def encode(img: Image.Image, fmt: str, **kw: object) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def scene(w: int, h: int) -> Image.Image:
    """A smooth picture (gradients), so a reduced decode and a full one agree closely."""
    x, y = np.meshgrid(np.linspace(0, 1, w), np.linspace(0, 1, h))
    return Image.fromarray((np.stack([x, y, (x + y) / 2], -1) * 255).astype(np.uint8))


def test_the_header_alone_refuses_a_thin_image_before_any_decode(monkeypatch: pytest.MonkeyPatch) -> None:
    data = encode(Image.new("RGB", (20000, 40)), "PNG")

    def no_decode(self, *args, **kwargs):
        raise AssertionError("pixels were decoded")

    monkeypatch.setattr(ImageFile.ImageFile, "load", no_decode)
    with pytest.raises(ImageRefused, match="aspect ratio of 500:1") as err:
        probe_image(data, DecodeLimits())
    assert err.value.kind == "bad_shape"


def test_a_costly_decode_is_refused_by_its_header_and_a_jpeg_is_drafted_instead() -> None:
    limits = DecodeLimits(max_decode_bytes=20 * 2**20, short_side=256)
    with pytest.raises(ImageRefused, match="would take 46 MiB") as err:
        probe_image(encode(Image.new("RGB", (4000, 3000)), "PNG"), limits)
    assert err.value.kind == "too_costly"
    jpeg = encode(scene(4000, 3000), "JPEG")
    assert probe_image(jpeg, limits).decode_bytes <= 4 * 500 * 375    # drafted at 1/8 scale
    assert decode_bounded(jpeg, limits).size == (500, 375)           # short side still >= 256


def test_a_crop_at_reduced_scale_matches_the_full_scale_crop() -> None:
    data = encode(scene(3000, 2000), "PNG")
    box = (300.0, 200.0, 1500.0, 1400.0)
    reduced = decode_bounded(data, DecodeLimits(short_side=256), crop=box)
    full = open_image(data).crop(tuple(int(v) for v in box))
    assert reduced.size == (300, 300)       # the 1200 px crop reduced 4x, still >= 256
    prep = Preprocessing(size=64, crop_fraction=1.0)
    assert np.abs(prep(reduced) - prep(full)).max() < 0.05
    with pytest.raises(ImageRefused, match="crop box") as err:
        decode_bounded(data, DecodeLimits(), crop=(0, 0, 3000, 3))
    assert err.value.kind == "bad_crop"


def test_sixteen_bit_is_scaled_like_before_without_float64() -> None:
    arr = (np.arange(300 * 200) * 7 % 65536).astype(np.uint16).reshape(200, 300)
    img = Image.fromarray(arr)
    expected = (arr.astype(np.float64) * (255.0 / arr.max())).clip(0, 255).astype(np.uint8)
    got = np.asarray(to_rgb(img))[..., 0]
    assert np.abs(got.astype(int) - expected.astype(int)).max() <= 1
    assert decode_bounded(encode(img, "PNG"), DecodeLimits()).mode == "RGB"


def test_resize_crop_is_unchanged_for_photos_and_bounded_for_strips() -> None:
    prep = Preprocessing(size=32, crop_fraction=0.875)
    photo = scene(90, 120)
    w, h = photo.size
    short = round(32 / 0.875)
    nw, nh = max(32, round(w * short / w)), max(32, round(h * short / w))
    plain = photo.resize((nw, nh), Image.Resampling.BILINEAR)
    left, top = (nw - 32) // 2, (nh - 32) // 2
    assert np.array_equal(np.asarray(prep.resize_crop(photo)),
                          np.asarray(plain.crop((left, top, left + 32, top + 32))))
    targets: list[tuple[int, int]] = []
    resize = Image.Image.resize

    def recorded(self, size, *args, **kwargs):
        targets.append(tuple(size))
        return resize(self, size, *args, **kwargs)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(Image.Image, "resize", recorded)
        assert prep.resize_crop(Image.new("RGB", (200000, 1))).size == (32, 32)
    assert targets and max(w * h for w, h in targets) <= 200000 * 37   # not a 7-gigapixel resize


def test_out_of_memory_is_not_a_bad_image(monkeypatch: pytest.MonkeyPatch) -> None:
    data = encode(Image.new("RGB", (64, 64)), "PNG")

    def no_memory(self: Image.Image) -> None:
        raise MemoryError

    monkeypatch.setattr("PIL.ImageFile.ImageFile.load", no_memory)
    with pytest.raises(MemoryError):
        open_image(data)
    with pytest.raises(MemoryError):
        decode_bounded(data, DecodeLimits())
    monkeypatch.undo()
    with pytest.raises(DataError, match="cannot decode") as err:
        open_image(b"\x89PNG\r\n\x1a\nnonsense")
    assert "Error" not in str(err.value) and " at 0x" not in str(err.value)
