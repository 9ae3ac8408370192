"""Without MLFLOW_TRACKING_URI, training logs into the project's embedded SQLite store, and
`make mlflow-ui` (the real Makefile target) serves that run with its artifacts."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest
import yaml

from fashionrec.core.config import load_params
from fashionrec.train.loop import train

ROOT = Path(__file__).resolve().parents[2]
_spec = importlib.util.spec_from_file_location("fashionrec_tests_conftest", ROOT / "tests" / "conftest.py")
_root = sys.modules.setdefault(_spec.name, importlib.util.module_from_spec(_spec))  # type: ignore[arg-type]
_spec.loader.exec_module(_root)  # type: ignore[union-attr]
free_port, wait_http, stop = _root.free_port, _root.wait_http, _root.stop


def get_json(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=10) as resp:
        return json.loads(resp.read())


def test_default_store_is_served_by_make_mlflow_ui(tiny_validated, tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    project = tmp_path / "project"
    project.mkdir()
    tree = yaml.safe_load((tiny_validated.root / "params.yaml").read_text())
    tree["train"]["manifest"] = str(tiny_validated.validated / "manifest.parquet")
    (project / "params.yaml").write_text(yaml.safe_dump(tree))
    params = load_params(project / "params.yaml")
    section = params.section("train")
    section["models"]["pixels"]["size"] = 16
    result = train("pixels", section, manifest=params.path(section["manifest"]),
                   out_dir=project / "models" / "pixels", cache_dir=project / ".cache" / "features",
                   checkpoint_dir=project / ".cache" / "checkpoints" / "pixels", tracking_params=params)
    assert (project / "mlflow" / "mlflow.db").is_file()
    ref = json.loads((project / "models" / "pixels" / "mlflow.json").read_text())
    assert ref["tracking_uri"] == f"sqlite:///{project / 'mlflow' / 'mlflow.db'}"
    assert list((project / "mlflow" / "artifacts").rglob("model.pt")), "artifacts not under mlflow/artifacts"

    port = free_port()
    venv = ROOT / ".venv"
    proc = subprocess.Popen(
        ["make", "-s", "-f", str(ROOT / "Makefile"), "-C", str(project), f"VENV={venv}",
         "-o", str(venv / ".installed"), f"MLFLOW_PORT={port}", "mlflow-ui"],
        stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        base = f"http://127.0.0.1:{port}"
        wait_http(f"{base}/health", proc=proc)
        run = get_json(f"{base}/api/2.0/mlflow/runs/get?run_id={result.run_id}")["run"]
        assert run["info"]["run_name"] == "pixels" and run["info"]["status"] == "FINISHED"
        tags = {t["key"]: t["value"] for t in run["data"]["tags"]}
        assert tags["data_version"].startswith("sha256:") and "git_commit" in tags
        files = get_json(f"{base}/api/2.0/mlflow/artifacts/list?run_id={result.run_id}&path=model")["files"]
        assert {"model/model.pt", "model/card.json"} <= {f["path"] for f in files}
    finally:
        stop(proc)
