"""Optional int8 model: static quantization calibrated on training images, with its own report.

Int8 changes the numbers by design, so it is judged by what matters to a shopper rather than by the
fp32 tolerance: category accuracy on test images versus the fp32 ONNX model, and how many of the fp32
top-k neighbours survive. `accepted` is false (and register ships only fp32) when the accuracy drops by
more than `max_accuracy_drop` or the mean neighbour overlap falls below `min_neighbour_overlap`.

The defaults (`DEFAULTS`, mirrored in params.yaml `export.quantize`) come from measurements of the trained
efficientnet_lite0 with onnxruntime 1.31 on an AVX512-VNNI/AMX Xeon:
- uint8 activations x int8 weights (U8S8) is the pair MLAS's VNNI/AMX kernels take; with int8 activations
  ORT on x86 rewrites the Q/DQ pairs to uint8 at load, 14 of the 49 convolutions and every Add miss the
  fused int8 kernels, and the graph is no faster than fp32.
- Per-channel weights: per-tensor scales cost 3 accuracy points on the depthwise convolutions.
- Percentile calibration clips the rare activation outliers MinMax stretches the uint8 range for
  (accuracy drop 0-0.3 point instead of 0.3-0.8).
- Keeping convolutions fp32 here and there does not pay: every fp32 island between int8 layers adds Q/DQ,
  layout transposes and NCHWc reorders (depthwise kept fp32: no faster than fp32 at batch 1, slower at 32).
  Note that ORT re-quantizes (per tensor) at load a float convolution left between Q/DQ pairs, so
  `nodes_to_exclude` keeps a node fp32 only where its neighbours are not quantized either.
- Keeping the *front* fp32 does pay (`fp32_front`, a share of the convolutions counted from the input):
  one fp32 -> int8 boundary, and the first layers (high resolution, few channels) carry most of the
  embedding's int8 error while costing a small part of the compute; the fine-tuned last blocks quantize
  well (docs/BENCHMARKS.md).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from fashionrec.core.errors import FashionrecError
from fashionrec.core.settings import QuantizeSection
from fashionrec.models.base import EmbeddingModel
from fashionrec.runtime.embed import OnnxRunner
from fashionrec.runtime.metadata import PRECISION_KEY
from fashionrec.runtime.parity import (
    ImageSet,
    compare_neighbours,
    load_images,
    run_batched,
    sample_split,
    throughput,
)
from fashionrec.runtime.session import DEFAULT_PROVIDERS, create_session

SETTINGS = ("format", "activation_type", "weight_type", "per_channel", "reduce_range", "calibration",
            "percentile", "calibration_images", "nodes_to_exclude", "fp32_front")
# the defaults are QuantizeSection's (params' one set of defaults)
DEFAULTS: dict[str, Any] = {key: QuantizeSection.model_fields[key].get_default(call_default_factory=True)
                            for key in SETTINGS}
FORMATS = ("qdq", "qoperator")
TYPES = ("uint8", "int8")
CALIBRATIONS = ("minmax", "percentile", "entropy")


class _Calibration:
    """onnxruntime.quantization.CalibrationDataReader over preprocessed images, one batch at a time.

    Every batch has the same size (the largest divisor of the image count up to `batch_size`): the
    histogram calibrators (percentile, entropy) stack the batches' activations and refuse ragged ones.
    """

    def __init__(self, batch: np.ndarray, input_name: str, batch_size: int) -> None:
        batch_size = max(d for d in range(1, max(1, min(batch_size, len(batch))) + 1) if len(batch) % d == 0)
        starts = range(0, len(batch), batch_size)
        self._batches = iter([{input_name: batch[i:i + batch_size]} for i in starts])

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._batches, None)


def accuracy(logits: np.ndarray, images: ImageSet, classes: list[str]) -> float:
    """Category accuracy: argmax over the first len(classes) logits against the manifest category."""
    index = {c: i for i, c in enumerate(classes)}
    truth = np.array([index.get(c, -1) for c in images.categories])
    return float((logits[:, :len(classes)].argmax(1) == truth).mean())


def settings(q: dict[str, Any]) -> dict[str, Any]:
    """The quantization choices of `export.quantize` over `DEFAULTS`, checked (the message names the key)."""
    s = {key: q.get(key, default) for key, default in DEFAULTS.items()}
    for key, allowed in (("format", FORMATS), ("activation_type", TYPES), ("weight_type", TYPES),
                         ("calibration", CALIBRATIONS)):
        if s[key] not in allowed:
            raise FashionrecError(f"export.quantize.{key}: '{s[key]}' is not one of {', '.join(allowed)}")
    for key, within, span in (("percentile", lambda x: 0 < x <= 100, "(0, 100]"),
                              ("fp32_front", lambda x: 0 <= x <= 1, "[0, 1]")):
        value = s[key]
        if isinstance(value, bool) or not isinstance(value, int | float) or not within(value):
            raise FashionrecError(f"export.quantize.{key}: {value!r} is not a number in {span}")
    return s


def front_nodes(nodes: list[Any], share: float) -> list[str]:
    """Names of the nodes before the first quantized convolution: the first `share` of the graph's
    convolutions (rounded down) and whatever follows them up to the next one. ONNX lists nodes in
    topological order, so this is one contiguous fp32 front with a single boundary into int8."""
    convs = [i for i, node in enumerate(nodes) if node.op_type == "Conv"]
    keep = int(share * len(convs))
    if keep == 0:
        return []
    cut = convs[keep] if keep < len(convs) else len(nodes)
    return [node.name for node in nodes[:cut]]


def static_options(s: dict[str, Any]) -> dict[str, Any]:
    """Checked settings -> keyword arguments of onnxruntime's quantize_static."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType

    types = {"uint8": QuantType.QUInt8, "int8": QuantType.QInt8}
    methods = {"minmax": CalibrationMethod.MinMax, "percentile": CalibrationMethod.Percentile,
               "entropy": CalibrationMethod.Entropy}
    return {"quant_format": QuantFormat.QDQ if s["format"] == "qdq" else QuantFormat.QOperator,
            "activation_type": types[s["activation_type"]], "weight_type": types[s["weight_type"]],
            "per_channel": bool(s["per_channel"]), "reduce_range": bool(s["reduce_range"]),
            "calibrate_method": methods[s["calibration"]], "nodes_to_exclude": list(s["nodes_to_exclude"]),
            "extra_options": ({"CalibPercentile": float(s["percentile"])}
                              if s["calibration"] == "percentile" else {})}


