"""Scheduled retraining: decide whether a run has anything new to learn from, and give the gate a fair
champion.

- `lineage`: what a run is made from (data revision, commit and DVC md5, code version, params hash,
  pipeline run id), as the tags every registered version carries (`core.tracking.LINEAGE_KEYS`).
- `check_lineage`: a run whose data md5, code version and params hash equal the champion's lineage has
  nothing new; it ends as "no change" before any training (`record_no_change` logs that to MLflow). So
  does a run whose inputs the gate already refused against the same champion (the `select` run in MLflow
  with those lineage tags): training again on the same data, code and params would only repeat the refusal.
- `rescore_champion`: the champion's PyTorch model (logged with its registered version) evaluated by the
  same `evaluate` function on this run's test split and inventory, so the gate compares like with like.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import mlflow
from mlflow import MlflowClient

from fashionrec.core.config import numeric_leaves
from fashionrec.core.errors import RegistryError
from fashionrec.core.tracking import LINEAGE_KEYS, code_version, params_hash
from fashionrec.registry.mlflow_registry import CHAMPION, GATE_TAG, MODEL_TAG, alias_version, model_exists

COMPARED = ("lineage.data_md5", "lineage.code_version", "lineage.params_hash")


def lineage(data: Mapping[str, Any], model_params: Mapping[str, Any], run_id: str) -> dict[str, str]:
    """The lineage tags of this run: `data` is `data.versions.DataVersion.to_dict()`; `model_params` the
    params that shape a model (data checks, candidates, training, evaluation, gate, export, seed)."""
    values = (data.get("rev"), data.get("commit"), data.get("md5"), code_version(), params_hash(model_params),
              run_id)
    return {key: str(value) for key, value in zip(LINEAGE_KEYS, values, strict=True)}


@dataclass
class LineageCheck:
    changed: bool
    reason: str
    champion: str | None
    lineage: dict[str, str]
    differs: list[str]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def champion_tags(client: MlflowClient, name: str) -> tuple[str | None, dict[str, str]]:
    if not model_exists(client, name):
        return None, {}
    version = alias_version(client, name, CHAMPION)
    if version is None:
        return None, {}
    return version, dict(client.get_model_version(name, version).tags)


def check_lineage(name: str, run_lineage: Mapping[str, str]) -> LineageCheck:
    """Compare this run's data md5, code version and params hash with the champion's lineage tags."""
    version, tags = champion_tags(MlflowClient(), name)
    current = dict(run_lineage)
    if version is None:
        return LineageCheck(True, f"no champion of '{name}' yet: train", None, current, list(COMPARED))
    differs = [key for key in COMPARED if tags.get(key) != current.get(key)]
    if differs and (refused := refused_before(MlflowClient(), name, version, current)):
        reason = (f"no change: data {current.get('lineage.data_md5')}, code and params already refused by "
                  f"the gate against champion v{version} (pipeline run {refused}); nothing trained")
        return LineageCheck(False, reason, version, current, differs)
    if differs:
        what = ", ".join(f"{k.split('.', 1)[1]} {tags.get(k, 'none')} -> {current.get(k)}" for k in differs)
        return LineageCheck(True, f"changed since champion v{version}: {what}", version, current, differs)
    reason = (f"no change: data {current.get('lineage.data_md5')} (rev {current.get('lineage.data_rev')}), "
              f"code and params equal champion v{version}'s lineage; nothing trained")
    return LineageCheck(False, reason, version, current, [])


def refused_before(client: MlflowClient, name: str, champion: str,
                   run_lineage: Mapping[str, str]) -> str | None:
    """The pipeline run id of an earlier run of model `name` whose gate refused these same inputs (data md5,
    code version, params hash) against champion version `champion`; None when there is none."""
    filters = ["tags.step = 'select'", f"tags.`{GATE_TAG}` = 'false'", f"tags.`{MODEL_TAG}` = '{name}'",
               f"tags.champion_version = '{champion}'"]
    filters += [f"tags.`{key}` = '{run_lineage.get(key, '')}'" for key in COMPARED]
    experiments = [e.experiment_id for e in client.search_experiments()]
    runs = client.search_runs(experiments, filter_string=" and ".join(filters), max_results=1,
                              order_by=["attributes.start_time DESC"]) if experiments else []
    return str(runs[0].data.tags.get("lineage.pipeline_run_id", runs[0].info.run_id)) if runs else None


def record_no_change(reason: str, run_lineage: Mapping[str, str], champion: str | None) -> str:
    """An MLflow run saying this scheduled run changed nothing, and why; returns its id."""
    with mlflow.start_run(run_name="no-change") as run:
        mlflow.set_tags({"step": "no-change", "outcome": "no change", "reason": reason[:5000],
                         "champion_version": champion or "none", **dict(run_lineage)})
        mlflow.log_metric("changed", 0.0)
    return run.info.run_id


def rescore_champion(name: str, validated: Path, out: Path, reports: Path,
                     evaluate_params: Mapping[str, Any]) -> dict[str, Any]:
    """Evaluate the champion on `validated` (test split vs its train + validation inventory) and write
    `{"version", "candidate", "metrics": {dotted: value}}` to `out` (`{}` when there is no champion)."""
    from fashionrec.evaluate.evaluate import evaluate

    client = MlflowClient()
    version, tags = champion_tags(client, name)
    result: dict[str, Any] = {}
    if version is not None:
        mv = client.get_model_version(name, version)
        candidate = tags.get("candidate") or "champion"
        model_dir = Path(tempfile.mkdtemp(prefix="fashionrec-champion-")) / candidate
        try:
            pytorch = mlflow.artifacts.download_artifacts(run_id=mv.run_id, artifact_path="pytorch",
                                                          dst_path=str(model_dir.parent))
        except Exception as exc:  # a missing artifact, an unreachable store
            raise RegistryError(f"champion {name} v{version}: its PyTorch model (run {mv.run_id}, "
                                f"artifacts pytorch/) cannot be read for re-scoring ({exc})") from exc
        Path(pytorch).rename(model_dir)
        metrics_file = Path(tempfile.mkdtemp(prefix="fashionrec-champion-metrics-")) / "metrics.json"
        evaluate(model_dir, validated, metrics_file, reports, {**evaluate_params, "mlflow": False},
                 progress=False)
        result = {"version": version, "candidate": candidate,
                  "metrics": numeric_leaves(json.loads(metrics_file.read_text()))}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    return result
