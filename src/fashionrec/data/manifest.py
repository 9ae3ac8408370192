"""The manifest: one Parquet row per image, the single description of a dataset folder.

Paths are absolute in `data/manifest` (the source's files) and, in subset/validated, shard member references
relative to the manifest's folder (`shards/train-000000.tar#<offset>:<size>:<key>.jpg`, see `data/shards.py`)
so a versioned folder can move; `read_manifest` adds `abspath`, the one way to find a photo, which
`open_image` and `read_image_bytes` read whichever it is.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
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


def id_hashes(ids: Any) -> np.ndarray:
    """64-bit hashes of ids (pandas' keyed SipHash, the same in every process): 8 bytes a row where the id's
    string costs ~60, for the joins and cross-row checks that must hold every row of a large dataset."""
    values = np.asarray(ids, dtype=object)
    if not len(values):
        return np.empty(0, dtype=np.uint64)
    return pd.util.hash_array(values, categorize=False)


def image_facts(path: Path) -> dict[str, Any]:
    """Size after EXIF orientation, original mode, byte count and sha256; raises DataError if unreadable."""
    data = path.read_bytes()
    img = open_image(data, name=str(path))
    with Image.open(path) as header:  # header only: the mode as stored, before conversion to RGB
        mode = header.mode
    return {"width": img.width, "height": img.height, "mode": mode, "bytes": len(data),
            "sha256": hashlib.sha256(data).hexdigest()}


def _columns(df: pd.DataFrame, path: Path, optional: tuple[str, ...] | None = None) -> pd.DataFrame:
    """The manifest columns of df (plus the optional ones it has, or exactly `optional`) in stable dtypes."""
    extra = [c for c in OPTIONAL if c in df.columns] if optional is None else list(optional)
    cols = [*COLUMNS, *extra]
    missing = [c for c in cols if c not in df.columns]
    if missing:
        raise DataError(f"{path}: manifest lacks columns {missing}")
    out = df[cols].copy()
    for col in out.columns:   # Arrow-backed strings (subset holds them so) are written as plain strings
        if isinstance(out[col].dtype, pd.StringDtype):
            out[col] = out[col].astype(object).where(out[col].notna(), None)
    for col in ("width", "height", "bytes"):
        out[col] = out[col].astype("Int64")
    out["sender_id"] = out["sender_id"].astype("Int64")
    out["kids"] = out["kids"].astype(bool)
    out["labels"] = out["labels"].map(list)
    return out.reset_index(drop=True)


def schema(optional: tuple[str, ...]) -> pa.Schema:
    """The manifest's Arrow schema: fixed, so that batches written one by one make one valid file."""
    types = {"labels": pa.list_(pa.string()), "kids": pa.bool_(), "sender_id": pa.int64(),
             "width": pa.int64(), "height": pa.int64(), "bytes": pa.int64()}
    return pa.schema([(c, types.get(c, pa.string())) for c in [*COLUMNS, *optional]])


def write_manifest(df: pd.DataFrame, path: Path) -> Path:
    """Write the manifest columns (plus `split`, `shard`, `key` when present) with stable dtypes."""
    out = _columns(df, path)
    path.parent.mkdir(parents=True, exist_ok=True)
    out.to_parquet(path, index=False)
    return path


class ManifestWriter:
    """Writes a manifest a batch at a time (bounded memory); the file appears whole on `close`."""

    def __init__(self, path: Path, optional: tuple[str, ...] = ()) -> None:
        self.path = Path(path)
        self.optional = optional
        self.schema = schema(optional)
        self.rows = 0
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._tmp = self.path.with_name(f".{self.path.name}.tmp")
        self._writer: pq.ParquetWriter | None = None

    def write(self, df: pd.DataFrame) -> None:
        if df.empty:
            return
        table = pa.Table.from_pandas(_columns(df, self.path, self.optional), schema=self.schema,
                                     preserve_index=False)
        if self._writer is None:   # the first batch's schema carries the pandas dtypes (Int64, bool)
            self._writer = pq.ParquetWriter(self._tmp, table.schema)
        self._writer.write_table(table)
        self.rows += len(df)

    def write_arrow(self, table: pa.Table) -> None:
        """Rows already in manifest form (batches of a file this class wrote): no pandas round trip."""
        if not table.num_rows:
            return
        if self._writer is None:
            self._writer = pq.ParquetWriter(self._tmp, table.schema)
        self._writer.write_table(table)
        self.rows += table.num_rows

    def close(self) -> Path:
        if self._writer is None:
            empty = pd.DataFrame({c: pd.Series([], dtype=object) for c in [*COLUMNS, *self.optional]})
            write_manifest(empty.assign(kids=pd.Series([], dtype=bool)), self._tmp)
        else:
            self._writer.close()
        self._tmp.replace(self.path)
        return self.path

    def abort(self) -> None:
        if self._writer is not None:
            self._writer.close()
        self._tmp.unlink(missing_ok=True)

    def __enter__(self) -> ManifestWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        if exc[0] is None:
            self.close()
        else:
            self.abort()


def manifest_file(path: str | Path) -> Path:
    path = Path(path)
    if path.is_dir():
        path = path / MANIFEST
    if not path.is_file():
        raise DataError(f"manifest not found: {path}")
    return path


def _normalise(df: pd.DataFrame, base: Path) -> pd.DataFrame:
    """labels as lists of str; `abspath` (the path resolved against the manifest's folder)."""
    if "labels" in df.columns:
        df["labels"] = df["labels"].map(lambda v: [] if v is None else [str(x) for x in v])
    if "path" in df.columns:
        root = str(base)
        df["abspath"] = [os.path.normpath(os.path.join(root, p)) if isinstance(p, str) else None
                         for p in df["path"]]
    return df


def count_rows(path: str | Path) -> int:
    return pq.ParquetFile(manifest_file(path)).metadata.num_rows


def iter_manifest(path: str | Path, chunk_size: int,
                  columns: list[str] | None = None) -> Iterator[pd.DataFrame]:
    """The manifest `chunk_size` rows at a time, as `read_manifest` gives them (memory bounded by it)."""
    path = manifest_file(path)
    base = path.parent.resolve()
    try:
        reader = pq.ParquetFile(path)
        if columns is None:
            missing = [c for c in COLUMNS if c not in reader.schema_arrow.names]
            if missing:
                raise DataError(f"{path}: manifest lacks columns {missing}")
        for batch in reader.iter_batches(batch_size=chunk_size, columns=columns):
            yield _normalise(batch.to_pandas(), base)
    except DataError:
        raise
    except Exception as exc:
        raise DataError(f"{path}: cannot read manifest ({type(exc).__name__}: {exc})") from exc


def read_manifest(path: str | Path) -> pd.DataFrame:
    """Read a manifest (file or its folder) and add `abspath`, resolved against the manifest's folder."""
    path = manifest_file(path)
    try:
        df = pd.read_parquet(path)
    except Exception as exc:
        raise DataError(f"{path}: cannot read manifest ({type(exc).__name__}: {exc})") from exc
    missing = [c for c in COLUMNS if c not in df.columns]
    if missing:
        raise DataError(f"{path}: manifest lacks columns {missing}")
    return _normalise(df, path.parent.resolve())


def read_dataset(folder: Path) -> dict[str, Any]:
    """The folder's `dataset.json` (classes, attributes, labels, split policy, counts)."""
    path = Path(folder) / DATASET
    return read_json(path, f"dataset description not found: {path}")


def dataset_info(df: pd.DataFrame, classes: list[str], attributes: list[str], **extra: Any) -> dict[str, Any]:
    """`dataset.json` content: the label vocabulary and the per-split class counts of df."""
    counts = {s: {c: int(((df["split"] == s) & (df["category"] == c)).sum()) for c in classes}
              for s in SPLITS}
    return dataset_info_of(counts, len(df), classes, attributes, **extra)


def dataset_info_of(counts: dict[str, dict[str, int]], n_images: int, classes: list[str],
                    attributes: list[str], **extra: Any) -> dict[str, Any]:
    """`dataset.json` content from counts already made (split -> category -> photos; a class it lacks: 0)."""
    counts = {s: {c: int(counts.get(s, {}).get(c, 0)) for c in classes} for s in SPLITS}
    return {"classes": list(classes), "attributes": list(attributes),
            "labels": [*classes, *attributes], **extra, "counts": counts, "n_images": n_images}


def write_dataset(info: dict[str, Any], folder: Path) -> Path:
    path = Path(folder) / DATASET
    path.write_text(json.dumps(info, indent=2) + "\n")
    return path
