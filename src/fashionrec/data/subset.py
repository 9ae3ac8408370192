"""Stage `subset`: choose classes, drop unusable labels, cap per class, split, write the photos as shards.

Several named subsets live side by side (`subset.subsets` in params, `data/subset/<name>/`), each a
self-contained folder (the photos in tar shards, `shards/<split>-NNNNNN.tar`, and a manifest whose paths
are member references into them; see `data/shards.py`) so DVC versions exactly what a model was trained
or measured on, as a few hundred files rather than one per photo. Split policies:
- `published`: the source's `top10-splits.csv`; its label wins over `images.csv` where they disagree.
- `grouped`: seeded and stratified by category and attributes (kids), grouped by `sender_id` so that one
  person's photos never straddle two splits (no near-duplicate leakage between train and test). With
  `split.keep_in_test` the test images of a published split file, and every photo of their senders, go
  to test: a subset built this way never trains on a benchmark test image. With `split.pinned_file` (the
  additions' `splits.csv`, written by `fashionrec add-photos`) the listed photos keep the split recorded
  when they were added and stay out of the balancing, so adding photos never moves an existing one.
With `label_review` (a reviewed list of label fixes, `data/reviewed.py`) the listed train photos are
dropped or relabelled after the split; dataset.json lists every applied row.
What a subset leaves out (junk labels, categories under `min_per_class`, ...) is listed with its reason
in `dropped.json` and `dropped.md` beside the manifest.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from tqdm import tqdm

from fashionrec.core.config import DEFAULT_SEED
from fashionrec.core.errors import DataError
from fashionrec.data.manifest import (
    COLUMNS,
    MANIFEST,
    SPLITS,
    ManifestWriter,
    category_of,
    dataset_info,
    labels_of,
    manifest_file,
    write_dataset,
)
from fashionrec.data.reviewed import apply_review
from fashionrec.data.shards import SHARDS, ShardWriter

POLICIES = ("published", "grouped")
SHARD_SIZE = 1000  # photos per shard (subset.shard_size)
WRITE_ROWS = 10_000  # manifest rows converted and written at a time
DROPPED = "dropped"  # dropped.json / dropped.md
# why a photo of the source is not in a subset (the keys of dropped.json's `by_reason`)
JUNK = "junk label (subset.drop_labels)"
UNPUBLISHED = "not in the published split file"
NOT_LISTED = "category not in subset.classes"
UNDER_MIN = "category under subset.min_per_class"
CAPPED = "over subset.max_per_class (seeded sample)"
REVIEWED = "dropped by the reviewed list (subset.label_review)"
log = logging.getLogger(__name__)


@dataclass
class SubsetResult:
    out: str
    policy: str
    classes: list[str]
    n_images: int
    counts: dict[str, int]
    name: str | None = None
    message: str = ""
    dropped_labels: dict[str, int] = field(default_factory=dict)
    dropped_other_classes: int = 0
    under_minimum: dict[str, int] = field(default_factory=dict)
    capped: int = 0
    relabelled: int = 0
    not_in_published: int = 0
    kept_in_test: int = 0
    pinned: int = 0
    kids: dict[str, int] = field(default_factory=dict)
    published_missing: list[str] = field(default_factory=list)
    missing_files: list[str] = field(default_factory=list)
    label_review: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def subset_names(section: dict[str, Any]) -> list[str]:
    """The subsets params define (`subset.subsets`), in params order."""
    names = list(section.get("subsets") or {})
    if not names:
        raise DataError("subset.subsets: no subsets defined (e.g. benchmark, catalog)")
    return names


def subset_params(section: dict[str, Any], name: str) -> dict[str, Any]:
    """One subset's flat parameters: `subset.subsets.<name>` over the keys its siblings share."""
    subsets = section.get("subsets") or {}
    if name not in subsets:
        raise DataError(f"subset.subsets: no subset named '{name}' (defined: {sorted(subsets)})")
    shared = {k: v for k, v in section.items() if k not in ("subsets", "product")}
    own = subsets[name] or {}
    if not isinstance(own, dict):
        raise DataError(f"subset.subsets.{name}: must be a mapping of subset keys, got {own!r}")
    merged = {**shared, **own, "name": name}
    if isinstance(shared.get("split"), dict) and isinstance(own.get("split"), dict):
        merged["split"] = {**shared["split"], **own["split"]}
    return merged


