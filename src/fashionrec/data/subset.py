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
from contextlib import ExitStack
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
    OPTIONAL,
    SPLITS,
    ManifestWriter,
    category_of,
    dataset_info_of,
    id_hashes,
    labels_of,
    manifest_file,
    write_dataset,
)
from fashionrec.data.reviewed import apply_review
from fashionrec.data.shards import SHARDS, ShardWriter

POLICIES = ("published", "grouped")
CODE = np.int16  # label and category codes of the compact table
TEST = SPLITS.index("test")
SHARD_SIZE = 1000  # photos per shard (subset.shard_size)
WRITE_ROWS = 10_000  # manifest rows converted and written at a time
READ_ROWS = 20_000  # rows of a published split file read at a time
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


def encode(values: Any, names: list[str] | tuple[str, ...], dtype: type = np.int16) -> np.ndarray:
    """Codes of `values` (each one of `names`, unique) into `names`."""
    codes = pd.Categorical(values, categories=list(names)).codes
    if (codes < 0).any():   # by construction never: every value comes from the vocabulary
        raise DataError(f"subset: value {np.asarray(values, dtype=object)[codes < 0][0]!r} is not one of "
                        f"{list(names)}")
    return codes.astype(dtype, copy=False)


@dataclass
class Vocabulary:
    """The few distinct labels and categories that the compact table's int16 `label` / `category` columns
    are codes into: the decisions compare and count codes, and strings are made only for the rows the drop
    report lists and for one written chunk at a time. Categories grow as a published file brings new ones."""

    labels: list[str]
    categories: list[str]

    def label_codes(self, names: Any) -> np.ndarray:
        """Codes of those of `names` that are labels (the others match no row)."""
        return np.asarray([self.labels.index(n) for n in names if n in self.labels], dtype=CODE)

    def category_codes(self, names: Any, add: bool = False) -> np.ndarray:
        """Codes of those of `names` that are categories (the others match no row); with `add`, of every
        one of them, a new name added to the vocabulary."""
        codes = []
        for n in names:
            if n not in self.categories:
                if not add:
                    continue
                if len(self.categories) > np.iinfo(CODE).max:
                    raise DataError(f"subset: more than {np.iinfo(CODE).max} distinct categories")
                self.categories.append(n)
            codes.append(self.categories.index(n))
        return np.asarray(codes, dtype=CODE)

    def category_counts(self, codes: np.ndarray) -> dict[str, int]:
        """Rows per category name (every name of the vocabulary, 0 included) of `codes`."""
        counts = np.bincount(codes, minlength=len(self.categories))
        return {name: int(n) for name, n in zip(self.categories, counts, strict=True)}

    def label_names(self, codes: np.ndarray) -> pd.Series:
        return pd.Series(np.asarray(self.labels, dtype=object)[codes])

    def category_array(self) -> np.ndarray:
        return np.asarray(self.categories, dtype=object)

    def named(self, df: pd.DataFrame) -> pd.DataFrame:
        """df with label and category names, and split names where it has int8 split codes."""
        named = df.assign(label=np.asarray(self.labels, dtype=object)[df["label"].to_numpy()],
                          category=self.category_array()[df["category"].to_numpy()])
        if "split" in named.columns and named["split"].dtype == np.int8:
            named["split"] = np.asarray(SPLITS, dtype=object)[named["split"].to_numpy()]
        return named

    def coded(self, df: pd.DataFrame) -> pd.DataFrame:
        """The inverse of `named`."""
        return df.assign(label=encode(df["label"], self.labels),
                         category=encode(df["category"], self.categories),
                         split=encode(df["split"], SPLITS, np.int8))


