"""Quality per shopper group (kids / adults) and per category, on one or several test splits.

A model can look good on average and still serve kids badly (kids' photos are ~6 % of the catalog), so
every test split is also scored per group, the way the gate floors it: category accuracy of the logits,
and the category of the nearest inventory items (precision@1, precision@5), which is what a shopper
sees. The benchmark split (the published top-10 split) is scored with argmax over its own classes only,
the task its published figures measure.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

GROUPS = ("kids", "adults")


def group_masks(kids: np.ndarray) -> dict[str, np.ndarray]:
    """Boolean masks of each group over the queries (`kids` column of the manifest)."""
    kids = np.asarray(kids, dtype=bool)
    return {"kids": kids, "adults": ~kids}


def scores(correct: np.ndarray, relevant: np.ndarray) -> dict[str, float]:
    """accuracy (argmax), precision_at_1 and precision_at_5 (category of the nearest items) of a group."""
    return {"accuracy": float(np.mean(correct)), "precision_at_1": float(np.mean(relevant[:, 0])),
            "precision_at_5": float(np.mean(relevant[:, :5]))}


def by_group(correct: np.ndarray, relevant: np.ndarray, kids: np.ndarray) -> dict[str, dict[str, float]]:
    """{kids: {n, accuracy, precision_at_1, precision_at_5}, adults: {...}}; a group with no query has n 0."""
    out: dict[str, dict[str, float]] = {}
    for group, mask in group_masks(kids).items():
        out[group] = {"n": int(mask.sum()), **(scores(correct[mask], relevant[mask]) if mask.any() else {})}
    return out


def by_category(split: str, categories: np.ndarray, correct: np.ndarray, relevant: np.ndarray,
                kids: np.ndarray) -> pd.DataFrame:
    """One row per (split, category, group) with n and the three scores; group `all` included."""
    rows = []
    masks = {"all": np.ones(len(categories), dtype=bool), **group_masks(kids)}
    for category in sorted(set(categories.tolist())):
        for group, mask in masks.items():
            pick = mask & (categories == category)
            if pick.any():
                rows.append({"split": split, "category": category, "group": group, "n": int(pick.sum()),
                             **scores(correct[pick], relevant[pick])})
    return pd.DataFrame(rows, columns=["split", "category", "group", "n", "accuracy", "precision_at_1",
                                       "precision_at_5"])


def by_group_png(table: pd.DataFrame, path: Path, title: str, metric: str = "precision_at_1") -> Path:
    """One panel per split: `metric` per category for kids and adults side by side (n under each bar)."""
    splits = list(dict.fromkeys(table["split"]))
    fig, axes = plt.subplots(len(splits), 1, figsize=(11, 3.2 * len(splits) + 0.8), squeeze=False)
    colours = {"adults": "#4c72b0", "kids": "#dd8452"}
    for ax, split in zip(axes[:, 0], splits, strict=True):
        part = table[table["split"] == split]
        categories = sorted(set(part["category"]))
        x = np.arange(len(categories))
        for i, group in enumerate(GROUPS):
            rows = part[part["group"] == group].set_index("category").reindex(categories)
            values = rows[metric].fillna(0).to_numpy()
            bars = ax.bar(x + (i - 0.5) * 0.4, values, 0.4, color=colours[group], label=group)
            for bar, n in zip(bars, rows["n"].fillna(0).astype(int), strict=True):
                if n:
                    ax.text(bar.get_x() + bar.get_width() / 2, 0.02, str(n), ha="center", fontsize=6,
                            color="white")
        overall = part[part["group"] == "all"]
        mean = float(np.average(overall[metric], weights=overall["n"])) if len(overall) else float("nan")
        ax.axhline(mean, color="grey", lw=0.8, ls="--")
        ax.set_xticks(x, categories, rotation=30, ha="right", fontsize=8)
        ax.set_ylim(0, 1.05)
        ax.set_ylabel(metric.replace("_", " "))
        ax.set_title(f"{split}: {metric} by category (dashed: all, {mean:.3f}; numbers: queries)", fontsize=9)
        ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
