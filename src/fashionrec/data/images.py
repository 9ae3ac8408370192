"""One way to decode and preprocess an image, shared by training, evaluation, export and serving.

Decoding accepts what shoppers and stores really upload (CMYK, grayscale, alpha, 16-bit, palette,
animated, EXIF-rotated) and refuses what would hurt the process (decompression bombs, truncated files)
with a `DataError` that names the file.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from fashionrec.core.errors import DataError, ImageTooLarge

# Set explicitly rather than relying on Pillow's default: ~50 MP is far above any product photo.
MAX_IMAGE_PIXELS = 50_000_000


def open_image(source: str | Path | bytes, *, name: str | None = None,
               max_pixels: int = MAX_IMAGE_PIXELS) -> Image.Image:
    """Decode fully into an RGB image with EXIF orientation applied; raise DataError otherwise."""
    label = name or (str(source) if not isinstance(source, bytes) else "<upload>")
    try:
        if isinstance(source, bytes):
            if not source:
                raise DataError(f"{label}: empty file")
            fp: io.BytesIO | str = io.BytesIO(source)
        else:
            if not Path(source).is_file():
                raise DataError(f"{label}: file not found")
            fp = str(source)
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(fp) as img:
                w, h = img.size
                if w * h > max_pixels:
                    raise ImageTooLarge(f"{label}: {w}x{h} pixels exceeds the limit of {max_pixels}")
                img.seek(0)  # first frame of animated images
                img.load()
                return to_rgb(ImageOps.exif_transpose(img))
    except DataError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageTooLarge(f"{label}: decompression bomb refused ({exc})") from exc
    except Exception as exc:  # Pillow raises many types for corrupt data; all mean "not an image".
        raise DataError(f"{label}: cannot decode image ({type(exc).__name__}: {exc})") from exc


def to_rgb(img: Image.Image) -> Image.Image:
    """Convert any Pillow mode to 8-bit RGB; transparency is composited onto white."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        arr = np.asarray(img, dtype=np.float64)
        hi = float(arr.max()) or 1.0
        img = Image.fromarray((arr * (255.0 / hi)).clip(0, 255).astype(np.uint8), mode="L")
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA"):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img.convert("RGB") if img.mode != "RGB" else img.copy()


@dataclass(frozen=True)
class Preprocessing:
    """How a model wants its input: resize the shorter side to size/crop_fraction, center-crop to size.

    Saved as JSON beside every exported model so serving reproduces training exactly.
    """

    size: int = 224
    crop_fraction: float = 0.875
    mean: tuple[float, float, float] = (0.5, 0.5, 0.5)
    std: tuple[float, float, float] = (0.5, 0.5, 0.5)
    resize: str = "shorter_side_then_center_crop"
    interpolation: str = "bilinear"
    labels: tuple[str, ...] = field(default_factory=tuple)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["mean"], d["std"], d["labels"] = list(self.mean), list(self.std), list(self.labels)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> Preprocessing:
        known = {k: v for k, v in d.items() if k in cls.__dataclass_fields__}
        for key in ("mean", "std", "labels"):
            if key in known:
                known[key] = tuple(known[key])
        return cls(**known)

    def resize_crop(self, img: Image.Image) -> Image.Image:
        """Shorter side to round(size / crop_fraction), then a centered size x size crop."""
        short = max(self.size, round(self.size / self.crop_fraction))
        w, h = img.size
        scale = short / min(w, h)
        nw, nh = max(self.size, round(w * scale)), max(self.size, round(h * scale))
        img = img.resize((nw, nh), Image.Resampling.BILINEAR)
        left, top = (nw - self.size) // 2, (nh - self.size) // 2
        return img.crop((left, top, left + self.size, top + self.size))

    def normalize(self, img: Image.Image) -> np.ndarray:
        """RGB image (already size x size) -> float32 CHW array, normalised by mean/std."""
        arr = np.asarray(img, dtype=np.float32) / 255.0
        arr = (arr - np.asarray(self.mean, dtype=np.float32)) / np.asarray(self.std, dtype=np.float32)
        return np.ascontiguousarray(arr.transpose(2, 0, 1))

    def __call__(self, img: Image.Image) -> np.ndarray:
        return self.normalize(self.resize_crop(img))
