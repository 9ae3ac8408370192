"""Stage `subset`: choose classes, drop unusable labels, cap per class, split, copy the images.

The subset folder is self-contained (images copied, paths relative) so DVC versions exactly what a
model was trained on. Split policies:
- `published`: the source's `top10-splits.csv`; its label wins over `images.csv` where they disagree.
- `grouped`: seeded and stratified by category, grouped by `sender_id` so that one person's photos never
  straddle two splits (no near-duplicate leakage between train and test).
"""

from __future__ import annotations

import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from tqdm import tqdm

from fashionrec.core.config import DEFAULT_SEED
from fashionrec.core.errors import DataError
from fashionrec.data.manifest import (
    MANIFEST,
    SPLITS,
    category_of,
    dataset_info,
    labels_of,
    read_manifest,
    write_dataset,
    write_manifest,
)

POLICIES = ("published", "grouped")


@dataclass
class SubsetResult:
    out: str
    policy: str
    classes: list[str]
    n_images: int
    counts: dict[str, int]
    dropped_labels: dict[str, int] = field(default_factory=dict)
    dropped_other_classes: int = 0
    capped: int = 0
    relabelled: int = 0
    not_in_published: int = 0
    published_missing: list[str] = field(default_factory=list)
    missing_files: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def subset(manifest: Path, out: Path, params: dict[str, Any]) -> SubsetResult:
    """Write `out/manifest.parquet` (with `split`), `out/dataset.json` and `out/images/`."""
    split_params = params.get("split") or {}
    policy = split_params.get("policy", "published")
    if policy not in POLICIES:
        raise DataError(f"subset.split.policy: '{policy}' is not one of {list(POLICIES)}")
    seed = int(params.get("seed", DEFAULT_SEED))
    attributes = list(params.get("attributes") or [])
    df = read_manifest(manifest)
    for attr in attributes:
        if attr not in df.columns or df[attr].dtype != bool:
            raise DataError(f"subset.attributes: '{attr}' is not a boolean manifest column")
    notes: dict[str, Any] = {}

    drop = set(params.get("drop_labels") or [])
    dropped = df["label"].isin(drop)
    notes["dropped_labels"] = {str(k): int(v) for k, v in df.loc[dropped, "label"].value_counts().items()}
    df = df[~dropped]

    if policy == "published":
        df, expected = apply_published(df, Path(manifest).parent / "source" / split_params.get(
            "published_file", "top10-splits.csv"), notes)
    else:
        expected = check_shares(split_params.get("shares") or {})

    classes = list(params.get("classes") or sorted(df["category"].unique()))
    keep = df["category"].isin(classes)
    notes["dropped_other_classes"] = int((~keep).sum())
    df = df[keep]
    empty = [c for c in classes if not (df["category"] == c).any()]
    if empty:
        raise DataError(f"subset.classes: no images for {empty} (after dropping {sorted(drop)})")
    if policy == "published":
        expected = shares_of(df)

    cap = params.get("max_per_class")
    if cap is not None:
        before = len(df)
        df = cap_per_class(df, int(cap), seed)
        notes["capped"] = before - len(df)
    if policy == "grouped":
        df = df.assign(split=grouped_split(df, expected, seed))

    df = df.assign(labels=[labels_of(c, dict(zip(attributes, map(bool, flags), strict=True)))
                           for c, *flags in df[["category", *attributes]].itertuples(index=False)])
    df = df.sort_values(["split", "category", "id"]).reset_index(drop=True)
    df, missing = copy_images(df, out)
    write_manifest(df, out / MANIFEST)
    write_dataset(dataset_info(df, classes, attributes, split_policy=policy, seed=seed,
                               expected_shares=expected), out)
    return SubsetResult(out=str(out), policy=policy, classes=classes, n_images=len(df),
                        counts={s: int((df["split"] == s).sum()) for s in SPLITS},
                        missing_files=missing, **notes)


