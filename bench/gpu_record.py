"""Record one candidate of bench/gpu_recipe.sh: its test, retrieval and instance figures, epochs, the wall
times the script measured, and the MLflow run's tags (recipe, device, device_name, torch/CUDA/cuDNN
versions), as OUT/<candidate>.json plus one table row. Run by the script on the GPU machine.

Usage: python bench/gpu_record.py CANDIDATE TRAIN_S EVAL_S MODELS_DIR METRICS_DIR OUT_DIR
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from common import Run, table

TAGS = ("recipe", "recipe_reason", "device", "device_name", "torch_version", "cuda_version", "cudnn_version")
FIGURES = ("test.accuracy", "test.micro_f1", "retrieval.precision_at_1", "retrieval.precision_at_5",
           "instance.top5", "kids.precision_at_1", "adults.precision_at_1")


def dotted(tree: dict[str, Any], key: str) -> Any:
    for part in key.split("."):
        tree = tree.get(part) if isinstance(tree, dict) else None
    return tree


def main() -> None:
    candidate, train_s, eval_s, models, metrics_dir, out = sys.argv[1:7]
    folder = Path(models) / candidate
    card = json.loads((folder / "card.json").read_text())
    metrics = json.loads((Path(metrics_dir) / f"{candidate}.json").read_text())
    ref = json.loads((folder / "mlflow.json").read_text())
    from mlflow.tracking import MlflowClient

    tags = MlflowClient(tracking_uri=ref["tracking_uri"]).get_run(ref["run_id"]).data.tags
    extra = card.get("extra") or {}
    row = {"candidate": candidate, **{t: tags.get(t) for t in TAGS},
           "epochs_run": extra.get("epochs_run"), "best_epoch": extra.get("best_epoch"),
           "train_s": float(train_s), "evaluate_s": float(eval_s),
           **{f: dotted(metrics, f) for f in FIGURES}}
    Run(f"gpu_recipe_{candidate}").save({"row": row, "metrics": metrics, "card_config": card.get("config"),
                                         "tags": dict(tags)}, Path(out) / f"{candidate}.json")
    print(table([row], ["candidate", "recipe", "device_name", "epochs_run", "train_s", "evaluate_s",
                        *FIGURES]))


if __name__ == "__main__":
    main()
