"""Confident learning on the training split (`fashionrec label-review`): labels deliberately flipped are
found, through the real candidate (ImageNet backbone, the training's feature cache) and cleanlab."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from fashionrec.core.errors import TrainingError
from fashionrec.data.manifest import read_manifest
from fashionrec.data.reviewed import read_review
from fashionrec.data.subset import subset, subset_params
from fashionrec.train.label_issues import (
    CONTACT,
    DRAFT,
    SHEET,
    SHEET_COLUMNS,
    SUMMARY,
    find_issues,
    label_review,
    out_of_fold_probs,
)

SECTION = {"candidate": "efficientnet_lite0", "features": "backbone", "folds": 3, "group_by_sender": True,
           "c": 1.0, "max_iter": 1000, "filter_by": "prune_by_noise_rate", "relabel_confidence": 0.5,
           "contact_sheet": 16, "thumb_size": 48}


def test_flipped_labels_of_separable_features_are_found() -> None:
    """Four separated clusters, 12 labels flipped at random: the flipped photos are the 12 least
    self-confident, each suggests its true label, and confident learning flags them (it is conservative:
    a flip whose true class is not confidently predicted, or a rare pair rounded away, may go unflagged)."""
    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(4), 100)
    x = rng.normal(size=(400, 4)) + 5.0 * np.eye(4)[y]
    flipped = rng.choice(400, 12, replace=False)
    noisy = y.copy()
    noisy[flipped] = (y[flipped] + 1 + rng.integers(0, 3, 12)) % 4
    probs = out_of_fold_probs(x, noisy, 4, folds=5, seed=0, groups=np.arange(400) // 3)
    assert probs.shape == (400, 4) and np.allclose(probs.sum(1), 1.0)
    mask, self_conf = find_issues(noisy, probs, "prune_by_noise_rate")
    assert set(np.argsort(self_conf, kind="stable")[:12]) == set(flipped)
    assert (probs[flipped].argmax(1) == y[flipped]).all()   # the suggestion is the true label
    found = set(np.flatnonzero(mask))
    assert len(found & set(flipped)) >= 10 and len(found - set(flipped)) <= 1
    # with the flips undone, nothing (or next to nothing) is flagged
    clean_mask, _ = find_issues(y, out_of_fold_probs(x, y, 4, folds=5, seed=0, groups=np.arange(400) // 3),
                                "prune_by_noise_rate")
    assert clean_mask.sum() <= 1


def test_too_few_folds_or_groups_are_refused() -> None:
    x, y = np.zeros((6, 2)), np.array([0, 1, 0, 1, 0, 1])
    with pytest.raises(TrainingError, match="label_review.folds: 1; need at least 2"):
        out_of_fold_probs(x, y, 2, folds=1, seed=0)
    with pytest.raises(TrainingError, match="3 folds need at least as many senders"):
        out_of_fold_probs(x, y, 2, folds=3, seed=0, groups=np.array([1, 1, 1, 2, 2, 2]))


def flipped_subset(tiny_validated, folder: Path, n: int) -> dict[str, tuple[str, str]]:
    """The tiny catalog with `n` train photos of distinct categories given the next category
    (through a reviewed list, the subset's own relabelling): {id: (true, wrong)}."""
    df = read_manifest(tiny_validated.catalog)
    train = df[(df["split"] == "train") & df["category"].isin(tiny_validated.source.classes)]
    chosen = train.sort_values("id").drop_duplicates("category").iloc[:n]
    classes = sorted(tiny_validated.source.classes)
    assert len(chosen) == n
    flips = {r.id: (r.category, classes[(classes.index(r.category) + 1) % len(classes)])
             for r in chosen.itertuples()}
    review = folder.parent / "flips.csv"
    pd.DataFrame([{"image_id": i, "action": "relabel", "label": wrong, "note": "flipped by the test"}
                  for i, (_, wrong) in flips.items()]).to_csv(review, index=False)
    params = subset_params(tiny_validated.params.section("subset"), "catalog")
    subset(tiny_validated.manifest / "manifest.parquet", folder, {**params, "label_review": str(review)})
    return flips


def test_label_review_finds_flipped_training_labels(tiny_validated, tmp_path: Path) -> None:
    flips = flipped_subset(tiny_validated, tmp_path / "catalog", 4)
    train_section = tiny_validated.params.section("train")
    train_section["models"]["efficientnet_lite0"].update({"size": 64})
    out = tmp_path / "labels"
    result = label_review(tmp_path / "catalog" / "manifest.parquet", out, SECTION, train_section,
                          cache_dir=tmp_path / "cache", models_dir=tmp_path / "models", seed=0)

    sheet = pd.read_csv(out / SHEET, dtype={"image_id": str})
    assert list(sheet.columns) == SHEET_COLUMNS
    assert set(flips) <= set(sheet["image_id"]), (flips, sheet)
    assert result.n_issues == len(sheet) <= len(flips) + 3
    by_id = sheet.set_index("image_id")
    for image_id, (true, wrong) in flips.items():
        assert by_id.loc[image_id, "given"] == wrong and by_id.loc[image_id, "suggested"] == true
    assert sheet["self_confidence"].is_monotonic_increasing
    assert by_id["shard"].str.startswith("shards/train-").all()

    # the draft is a valid reviewed list that would undo the flips (relabel to the true category)
    draft = read_review(out / DRAFT)
    assert {r.image_id: (r.action, r.label) for r in draft if r.image_id in flips} == \
        {i: ("relabel", true) for i, (true, _) in flips.items()}
    summary = json.loads((out / SUMMARY).read_text())
    assert summary["n_issues"] == len(sheet) and summary["n_train"] == result.n_train
    assert sum(summary["by_pair"].values()) == len(sheet)
    assert (out / CONTACT).stat().st_size > 10_000
    # the features went through the training's cache: a second review reads it (same spec, same folder)
    cached = sorted(p.name for p in (tmp_path / "cache").iterdir())
    assert len(cached) == 1 and cached[0].startswith("efficientnet-lite0-")


def test_label_review_refuses_a_candidate_without_a_backbone(tiny_validated, tmp_path: Path) -> None:
    train_section = tiny_validated.params.section("train")
    with pytest.raises(TrainingError, match="'simple_cnn' is not an efficientnet candidate"):
        label_review(tiny_validated.catalog_validated / "manifest.parquet", tmp_path, {
            **SECTION, "candidate": "simple_cnn"}, train_section, cache_dir=tmp_path / "c",
            models_dir=tmp_path / "m", seed=0)


def test_cli_writes_the_review_sheet_where_params_say(tiny_validated, tmp_path: Path) -> None:
    """`fashionrec label-review` reads params.yaml (paths relative to it) and writes the four files."""
    flips = flipped_subset(tiny_validated, tmp_path / "catalog", 4)
    root = Path(__file__).resolve().parents[2]
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
           "PYTHONPATH": str(root / "src"), "MLFLOW_DISABLE_TELEMETRY": "true"}
    sets = {"train.manifest": tmp_path / "catalog" / "manifest.parquet", "train.cache_dir": tmp_path / "c",
            "train.models.efficientnet_lite0.size": 64, "label_review.folds": 3, "label_review.c": 1.0,
            "label_review.out": tmp_path / "labels", "label_review.contact_sheet": 8}
    proc = subprocess.run(["fashionrec", "label-review", "-p", str(tiny_validated.root / "params.yaml"),
                           *[a for k, v in sets.items() for a in ("-s", f"{k}={v}")]],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout)
    assert result["out"] == str(tmp_path / "labels") and result["files"] == [SHEET, CONTACT, DRAFT, SUMMARY]
    assert all((tmp_path / "labels" / name).is_file() for name in result["files"])
    assert set(flips) <= set(pd.read_csv(tmp_path / "labels" / SHEET, dtype=str)["image_id"])