@dataclass
class Published:
    """A published split file as codes: the ids' hashes (sorted; an id's first row), its labels' categories
    (int16 codes into the subset's `Vocabulary`), the splits (int8 codes into SPLITS) and the images it
    lists that the manifest lacks."""

    h: np.ndarray
    category: np.ndarray
    split: np.ndarray
    missing: list[str]


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

    `params` are one subset's flat parameters (`subset_params(section, name)`). Every decision (drops,
    cap, split) is taken on a compact table of the manifest (`read_compact`: an id hash, label and category
    as int16 codes into a small vocabulary, the flags, the sender and, once decided, the split as an int8
    code: ~22 bytes a photo and no string of its own); then the manifest is streamed a chunk at a time into
    one shard writer per split, so memory does not grow with the photos' paths and hashes. Strings are
    made only for the rows the drop report lists. Within a split, photos keep the source manifest's order.
    """
    split_params = params.get("split") or {}
    policy = split_params.get("policy", "published")
    if policy not in POLICIES:
        raise DataError(f"subset.split.policy: '{policy}' is not one of {list(POLICIES)}")
    seed = int(params.get("seed", DEFAULT_SEED))
    name = params.get("name")
    attributes = list(params.get("attributes") or [])
    source_dir = Path(manifest).parent / "source"
    path = manifest_file(manifest)
    df, vocab = read_compact(path, attributes)
    n_rows = len(df)
    notes: dict[str, Any] = {}
    gone: list[pd.DataFrame] = []

    def drop(mask: np.ndarray, reason: str) -> pd.DataFrame:
        if not mask.any():   # nothing to drop: no copy of the compact table
            gone.append(df.iloc[:0].assign(reason=reason))
            return df
        gone.append(df[mask].assign(reason=reason))
        return df[~mask]

    junk = set(params.get("drop_labels") or [])
    dropped = np.isin(df["label"].to_numpy(), vocab.label_codes(junk))
    notes["dropped_labels"] = {str(k): int(v) for k, v in
                               vocab.label_names(df["label"].to_numpy()[dropped]).value_counts().items()}
    df = drop(dropped, JUNK)

    keep_in_test = np.empty(0, dtype=np.uint64)
    if policy == "published":
        n_before = len(df)
        pub = read_published_hashed(source_dir / split_params.get("published_file", "top10-splits.csv"),
                                    vocab, np.unique(df["h"].to_numpy()))
        found, at = lookup(pub.h, df["h"].to_numpy())
        gone.append(df[~found].assign(reason=UNPUBLISHED))
        df, expected = apply_published(df, pub, found, at, notes)
        del pub, found, at
        notes["not_in_published"] = n_before - len(df)
    else:
        expected = check_shares(split_params.get("shares") or {})
        if split_params.get("keep_in_test"):
            if not expected["test"]:
                raise DataError("subset.split.keep_in_test: needs a test share above 0 in "
                                "subset.split.shares")
            pub = read_published_hashed(source_dir / split_params["keep_in_test"], vocab)
            df = relabel(df, pub, notes)
            keep_in_test = pub.h[pub.split == TEST]   # pub.h is sorted
            del pub

    listed = params.get("classes")
    sizes = vocab.category_counts(df["category"].to_numpy())
    classes = list(listed or sorted(c for c, n in sizes.items() if n))
    keep = np.isin(df["category"].to_numpy(), vocab.category_codes(classes))
    notes["dropped_other_classes"] = int((~keep).sum())
    df = drop(~keep, NOT_LISTED)
    sizes = vocab.category_counts(df["category"].to_numpy())
    empty = [c for c in classes if not sizes.get(c, 0)]
    if empty and listed:
        raise DataError(f"subset.classes: no images for {empty} (after dropping {sorted(junk)})")
    minimum = params.get("min_per_class")
    under: dict[str, int] = {}
    if minimum is not None:
        under = {c: sizes.get(c, 0) for c in classes if sizes.get(c, 0) < int(minimum)}
        df = drop(np.isin(df["category"].to_numpy(), vocab.category_codes(under)), UNDER_MIN)
        classes = [c for c in classes if c not in under]
    notes["under_minimum"] = under
    if not classes:
        raise DataError(f"subset '{name}': no category left with >= subset.min_per_class={minimum} photos "
                        f"(under it: {under})")
    if policy == "published":
        expected = shares_of(df["split"].to_numpy())

    cap = params.get("max_per_class")
    if cap is not None:
        kept = np.sort(cap_per_class(df, int(cap), seed))
        capped = ~np.isin(df.index.to_numpy(), kept)
        notes["capped"] = int(capped.sum())
        df = drop(capped, CAPPED)
    if policy == "grouped":
        hashes = df["h"].to_numpy()
        in_test = lookup(keep_in_test, hashes)[0]
        forced = {s: "test" for s in df.loc[in_test, "sender_id"].unique()}
        pinned_file = split_params.get("pinned_file")
        pinned = read_pinned(source_dir / pinned_file) if pinned_file else {}
        pinned_ids = np.asarray(list(pinned), dtype=object)
        pinned_h = id_hashes(pinned_ids)
        order = np.argsort(pinned_h)
        pinned_ids, pinned_h = pinned_ids[order], pinned_h[order]
        is_pinned, at = lookup(pinned_h, hashes)
        strata, names = strata_of(df, attributes, vocab.categories)
        split = assign_splits(df["sender_id"].to_numpy(), strata, len(names), expected, seed, forced=forced,
                              pinned=is_pinned, pinned_ids=pinned_ids[at[is_pinned]], pinned_splits=pinned)
        del strata, hashes, at
        df = df.assign(split=split)
        notes["pinned"] = int(is_pinned.sum())
        notes["kept_in_test"] = int(in_test.sum())
        if (in_test & (split != TEST)).any():  # by construction never
            raise DataError("subset.split.keep_in_test: a published test image left the test split")
        del split, in_test, is_pinned

    review = params.get("label_review")
    if review:   # after the split: a reviewed row never moves another photo between splits
        n_before = len(df)
        named, reviewed_out, notes["label_review"] = apply_review(vocab.named(df), Path(review), classes,
                                                                  name)
        df, reviewed_out = vocab.coded(named), vocab.coded(reviewed_out)
        del named
        # the split was balanced before the list dropped train photos: validate checks the split, not the list
        expected = {s: (share * n_before - (len(reviewed_out) if s == "train" else 0)) / max(len(df), 1)
                    for s, share in expected.items()}
        gone.append(reviewed_out.assign(reason=REVIEWED))
        log.info("subset %s: reviewed list %s: %d dropped, %d relabelled in train", name or out, review,
                 notes["label_review"]["dropped"], notes["label_review"]["relabelled"])

    out.mkdir(parents=True, exist_ok=True)
    lost = pd.concat(gone) if gone else df.iloc[:0].assign(reason="")
    fate = np.full(n_rows, -1, dtype=np.int8)          # kept: its split's code; dropped: -1
    fate[df.index.to_numpy()] = df["split"].to_numpy()
    category = np.zeros(n_rows, dtype=CODE)            # as kept, or as it was when dropped: a code
    category[lost.index.to_numpy()] = lost["category"].to_numpy()
    category[df.index.to_numpy()] = df["category"].to_numpy()
    lost = vocab.named(lost.drop(columns="split", errors="ignore"))   # strings for the dropped rows only
    reasons = pd.Series(lost["reason"].to_numpy(), index=lost.index)
    missing, photos = write_shards(path, out, int(params.get("shard_size") or SHARD_SIZE), fate, category,
                                   vocab.category_array(), attributes, reasons)
    del fate, category
    extra = {"subset": name} if name else {}
    if notes.get("label_review"):
        extra["label_review"] = notes["label_review"]
    split_codes, category_codes = df["split"].to_numpy(), df["category"].to_numpy()
    counts = {s: vocab.category_counts(category_codes[split_codes == k]) for k, s in enumerate(SPLITS)}
    write_dataset(dataset_info_of(counts, len(df), classes, attributes, **extra, split_policy=policy,
                                  seed=seed, expected_shares=expected,
                                  min_per_class=None if minimum is None else int(minimum)), out)
    report = drop_report(lost, photos, df, name, minimum)
    write_drop_report(report, out)
    message = drop_message(report)
    if message:
        log.warning("subset %s: %s", name or out, message)
    kids = df["kids"].to_numpy()
    return SubsetResult(out=str(out), policy=policy, classes=classes, n_images=len(df), name=name,
                        message=message,
                        counts={s: int((split_codes == k).sum()) for k, s in enumerate(SPLITS)},
                        kids={s: int(kids[split_codes == k].sum()) for k, s in enumerate(SPLITS)},
                        missing_files=missing, **notes)


def lookup(keys: np.ndarray, hashes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(found, position) of each of `hashes` in `keys` (sorted, unique): a join at 8 bytes a row."""
    if not len(keys):
        return np.zeros(len(hashes), dtype=bool), np.zeros(len(hashes), dtype=np.int64)
    at = np.searchsorted(keys, hashes).clip(0, len(keys) - 1)
    return keys[at] == hashes, at


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


