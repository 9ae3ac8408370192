"""Stage subset: classes, dropped labels, the cap, both split policies and the self-contained folder."""

from __future__ import annotations

import hashlib
import json

import pandas as pd
import pytest

from fashionrec.core.errors import DataError
from fashionrec.data.manifest import read_manifest
from fashionrec.data.shards import iter_shard, read_image_bytes
from fashionrec.data.subset import subset, subset_params


def params(tiny, **over):
    base = {"classes": list(tiny.classes), "drop_labels": ["Not sure", "Skip", "Other"],
            "attributes": ["kids"], "max_per_class": None, "seed": 42,
            "split": {"policy": "published", "published_file": "top10-splits.csv",
                      "shares": {"train": 0.8, "validation": 0.1, "test": 0.1}}}
    return {**base, **over}


def test_published_subset_is_self_contained(tiny_validated):
    tiny, folder = tiny_validated.source, tiny_validated.subset
    df = read_manifest(folder)
    assert {s: sorted(df.loc[df["split"] == s, "id"]) for s in tiny.splits} == \
        {s: sorted(ids) for s, ids in tiny.splits.items()}
    assert all(p.startswith(f"shards/{s}-") for p, s in zip(df["path"], df["split"], strict=True))
    for p, sha in zip(df["abspath"], df["sha256"], strict=True):
        assert p.startswith(str(folder.resolve())) and hashlib.sha256(read_image_bytes(p)).hexdigest() == sha
    assert sorted(p.name for p in (folder / "shards").iterdir()) == \
        ["test-000000.tar", "train-000000.tar", "validation-000000.tar"]
    assert len(df) == tiny.n_published and not (folder / "images").exists()
    # the published label wins over images.csv
    (wrong_id, wrong_label), = tiny.relabelled.items()
    row = df.set_index("id").loc[wrong_id]
    assert row["label"] == wrong_label and row["category"] != wrong_label.lower()
    assert row["category"] in tiny.classes and row["labels"][0] == row["category"]
    info = json.loads((folder / "dataset.json").read_text())
    assert info["labels"] == [*tiny.classes, "kids"] and info["split_policy"] == "published"
    assert sum(info["counts"]["train"].values()) == len(tiny.splits["train"])
    assert set(df.loc[df["kids"], "id"]) == set(tiny.kids) - set(tiny.unpublished)


def test_classes_drop_and_cap(tiny_validated, tmp_path):
    tiny = tiny_validated.source
    manifest = tiny_validated.manifest / "manifest.parquet"
    two = tiny.classes[:2]
    res = subset(manifest, tmp_path / "a", params(tiny, classes=two, max_per_class=5))
    df = read_manifest(tmp_path / "a")
    assert sorted(df["category"].unique()) == sorted(two)
    assert df["category"].value_counts().max() == 5 and res.capped == 2 * (12 - 5)
    assert res.dropped_labels == {"Not sure": 1, "Skip": 1}
    again = read_manifest(subset(manifest, tmp_path / "b", params(tiny, classes=two, max_per_class=5)).out)
    assert sorted(again["id"]) == sorted(df["id"])  # seeded
    seven = params(tiny, classes=two, max_per_class=5, seed=7)
    other = read_manifest(subset(manifest, tmp_path / "c", seven).out)
    assert sorted(other["id"]) != sorted(df["id"])


def test_dropped_labels_come_from_params(tiny_validated, tmp_path):
    tiny = tiny_validated.source
    res = subset(tiny_validated.manifest / "manifest.parquet", tmp_path / "s",
                 params(tiny, drop_labels=["Pants"], split={"policy": "grouped",
                        "shares": {"train": 0.8, "validation": 0.1, "test": 0.1}}, classes=None))
    df = read_manifest(tmp_path / "s")
    in_csv = (pd.read_csv(tiny.root / "images.csv")["label"] == "Pants").sum()
    assert res.dropped_labels["Pants"] == in_csv >= 12 and "Pants" not in set(df["label"])
    # with no class list and no drop of Not sure/Skip they become classes of their own
    assert {"not sure", "skip"} <= set(df["category"])


def test_grouped_split_keeps_each_sender_in_one_split(tiny_validated, tmp_path):
    tiny = tiny_validated.source
    res = subset(tiny_validated.manifest / "manifest.parquet", tmp_path / "g", params(tiny, split={
        "policy": "grouped", "shares": {"train": 0.6, "validation": 0.2, "test": 0.2}}))
    df = read_manifest(tmp_path / "g")
    assert (df.groupby("sender_id")["split"].nunique() == 1).all()
    assert set(df["split"]) == {"train", "validation", "test"} and res.counts["train"] > res.counts["test"]
    assert set(df.loc[df["split"] == "train", "category"]) == set(tiny.classes)
    info = json.loads((tmp_path / "g" / "dataset.json").read_text())
    assert info["split_policy"] == "grouped" and info["expected_shares"]["train"] == pytest.approx(0.6)


