"""The manifest: one Parquet row per image, the single description of a dataset folder.

Paths are absolute in `data/manifest` (the source's files) and, in subset/validated, shard member references
relative to the manifest's folder (`shards/train-000000.tar#<offset>:<size>:<key>.jpg`, see `data/shards.py`)
so a versioned folder can move; `read_manifest` adds `abspath`, the one way to find a photo, which
`open_image` and `read_image_bytes` read whichever it is.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pandas as pd
from PIL import Image

from fashionrec.core.errors import DataError
from fashionrec.core.files import read_json
from fashionrec.data.images import open_image

COLUMNS = ["id", "path", "label", "category", "labels", "kids", "sender_id",
           "width", "height", "mode", "bytes", "sha256"]
OPTIONAL = ("split", "shard", "key")   # subset/validated: the split, and where each photo lies in the shards
SPLITS = ("train", "validation", "test")
MANIFEST = "manifest.parquet"
DATASET = "dataset.json"


def category_of(label: str) -> str:
    """Source label -> category: lower-cased, e.g. `T-Shirt` -> `t-shirt`."""
    return str(label).strip().lower()


def labels_of(category: str, attributes: dict[str, bool]) -> list[str]:
    """Multi-label target: the category plus every attribute that is true (e.g. `kids`)."""
    return [category, *(name for name, on in attributes.items() if on)]


def image_facts(path: Path) -> dict[str, Any]:
    """Size after EXIF orientation, original mode, byte count and sha256; raises DataError if unreadable."""
    data = path.read_bytes()
    img = open_image(data, name=str(path))
    with Image.open(path) as header:  # header only: the mode as stored, before conversion to RGB
        mode = header.mode
    return {"width": img.width, "height": img.height, "mode": mode, "bytes": len(data),
            "sha256": hashlib.sha256(data).hexdigest()}


def write_manifest(df: pd.DataFrame, path: Path) -> Path:
    """Write the manifest columns (plus `split` when present) with stable dtypes."""
    cols = [*COLUMNS, *(c for c in OPTIONAL if c in df.columns)]
    missing = [c for c in cols if c not in df.columns]
    if missing:
        raise DataError(f"{path}: manifest lacks columns {missing}")
    out = df[cols].copy()
    for col in ("width", "height", "bytes"):
        out[col] = out[col].astype("Int64")
    out["sender_id"] = out["sender_id"].astype("Int64")
    out["kids"] = out["kids"].astype(bool)
    out["labels"] = out["labels"].map(list)
    path.parent.mkdir(parents=True, exist_ok=True)
    out.reset_index(drop=True).to_parquet(path, index=False)
    return path


def read_manifest(path: str | Path) -> pd.DataFrame:
    """Read a manifest (file or its folder) and add `abspath`, resolved against the manifest's folder."""
    path = Path(path)
    if path.is_dir():
        path = path / MANIFEST
    if not path.is_file():
        raise DataError(f"manifest not found: {path}")
    try:
        df = pd.read_parquet(path)
    except Exception as exc:
        raise DataError(f"{path}: cannot read manifest ({type(exc).__name__}: {exc})") from exc
    missing = [c for c in COLUMNS if c not in df.columns]
    if missing:
        raise DataError(f"{path}: manifest lacks columns {missing}")
    base = path.parent.resolve()
    df["labels"] = df["labels"].map(lambda v: [] if v is None else [str(x) for x in v])
    df["abspath"] = [str((base / p).resolve()) if isinstance(p, str) else None for p in df["path"]]
    return df


def read_dataset(folder: Path) -> dict[str, Any]:
    """The folder's `dataset.json` (classes, attributes, labels, split policy, counts)."""
    path = Path(folder) / DATASET
    return read_json(path, f"dataset description not found: {path}")


def dataset_info(df: pd.DataFrame, classes: list[str], attributes: list[str], **extra: Any) -> dict[str, Any]:
    """`dataset.json` content: the label vocabulary and the per-split class counts of df."""
    counts = {s: {c: int(((df["split"] == s) & (df["category"] == c)).sum()) for c in classes}
              for s in SPLITS}
    return {"classes": list(classes), "attributes": list(attributes),
            "labels": [*classes, *attributes], **extra, "counts": counts, "n_images": len(df)}


def write_dataset(info: dict[str, Any], folder: Path) -> Path:
    path = Path(folder) / DATASET
    path.write_text(json.dumps(info, indent=2) + "\n")
    return path