def test_trained_features_come_from_the_saved_candidate(tiny_validated, tmp_path: Path) -> None:
    """`features: trained` reads models/<candidate>/ and refuses one trained on other categories."""
    from fashionrec.data.manifest import read_dataset
    from fashionrec.models.factory import build_model, new_card
    from fashionrec.models.store import save_model

    flips = flipped_subset(tiny_validated, tmp_path / "catalog", 4)
    info = read_dataset(tmp_path / "catalog")
    block = {"arch": "efficientnet", "variant": "lite0", "size": 64}
    train_section = tiny_validated.params.section("train")
    train_section["models"]["efficientnet_lite0"].update({"size": 64})
    section = {**SECTION, "features": "trained"}
    save_model(build_model(new_card("efficientnet_lite0", block, info["classes"], info["labels"]),
                           pretrained=True), tmp_path / "models" / "efficientnet_lite0")
    result = label_review(tmp_path / "catalog" / "manifest.parquet", tmp_path / "labels", section,
                          train_section, cache_dir=tmp_path / "cache", models_dir=tmp_path / "models", seed=0)
    assert result.features == "trained" and result.n_train == 32
    assert set(flips) <= set(pd.read_csv(tmp_path / "labels" / SHEET, dtype=str)["image_id"])

    other = info["classes"][:-1]
    save_model(build_model(new_card("efficientnet_lite0", block, other, other), pretrained=False),
               tmp_path / "other" / "efficientnet_lite0")
    with pytest.raises(TrainingError, match="trained on categories"):
        label_review(tmp_path / "catalog" / "manifest.parquet", tmp_path / "x", section, train_section,
                     cache_dir=tmp_path / "cache", models_dir=tmp_path / "other", seed=0)
