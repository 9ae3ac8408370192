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
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from tqdm import tqdm

from fashionrec.core.errors import DataError
from fashionrec.data.manifest import MANIFEST, ManifestWriter, category_of, id_hashes, image_facts, labels_of
from fashionrec.data.source import fingerprint, resolve_source

CSV_COLUMNS = ("image", "sender_id", "label", "kids")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
CHUNK = 10_000  # manifest rows per batch (ingest.chunk_size)
CSV_ROWS = 100_000  # rows of images.csv parsed at a time when it is read whole
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
    folder when it exists.

    Streamed: the file listing is held as a sorted table of 64-bit stem hashes (`FileIndex`, ~10 bytes a
    file), `images.csv` is read `ingest.chunk_size` rows at a time and each chunk is joined to the listing
    by hash and written; only the problems (rows without files, files without rows, bad rows: each named)
    are kept whole, since they are reported whole.
    """
    resolved = resolve_source(source, shared_path=shared_path, download_url=params.get("download_url"),
                              download_dir=download_dir)
    folder = resolved.path
    chunk = int(params.get("chunk_size") or CHUNK)
    extra = additions if additions is not None and (Path(additions) / "images.csv").is_file() else None
    files = FileIndex([folder] if extra is None else [folder, Path(extra)])
    bad_rows: list[dict[str, Any]] = []
    without_files: list[str] = []
    label_counts: dict[str, int] = {}
    n_rows = 0
    out.mkdir(parents=True, exist_ok=True)
    unreadable: list[dict[str, str]] = []
    clashes: list[dict[str, Any]] = []
    source_ids: list[np.ndarray] = []   # hashes of the source's good rows (an addition may not reuse one)
    known: np.ndarray | None = None    # the same, sorted and unique
    with ManifestWriter(out / MANIFEST) as writer, \
            tqdm(total=files.n, desc="ingest", unit="img", mininterval=1.0) as bar:
        csvs = [folder / "images.csv"] + ([Path(extra) / "images.csv"] if extra is not None else [])
        for k, csv_path in enumerate(csvs):
            reader = ImagesCsv(csv_path, chunk)
            for rows in reader:
                if k == 0:
                    source_ids.append(id_hashes(rows["image"]))
                else:   # an addition whose image the source already has is refused, by name
                    if known is None:   # sorted once, and only when the additions have rows
                        known = (np.unique(np.concatenate(source_ids)) if source_ids
                                 else np.empty(0, np.uint64))
                        source_ids.clear()
                    clash = lookup(known, id_hashes(rows["image"]))[0]
                    clashes += [{"line": f"{extra}/images.csv", "image": i, "reason": "duplicate image"}
                                for i in rows.loc[clash, "image"]]
                    rows = rows[~clash].reset_index(drop=True)
                n_rows += len(rows)
                for label, n in rows["label"].value_counts(sort=False).items():
                    label_counts[str(label)] = label_counts.get(str(label), 0) + int(n)
                matched, missing = files.join(rows)
                without_files += missing
                writer.write(manifest_rows(matched, unreadable))
                bar.update(len(matched))
            bad_rows += reader.bad
        bad_rows += clashes
    manifest = out / MANIFEST
    n_images = writer.rows
    without_rows = files.unused()
    without_files.sort()
    copy_csvs(folder, out / "source")
    if extra is not None:
        join_additions(Path(extra), out / "source")
    label_counts = dict(sorted(label_counts.items(), key=lambda kv: -kv[1]))
    problems = {"rows_without_images": without_files, "images_without_rows": without_rows,
                "unreadable_files": unreadable, "bad_rows": bad_rows, "label_counts": label_counts}
    (out / "problems.json").write_text(json.dumps(problems, indent=2) + "\n")
    provenance = {**resolved.to_dict(), **fingerprint(folder)}
    if extra is not None:
        provenance["additions"] = {"path": str(extra), **fingerprint(Path(extra))}
    (out / "source.json").write_text(json.dumps(provenance, indent=2) + "\n")

    return IngestResult(
        source=str(folder), origin=resolved.origin, manifest=str(manifest), n_rows=n_rows + len(bad_rows),
        n_files=files.n, n_images=n_images,
        problems={k: len(v) for k, v in problems.items() if k != "label_counts"},
        examples={"rows_without_images": without_files[:EXAMPLES],
                  "images_without_rows": without_rows[:EXAMPLES],
                  "unreadable_files": [u["id"] for u in unreadable[:EXAMPLES]]},
        label_counts=label_counts)


class FileIndex:
    """The image files of one or more folders (`<folder>/images/<id>.<jpg|jpeg|png>`), by id: a sorted
    array of 64-bit hashes of the ids with each one's folder and suffix, ~10 bytes a file where a table of
    names costs ~100. Where two files share an id, the one whose name sorts last wins, and an earlier
    folder's file wins over a later folder's (the source's over the additions'). A hash collision between
    two of a million ids has a chance of ~1e-8."""

    def __init__(self, folders: list[Path]) -> None:
        self.folders = [Path(f) for f in folders]
        self.suffixes: list[str] = []
        hashes, folder_of, suffix_of = [], [], []
        for k, folder in enumerate(self.folders):
            for stems, suffixes in self._scan(folder):
                hashes.append(id_hashes(stems))
                folder_of.append(np.full(len(stems), k, dtype=np.uint8))
                suffix_of.append(np.asarray([self._suffix_code(x) for x in suffixes], dtype=np.uint8))
        h = np.concatenate(hashes) if hashes else np.empty(0, dtype=np.uint64)
        f = np.concatenate(folder_of) if folder_of else np.empty(0, dtype=np.uint8)
        x = np.concatenate(suffix_of) if suffix_of else np.empty(0, dtype=np.uint8)
        del hashes, folder_of, suffix_of
        # per id: the earliest folder, then the suffix that sorts last (a.png over a.jpg)
        rank = np.asarray([sorted(self.suffixes).index(v) for v in self.suffixes] or [0], dtype=np.int64)
        order = np.lexsort((-rank[x] if len(x) else x, f, h))
        h, f, x = h[order], f[order], x[order]
        del order
        first = np.ones(len(h), dtype=bool)
        first[1:] = h[1:] != h[:-1]
        self.hashes, self.folder, self.suffix = h[first], f[first], x[first]
        self.used = np.zeros(len(self.hashes), dtype=bool)

    @property
    def n(self) -> int:
        return len(self.hashes)

    def _suffix_code(self, suffix: str) -> int:
        if suffix not in self.suffixes:
            self.suffixes.append(suffix)
        return self.suffixes.index(suffix)

    @staticmethod
    def _scan(folder: Path, batch: int = 10_000) -> Iterator[tuple[list[str], list[str]]]:
        """(ids, suffixes) of the folder's image files, `batch` at a time, in directory order (scandir:
        a million names are never held at once)."""
        images = folder / "images"
        if not images.is_dir():
            return
        stems: list[str] = []
        suffixes: list[str] = []
        with os.scandir(images) as it:
            for e in it:
                if e.name.lower().endswith(IMAGE_SUFFIXES) and e.is_file():
                    stem, _, suffix = e.name.rpartition(".")
                    stems.append(stem)
                    suffixes.append(f".{suffix}")
                    if len(stems) >= batch:
                        yield stems, suffixes
                        stems, suffixes = [], []
        if stems:
            yield stems, suffixes

    def join(self, rows: pd.DataFrame) -> tuple[pd.DataFrame, list[str]]:
        """(rows with a file, with its path in `file`; ids of the rows without one). Marks the files used."""
        found, at = lookup(self.hashes, id_hashes(rows["image"]))
        self.used[at[found]] = True
        matched = rows[found]
        at = at[found]
        files = [str(self.folders[f] / "images" / f"{i}{self.suffixes[x]}")
                 for i, f, x in zip(matched["image"], self.folder[at], self.suffix[at], strict=True)]
        return matched.assign(file=files), list(rows.loc[~found, "image"])

    def unused(self) -> list[str]:
        """Sorted ids of the files no row joined (a second scan of the folders: only these names are kept)."""
        left: set[str] = set()
        for folder in self.folders:
            for stems, _ in self._scan(folder):
                found, at = lookup(self.hashes, id_hashes(stems))
                left.update(s for s, ok, a in zip(stems, found, at, strict=True) if ok and not self.used[a])
        return sorted(left)


def lookup(keys: np.ndarray, hashes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(found, position) of each of `hashes` in `keys` (sorted, unique): a join at 8 bytes a row."""
    if not len(keys):
        return np.zeros(len(hashes), dtype=bool), np.zeros(len(hashes), dtype=np.int64)
    at = np.searchsorted(keys, hashes).clip(0, len(keys) - 1)
    return keys[at] == hashes, at


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


