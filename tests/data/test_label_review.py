"""The reviewed list of label fixes (`subset.label_review`): applied by the subset stage to the train split
only, exactly the named rows, every applied row recorded; a bad row fails the stage naming its line."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from fashionrec.core.errors import DataError
from fashionrec.data.manifest import read_manifest
from fashionrec.data.subset import REVIEWED, subset, subset_params


def catalog(tiny_validated, folder: Path, review: Path | None = None):
    params = subset_params(tiny_validated.params.section("subset"), "catalog")
    if review is not None:
        params["label_review"] = str(review)
    return subset(tiny_validated.manifest / "manifest.parquet", folder, params)


def write_review(path: Path, rows: list[dict[str, str]],
                 columns: tuple[str, ...] = ("image_id", "action", "label", "note")) -> Path:
    pd.DataFrame(rows, columns=list(columns)).to_csv(path, index=False)
    return path


def test_reviewed_list_drops_and_relabels_exactly_the_named_train_rows(tiny_validated, tmp_path):
    before = read_manifest(tiny_validated.catalog).set_index("id")
    train = before[before["split"] == "train"].sort_index()
    drop_ids = list(train.index[:2])
    relabel_id = train.index[2]
    new_label = next(c for c in sorted(before["category"].unique()) if c != train.loc[relabel_id, "category"])
    review = write_review(tmp_path / "review.csv", [
        {"image_id": drop_ids[0], "action": "drop", "label": "", "note": "not a garment"},
        {"image_id": relabel_id, "action": "relabel", "label": new_label.upper(), "note": "crowd miss"},
        {"image_id": drop_ids[1], "action": "drop", "label": "", "note": ""}])
    res = catalog(tiny_validated, tmp_path / "catalog", review)
    after = read_manifest(tmp_path / "catalog").set_index("id")

    assert set(before.index) - set(after.index) == set(drop_ids)
    assert after.loc[relabel_id, "category"] == new_label and after.loc[relabel_id, "labels"][0] == new_label
    assert after.loc[relabel_id, "label"] == before.loc[relabel_id, "label"]   # the source label is kept
    others = after.index.drop(relabel_id)
    pd.testing.assert_series_equal(after.loc[others, "category"], before.loc[others, "category"])
    # the split of every other photo is the one the subset gives without the list
    pd.testing.assert_series_equal(after["split"], before.loc[after.index, "split"])

    info = json.loads((tmp_path / "catalog" / "dataset.json").read_text())
    record = info["label_review"]
    assert record["file"] == "review.csv" and record["split"] == "train"
    assert (record["rows"], record["dropped"], record["relabelled"]) == (3, 2, 1)
    assert [(r["line"], r["image_id"], r["action"], r["to"]) for r in record["applied"]] == [
        (2, drop_ids[0], "drop", None), (3, relabel_id, "relabel", new_label), (4, drop_ids[1], "drop", None)]
    assert record["applied"][1]["from"] == before.loc[relabel_id, "category"]
    assert sum(info["counts"]["train"].values()) == len(train) - 2
    plain = json.loads((tiny_validated.catalog / "dataset.json").read_text())["expected_shares"]
    n = len(before)
    assert info["expected_shares"]["train"] == pytest.approx((plain["train"] * n - 2) / (n - 2))
    assert sum(info["expected_shares"].values()) == pytest.approx(1.0)
    assert res.label_review["dropped"] == 2 and res.counts["train"] == len(train) - 2
    dropped = json.loads((tmp_path / "catalog" / "dropped.json").read_text())
    assert dropped["by_reason"][REVIEWED]["count"] == 2
    assert sorted(p["id"] for p in dropped["photos"] if p["reason"] == REVIEWED) == sorted(drop_ids)


def test_without_a_list_nothing_changes(tiny_validated, tmp_path):
    catalog(tiny_validated, tmp_path / "plain")
    info = json.loads((tmp_path / "plain" / "dataset.json").read_text())
    assert "label_review" not in info
    pd.testing.assert_frame_equal(read_manifest(tmp_path / "plain")[["id", "split", "category"]],
                                  read_manifest(tiny_validated.catalog)[["id", "split", "category"]])


def bad_rows(df: pd.DataFrame) -> list[tuple[list[dict[str, str]], str]]:
    train = df[df["split"] == "train"].sort_values("id")
    first, second = train.iloc[0], train.iloc[1]
    test_id = df.loc[df["split"] == "test", "id"].sort_values().iloc[0]
    ok = {"image_id": first["id"], "action": "drop", "label": "", "note": ""}
    return [
        ([ok, {"image_id": "no-such-photo", "action": "drop", "label": "", "note": ""}],
         "line 3: image 'no-such-photo' is not in subset 'catalog'"),
        ([ok, {"image_id": test_id, "action": "drop", "label": "", "note": ""}],
         f"line 3: image '{test_id}' is in the test split"),
        ([ok, {"image_id": second["id"], "action": "relabel", "label": "cardigan", "note": ""}],
         "line 3: label 'cardigan' is not a category of subset 'catalog'"),
        ([{"image_id": second["id"], "action": "relabel", "label": second["category"], "note": ""}],
         f"line 2: image '{second['id']}' is already labelled '{second['category']}'"),
        ([ok, {"image_id": second["id"], "action": "fix", "label": "", "note": ""}],
         "line 3: action 'fix' is not one of ['drop', 'relabel']"),
        ([ok, {"image_id": second["id"], "action": "relabel", "label": "", "note": ""}],
         f"line 3: relabel of '{second['id']}' names no label"),
        ([ok, {"image_id": second["id"], "action": "drop", "label": "dress", "note": ""}],
         f"line 3: drop of '{second['id']}' names a label"),
        ([ok, ok], f"line 3: image '{first['id']}' is already listed on line 2"),
        ([ok, {"image_id": " ", "action": "drop", "label": "", "note": ""}], "line 3: empty image_id"),
    ]


@pytest.mark.parametrize("case", range(9))
def test_a_bad_row_fails_the_stage_naming_its_line(tiny_validated, tmp_path, case):
    rows, message = bad_rows(read_manifest(tiny_validated.catalog))[case]
    review = write_review(tmp_path / "review.csv", rows)
    with pytest.raises(DataError) as err:
        catalog(tiny_validated, tmp_path / "catalog", review)
    assert str(err.value).startswith(f"{review}: {message}"), str(err.value)
    assert not (tmp_path / "catalog" / "manifest.parquet").exists()   # refused before writing anything


def test_a_list_without_its_columns_or_file_is_refused(tiny_validated, tmp_path):
    review = write_review(tmp_path / "review.csv", [{"image_id": "x", "verdict": "drop"}],
                          columns=("image_id", "verdict"))
    with pytest.raises(DataError, match=r"review.csv: missing columns \['action', 'label'\]"):
        catalog(tiny_validated, tmp_path / "a", review)
    with pytest.raises(DataError, match="absent.csv: reviewed list not found"):
        catalog(tiny_validated, tmp_path / "b", tmp_path / "absent.csv")
