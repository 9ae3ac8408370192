"""The `select`, `register`, `promote` and `rollback` steps: gate decision and MLflow registry moves.

Each talks to whatever MLflow tracking URI the caller configured (`fashionrec.core.tracking.configure`), so
the CLI, DVC, Kubeflow components and the tests share them unchanged.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlflow
from mlflow import MlflowClient

from fashionrec.core.errors import DataError, FashionrecError, GateFailed, ParityError
from fashionrec.core.files import read_json, sha256_file
from fashionrec.registry.gate import (
    Champion,
    Decision,
    decide,
    decide_fair,
    read_decision,
    read_metrics,
    write_decision,
)
from fashionrec.registry.mlflow_registry import (
    CHALLENGER,
    GATE_TAG,
    METRIC_PREFIX,
    MODEL_TAG,
    AliasChange,
    aliases_of,
    get_champion,
    promote,
    read_champion_history,
    roll_back_champion,
)

DEFAULT_NAME = "fashionrec"


def candidate_names(train: Mapping[str, Any]) -> list[str]:
    """Candidate names from the train params: `candidates` (else `models`) as a mapping, a list of names
    or of {name: ...} entries."""
    raw = train.get("candidates") or train.get("models")
    if isinstance(raw, Mapping):
        return [str(k) for k in raw]
    if isinstance(raw, Sequence) and not isinstance(raw, str):
        names = [str(c.get("name")) if isinstance(c, Mapping) else str(c) for c in raw]
        if all(names):
            return names
    raise FashionrecError(f"params train.candidates: expected a list or mapping of candidates, got {raw!r}")


def select(metrics_dir: Path, candidates: Sequence[str], out: Path, params: Mapping[str, Any],
           name: str = DEFAULT_NAME, rescored: Mapping[str, Any] | None = None,
           tags: Mapping[str, str] | None = None) -> Decision:
    """Gate the best candidate against params and the registry's champion; write `out` either way,
    log it to MLflow, and raise GateFailed (after writing) when the winner is refused.

    `rescored` (scheduled runs: `registry.retrain.rescore_champion`'s file, `{}` without a champion) is
    the champion scored in the same run on the same test split: then the fair gate (`decide_fair`, with
    `select.min_improvement`) judges against those figures instead of the champion's registered ones."""
    metrics = read_metrics(metrics_dir, candidates)
    if rescored is None:
        champion = get_champion(MlflowClient(), name)
        decision = decide(metrics, params, champion)
    else:
        champion = (Champion(version=str(rescored["version"]), metrics=dict(rescored["metrics"]),
                             candidate=rescored.get("candidate")) if rescored.get("version") else None)
        decision = decide_fair(metrics, params, champion)
    write_decision(decision, out)
    with mlflow.start_run(run_name=f"select-{decision.winner}"):
        mlflow.set_tags({"step": "select", "winner": decision.winner, GATE_TAG: str(decision.passed).lower(),
                         MODEL_TAG: name,
                         "champion_version": champion.version if champion else "none",
                         "outcome": "register" if decision.passed else "no change", **(tags or {})})
        mlflow.log_metric("gate_passed", float(decision.passed))
        mlflow.log_dict(decision.to_dict(), "decision.json")
    if not decision.passed:
        raise GateFailed(f"gate refused the winner: {decision.reason}. Decision written to {out}; "
                         "the registry was not changed.")
    return decision


@dataclass
class Registered:
    name: str
    version: str
    aliases: list[str]
    uri: str
    run_id: str
    candidate: str
    promoted: AliasChange | None

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "version": self.version, "aliases": self.aliases, "uri": self.uri,
                "champion_uri": f"models:/{self.name}@champion", "run_id": self.run_id,
                "candidate": self.candidate,
                "promotion": None if self.promoted is None else
                {k: v for k, v in self.promoted.to_dict().items() if k != "history"}}


