"""Stage validate: every expectation fails by name on the data that breaks it; quarantine; CLI exit code."""

from __future__ import annotations

import hashlib
import json
import shutil
import sys
from pathlib import Path

import pandas as pd
import pytest

from fashionrec import cli
from fashionrec.core.errors import ValidationFailed
from fashionrec.data.manifest import read_manifest, write_manifest
from fashionrec.data.shards import read_image_bytes
from fashionrec.data.subset import subset, subset_params
from fashionrec.data.validate import validate
from tests.data.shard_edit import replace_member, truncate_in


@pytest.fixture
def project(tiny_validated, tmp_path) -> Path:
    """A writable copy of the tiny project's params and subset folder (the manifest stays shared)."""
    shutil.copy(tiny_validated.root / "params.yaml", tmp_path / "params.yaml")
    shutil.copytree(tiny_validated.subset, tmp_path / "data/subset/benchmark")
    return tmp_path


def run(project: Path, tiny_validated, **over):
    params = {**tiny_validated.params.section("validate"), **over}
    return validate(project / "data/subset/benchmark", project / "data/validated/benchmark",
                    project / "reports/validate/benchmark", params)


def edit_manifest(project: Path, change) -> pd.DataFrame:
    folder = project / "data/subset/benchmark"
    df = read_manifest(folder).drop(columns=["abspath"])
    df = change(df)
    write_manifest(df, folder / "manifest.parquet")
    return df


def pick(project: Path, split: str = "train", n: int = 0) -> pd.Series:
    df = read_manifest(project / "data/subset/benchmark")
    return df[df["split"] == split].sort_values("id").iloc[n]


def test_validated_folder_and_reports(tiny_validated):
    df = read_manifest(tiny_validated.validated)
    assert len(df) == tiny_validated.source.n_published
    assert all(p.startswith("../../subset/benchmark/shards/") for p in df["path"])
    assert all(Path(p.split("#")[0]).is_file() for p in df["abspath"])
    assert all(hashlib.sha256(read_image_bytes(p)).hexdigest() == sha
               for p, sha in zip(df["abspath"], df["sha256"], strict=True))
    info = json.loads((tiny_validated.validated / "dataset.json").read_text())
    assert info["counts"]["validation"] == {c: 2 for c in tiny_validated.source.classes}
    assert pd.read_csv(tiny_validated.validated / "quarantine.csv").empty
    summary = json.loads((tiny_validated.reports / "summary.json").read_text())
    names = {c["name"] for c in summary["checks"]}
    assert summary["success"] and {"unique ids", "no identical content in two splits (leakage)",
                                   "images per class and split", "split shares within tolerance"} <= names
    html = "".join(p.read_text() for p in (tiny_validated.reports / "data_docs").rglob("*.html"))
    assert (tiny_validated.reports / "data_docs" / "index.html").is_file()
    assert "sha256_splits" in html and "images per class and split" in html


def test_missing_shard_fails_naming_each_photo(project, tiny_validated):
    victims = read_manifest(project / "data/subset/benchmark").query("split == 'test'")
    (project / "data/subset/benchmark" / victims["shard"].iloc[0]).unlink()
    with pytest.raises(ValidationFailed, match=r"file exists and decodes.*failed for 8") as info:
        run(project, tiny_validated, on_bad_file="fail")
    shard = project / "data/subset/benchmark/shards/test-000000.tar"
    for key in victims["id"]:
        assert f"shard {shard}, key {key}: shard file not found" in str(info.value)
    assert not (project / "data/validated/benchmark").exists()
    summary = json.loads((project / "reports/validate/benchmark/summary.json").read_text())
    assert not summary["success"] and (project / "reports/validate/benchmark/data_docs/index.html").is_file()


def test_undecodable_file_fails_naming_it(project, tiny_validated):
    victim = pick(project, n=1)
    replace_member(project / "data/subset/benchmark", victim["id"], read_image_bytes(victim["abspath"])[:200])
    with pytest.raises(ValidationFailed, match=rf"file exists and decodes.*{victim['id']}.*cannot decode"):
        run(project, tiny_validated, on_bad_file="fail")


def test_quarantine_drops_bad_files_and_goes_on(project, tiny_validated):
    folder = project / "data/subset/benchmark"
    broken = pick(project, n=1)
    replace_member(folder, broken["id"], b"GIF89a not an image")
    train = read_manifest(folder).query("split == 'train'")     # shard order: category, then id
    cut = train.iloc[-2]                                         # the shard ends inside its bytes
    shard = truncate_in(folder, cut["id"])
    result = run(project, tiny_validated, on_bad_file="quarantine", min_per_class=1, split_tolerance=1.0)
    assert result.success and result.n_passed == result.n_checked - 3
    q = pd.read_csv(project / "data/validated/benchmark/quarantine.csv").set_index("id")
    assert sorted(q.index) == sorted([broken["id"], cut["id"], train["id"].iloc[-1]])
    assert q.loc[broken["id"], "reason"].count("cannot decode") == 1
    # each photo the cut shard lost is named with its shard and key: the one cut short, the one after it
    assert f"shard {shard}, key {cut['id']}: truncated shard" in q.loc[cut["id"], "reason"]
    last = train["id"].iloc[-1]
    assert f"shard {shard}, key {last}: corrupt tar header" in q.loc[last, "reason"]
    kept = read_manifest(project / "data/validated/benchmark")
    assert not set(q.index) & set(kept["id"])
    assert set(train["id"].iloc[:-2]) - {broken["id"]} <= set(kept["id"])   # the rest of the shard is kept
    assert json.loads((project / "data/validated/benchmark/dataset.json").read_text())["quarantined"] == 3


