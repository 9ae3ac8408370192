"""The whole pipeline run on this machine with kfp.local (SubprocessRunner, no Docker) on the generated
tiny dataset, against the real MLflow server: a passing gate moves `champion` and builds a serving bundle;
a refused winner (impossible thresholds) runs the Else branch and changes neither."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from mlflow import MlflowClient

from fashionrec.core.config import Params, load_params
from fashionrec.data.manifest import read_manifest
from fashionrec.kfp.client import LocalRun, run_local, with_overrides

ROOT = Path(__file__).resolve().parents[2]
NAME = "kfp-local-test"   # its own registered model on the shared test server
pytestmark = pytest.mark.filterwarnings("ignore:.*no effect in the current local runner:UserWarning")


def tiny_params(root: Path, tiny_source, thresholds: float) -> Params:
    """The project's params with `kfp.local.tiny` (1 epoch, small images and samples), the tiny dataset,
    a model name of its own, automatic promotion and every gated minimum set to `thresholds`."""
    base = load_params(ROOT / "params.yaml")
    params = Params(tree=base.tree, root=root)
    metrics = base.get("select.thresholds")
    floors = base.get("select.group_floors") or {}
    return with_overrides(params, {
        **base.get("kfp.local.tiny"), "ingest.source": str(tiny_source.root),
        "subset.subsets.benchmark.classes": list(tiny_source.classes), "register.name": NAME,
        "index.model": f"models:/{NAME}@champion", "index.bundles": str(root / "bundles"),
        "select.thresholds": {metric: thresholds for metric in metrics},
        "select.group_floors": {metric: thresholds for metric in floors}})


def champion() -> str | None:
    model = MlflowClient().get_registered_model(NAME)
    return model.aliases.get("champion")


def current_bundle(root: Path) -> str | None:
    link = root / "bundles" / "current"
    return os.readlink(link) if link.is_symlink() else None


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("kfp_project")


@pytest.fixture(scope="module")
def passed(mlflow_server, tiny_source, project) -> LocalRun:
    return run_local(tiny_params(project, tiny_source, 0.0), str(tiny_source.root), project / "runs")


def test_gate_passes_registers_champion_and_deploys(passed: LocalRun, project: Path):
    assert passed.gate["passed"] is True
    assert {"ingest-subset", "validate", "train", "evaluate", "select", "export", "register",
            "deploy"} <= set(passed.tasks)
    assert "record-rejection" not in passed.tasks
    # the champion alias moved to the version this run registered
    client = MlflowClient()
    assert champion() == "1"
    tags = client.get_model_version(NAME, "1").tags
    assert tags["gate.passed"] == "true" and tags["candidate"] == passed.gate["winner"]
    assert tags["kfp_run"].startswith("fashionrec-training")
    assert json.loads(client.get_registered_model(NAME).tags["champion_history"])[-1]["by"].startswith(
        "kfp run fashionrec-training")
    # ... and serving's current bundle holds that model and every validated image
    version = current_bundle(project)
    assert version is not None
    manifest = json.loads((project / "bundles" / version / "manifest.json").read_text())
    assert manifest["model"]["version"] == f"{NAME}/1"
    run = Path(passed.run_dir)
    summary = json.loads((run / "deploy" / "summary").read_text())
    assert summary["version"] == version
    assert summary["items"] == len(read_manifest(run / "validate" / "validated")) > 0
    # every candidate was trained (logged to MLflow) and evaluated, and the pictures are viewable pages
    loops = sorted(run.glob("for-loop-*"))
    assert len(loops) == len(passed.arguments["candidates"]) == 2
    for loop in loops:
        metrics = json.loads((loop / "evaluate" / "metrics").read_text())
        assert 0.0 <= metrics["test"]["micro_f1"] <= 1.0 and "top5" in metrics["instance"]
        assert (loop / "evaluate" / "plots").read_text().count("data:image/png;base64,") == 2
        assert (loop / "train" / "loss_curve").read_text().count("data:image/png;base64,") == 1
        ref = json.loads((loop / "train" / "model" / "mlflow.json").read_text())
        assert client.get_run(ref["run_id"]).data.tags["evaluated"] == "true"
    docs = (run / "validate" / "data_docs").read_text()
    assert "Data validation: passed" in docs and docs.count("<iframe") == 3
    assert (run / "validate" / "reports" / "data_docs" / "index.html").is_file()


def test_refused_gate_records_and_changes_nothing(passed: LocalRun, mlflow_server, tiny_source, project):
    before = (champion(), current_bundle(project), sorted(os.listdir(project / "bundles")))
    refused = run_local(tiny_params(project, tiny_source, 1.01), str(tiny_source.root), project / "runs")
    assert refused.gate["passed"] is False and "below the minimum" in refused.gate["reason"]
    # data, training and evaluation came from the cache; only the gate and the Else branch ran
    assert refused.tasks == ["record-rejection", "select"]
    assert (champion(), current_bundle(project), sorted(os.listdir(project / "bundles"))) == before
    assert [v.version for v in MlflowClient().search_model_versions(f"name='{NAME}'")] == ["1"]
    report = (Path(refused.run_dir) / "record-rejection" / "report").read_text()
    assert report.startswith(f"## Gate refused: {refused.gate['winner']}") and "| no |" in report
    decision = json.loads((Path(refused.run_dir) / "select" / "decision").read_text())
    assert decision["passed"] is False and decision["champion"]["version"] == "1"
