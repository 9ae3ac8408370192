"""What an exported model says about itself (the preprocessing spec in its metadata_props), readable
without torch: deploy and registry checks read it from a registered ONNX file."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import onnx

from fashionrec.core.errors import DataError

INPUT_NAME = "image"
OUTPUT_NAMES = ("embedding", "logits")
METADATA_KEY = "fashionrec.preprocessing"
PRECISION_KEY = "fashionrec.precision"   # fp32 | int8: which numbers the graph computes in
MIN_OPSET = 17


def read_precision(path: Path) -> str:
    """`int8` for a quantized copy made by export, else `fp32` (also for models without the key)."""
    graph = onnx.load(str(path), load_external_data=False)
    return {p.key: p.value for p in graph.metadata_props}.get(PRECISION_KEY, "fp32")


def read_metadata(path: Path) -> dict[str, Any]:
    """The preprocessing spec stored in an exported model's metadata_props."""
    graph = onnx.load(str(path), load_external_data=False)
    props = {p.key: p.value for p in graph.metadata_props}
    if METADATA_KEY not in props:
        raise DataError(f"{path}: no '{METADATA_KEY}' in metadata_props (not exported by fashionrec)")
    return json.loads(props[METADATA_KEY])