def test_unknown_label_fails_naming_row(project, tiny_validated):
    victim = pick(project, n=2)

    def change(df):
        df.loc[df["id"] == victim["id"], "category"] = "sweater"
        df.loc[df["id"] == victim["id"], "labels"] = pd.Series([["sweater", "hoodie"]], index=df.index[
            df["id"] == victim["id"]])
        return df

    edit_manifest(project, change)
    with pytest.raises(ValidationFailed) as info:
        run(project, tiny_validated)
    msg = str(info.value)
    assert "'category in vocabulary'" in msg and f"{victim['id']}" in msg and "sweater" in msg
    assert "'labels in vocabulary'" in msg and "unknown hoodie,sweater" in msg


def test_identical_content_in_two_splits_is_leakage(project, tiny_validated):
    train, test = pick(project, "train"), pick(project, "test")
    replace_member(project / "data/subset/benchmark", test["id"], read_image_bytes(train["abspath"]))

    def change(df):
        df.loc[df["id"] == test["id"], "sha256"] = train["sha256"]
        return df

    edit_manifest(project, change)
    with pytest.raises(ValidationFailed, match=r"leakage") as info:
        run(project, tiny_validated)
    msg = str(info.value)
    assert train["id"] in msg and test["id"] in msg and "in 2 splits" in msg
    assert "matches the manifest" not in msg


def test_changed_file_content_is_caught(project, tiny_validated):
    a, b = pick(project, n=3), pick(project, n=4)
    replace_member(project / "data/subset/benchmark", b["id"], read_image_bytes(a["abspath"]))  # not what
    # subset wrote, in the same split: no leakage
    with pytest.raises(ValidationFailed, match=rf"matches the manifest sha256.*{b['id']}"):
        run(project, tiny_validated)


def test_too_few_images_per_class_names_split_and_class(project, tiny_validated):
    with pytest.raises(ValidationFailed, match=r"images per class and split.*validation/dress=2"):
        run(project, tiny_validated, min_per_class=3)


def test_small_images_and_skewed_shares_fail(project, tiny_validated):
    df = read_manifest(project / "data/subset/benchmark")
    small = sorted(df.loc[df["width"] < 70, "id"])
    assert small, "the generator makes sides between 64 and 96 px"
    with pytest.raises(ValidationFailed, match=rf"minimum width.*{small[0]}"):
        run(project, tiny_validated, min_width=70)
    moved = sorted(df.loc[df["split"] == "train", "id"])[:6]
    edit_manifest(project, lambda d: d.assign(split=d["split"].mask(d["id"].isin(moved), "test")))
    with pytest.raises(ValidationFailed, match=r"split shares within tolerance.*test=0.125"):
        run(project, tiny_validated)


def test_sender_in_two_splits_fails_under_grouped(project, tiny_validated):
    folder = project / "data/subset/benchmark"
    shutil.rmtree(folder)
    params = {**subset_params(tiny_validated.params.section("subset"), "benchmark"), "split": {
        "policy": "grouped", "shares": {"train": 0.6, "validation": 0.2, "test": 0.2}}}
    subset(tiny_validated.manifest / "manifest.parquet", folder, params)
    assert run(project, tiny_validated, min_per_class=1, split_tolerance=0.2).success
    victim = pick(project, "train")

    def change(df):
        df.loc[df["id"] == victim["id"], "split"] = "test"
        return df

    edit_manifest(project, change)
    with pytest.raises(ValidationFailed, match=rf"no sender in two splits.*{victim['id']}.*"
                                               rf"sender {victim['sender_id']} in 2 splits"):
        run(project, tiny_validated, min_per_class=1, split_tolerance=0.2)


def test_cli_exit_codes(project, tiny_validated, monkeypatch, capsys):
    def main(*args: str) -> int:
        argv = ["fashionrec", "validate", "-p", str(project / "params.yaml"), *args]
        monkeypatch.setattr(sys, "argv", argv)
        with pytest.raises(SystemExit) as info:
            cli.main()
        return info.value.code

    assert main("benchmark") == 0
    assert json.loads(capsys.readouterr().out)["success"] is True
    victim = pick(project)
    shard = truncate_in(project / "data/subset/benchmark", victim["id"])
    assert main("benchmark", "--on-bad-file", "fail") == 1
    err = capsys.readouterr().err.splitlines()[-1]  # after the progress bar
    assert err.startswith("error: expectation 'file exists and decodes'")
    assert f"shard {shard}, key {victim['id']}: truncated shard" in err
    assert main("benchmark", "-s", "validate.on_bad_file=maybe") == 1
    assert "params: validate.on_bad_file: expected one of 'fail' or 'quarantine', got 'maybe'" in \
        capsys.readouterr().err