def test_grouped_split_is_stratified_on_a_larger_population(tmp_path):
    """Many senders: every split gets close to its share of every class."""
    from fashionrec.data.subset import grouped_split

    rows = [{"sender_id": s, "category": c} for s in range(200) for c in ("a", "b", "c")[: 1 + s % 3]
            for _ in range(1 + s % 4)]
    df = pd.DataFrame(rows)
    split = grouped_split(df, {"train": 0.8, "validation": 0.1, "test": 0.1}, seed=1)
    shares = pd.crosstab(df["category"], split, normalize="index")
    assert (shares["train"] - 0.8).abs().max() < 0.02 and (shares["test"] - 0.1).abs().max() < 0.02
    assert (df.assign(split=split).groupby("sender_id")["split"].nunique() == 1).all()


def test_pinned_photos_keep_their_split_and_move_no_other(tmp_path):
    """Photos added later (pinned in the additions' splits.csv) keep their recorded split; a pinned photo of
    a known sender follows its sender; and no photo of the earlier version changes split."""
    from fashionrec.data.subset import grouped_split

    shares = {"train": 0.7, "validation": 0.15, "test": 0.15}
    rows = [{"id": f"{s}-{i}", "sender_id": s, "category": "ab"[s % 2]}
            for s in range(60) for i in range(1 + s % 3)]
    base = pd.DataFrame(rows)
    before = grouped_split(base, shares, seed=3)
    known_sender = int(base["sender_id"].iloc[0])
    added = pd.DataFrame([{"id": "new-1", "sender_id": 900, "category": "a"},
                          {"id": "new-2", "sender_id": 900, "category": "b"},
                          {"id": "new-3", "sender_id": 901, "category": "a"},
                          {"id": "new-4", "sender_id": known_sender, "category": "b"}])
    df = pd.concat([base, added], ignore_index=True)
    pinned = {"new-1": "test", "new-2": "train", "new-3": "validation", "new-4": "test"}
    after = grouped_split(df, shares, seed=3, pinned=pinned)
    assert after.iloc[: len(base)].tolist() == before.tolist()
    got = dict(zip(df["id"], after, strict=True))
    assert got["new-1"] == got["new-2"] == "test"           # a new sender: its first pinned photo's split
    assert got["new-3"] == "validation"
    assert got["new-4"] == before.iloc[0]                   # a known sender keeps its split
    assert (df.assign(split=after).groupby("sender_id")["split"].nunique() == 1).all()


def test_bad_params_are_named(tiny_validated, tmp_path):
    tiny, manifest = tiny_validated.source, tiny_validated.manifest / "manifest.parquet"
    with pytest.raises(DataError, match=r"subset.classes: no images for \['hat'\]"):
        subset(manifest, tmp_path / "x", params(tiny, classes=["dress", "hat"]))
    with pytest.raises(DataError, match=r"subset.split.policy: 'random'"):
        subset(manifest, tmp_path / "x", params(tiny, split={"policy": "random"}))
    with pytest.raises(DataError, match=r"subset.split.shares"):
        subset(manifest, tmp_path / "x", params(tiny, split={"policy": "grouped", "shares": {"train": 1}}))



@pytest.mark.parametrize("column", ["label", "sender_id"])
def test_a_manifest_row_without_label_or_sender_is_named(tiny_validated, tmp_path, column):
    """The compact table holds codes, not the manifest's values: an empty label or sender stops the subset
    with the file, row and column, not deep inside the split."""
    import shutil

    import pyarrow as pa
    import pyarrow.parquet as pq

    tiny = tiny_validated.source
    folder = tmp_path / "manifest"
    shutil.copytree(tiny_validated.manifest, folder)
    table = pq.read_table(folder / "manifest.parquet")
    values = table.column(column).to_pylist()
    values[5] = None
    table = table.set_column(table.schema.get_field_index(column), column,
                             pa.array(values, type=table.schema.field(column).type))
    pq.write_table(table, folder / "manifest.parquet")
    with pytest.raises(DataError, match=rf"manifest.parquet: row 5: no {column}"):
        subset(folder / "manifest.parquet", tmp_path / "s", params(tiny))
    assert not (tmp_path / "s" / "manifest.parquet").exists()

# --- the catalog: every category over the minimum, kids included, grouped by sender ------------------


