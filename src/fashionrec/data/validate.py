"""Stage `validate`: a Great Expectations suite over the subset manifest, Data Docs, the validated folder.

Checks that need the files or several rows (decoding, content leakage across splits, sender leakage,
per-class counts, split shares) are computed in pandas as columns or small tables and then asserted
with GX expectations, so every check shows up in Data Docs. Missing or undecodable files are either a
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

import pandas as pd
from tqdm import tqdm

from fashionrec.core.errors import DataError, ValidationFailed
from fashionrec.data.images import open_image
from fashionrec.data.manifest import (
    MANIFEST,
    SPLITS,
    dataset_info,
    read_dataset,
    read_manifest,
    write_dataset,
    write_manifest,
)
from fashionrec.data.shards import read_image_bytes

REQUIRED = ["id", "path", "label", "category", "labels", "sender_id", "width", "height", "mode",
            "bytes", "sha256", "split"]
BAD_FILE_MODES = ("fail", "quarantine")
SHOWN = 10  # culprits named in the error message (summary.json lists up to 200)


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

    `params.subsets.<name>` overrides the shared keys for the subset whose dataset.json names it (a
    catalog of every category has fewer photos per class and split than the top-10 benchmark).
    """
    info = read_dataset(subset_dir)
    params = params_for(params, info)
    mode = params.get("on_bad_file", "quarantine")
    if mode not in BAD_FILE_MODES:
        raise DataError(f"validate.on_bad_file: '{mode}' is not one of {list(BAD_FILE_MODES)}")
    df = read_manifest(subset_dir)
    n_checked = len(df)
    df = check_files(df)
    quarantined: list[dict[str, str]] = []
    if mode == "quarantine":
        bad = df[~df["file_ok"]]
        quarantined = [{"id": r.id, "path": r.path, "reason": r.file_error} for r in bad.itertuples()]
        df = df[df["file_ok"]].reset_index(drop=True)
    df = add_derived(df, set(info["labels"]))
    grouped = info.get("split_policy") == "grouped"
    tables = {"manifest": df, "class_counts": class_counts(df, info), "split_shares": split_shares(df, info)}
    checks = run_suite(tables, suites(params, info, grouped), reports / "data_docs", df)

    failed = [c for c in checks if not c.success]
    summary = {"success": not failed, "on_bad_file": mode, "n_checked": n_checked, "n_passed": len(df),
               "split_policy": info.get("split_policy"), "quarantined": quarantined,
               "checks": [asdict(c) | {"culprits": c.culprits[:200]} for c in checks]}
    reports.mkdir(parents=True, exist_ok=True)
    (reports / "summary.json").write_text(json.dumps(summary, indent=2, default=str) + "\n")
    docs = reports / "data_docs" / "index.html"
    if failed:
        shutil.rmtree(out, ignore_errors=True)  # nothing downstream may use a folder that failed
        raise ValidationFailed("; ".join(describe_failure(c) for c in failed)
                               + f" (details: {reports / 'summary.json'}, Data Docs: {docs})")

    write_validated(df, info, out, subset_dir, quarantined)
    return ValidateResult(success=True, out=str(out), reports=str(reports), data_docs=str(docs),
                          n_checked=n_checked, n_passed=len(df),
                          counts={s: int((df["split"] == s).sum()) for s in SPLITS},
                          quarantined=quarantined)


def params_for(params: dict[str, Any], info: dict[str, Any]) -> dict[str, Any]:
    """The validate keys for the subset `info` (its dataset.json) describes: `subsets.<name>` over the
    shared ones."""
    own = (params.get("subsets") or {}).get(info.get("subset")) or {}
    return {**params, **own}


def check_files(df: pd.DataFrame) -> pd.DataFrame:
    """Add `file_ok` / `file_error` (exists and decodes through `open_image`) and `file_sha256`."""
    ok, errors, shas = [], [], []
    pairs = zip(df["id"], df["abspath"], strict=True)
    for rid, path in tqdm(pairs, total=len(df), desc="validate", unit="img"):
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


def add_derived(df: pd.DataFrame, vocabulary: set[str]) -> pd.DataFrame:
    """Columns for row checks GX has no expectation for: label vocabulary, content and sender leakage."""
    unknown = [",".join(sorted(set(labels) - vocabulary)) for labels in df["labels"]]
    content = df["file_sha256"].fillna(df["sha256"])  # what is on disk now; the manifest's if unreadable
    return df.assign(unknown_labels=unknown, content_sha256=content,
                     sha256_matches=content == df["sha256"],
                     sha256_splits=df.groupby(content)["split"].transform("nunique").fillna(1).astype(int),
                     sender_splits=df.groupby("sender_id")["split"].transform("nunique").fillna(1).astype(int))


