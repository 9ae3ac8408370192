"""Stage `ingest`: the source folder -> `manifest.parquet` (one row per image) and `problems.json`.

The source's mess is recorded, not fatal: rows without image files and files without rows are listed
in `problems.json`; unreadable files stay in the manifest without size or mode so that `validate`
quarantines or refuses them by name. The source's CSV files are copied beside the manifest (`source/`)
so later stages never reach outside the project, and `source.json` records where the data came from.

New labelled photos (`fashionrec add-photos`) live in the additions folder (`ingest.additions`, a
DVC-tracked folder of the project in the same layout): its rows join the source's and its CSV files join
the source's of the same name (`splits.csv`, the split each photo was given, is the additions' own), so the
next `dvc repro` makes a new data version.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
from tqdm import tqdm

from fashionrec.core.errors import DataError
from fashionrec.data.manifest import MANIFEST, ManifestWriter, category_of, image_facts, labels_of
from fashionrec.data.source import fingerprint, resolve_source

CSV_COLUMNS = ("image", "sender_id", "label", "kids")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
CHUNK = 10_000  # manifest rows per batch (ingest.chunk_size)
EXAMPLES = 20  # ids listed per problem in the result (problems.json lists all)


@dataclass
class IngestResult:
    source: str
    origin: str
    manifest: str
    n_rows: int
    n_files: int
    n_images: int
    problems: dict[str, int]
    examples: dict[str, list[str]] = field(default_factory=dict)
    label_counts: dict[str, int] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def ingest(source: str | Path, out: Path, params: dict[str, Any], *, shared_path: Path | None = None,
           download_dir: Path | None = None, additions: Path | None = None) -> IngestResult:
    """Build `out/manifest.parquet` from a source folder (`source` is a path or `auto`) plus the additions
    folder when it exists."""
    resolved = resolve_source(source, shared_path=shared_path, download_url=params.get("download_url"),
                              download_dir=download_dir)
    folder = resolved.path
    chunk = int(params.get("chunk_size") or CHUNK)
    rows, bad_rows = read_images_csv(folder / "images.csv")
    files = list_images(folder)
    extra = additions if additions is not None and (Path(additions) / "images.csv").is_file() else None
    if extra is not None:
        more, more_bad = read_images_csv(Path(extra) / "images.csv")
        clash = more["image"].isin(rows["image"])
        bad_rows += more_bad + [{"line": f"{extra}/images.csv", "image": i, "reason": "duplicate image"}
                                for i in more.loc[clash, "image"]]
        rows = pd.concat([rows, more[~clash]], ignore_index=True)
        more_files = list_images(Path(extra))
        files = pd.concat([files, more_files[~more_files["image"].isin(files["image"])]], ignore_index=True)

    without_files = sorted(rows.loc[~rows["image"].isin(files["image"]), "image"])
    without_rows = sorted(files.loc[~files["image"].isin(rows["image"]), "image"])
    matched = rows.merge(files, on="image", how="inner", sort=False)

    out.mkdir(parents=True, exist_ok=True)
    unreadable: list[dict[str, str]] = []
    with ManifestWriter(out / MANIFEST) as writer, \
            tqdm(total=len(matched), desc="ingest", unit="img", mininterval=1.0) as bar:
        for start in range(0, len(matched), chunk):
            part = matched.iloc[start:start + chunk]
            writer.write(manifest_rows(part, unreadable))
            bar.update(len(part))
    manifest = out / MANIFEST
    n_images = writer.rows
    copy_csvs(folder, out / "source")
    if extra is not None:
        join_additions(Path(extra), out / "source")
    label_counts = {str(k): int(v) for k, v in rows["label"].value_counts().items()}
    problems = {"rows_without_images": without_files, "images_without_rows": without_rows,
                "unreadable_files": unreadable, "bad_rows": bad_rows, "label_counts": label_counts}
    (out / "problems.json").write_text(json.dumps(problems, indent=2) + "\n")
    provenance = {**resolved.to_dict(), **fingerprint(folder)}
    if extra is not None:
        provenance["additions"] = {"path": str(extra), **fingerprint(Path(extra))}
    (out / "source.json").write_text(json.dumps(provenance, indent=2) + "\n")

    return IngestResult(
        source=str(folder), origin=resolved.origin, manifest=str(manifest), n_rows=len(rows) + len(bad_rows),
        n_files=len(files), n_images=n_images,
        problems={k: len(v) for k, v in problems.items() if k != "label_counts"},
        examples={"rows_without_images": without_files[:EXAMPLES],
                  "images_without_rows": without_rows[:EXAMPLES],
                  "unreadable_files": [u["id"] for u in unreadable[:EXAMPLES]]},
        label_counts=label_counts)


def manifest_rows(part: pd.DataFrame, unreadable: list[dict[str, str]]) -> pd.DataFrame:
    """Manifest rows of one chunk of matched rows (image, sender_id, label, kids, file): each file's size,
    mode and sha256; an unreadable file keeps its row (no size or mode) and is listed in `unreadable`."""
    records = []
    for row in part.itertuples(index=False):
        path = Path(row.file).resolve()
        try:
            facts = image_facts(path)
        except DataError as exc:
            data = path.read_bytes()
            facts = {"width": None, "height": None, "mode": None, "bytes": len(data),
                     "sha256": hashlib.sha256(data).hexdigest()}
            unreadable.append({"id": row.image, "path": str(path), "error": str(exc)})
        category = category_of(row.label)
        records.append({"id": row.image, "path": str(path), "label": row.label, "category": category,
                        "labels": labels_of(category, {"kids": bool(row.kids)}), "kids": bool(row.kids),
                        "sender_id": int(row.sender_id), **facts})
    return pd.DataFrame(records)


def list_images(folder: Path) -> pd.DataFrame:
    """(image id, file path) of every image in `folder/images`, sorted by file name; read with scandir
    into Arrow-backed strings (a million names cost tens of MB, not hundreds)."""
    images = folder / "images"
    names: list[str] = []
    if images.is_dir():
        with os.scandir(images) as it:
            names = sorted(e.name for e in it if e.is_file() and e.name.lower().endswith(IMAGE_SUFFIXES))
    stems = [n.rsplit(".", 1)[0] for n in names]
    frame = pd.DataFrame({"image": pd.array(stems, dtype="string[pyarrow]"),
                          "file": pd.array([str(images / n) for n in names], dtype="string[pyarrow]")})
    return frame.drop_duplicates("image", keep="last").reset_index(drop=True)   # a.jpg, a.png: the last


def image_files(folder: Path) -> dict[str, Path]:
    images = folder / "images"
    if not images.is_dir():
        return {}
    return {p.stem: p for p in sorted(images.iterdir()) if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES}


def join_additions(additions: Path, dest: Path) -> None:
    """Append the additions' CSV rows to the copied source CSVs of the same name (header once)."""
    for csv in sorted(additions.glob("*.csv")):
        target = dest / csv.name
        lines = csv.read_text().splitlines()
        if not lines:
            continue
        if target.is_file():
            text = target.read_text()
            body = lines[1:]
            target.write_text(text + ("" if text.endswith("\n") or not text else "\n")
                              + "".join(f"{line}\n" for line in body))
        else:
            shutil.copyfile(csv, target)


