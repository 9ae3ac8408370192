"""Optional int8 model: static QDQ quantization calibrated on training images, with its own report.

Int8 changes the numbers by design, so it is judged by what matters to a shopper rather than by the
fp32 tolerance: category accuracy on test images versus the fp32 ONNX model, and how many of the fp32
top-k neighbours survive. `accepted` is false (and register ships only fp32) when the accuracy drops by
more than `max_accuracy_drop` or the mean neighbour overlap falls below `min_neighbour_overlap`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from fashionrec.models.base import EmbeddingModel
from fashionrec.models.inference import OnnxRunner
from fashionrec.onnx_runtime import DEFAULT_PROVIDERS, create_session
from fashionrec.registry.parity import (
    ImageSet,
    compare_neighbours,
    load_images,
    run_batched,
    sample_split,
    throughput,
)


class _Calibration:
    """onnxruntime.quantization.CalibrationDataReader over preprocessed images, one batch at a time."""

    def __init__(self, batch: np.ndarray, input_name: str, batch_size: int) -> None:
        starts = range(0, len(batch), batch_size)
        self._batches = iter([{input_name: batch[i:i + batch_size]} for i in starts])

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._batches, None)


def accuracy(logits: np.ndarray, images: ImageSet, classes: list[str]) -> float:
    """Category accuracy: argmax over the first len(classes) logits against the manifest category."""
    index = {c: i for i, c in enumerate(classes)}
    truth = np.array([index.get(c, -1) for c in images.categories])
    return float((logits[:, :len(classes)].argmax(1) == truth).mean())


def quantize(onnx_path: Path, manifest: Path, model: EmbeddingModel, queries: ImageSet, inventory: ImageSet,
             params: dict[str, Any], out_dir: Path) -> dict[str, Any]:
    """Write out_dir/model.int8.onnx and quantization.json; returns the report."""
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    q = params.get("quantize", {})
    seed = int(params.get("parity", {}).get("seed", 0))
    providers = params.get("providers", DEFAULT_PROVIDERS)
    prep = model.card.prep
    calib = load_images(sample_split(manifest, "train", q.get("calibration_images", 64), seed + 1), prep,
                        "int8 calibration")
    evaluation = load_images(sample_split(manifest, "test", q.get("eval_images", 200), seed), prep,
                             "int8 evaluation")
    pre = out_dir / "model.pre.onnx"
    int8 = out_dir / "model.int8.onnx"
    quant_pre_process(str(onnx_path), str(pre), skip_symbolic_shape=True)
    quantize_static(str(pre), str(int8), _Calibration(calib.batch, "image", 16),
                    quant_format=QuantFormat.QDQ, per_channel=True, activation_type=QuantType.QInt8,
                    weight_type=QuantType.QInt8)
    pre.unlink(missing_ok=True)

    fp32 = OnnxRunner(create_session(onnx_path, providers))
    i8 = OnnxRunner(create_session(int8, providers))
    batch_size = int(q.get("batch_size", 16))
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
        "onnx": str(int8), "eval_images": len(evaluation.ids), "calibration_images": len(calib.ids),
        "accuracy_fp32": acc_fp32, "accuracy_int8": acc_int8,
        "embedding_max_abs_diff": float(np.abs(f_emb - q_emb).max()),
        "embedding_mean_cosine": float(np.mean(np.sum(f_emb * q_emb, axis=1))),
        "neighbour_overlap": nn["mean_overlap"], "neighbours_identical": nn["identical"],
        "images_per_s_fp32": fp32_ips, "images_per_s_int8": int8_ips, "speedup": int8_ips / fp32_ips,
        "size_mb_fp32": onnx_path.stat().st_size / 1e6, "size_mb_int8": int8.stat().st_size / 1e6,
        "provider": i8.session.provider,
    }
    (out_dir / "quantization.json").write_text(json.dumps(report, indent=2) + "\n")
    return report