def subset(manifest: Path, out: Path, params: dict[str, Any]) -> SubsetResult:
    """Write `out/manifest.parquet` (with `split`, `shard`, `key`), `out/dataset.json`, `out/shards/` and the
    drop report.

    `params` are one subset's flat parameters (`subset_params(section, name)`).
    """
    split_params = params.get("split") or {}
    policy = split_params.get("policy", "published")
    if policy not in POLICIES:
        raise DataError(f"subset.split.policy: '{policy}' is not one of {list(POLICIES)}")
    seed = int(params.get("seed", DEFAULT_SEED))
    name = params.get("name")
    attributes = list(params.get("attributes") or [])
    source_dir = Path(manifest).parent / "source"
    df = read_for_subset(manifest)
    for attr in attributes:
        if attr not in df.columns or df[attr].dtype != bool:
            raise DataError(f"subset.attributes: '{attr}' is not a boolean manifest column")
    notes: dict[str, Any] = {}
    gone: list[pd.DataFrame] = []

    def drop(mask: pd.Series, reason: str) -> pd.DataFrame:
        gone.append(df[mask].assign(reason=reason))
        return df[~mask]

    junk = set(params.get("drop_labels") or [])
    dropped = df["label"].isin(junk)
    notes["dropped_labels"] = {str(k): int(v) for k, v in df.loc[dropped, "label"].value_counts().items()}
    df = drop(dropped, JUNK)

    keep_in_test: set[str] = set()
    if policy == "published":
        n_before = len(df)
        pub = read_published(source_dir / split_params.get("published_file", "top10-splits.csv"))
        gone.append(df[~df["id"].isin(pub["image"])].assign(reason=UNPUBLISHED))
        df, expected = apply_published(df, pub, notes)
        notes["not_in_published"] = n_before - len(df)
    else:
        expected = check_shares(split_params.get("shares") or {})
        if split_params.get("keep_in_test"):
            if not expected["test"]:
                raise DataError("subset.split.keep_in_test: needs a test share above 0 in "
                                "subset.split.shares")
            pub = read_published(source_dir / split_params["keep_in_test"])
            df = relabel(df, pub, notes)
            keep_in_test = set(pub.loc[pub["split"] == "test", "image"])

    listed = params.get("classes")
    classes = list(listed or sorted(df["category"].unique()))
    keep = df["category"].isin(classes)
    notes["dropped_other_classes"] = int((~keep).sum())
    df = drop(~keep, NOT_LISTED)
    empty = [c for c in classes if not (df["category"] == c).any()]
    if empty and listed:
        raise DataError(f"subset.classes: no images for {empty} (after dropping {sorted(junk)})")
    minimum = params.get("min_per_class")
    under: dict[str, int] = {}
    if minimum is not None:
        sizes = df["category"].value_counts()
        under = {c: int(sizes.get(c, 0)) for c in classes if sizes.get(c, 0) < int(minimum)}
        df = drop(df["category"].isin(under), UNDER_MIN)
        classes = [c for c in classes if c not in under]
    notes["under_minimum"] = under
    if not classes:
        raise DataError(f"subset '{name}': no category left with >= subset.min_per_class={minimum} photos "
                        f"(under it: {under})")
    if policy == "published":
        expected = shares_of(df)

    cap = params.get("max_per_class")
    if cap is not None:
        before = df
        df = cap_per_class(df, int(cap), seed)
        notes["capped"] = len(before) - len(df)
        gone.append(before[~before["id"].isin(df["id"])].assign(reason=CAPPED))
    if policy == "grouped":
        strata = df["category"].copy()
        for attr in attributes:  # kids and adults photos of a category spread over the splits alike
            strata = strata + np.where(df[attr], f"/{attr}", "")
        forced = {s: "test" for s in df.loc[df["id"].isin(keep_in_test), "sender_id"].unique()}
        pinned_file = split_params.get("pinned_file")
        pinned = read_pinned(source_dir / pinned_file) if pinned_file else {}
        df = df.assign(split=grouped_split(df, expected, seed, strata=strata, forced=forced, pinned=pinned))
        notes["pinned"] = int(df["id"].isin(pinned).sum())
        notes["kept_in_test"] = int(df["id"].isin(keep_in_test).sum())
        if (df["id"].isin(keep_in_test) & (df["split"] != "test")).any():  # by construction never
            raise DataError("subset.split.keep_in_test: a published test image left the test split")

    review = params.get("label_review")
    if review:   # after the split: a reviewed row never moves another photo between splits
        n_before = len(df)
        df, reviewed_out, notes["label_review"] = apply_review(df, Path(review), classes, name)
        # the split was balanced before the list dropped train photos: validate checks the split, not the list
        expected = {s: (share * n_before - (len(reviewed_out) if s == "train" else 0)) / max(len(df), 1)
                    for s, share in expected.items()}
        gone.append(reviewed_out.assign(reason=REVIEWED))
        log.info("subset %s: reviewed list %s: %d dropped, %d relabelled in train", name or out, review,
                 notes["label_review"]["dropped"], notes["label_review"]["relabelled"])

    df = df.assign(labels=[labels_of(c, dict(zip(attributes, map(bool, flags), strict=True)))
                           for c, *flags in df[["category", *attributes]].itertuples(index=False)])
    df = df.sort_values(["split", "category", "id"]).reset_index(drop=True)
    out.mkdir(parents=True, exist_ok=True)
    df, missing = write_shards(df, out, int(params.get("shard_size") or SHARD_SIZE))
    with ManifestWriter(out / MANIFEST, optional=("split", "shard", "key")) as writer:
        for start in range(0, len(df), WRITE_ROWS):   # plain strings a slice at a time, not all at once
            writer.write(df.iloc[start:start + WRITE_ROWS])
    extra = {"subset": name} if name else {}
    if notes.get("label_review"):
        extra["label_review"] = notes["label_review"]
    write_dataset(dataset_info(df, classes, attributes, **extra, split_policy=policy, seed=seed,
                               expected_shares=expected,
                               min_per_class=None if minimum is None else int(minimum)), out)
    report = drop_report(pd.concat(gone, ignore_index=True) if gone else df.iloc[:0].assign(reason=""),
                         df, name, minimum)
    write_drop_report(report, out)
    message = drop_message(report)
    if message:
        log.warning("subset %s: %s", name or out, message)
    kids = {s: int(df.loc[df["split"] == s, "kids"].sum()) for s in SPLITS}
    return SubsetResult(out=str(out), policy=policy, classes=classes, n_images=len(df), name=name,
                        message=message, counts={s: int((df["split"] == s).sum()) for s in SPLITS},
                        kids=kids, missing_files=missing, **notes)


