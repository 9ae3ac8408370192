"""`fashionrec add-photos FOLDER`: new labelled photos in, as a new data version.

FOLDER is in the upstream layout (`images/` + `images.csv`: image, sender_id, label, kids). The photos
are checked with the same Great Expectations suite as `validate`, run over the current subset plus the
new rows (so a new photo is held to every rule an existing one is: decodable, size, label vocabulary,
unique id, no content in two splits) and one rule of intake's own: no new photo may be a copy (sha256) of
an image already in the dataset (a copy of a test image would leak it into training). Undecodable files
are quarantined (listed, copied aside, left out) or refuse the whole folder, per `intake.on_bad_file`;
any other failure refuses it. Nothing is added from a refused folder and no data version is made.

New photos join the product subset, which must split by sender (`grouped`): a photo of a sender already
in the subset takes that sender's split, a new sender's photos all take one split drawn from the sender id's
hash at the subset's shares (stable, never two splits for one sender). The split is recorded in the
additions' `splits.csv`, which the grouped subset pins (`subset.split.pinned_file`), so existing photos never
move between splits and a champion is never re-scored on photos it was trained on. A `published` subset
(the benchmark) stays as published: intake refuses to extend it.

Accepted photos go into the additions folder (`ingest.additions`, DVC-tracked); then `dvc add`, `dvc repro
subset` (ingest -> subset), `dvc push` and a git commit record the new data version that the next
scheduled run reads.
"""

from __future__ import annotations

import csv
import hashlib
import json
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from fashionrec.core.errors import DataError, ValidationFailed
from fashionrec.data.ingest import image_files, read_images_csv
from fashionrec.data.manifest import SPLITS, category_of, labels_of, read_dataset, read_manifest
from fashionrec.data.source import check_layout
from fashionrec.data.validate import (
    BAD_FILE_MODES,
    add_derived,
    check_files,
    class_counts,
    describe_failure,
    params_for,
    run_suite,
    split_shares,
    suites,
)
from fashionrec.data.versions import SPLITS_FILE, DataVersion, record_version

COPY_CHECK = "new photo is not a copy of a dataset image"


@dataclass
class IntakeResult:
    added: list[str]
    splits: dict[str, int]
    quarantined: list[dict[str, str]]
    additions: str
    report: str
    version: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def split_of(sha256: str, shares: dict[str, float]) -> str:
    """A split drawn from a hash at the subset's shares: the same input always lands in the same split."""
    u = int(sha256[:12], 16) / float(1 << 48)
    total = sum(float(shares.get(s, 0.0)) for s in SPLITS) or 1.0
    edge = 0.0
    for s in SPLITS:
        edge += float(shares.get(s, 0.0)) / total
        if u < edge:
            return s
    return SPLITS[0]


def sender_split(sender_id: int, shares: dict[str, float]) -> str:
    """The split of a sender new to the subset, drawn from the hash of its id."""
    return split_of(hashlib.sha256(f"sender:{int(sender_id)}".encode()).hexdigest(), shares)


def assign_splits(new: pd.DataFrame, current: pd.DataFrame, shares: dict[str, float]) -> pd.DataFrame:
    """Each new photo's split: its sender's split in the current subset, else the new sender's drawn split
    (see the module docstring)."""
    known = dict(zip(current["sender_id"].astype(int), current["split"], strict=False))
    return new.assign(split=[known.get(int(s)) or sender_split(int(s), shares) for s in new["sender_id"]])


