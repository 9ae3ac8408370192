"""MLflow set-up shared by every stage that logs: tracking URI, experiment, run tags, run references.

The tracking URI is `MLFLOW_TRACKING_URI` when set, else `mlflow.tracking_uri` from params (a SQLite file
inside the project, artifacts in `mlflow.artifact_root`). Runs carry the tags `data_version` (the DVC md5
of `data/subset` in dvc.lock; a hash of the manifest when there is no lock entry) and `git_commit`.
A stage that trains writes `mlflow.json` (run id, experiment id, tracking URI) beside its outputs so later
stages log into the same run.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from fashionrec.core.config import Params, dotted_leaves
from fashionrec.core.errors import FashionrecError
from fashionrec.core.files import read_json

RUN_REF = "mlflow.json"
# Lineage tags of a model version (and of a scheduled run): what it was made from. A scheduled run whose
# data hash, code version and params hash equal the champion's trains nothing (`registry.retrain`).
LINEAGE_KEYS = ("lineage.data_rev", "lineage.data_commit", "lineage.data_md5", "lineage.code_version",
                "lineage.params_hash", "lineage.pipeline_run_id")


def _resolve_sqlite(uri: str, root: Path) -> str:
    """`sqlite:///relative/file.db` -> absolute against the project root (and its folder created)."""
    prefix = "sqlite:///"
    if not uri.startswith(prefix):
        return uri
    path = Path(uri[len(prefix):])
    if not path.is_absolute():
        path = root / path
    path.parent.mkdir(parents=True, exist_ok=True)
    return prefix + str(path)


def tracking_uri(params: Params) -> str:
    env = os.environ.get("MLFLOW_TRACKING_URI")
    if env:
        return env
    uri = params.get("mlflow.tracking_uri") or "sqlite:///mlflow/mlflow.db"
    return _resolve_sqlite(str(uri), params.root)


def configure(params: Params) -> str:
    """Point MLflow at the project's tracking store and select the experiment; returns its id."""
    import mlflow

    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    uri = tracking_uri(params)
    mlflow.set_tracking_uri(uri)
    name = str(params.get("mlflow.experiment") or "fashionrec")
    try:
        experiment = mlflow.get_experiment_by_name(name)
        if experiment is None:
            artifact_location = None
            # A server decides its own artifact store; a local store (sqlite, file) gets the project's.
            # (Not "is MLFLOW_TRACKING_URI set": mlflow.set_tracking_uri sets that variable itself.)
            if not uri.startswith(("http://", "https://", "databricks")):
                root = params.path(params.get("mlflow.artifact_root") or "mlflow/artifacts")
                root.mkdir(parents=True, exist_ok=True)
                artifact_location = root.resolve().as_uri()
            experiment_id = mlflow.create_experiment(name, artifact_location=artifact_location)
        else:
            experiment_id = experiment.experiment_id
    except Exception as exc:  # connection refused, bad URI, locked database...
        raise FashionrecError(f"MLflow tracking store {uri} is not usable: {exc}") from exc
    mlflow.set_experiment(experiment_id=experiment_id)
    return experiment_id


def data_version(root: Path, manifest: Path | None = None, stage: str = "subset",
                 out: str = "data/subset") -> str:
    """The DVC md5 of `out` recorded in dvc.lock, else `sha256:<hash of the manifest file>`."""
    lock = root / "dvc.lock"
    if lock.is_file():
        try:
            stages = (yaml.safe_load(lock.read_text()) or {}).get("stages", {})
            for entry in (stages.get(stage) or {}).get("outs", []):
                if str(entry.get("path", "")).rstrip("/") == out and entry.get("md5"):
                    return str(entry["md5"])
        except yaml.YAMLError:
            pass
    if manifest is not None and Path(manifest).is_file():
        return "sha256:" + hashlib.sha256(Path(manifest).read_bytes()).hexdigest()[:16]
    return "unknown"


def git_commit(root: Path) -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True,
                             timeout=10, check=True)
        return out.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def params_hash(tree: Mapping[str, Any]) -> str:
    """sha256 of the params as canonical JSON (sorted keys; integral floats as ints, since KFP turns every
    number into a double): the same settings hash the same whichever way they travelled."""
    def norm(value: Any) -> Any:
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, Mapping):
            return {str(k): norm(v) for k, v in value.items() if v is not None}
        if isinstance(value, list | tuple):
            return [norm(v) for v in value]
        return value

    text = json.dumps(norm(tree), sort_keys=True, separators=(",", ":"))
    return "sha256:" + hashlib.sha256(text.encode()).hexdigest()[:16]


def code_version() -> str:
    """sha256 over the installed `fashionrec` package's Python sources: the code a task runs, known the same
    way in a pod (an image holds no .git) and on a laptop."""
    package = Path(__file__).resolve().parents[1]
    digest = hashlib.sha256()
    for path in sorted(package.rglob("*.py")):
        digest.update(path.relative_to(package).as_posix().encode() + b"\0" + path.read_bytes() + b"\0")
    return "sha256:" + digest.hexdigest()[:16]


def run_tags(params: Params, manifest: Path | None = None, **extra: str) -> dict[str, str]:
    """`data_version` is the product subset's (`subset@<subset.product>` in dvc.lock), plus `git_commit`."""
    product = params.get("subset.product") or "catalog"
    out = f"{str(params.get('subset.out') or 'data/subset').rstrip('/')}/{product}"
    tags = {"data_version": data_version(params.root, manifest, stage=f"subset@{product}", out=out),
            "git_commit": git_commit(params.root)}
    tags.update({k: str(v) for k, v in extra.items()})
    return tags


def start_run(run_id: str | None, name: str, tags: dict[str, str]):
    """Resume run `run_id` when this tracking store has it, else start a new run called `name`."""
    import mlflow
    from mlflow.exceptions import MlflowException

    if run_id:
        try:
            mlflow.get_run(run_id)
            return mlflow.start_run(run_id=run_id, tags=tags)
        except MlflowException:
            pass
    return mlflow.start_run(run_name=name, tags=tags)


def flatten(tree: Mapping[str, Any]) -> dict[str, str]:
    """Nested params -> {'a.b': 'value'} for `mlflow.log_params` (values truncated to MLflow's limit)."""
    return {name: str(value)[:6000] for name, value in dotted_leaves(tree).items()}


def write_run_ref(out_dir: Path, run_id: str, experiment_id: str, uri: str) -> Path:
    path = Path(out_dir) / RUN_REF
    path.write_text(json.dumps({"run_id": run_id, "experiment_id": experiment_id, "tracking_uri": uri},
                               indent=2))
    return path


def read_run_ref(model_dir: Path) -> dict[str, str]:
    path = Path(model_dir) / RUN_REF
    ref = read_json(path, f"{path}: missing (train the candidate first: it records its MLflow run)",
                    FashionrecError)
    if not isinstance(ref, dict) or not ref.get("run_id"):
        raise FashionrecError(f"{path}: no 'run_id'")
    return ref
