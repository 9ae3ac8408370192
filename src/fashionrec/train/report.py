"""Per-epoch history of a training run: `history.csv` (a DVC plot) and `loss_curve.png`."""

from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Any

COLUMNS = ["epoch", "train_loss", "val_loss", "val_micro_f1", "val_accuracy", "lr"]
THRESHOLD = "val_threshold."   # + attribute: the epoch's attribute threshold, where a threshold rule is set


def thresholds_of(record: dict[str, Any]) -> dict[str, float]:
    """{attribute: threshold} recorded in one epoch's history row."""
    return {key.removeprefix(THRESHOLD): value for key, value in record.items() if key.startswith(THRESHOLD)}


def write_history(history: list[dict[str, Any]], path: Path) -> Path:
    """COLUMNS, then any per-epoch attribute thresholds (`val_threshold.<attribute>`)."""
    extra = sorted({k for row in history for k in row if k.startswith(THRESHOLD)})
    with path.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=COLUMNS + extra, extrasaction="ignore")
        writer.writeheader()
        for row in history:
            writer.writerow({k: "" if isinstance(v, float) and math.isnan(v) else v for k, v in row.items()})
    return path


def plot_history(history: list[dict[str, Any]], path: Path, title: str) -> Path:
    """Train/validation loss (left axis) and validation micro-F1 and accuracy (right axis) per epoch."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [row["epoch"] for row in history]
    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    for key, style in (("train_loss", "o-"), ("val_loss", "s-")):
        values = [row.get(key, math.nan) for row in history]
        if any(not math.isnan(v) for v in values):
            ax.plot(epochs, values, style, label=key)
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss")
    right = ax.twinx()
    for key, style in (("val_micro_f1", "^--"), ("val_accuracy", "v--")):
        right.plot(epochs, [row.get(key, math.nan) for row in history], style, color="tab:green"
                   if key == "val_micro_f1" else "tab:olive", label=key)
    right.set_ylabel("validation score")
    right.set_ylim(0, 1)
    lines = ax.get_legend_handles_labels()[0] + right.get_legend_handles_labels()[0]
    labels = ax.get_legend_handles_labels()[1] + right.get_legend_handles_labels()[1]
    ax.legend(lines, labels, loc="center right", fontsize=8)
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path