def test_catalog_keeps_senders_apart_and_benchmark_test_images_in_test(tiny_validated):
    tiny = tiny_validated.source
    df = read_manifest(tiny_validated.catalog)
    assert (df.groupby("sender_id")["split"].nunique() == 1).all()
    published_test = set(tiny.splits["test"])
    assert published_test <= set(df.loc[df["split"] == "test", "id"])
    # no photo of a published-test sender is trained or validated on
    assert set(df.loc[df["split"] != "test", "sender_id"]).isdisjoint(tiny.test_senders)
    # kids' photos outside the published split are in, as an attribute (never a category)
    assert set(tiny.kids) - set(tiny.small_ids()) <= set(df["id"])
    assert df.loc[df["kids"], "labels"].map(lambda labels: labels[-1] == "kids").all()
    assert "kids" not in set(df["category"])
    assert df.loc[df["split"] == "test", "kids"].sum() >= len(tiny.classes)  # kids in every split
    assert df.loc[df["split"] == "train", "kids"].any() and df.loc[df["split"] == "validation", "kids"].any()
    # the published label still corrects images.csv
    (wrong_id, wrong_label), = tiny.relabelled.items()
    assert df.set_index("id").loc[wrong_id, "category"] != wrong_label.lower()
    info = json.loads((tiny_validated.catalog / "dataset.json").read_text())
    assert info["subset"] == "catalog" and info["split_policy"] == "grouped"
    assert info["classes"] == sorted(tiny.classes)


def test_catalog_drops_small_categories_by_name_and_reports_why(tiny_validated, tmp_path, caplog):
    tiny = tiny_validated.source
    section = tiny_validated.params.section("subset")
    params = subset_params(section, "catalog")
    with caplog.at_level("WARNING", logger="fashionrec.data.subset"):
        res = subset(tiny_validated.manifest / "manifest.parquet", tmp_path / "c", params)
    assert res.under_minimum == tiny.small == {"hat": 3}
    assert "categories under min_per_class=5: hat (3)" in res.message and "hat (3)" in caplog.text
    report = json.loads((tmp_path / "c" / "dropped.json").read_text())
    reasons = {p["id"]: p["reason"] for p in report["photos"]}
    assert {reasons[i] for i in tiny.small_ids()} == {"category under subset.min_per_class"}
    assert {reasons[i] for i in tiny.dropped} == {"junk label (subset.drop_labels)"}
    assert report["n_kept"] == res.n_images and report["kids_dropped"] == 1
    table = (tmp_path / "c" / "dropped.md").read_text()
    assert "| category under subset.min_per_class | 3 | 1 | Hat 3 |" in table
    # a minimum nothing reaches is an error naming the parameter
    with pytest.raises(DataError, match=r"no category left with >= subset.min_per_class=100"):
        subset(tiny_validated.manifest / "manifest.parquet", tmp_path / "d", {**params, "min_per_class": 100})


def test_subset_params_merge_and_unknown_names(tiny_validated):
    section = tiny_validated.params.section("subset")
    bench = subset_params(section, "benchmark")
    assert bench["split"]["policy"] == "published" and bench["drop_labels"] == section["drop_labels"]
    assert subset_params(section, "catalog")["split"]["keep_in_test"] == "top10-splits.csv"
    with pytest.raises(DataError, match=r"no subset named 'shop'"):
        subset_params(section, "shop")


def test_shards_hold_webdataset_records_and_size_from_params(tiny_validated, tmp_path):
    """shard_size photos per shard, each `<id>.jpg` + `<id>.json` (its manifest record); the manifest is the
    same whatever the shard size, but for where each photo lies."""
    section = tiny_validated.params.section("subset")
    folder = tmp_path / "catalog"
    subset(tiny_validated.manifest / "manifest.parquet", folder,
           {**subset_params(section, "catalog"), "shard_size": 5})
    small, big = read_manifest(folder), read_manifest(tiny_validated.catalog)
    where = ["path", "shard", "abspath"]
    pd.testing.assert_frame_equal(small.drop(columns=where), big.drop(columns=where))
    for split, rows in small.groupby("split"):
        assert sorted(rows["shard"].unique()) == [f"shards/{split}-{i:06d}.tar"
                                                 for i in range((len(rows) + 4) // 5)]
    records = {}
    for shard in sorted((folder / "shards").iterdir()):
        photos = list(iter_shard(shard))
        assert 1 <= len(photos) <= 5 and all(set(parts) == {"jpg", "json"} for _, parts in photos)
        records.update({key: (json.loads(parts["json"]), parts["jpg"]) for key, parts in photos})
    assert sorted(records) == sorted(small["id"])
    for row in small.itertuples():
        meta, data = records[row.id]
        assert meta["split"] == row.split and meta["category"] == row.category and meta["kids"] == row.kids
        assert hashlib.sha256(data).hexdigest() == row.sha256 == meta["sha256"]
