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
INT8_FILE, QUANT_REPORT = "model.int8.onnx", "quantization.json"
PRECISIONS = ("auto", "fp32", "int8")
MODELS_URI = re.compile(r"^models:/(?P<name>[^/@]+)(?:@(?P<alias>[^/]+)|/(?P<version>\d+))$")


@dataclass(frozen=True)
class ModelSource:
    """One ONNX file ready to bundle, and what it is."""

    onnx_path: Path
    preprocessing: dict[str, Any]   # Preprocessing.to_dict() plus classes/labels (export's spec)
    version: str                    # `fashionrec/7` for a registered model, `local-<sha12>` for a file
    uri: str                        # what was asked for, an alias pinned (`models:/fashionrec/7`)
    precision: str = "fp32"         # fp32 | int8: the file embeds the inventory and the queries alike
    precision_reason: str = ""      # why this precision (int8 accepted, refused, absent, asked for)

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


def _find_onnx(folder: Path, spec: str) -> Path:
    found = sorted(folder.rglob("*.onnx"))
    if not found:
        raise ModelSourceError(f"model '{spec}': artifacts missing: the registry's copy holds no .onnx file")
    named = [p for p in found if p.name == "model.onnx"]
    return (named or found)[0]


def choose_precision(fp32: Path, folder: Path, precision: str) -> tuple[Path, str, str]:
    """(file, precision, reason) among a registered version's files: its int8 copy where export's check
    accepted it (`auto`, `int8`), else the fp32 model; `int8` without an accepted copy is an error."""
    if precision not in PRECISIONS:
        raise ModelSourceError(f"index.precision: '{precision}' is not one of {', '.join(PRECISIONS)}")
    int8 = next(iter(sorted(folder.rglob(INT8_FILE))), None)
    report_path = next(iter(sorted(folder.rglob(QUANT_REPORT))), None)
    report = json.loads(report_path.read_text()) if report_path else {}
    if precision == "fp32":
        return fp32, "fp32", "fp32 asked for (index.precision)"
    if int8 is not None and report.get("accepted"):
        return int8, "int8", (f"int8 accepted by export: accuracy {report.get('accuracy_fp32', 0):.4f} -> "
                              f"{report.get('accuracy_int8', 0):.4f}, neighbour overlap "
                              f"{report.get('neighbour_overlap', 0):.3f}")
    why = (f"int8 refused by export: {report.get('reason')}" if report
           else "the version has no int8 copy (export.quantize.enabled false)")
    if precision == "int8":
        raise ModelSourceError(f"index.precision: int8 asked for, but {why}")
    return fp32, "fp32", why


def resolve_model(spec: str, workdir: Path, tracking_uri: str | None = None,
                  precision: str = "auto") -> ModelSource:
    """Fetch `models:/NAME@ALIAS` or `models:/NAME/VERSION` from MLflow into workdir, or take a local
    ONNX file as it is. The alias is resolved to a version first, so the bundle records what it got.
    A registered version's int8 copy is taken where it holds (`choose_precision`); a local file's
    precision is what its metadata says."""
    from fashionrec.runtime.metadata import read_precision

    match = MODELS_URI.match(spec.strip())
    if match is None:
        path = Path(spec).expanduser()
        if not path.is_file():
            raise ModelSourceError(f"model '{spec}': neither a models:/ URI nor an existing ONNX file")
        own = read_precision(path)
        if precision not in ("auto", own):
            raise ModelSourceError(f"model '{spec}' is {own}, but index.precision asks for {precision}")
        return ModelSource(onnx_path=path.resolve(), preprocessing=read_preprocessing(path),
                           version=f"local-{sha256_file(path)[:12]}", uri=str(path.resolve()),
                           precision=own, precision_reason=f"local {own} file")

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
    except OSError as exc:   # a version whose artifacts were deleted from the artifact store
        raise ModelSourceError(f"model '{spec}': artifacts missing or unreadable ({exc})") from exc
    except MlflowException as exc:
        hint = (f" (no version of '{name}' has the alias '{alias}' yet: promote one with "
                f"`fashionrec promote VERSION`)") if alias is not None and exc.error_code in (
                    "RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE", "NOT_FOUND") else ""
        raise ModelSourceError(f"model '{spec}': {exc.message}{hint}") from exc
    fp32 = _find_onnx(local, pinned)
    chosen, used, reason = choose_precision(fp32, local, precision)
    return ModelSource(onnx_path=chosen, preprocessing=read_preprocessing(fp32),
                       version=f"{name}/{version}", uri=pinned, precision=used, precision_reason=reason)


def pin_model(spec: str, tracking_uri: str | None = None) -> tuple[str, str]:
    """(pinned spec, version) without downloading anything: an alias is read from the registry, a local
    file is hashed. What the deploy wants is decided from this; the files are fetched only to build."""
    match = MODELS_URI.match(spec.strip())
    if match is None:
        path = Path(spec).expanduser()
        if not path.is_file():
            raise ModelSourceError(f"model '{spec}': neither a models:/ URI nor an existing ONNX file")
        return str(path.resolve()), f"local-{sha256_file(path)[:12]}"
    name, alias, version = match["name"], match["alias"], match["version"]
    if alias is not None:
        import mlflow
        from mlflow import MlflowClient
        from mlflow.exceptions import MlflowException

        if tracking_uri:
            mlflow.set_tracking_uri(tracking_uri)
        try:
            version = str(MlflowClient().get_model_version_by_alias(name, alias).version)
        except MlflowException as exc:
            raise ModelSourceError(f"model '{spec}': {exc.message} (no version of '{name}' has the alias "
                                   f"'{alias}' yet: promote one with `fashionrec promote VERSION`)") from exc
    return f"models:/{name}/{version}", f"{name}/{version}"