def new_rows(folder: Path) -> pd.DataFrame:
    """The folder's rows as manifest rows (absolute paths), refusing malformed CSV rows and rows without
    a file by name."""
    check_layout(folder)
    rows, bad = read_images_csv(folder / "images.csv")
    files = image_files(folder)
    problems = [f"{folder / 'images.csv'}: line {b['line']} ({b['image'] or 'no image'}): {b['reason']}"
                for b in bad]
    problems += [f"{folder / 'images.csv'}: image '{i}' has no file in {folder / 'images'}"
                 for i in rows["image"] if i not in files]
    if problems:
        raise DataError("add-photos refused: " + "; ".join(problems))
    if rows.empty:
        raise DataError(f"{folder / 'images.csv'}: no photos to add")
    records = []
    for row in rows.itertuples(index=False):
        path = files[row.image].resolve()
        data = path.read_bytes()
        sha = hashlib.sha256(data).hexdigest()
        category = category_of(row.label)
        records.append({"id": row.image, "path": str(path), "abspath": str(path), "label": row.label,
                        "category": category, "labels": labels_of(category, {"kids": row.kids}),
                        "kids": row.kids, "sender_id": row.sender_id, "bytes": len(data), "sha256": sha})
    return pd.DataFrame(records)


def with_sizes(df: pd.DataFrame) -> pd.DataFrame:
    """width/height/mode of decodable files (None otherwise: the file check names them)."""
    from PIL import Image

    sizes = []
    for ok, path in zip(df["file_ok"], df["abspath"], strict=True):
        if not ok:
            sizes.append((None, None, None))
            continue
        with Image.open(path) as img:
            sizes.append((img.width, img.height, img.mode))
    width, height, mode = zip(*sizes, strict=True) if sizes else ((), (), ())
    return df.assign(width=list(width), height=list(height), mode=list(mode))


def check_photos(new: pd.DataFrame, info: dict[str, Any], old: pd.DataFrame, reports: Path, on_bad_file: str,
                 validate_params: dict[str, Any]) -> tuple[pd.DataFrame, list[dict[str, str]]]:
    """Run the validate suite over the current subset (`info`: its dataset.json, `old`: its manifest) + the
    new rows (and the copy rule); return the new rows that pass and the quarantined ones, or raise
    ValidationFailed naming every bad file."""
    if on_bad_file not in BAD_FILE_MODES:
        raise DataError(f"intake.on_bad_file: '{on_bad_file}' is not one of {list(BAD_FILE_MODES)}")
    validate_params = params_for(validate_params, info)
    # the current version passed validate already: its files are taken as read (no re-decoding 5k images)
    old = old.assign(file_ok=True, file_error="", file_sha256=old["sha256"], new=False)
    new = with_sizes(check_files(new)).assign(new=True)
    quarantined: list[dict[str, str]] = []
    if on_bad_file == "quarantine":
        bad = new[~new["file_ok"]]
        quarantined = [{"id": r.id, "path": r.path, "reason": r.file_error} for r in bad.itertuples()]
        new = new[new["file_ok"]]
    df = pd.concat([old, new], ignore_index=True)
    df = add_derived(df, set(info["labels"]))
    known = dict(zip(old["sha256"], old["split"] + " image " + old["id"], strict=False))
    df = df.assign(copy_of=[known.get(sha, "") if is_new else ""
                            for sha, is_new in zip(df["content_sha256"], df["new"], strict=True)])
    import great_expectations.expectations as gxe

    expectations = suites(validate_params, info, info.get("split_policy") == "grouped")
    expectations["manifest"].append((COPY_CHECK, gxe.ExpectColumnValuesToBeInSet(column="copy_of",
                                                                                  value_set=[""])))
    tables = {"manifest": df, "class_counts": class_counts(df, info), "split_shares": split_shares(df, info)}
    checks = run_suite(tables, expectations, reports / "data_docs", df)
    failed = [c for c in checks if not c.success]
    summary = {"success": not failed, "on_bad_file": on_bad_file, "n_new": int(df["new"].sum()),
               "quarantined": quarantined, "checks": [asdict(c) for c in checks]}
    reports.mkdir(parents=True, exist_ok=True)
    (reports / "summary.json").write_text(json.dumps(summary, indent=2, default=str) + "\n")
    if failed:
        raise ValidationFailed("add-photos refused, no data version made: "
                               + "; ".join(describe_failure(c) for c in failed)
                               + f" (details: {reports / 'summary.json'})")
    return df[df["new"]], quarantined


