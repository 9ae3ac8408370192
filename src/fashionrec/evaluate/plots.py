"""Pictures of an evaluation: the confusion matrix and a grid of test queries with their top-5 results."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; no display on pipeline machines
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

MATCH, MISS = "#1a7f37", "#cf222e"


def confusion_matrix_png(cm: np.ndarray, classes: list[str], path: Path, title: str) -> Path:
    """Counts in each cell, colour by share of the true class (row), so small classes stay readable."""
    n = len(classes)
    rows = cm.sum(axis=1, keepdims=True)
    share = np.divide(cm, rows, out=np.zeros(cm.shape, dtype=float), where=rows > 0)
    size = max(5.0, 0.6 * n + 2.5)
    fig, ax = plt.subplots(figsize=(size, size * 0.9))
    im = ax.imshow(share, cmap="Blues", vmin=0.0, vmax=1.0)
    for i in range(n):
        for j in range(n):
            if cm[i, j]:
                ax.text(j, i, str(cm[i, j]), ha="center", va="center", fontsize=8,
                        color="white" if share[i, j] > 0.6 else "black")
    ax.set_xticks(range(n), classes, rotation=45, ha="right")
    ax.set_yticks(range(n), classes)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="share of true class")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


@dataclass
class GridRow:
    """One query and its ranked results (images as uint8 HxWx3 arrays)."""

    query: np.ndarray
    query_label: str
    results: list[np.ndarray]
    result_labels: list[str]
    distances: list[float]


def retrieval_grid_png(rows: list[GridRow], path: Path, title: str) -> Path:
    """Query in the first column, its top-k to the right; titles green when the category matches."""
    k = max((len(r.results) for r in rows), default=0)
    fig, axes = plt.subplots(len(rows), k + 1, figsize=(1.7 * (k + 1), 1.9 * len(rows)), squeeze=False)
    for r, row in enumerate(rows):
        ax = axes[r, 0]
        ax.imshow(row.query)
        ax.set_title(f"query: {row.query_label}", fontsize=8, fontweight="bold")
        for c in range(k):
            ax = axes[r, c + 1]
            if c < len(row.results):
                ax.imshow(row.results[c])
                ok = row.result_labels[c] == row.query_label
                ax.set_title(f"#{c + 1} {row.result_labels[c]}\nd={row.distances[c]:.3f}", fontsize=7,
                             color=MATCH if ok else MISS)
        for ax in axes[r]:
            ax.set_xticks([])
            ax.set_yticks([])
    fig.suptitle(title, fontsize=10)
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.35 / (1.9 * max(1, len(rows)))))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
