"""The gate: winner by primary metric, thresholds, the not-worse-than-champion rule, and the select step
against a real MLflow server (a refused winner leaves a decision file, a non-zero exit and no registry)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from mlflow import MlflowClient

from fashionrec.core.config import numeric_leaves
from fashionrec.core.errors import DataError, FashionrecError, GateFailed
from fashionrec.registry.gate import Champion, decide, read_metrics
from fashionrec.registry.steps import candidate_names, select
from tests.model.utils import metrics_tree, select_params, write_metrics


def flat(micro_f1: float, p5: float, top5: float) -> dict[str, float]:
    return numeric_leaves(metrics_tree(micro_f1, p5, top5))


def test_winner_is_best_primary_metric_and_passes() -> None:
    d = decide({"pixels": flat(0.55, 0.6, 0.6), "simple_cnn": flat(0.8, 0.7, 0.7),
                "efficientnet_lite0": flat(0.9, 0.85, 0.9)}, select_params(), champion=None)
    assert d.passed and d.winner == "efficientnet_lite0"
    assert [r["candidate"] for r in d.ranking] == ["efficientnet_lite0", "simple_cnn", "pixels"]
    checks = {c["metric"]: c for c in d.checks}
    assert checks["instance.top5"]["value"] == 0.9 and checks["instance.top5"]["threshold"] == 0.5
    assert checks["test.micro_f1"]["champion"] is None
    assert "no champion yet" in d.reason


def test_threshold_failure_names_the_metric() -> None:
    d = decide({"a": flat(0.9, 0.4, 0.9), "b": flat(0.7, 0.9, 0.9)}, select_params(), champion=None)
    assert d.winner == "a" and not d.passed  # the best by the primary metric is gated, not the best passer
    assert "retrieval.precision_at_5 = 0.4000 is below the minimum 0.5000" in d.reason
    assert [c["metric"] for c in d.checks if not c["passed"]] == ["retrieval.precision_at_5"]


def test_not_worse_than_champion_by_more_than_delta() -> None:
    champ = Champion(version="3", metrics={"test.micro_f1": 0.85, "retrieval.precision_at_5": 0.8,
                                           "instance.top5": 0.9})
    within = decide({"a": flat(0.845, 0.8, 0.95)}, select_params(max_regression=0.01), champ)
    assert within.passed, within.reason
    worse = decide({"a": flat(0.95, 0.78, 0.95)}, select_params(max_regression=0.01), champ)
    assert not worse.passed
    assert "retrieval.precision_at_5 = 0.7800 trails champion v3 (0.8000) by more than 0.0100" in worse.reason
    check = next(c for c in worse.checks if c["metric"] == "retrieval.precision_at_5")
    assert check["passes_threshold"] and not check["passes_champion"] and check["champion"] == 0.8


def grouped(micro_f1: float, kids_p1: float, adults_p1: float) -> dict[str, float]:
    """Metrics of a model that is good on average, with its kids and adults groups apart."""
    groups = {g: {"n": 40, "accuracy": micro_f1, "precision_at_1": p1, "precision_at_5": p1}
              for g, p1 in (("kids", kids_p1), ("adults", adults_p1))}
    return numeric_leaves(metrics_tree(micro_f1, 0.9, 0.9, **groups))


FLOORED = {"groups": ["kids", "adults"], "group_floors": {"precision_at_1": 0.8}}


def test_group_floor_refuses_a_model_that_fails_one_group() -> None:
    """The best model on average is refused when kids get wrong neighbours; the decision says so."""
    d = decide({"a": grouped(0.95, kids_p1=0.6, adults_p1=0.97), "b": grouped(0.9, 0.85, 0.9)},
               select_params(**FLOORED), champion=None)
    assert d.winner == "a" and not d.passed
    assert "kids.precision_at_1 = 0.6000 is below the group floor 0.8000" in d.reason
    failed = [c for c in d.checks if not c["passed"]]
    assert [c["metric"] for c in failed] == ["kids.precision_at_1"] and failed[0]["group_floor"]
    assert next(c for c in d.checks if c["metric"] == "adults.precision_at_1")["passed"]
    assert decide({"b": grouped(0.9, 0.85, 0.9)}, select_params(**FLOORED), champion=None).passed
    # without the floors the same model passes: the floor is what stops it
    assert decide({"a": grouped(0.95, 0.6, 0.97)}, select_params(), champion=None).passed


def test_group_floor_without_the_group_in_the_metrics_refuses() -> None:
    d = decide({"a": flat(0.95, 0.9, 0.9)}, select_params(**FLOORED), champion=None)
    assert not d.passed and "kids.precision_at_1 is missing" in d.reason
    with pytest.raises(FashionrecError, match=r"select.group_floors.precision_at_1: must be a number"):
        bad = select_params(groups=["kids"], group_floors={"precision_at_1": "x"})
        decide({"a": flat(0.9, 0.9, 0.9)}, bad, champion=None)


def test_champion_without_a_metric_is_not_held_against_the_winner() -> None:
    champ = Champion(version="1", metrics={"test.micro_f1": 0.6})
    d = decide({"a": flat(0.7, 0.7, 0.7)}, select_params(), champ)
    assert d.passed and "not worse than champion v1" in d.reason


def test_missing_gated_metric_fails_the_gate() -> None:
    m = flat(0.9, 0.9, 0.9)
    del m["instance.top5"]
    d = decide({"a": m}, select_params(), None)
    assert not d.passed and "instance.top5 is missing" in d.reason


@pytest.mark.parametrize(("over", "message"), [
    ({"primary_metric": ""}, "select.primary_metric"),
    ({"thresholds": {}}, "select.thresholds"),
    ({"thresholds": {"test.micro_f1": "high"}}, "select.thresholds.test.micro_f1"),
    ({"max_regression": -0.1}, "select.max_regression"),
])
def test_bad_params_are_named(over: dict, message: str) -> None:
    with pytest.raises(FashionrecError, match=message):
        decide({"a": flat(0.9, 0.9, 0.9)}, select_params(**over), None)


def test_missing_metrics_file_names_it(tmp_path: Path) -> None:
    write_metrics(tmp_path, "a", 0.9, 0.9, 0.9)
    with pytest.raises(DataError, match=r"b\.json: metrics of candidate 'b' not found"):
        read_metrics(tmp_path, ["a", "b"])


def test_candidate_names_from_train_params() -> None:
    assert candidate_names({"models": {"pixels": {}, "simple_cnn": {}}}) == ["pixels", "simple_cnn"]
    assert candidate_names({"candidates": ["a", {"name": "b"}]}) == ["a", "b"]
    with pytest.raises(FashionrecError, match="train.candidates"):
        candidate_names({})


def test_select_passes_and_logs_decision(mlflow_server: str, tmp_path: Path) -> None:
    write_metrics(tmp_path / "metrics", "simple_cnn", 0.8, 0.7, 0.7)
    write_metrics(tmp_path / "metrics", "efficientnet_lite0", 0.9, 0.8, 0.9)
    out = tmp_path / "reports/select/decision.json"
    decision = select(tmp_path / "metrics", ["simple_cnn", "efficientnet_lite0"], out, select_params(),
                      name="gate-pass")
    assert decision.passed and json.loads(out.read_text())["winner"] == "efficientnet_lite0"
    runs = MlflowClient().search_runs(
        [e.experiment_id for e in MlflowClient().search_experiments()],
        filter_string="tags.winner = 'efficientnet_lite0' and tags.step = 'select'")
    assert runs and runs[0].data.metrics["gate_passed"] == 1.0


def test_select_failure_writes_decision_and_leaves_registry_untouched(mlflow_server: str,
                                                                      tmp_path: Path) -> None:
    write_metrics(tmp_path / "metrics", "simple_cnn", 0.9, 0.2, 0.9)
    out = tmp_path / "decision.json"
    client = MlflowClient()
    before = [m.name for m in client.search_registered_models()]
    with pytest.raises(GateFailed, match="precision_at_5 .* below the minimum.*registry was not changed"):
        select(tmp_path / "metrics", ["simple_cnn"], out, select_params(), name="gate-fail")
    saved = json.loads(out.read_text())
    assert saved["passed"] is False and saved["winner"] == "simple_cnn"
    assert "below the minimum" in saved["reason"]
    assert [m.name for m in client.search_registered_models()] == before
    assert not client.search_model_versions("name = 'gate-fail'")


def test_cli_select_exits_nonzero_on_refusal(mlflow_server: str, tmp_path: Path) -> None:
    """The DVC stage's view: the decision file exists, the exit code is 1, stderr says why."""
    root = Path(__file__).resolve().parents[2]
    tree = yaml.safe_load((root / "params.yaml").read_text())
    tree["train"] = {"models": {"simple_cnn": {"arch": "simple_cnn"}}}
    tree["select"]["thresholds"] = {"test.micro_f1": 0.95}
    tree["register"]["name"] = "gate-cli"
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(tree))
    write_metrics(tmp_path / "metrics", "simple_cnn", 0.9, 0.9, 0.9)
    proc = subprocess.run([str(Path(sys.executable).with_name("fashionrec")), "select", "-p",
                           str(tmp_path / "params.yaml")], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "MLFLOW_TRACKING_URI": mlflow_server})
    assert proc.returncode == 1, proc.stderr
    assert "error: gate refused the winner: simple_cnn refused: test.micro_f1 = 0.9000 is below" \
        in proc.stderr
    decision = json.loads((tmp_path / "reports/select/decision.json").read_text())
    assert decision["passed"] is False
