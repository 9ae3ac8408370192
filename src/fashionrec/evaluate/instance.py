"""Instance retrieval queries: a shopper's photo of an item we stock, simulated by a seeded augmentation.

Each query is an inventory image with a random crop, maybe a mirror flip, colour jitter and a JPEG
re-encode; the reference reports' top-k accuracy asks whether that exact item comes back in the top k.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageEnhance
from tqdm.auto import tqdm

from fashionrec.core.errors import EvaluationError
from fashionrec.data.images import Preprocessing, open_image


@dataclass(frozen=True)
class Augmentation:
    """Ranges of the random changes; `from_params` checks them and names the bad parameter."""

    crop_scale: tuple[float, float] = (0.6, 1.0)     # share of the image area kept
    crop_ratio: tuple[float, float] = (0.75, 1.333)  # width / height of the crop
    flip: float = 0.5                                # probability of a horizontal flip
    brightness: float = 0.2                          # factor drawn from [1 - b, 1 + b]
    contrast: float = 0.2
    saturation: float = 0.2
    jpeg_quality: tuple[int, int] = (50, 90)

    @classmethod
    def from_params(cls, params: dict[str, Any], prefix: str = "evaluate.instance") -> Augmentation:
        known = {f.name for f in fields(cls)}
        values = {k: tuple(v) if isinstance(v, list) else v for k, v in params.items() if k in known}
        aug = cls(**values)
        aug.check(prefix)
        return aug

    def check(self, prefix: str) -> None:
        def bad(name: str, why: str) -> EvaluationError:
            return EvaluationError(f"{prefix}.{name}={getattr(self, name)!r}: {why}")

        for name, lo_min, hi_max in (("crop_scale", 0.0, 1.0), ("crop_ratio", 0.0, float("inf")),
                                     ("jpeg_quality", 1, 100)):
            value = getattr(self, name)
            if len(value) != 2 or not (lo_min < value[0] <= value[1] <= hi_max):
                raise bad(name, f"expected [low, high] with {lo_min} < low <= high <= {hi_max}")
        if not 0.0 <= self.flip <= 1.0:
            raise bad("flip", "a probability must lie in [0, 1]")
        for name in ("brightness", "contrast", "saturation"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise bad(name, "expected a jitter strength in [0, 1)")


def random_crop_box(width: int, height: int, aug: Augmentation,
                    rng: np.random.Generator) -> tuple[int, int, int, int]:
    """A box of random area share and aspect ratio inside the image (the whole image after 10 misses)."""
    area = width * height
    for _ in range(10):
        target = area * rng.uniform(*aug.crop_scale)
        ratio = float(np.exp(rng.uniform(np.log(aug.crop_ratio[0]), np.log(aug.crop_ratio[1]))))
        w, h = round(np.sqrt(target * ratio)), round(np.sqrt(target / ratio))
        if 0 < w <= width and 0 < h <= height:
            left, top = int(rng.integers(0, width - w + 1)), int(rng.integers(0, height - h + 1))
            return left, top, left + w, top + h
    return 0, 0, width, height


def augment(img: Image.Image, aug: Augmentation, rng: np.random.Generator, prep: Preprocessing) -> np.ndarray:
    """One simulated shopper photo of `img`, as uint8 (size, size, 3) pixels ready to embed.

    The crop is resized to the model's input scale before jitter and JPEG re-encoding, which keeps the
    cost per query small and compresses at the resolution the model sees.
    """
    img = img.crop(random_crop_box(img.width, img.height, aug, rng))
    img = prep.resize_crop(img)
    if rng.random() < aug.flip:
        img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    for enhancer, strength in ((ImageEnhance.Brightness, aug.brightness),
                               (ImageEnhance.Contrast, aug.contrast),
                               (ImageEnhance.Color, aug.saturation)):
        if strength > 0:
            img = enhancer(img).enhance(float(rng.uniform(1 - strength, 1 + strength)))
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=int(rng.integers(aug.jpeg_quality[0], aug.jpeg_quality[1] + 1)))
    return np.asarray(open_image(buf.getvalue(), name="<augmented query>"), dtype=np.uint8)


def sample_sources(n_inventory: int, n_queries: int, seed: int) -> np.ndarray:
    """Seeded sample (without replacement, sorted) of inventory rows to make queries from."""
    if n_inventory < 1:
        raise EvaluationError("instance retrieval: the inventory is empty")
    if n_queries < 1:
        raise EvaluationError(f"evaluate.instance.n_queries must be positive, got {n_queries}")
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(n_inventory, size=min(n_queries, n_inventory), replace=False))


def make_queries(paths: Sequence[str | Path], aug: Augmentation, prep: Preprocessing,
                 seed: int, progress: bool = True) -> list[np.ndarray]:
    """Augmented copies of the given images; the same seed gives the same pixels."""
    rng = np.random.default_rng(seed)
    return [augment(open_image(p), aug, rng, prep)
            for p in tqdm(paths, desc="instance queries", unit="img", leave=False, disable=not progress)]