def mark_int8(fp32_path: Path, int8_path: Path) -> None:
    """Give the int8 copy the fp32 model's metadata (preprocessing, labels) and `fashionrec.precision:
    int8`, so the file alone says how to feed it and what it is (deploy and bundles read it)."""
    import onnx

    from fashionrec.runtime.export import set_metadata

    source = {p.key: p.value for p in onnx.load(str(fp32_path), load_external_data=False).metadata_props}
    graph = onnx.load(str(int8_path))
    set_metadata(graph, {**source, PRECISION_KEY: "int8"})
    onnx.save(graph, str(int8_path))


def quantize(onnx_path: Path, manifest: Path, model: EmbeddingModel, queries: ImageSet, inventory: ImageSet,
             params: dict[str, Any], out_dir: Path) -> dict[str, Any]:
    """Write out_dir/model.int8.onnx and quantization.json; returns the report.

    The model first goes through ORT's pre-processing optimisation, which folds the explicit Pad nodes
    of TF-style "same" padding into the convolutions: quantized with them left in, the int8 graph is no
    faster than fp32. Symbolic shape inference is skipped: it changes nothing on this static graph.
    """
    import onnx
    from onnxruntime.quantization import quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    q = params.get("quantize", {})
    chosen = settings(q)
    seed = int(params.get("parity", {}).get("seed", 0))
    providers = params.get("providers", DEFAULT_PROVIDERS)
    prep = model.card.prep
    calib = load_images(sample_split(manifest, "train", int(chosen["calibration_images"]), seed + 1), prep,
                        "int8 calibration")
    evaluation = load_images(sample_split(manifest, "test", q.get("eval_images", 200), seed), prep,
                             "int8 evaluation")
    batch_size = int(q.get("batch_size", 16))
    pre = out_dir / "model.pre.onnx"
    int8 = out_dir / "model.int8.onnx"
    quant_pre_process(str(onnx_path), str(pre), skip_symbolic_shape=True)
    try:
        nodes = list(onnx.load(str(pre)).graph.node)
        if unknown := sorted(set(chosen["nodes_to_exclude"]) - {n.name for n in nodes}):
            raise FashionrecError(f"export.quantize.nodes_to_exclude: no node named {', '.join(unknown)}")
        kept = list(dict.fromkeys([*front_nodes(nodes, float(chosen["fp32_front"])),
                                   *chosen["nodes_to_exclude"]]))
        reader = _Calibration(calib.batch, "image", batch_size)
        quantize_static(str(pre), str(int8), reader, **{**static_options(chosen), "nodes_to_exclude": kept})
    finally:
        pre.unlink(missing_ok=True)
    mark_int8(onnx_path, int8)

    fp32 = OnnxRunner(create_session(onnx_path, providers))
    i8 = OnnxRunner(create_session(int8, providers))
    f_emb, f_logits = run_batched(fp32, evaluation.batch, batch_size)
    q_emb, q_logits = run_batched(i8, evaluation.batch, batch_size)
    f_inv, _ = run_batched(fp32, inventory.batch, batch_size)
    q_inv, _ = run_batched(i8, inventory.batch, batch_size)
    k = int(params.get("parity", {}).get("top_k", 5))
    nn = compare_neighbours(f_emb, f_inv, q_emb, q_inv, k, tie_tolerance=0.0)
    acc_fp32 = accuracy(f_logits, evaluation, model.card.classes)
    acc_int8 = accuracy(q_logits, evaluation, model.card.classes)
    fp32_ips = throughput(fp32, evaluation.batch, batch_size)
    int8_ips = throughput(i8, evaluation.batch, batch_size)
    max_drop = float(q.get("max_accuracy_drop", 0.02))
    min_overlap = float(q.get("min_neighbour_overlap", 0.8))
    reasons = []
    if acc_fp32 - acc_int8 > max_drop:
        reasons.append(f"accuracy drops {acc_fp32 - acc_int8:.3f} > {max_drop}")
    if nn["mean_overlap"] < min_overlap:
        reasons.append(f"top-{k} neighbour overlap {nn['mean_overlap']:.3f} < {min_overlap}")
    report = {
        "accepted": not reasons, "reason": "; ".join(reasons) or "within limits",
        "serving_precision": "int8" if not reasons else "fp32",
        "max_accuracy_drop": max_drop, "min_neighbour_overlap": min_overlap,
        "onnx": str(int8), "eval_images": len(evaluation.ids), "calibration_images": len(calib.ids),
        "accuracy_fp32": acc_fp32, "accuracy_int8": acc_int8,
        "embedding_max_abs_diff": float(np.abs(f_emb - q_emb).max()),
        "embedding_mean_cosine": float(np.mean(np.sum(f_emb * q_emb, axis=1))),
        "neighbour_overlap": nn["mean_overlap"], "neighbours_identical": nn["identical"],
        "images_per_s_fp32": fp32_ips, "images_per_s_int8": int8_ips, "speedup": int8_ips / fp32_ips,
        "size_mb_fp32": onnx_path.stat().st_size / 1e6, "size_mb_int8": int8.stat().st_size / 1e6,
        "provider": i8.session.provider, "fp32_nodes": len(kept),
        "settings": chosen,
    }
    (out_dir / "quantization.json").write_text(json.dumps(report, indent=2) + "\n")
    return report