def read_published_hashed(splits_csv: Path, vocab: Vocabulary, known: np.ndarray | None = None) -> Published:
    """A published split file as codes (`Published`): read in chunks, each label's category coded in
    `vocab` (new categories added to it), so a million rows cost ~11 MB, not the hundreds their strings
    would. With `known` (sorted id hashes) `missing` lists the file's images not among them."""
    if not splits_csv.is_file():
        raise DataError(f"{splits_csv}: published split file not found (policy 'published' or "
                        "split.keep_in_test; use subset.split.policy=grouped without keep_in_test "
                        "for a source without one)")
    columns = ("image", "label", "split")
    hashes: list[np.ndarray] = []
    cat_codes: list[np.ndarray] = []   # per chunk: int16 codes into vocab.categories, int8 codes into SPLITS
    split_codes: list[np.ndarray] = []
    missing: list[str] = []
    try:
        header = pd.read_csv(splits_csv, dtype=str, keep_default_na=False, nrows=0)
        missing_cols = [c for c in columns if c not in header.columns]
        if missing_cols:
            raise DataError(f"{splits_csv}: missing columns {missing_cols}")
        with pd.read_csv(splits_csv, dtype=str, keep_default_na=False, usecols=list(columns),
                         chunksize=READ_ROWS) as reader:
            for chunk in reader:
                bad = chunk[~chunk["split"].isin(SPLITS)]
                if len(bad):
                    line, value = int(bad.index[0]) + 2, bad["split"].iloc[0]
                    raise DataError(f"{splits_csv}: line {line}: split '{value}' is not one of "
                                    f"{list(SPLITS)}")
                ids = chunk["image"].to_numpy(dtype=object)
                h = id_hashes(ids)
                if known is not None:
                    missing.extend(ids[~lookup(known, h)[0]])
                labels, at = np.unique(chunk["label"].to_numpy(dtype=object), return_inverse=True)
                code_of = vocab.category_codes([category_of(v) for v in labels], add=True)
                hashes.append(h)
                cat_codes.append(code_of[at.reshape(-1)])
                split_codes.append(encode(chunk["split"], SPLITS, np.int8))
                del chunk, ids, h, labels, at
    except DataError:
        raise
    except Exception as exc:
        raise DataError(f"{splits_csv}: cannot read CSV ({type(exc).__name__}: {exc})") from exc
    pa.default_memory_pool().release_unused()   # the chunks' strings, which Arrow's pool would keep
    if not hashes:
        return Published(np.empty(0, np.uint64), np.empty(0, CODE), np.empty(0, np.int8),
                         sorted(set(missing)))
    h = np.concatenate(hashes)
    del hashes
    _, first = np.unique(h, return_index=True)   # sorted by hash; an id's first row
    return Published(h[first], np.concatenate(cat_codes)[first], np.concatenate(split_codes)[first],
                     sorted(set(missing)))


