"""Where the deployed model comes from: the registry's champion (`models:/fashionrec@champion`) or a local
ONNX file (tests, development). Either way we end with one ONNX file, its preprocessing and a version
string that names exactly which model it is.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fashionrec.core.errors import ModelSourceError
from fashionrec.core.files import sha256_file
from fashionrec.data.images import Preprocessing

PREPROCESSING_FILE = "preprocessing.json"
MODELS_URI = re.compile(r"^models:/(?P<name>[^/@]+)(?:@(?P<alias>[^/]+)|/(?P<version>\d+))$")


@dataclass(frozen=True)
class ModelSource:
    """One ONNX file ready to bundle, and what it is."""

    onnx_path: Path
    preprocessing: dict[str, Any]   # Preprocessing.to_dict() plus classes/labels (export's spec)
    version: str                    # `fashionrec/7` for a registered model, `local-<sha12>` for a file
    uri: str                        # what was asked for, an alias pinned (`models:/fashionrec/7`)

    @property
    def prep(self) -> Preprocessing:
        return Preprocessing.from_dict(self.preprocessing)


def read_preprocessing(onnx_path: Path) -> dict[str, Any]:
    """The spec export stored in the model's metadata, else `preprocessing.json` beside the model."""
    from fashionrec.runtime.metadata import read_metadata

    try:
        return read_metadata(onnx_path)
    except Exception as exc:  # DataError without the key; protobuf errors for a file that is not ONNX
        beside = onnx_path.parent / PREPROCESSING_FILE
        if beside.is_file():
            try:
                return json.loads(beside.read_text())
            except ValueError as bad:
                raise ModelSourceError(f"{beside}: not valid JSON ({bad})") from bad
        raise ModelSourceError(f"{onnx_path}: no preprocessing found ({exc}; no {PREPROCESSING_FILE} "
                               "beside it)") from exc


def _find_onnx(folder: Path) -> Path:
    found = sorted(folder.rglob("*.onnx"))
    if not found:
        raise ModelSourceError(f"{folder}: the downloaded model holds no .onnx file")
    named = [p for p in found if p.name == "model.onnx"]
    return (named or found)[0]


def resolve_model(spec: str, workdir: Path, tracking_uri: str | None = None) -> ModelSource:
    """Fetch `models:/NAME@ALIAS` or `models:/NAME/VERSION` from MLflow into workdir, or take a local
    ONNX file as it is. The alias is resolved to a version first, so the bundle records what it got."""
    match = MODELS_URI.match(spec.strip())
    if match is None:
        path = Path(spec).expanduser()
        if not path.is_file():
            raise ModelSourceError(f"model '{spec}': neither a models:/ URI nor an existing ONNX file")
        return ModelSource(onnx_path=path.resolve(), preprocessing=read_preprocessing(path),
                           version=f"local-{sha256_file(path)[:12]}", uri=str(path.resolve()))

    import mlflow
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    if tracking_uri:
        mlflow.set_tracking_uri(tracking_uri)
    name, alias, version = match["name"], match["alias"], match["version"]
    try:
        if alias is not None:
            version = str(MlflowClient().get_model_version_by_alias(name, alias).version)
        pinned = f"models:/{name}/{version}"
        workdir.mkdir(parents=True, exist_ok=True)
        local = Path(mlflow.artifacts.download_artifacts(artifact_uri=pinned, dst_path=str(workdir)))
    except MlflowException as exc:
        hint = (f" (no version of '{name}' has the alias '{alias}' yet: promote one with "
                f"`fashionrec promote VERSION`)") if alias is not None and exc.error_code in (
                    "RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE", "NOT_FOUND") else ""
        raise ModelSourceError(f"model '{spec}': {exc.message}{hint}") from exc
    onnx_path = _find_onnx(local)
    return ModelSource(onnx_path=onnx_path, preprocessing=read_preprocessing(onnx_path),
                       version=f"{name}/{version}", uri=pinned)