def apply_published(df: pd.DataFrame, splits_csv: Path, notes: dict[str, Any]) -> tuple[pd.DataFrame, dict]:
    """Keep the images of the published split file; take its label and split."""
    if not splits_csv.is_file():
        raise DataError(f"{splits_csv}: published split file not found (policy 'published'; "
                        "use subset.split.policy=grouped for a source without one)")
    pub = pd.read_csv(splits_csv, dtype=str, keep_default_na=False)
    missing_cols = [c for c in ("image", "label", "split") if c not in pub.columns]
    if missing_cols:
        raise DataError(f"{splits_csv}: missing columns {missing_cols}")
    bad = pub[~pub["split"].isin(SPLITS)]
    if len(bad):
        line, value = int(bad.index[0]) + 2, bad["split"].iloc[0]
        raise DataError(f"{splits_csv}: line {line}: split '{value}' is not one of {list(SPLITS)}")
    pub = pub.drop_duplicates("image")
    merged = df.merge(pub.rename(columns={"image": "id", "label": "published_label"}), on="id", how="inner")
    published_category = merged["published_label"].map(category_of)
    notes["relabelled"] = int((published_category != merged["category"]).sum())
    notes["not_in_published"] = int(len(df) - len(merged))
    notes["published_missing"] = sorted(set(pub["image"]) - set(df["id"]))
    merged = merged.assign(category=published_category).drop(columns=["published_label"])
    return merged, shares_of(merged)


def check_shares(shares: dict[str, Any]) -> dict[str, float]:
    if set(shares) != set(SPLITS) or any(float(v) < 0 for v in shares.values()):
        raise DataError(f"subset.split.shares: need non-negative {list(SPLITS)}, got {shares}")
    total = sum(float(v) for v in shares.values())
    if not total:
        raise DataError("subset.split.shares: all zero")
    return {s: float(shares[s]) / total for s in SPLITS}


def shares_of(df: pd.DataFrame) -> dict[str, float]:
    n = max(len(df), 1)
    return {s: round(float((df["split"] == s).sum()) / n, 6) for s in SPLITS}


def cap_per_class(df: pd.DataFrame, cap: int, seed: int) -> pd.DataFrame:
    """At most `cap` images per class, a seeded random choice (stable under row order)."""
    if cap < 1:
        raise DataError(f"subset.max_per_class: must be >= 1 or null, got {cap}")
    shuffled = df.sort_values("id").sample(frac=1.0, random_state=seed)
    return shuffled[shuffled.groupby("category").cumcount() < cap]


def grouped_split(df: pd.DataFrame, shares: dict[str, float], seed: int) -> pd.Series:
    """Assign whole sender groups to splits greedily, keeping each split's class counts near its target.

    Groups go largest first (seeded order among equals); each lands in the split where it least raises
    the chi-square distance sum((filled - target)^2 / target) over (split, class), so every split
    approaches its share of every class.
    """
    counts = pd.crosstab(df["sender_id"], df["category"])
    rng = np.random.default_rng(seed)
    order = counts.index.to_numpy()[rng.permutation(len(counts))]
    sizes = counts.loc[order].sum(axis=1).to_numpy()
    order = order[np.argsort(-sizes, kind="stable")]
    target = np.outer([shares[s] for s in SPLITS], counts.sum(axis=0).to_numpy(dtype=float))
    filled = np.zeros_like(target)
    assigned: dict[Any, str] = {}
    for sender in order:
        c = counts.loc[sender].to_numpy(dtype=float)
        cost = ((2 * c * (filled - target) + c**2) / np.maximum(target, 1e-9)).sum(axis=1)
        cost[[shares[s] == 0 for s in SPLITS]] = np.inf
        best = int(np.argmin(cost))
        filled[best] += c
        assigned[sender] = SPLITS[best]
    return df["sender_id"].map(assigned)


def copy_images(df: pd.DataFrame, out: Path) -> tuple[pd.DataFrame, list[str]]:
    """Copy each image to `out/images/<id><suffix>`; a vanished file keeps its row and is listed."""
    images = out / "images"
    shutil.rmtree(images, ignore_errors=True)
    images.mkdir(parents=True)
    paths, missing = [], []
    for rid, src in tqdm(zip(df["id"], df["abspath"], strict=True), total=len(df), desc="subset", unit="img"):
        rel = f"images/{rid}{Path(src).suffix.lower() or '.jpg'}"
        try:
            shutil.copyfile(src, out / rel)
        except OSError:
            missing.append(rid)
        paths.append(rel)
    return df.assign(path=paths).drop(columns=["abspath"]), missing
