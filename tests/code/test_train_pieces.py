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
from fashionrec.evaluate.metrics import f1_threshold, prevalence_threshold
from fashionrec.models.base import ModelCard
from fashionrec.models.factory import build_model, new_card
from fashionrec.models.losses import LossConfig, compute_loss, smooth_targets, supcon_loss, triplet_loss
from fashionrec.train.config import train_config
from fashionrec.train.data import Split, TrainingData, shift_flip, to_input
from fashionrec.train.features import FeatureCache
from fashionrec.train.loop import lr_factor, sample_weights

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


# --- rare attributes (kids) and the final fit ----------------------------------------------------------


def _data(train_targets: list[list[float]], val_targets: list[list[float]]) -> TrainingData:
    """TrainingData over classes a, b and the attribute kids, from multi-hot rows."""
    def split(name: str, rows: list[list[float]]) -> Split:
        t = np.array(rows, np.float32)
        ids = [f"{name}{i}" for i in range(len(rows))]
        return Split(name, ids, [f"/{i}.jpg" for i in ids], [f"sha{i}" for i in ids], t,
                     t[:, :2].argmax(1).astype(np.int64))

    return TrainingData(["a", "b"], ["a", "b", "kids"], split("train", train_targets),
                        split("validation", val_targets), Path("m.parquet"))


def test_prevalence_threshold_accepts_the_share_scored_highest() -> None:
    scores = np.array([0.9, 0.1, 0.8, 0.3, 0.7, 0.2, 0.6, 0.4, 0.5, 0.05])
    assert prevalence_threshold(scores, 0.3) == pytest.approx(0.65)      # 0.9, 0.8, 0.7 accepted
    assert ((scores >= prevalence_threshold(scores, 0.3)).sum()) == 3
    assert prevalence_threshold(scores, 0.01) == pytest.approx(0.85)     # at least the top one
    assert prevalence_threshold(scores, 1.0) == pytest.approx(0.025)     # every one
    assert prevalence_threshold(scores, 0.0) == 0.5 and prevalence_threshold(np.zeros(0), 0.2) == 0.5


def test_f1_threshold_picks_the_best_cut_between_scores() -> None:
    # sorted: 0.9 (pos), 0.8 (neg), 0.3 (pos), 0.2 (neg), 0.1 (neg)
    scores, truth = np.array([0.1, 0.9, 0.3, 0.8, 0.2]), np.array([0, 1, 1, 0, 0], bool)
    # accepting down to 0.9: F1 2/3; to 0.8: 1/2; to 0.3: 4/5 (best); to 0.2: 2/3 -> between 0.3 and 0.2
    assert f1_threshold(scores, truth) == pytest.approx(0.25)
    # a tie at the cut is accepted or refused as a whole
    assert f1_threshold(np.array([0.6, 0.6, 0.1]), np.array([1, 0, 0], bool)) == pytest.approx(0.35)
    assert f1_threshold(np.array([0.2, 0.4]), np.array([0, 0], bool)) == 0.5
    with pytest.raises(ValueError, match="3 scores for 2 truths"):
        f1_threshold(np.zeros(3), np.zeros(2, bool))


def test_attribute_pos_weight_is_negatives_over_positives_and_weights_the_positive_term() -> None:
    data = _data([[1, 0, 1], [1, 0, 0], [0, 1, 0], [0, 1, 0]], [[1, 0, 0]])
    assert data.attribute_pos_weight() == (1.0, 1.0, 3.0)
    assert _data([[1, 0, 0], [0, 1, 0]], [[1, 0, 1]]).attribute_pos_weight() == (1.0, 1.0, 1.0)
    logits = torch.tensor([[2.0, -2.0, -1.0]])
    targets = torch.tensor([[1.0, 0.0, 1.0]])
    emb = F.normalize(torch.ones(1, 4), dim=1)
    plain, _ = compute_loss(LossConfig(n_classes=2), emb, logits, targets)
    weighted, _ = compute_loss(LossConfig(n_classes=2, pos_weight=(1.0, 1.0, 3.0)), emb, logits, targets)
    # only the kids term (a missed positive) changes: 3x its BCE, averaged over the 3 labels
    kids_bce = F.binary_cross_entropy_with_logits(torch.tensor(-1.0), torch.tensor(1.0))
    assert float(weighted - plain) == pytest.approx(float(2 * kids_bce / 3), rel=1e-5)