def check_export(export_dir: Path, decision: Mapping[str, Any]) -> tuple[Path, dict, dict]:
    """The exported model, its preprocessing spec and parity report, refusing a model whose parity check
    failed, whose file changed since the check (tampering), or that is not the gate's winner."""
    onnx_path, spec_path, parity_path = (export_dir / n for n in ("model.onnx", "preprocessing.json",
                                                                  "parity.json"))
    parity, spec = (read_json(path, f"{path}: not found (run `fashionrec export` first)")
                    for path in (parity_path, spec_path))
    if not onnx_path.is_file():
        raise DataError(f"{onnx_path}: not found (run `fashionrec export` first)")
    if not parity.get("passed"):
        raise ParityError(f"{onnx_path}: refused, its parity check failed ({parity.get('reason')})")
    actual = sha256_file(onnx_path)
    if parity.get("onnx_sha256") != actual:
        raise ParityError(f"{onnx_path}: refused, the file changed after its parity check "
                          f"(sha256 {actual[:12]} != checked {str(parity.get('onnx_sha256'))[:12]})")
    if spec.get("candidate") != decision["winner"]:
        raise DataError(f"{spec_path}: exported candidate '{spec.get('candidate')}' is not the gate's "
                        f"winner '{decision['winner']}' (re-run export)")
    return onnx_path, spec, parity


def version_tags(decision: Mapping[str, Any], parity: Mapping[str, Any],
                 extra: Mapping[str, str]) -> dict[str, str]:
    tags = {f"{METRIC_PREFIX}{k}": repr(float(v)) for k, v in decision["metrics"].items()}
    tags |= {GATE_TAG: str(bool(decision["passed"])).lower(), "gate.reason": str(decision.get("reason", "")),
             "gate.decision": json.dumps({k: decision.get(k) for k in ("winner", "passed", "reason", "checks",
                                                                      "champion")}),
             "candidate": str(decision["winner"]), "onnx_sha256": str(parity["onnx_sha256"]),
             "parity.embedding_max_abs_diff": repr(float(parity["embedding_max_abs_diff"]))}
    return tags | {k: str(v) for k, v in extra.items()}


def int8_files(export_dir: Path) -> list[Path]:
    """What travels with the registered version so that deploy serves int8 where it holds and says why
    not elsewhere: export's `quantization.json` whenever it ran, `model.int8.onnx` only when accepted."""
    quant = export_dir / "quantization.json"
    if not quant.is_file():
        return []
    if json.loads(quant.read_text()).get("accepted"):
        return [export_dir / "model.int8.onnx", quant]
    return [quant]


def serving_tags(export_dir: Path) -> dict[str, str]:
    """`serving.precision` (int8 | fp32) and `serving.reason` of a version, from export's int8 check."""
    quant = export_dir / "quantization.json"
    if not quant.is_file():
        return {"serving.precision": "fp32", "serving.reason": "no int8 copy (export.quantize.enabled false)"}
    report = json.loads(quant.read_text())
    if report.get("accepted"):
        return {"serving.precision": "int8", "serving.reason": f"int8 {report.get('reason', '')}"}
    return {"serving.precision": "fp32", "serving.reason": f"int8 refused: {report.get('reason', '')}"}


def log_onnx(onnx_path: Path, spec: Mapping[str, Any], spec_path: Path, name: str,
             params: Mapping[str, Any], extra_files: Sequence[Path] = ()) -> Any:
    """mlflow.onnx.log_model with our pip requirements, providers and a tensor signature."""
    import mlflow.onnx
    import numpy as np
    import onnx
    from mlflow.models import ModelSignature
    from mlflow.types import Schema, TensorSpec

    size, dim, n_labels = spec["size"], spec["embedding_dim"], len(spec["labels"])
    signature = ModelSignature(
        inputs=Schema([TensorSpec(np.dtype(np.float32), (-1, 3, size, size), "image")]),
        outputs=Schema([TensorSpec(np.dtype(np.float32), (-1, dim), "embedding"),
                        TensorSpec(np.dtype(np.float32), (-1, n_labels), "logits")]))
    return mlflow.onnx.log_model(
        onnx.load(str(onnx_path)), name="model", registered_model_name=name, signature=signature,
        pip_requirements=list(params.get("pip_requirements", ["onnxruntime-gpu"])),
        onnx_execution_providers=list(params.get("execution_providers",
                                                 ["CUDAExecutionProvider", "CPUExecutionProvider"])),
        extra_files=[str(spec_path), *map(str, extra_files)], save_as_external_data=False)