def image_files(folder: Path) -> dict[str, Path]:
    images = folder / "images"
    if not images.is_dir():
        return {}
    return {p.stem: p for p in sorted(images.iterdir()) if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES}


def join_additions(additions: Path, dest: Path) -> None:
    """Append the additions' CSV rows to the copied source CSVs of the same name (header once, lines ending
    in newlines). The copied source file is streamed through a temporary file: a million-row images.csv is
    never held in memory."""
    for csv in sorted(additions.glob("*.csv")):
        target = dest / csv.name
        lines = csv.read_text().splitlines()
        if not lines:
            continue
        if target.is_file():
            tmp = target.with_name(f".{target.name}.tmp")
            last = ""
            with target.open() as src, tmp.open("w") as dst:
                for block in iter(lambda: src.read(1 << 20), ""):   # text mode: line ends read as newlines
                    dst.write(block)
                    last = block[-1]
                if last and last != "\n":
                    dst.write("\n")
                dst.writelines(f"{line}\n" for line in lines[1:])
            tmp.replace(target)
        else:
            shutil.copyfile(csv, target)


def read_images_csv(path: Path) -> tuple[pd.DataFrame, list[dict[str, Any]]]:
    """Parse `images.csv` whole: its good rows and, apart, the bad ones with the reason (`ImagesCsv`)."""
    reader = ImagesCsv(path, CSV_ROWS)
    parts = list(reader)
    good = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(
        {"image": pd.Series([], dtype="string[pyarrow]"), "sender_id": pd.Series([], dtype="int64"),
         "label": pd.Series([], dtype="string[pyarrow]"), "kids": pd.Series([], dtype=bool)})
    return good, reader.bad


