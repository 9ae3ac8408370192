"""Pure pieces of training: schedules, losses, config parsing, the feature cache, tracking helpers."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from fashionrec.core.config import load_params
from fashionrec.core.errors import TrainingError
from fashionrec.core.tracking import data_version, flatten, tracking_uri
from fashionrec.models.base import ModelCard
from fashionrec.models.factory import build_model, new_card
from fashionrec.models.losses import LossConfig, compute_loss, smooth_targets, supcon_loss, triplet_loss
from fashionrec.train.config import train_config
from fashionrec.train.data import shift_flip, to_input
from fashionrec.train.features import FeatureCache
from fashionrec.train.loop import lr_factor

ROOT = Path(__file__).resolve().parents[2]


# --- schedules ---------------------------------------------------------------------------------------


def test_cosine_warms_up_linearly_then_decays_to_zero() -> None:
    factors = [lr_factor(s, 100, 10, "cosine") for s in range(101)]
    assert factors[0] == pytest.approx(0.1) and factors[9] == pytest.approx(1.0)
    assert factors[10] == pytest.approx(1.0)
    assert factors[55] == pytest.approx(0.5, abs=1e-9)
    assert factors[100] == pytest.approx(0.0, abs=1e-12)
    assert all(a >= b for a, b in zip(factors[10:], factors[11:], strict=False))


def test_onecycle_rises_to_the_peak_then_anneals() -> None:
    f = [lr_factor(s, 100, 0, "onecycle", pct_start=0.25) for s in range(100)]
    assert f[0] == pytest.approx(0.04) and max(f) == pytest.approx(1.0) and f.index(max(f)) == 25
    assert f[99] < 0.001
    assert lr_factor(7, 100, 5, "constant") == 1.0


# --- losses ------------------------------------------------------------------------------------------


def test_label_smoothing_moves_binary_targets_towards_one_half() -> None:
    t = torch.tensor([[1.0, 0.0]])
    assert torch.allclose(smooth_targets(t, 0.1), torch.tensor([[0.95, 0.05]]))


def test_supcon_is_low_when_groups_cluster_and_high_when_they_mix() -> None:
    groups = torch.tensor([0, 0, 1, 1])
    clustered = F.normalize(torch.tensor([[1.0, 0.0], [1.0, 0.01], [0.0, 1.0], [0.01, 1.0]]), dim=1)
    mixed = F.normalize(torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.01], [0.01, 1.0]]), dim=1)
    assert supcon_loss(clustered, groups, 0.1) < 0.01 < 5 < supcon_loss(mixed, groups, 0.1)
    # hand-computed: two samples per group, each anchor has one positive among 3 candidates
    emb = F.normalize(torch.eye(4)[:, :4], dim=1)
    expected = -math.log(1.0 / 3.0)  # all similarities 0: uniform over the 3 others
    assert supcon_loss(emb, groups, 0.5).item() == pytest.approx(expected, rel=1e-6)


def test_batch_hard_triplet_uses_the_hardest_pair() -> None:
    emb = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.5, 0.0]])
    groups = torch.tensor([0, 0, 1])
    # anchor 0: hardest positive at 1.0, hardest negative at 0.5 -> relu(1.0 - 0.5 + 0.2) = 0.7
    # anchor 1: positive 1.0, negative 0.5 -> 0.7 ; anchor 2 has no positive (skipped)
    assert triplet_loss(emb, groups, 0.2).item() == pytest.approx(0.7)
    assert triplet_loss(emb, torch.tensor([0, 1, 2]), 0.2).item() == 0.0


def test_compute_loss_adds_ce_and_metric_parts_and_weights_samples() -> None:
    logits = torch.tensor([[4.0, -4.0, -4.0], [-4.0, 4.0, -4.0]])
    targets = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 1.0]])
    emb = F.normalize(torch.randn(2, 4), dim=1)
    base, parts = compute_loss(LossConfig(n_classes=2), emb, logits, targets)
    assert set(parts) == {"classification"}
    with_ce, _ = compute_loss(LossConfig(n_classes=2, ce_weight=1.0), emb, logits, targets)
    assert with_ce > base
    triplet = LossConfig(n_classes=2, metric_loss="triplet", metric_weight=1.0)
    total, parts = compute_loss(triplet, emb, logits, targets)
    assert set(parts) == {"classification", "metric"}
    # all weight on the second sample (whose kids label is missed) -> larger loss than uniform
    weighted, _ = compute_loss(LossConfig(n_classes=2), emb, logits, targets, torch.tensor([0.0, 1.0]))
    assert weighted > base


# --- configs and models ------------------------------------------------------------------------------


def test_candidate_blocks_of_the_project_params_parse() -> None:
    params = load_params(ROOT / "params.yaml")
    section = params.section("train")
    assert set(section["recipes"]["cpu"]) | set(section["recipes"]["cuda"]) <= set(section["models"])
    for name, block in section["models"].items():
        train_config(name, block)
        card = new_card(name, block, ["a", "b"], ["a", "b", "kids"])
        assert card.embedding_dim > 0 and card.prep.size > 0


def test_types_are_checked_and_lists_become_tuples() -> None:
    cfg = train_config("x", {"arch": "simple_cnn", "crop_scale": [0.5, 1], "lr": 1})
    assert cfg.crop_scale == (0.5, 1) and isinstance(cfg.lr, float)
    with pytest.raises(TrainingError, match=r"train\.models\.x\.augment: expected bool"):
        train_config("x", {"arch": "simple_cnn", "augment": "yes"})
    with pytest.raises(TrainingError, match=r"train\.models\.x\.variant: 'b7'"):
        new_card("x", {"arch": "efficientnet", "variant": "b7"}, ["a"], ["a"])


def test_pixels_logits_follow_the_nearest_centroid() -> None:
    card = new_card("pixels", {"arch": "pixels", "size": 4}, ["a", "b"], ["a", "b", "kids"])
    model = build_model(card)
    a, b = torch.ones(1, 3, 4, 4), -torch.ones(1, 3, 4, 4)
    embs = model.embed(torch.cat([a, a, b]))
    model.fit_once(embs, torch.tensor([[1.0, 0, 0], [1, 0, 1], [0, 1, 0]]))
    emb, logits = model(torch.cat([a * 0.5, b * 2]))
    assert torch.allclose(emb.norm(dim=1), torch.ones(2))
    assert logits[0, 0] > 0 > logits[0, 1] and logits[1, 1] > 0 > logits[1, 0]
    # kids: positive centroid = a's, negative = mean of a and b -> a-like image is closer to positive
    assert logits[0, 2] > 0 > logits[1, 2]


def test_efficientnet_split_forward_equals_the_whole_forward() -> None:
    card = new_card("e", {"arch": "efficientnet", "size": 64, "trainable_blocks": 5}, ["a", "b"], ["a", "b"])
    model = build_model(card, pretrained=True).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        emb, logits = model(x)
        emb2, logits2 = model.head(model.cached_pooled(model.trunk(x, model.split)))
    assert model.split == len(model.blocks) - 5
    assert torch.allclose(emb, emb2, atol=1e-5) and torch.allclose(logits, logits2, atol=1e-4)
    assert isinstance(model.card, ModelCard)


def test_pca_embedding_projects_on_the_top_principal_axes() -> None:
    block = {"arch": "efficientnet", "size": 64, "embedding": "pca", "embedding_dim": 2}
    model = build_model(new_card("e", block, ["a", "b"], ["a", "b"])).eval()
    g = torch.Generator().manual_seed(0)
    pooled = torch.randn(500, 1280, generator=g) * 0.01
    pooled[:, 7] += 5.0 * torch.randn(500, generator=g)       # the largest variance
    pooled[:, 3] += 2.0 * torch.randn(500, generator=g)       # the second
    pooled += 1.0                                              # an offset the mean removes
    model.fit_embedding(pooled)
    basis = model.pca_basis
    assert torch.allclose(basis.T @ basis, torch.eye(2), atol=1e-5)
    assert basis[7, 0].abs() > 0.99 and basis[3, 1].abs() > 0.99
    emb, logits = model.head(pooled[:4])
    assert emb.shape == (4, 2) and torch.allclose(emb.norm(dim=1), torch.ones(4), atol=1e-5)
    before = basis.clone()
    model.fit_embedding(pooled)
    assert torch.equal(before, model.pca_basis)               # deterministic, signs included
    centered = build_model(new_card("e", {**block, "embedding": "centered"}, ["a", "b"], ["a", "b"])).eval()
    centered.fit_embedding(pooled)
    emb, _ = centered.head(pooled[:4])
    assert emb.shape == (4, 1280) and centered.card.embedding_dim == 1280
    assert torch.allclose(emb, F.normalize(pooled[:4] - pooled.double().mean(0).float(), dim=1), atol=1e-5)
    with pytest.raises(TrainingError, match="embedding_dim: 2000 must be between"):
        new_card("e", {**block, "embedding_dim": 2000}, ["a"], ["a"])


# --- augmentation and the cache ----------------------------------------------------------------------


def test_shift_flip_is_seeded_and_keeps_shape_and_dtype() -> None:
    pixels = torch.randint(0, 255, (6, 16, 16, 3), dtype=torch.uint8)
    a = shift_flip(pixels, torch.Generator().manual_seed(1), 2)
    b = shift_flip(pixels, torch.Generator().manual_seed(1), 2)
    assert a.shape == pixels.shape and a.dtype == torch.uint8 and torch.equal(a, b)
    assert not torch.equal(a, pixels)
    x = to_input(pixels, new_card("p", {"arch": "pixels", "size": 16}, ["a"], ["a"]).prep)
    assert x.shape == (6, 3, 16, 16) and x.min() >= -1 and x.max() <= 1


def test_feature_cache_computes_only_missing_images_and_keys_on_spec(tmp_path: Path) -> None:
    calls: list[list[int]] = []

    def compute(indices: list[int]):
        calls.append(list(indices))
        for i in indices:
            yield i, np.full(3, i, np.float32)

    cache = FeatureCache(tmp_path, "t", {"v": 1})
    first = cache.fetch(["aa11", "bb22"], compute)
    assert first.tolist() == [[0, 0, 0], [1, 1, 1]]
    second = cache.fetch(["bb22", "cc33", "aa11"], compute)
    assert calls == [[0, 1], [1]]  # only cc33 (index 1 of the second call) was computed
    assert second[:, 0].tolist() == [1, 1, 0]
    assert FeatureCache(tmp_path, "t", {"v": 2}).dir != cache.dir
    assert not list(cache.dir.rglob("*.tmp"))


# --- tracking ----------------------------------------------------------------------------------------


def test_data_version_reads_dvc_lock_then_falls_back_to_the_manifest_hash(tmp_path: Path) -> None:
    manifest = tmp_path / "m.parquet"
    manifest.write_bytes(b"rows")
    assert data_version(tmp_path, manifest).startswith("sha256:")
    (tmp_path / "dvc.lock").write_text(
        "schema: '2.0'\nstages:\n  subset:\n    cmd: fashionrec subset\n    outs:\n"
        "    - path: data/subset\n      hash: md5\n      md5: 0123abcd.dir\n")
    assert data_version(tmp_path, manifest) == "0123abcd.dir"
    assert data_version(tmp_path / "nowhere") == "unknown"


def test_tracking_uri_defaults_to_sqlite_in_the_project_unless_the_env_says_otherwise(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "params.yaml").write_text("mlflow:\n  tracking_uri: sqlite:///mlflow/mlflow.db\n")
    params = load_params(tmp_path / "params.yaml")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert tracking_uri(params) == f"sqlite:///{tmp_path / 'mlflow' / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:1")
    assert tracking_uri(params) == "http://127.0.0.1:1"
    assert flatten({"a": {"b": 1, "c": [1, 2]}}) == {"a.b": "1", "a.c": "[1, 2]"}