def relabel(df: pd.DataFrame, pub: Published, notes: dict[str, Any]) -> pd.DataFrame:
    """The published file's category wins over images.csv for the images it lists (the upstream fix)."""
    found, at = lookup(pub.h, df["h"].to_numpy())
    given = df["category"].to_numpy()
    fixed = np.where(found, pub.category[at], given) if len(pub.h) else given
    notes["relabelled"] = int((fixed != given).sum())
    return df.assign(category=fixed.astype(CODE, copy=False))


def apply_published(df: pd.DataFrame, pub: Published, found: np.ndarray, at: np.ndarray,
                    notes: dict[str, Any]) -> tuple[pd.DataFrame, dict]:
    """Keep the images of the published split file (`found`, at `at` in it); take its label and split."""
    kept = df[found]
    category = pub.category[at[found]]
    notes["relabelled"] = int((category != kept["category"].to_numpy()).sum())
    notes["published_missing"] = list(pub.missing)
    split = pub.split[at[found]]
    kept = kept.assign(category=category, split=split)
    return kept, shares_of(split)


def check_shares(shares: dict[str, Any]) -> dict[str, float]:
    if set(shares) != set(SPLITS) or any(float(v) < 0 for v in shares.values()):
        raise DataError(f"subset.split.shares: need non-negative {list(SPLITS)}, got {shares}")
    total = sum(float(v) for v in shares.values())
    if not total:
        raise DataError("subset.split.shares: all zero")
    return {s: float(shares[s]) / total for s in SPLITS}


