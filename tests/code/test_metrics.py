"""Metric functions against hand-computed cases, and the seeded instance-query augmentation."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image
from sklearn.metrics import f1_score

from fashionrec.core.errors import EvaluationError
from fashionrec.data.images import Preprocessing
from fashionrec.evaluate import metrics as m
from fashionrec.evaluate.instance import Augmentation, augment, make_queries, sample_sources
from fashionrec.evaluate.retrieval import category_retrieval, instance_retrieval

# Four samples, four labels; label 3 is neither present nor predicted (its F1 is undefined).
TRUTH = np.array([[1, 0, 1, 0], [0, 1, 0, 0], [1, 1, 0, 0], [0, 0, 0, 0]], dtype=bool)
PRED = np.array([[1, 0, 0, 0], [0, 1, 1, 0], [1, 0, 0, 0], [0, 0, 0, 0]], dtype=bool)


def test_micro_and_macro_f1_by_hand() -> None:
    # label 0: tp 2 -> F1 1; label 1: tp 1, fn 1 -> 2/3; label 2: fp 1, fn 1 -> 0; label 3 left out.
    assert m.micro_f1(TRUTH, PRED) == pytest.approx(6 / 9)       # tp 3, fp 1, fn 2 pooled
    assert m.macro_f1(TRUTH, PRED) == pytest.approx(5 / 9)       # (1 + 2/3 + 0) / 3
    assert m.micro_f1(TRUTH, PRED) != pytest.approx(m.macro_f1(TRUTH, PRED))


def test_f1_matches_sklearn_definitions() -> None:
    rng = np.random.default_rng(0)
    truth = rng.random((50, 6)) < 0.3
    pred = rng.random((50, 6)) < 0.3
    pred[:, 5] = truth[:, 5] = False  # an undefined label, excluded from the macro mean
    assert m.micro_f1(truth, pred) == pytest.approx(f1_score(truth, pred, average="micro"))
    assert m.macro_f1(truth, pred) == pytest.approx(
        f1_score(truth, pred, average="macro", zero_division=np.nan))


def test_f1_edge_cases() -> None:
    empty = np.zeros((3, 2), dtype=bool)
    assert m.micro_f1(empty, empty) == 0.0 and m.macro_f1(empty, empty) == 0.0
    assert m.micro_f1(TRUTH, TRUTH) == 1.0 and m.macro_f1(TRUTH, TRUTH) == 1.0
    with pytest.raises(ValueError, match="shapes differ"):
        m.micro_f1(TRUTH, PRED[:, :3])


def test_per_label_report_and_confusion_matrix() -> None:
    report = m.per_label_report(TRUTH, PRED, ["a", "b", "c", "d"])
    row = report.set_index("label")
    assert row.loc["b", "precision"] == 1.0 and row.loc["b", "recall"] == 0.5
    assert row.loc["c", "precision"] == 0.0 and row.loc["c", "support"] == 1
    assert np.isnan(row.loc["d", "f1"]) and row.loc["d", "support"] == 0
    cm = m.confusion_matrix(np.array([0, 0, 1, 2, 2]), np.array([0, 1, 1, 2, 0]), 3)
    assert cm.tolist() == [[1, 1, 0], [0, 1, 0], [1, 0, 1]]
    assert m.accuracy(np.array([0, 0, 1, 2, 2]), np.array([0, 1, 1, 2, 0])) == pytest.approx(3 / 5)


RELEVANT = np.array([[1, 0, 1, 1, 0], [0, 0, 0, 0, 1]], dtype=bool)


def test_precision_hit_and_map_by_hand() -> None:
    assert m.precision_at_k(RELEVANT, 1) == pytest.approx(0.5)
    assert m.precision_at_k(RELEVANT, 5) == pytest.approx((3 / 5 + 1 / 5) / 2)
    assert m.hit_at_k(RELEVANT, 1) == 0.5
    assert m.hit_at_k(RELEVANT, 3) == 0.5
    assert m.hit_at_k(RELEVANT, 5) == 1.0
    # Row 0: P@1, P@3, P@4 at its hits = 1 + 2/3 + 3/4, over min(5, R=3); row 1: P@5 = 1/5 over 1.
    ap = m.average_precision_at_k(RELEVANT, 5, n_relevant=np.array([3, 1]))
    assert ap.tolist() == pytest.approx([(1 + 2 / 3 + 3 / 4) / 3, 1 / 5])
    assert m.map_at_k(RELEVANT, 5, np.array([3, 1])) == pytest.approx(((1 + 2 / 3 + 3 / 4) / 3 + 0.2) / 2)
    # Many relevant items in the inventory: the top 5 should all have been hits, so AP is lower.
    assert m.average_precision_at_k(RELEVANT, 5, np.array([10, 10]))[0] == pytest.approx(29 / 12 / 5)
    with pytest.raises(ValueError, match="k=6"):
        m.precision_at_k(RELEVANT, 6)


def test_category_retrieval_uses_inventory_categories() -> None:
    inventory = np.array(["dress"] * 10 + ["hat"] * 10)
    ranked = np.array([list(range(10)),                  # dress query: all ten are dresses
                       [10, 0, 11, 1, 12, 2, 13, 3, 14, 4]])  # hat query: hats at ranks 1, 3, 5, 7, 9
    out = category_retrieval(ranked, np.array(["dress", "hat"]), inventory)
    assert out["precision_at_1"] == 1.0
    assert out["precision_at_5"] == pytest.approx((1.0 + 3 / 5) / 2)
    assert out["precision_at_10"] == pytest.approx((1.0 + 0.5) / 2)
    assert out["hit_at_1"] == out["hit_at_5"] == out["hit_at_10"] == 1.0
    hat_ap = (1 + 2 / 3 + 3 / 5 + 4 / 7 + 5 / 9) / 10
    assert out["map_at_10"] == pytest.approx((1.0 + hat_ap) / 2)


def test_instance_top_k_by_hand() -> None:
    ranked = np.array([[3, 1, 2], [0, 4, 5], [7, 8, 9]])
    found = m.instance_top_k(ranked, np.array([1, 0, 6]), [1, 2, 3])
    assert found == {1: pytest.approx(1 / 3), 2: pytest.approx(2 / 3), 3: pytest.approx(2 / 3)}
    wide = np.tile(np.arange(20), (2, 1))
    assert instance_retrieval(wide, np.array([0, 19])) == {"top1": 0.5, "top5": 0.5, "top10": 0.5,
                                                           "top20": 1.0}


def test_percentile_ms() -> None:
    assert m.percentile_ms(np.array([0.001, 0.002, 0.003]), 50) == pytest.approx(2.0)
    with pytest.raises(ValueError):
        m.percentile_ms(np.array([]), 50)


# --- instance queries -------------------------------------------------------------------------------


def _photo(tmp_path) -> str:
    rng = np.random.default_rng(1)
    path = tmp_path / "item.jpg"
    Image.fromarray(rng.integers(0, 255, (90, 120, 3), dtype=np.uint8)).save(path)
    return str(path)


def test_augmented_queries_are_seeded_and_model_sized(tmp_path) -> None:
    prep = Preprocessing(size=32)
    path = _photo(tmp_path)
    a = make_queries([path, path], Augmentation(), prep, seed=7, progress=False)
    b = make_queries([path, path], Augmentation(), prep, seed=7, progress=False)
    c = make_queries([path, path], Augmentation(), prep, seed=8, progress=False)
    assert a[0].shape == (32, 32, 3) and a[0].dtype == np.uint8
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
    assert not np.array_equal(a[0], c[0])
    assert not np.array_equal(a[0], a[1])  # the generator moves on between queries


def test_augmentation_changes_the_image(tmp_path) -> None:
    prep = Preprocessing(size=32)
    img = Image.open(_photo(tmp_path)).convert("RGB")
    plain = np.asarray(prep.resize_crop(img), dtype=np.int16)
    shot = augment(img, Augmentation(flip=1.0), np.random.default_rng(0), prep).astype(np.int16)
    assert np.abs(plain - shot).mean() > 5


def test_bad_augmentation_params_name_the_key() -> None:
    with pytest.raises(EvaluationError, match=r"evaluate\.instance\.crop_scale"):
        Augmentation.from_params({"crop_scale": [0.9, 0.2]})
    with pytest.raises(EvaluationError, match=r"evaluate\.instance\.flip"):
        Augmentation.from_params({"flip": 2})
    assert Augmentation.from_params({"jpeg_quality": [70, 70]}).jpeg_quality == (70, 70)


def test_sample_sources_is_seeded_and_bounded() -> None:
    a = sample_sources(100, 30, seed=3)
    assert len(set(a.tolist())) == 30 and a.max() < 100
    assert np.array_equal(a, sample_sources(100, 30, seed=3))
    assert len(sample_sources(10, 30, seed=3)) == 10
    with pytest.raises(EvaluationError, match="empty"):
        sample_sources(0, 5, seed=0)


def counted_by_hand(truth: np.ndarray, pred: np.ndarray) -> dict[str, np.ndarray]:
    """The definitions the project reports, from tp/fp/fn counts (NaN where a ratio is 0/0)."""
    tp, fp, fn = (truth & pred).sum(0), (~truth & pred).sum(0), (truth & ~pred).sum(0)
    with np.errstate(invalid="ignore", divide="ignore"):
        return {"precision": np.where(tp + fp > 0, tp / (tp + fp), np.nan),
                "recall": np.where(tp + fn > 0, tp / (tp + fn), np.nan),
                "f1": np.where(2 * tp + fp + fn > 0, 2 * tp / (2 * tp + fp + fn), np.nan),
                "support": tp + fn, "tp": tp, "fp": fp, "fn": fn}


@pytest.mark.parametrize("labels", [0, 1, 2, 7])
def test_label_metrics_follow_the_definitions_for_any_label_count(labels: int) -> None:
    """scikit-learn computes them; the conventions stay the project's: one label is one label (not a
    binary target of two classes), no label gives 0 and an empty report, undefined F1s leave the mean."""
    rng = np.random.default_rng(labels)
    for trial in range(30):
        truth = rng.random((int(rng.integers(1, 25)), labels)) < rng.random()
        pred = rng.random(truth.shape) < rng.random()
        if labels and trial % 3 == 0:
            truth[:, 0] = pred[:, 0] = False          # a label with no F1
        want = counted_by_hand(truth, pred)
        report = m.per_label_report(truth, pred, [f"l{i}" for i in range(labels)])
        assert len(report) == labels
        for column in ("precision", "recall", "f1", "support"):
            np.testing.assert_allclose(report[column].to_numpy(float), want[column].astype(float))
        defined = want["f1"][~np.isnan(want["f1"])]
        assert m.macro_f1(truth, pred) == pytest.approx(defined.mean() if defined.size else 0.0)
        pooled = 2 * want["tp"].sum() + want["fp"].sum() + want["fn"].sum()
        assert m.micro_f1(truth, pred) == pytest.approx(2 * want["tp"].sum() / pooled if pooled else 0.0)


def test_confusion_matrix_keeps_absent_classes_and_refuses_unknown_ones() -> None:
    cm = m.confusion_matrix(np.array([0, 0]), np.array([0, 2]), 4)
    assert cm.shape == (4, 4) and cm[0, 0] == 1 and cm[0, 2] == 1 and cm.sum() == 2
    assert m.confusion_matrix(np.array([0, 0, 0]), np.array([0, 0, 0]), 1).tolist() == [[3]]
    with pytest.raises(ValueError, match=r"class indices \[3\] outside 0..2"):
        m.confusion_matrix(np.array([0, 1]), np.array([3, 1]), 3)