def read_published(splits_csv: Path, columns: tuple[str, ...] = ("image", "label", "split")) -> pd.DataFrame:
    """A published split file (`image, label, split`), checked, one row per image."""
    if not splits_csv.is_file():
        raise DataError(f"{splits_csv}: published split file not found (policy 'published' or "
                        "split.keep_in_test; use subset.split.policy=grouped without keep_in_test "
                        "for a source without one)")
    pub = pd.read_csv(splits_csv, dtype=str, keep_default_na=False)
    missing_cols = [c for c in columns if c not in pub.columns]
    if missing_cols:
        raise DataError(f"{splits_csv}: missing columns {missing_cols}")
    bad = pub[~pub["split"].isin(SPLITS)]
    if len(bad):
        line, value = int(bad.index[0]) + 2, bad["split"].iloc[0]
        raise DataError(f"{splits_csv}: line {line}: split '{value}' is not one of {list(SPLITS)}")
    return pub.drop_duplicates("image")


def read_pinned(splits_csv: Path) -> dict[str, str]:
    """image id -> split of the pinned split file (`image, split`); none when the source has no such file
    (no photo was ever added)."""
    if not splits_csv.is_file():
        return {}
    pinned = read_published(splits_csv, ("image", "split"))
    return dict(zip(pinned["image"], pinned["split"], strict=True))


def relabel(df: pd.DataFrame, pub: pd.DataFrame, notes: dict[str, Any]) -> pd.DataFrame:
    """The published file's category wins over images.csv for the images it lists (the upstream fix)."""
    fixed = df["id"].map(dict(zip(pub["image"], pub["label"].map(category_of), strict=True)))
    changed = fixed.notna() & (fixed != df["category"])
    notes["relabelled"] = int(changed.sum())
    return df.assign(category=fixed.where(fixed.notna(), df["category"]))


