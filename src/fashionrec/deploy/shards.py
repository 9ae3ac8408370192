"""Embedding a big inventory in shards that resume: `index.shard_size` items per shard, each written as one
Parquet file (the shard's item rows + their embeddings) under `index.shards_dir`.

A shard's file is named by what it holds: its position, and a key hashing the model file's sha256, the
preprocessing and the shard's rows (every field). A deploy run again after a crash (or a retry of the
step) finds the shards already embedded by the same model for the same rows and embeds only the others; a
shard that fails is retried alone (`index.shard_retries`), the others keep their files. Locally the shards
run one after another with a progress bar; `embed_shard` is the unit a parallel runner (a KFP `ParallelFor`
over `plan`) calls, one task per shard, and `assemble` reads them back in order (`deploy.inventory` splits a
deploy into those steps for the pipeline). The rows a plan names are written once beside the shards
(`catalog-<plan key>.parquet`), so the parallel tasks read the same rows without reading the inventory again.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from fashionrec.core.errors import DataError, FashionrecError
from fashionrec.core.files import sha256_file
from fashionrec.data.images import Preprocessing

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Shard:
    number: int
    start: int
    stop: int
    key: str

    @property
    def name(self) -> str:
        return f"shard-{self.number:05d}-{self.key}.parquet"

    def to_dict(self) -> dict[str, Any]:
        return {"number": self.number, "start": self.start, "stop": self.stop, "key": self.key}

    @classmethod
    def from_dict(cls, value: dict[str, Any]) -> Shard:
        """A shard as a pipeline hands it over (numbers may come back as floats)."""
        try:
            return cls(int(value["number"]), int(value["start"]), int(value["stop"]), str(value["key"]))
        except (KeyError, TypeError, ValueError) as exc:
            raise DataError(f"inventory shard {value!r}: expected number, start, stop and key ({exc})") \
                from None


def _plain(value: Any) -> Any:
    """A cell as JSON sees it the same way fresh or read back from Parquet (lists come back as arrays)."""
    if isinstance(value, np.ndarray | list | tuple):
        return [_plain(v) for v in value]
    return value.item() if isinstance(value, np.generic) else value


def shard_key(rows: pd.DataFrame, model_sha256: str, prep: Preprocessing) -> str:
    """What a shard holds: the model file, the preprocessing and its rows, every field (a title changed
    is a shard to write again: the bundle's items come from the shard files)."""
    prep_blob = json.dumps(prep.to_dict(), sort_keys=True, default=str)
    h = hashlib.sha256(f"{model_sha256}\n{prep_blob}\n".encode())
    for row in rows.to_dict("records"):
        h.update(json.dumps({str(k): _plain(v) for k, v in row.items()}, sort_keys=True,
                            default=str).encode() + b"\n")
    return h.hexdigest()[:16]


def plan(catalog: pd.DataFrame, shard_size: int, model_sha256: str, prep: Preprocessing) -> list[Shard]:
    """The shards of a catalog, in order; each key names the model, preprocessing and rows it embeds."""
    if shard_size < 1:
        raise DataError(f"params index.shard_size must be >= 1 to embed in shards, got {shard_size}")
    return [Shard(number, start, min(start + shard_size, len(catalog)),
                  shard_key(catalog.iloc[start:start + shard_size], model_sha256, prep))
            for number, start in enumerate(range(0, len(catalog), shard_size))]


def plan_key(shards: list[Shard]) -> str:
    """One key for a whole plan (its shards' keys): names the catalog file the plan's tasks read."""
    return hashlib.sha256("\n".join(s.key for s in shards).encode()).hexdigest()[:16]


def catalog_name(shards: list[Shard]) -> str:
    return f"catalog-{plan_key(shards)}.parquet"


def write_catalog(catalog: pd.DataFrame, shards: list[Shard], out_dir: Path) -> Path:
    """The rows a plan names, as one Parquet file beside its shards (written whole or not at all; kept
    when already there: the name is the plan's key)."""
    final = out_dir / catalog_name(shards)
    if final.is_file():
        return final
    out_dir.mkdir(parents=True, exist_ok=True)
    tmp = out_dir / f".{final.name}.{os.getpid()}"
    catalog.reset_index(drop=True).to_parquet(tmp, index=False)
    os.replace(tmp, final)
    return final


def read_plan_catalog(path: Path, shard: Shard, model_sha256: str, prep: Preprocessing) -> pd.DataFrame:
    """The rows a plan wrote (`write_catalog`), checked against one of its shards: its rows there, with
    the model and preprocessing given, hash to its key."""
    try:
        catalog = pd.read_parquet(path)
    except Exception as exc:
        raise DataError(f"{path}: the inventory plan's rows are unreadable ({exc}); plan again") from exc
    if shard.stop > len(catalog) or shard_key(catalog.iloc[shard.start:shard.stop], model_sha256,
                                              prep) != shard.key:
        raise DataError(f"{path}: inventory shard {shard.number} ({shard.key}, items {shard.start}-"
                        f"{shard.stop - 1}) is not this plan's: its rows or model differ; plan again")
    return catalog


# rows -> (embeddings, kept rows, skipped): `deploy.build.embed_catalog` with its model and settings bound
Embed = Callable[[pd.DataFrame], tuple[np.ndarray, pd.DataFrame, list[dict[str, str]]]]


def embed_shard(shard: Shard, catalog: pd.DataFrame, embed: Embed, out_dir: Path) -> Path:
    """Embed one shard with `embed` into `out_dir/<shard.name>`, written whole or not at all."""
    rows = catalog.iloc[shard.start:shard.stop]
    try:
        embeddings, kept, skipped = embed(rows)
    except DataError as exc:
        if "could be read" not in str(exc):
            raise
        embeddings, kept = np.zeros((0, 0), np.float32), rows.iloc[:0]   # every image of the shard unreadable
        skipped = [{"item_id": str(i), "image": str(p), "reason": str(exc)}
                   for i, p in zip(rows["item_id"], rows["image"], strict=True)]
    table = kept.reset_index(drop=True).copy()
    table["embedding"] = list(embeddings) if len(table) else []
    table.attrs = {}
    out_dir.mkdir(parents=True, exist_ok=True)
    final = out_dir / shard.name
    tmp = out_dir / f".{shard.name}.{os.getpid()}"
    import pyarrow as pa
    import pyarrow.parquet as pq

    arrow = pa.Table.from_pandas(table, preserve_index=False)
    arrow = arrow.replace_schema_metadata({**(arrow.schema.metadata or {}),
                                           b"fashionrec.skipped": json.dumps(skipped).encode()})
    pq.write_table(arrow, tmp)
    os.replace(tmp, final)
    return final


def embed_in_shards(catalog: pd.DataFrame, embed: Embed, model_file: Path, prep: Preprocessing,
                    out_dir: Path, shard_size: int, retries: int, embed_missing: bool = True
                    ) -> tuple[np.ndarray, pd.DataFrame, list[dict[str, str]], dict[str, Any]]:
    """Embed every shard not already on disk (one after another, each retried alone), then assemble.
    `embed_missing` False (a pipeline's assemble step, after its parallel tasks): a shard not on disk is
    an error naming it, not embedded here."""
    catalog = catalog.reset_index(drop=True)
    shards = plan(catalog, shard_size, sha256_file(model_file), prep)
    if not embed_missing:
        missing = [s for s in shards if not (out_dir / s.name).is_file()]
        if missing:
            raise DataError(f"{out_dir}: {len(missing)} of {len(shards)} inventory shard(s) not embedded "
                            f"(first: shard {missing[0].number}, items {missing[0].start}-"
                            f"{missing[0].stop - 1}, {missing[0].name}); run their embed_shard tasks, or "
                            "plan again if the model or the inventory changed")
    reused = embedded = 0
    with tqdm(total=len(shards), desc="inventory shards", unit="shard") as bar:
        for shard in shards:
            if (out_dir / shard.name).is_file():
                reused += 1
            else:
                for attempt in range(retries + 1):
                    try:
                        embed_shard(shard, catalog, embed, out_dir)
                        break
                    except (FashionrecError, OSError) as exc:
                        if attempt == retries:
                            raise DataError(f"inventory shard {shard.number} (items {shard.start}-"
                                            f"{shard.stop - 1}) failed {retries + 1} time(s): {exc}; the "
                                            f"other shards are kept in {out_dir}") from exc
                        log.warning("shard %d failed (%s); retrying it alone", shard.number, exc)
                embedded += 1
            bar.update(1)
    embeddings, kept, skipped = assemble(shards, out_dir)
    wanted = {shard.name for shard in shards} | {catalog_name(shards)}
    for pattern in ("shard-*.parquet", "catalog-*.parquet"):   # another model's or catalog's: not reusable
        for stale in out_dir.glob(pattern):
            if stale.name not in wanted:
                stale.unlink(missing_ok=True)
    return embeddings, kept, skipped, {"shards": len(shards), "embedded": embedded, "reused": reused}


def assemble(shards: list[Shard], out_dir: Path) -> tuple[np.ndarray, pd.DataFrame, list[dict[str, str]]]:
    """The shards' rows and embeddings, in shard order (as one pass would have produced them)."""
    import pyarrow.parquet as pq

    parts, vectors, skipped = [], [], []
    for shard in shards:
        path = out_dir / shard.name
        try:
            table = pq.read_table(path)
        except Exception as exc:
            raise DataError(f"{path}: unreadable inventory shard ({exc}); delete it to embed it "
                            "again") from exc
        skipped += json.loads((table.schema.metadata or {}).get(b"fashionrec.skipped", b"[]"))
        frame = table.to_pandas()
        if len(frame):
            vectors.append(np.stack(frame.pop("embedding").to_numpy()).astype(np.float32))
            parts.append(frame)
    if not parts:
        raise DataError("none of the inventory images could be read; first problem: "
                        f"{skipped[0]['reason'] if skipped else 'no items'}")
    return np.concatenate(vectors), pd.concat(parts, ignore_index=True), skipped