class ImagesCsv:
    """`images.csv` a chunk of good rows at a time (image, sender_id, label, kids); rows with an empty or
    malformed field, or an image an earlier row has, go to `bad` with their line and reason (the checks
    are column-wide per chunk; repeats are found first, from 64-bit hashes of every id: 8 bytes a row)."""

    def __init__(self, path: Path, chunk: int) -> None:
        self.path = Path(path)
        self.chunk = chunk
        self.bad: list[dict[str, Any]] = []

    def __iter__(self) -> Iterator[pd.DataFrame]:
        repeated = self._repeated()
        for raw in self._chunks():
            yield self._check(raw, repeated)

    def _chunks(self, columns: list[str] | None = None) -> Iterator[pd.DataFrame]:
        path = self.path
        try:
            header = pd.read_csv(path, dtype="string[pyarrow]", keep_default_na=False, nrows=0)
            missing = [c for c in CSV_COLUMNS if c not in header.columns]
            if missing:
                raise DataError(f"{path}: missing columns {missing} (expected {list(CSV_COLUMNS)})")
            chunks = pd.read_csv(path, dtype="string[pyarrow]", keep_default_na=False, chunksize=self.chunk,
                                 usecols=columns)
        except DataError:
            raise
        except Exception as exc:
            raise DataError(f"{path}: cannot read CSV ({type(exc).__name__}: {exc})") from exc
        with chunks:
            while True:
                try:
                    raw = next(chunks)
                except StopIteration:
                    break
                except Exception as exc:
                    raise DataError(f"{path}: cannot read CSV ({type(exc).__name__}: {exc})") from exc
                yield raw

    def _repeated(self) -> np.ndarray:
        """Sorted line indexes (0-based) of the rows whose image an earlier row already has: a first pass
        hashes every id (8 bytes a row), a stable sort finds the repeats."""
        parts = [id_hashes(raw["image"].str.strip().fillna("").to_numpy(dtype=object))
                 for raw in self._chunks(["image"])]
        hashes = np.concatenate(parts) if parts else np.empty(0, dtype=np.uint64)
        del parts
        order = np.argsort(hashes, kind="stable")
        ordered = hashes[order]
        del hashes
        same = ordered[1:] == ordered[:-1]
        return np.sort(order[1:][same])

    def _check(self, raw: pd.DataFrame, repeated: np.ndarray) -> pd.DataFrame:
        image, label = raw["image"].str.strip(), raw["label"].str.strip()
        kids, sender = raw["kids"].str.strip().str.lower(), raw["sender_id"].str.strip()
        again = np.isin(raw.index.to_numpy(), repeated)
        reason = pd.Series("", index=raw.index, dtype=object)
        checks = [(image == "", "empty image"), (label == "", "empty label"),
                  (pd.Series(again, index=raw.index) & (image != ""), "duplicate image"),
                  (~sender.str.fullmatch(r"-?\d+"), "sender_id is not an integer"),
                  (~kids.isin(["true", "false", "1", "0"]), "kids is not a boolean")]
        for mask, why in reversed(checks):   # the first failing check names the row
            reason = reason.mask(mask.fillna(True).to_numpy(dtype=bool), why)
        is_bad = (reason != "").to_numpy()
        self.bad += [{"line": int(i) + 2, "image": str(im), "reason": str(r)}
                     for i, im, r in zip(raw.index[is_bad], image[is_bad], reason[is_bad], strict=True)]
        good = pd.DataFrame({"image": image[~is_bad], "sender_id": sender[~is_bad].astype("int64"),
                             "label": label[~is_bad], "kids": kids[~is_bad].isin(["true", "1"]).astype(bool)})
        return good.reset_index(drop=True)


def copy_csvs(folder: Path, dest: Path) -> None:
    """Copy the source's CSV files (images.csv, top10-splits.csv...) beside the manifest."""
    shutil.rmtree(dest, ignore_errors=True)
    dest.mkdir(parents=True)
    for csv in sorted(folder.glob("*.csv")):
        shutil.copyfile(csv, dest / csv.name)