def append_csv(path: Path, header: list[str], rows: list[dict[str, Any]]) -> None:
    new_file = not path.is_file() or not path.read_text().strip()
    with open(path, "a", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=header, extrasaction="ignore")
        if new_file:
            writer.writeheader()
        writer.writerows(rows)


def add_to_additions(accepted: pd.DataFrame, additions: Path) -> None:
    """Copy the photos into the additions folder and append their images.csv and splits.csv rows."""
    (additions / "images").mkdir(parents=True, exist_ok=True)
    for rid, src in zip(accepted["id"], accepted["abspath"], strict=True):
        shutil.copyfile(src, additions / "images" / f"{rid}{Path(src).suffix.lower() or '.jpg'}")
    rows = [{"image": r.id, "sender_id": int(r.sender_id), "label": r.label, "kids": bool(r.kids),
             "split": r.split} for r in accepted.itertuples()]
    append_csv(additions / "images.csv", ["image", "sender_id", "label", "kids"], rows)
    append_csv(additions / SPLITS_FILE, ["image", "split"], rows)


def quarantine_files(quarantined: list[dict[str, str]], folder: Path) -> None:
    """Copies of the quarantined files and quarantine.csv (id, path, reason) for a person to look at."""
    folder.mkdir(parents=True, exist_ok=True)
    for item in quarantined:
        src = Path(item["path"])
        if src.is_file():
            shutil.copyfile(src, folder / src.name)
    pd.DataFrame(quarantined, columns=["id", "path", "reason"]).to_csv(folder / "quarantine.csv", index=False)


def add_photos(folder: Path, root: Path, params: dict[str, Any], validate_params: dict[str, Any],
               *, product: str, subset_dir: Path, additions: Path, reports: Path) -> IntakeResult:
    """Check FOLDER's photos, add them to the additions folder and record a new data version (see the
    module docstring). `root` is the project's git + DVC repository; the other paths lie inside it;
    `subset_dir` is the product subset `product` (subset.product), the one a run trains on."""
    folder, root = Path(folder).resolve(), Path(root).resolve()
    info = read_dataset(subset_dir)
    if info.get("split_policy") != "grouped":
        raise DataError(f"add-photos: subset '{product}' ({subset_dir}) keeps a {info.get('split_policy')} "
                        "split, which new photos must not change; set subset.product to a subset split by "
                        "sender (split.policy: grouped, e.g. catalog)")
    current = read_manifest(subset_dir)
    new = assign_splits(new_rows(folder), current, info["expected_shares"])
    mode = str(params.get("on_bad_file") or validate_params.get("on_bad_file") or "quarantine")
    accepted, quarantined = check_photos(new, info, current, reports, mode, validate_params)
    if accepted.empty:
        raise ValidationFailed(f"add-photos refused: no photo of {folder} is usable (quarantined: "
                               + "; ".join(f"{q['path']}: {q['reason']}" for q in quarantined) + ")")
    if quarantined:
        quarantine_files(quarantined, reports / "quarantine")
    add_to_additions(accepted, additions)
    version: DataVersion | None = None
    if params.get("record", True):
        message = str(params.get("message") or "data: add {n} photos from {folder}").format(
            n=len(accepted), folder=folder.name)
        version = record_version(root, str(additions.resolve().relative_to(root)), message, product,
                                 repro=str(params.get("repro") or "subset"),
                                 push=bool(params.get("push", True)), commit=bool(params.get("commit", True)))
    return IntakeResult(added=sorted(accepted["id"]),
                        splits={s: int((accepted["split"] == s).sum()) for s in SPLITS},
                        quarantined=quarantined, additions=str(additions),
                        report=str(reports / "summary.json"),
                        version=None if version is None else version.to_dict())
