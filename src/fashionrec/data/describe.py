"""Stage `describe`: pictures of the validated dataset, where people would rather look than read JSON.

`label_distribution.png` (images per class in each split), `kids_balance.png` (kids and adults photos
per category in each split: whether the model sees, and is measured on, kids' clothes), `image_sizes.png`
(width x height) and `contact_sheet.png` (a seeded sample of images per class).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402 - the backend must be chosen first
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from tqdm import tqdm  # noqa: E402

from fashionrec.core.config import DEFAULT_SEED
from fashionrec.core.errors import DataError  # noqa: E402
from fashionrec.data.images import open_image  # noqa: E402
from fashionrec.data.manifest import SPLITS, read_manifest  # noqa: E402


@dataclass
class DescribeResult:
    out: str
    figures: list[str]
    n_images: int
    classes: list[str]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def describe(manifest: Path, out: Path, params: dict[str, Any]) -> DescribeResult:
    """Write the three figures for the manifest into out."""
    df = read_manifest(manifest)
    if df.empty:
        raise DataError(f"{manifest}: manifest is empty, nothing to describe")
    out.mkdir(parents=True, exist_ok=True)
    classes = sorted(df["category"].unique())
    figures = [
        label_distribution(df, classes, out / "label_distribution.png"),
        kids_balance(df, classes, out / "kids_balance.png"),
        image_sizes(df, out / "image_sizes.png"),
        contact_sheet(df, classes, out / "contact_sheet.png", int(params.get("samples_per_class", 8)),
                      int(params.get("thumb_size", 112)), int(params.get("seed", DEFAULT_SEED))),
    ]
    return DescribeResult(out=str(out), figures=[str(f) for f in figures], n_images=len(df), classes=classes)


def label_distribution(df: pd.DataFrame, classes: list[str], path: Path) -> Path:
    """Grouped bars: images per class, one bar per split, plus the attribute counts in the title."""
    splits = [s for s in SPLITS if (df["split"] == s).any()] if "split" in df else ["all"]
    counts = (pd.crosstab(df["category"], df["split"]).reindex(index=classes, columns=splits, fill_value=0)
              if "split" in df else df["category"].value_counts().reindex(classes).to_frame("all"))
    fig, ax = plt.subplots(figsize=(max(6.0, 0.8 * len(classes) + 2), 4.5))
    width = 0.8 / len(splits)
    x = np.arange(len(classes))
    for i, split in enumerate(splits):
        bars = ax.bar(x + (i - (len(splits) - 1) / 2) * width, counts[split], width,
                      label=f"{split} ({int(counts[split].sum())})")
        ax.bar_label(bars, fontsize=6)
    ax.set_xticks(x, classes, rotation=30, ha="right")
    ax.set_ylabel("images")
    kids = int(df["kids"].sum()) if "kids" in df else 0
    ax.set_title(f"Images per class and split ({len(df)} images, kids: {kids})")
    ax.legend()
    return save(fig, path)


def kids_balance(df: pd.DataFrame, classes: list[str], path: Path) -> Path:
    """One panel per split: adults and kids photos per category as stacked horizontal bars, kids' share."""
    splits = [s for s in SPLITS if (df["split"] == s).any()] if "split" in df else [None]
    fig, axes = plt.subplots(1, len(splits), figsize=(4.2 * len(splits) + 1, 0.32 * len(classes) + 1.8),
                             sharey=True, squeeze=False)
    y = np.arange(len(classes))
    for ax, split in zip(axes[0], splits, strict=True):
        part = df if split is None else df[df["split"] == split]
        kids = part[part["kids"]]["category"].value_counts().reindex(classes, fill_value=0)
        adults = part[~part["kids"]]["category"].value_counts().reindex(classes, fill_value=0)
        ax.barh(y, adults, color="#4c72b0", label="adults")
        ax.barh(y, kids, left=adults, color="#dd8452", label="kids")
        for i, (a, k) in enumerate(zip(adults, kids, strict=True)):
            if k:
                ax.text(a + k, i, f" {k}", va="center", fontsize=7, color="#a0522d")
        n_kids, n = int(kids.sum()), len(part)
        ax.set_title(f"{split or 'all'}: {n} photos, kids {n_kids} ({n_kids / max(n, 1):.0%})", fontsize=9)
        ax.set_xlabel("photos")
    axes[0][0].invert_yaxis()  # shared y: once flips every panel
    axes[0][0].set_yticks(y, classes)
    axes[0][-1].legend(loc="lower right")
    fig.suptitle("Kids and adults photos per category and split (orange numbers: kids)")
    return save(fig, path)


def image_sizes(df: pd.DataFrame, path: Path) -> Path:
    """Width against height, one point per image, with marginal histograms of each side."""
    fig, axes = plt.subplots(1, 3, figsize=(13, 4))
    axes[0].scatter(df["width"], df["height"], s=6, alpha=0.4)
    axes[0].set(xlabel="width (px)", ylabel="height (px)", title="Image sizes")
    axes[1].hist(df["width"].dropna(), bins=30)
    axes[1].set(xlabel="width (px)", ylabel="images", title="Width")
    axes[2].hist(df["height"].dropna(), bins=30)
    axes[2].set(xlabel="height (px)", title="Height")
    return save(fig, path)


def contact_sheet(df: pd.DataFrame, classes: list[str], path: Path, per_class: int, thumb: int,
                  seed: int) -> Path:
    """A grid: one row per class, `per_class` seeded sample thumbnails (aspect kept, centred)."""
    sheet = np.full((len(classes) * thumb, per_class * thumb, 3), 255, dtype=np.uint8)
    for r, cls in enumerate(tqdm(classes, desc="contact sheet", unit="class")):
        rows = df[df["category"] == cls].sort_values("id")
        rows = rows.sample(n=min(per_class, len(rows)), random_state=seed)
        for c, p in enumerate(rows["abspath"]):
            img = open_image(p)
            img.thumbnail((thumb, thumb))
            y, x = r * thumb + (thumb - img.height) // 2, c * thumb + (thumb - img.width) // 2
            sheet[y:y + img.height, x:x + img.width] = np.asarray(img)
    fig, ax = plt.subplots(figsize=(per_class * 1.3 + 1.5, len(classes) * 1.3 + 0.6))
    ax.imshow(sheet)
    ax.set_yticks([(r + 0.5) * thumb for r in range(len(classes))], classes)
    ax.set_xticks([])
    ax.set_title(f"Sample images per class ({per_class} each, seed {seed})")
    return save(fig, path)


def save(fig: plt.Figure, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
