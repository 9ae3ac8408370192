"""The `export` step: the gate's winner to ONNX, proved to reproduce PyTorch, and optionally quantized.

Output folder (`export.out`): `model.onnx`, `preprocessing.json` (how to turn a photo into the input, and
the label vocabulary: also stored in the ONNX metadata_props under `fashionrec.preprocessing`),
`parity.json`, and with quantization `model.int8.onnx` + `quantization.json`. A failed parity check
writes its report and raises ParityError: a model that does not reproduce PyTorch never leaves here.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fashionrec.core.errors import FashionrecError, ParityError
from fashionrec.core.files import sha256_file
from fashionrec.models.base import EmbeddingModel
from fashionrec.models.store import load_model
from fashionrec.registry.gate import read_decision
from fashionrec.runtime.export import export_onnx
from fashionrec.runtime.metadata import MIN_OPSET
from fashionrec.runtime.parity import check_parity, load_images, sample_split
from fashionrec.runtime.session import DEFAULT_PROVIDERS, create_session

EXPORT_FILES = ("model.onnx", "preprocessing.json", "parity.json", "model.int8.onnx", "quantization.json",
                "model.pre.onnx")


@dataclass
class ExportResult:
    candidate: str
    onnx_path: str
    preprocessing_path: str
    parity: dict[str, Any]
    export_seconds: float
    onnx_sha256: str
    quantization: dict[str, Any] | None = None
    files: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        parity = {k: v for k, v in self.parity.items() if k != "query_ids"}
        return {"candidate": self.candidate, "onnx": self.onnx_path, "preprocessing": self.preprocessing_path,
                "onnx_sha256": self.onnx_sha256, "export_seconds": round(self.export_seconds, 2),
                "parity": parity, "quantization": self.quantization, "files": self.files}


def parity_images(manifest: Path, params: dict[str, Any], model: EmbeddingModel):
    """(queries from the test split, inventory from the train split), preprocessed as the model wants."""
    p = params.get("parity", {})
    seed = int(p.get("seed", 0))
    prep = model.card.prep
    queries = load_images(sample_split(manifest, "test", p.get("queries", 32), seed), prep, "parity queries")
    inventory = load_images(sample_split(manifest, "train", p.get("inventory", 96), seed), prep,
                            "parity inventory")
    return queries, inventory


def verify(model: EmbeddingModel, onnx_path: Path, queries, inventory, params: dict[str, Any],
           report_path: Path) -> dict[str, Any]:
    """Run the parity check, write its report (with the ONNX file's sha256) and raise if it failed."""
    p = params.get("parity", {})
    session = create_session(onnx_path, params.get("providers", DEFAULT_PROVIDERS))
    report = check_parity(model, session, queries, inventory, atol=float(p.get("atol", 1e-4)),
                          k=int(p.get("top_k", 5)), tie_tolerance=float(p.get("tie_tolerance", 1e-5)),
                          batch_size=int(p.get("batch_size", 32)))
    report["onnx"] = str(onnx_path)
    report["onnx_sha256"] = sha256_file(onnx_path)
    report_path.write_text(json.dumps(report, indent=2) + "\n")
    if not report["passed"]:
        raise ParityError(f"{onnx_path}: ONNX Runtime does not reproduce PyTorch ({report['reason']}); "
                          f"report in {report_path}")
    return report


def export(models_dir: Path, decision_path: Path, manifest: Path, out_dir: Path,
           params: dict[str, Any]) -> ExportResult:
    """The `export` stage: the gate's winner -> ONNX + preprocessing + parity (+ int8) in out_dir."""
    decision = read_decision(decision_path)
    if not decision["passed"]:
        raise FashionrecError(f"{decision_path}: the gate refused {decision['winner']} "
                              f"({decision.get('reason')}); nothing to export")
    candidate = decision["winner"]
    model = load_model(Path(models_dir) / candidate)
    for name in EXPORT_FILES:  # never leave files of an earlier winner behind
        (out_dir / name).unlink(missing_ok=True)
    start = time.perf_counter()
    onnx_path, spec_path = export_onnx(model, out_dir, int(params.get("opset", MIN_OPSET)))
    seconds = time.perf_counter() - start
    queries, inventory = parity_images(manifest, params, model)
    report = verify(model, onnx_path, queries, inventory, params, out_dir / "parity.json")
    quant = None
    if params.get("quantize", {}).get("enabled", False):
        from fashionrec.runtime.quantize import quantize

        quant = quantize(onnx_path, manifest, model, queries, inventory, params, out_dir)
    files = sorted(p.name for p in out_dir.iterdir())
    return ExportResult(candidate=candidate, onnx_path=str(onnx_path), preprocessing_path=str(spec_path),
                        parity=report, export_seconds=seconds, onnx_sha256=report["onnx_sha256"],
                        quantization=quant, files=files)

