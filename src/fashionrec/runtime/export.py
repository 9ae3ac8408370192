"""ONNX export of a PyTorch candidate: the graph (input `image`: float32 NCHW, dynamic batch; outputs
`embedding` (L2-normalised) and `logits`) with its preprocessing spec in metadata_props and beside it."""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import onnx
import torch

from fashionrec.core.errors import FashionrecError
from fashionrec.models.base import EmbeddingModel
from fashionrec.runtime.metadata import INPUT_NAME, METADATA_KEY, MIN_OPSET, OUTPUT_NAMES, PRECISION_KEY


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
                                   "multi_label": "sigmoid >= thresholds[label] (0.5 where absent)",
                                   "thresholds": {k: float(v) for k, v in card.thresholds.items()}}}}


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
    set_metadata(graph, {METADATA_KEY: json.dumps(spec), PRECISION_KEY: "fp32",
                         "fashionrec.candidate": model.card.candidate,
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


