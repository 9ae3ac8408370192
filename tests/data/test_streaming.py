"""The data steps stream the manifest in chunks: a chunk size smaller than the data gives the same results
as one chunk, including the checks that span rows of different chunks."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest

from fashionrec.core.errors import ValidationFailed
from fashionrec.data.ingest import ingest
from fashionrec.data.manifest import read_manifest, write_manifest
from fashionrec.data.shards import read_image_bytes
from fashionrec.data.validate import validate
from tests.data.shard_edit import replace_member


def test_ingest_in_small_chunks_matches_one_chunk(tiny_validated, tmp_path):
    p = tiny_validated.params
    s = p.section("ingest")
    small = ingest(p.path(s["source"]), tmp_path / "manifest", {**s, "chunk_size": 7})
    one = pd.read_parquet(tiny_validated.manifest / "manifest.parquet")
    assert small.n_images == len(one) > 7 * 3
    pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "manifest/manifest.parquet"), one)
    assert json.loads((tmp_path / "manifest/problems.json").read_text()) == \
        json.loads((tiny_validated.manifest / "problems.json").read_text())


def test_validate_in_small_chunks_matches_one_chunk(tiny_validated, tmp_path):
    v = tiny_validated.params.section("validate")
    runs = {}
    for chunk in (5, 1_000_000):
        got = validate(tiny_validated.catalog, tmp_path / f"validated-{chunk}", tmp_path / f"reports-{chunk}",
                       {**v, "chunk_size": chunk})
        summary = json.loads((tmp_path / f"reports-{chunk}" / "summary.json").read_text())
        runs[chunk] = (got, summary, read_manifest(tmp_path / f"validated-{chunk}").drop(columns=["path"]))
    (small, s_summary, s_rows), (one, o_summary, o_rows) = runs[5], runs[1_000_000]
    assert small.n_checked == one.n_checked > 5 * 3 and small.counts == one.counts
    assert s_summary["checks"] == o_summary["checks"] and s_summary["success"]
    pd.testing.assert_frame_equal(s_rows, o_rows)
    assert json.loads((tmp_path / "validated-5" / "dataset.json").read_text())["counts"] == \
        json.loads((tiny_validated.catalog_validated / "dataset.json").read_text())["counts"]


def test_checks_across_chunks_are_found_in_small_chunks(tiny_validated, tmp_path):
    """A duplicate id and one content in two splits, in rows of different chunks, and a broken photo:
    every chunk size names the same culprits and quarantines the same photo."""
    folder = tmp_path / "subset"
    shutil.copytree(tiny_validated.catalog, folder)
    df = read_manifest(folder)
    train, test = df[df["split"] == "train"].iloc[0], df[df["split"] == "test"].iloc[-1]
    broken = df[df["split"] == "validation"].iloc[1]
    replace_member(folder, test["id"], read_image_bytes(train["abspath"]))
    replace_member(folder, broken["id"], b"not an image")
    df = read_manifest(folder).drop(columns=["abspath"])
    df.loc[df["id"] == test["id"], "sha256"] = train["sha256"]
    dup = df[df["split"] == "test"].index[0]
    df.loc[dup, "id"] = df[df["split"] == "train"]["id"].iloc[2]   # the same id in train and test
    write_manifest(df, folder / "manifest.parquet")
    v = {**tiny_validated.params.section("validate"), "on_bad_file": "quarantine"}
    messages, named = {}, {}
    for chunk in (4, 1_000_000):
        with pytest.raises(ValidationFailed) as info:
            validate(folder, tmp_path / f"out-{chunk}", tmp_path / f"reports-{chunk}",
                     {**v, "chunk_size": chunk})
        messages[chunk] = str(info.value)
        summary = json.loads((tmp_path / f"reports-{chunk}" / "summary.json").read_text())
        assert [q["id"] for q in summary["quarantined"]] == [broken["id"]]
        assert not Path(tmp_path / f"out-{chunk}").exists()
        named[chunk] = {(c["name"], c["success"], c["unexpected_count"],
                         tuple(sorted(x.split(" ")[0] for x in c["culprits"]))) for c in summary["checks"]}
    assert named[4] == named[1_000_000]
    failed = {n[0]: n[3] for n in named[4] if not n[1]}
    leaked = tuple(sorted([train["id"], test["id"]]))
    assert failed == {"unique ids": (df.loc[dup, "id"],) * 2,
                      "no identical content in two splits (leakage)": leaked}
    assert "'unique ids'" in messages[4] and "leakage" in messages[4] and test["id"] in messages[4]


def test_subset_in_small_chunks_matches_one_chunk(tiny_validated, tmp_path, monkeypatch):
    """The subset decides on its compact table, then streams the manifest: chunks of 7 rows (and ids hashed
    5 at a time) give the same manifest, shards and reports as one chunk."""
    import fashionrec.data.subset as subset_mod

    params = subset_mod.subset_params(tiny_validated.params.section("subset"), "catalog")
    monkeypatch.setattr(subset_mod, "WRITE_ROWS", 7)
    monkeypatch.setattr(subset_mod, "READ_ROWS", 5)
    small = subset_mod.subset(tiny_validated.manifest / "manifest.parquet", tmp_path / "small", params)
    one = tiny_validated.catalog
    assert small.n_images == len(read_manifest(one)) > 7 * 3
    pd.testing.assert_frame_equal(read_manifest(tmp_path / "small").drop(columns=["abspath"]),
                                  read_manifest(one).drop(columns=["abspath"]))
    for name in ("dataset.json", "dropped.json", "dropped.md"):
        assert (tmp_path / "small" / name).read_text() == (one / name).read_text()
    shards = sorted(p.name for p in (one / "shards").iterdir())
    assert shards == sorted(p.name for p in (tmp_path / "small/shards").iterdir())
    for shard in shards:
        assert (one / "shards" / shard).read_bytes() == (tmp_path / "small/shards" / shard).read_bytes()


def test_a_repeated_image_in_a_later_chunk_is_a_bad_row(tiny_source, tmp_path):
    """images.csv read 5 rows at a time: a row repeating an earlier chunk's image is refused by line."""
    src = tmp_path / "src"
    shutil.copytree(tiny_source.root, src)
    lines = (src / "images.csv").read_text().splitlines()
    first = lines[1].split(",")[0]
    (src / "images.csv").write_text("\n".join([*lines, lines[1]]) + "\n")
    result = ingest(src, tmp_path / "manifest", {"chunk_size": 5})
    problems = json.loads((tmp_path / "manifest/problems.json").read_text())
    assert problems["bad_rows"] == [{"line": len(lines) + 1, "image": first, "reason": "duplicate image"}]
    assert result.problems["bad_rows"] == 1
    assert (read_manifest(tmp_path / "manifest")["id"] == first).sum() == 1