def shares_of(split: np.ndarray) -> dict[str, float]:
    """Each split's share of the rows (`split`: int8 codes into SPLITS)."""
    n = max(len(split), 1)
    return {s: round(float((split == k).sum()) / n, 6) for k, s in enumerate(SPLITS)}


def cap_per_class(df: pd.DataFrame, cap: int, seed: int) -> np.ndarray:
    """The index of at most `cap` rows per class, a seeded random choice (stable under row order: drawn from
    the rows ordered by id hash)."""
    if cap < 1:
        raise DataError(f"subset.max_per_class: must be >= 1 or null, got {cap}")
    shuffled = df[["h", "category"]].sort_values("h", kind="stable").sample(frac=1.0, random_state=seed)
    return shuffled.index.to_numpy()[shuffled.groupby("category").cumcount().to_numpy() < cap]


def strata_of(df: pd.DataFrame, attributes: list[str],
              categories: list[str] | None = None) -> tuple[np.ndarray, list[str]]:
    """Each row's stratum (category x attributes, e.g. `dress/kids`) as a code into the sorted names of the
    strata present: integers per row, not a string per row. `categories`: the names df's category codes
    point into (none: the column holds the names)."""
    codes, cats = pd.factorize(df["category"])
    names = [str(c) if categories is None else categories[c] for c in cats]
    for attr in attributes:
        codes = codes * 2 + df[attr].to_numpy(dtype=bool)
        names = [n + suffix for n in names for suffix in ("", f"/{attr}")]
    used = np.unique(codes)
    ordered = sorted(used, key=lambda c: names[c])
    remap = np.zeros(len(names), dtype=np.int64)
    remap[ordered] = np.arange(len(ordered))
    return remap[codes], [names[c] for c in ordered]


def grouped_split(df: pd.DataFrame, shares: dict[str, float], seed: int, *, strata: pd.Series | None = None,
                  forced: dict[Any, str] | None = None, pinned: dict[str, str] | None = None) -> pd.Series:
    """Each row's split by `assign_splits` (df: `sender_id`, `category`, and `id` where `pinned` is given).

    Strata are the categories unless given (e.g. category x kids).
    """
    if strata is None:
        codes, names = strata_of(df, [])
    else:
        codes, uniques = pd.factorize(strata, sort=True)
        names = [str(u) for u in uniques]
    pinned = pinned or {}
    is_pinned = df["id"].isin(list(pinned)).to_numpy() if pinned else np.zeros(len(df), dtype=bool)
    ids = df["id"].to_numpy(dtype=object)[is_pinned] if pinned else np.empty(0, dtype=object)
    split = assign_splits(df["sender_id"].to_numpy(), codes, len(names), shares, seed, forced=forced,
                          pinned=is_pinned, pinned_ids=ids, pinned_splits=pinned)
    return pd.Series(np.asarray(SPLITS, dtype=object)[split], index=df.index)


