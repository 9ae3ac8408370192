"""The candidate list lives in params alone: train.candidates=[...] (after `fashionrec recipe`, which
`make repro` runs) trains, evaluates, gates and exports exactly those candidates, through the project's
real dvc.yaml on the tiny dataset; a stale models/recipe.yaml stops `dvc repro` at the `recipe` stage."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

from fashionrec.core.config import set_dotted
from fashionrec.data.versions import new_additions

ROOT = Path(__file__).resolve().parents[2]
STAGES = ("recipe", "ingest", "subset", "validate", "train", "evaluate", "select", "export")


def test_dvc_yaml_names_no_candidate() -> None:
    text = (ROOT / "dvc.yaml").read_text()
    names = yaml.safe_load((ROOT / "params.yaml").read_text())["train"]["models"]
    assert [n for n in names if n in text] == []


def test_exp_run_with_other_candidates_gates_and_exports_those(tiny_source, tmp_path: Path) -> None:
    repo = tmp_path / "project"
    repo.mkdir()
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    pipeline = {"vars": ["models/recipe.yaml"], "stages": {k: stages[k] for k in STAGES}}
    (repo / "dvc.yaml").write_text(yaml.safe_dump(pipeline, sort_keys=False))
    tree = yaml.safe_load((ROOT / "params.yaml").read_text())
    for key, value in {**tree["kfp"]["local"]["tiny"], "ingest.source": str(tiny_source.root),
                       "subset.subsets.benchmark.classes": list(tiny_source.classes),
                       "train.candidates": ["pixels"],
                       "train.device": "cpu", "select.thresholds": {"test.micro_f1": 0.0},
                       "select.group_floors": {},
                       "mlflow.tracking_uri": "sqlite:///mlflow/mlflow.db",
                       "mlflow.artifact_root": "mlflow/artifacts"}.items():
        set_dotted(tree, key, value)
    (repo / "params.yaml").write_text(yaml.safe_dump(tree, sort_keys=False))
    shutil.copytree(ROOT / "src", repo / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    shutil.copy(ROOT / ".gitignore", repo / ".gitignore")
    (repo / "data").mkdir()
    shutil.copy(ROOT / "data" / "label_review.csv", repo / "data" / "label_review.csv")   # a subset dep
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
           "PYTHONPATH": str(repo / "src"), "DVC_NO_ANALYTICS": "1", "MLFLOW_DISABLE_TELEMETRY": "true",
           "GIT_CONFIG_NOSYSTEM": "1", "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.com",
           "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@example.com"}
    env.pop("MLFLOW_TRACKING_URI", None)

    def run(*args: str) -> str:
        proc = subprocess.run(list(args), cwd=repo, env=env, capture_output=True, text=True, timeout=900)
        assert proc.returncode == 0, f"{' '.join(args)}:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
        return proc.stdout + proc.stderr

    new_additions(repo / "data" / "additions")   # ingest's dependency: no new photos yet
    run("git", "init", "-q")
    run("dvc", "init", "-q")
    run("fashionrec", "recipe")
    run("dvc", "repro", "select")
    first = json.loads((repo / "reports/select/decision.json").read_text())
    assert [r["candidate"] for r in first["ranking"]] == ["pixels"]
    run("git", "add", "-A")
    run("git", "commit", "-q", "-m", "baseline: pixels only")

    set_dotted(tree, "train.candidates", ["pixels", "simple_cnn"])
    (repo / "params.yaml").write_text(yaml.safe_dump(tree, sort_keys=False))
    stale = subprocess.run(["dvc", "repro", "export"], cwd=repo, env=env, capture_output=True, text=True,
                           timeout=900)
    assert stale.returncode != 0 and "models/recipe.yaml was stale" in stale.stdout + stale.stderr
    assert "Running stage 'train@simple_cnn'" not in stale.stdout   # nothing trained on the stale list
    out = run("dvc", "exp", "run", "export")   # the rewritten file lists simple_cnn now
    ran = {line.split("'")[1] for line in out.splitlines() if line.startswith("Running stage '")}
    assert {"train@simple_cnn", "evaluate@simple_cnn", "select", "export"} <= ran
    assert "train@pixels" not in ran                       # unchanged candidate: cached, not retrained
    decision = json.loads((repo / "reports/select/decision.json").read_text())
    assert sorted(r["candidate"] for r in decision["ranking"]) == ["pixels", "simple_cnn"]
    spec = json.loads((repo / "models/export/preprocessing.json").read_text())
    assert spec["candidate"] == decision["winner"]
    assert (repo / "models/export/model.onnx").stat().st_size > 0
