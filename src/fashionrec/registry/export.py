"""Export the gate's winner to ONNX, prove it reproduces PyTorch, and optionally quantize it to int8.

Output folder (`export.out`): `model.onnx` (input `image`: float32 NCHW, dynamic batch; outputs
`embedding` (L2-normalised) and `logits`), `preprocessing.json` (how to turn a photo into the input, and
the label vocabulary: also stored in the ONNX metadata_props under `fashionrec.preprocessing`),
`parity.json`, and with quantization `model.int8.onnx` + `quantization.json`. A failed parity check
writes its report and raises ParityError: a model that does not reproduce PyTorch never leaves here.
"""

from __future__ import annotations

import json
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import onnx
import torch

from fashionrec.errors import DataError, FashionrecError, ParityError
from fashionrec.models.base import EmbeddingModel, load_model
from fashionrec.onnx_runtime import DEFAULT_PROVIDERS, create_session
from fashionrec.registry.gate import read_decision
from fashionrec.registry.parity import check_parity, load_images, sample_split, sha256_file

INPUT_NAME = "image"
OUTPUT_NAMES = ("embedding", "logits")
METADATA_KEY = "fashionrec.preprocessing"
MIN_OPSET = 17
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


def preprocessing_spec(model: EmbeddingModel, opset: int) -> dict[str, Any]:
    """Everything serving needs beside the graph. Top-level keys are `Preprocessing` fields, so
    `Preprocessing.from_dict(spec)` rebuilds the exact transform; the rest describes inputs and labels."""
    card = model.card
    prep = card.prep.to_dict()
    prep["labels"] = list(card.labels)
    return {**prep, "classes": list(card.classes), "candidate": card.candidate, "arch": card.arch,
            "embedding_dim": card.embedding_dim, "opset": opset,
            "input": {"name": INPUT_NAME, "dtype": "float32", "layout": "NCHW",
                      "shape": ["batch", 3, card.prep.size, card.prep.size]},
            "outputs": {"embedding": {"shape": ["batch", card.embedding_dim], "l2_normalised": True},
                        "logits": {"shape": ["batch", len(card.labels)],
                                   "category": f"argmax over the first {len(card.classes)}",
                                   "multi_label": "sigmoid >= 0.5"}}}


def export_onnx(model: EmbeddingModel, out_dir: Path, opset: int = MIN_OPSET) -> tuple[Path, Path]:
    """Trace the model with the TorchScript exporter (dynamo=False) into out_dir/model.onnx with a dynamic
    batch axis, embed the preprocessing in metadata_props and write preprocessing.json beside it."""
    if opset < MIN_OPSET:
        raise FashionrecError(f"params export.opset: must be >= {MIN_OPSET}, got {opset}")
    out_dir.mkdir(parents=True, exist_ok=True)
    path, spec_path = out_dir / "model.onnx", out_dir / "preprocessing.json"
    model = model.eval()
    size = model.card.prep.size
    dummy = torch.zeros(2, 3, size, size)
    axes = {INPUT_NAME: {0: "batch"}, **{name: {0: "batch"} for name in OUTPUT_NAMES}}
    with torch.inference_mode(), warnings.catch_warnings():
        warnings.simplefilter("ignore", (UserWarning, DeprecationWarning))  # exporter internals' chatter
        torch.onnx.export(model, (dummy,), str(path), dynamo=False, opset_version=opset,
                          input_names=[INPUT_NAME], output_names=list(OUTPUT_NAMES), dynamic_axes=axes,
                          do_constant_folding=True)
    spec = preprocessing_spec(model, opset)
    graph = onnx.load(str(path))
    set_metadata(graph, {METADATA_KEY: json.dumps(spec), "fashionrec.candidate": model.card.candidate,
                         "fashionrec.labels": json.dumps(list(model.card.labels))})
    graph.doc_string = f"fashionrec {model.card.candidate}: image -> (embedding, logits)"
    onnx.checker.check_model(graph)
    onnx.save(graph, str(path))
    spec_path.write_text(json.dumps(spec, indent=2) + "\n")
    return path, spec_path


def set_metadata(graph: onnx.ModelProto, props: dict[str, str]) -> None:
    keep = [p for p in graph.metadata_props if p.key not in props]
    del graph.metadata_props[:]
    graph.metadata_props.extend(keep)
    for key, value in props.items():
        graph.metadata_props.add(key=key, value=value)


def read_metadata(path: Path) -> dict[str, Any]:
    """The preprocessing spec stored in an exported model's metadata_props."""
    graph = onnx.load(str(path), load_external_data=False)
    props = {p.key: p.value for p in graph.metadata_props}
    if METADATA_KEY not in props:
        raise DataError(f"{path}: no '{METADATA_KEY}' in metadata_props (not exported by fashionrec)")
    return json.loads(props[METADATA_KEY])


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
        from fashionrec.registry.quantize import quantize

        quant = quantize(onnx_path, manifest, model, queries, inventory, params, out_dir)
    files = sorted(p.name for p in out_dir.iterdir())
    return ExportResult(candidate=candidate, onnx_path=str(onnx_path), preprocessing_path=str(spec_path),
                        parity=report, export_seconds=seconds, onnx_sha256=report["onnx_sha256"],
                        quantization=quant, files=files)