def assign_splits(senders: np.ndarray, strata: np.ndarray, n_strata: int, shares: dict[str, float], seed: int,
                  *, forced: dict[Any, str] | None = None, pinned: np.ndarray | None = None,
                  pinned_ids: np.ndarray | None = None, pinned_splits: dict[str, str] | None = None
                  ) -> np.ndarray:
    """Assign whole sender groups to splits greedily, keeping each split's stratum counts near its target;
    each row's split (int8 codes into SPLITS).

    `forced` senders go to their split first; the others go largest first (seeded order among equals),
    each to the split where it least raises the chi-square distance sum((filled - target)^2 / target) over
    (split, stratum), so every split approaches its share of every stratum. `pinned` rows (their ids
    `pinned_ids`, in row order, and id -> split `pinned_splits`) take no part in that: a pinned photo of a
    balanced sender follows its sender, a sender with only pinned photos takes the split of its first one
    (by id); the balanced senders' splits are those of the subset without the pinned photos. It works on
    a (sender x stratum) count table, one row per sender, whatever the number of photos.
    """
    pinned = np.zeros(len(senders), dtype=bool) if pinned is None else pinned
    free = ~pinned
    assigned = balance_senders(senders[free], strata[free], n_strata, shares, seed, forced=forced)
    if pinned.any():
        assert pinned_ids is not None and pinned_splits is not None
        for rid, sender in sorted(zip(pinned_ids, senders[pinned].tolist(), strict=True)):
            assigned.setdefault(sender, pinned_splits[rid])
    if not assigned:
        return np.empty(0, dtype=np.int8)
    keys = np.asarray(list(assigned))   # every sender has a split: each row's is found by its sender
    codes = encode(list(assigned.values()), SPLITS, np.int8)
    order = np.argsort(keys, kind="stable")
    return codes[order][np.searchsorted(keys[order], senders)]


def balance_senders(senders: np.ndarray, strata: np.ndarray, n_strata: int, shares: dict[str, float],
                    seed: int, *, forced: dict[Any, str] | None) -> dict[Any, str]:
    """sender -> split by the greedy chi-square rule of `assign_splits`, on the (sender x stratum) counts."""
    if not len(senders):
        return {}
    keys, row = np.unique(senders, return_inverse=True)   # sorted senders
    counts = np.bincount(row.reshape(-1) * n_strata + strata, minlength=len(keys) * n_strata)
    counts = counts.reshape(len(keys), n_strata)
    used = counts.sum(axis=0) > 0                             # strata of these rows only
    counts = counts[:, used]
    target = np.outer([shares[s] for s in SPLITS], counts.sum(axis=0).astype(float))
    filled = np.zeros_like(target)
    assigned: dict[Any, str] = {}
    is_forced = np.zeros(len(keys), dtype=bool)
    for sender, split in (forced or {}).items():
        at = int(np.searchsorted(keys, sender))
        if at >= len(keys) or keys[at] != sender:
            continue
        filled[SPLITS.index(split)] += counts[at].astype(float)
        assigned[keys[at].item()] = split
        is_forced[at] = True
    rest = np.flatnonzero(~is_forced)
    rng = np.random.default_rng(seed)
    order = rest[rng.permutation(len(rest))]
    sizes = counts[order].sum(axis=1)
    order = order[np.argsort(-sizes, kind="stable")]
    closed = np.array([shares[s] == 0 for s in SPLITS])
    scale = np.maximum(target, 1e-9)
    fcounts = counts.astype(float)
    for at in order:
        c = fcounts[at]
        cost = ((2 * c * (filled - target) + c**2) / scale).sum(axis=1)
        cost[closed] = np.inf
        best = int(np.argmin(cost))
        filled[best] += c
        assigned[keys[at].item()] = SPLITS[best]
    return assigned


