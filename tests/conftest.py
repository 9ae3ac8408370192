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
# What a page shows is awaited, not raced: Playwright's `expect` gives up after 5 s by default, which a
# loaded machine rendering MLflow's UI can exceed (the event is the text appearing; 60 s is the bound).
BROWSER_EXPECT_TIMEOUT_MS = 60_000


@pytest.fixture(autouse=True, scope="session")
def _browser_expectations_wait() -> None:
    with contextlib.suppress(ImportError):
        from playwright.sync_api import expect

        expect.set_options(timeout=BROWSER_EXPECT_TIMEOUT_MS)


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
    """The tiny dataset run through ingest -> subset -> validate (both subsets) in a project-like folder.

    `params` is loaded from `root/params.yaml` (the project's params with the tiny source, its classes and
    small minimums), so `params.path(...)` resolves under root like `dvc repro` would. `subset` and
    `validated` are the benchmark subset (the published split: 32/8/8); `catalog` and `catalog_validated`
    the product subset (every category with >= 5 photos, kids included, grouped by sender).
    """

    root: Path
    params: Params
    source: TinyDataset
    manifest: Path      # data/manifest (ingest)
    subset: Path        # data/subset/benchmark
    validated: Path     # data/validated/benchmark: manifest.parquet, dataset.json, quarantine.csv
    reports: Path       # reports/validate/benchmark
    catalog: Path       # data/subset/catalog
    catalog_validated: Path  # data/validated/catalog


# the tiny dataset's minimums: 14 photos per category (its small one has 3), 2 per class and split
TINY_OVERRIDES = {"subset.subsets.catalog.min_per_class": 5,
                  "subset.subsets.catalog.split.shares": {"train": 0.55, "validation": 0.25, "test": 0.2},
                  "subset.subsets.catalog.label_review": None,   # it names photos of the real dataset
                  "validate.min_per_class": 2, "validate.subsets.catalog.min_per_class": 2}


def tiny_params(root: Path, source: TinyDataset) -> Params:
    """Write root/params.yaml: the project's params pointed at the tiny source, then load it."""
    tree = yaml.safe_load((ROOT / "params.yaml").read_text())
    set_dotted(tree, "ingest.source", str(source.root))
    for key, value in TINY_OVERRIDES.items():
        set_dotted(tree, key, value)
    set_dotted(tree, "subset.subsets.benchmark.classes", list(source.classes))
    root.mkdir(parents=True, exist_ok=True)
    (root / "params.yaml").write_text(yaml.safe_dump(tree, sort_keys=False))
    return load_params(root / "params.yaml")


def run_data_stages(params: Params) -> None:
    """ingest -> subset -> validate (every subset) through the library functions, paths from params."""
    from fashionrec.data.ingest import ingest
    from fashionrec.data.subset import subset, subset_names, subset_params
    from fashionrec.data.validate import validate

    s = params.section("ingest")
    ingest(params.path(s["source"]), params.path(s["out"]), s)
    s, v = params.section("subset"), params.section("validate")
    for name in subset_names(s):
        subset(params.path(s["manifest"]), params.path(s["out"]) / name, subset_params(s, name))
        validate(params.path(v["subset"]) / name, params.path(v["out"]) / name,
                 params.path(v["reports"]) / name, v)


@pytest.fixture(scope="session")
def tiny_source(tmp_path_factory: pytest.TempPathFactory) -> TinyDataset:
    """A generated dataset in the upstream layout (`.root`): 4 learnable classes x 12 published images,
    2 unpublished kids' photos each, a small category, plus mess."""
    return make_tiny_dataset(tmp_path_factory.mktemp("tiny_source") / "clothing-dataset")


@pytest.fixture(scope="session")
def tiny_validated(tiny_source: TinyDataset, tmp_path_factory: pytest.TempPathFactory) -> TinyProject:
    """tiny_source ingested, subset (benchmark: published split 32/8/8; catalog) and validated; read-only."""
    root = tmp_path_factory.mktemp("tiny_project")
    params = tiny_params(root, tiny_source)
    run_data_stages(params)
    return TinyProject(root=root, params=params, source=tiny_source, manifest=root / "data/manifest",
                       subset=root / "data/subset/benchmark", validated=root / "data/validated/benchmark",
                       reports=root / "reports/validate/benchmark", catalog=root / "data/subset/catalog",
                       catalog_validated=root / "data/validated/catalog")