def test_group_weights_multiply_the_photos_of_a_group_and_refuse_unknown_names() -> None:
    data = _data([[1, 0, 1], [1, 0, 0], [0, 1, 1]], [[1, 0, 0]])
    assert data.group_weights({"kids": 3.0}, "w").tolist() == [3.0, 1.0, 3.0]
    cfg = train_config("x", {"arch": "simple_cnn", "class_weights": "balanced", "group_weights": {"kids": 2}})
    assert cfg.group_weights == {"kids": 2.0}
    # category weights (a: 2 photos, b: 1 -> b weighs twice a's, mean 1) times the group's
    assert sample_weights(data, cfg, "w") == pytest.approx(np.array([0.75, 0.75, 1.5]) * [2, 1, 2])
    assert sample_weights(data, train_config("x", {"arch": "simple_cnn"}), "w") is None
    with pytest.raises(TrainingError, match=r"w\.group_weights: \['teens'\] are not attributes"):
        data.group_weights({"teens": 2.0}, "w")


def test_validation_joins_train_for_the_final_fit() -> None:
    data = _data([[1, 0, 1], [0, 1, 0]], [[0, 1, 1]])
    final = data.with_validation_in_train()
    assert final.train.ids == ["train0", "train1", "validation0"]
    assert final.train.category.tolist() == [0, 1, 1] and final.train.targets[2].tolist() == [0, 1, 1]
    assert final.validation.ids == ["validation0"] and len(data.train) == 2


@pytest.mark.parametrize(("block", "message"), [
    ({"fit_on": "train+validation"}, r"x\.epochs_source: None must say where `epochs` came from"),
    ({"fit_on": "train+validation", "epochs_source": "  "}, r"x\.epochs_source"),
    ({"fit_on": "everything"}, r"x\.fit_on: 'everything' is not one of"),
    ({"attribute_pos_weight": "auto"}, r"x\.attribute_pos_weight: 'auto' is not one of"),
    ({"attribute_threshold": 0.3}, r"x\.attribute_threshold: expected str"),
    ({"attribute_threshold": "carried", "thresholds_source": "run 1"},
     r"x\.carried_thresholds: None must map"),
    ({"attribute_threshold": "carried", "carried_thresholds": {"kids": 0.9}},
     r"x\.thresholds_source: None must say"),
    ({"attribute_threshold": "carried", "carried_thresholds": {"kids": 1.5}, "thresholds_source": "run 1"},
     r"x\.carried_thresholds: .* must be sigmoid thresholds in \(0, 1\)"),
    ({"fit_on": "train+validation", "epochs_source": "run 1", "attribute_threshold": "prevalence"},
     r"x\.attribute_threshold: 'prevalence' chooses on photos a final fit"),
    ({"group_weights": {"kids": -1.0}}, r"x\.group_weights: .* must map attribute names to positive"),
    ({"group_weights": {"kids": "x"}}, r"x\.group_weights: expected a mapping of names to float"),
    ({"group_weights": ["kids"]}, r"x\.group_weights: expected a mapping"),
])
def test_final_fit_and_attribute_keys_are_checked(block: dict, message: str) -> None:
    with pytest.raises(TrainingError, match=message):
        train_config("x", {"arch": "simple_cnn", **block})
    ok = train_config("x", {"arch": "simple_cnn", "fit_on": "train+validation", "epochs_source": "run 1"})
    assert ok.final_fit and not train_config("x", {"arch": "simple_cnn"}).final_fit


def test_zoom_views_frame_the_centre_closer_and_mirror_it() -> None:
    from fashionrec.train.features import view_of

    x = torch.zeros(1, 3, 20, 20)
    x[..., :, :10] = 1.0                         # left half white, right half black
    x[..., 8:12, 8:12] += 2.0                     # a 4 x 4 centre square
    assert torch.equal(view_of(x, "center", 0.5), x)
    assert torch.equal(view_of(x, "hflip", 0.5), x.flip(3))
    zoom = view_of(x, "zoom", 0.5)                # the central 10 x 10, resized to 20 x 20
    assert zoom.shape == x.shape
    assert (zoom[..., 7:13, 7:13] >= 2.0).all()   # the square now spans about 8 x 8 pixels
    assert (zoom[..., 0, 0] == 1.0).all() and (zoom[..., 0, -1] == 0.0).all()
    assert torch.equal(view_of(x, "zoom_hflip", 0.5), zoom.flip(3))
    with pytest.raises(TrainingError, match=r"x\.zoom: 1\.2 must be in \[0\.3, 1\)"):
        train_config("x", {"arch": "efficientnet", "zoom": 1.2})
    with pytest.raises(TrainingError, match=r"x\.views: .* must be a non-empty list of"):
        train_config("x", {"arch": "efficientnet", "views": ["center", "tilt"]})