def drop_report(gone: pd.DataFrame, photos: list[dict[str, Any]], kept: pd.DataFrame, name: str | None,
                minimum: Any) -> dict[str, Any]:
    """What left the subset and why: counts per reason and category (kids apart), and every photo (`photos`,
    as `write_shards` met them)."""
    by_reason = {}
    for reason, rows in gone.groupby("reason", sort=False):
        labels, categories = rows["label"].astype(object), rows["category"].astype(object)
        by_reason[str(reason)] = {
            "count": len(rows), "kids": int(rows["kids"].sum()),
            "by_label": {str(k): int(v) for k, v in labels.value_counts().items()},
            "by_category": {str(k): int(v) for k, v in categories.value_counts().items()}}
    return {"subset": name, "min_per_class": None if minimum is None else int(minimum),
            "n_kept": len(kept), "n_dropped": len(gone), "kids_kept": int(kept["kids"].sum()),
            "kids_dropped": int(gone["kids"].sum()), "by_reason": by_reason,
            "photos": sorted(photos, key=lambda p: (p["reason"], p["category"], p["id"]))}


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


def write_shards(manifest: Path, out: Path, shard_size: int, fate: np.ndarray, category: np.ndarray,
                 categories: np.ndarray, attributes: list[str],
                 reasons: pd.Series) -> tuple[list[str], list[dict[str, Any]]]:
    """Stream the source manifest a chunk at a time: each kept photo (`fate`: its split's code, -1 for a
    dropped one; `category` as decided, a code into `categories`) and its JSON record go into
    `out/shards/<split>-NNNNNN.tar`, `shard_size` a shard, one writer per split, one photo in memory at a
    time; its manifest row (`path` the member reference, `shard`/`key` where it lies) goes to that split's
    part, and the parts make `out/manifest.parquet` (train, validation, test). A vanished source file keeps
    its row (path `missing/<id>`, validate names it). Returns the missing ids and the dropped photos (for the
    report)."""
    for old in (out / SHARDS, out / "images"):  # images/: the layout before shards
        shutil.rmtree(old, ignore_errors=True)
    base = str(manifest.parent.resolve())
    parts = {s: out / f".{MANIFEST}.{s}.tmp" for s in SPLITS}
    missing: list[str] = []
    photos: list[dict[str, Any]] = []
    reader = pq.ParquetFile(manifest, pre_buffer=False)
    columns = [c for c in COLUMNS if c != "labels"]
    start = 0
    with ExitStack() as stack:
        writers = [stack.enter_context(ShardWriter(out, shard_size)) for _ in SPLITS]
        tables = [stack.enter_context(ManifestWriter(parts[s], optional=OPTIONAL)) for s in SPLITS]
        bar = stack.enter_context(tqdm(total=len(fate), desc="subset", unit="img", mininterval=1.0))
        for batch in reader.iter_batches(batch_size=WRITE_ROWS, columns=columns):
            chunk = batch.to_pandas()
            stop = start + len(chunk)
            fates, cats = fate[start:stop], categories[category[start:stop]]   # names of this chunk only
            for i in np.flatnonzero(fates < 0):
                row = chunk.iloc[i]
                photos.append({"id": row["id"], "label": row["label"], "category": cats[i],
                               "kids": bool(row["kids"]), "sender_id": int(row["sender_id"]),
                               "reason": reasons[start + i]})
            for k, split in enumerate(SPLITS):
                rows = chunk[fates == k].assign(category=cats[fates == k], split=split)
                if rows.empty:
                    continue
                flags = rows[["category", *attributes]].itertuples(index=False)
                rows = rows.assign(labels=[labels_of(c, dict(zip(attributes, map(bool, f), strict=True)))
                                           for c, *f in flags])
                paths, shards, keys = [], [], []
                for row in rows[["id", "path", "label", "category", "labels", "kids", "sender_id", "split",
                                 "sha256"]].itertuples(index=False):
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
                    meta = {"id": row.id, "label": row.label, "category": row.category,
                            "labels": list(row.labels), "kids": bool(row.kids),
                            "sender_id": int(row.sender_id), "split": row.split, "sha256": row.sha256}
                    member = writers[k].add(split, row.id, suffix, data, meta)
                    paths.append(member.ref)
                    shards.append(member.shard)
                    keys.append(member.key)
                tables[k].write(rows.assign(path=paths, shard=shards, key=keys))
            bar.update(len(chunk))
            start = stop
    with ManifestWriter(out / MANIFEST, optional=OPTIONAL) as writer:
        for split in SPLITS:   # the parts one after another: a split's rows together, in shard order
            if parts[split].is_file():
                part = pq.ParquetFile(parts[split], pre_buffer=False)  # no read-ahead of whole row groups
                for batch in part.iter_batches(batch_size=WRITE_ROWS):
                    writer.write_arrow(pa.Table.from_batches([batch]))
                parts[split].unlink()
    return missing, photos