def register(export_dir: Path, models_dir: Path, decision_path: Path, out: Path, params: Mapping[str, Any],
             tags: Mapping[str, str] | None = None, by: str = "pipeline") -> Registered:
    """Register the exported winner as a new version of `params.name`, alias it `challenger`, and make it
    `champion` when `promotion: auto` (the gate passed, or we would not be here)."""
    decision = read_decision(decision_path)
    name = str(params.get("name", DEFAULT_NAME))
    if not decision["passed"]:
        raise GateFailed(f"{decision_path}: the gate refused {decision['winner']} "
                         f"({decision.get('reason')}); nothing registered")
    promotion = params.get("promotion", "manual")
    if promotion not in ("auto", "manual"):
        raise FashionrecError(f"params register.promotion: must be auto or manual, got {promotion!r}")
    onnx_path, spec, parity = check_export(export_dir, decision)
    candidate = decision["winner"]
    model_dir = models_dir / candidate
    extra = dict(tags or {})
    train_run = model_dir / "mlflow.json"
    if train_run.is_file():
        extra["training_run_id"] = str(read_json(train_run, "").get("run_id", ""))
    client = MlflowClient()
    with mlflow.start_run(run_name=f"register-{candidate}") as run:
        mlflow.set_tags({"step": "register", **extra, "candidate": candidate})
        info = log_onnx(onnx_path, spec, export_dir / "preprocessing.json", name, params,
                        int8_files(export_dir))
        for path in (model_dir / "model.pt", model_dir / "card.json"):
            if path.is_file():
                mlflow.log_artifact(str(path), "pytorch")
        for path in (decision_path, export_dir / "parity.json", export_dir / "quantization.json"):
            if path.is_file():
                mlflow.log_artifact(str(path), "reports")
        quant = export_dir / "quantization.json"
        if quant.is_file() and read_json(quant, "").get("accepted"):
            mlflow.log_artifact(str(export_dir / "model.int8.onnx"), "int8")
        mlflow.log_metrics({k.replace("@", "_at_"): float(v) for k, v in decision["metrics"].items()})
    version = str(info.registered_model_version)
    for key, value in (version_tags(decision, parity, extra) | serving_tags(export_dir)).items():
        client.set_model_version_tag(name, version, key, value)
    client.update_model_version(name, version, description=f"{candidate}: {decision.get('reason', '')}")
    client.set_registered_model_alias(name, CHALLENGER, version)
    promoted = None
    if promotion == "auto":
        promoted = promote(client, name, version, by=f"{by} (promotion: auto)",
                           reason=f"gate passed: {decision.get('reason', '')}")
    result = Registered(name=name, version=version, aliases=aliases_of(client, name, version),
                        uri=f"models:/{name}/{version}", run_id=run.info.run_id, candidate=candidate,
                        promoted=promoted)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result.to_dict(), indent=2) + "\n")
    return result


def promote_version(version: str, name: str, by: str, reason: str, force: bool = False) -> AliasChange:
    """`fashionrec promote VERSION`."""
    return promote(MlflowClient(), name, version, by=by, reason=reason, force=force)


def rollback_champion(name: str, by: str, reason: str) -> AliasChange:
    """`fashionrec rollback`."""
    return roll_back_champion(MlflowClient(), name, by=by, reason=reason)


def champion_history(name: str) -> list[dict[str, Any]]:
    """`fashionrec history`: the champion trail, oldest first."""
    return read_champion_history(MlflowClient(), name)