def apply_published(df: pd.DataFrame, pub: pd.DataFrame, notes: dict[str, Any]) -> tuple[pd.DataFrame, dict]:
    """Keep the images of the published split file; take its label and split."""
    merged = df.merge(pub.rename(columns={"image": "id", "label": "published_label"}), on="id", how="inner")
    published_category = merged["published_label"].map(category_of)
    notes["relabelled"] = int((published_category != merged["category"]).sum())
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


def grouped_split(df: pd.DataFrame, shares: dict[str, float], seed: int, *, strata: pd.Series | None = None,
                  forced: dict[Any, str] | None = None, pinned: dict[str, str] | None = None) -> pd.Series:
    """Assign whole sender groups to splits greedily, keeping each split's stratum counts near its target.

    Strata are the categories unless given (e.g. category x kids). `forced` senders go to their split
    first; the others go largest first (seeded order among equals), each to the split where it least
    raises the chi-square distance sum((filled - target)^2 / target) over (split, stratum), so every
    split approaches its share of every stratum. `pinned` photos (id -> split) take no part in that: a
    pinned photo of a balanced sender follows its sender, a sender with only pinned photos takes the split
    of its first one (by id); the balanced senders' splits are those of the subset without the pinned photos.
    """
    if not pinned:
        return df["sender_id"].map(balance_senders(df, shares, seed, strata=strata, forced=forced))
    is_pinned = df["id"].isin(list(pinned))
    assigned = balance_senders(df[~is_pinned], shares, seed,
                               strata=None if strata is None else strata[~is_pinned], forced=forced)
    for rid, sender in sorted(zip(df.loc[is_pinned, "id"], df.loc[is_pinned, "sender_id"], strict=True)):
        assigned.setdefault(sender, pinned[rid])
    return df["sender_id"].map(assigned)


def balance_senders(df: pd.DataFrame, shares: dict[str, float], seed: int, *, strata: pd.Series | None,
                    forced: dict[Any, str] | None) -> dict[Any, str]:
    """sender -> split by the greedy chi-square rule of `grouped_split`."""
    if df.empty:
        return {}
    counts = pd.crosstab(df["sender_id"], df["category"] if strata is None else strata)
    target = np.outer([shares[s] for s in SPLITS], counts.sum(axis=0).to_numpy(dtype=float))
    filled = np.zeros_like(target)
    assigned: dict[Any, str] = {}
    for sender, split in (forced or {}).items():
        if sender not in counts.index:
            continue
        filled[SPLITS.index(split)] += counts.loc[sender].to_numpy(dtype=float)
        assigned[sender] = split
    rest = counts.index.to_numpy()[~counts.index.isin(list(assigned))]
    rng = np.random.default_rng(seed)
    order = rest[rng.permutation(len(rest))]
    sizes = counts.loc[order].sum(axis=1).to_numpy()
    order = order[np.argsort(-sizes, kind="stable")]
    for sender in order:
        c = counts.loc[sender].to_numpy(dtype=float)
        cost = ((2 * c * (filled - target) + c**2) / np.maximum(target, 1e-9)).sum(axis=1)
        cost[[shares[s] == 0 for s in SPLITS]] = np.inf
        best = int(np.argmin(cost))
        filled[best] += c
        assigned[sender] = SPLITS[best]
    return assigned


def drop_report(gone: pd.DataFrame, kept: pd.DataFrame, name: str | None, minimum: Any) -> dict[str, Any]:
    """What left the subset and why: counts per reason and category (kids apart), and every photo."""
    by_reason = {}
    for reason, rows in gone.groupby("reason", sort=False):
        by_reason[str(reason)] = {
            "count": len(rows), "kids": int(rows["kids"].sum()),
            "by_label": {str(k): int(v) for k, v in rows["label"].value_counts().items()},
            "by_category": {str(k): int(v) for k, v in rows["category"].value_counts().items()}}
    return {"subset": name, "min_per_class": None if minimum is None else int(minimum),
            "n_kept": len(kept), "n_dropped": len(gone), "kids_kept": int(kept["kids"].sum()),
            "kids_dropped": int(gone["kids"].sum()), "by_reason": by_reason,
            "photos": [{"id": r.id, "label": r.label, "category": r.category, "kids": bool(r.kids),
                        "sender_id": int(r.sender_id), "reason": r.reason}
                       for r in gone.sort_values(["reason", "category", "id"]).itertuples()]}