def read_compact(manifest: Path, attributes: list[str]) -> tuple[pd.DataFrame, Vocabulary]:
    """The manifest as the subset decides on it, one row per photo indexed by its row number: `h` (a 64-bit
    hash of the id), `label` and `category` (int16 codes into the returned vocabulary), `kids`,
    `sender_id` and the attribute flags. ~21 bytes a photo: no path, sha256, id or label string is held
    (the photos are streamed from the manifest when written); a hash collision between two of a million
    ids has a chance of ~1e-8. Read in one pass of `WRITE_ROWS` rows into arrays made to size, so what
    Arrow and the ids' strings take while reading does not grow with the photos."""
    flags = [a for a in attributes if a != "kids"]
    try:
        reader = pq.ParquetFile(manifest, pre_buffer=False, read_dictionary=["label", "category"])
        names = reader.schema_arrow.names
        missing = [c for c in COLUMNS if c not in names]
        if missing:
            raise DataError(f"{manifest}: manifest lacks columns {missing}")
        for attr in attributes:
            if attr not in names:
                raise DataError(f"subset.attributes: '{attr}' is not a boolean manifest column")
        n = reader.metadata.num_rows
        vocab = Vocabulary([], [])
        cols: dict[str, np.ndarray] = {"label": np.empty(n, CODE), "category": np.empty(n, CODE),
                                       "kids": np.empty(n, bool), "sender_id": np.empty(n, np.int64),
                                       **{a: np.empty(n, bool) for a in flags}, "h": np.empty(n, np.uint64)}
        start = 0
        for batch in reader.iter_batches(batch_size=WRITE_ROWS,
                                         columns=["id", "label", "category", "kids", "sender_id", *flags]):
            stop = start + batch.num_rows
            for col in batch.schema.names:
                values = batch.column(col)
                if values.null_count:
                    row = start + int(np.flatnonzero(values.is_null().to_numpy(zero_copy_only=False))[0])
                    raise DataError(f"{manifest}: row {row}: no {col}")
                if col in attributes and values.type != pa.bool_():
                    raise DataError(f"subset.attributes: '{col}' is not a boolean manifest column")
                if col == "id":
                    cols["h"][start:stop] = id_hashes(values.to_numpy(zero_copy_only=False))
                elif col in ("label", "category"):
                    known = vocab.labels if col == "label" else vocab.categories
                    cols[col][start:stop] = codes_in(values, known)
                else:
                    cols[col][start:stop] = values.to_numpy(zero_copy_only=False)
            start = stop
            del batch
    except DataError:
        raise
    except Exception as exc:
        raise DataError(f"{manifest}: cannot read manifest ({type(exc).__name__}: {exc})") from exc
    pa.default_memory_pool().release_unused()   # the batches' buffers, which Arrow's pool would keep
    return pd.DataFrame(cols, copy=False), vocab


def codes_in(values: pa.DictionaryArray, names: list[str]) -> np.ndarray:
    """int16 codes into `names` (new ones appended) of a dictionary-encoded batch column."""
    remap = np.empty(len(values.dictionary), dtype=CODE)
    for i, name in enumerate(values.dictionary.to_pylist()):
        if name not in names:
            if len(names) > np.iinfo(CODE).max:
                raise DataError(f"subset: more than {np.iinfo(CODE).max} distinct labels or categories")
            names.append(name)
        remap[i] = names.index(name)
    return remap[values.indices.to_numpy(zero_copy_only=False)]
