"""Stage `validate`: a Great Expectations suite over the subset manifest, Data Docs, the validated folder.

Checks that need the files or several rows (decoding, content leakage across splits, sender leakage,
per-class counts, split shares) are computed in pandas as columns or small tables and then asserted
with GX expectations, so every check shows up in Data Docs. The manifest is checked a chunk at a time
(`validate.chunk_size` rows: one GX batch each), so memory does not grow with the photo count. Missing
or undecodable files (a corrupt or truncated shard: each photo named with its shard and key) are either a
failure or, with `on_bad_file: quarantine`, dropped, listed in `quarantine.csv` and reported.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from tqdm import tqdm

from fashionrec.core.errors import DataError, ValidationFailed
from fashionrec.data.images import open_image
from fashionrec.data.manifest import (
    MANIFEST,
    SPLITS,
    ManifestWriter,
    iter_manifest,
    read_dataset,
    write_dataset,
)
from fashionrec.data.shards import read_image_bytes

REQUIRED = ["id", "path", "label", "category", "labels", "sender_id", "width", "height", "mode",
            "bytes", "sha256", "split"]
BAD_FILE_MODES = ("fail", "quarantine")
SHOWN = 10  # culprits named in the error message (summary.json lists up to 200)
MAX_CULPRITS = 200
CHUNK = 10_000  # manifest rows per batch (validate.chunk_size)


@dataclass
class Check:
    """One expectation: a readable name, the GX expectation and its column, and the culprits if it failed."""

    name: str
    expectation: str
    column: str | None
    success: bool
    unexpected_count: int = 0
    culprits: list[str] = field(default_factory=list)


@dataclass
class ValidateResult:
    success: bool
    out: str
    reports: str
    data_docs: str
    n_checked: int
    n_passed: int
    counts: dict[str, int]
    quarantined: list[dict[str, str]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def validate(subset_dir: Path, out: Path, reports: Path, params: dict[str, Any]) -> ValidateResult:
    """Validate `subset_dir`; write reports and, when everything passes, `out` (the validated folder).

    The manifest is read `validate.chunk_size` rows at a time: a first pass over its metadata columns finds
    what spans rows (duplicate ids, one content or one sender in two splits) as small per-row arrays, a
    second decodes each chunk's photos from the shards and runs the manifest suite on that chunk (a Great
    Expectations batch); the per-class and per-split tables are checked once at the end. Peak memory is the
    chunk's, not the dataset's. `params.subsets.<name>` overrides the shared keys for the subset whose
    dataset.json names it (a catalog of every category has fewer photos per class and split than the
    top-10 benchmark).
    """
    info = read_dataset(subset_dir)
    params = params_for(params, info)
    mode = params.get("on_bad_file", "quarantine")
    if mode not in BAD_FILE_MODES:
        raise DataError(f"validate.on_bad_file: '{mode}' is not one of {list(BAD_FILE_MODES)}")
    chunk = int(params.get("chunk_size") or CHUNK)
    grouped = info.get("split_policy") == "grouped"
    expectations = suites(params, info, grouped)
    spans = cross_row_facts(subset_dir, chunk)
    n_checked = len(spans)
    suite = Suite(reports / "data_docs")
    checks: dict[str, Check] = {}
    quarantined: list[dict[str, str]] = []
    counts: dict[tuple[str, str], int] = {}
    staging = out.with_name(f".{out.name}.tmp")
    shutil.rmtree(staging, ignore_errors=True)
    writer = ManifestWriter(staging / MANIFEST, optional=("split", "shard", "key"))
    base = out.resolve()
    start = 0
    with tqdm(total=n_checked, desc="validate", unit="img", mininterval=1.0) as bar:
        for df in iter_manifest(subset_dir, chunk):
            df = check_files(df, bar).assign(**spans.iloc[start:start + len(df)].reset_index(drop=True))
            start += len(df)
            if mode == "quarantine":
                bad = df[~df["file_ok"]]
                quarantined += [{"id": r.id, "path": r.path, "reason": r.file_error}
                                for r in bad.itertuples()]
                df = df[df["file_ok"]].reset_index(drop=True)
            df = add_row_checks(df, set(info["labels"]))
            merge_checks(checks, suite.run({"manifest": df}, {"manifest": expectations["manifest"]}, df))
            for key, n in df.groupby(["split", "category"]).size().items():
                counts[key] = counts.get(key, 0) + int(n)
            writer.write(df.assign(path=[os.path.relpath(p, base) for p in df["abspath"]]))
    tables = {"class_counts": class_counts_of(counts, info), "split_shares": split_shares_of(counts, info)}
    merge_checks(checks, suite.run(tables, {k: expectations[k] for k in tables}, None))
    n_passed = sum(counts.values())

    failed = [c for c in checks.values() if not c.success]
    summary = {"success": not failed, "on_bad_file": mode, "n_checked": n_checked, "n_passed": n_passed,
               "split_policy": info.get("split_policy"), "quarantined": quarantined,
               "checks": [asdict(c) | {"culprits": c.culprits[:200]} for c in checks.values()]}
    reports.mkdir(parents=True, exist_ok=True)
    (reports / "summary.json").write_text(json.dumps(summary, indent=2, default=str) + "\n")
    docs = reports / "data_docs" / "index.html"
    if failed:
        writer.abort()
        shutil.rmtree(staging, ignore_errors=True)
        shutil.rmtree(out, ignore_errors=True)  # nothing downstream may use a folder that failed
        raise ValidationFailed("; ".join(describe_failure(c) for c in failed)
                               + f" (details: {reports / 'summary.json'}, Data Docs: {docs})")

    writer.close()
    write_validated(staging, counts, info, out, subset_dir, quarantined)
    return ValidateResult(success=True, out=str(out), reports=str(reports), data_docs=str(docs),
                          n_checked=n_checked, n_passed=n_passed,
                          counts={s: sum(n for (sp, _), n in counts.items() if sp == s) for s in SPLITS},
                          quarantined=quarantined)


def cross_row_facts(subset_dir: Path, chunk: int) -> pd.DataFrame:
    """Per row, what needs the other rows: how often its id occurs, in how many splits its content (the
    manifest's sha256) and its sender occur. Built from 64-bit hashes of the metadata columns read a chunk
    at a time (~30 bytes a row; a file that differs from its sha256 fails on that check instead)."""
    ids, shas, senders, splits = [], [], [], []
    for df in iter_manifest(subset_dir, chunk, columns=["id", "sha256", "sender_id", "split"]):
        ids.append(pd.util.hash_array(df["id"].astype(str).to_numpy()))
        shas.append(pd.util.hash_array(df["sha256"].fillna("").astype(str).to_numpy()))
        senders.append(df["sender_id"].fillna(-1).astype(np.int64).to_numpy())
        splits.append(pd.Categorical(df["split"], categories=list(SPLITS)).codes.astype(np.int8))
    if not ids:
        return pd.DataFrame({"id_count": [], "sha256_splits": [], "sender_splits": []}, dtype=int)
    split = np.concatenate(splits)
    id_hash = np.concatenate(ids)
    return pd.DataFrame({"id_count": distinct_per_key(id_hash, np.zeros(len(id_hash), dtype=np.int8),
                                                      count_rows=True),
                         "sha256_splits": distinct_per_key(np.concatenate(shas), split),
                         "sender_splits": distinct_per_key(np.concatenate(senders), split)})


def distinct_per_key(keys: np.ndarray, values: np.ndarray, *, count_rows: bool = False) -> np.ndarray:
    """Per row: how many distinct `values` (or, with count_rows, how many rows) share its key. Sorting
    numpy arrays: ~40 bytes a row at the peak, where a pandas groupby costs several times that."""
    order = np.lexsort((values, keys))
    k, v = keys[order], values[order]
    new_key = np.empty(len(k), dtype=bool)
    new_key[0] = True
    np.not_equal(k[1:], k[:-1], out=new_key[1:])
    if count_rows:
        counted = np.ones(len(k), dtype=bool)
    else:
        counted = new_key.copy()
        counted[1:] |= v[1:] != v[:-1]
    group = np.cumsum(new_key) - 1
    per_group = np.bincount(group, weights=counted).astype(np.int32)
    out = np.empty(len(k), dtype=np.int32)
    out[order] = per_group[group]
    return out


def merge_checks(into: dict[str, Check], checks: list[Check]) -> None:
    """Fold one batch's results into the run's: a check fails if it failed on any batch; counts add up."""
    for c in checks:
        key = f"{c.expectation}:{c.name}"
        if key not in into:
            into[key] = c
            continue
        seen = into[key]
        seen.success = seen.success and c.success
        seen.unexpected_count += c.unexpected_count
        seen.culprits = (seen.culprits + c.culprits)[:MAX_CULPRITS]


def params_for(params: dict[str, Any], info: dict[str, Any]) -> dict[str, Any]:
    """The validate keys for the subset `info` (its dataset.json) describes: `subsets.<name>` over the
    shared ones."""
    own = (params.get("subsets") or {}).get(info.get("subset")) or {}
    return {**params, **own}


def check_files(df: pd.DataFrame, bar: tqdm | None = None) -> pd.DataFrame:
    """Add `file_ok` / `file_error` (exists and decodes through `open_image`) and `file_sha256`."""
    ok, errors, shas = [], [], []
    pairs = zip(df["id"], df["abspath"], strict=True)
    for rid, path in pairs if bar is not None else tqdm(pairs, total=len(df), desc="validate", unit="img"):
        if bar is not None:
            bar.update(1)
        name = f"{rid} ({path})"
        sha = None
        try:
            data = read_image_bytes(path)   # a shard member (names shard and key if cut short) or a file
            sha = hashlib.sha256(data).hexdigest()
            open_image(data, name=name)
            ok.append(True)
            errors.append("")
        except (OSError, TypeError):
            ok.append(False)
            errors.append(f"{name}: file not found or unreadable")
        except DataError as exc:
            ok.append(False)
            errors.append(str(exc))
        shas.append(sha)
    return df.assign(file_ok=ok, file_error=errors, file_sha256=shas)


def add_row_checks(df: pd.DataFrame, vocabulary: set[str]) -> pd.DataFrame:
    """Columns for the checks of one row GX has no expectation for: label vocabulary, content as written."""
    unknown = [",".join(sorted(set(labels) - vocabulary)) for labels in df["labels"]]
    content = df["file_sha256"].fillna(df["sha256"])  # what is on disk now; the manifest's if unreadable
    return df.assign(unknown_labels=unknown, content_sha256=content, sha256_matches=content == df["sha256"])


def add_derived(df: pd.DataFrame, vocabulary: set[str]) -> pd.DataFrame:
    """Row checks plus those across rows, for a table held whole (intake's: the subset plus new photos):
    duplicate ids, content and sender leakage."""
    df = add_row_checks(df, vocabulary)
    content = df["content_sha256"]
    return df.assign(id_count=df.groupby("id")["id"].transform("size").astype(int),
                     sha256_splits=df.groupby(content)["split"].transform("nunique").fillna(1).astype(int),
                     sender_splits=df.groupby("sender_id")["split"].transform("nunique").fillna(1).astype(int))


def tally(df: pd.DataFrame) -> dict[tuple[str, str], int]:
    return {(str(s), str(c)): int(n) for (s, c), n in df.groupby(["split", "category"]).size().items()}


def class_counts(df: pd.DataFrame, info: dict[str, Any]) -> pd.DataFrame:
    """Images per (split, class), zeros included, for every split the subset meant to fill."""
    return class_counts_of(tally(df), info)


def class_counts_of(counts: dict[tuple[str, str], int], info: dict[str, Any]) -> pd.DataFrame:
    expected = info.get("expected_shares") or {s: 1.0 for s in SPLITS}
    rows = [{"split_class": f"{s}/{c}", "n": int(counts.get((s, c), 0))}
            for s in SPLITS if expected.get(s, 0) > 0 for c in info["classes"]]
    return pd.DataFrame(rows, columns=["split_class", "n"])


def split_shares(df: pd.DataFrame, info: dict[str, Any]) -> pd.DataFrame:
    """Actual share of each split against what the subset aimed for (`expected_shares` in dataset.json)."""
    return split_shares_of(tally(df), info)


def split_shares_of(counts: dict[tuple[str, str], int], info: dict[str, Any]) -> pd.DataFrame:
    expected = info.get("expected_shares") or {}
    n = max(sum(counts.values()), 1)
    rows = [{"split": s, "share": sum(v for (sp, _), v in counts.items() if sp == s) / n,
             "expected": float(expected[s])} for s in SPLITS if s in expected]
    out = pd.DataFrame(rows, columns=["split", "share", "expected"])
    return out.assign(deviation=(out["share"] - out["expected"]).abs().round(6))


def suites(params: dict[str, Any], info: dict[str, Any], grouped: bool) -> dict[str, list[tuple[str, Any]]]:
    """Named expectations per table; the names are what error messages and summary.json call them."""
    import great_expectations.expectations as gxe

    manifest = [(f"{c} not null", gxe.ExpectColumnValuesToNotBeNull(column=c)) for c in REQUIRED]
    manifest += [
        ("unique ids", gxe.ExpectColumnValuesToBeInSet(column="id_count", value_set=[1])),
        ("file exists and decodes", gxe.ExpectColumnValuesToBeInSet(column="file_ok", value_set=[True])),
        ("category in vocabulary", gxe.ExpectColumnValuesToBeInSet(column="category",
                                                                     value_set=list(info["classes"]))),
        ("labels in vocabulary", gxe.ExpectColumnValuesToBeInSet(column="unknown_labels", value_set=[""])),
        ("known split", gxe.ExpectColumnValuesToBeInSet(column="split", value_set=list(SPLITS))),
        ("minimum width", gxe.ExpectColumnValuesToBeBetween(column="width",
                                                            min_value=int(params.get("min_width", 1)))),
        ("minimum height", gxe.ExpectColumnValuesToBeBetween(column="height",
                                                             min_value=int(params.get("min_height", 1)))),
        ("file content matches the manifest sha256",
         gxe.ExpectColumnValuesToBeInSet(column="sha256_matches", value_set=[True])),
        ("no identical content in two splits (leakage)",
         gxe.ExpectColumnValuesToBeInSet(column="sha256_splits", value_set=[1])),
    ]
    if grouped:
        manifest.append(("no sender in two splits (grouped policy)",
                         gxe.ExpectColumnValuesToBeInSet(column="sender_splits", value_set=[1])))
    counts = [("images per class and split", gxe.ExpectColumnValuesToBeBetween(
        column="n", min_value=int(params.get("min_per_class", 1))))]
    shares = [("split shares within tolerance", gxe.ExpectColumnValuesToBeBetween(
        column="deviation", max_value=float(params.get("split_tolerance", 0.05))))]
    return {"manifest": manifest, "class_counts": counts, "split_shares": shares}


INDEX = {"manifest": "id", "class_counts": "split_class", "split_shares": "split"}


def run_suite(tables: dict[str, pd.DataFrame], expectations: dict[str, list[tuple[str, Any]]],
              docs_dir: Path, manifest: pd.DataFrame) -> list[Check]:
    """Run one GX checkpoint per table (ephemeral context), building Data Docs into docs_dir."""
    return Suite(docs_dir).run(tables, expectations, manifest)


class Suite:
    """One ephemeral GX context and its Data Docs site; `run` validates a batch of each table given (a
    table's suite and checkpoint are made on its first batch), so a manifest can be checked chunk by chunk."""

    def __init__(self, docs_dir: Path) -> None:
        import great_expectations as gx
        from great_expectations.data_context.types.base import (
            DataContextConfig,
            InMemoryStoreBackendDefaults,
            ProgressBarsConfig,
        )

        logging.getLogger("great_expectations").setLevel(logging.ERROR)
        shutil.rmtree(docs_dir, ignore_errors=True)
        # one docs site, ours: the ephemeral default would also build a copy into a temporary folder
        store = {"class_name": "TupleFilesystemStoreBackend", "base_directory": str(docs_dir)}
        site = {"class_name": "SiteBuilder", "store_backend": store,
                "site_index_builder": {"class_name": "DefaultSiteIndexBuilder"}}
        stores = InMemoryStoreBackendDefaults(init_temp_docs_sites=False)
        config = DataContextConfig(store_backend_defaults=stores, data_docs_sites={"local": site})
        self.gx = gx
        self.context = gx.get_context(project_config=config, mode="ephemeral")
        self.context.variables.progress_bars = ProgressBarsConfig(globally=False)
        self.source = self.context.data_sources.add_pandas("subset")
        self.checkpoints: dict[str, Any] = {}

    def checkpoint(self, table: str, items: list[tuple[str, Any]]) -> Any:
        if table not in self.checkpoints:
            gx = self.gx
            batch = self.source.add_dataframe_asset(table).add_batch_definition_whole_dataframe("all")
            suite = self.context.suites.add(gx.ExpectationSuite(name=table))
            for name, expectation in items:
                expectation.description = name
                suite.add_expectation(expectation)
            definition = self.context.validation_definitions.add(
                gx.ValidationDefinition(name=table, data=batch, suite=suite))
            self.checkpoints[table] = self.context.checkpoints.add(gx.Checkpoint(
                name=f"validate_{table}", validation_definitions=[definition],
                actions=[gx.checkpoint.UpdateDataDocsAction(name="data_docs")],
                result_format={"result_format": "COMPLETE", "unexpected_index_column_names": [INDEX[table]]}))
        return self.checkpoints[table]

    def run(self, tables: dict[str, pd.DataFrame], expectations: dict[str, list[tuple[str, Any]]],
            manifest: pd.DataFrame | None) -> list[Check]:
        """Validate each table's batch; `manifest` (the batch's rows) names the files behind culprits."""
        by_id = (manifest.drop_duplicates("id").set_index("id") if manifest is not None
                 else pd.DataFrame(index=pd.Index([], name="id")))
        checks: list[Check] = []
        for table, items in expectations.items():
            result = self.checkpoint(table, items).run(batch_parameters={"dataframe": tables[table]})
            for run in result.run_results.values():
                for er in run.results:
                    config = er.expectation_config
                    column = config.kwargs.get("column")
                    check = Check(name=config.description or config.type, expectation=config.type,
                                  column=column, success=bool(er.success),
                                  unexpected_count=int(er.result.get("unexpected_count") or 0))
                    if not er.success:
                        check.culprits = culprits(er.result, INDEX[table], column, by_id)
                    checks.append(check)
        return checks


def culprits(result: dict[str, Any], index: str, column: str | None, by_id: pd.DataFrame) -> list[str]:
    """Human-readable offenders: the row id and file, plus the offending value or decode error."""
    names = []
    for item in result.get("unexpected_index_list") or []:
        key = item.get(index)
        value = item.get(column) if column else None
        if index != "id" or key not in by_id.index:
            names.append(f"{key}={value}")
            continue
        row = by_id.loc[key]
        detail = {"file_ok": row["file_error"],
                  "sha256_splits": f"content {row['content_sha256'][:12]} in {value} splits, "
                  f"this copy in {row['split']}",
                  "sha256_matches": f"file sha256 {str(row['file_sha256'])[:12]} != manifest "
                  f"{row['sha256'][:12]}",
                  "sender_splits": f"sender {row['sender_id']} in {value} splits",
                  "id_count": f"id in {value} rows",
                  "unknown_labels": f"unknown {value}"}.get(column or "", f"{column}={value}")
        names.append(f"{key} ({row['path']}): {detail}")
    return names


def describe_failure(check: Check) -> str:
    shown = "; ".join(check.culprits[:SHOWN])
    more = f" and {check.unexpected_count - SHOWN} more" if check.unexpected_count > SHOWN else ""
    return (f"expectation '{check.name}' ({check.expectation} on {check.column}) failed for "
            f"{check.unexpected_count}: {shown}{more}")


def write_validated(staging: Path, counts: dict[tuple[str, str], int], info: dict[str, Any], out: Path,
                    subset_dir: Path, quarantined: list[dict[str, str]]) -> None:
    """`out/manifest.parquet` (written chunk by chunk into `staging`, paths relative to out, into the
    subset's shards), dataset.json, quarantine.csv; `out` is replaced whole."""
    base = out.resolve()
    derived = ("classes", "attributes", "labels", "counts", "n_images")
    keep = {k: v for k, v in info.items() if k not in derived}
    classes = list(info["classes"])
    dataset = {"classes": classes, "attributes": list(info["attributes"]),
               "labels": [*classes, *info["attributes"]], **keep,
               "validated_from": os.path.relpath(Path(subset_dir).resolve(), base),
               "quarantined": len(quarantined),
               "counts": {s: {c: int(counts.get((s, c), 0)) for c in classes} for s in SPLITS},
               "n_images": sum(counts.values())}
    write_dataset(dataset, staging)
    pd.DataFrame(quarantined, columns=["id", "path", "reason"]).to_csv(staging / "quarantine.csv",
                                                                      index=False)
    shutil.rmtree(out, ignore_errors=True)
    staging.replace(out)