def class_counts(df: pd.DataFrame, info: dict[str, Any]) -> pd.DataFrame:
    """Images per (split, class), zeros included, for every split the subset meant to fill."""
    expected = info.get("expected_shares") or {s: 1.0 for s in SPLITS}
    rows = [{"split_class": f"{s}/{c}", "n": int(((df["split"] == s) & (df["category"] == c)).sum())}
            for s in SPLITS if expected.get(s, 0) > 0 for c in info["classes"]]
    return pd.DataFrame(rows, columns=["split_class", "n"])


def split_shares(df: pd.DataFrame, info: dict[str, Any]) -> pd.DataFrame:
    """Actual share of each split against what the subset aimed for (`expected_shares` in dataset.json)."""
    expected = info.get("expected_shares") or {}
    n = max(len(df), 1)
    rows = [{"split": s, "share": (df["split"] == s).sum() / n, "expected": float(expected[s])}
            for s in SPLITS if s in expected]
    out = pd.DataFrame(rows, columns=["split", "share", "expected"])
    return out.assign(deviation=(out["share"] - out["expected"]).abs().round(6))


def suites(params: dict[str, Any], info: dict[str, Any], grouped: bool) -> dict[str, list[tuple[str, Any]]]:
    """Named expectations per table; the names are what error messages and summary.json call them."""
    import great_expectations.expectations as gxe

    manifest = [(f"{c} not null", gxe.ExpectColumnValuesToNotBeNull(column=c)) for c in REQUIRED]
    manifest += [
        ("unique ids", gxe.ExpectColumnValuesToBeUnique(column="id")),
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
    import great_expectations as gx
    from great_expectations.data_context.types.base import (
        DataContextConfig,
        InMemoryStoreBackendDefaults,
        ProgressBarsConfig,
    )

    logging.getLogger("great_expectations").setLevel(logging.ERROR)
    shutil.rmtree(docs_dir, ignore_errors=True)
    # one docs site, ours: the ephemeral default would also build a copy into a temporary folder
    site = {"class_name": "SiteBuilder",
            "store_backend": {"class_name": "TupleFilesystemStoreBackend", "base_directory": str(docs_dir)},
            "site_index_builder": {"class_name": "DefaultSiteIndexBuilder"}}
    stores = InMemoryStoreBackendDefaults(init_temp_docs_sites=False)
    config = DataContextConfig(store_backend_defaults=stores, data_docs_sites={"local": site})
    context = gx.get_context(project_config=config, mode="ephemeral")
    context.variables.progress_bars = ProgressBarsConfig(globally=False)
    source = context.data_sources.add_pandas("subset")
    by_id = manifest.drop_duplicates("id").set_index("id")
    checks: list[Check] = []
    for table, items in expectations.items():
        batch = source.add_dataframe_asset(table).add_batch_definition_whole_dataframe("all")
        suite = context.suites.add(gx.ExpectationSuite(name=table))
        for name, expectation in items:
            expectation.description = name
            suite.add_expectation(expectation)
        definition = context.validation_definitions.add(
            gx.ValidationDefinition(name=table, data=batch, suite=suite))
        checkpoint = context.checkpoints.add(gx.Checkpoint(
            name=f"validate_{table}", validation_definitions=[definition],
            actions=[gx.checkpoint.UpdateDataDocsAction(name="data_docs")],
            result_format={"result_format": "COMPLETE", "unexpected_index_column_names": [INDEX[table]]}))
        result = checkpoint.run(batch_parameters={"dataframe": tables[table]})
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
                  "unknown_labels": f"unknown {value}"}.get(column or "", f"{column}={value}")
        names.append(f"{key} ({row['path']}): {detail}")
    return names


def describe_failure(check: Check) -> str:
    shown = "; ".join(check.culprits[:SHOWN])
    more = f" and {check.unexpected_count - SHOWN} more" if check.unexpected_count > SHOWN else ""
    return (f"expectation '{check.name}' ({check.expectation} on {check.column}) failed for "
            f"{check.unexpected_count}: {shown}{more}")


def write_validated(df: pd.DataFrame, info: dict[str, Any], out: Path, subset_dir: Path,
                    quarantined: list[dict[str, str]]) -> None:
    """`out/manifest.parquet` (paths relative to out, into the subset), dataset.json, quarantine.csv."""
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    base = out.resolve()
    df = df.assign(path=[os.path.relpath(p, base) for p in df["abspath"]])
    write_manifest(df, out / MANIFEST)
    derived = ("classes", "attributes", "labels", "counts", "n_images")
    keep = {k: v for k, v in info.items() if k not in derived}
    write_dataset(dataset_info(df, info["classes"], info["attributes"], **keep,
                               validated_from=os.path.relpath(Path(subset_dir).resolve(), base),
                               quarantined=len(quarantined)), out)
    pd.DataFrame(quarantined, columns=["id", "path", "reason"]).to_csv(out / "quarantine.csv", index=False)
