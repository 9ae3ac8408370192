"""Shared fixtures: a real MLflow tracking server on loopback, and the generated tiny dataset."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from fashionrec.core.config import Params, load_params, set_dotted
from fashionrec.data.synthetic import TinyDataset, make_tiny_dataset

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url: str, timeout: float = 90.0, proc: subprocess.Popen | None = None) -> None:
    """Poll url until it answers 200, failing early if the server process died."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"server exited with code {proc.returncode} before answering {url}")
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                if resp.status == 200:
                    return
        except OSError:
            time.sleep(0.3)
    raise TimeoutError(f"{url} did not answer within {timeout}s")


def stop(proc: subprocess.Popen) -> None:
    """SIGTERM the server's process group by PID, then SIGKILL if it lingers."""
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=20)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real `mlflow server` (SQLite store, artifacts on disk) on a free loopback port; yields its URI.

    MLFLOW_TRACKING_URI points at it for the session, so library code under test talks to it as a user's
    pipeline would talk to a shared server.
    """
    base = tmp_path_factory.mktemp("mlflow")
    port = free_port()
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false", "MLFLOW_DISABLE_TELEMETRY": "true"}
    log = open(base / "server.log", "w")  # noqa: SIM115 - closed after the server stops
    proc = subprocess.Popen(
        [str(Path(sys.executable).with_name("mlflow")), "server", "--workers", "1",
         "--backend-store-uri", f"sqlite:///{base / 'mlflow.db'}",
         "--default-artifact-root", str(base / "artifacts"),
         "--host", "127.0.0.1", "--port", str(port)],
        stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    uri = f"http://127.0.0.1:{port}"
    old = os.environ.get("MLFLOW_TRACKING_URI")
    try:
        wait_http(f"{uri}/health", proc=proc)
        os.environ["MLFLOW_TRACKING_URI"] = uri
        yield uri
    finally:
        stop(proc)
        log.close()
        if old is None:
            os.environ.pop("MLFLOW_TRACKING_URI", None)
        else:
            os.environ["MLFLOW_TRACKING_URI"] = old


# --- tiny dataset (data stages) ------------------------------------------------------------------------


@dataclass
class TinyProject:
    """The tiny dataset run through ingest -> subset -> validate in a project-like folder.

    `params` is loaded from `root/params.yaml` (the project's params with the tiny source, its classes and
    small minimums), so `params.path(...)` resolves under root like `dvc repro` would.
    """

    root: Path
    params: Params
    source: TinyDataset
    manifest: Path      # data/manifest (ingest)
    subset: Path        # data/subset
    validated: Path     # data/validated: manifest.parquet, dataset.json, quarantine.csv
    reports: Path       # reports/validate


def tiny_params(root: Path, source: TinyDataset) -> Params:
    """Write root/params.yaml: the project's params pointed at the tiny source, then load it."""
    tree = yaml.safe_load((ROOT / "params.yaml").read_text())
    set_dotted(tree, "ingest.source", str(source.root))
    set_dotted(tree, "subset.classes", list(source.classes))
    set_dotted(tree, "validate.min_per_class", 2)
    root.mkdir(parents=True, exist_ok=True)
    (root / "params.yaml").write_text(yaml.safe_dump(tree, sort_keys=False))
    return load_params(root / "params.yaml")


def run_data_stages(params: Params) -> None:
    """ingest -> subset -> validate through the library functions, paths resolved from params."""
    from fashionrec.data.ingest import ingest
    from fashionrec.data.subset import subset
    from fashionrec.data.validate import validate

    s = params.section("ingest")
    ingest(params.path(s["source"]), params.path(s["out"]), s)
    s = params.section("subset")
    subset(params.path(s["manifest"]), params.path(s["out"]), s)
    s = params.section("validate")
    validate(params.path(s["subset"]), params.path(s["out"]), params.path(s["reports"]), s)


@pytest.fixture(scope="session")
def tiny_source(tmp_path_factory: pytest.TempPathFactory) -> TinyDataset:
    """A generated dataset in the upstream layout (`.root`): 4 learnable classes x 12 images, plus mess."""
    return make_tiny_dataset(tmp_path_factory.mktemp("tiny_source") / "clothing-dataset")


@pytest.fixture(scope="session")
def tiny_validated(tiny_source: TinyDataset, tmp_path_factory: pytest.TempPathFactory) -> TinyProject:
    """tiny_source ingested, subset (published split 32/8/8) and validated; treat it as read-only."""
    root = tmp_path_factory.mktemp("tiny_project")
    params = tiny_params(root, tiny_source)
    run_data_stages(params)
    return TinyProject(root=root, params=params, source=tiny_source, manifest=root / "data/manifest",
                       subset=root / "data/subset", validated=root / "data/validated",
                       reports=root / "reports/validate")
