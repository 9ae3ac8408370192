"""The reviewed list of label fixes (`subset.label_review`): a CSV people write after looking at the review
sheet (`fashionrec label-review`, reports/labels/), versioned with the code (git, a dep of the subset stage).

One row per photo: `image_id, action, label, note`; `action` is `drop` (the photo leaves the subset) or
`relabel` (its category becomes `label`, one of the subset's categories); `note` says why (free text,
optional). The list changes the train split only: the validation and test splits stay the crowd's labels, so
a model trained on a cleaned train split is measured on exactly the photos and labels the uncleaned one was.
It is applied after the split, so adding or removing a row never moves another photo between splits.

Nothing is applied silently: a row naming a photo outside the subset, a photo of another split, an unknown
action or category, a relabel to the label the photo already has, or a photo listed twice fails the stage
with the row's line number; every applied row is listed in dataset.json (`label_review`), and dropped
photos in dropped.json with their reason.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from fashionrec.core.errors import DataError
from fashionrec.data.manifest import category_of, id_hashes

COLUMNS = ("image_id", "action", "label", "note")
ACTIONS = ("drop", "relabel")
SPLIT = "train"   # the only split a reviewed list changes


@dataclass(frozen=True)
class ReviewRow:
    line: int          # line in the CSV (the header is line 1)
    image_id: str
    action: str        # drop | relabel
    label: str         # the new category (relabel); "" for drop
    note: str


def write_empty_review(path: Path) -> Path:
    """An empty reviewed list (the header only): what a project starts with, so the subset stage's
    dependency on it exists before anyone has reviewed a label."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(",".join(COLUMNS) + "\n")
    return path


def read_review(path: Path) -> list[ReviewRow]:
    """The rows of a reviewed list, each checked on its own (columns, action, label present or absent);
    checks against a subset are `apply_review`'s. Raises DataError naming the file and line."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: reviewed list not found (subset.label_review)")
    try:
        table = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: not a readable CSV ({type(exc).__name__}: {exc})") from exc
    missing = [c for c in COLUMNS[:3] if c not in table.columns]
    if missing:
        raise DataError(f"{path}: missing columns {missing} (need {list(COLUMNS)}; note is optional)")
    unknown = [c for c in table.columns if c not in COLUMNS]
    if unknown:
        raise DataError(f"{path}: unknown columns {unknown} (allowed: {list(COLUMNS)})")
    rows, seen = [], {}
    for i, rec in enumerate(table.to_dict("records")):
        line = i + 2
        image_id, action = rec["image_id"].strip(), rec["action"].strip().lower()
        label = category_of(rec["label"]) if rec["label"].strip() else ""
        where = f"{path}: line {line}"
        if not image_id:
            raise DataError(f"{where}: empty image_id")
        if action not in ACTIONS:
            raise DataError(f"{where}: action '{rec['action']}' is not one of {list(ACTIONS)}")
        if action == "relabel" and not label:
            raise DataError(f"{where}: relabel of '{image_id}' names no label")
        if action == "drop" and label:
            raise DataError(f"{where}: drop of '{image_id}' names a label ('{rec['label']}'); a drop row "
                            "leaves label empty (relabel to change it)")
        if image_id in seen:
            raise DataError(f"{where}: image '{image_id}' is already listed on line {seen[image_id]}")
        seen[image_id] = line
        rows.append(ReviewRow(line, image_id, action, label, str(rec.get("note", "")).strip()))
    return rows


def apply_review(df: pd.DataFrame, path: Path, classes: list[str],
                 subset_name: str | None = None) -> tuple[pd.DataFrame, pd.DataFrame, dict[str, Any]]:
    """Apply the reviewed list at `path` to the train split of a split subset `df` (columns id or h, split,
    category, ...): (kept rows with relabelled categories, dropped rows, the record for dataset.json).

    `classes` are the subset's categories: a relabel must name one of them.
    """
    path = Path(path)
    rows = read_review(path)
    name = f"subset '{subset_name}'" if subset_name else "the subset"
    # rows are found by id, or in the subset's compact table by the id's 64-bit hash (no id strings held)
    by_hash = "id" not in df.columns
    index = pd.Index(df["h"] if by_hash else df["id"].astype(str))
    if not index.is_unique:
        raise DataError(f"{name}: duplicate image ids; cannot apply {path}")
    position = {key: i for i, key in enumerate(index)}
    wanted = (id_hashes(np.asarray([r.image_id for r in rows], dtype=object)) if by_hash
              else [r.image_id for r in rows])
    split = df["split"].astype(str).to_numpy()
    category = df["category"].astype(str).to_numpy()
    drop, new_category, applied = [], {}, []
    for row, key in zip(rows, wanted, strict=True):
        where = f"{path}: line {row.line}"
        at = position.get(key)
        if at is None:
            raise DataError(f"{where}: image '{row.image_id}' is not in {name} (an unknown id, or a photo "
                            "the subset leaves out: see its dropped.json)")
        if split[at] != SPLIT:
            raise DataError(f"{where}: image '{row.image_id}' is in the {split[at]} split; the reviewed list "
                            f"changes the {SPLIT} split only (validation and test keep the crowd's labels)")
        given = category[at]
        if row.action == "relabel":
            if row.label not in classes:
                raise DataError(f"{where}: label '{row.label}' is not a category of {name} ({classes})")
            if row.label == given:
                raise DataError(f"{where}: image '{row.image_id}' is already labelled '{given}'")
            new_category[at] = row.label
        else:
            drop.append(at)
        applied.append({"line": row.line, "image_id": row.image_id, "action": row.action, "from": given,
                        "to": row.label or None, "note": row.note})
    out = df.copy()
    if new_category:
        col = out.columns.get_loc("category")
        for at, label in new_category.items():
            out.iat[at, col] = label
    dropped_mask = pd.Series(False, index=out.index)
    dropped_mask.iloc[drop] = True
    record = {"file": path.name, "sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
              "split": SPLIT, "rows": len(rows), "dropped": len(drop), "relabelled": len(new_category),
              "applied": applied}
    return out[~dropped_mask], out[dropped_mask], record