def drop_message(report: dict[str, Any]) -> str:
    """One line for the log: what was dropped, naming the categories under the minimum."""
    parts = []
    for reason, info in report["by_reason"].items():
        key = "by_category" if reason == UNDER_MIN else "by_label"
        listed = ", ".join(f"{k} ({v})" for k, v in info[key].items())
        if reason == UNDER_MIN:
            reason = f"categories under min_per_class={report['min_per_class']}"
        parts.append(f"{reason}: {listed}" if len(info[key]) <= 12 else f"{reason}: {info['count']} photos")
    return "; ".join(parts)


def write_drop_report(report: dict[str, Any], out: Path) -> None:
    """`dropped.json` (every photo, with its reason) and `dropped.md` (the table people read)."""
    (out / f"{DROPPED}.json").write_text(json.dumps(report, indent=2) + "\n")
    lines = [f"# Photos left out of subset `{report['subset']}`", "",
             f"Kept {report['n_kept']} photos ({report['kids_kept']} kids); dropped {report['n_dropped']} "
             f"({report['kids_dropped']} kids).", "",
             "| reason | photos | kids | labels |", "|---|---|---|---|"]
    for reason, info in report["by_reason"].items():
        labels = ", ".join(f"{k} {v}" for k, v in info["by_label"].items())
        lines.append(f"| {reason} | {info['count']} | {info['kids']} | {labels} |")
    (out / f"{DROPPED}.md").write_text("\n".join(lines) + "\n")


def write_shards(df: pd.DataFrame, out: Path, shard_size: int) -> tuple[pd.DataFrame, list[str]]:
    """Write each photo (and its JSON record) into `out/shards/<split>-NNNNNN.tar`, `shard_size` a shard, in
    manifest order, one photo in memory at a time; `path` becomes the member reference and `shard`/`key`
    say where it lies. A vanished source file keeps its row (path `missing/<id>`, validate names it)."""
    for old in (out / SHARDS, out / "images"):  # images/: the layout before shards
        shutil.rmtree(old, ignore_errors=True)
    paths, shards, keys, missing = [], [], [], []
    base = str(df.attrs.get("base") or "/")
    records = df[["id", "path", "label", "category", "labels", "kids", "sender_id", "split", "sha256"]]
    with ShardWriter(out, shard_size) as writer:
        for row in tqdm(records.itertuples(index=False), total=len(df), desc="subset", unit="img",
                        mininterval=1.0):
            source = os.path.normpath(os.path.join(base, row.path))   # absolute in data/manifest
            suffix = Path(source).suffix.lower() or ".jpg"
            try:
                data = Path(source).read_bytes()
            except OSError:
                missing.append(row.id)
                paths.append(f"missing/{row.id}{suffix}")
                shards.append(None)
                keys.append(row.id)
                continue
            meta = {"id": row.id, "label": row.label, "category": row.category, "labels": list(row.labels),
                    "kids": bool(row.kids), "sender_id": int(row.sender_id), "split": row.split,
                    "sha256": row.sha256}
            member = writer.add(str(row.split), row.id, suffix, data, meta)
            paths.append(member.ref)
            shards.append(member.shard)
            keys.append(member.key)
    arrow = "string[pyarrow]"
    return df.assign(path=pd.array(paths, dtype=arrow), shard=pd.array(shards, dtype=arrow),
                     key=pd.array(keys, dtype=arrow)), missing


def read_for_subset(manifest: Path) -> pd.DataFrame:
    """The source manifest without its `labels` (subset derives them) and with Arrow-backed strings: the
    subset holds every row's metadata at once (its split balances senders against each other), so each
    row should cost bytes, not the hundreds a Python string or list costs. `attrs["base"]` is the folder
    its relative paths start from."""
    path = manifest_file(manifest)
    try:
        names = pq.read_schema(path).names
        missing = [c for c in COLUMNS if c not in names]
        if missing:
            raise DataError(f"{path}: manifest lacks columns {missing}")
        table = pq.read_table(path, columns=[c for c in COLUMNS if c != "labels"])
        df = table.to_pandas(types_mapper={pa.string(): pd.StringDtype("pyarrow")}.get)
    except DataError:
        raise
    except Exception as exc:
        raise DataError(f"{path}: cannot read manifest ({type(exc).__name__}: {exc})") from exc
    df.attrs["base"] = str(path.parent.resolve())
    return df