def read_images_csv(path: Path) -> tuple[pd.DataFrame, list[dict[str, Any]]]:
    """Parse `images.csv`; rows with an empty or malformed field are returned apart, with the reason (the
    checks are column-wide, so a million rows take seconds)."""
    try:
        raw = pd.read_csv(path, dtype="string[pyarrow]", keep_default_na=False)
    except Exception as exc:
        raise DataError(f"{path}: cannot read CSV ({type(exc).__name__}: {exc})") from exc
    missing = [c for c in CSV_COLUMNS if c not in raw.columns]
    if missing:
        raise DataError(f"{path}: missing columns {missing} (expected {list(CSV_COLUMNS)})")
    image, label = raw["image"].str.strip(), raw["label"].str.strip()
    kids, sender = raw["kids"].str.strip().str.lower(), raw["sender_id"].str.strip()
    reason = pd.Series("", index=raw.index, dtype=object)
    checks = [(image == "", "empty image"), (label == "", "empty label"),
              (image.duplicated() & (image != ""), "duplicate image"),
              (~sender.str.fullmatch(r"-?\d+"), "sender_id is not an integer"),
              (~kids.isin(["true", "false", "1", "0"]), "kids is not a boolean")]
    for mask, why in reversed(checks):   # the first failing check names the row
        reason = reason.mask(mask.fillna(True).to_numpy(dtype=bool), why)
    is_bad = (reason != "").to_numpy()
    bad = [{"line": int(i) + 2, "image": str(im), "reason": str(r)}
           for i, im, r in zip(raw.index[is_bad], image[is_bad], reason[is_bad], strict=True)]
    good = pd.DataFrame({"image": image[~is_bad], "sender_id": sender[~is_bad].astype("int64"),
                         "label": label[~is_bad], "kids": kids[~is_bad].isin(["true", "1"]).astype(bool)})
    return good.reset_index(drop=True), bad


def copy_csvs(folder: Path, dest: Path) -> None:
    """Copy the source's CSV files (images.csv, top10-splits.csv...) beside the manifest."""
    shutil.rmtree(dest, ignore_errors=True)
    dest.mkdir(parents=True)
    for csv in sorted(folder.glob("*.csv")):
        shutil.copyfile(csv, dest / csv.name)
