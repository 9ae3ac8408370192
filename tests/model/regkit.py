"""Helpers shared by the gate, export and registry tests: real candidates, metrics files, decisions."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from fashionrec.models.base import EmbeddingModel
from fashionrec.models.factory import build_model, new_card
from fashionrec.models.store import save_model

BLOCKS: dict[str, dict[str, Any]] = {
    "simple_cnn": {"arch": "simple_cnn", "size": 64},
    "efficientnet_lite0": {"arch": "efficientnet", "variant": "lite0"},
}
GATED = {"test.micro_f1": 0.5, "retrieval.precision_at_5": 0.5, "instance.top5": 0.5}


def real_model(candidate: str, classes: list[str], attributes: list[str], pretrained: bool,
               seed: int = 0) -> EmbeddingModel:
    """A candidate built by the project's factory (untrained head: a real model for parity purposes)."""
    torch.manual_seed(seed)
    card = new_card(candidate, BLOCKS[candidate], classes, [*classes, *attributes])
    return build_model(card, pretrained=pretrained).eval()


def metrics_tree(micro_f1: float, p5: float, top5: float, **extra: float) -> dict[str, Any]:
    """A metrics/<candidate>.json body in the evaluation contract's nested layout."""
    return {"test": {"accuracy": micro_f1, "micro_f1": micro_f1, "macro_f1": micro_f1 - 0.02},
            "retrieval": {"precision_at_1": p5, "precision_at_5": p5, "hit_at_5": min(1.0, p5 + 0.1)},
            "instance": {"top1": top5 - 0.1, "top5": top5, "top10": min(1.0, top5 + 0.05)},
            "latency": {"query_ms_p50": 1.0}, **extra}


def write_metrics(metrics_dir: Path, candidate: str, micro_f1: float, p5: float, top5: float) -> Path:
    metrics_dir.mkdir(parents=True, exist_ok=True)
    path = metrics_dir / f"{candidate}.json"
    path.write_text(json.dumps(metrics_tree(micro_f1, p5, top5)))
    return path


def select_params(**over: Any) -> dict[str, Any]:
    return {"primary_metric": "test.micro_f1", "thresholds": dict(GATED), "max_regression": 0.01, **over}


def save_candidate(models_dir: Path, model: EmbeddingModel) -> Path:
    return save_model(model, models_dir / model.card.candidate)


def export_params(**over: Any) -> dict[str, Any]:
    """Small parity/quantization settings for the tiny dataset (8 test and 32 train images)."""
    return {"opset": 17, "parity": {"queries": 8, "inventory": 32, "atol": 1e-4, "top_k": 5,
                                    "tie_tolerance": 1e-5, "batch_size": 16, "seed": 0},
            "quantize": {"enabled": False, "calibration_images": 16, "eval_images": 8, "batch_size": 8,
                         "max_accuracy_drop": 0.5, "min_neighbour_overlap": 0.0}, **over}
