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


# --- misses by category pair ---------------------------------------------------------------------------

ALL_GROUPS = ("all", *GROUPS)
KIND_TITLES = {"argmax": "classifier argmax", "nearest": "nearest item (precision@1)"}
MISS_COLUMNS = ["group", "kind", "true", "predicted", "count", "share"]


def _checked(truth: np.ndarray, predicted: dict[str, np.ndarray],
             kids: np.ndarray) -> tuple[np.ndarray, dict[str, np.ndarray], dict[str, np.ndarray]]:
    truth = np.asarray(truth).astype(str)
    answers = {kind: np.asarray(p).astype(str) for kind, p in predicted.items()}
    kids = np.asarray(kids, dtype=bool)
    for name, arr in {"kids": kids, **{f"predicted[{k}]": v for k, v in answers.items()}}.items():
        if arr.shape != truth.shape:
            raise ValueError(f"misses: {name} has shape {arr.shape}, the true categories {truth.shape}")
    return truth, answers, {"all": np.ones(len(truth), dtype=bool), **group_masks(kids)}


def misses_by_pair(truth: np.ndarray, predicted: dict[str, np.ndarray], kids: np.ndarray) -> pd.DataFrame:
    """Every miss counted by (group, kind, true, predicted), most frequent first, so the next lever is picked
    from the pairs that cost the most. `predicted` maps a kind (`argmax`: the classifier, `nearest`: the
    category of the nearest inventory item) to one category per photo; `share` is the count over the true
    category's photos in that group. A group's counts of a kind add up to its photos minus its hits."""
    truth, answers, masks = _checked(truth, predicted, kids)
    rows = []
    for g, (group, mask) in enumerate(masks.items()):
        for k, (kind, answer) in enumerate(answers.items()):
            miss = mask & (answer != truth)
            pairs = pd.Series(list(zip(truth[miss], answer[miss], strict=True)), dtype=object).value_counts()
            for (true, guess), count in pairs.items():
                n = int((mask & (truth == true)).sum())
                rows.append({"group": group, "kind": kind, "true": true, "predicted": guess,
                             "count": int(count), "share": count / n, "_g": g, "_k": k})
    if not rows:
        return pd.DataFrame(columns=MISS_COLUMNS)
    table = pd.DataFrame(rows).sort_values(["count", "_g", "_k", "true", "predicted"],
                                           ascending=[False, True, True, True, True])
    return table[MISS_COLUMNS].reset_index(drop=True)


def confusion_by_group_png(truth: np.ndarray, predicted: dict[str, np.ndarray], kids: np.ndarray,
                           classes: list[str], path: Path, title: str) -> Path:
    """One row-normalised confusion matrix per group (columns) and kind (rows): colour is the share of the
    true category's photos in that group, numbers are counts; only categories the test split holds or
    predicts, in `classes` order, and each true category's photo count beside its name."""
    truth, answers, masks = _checked(truth, predicted, kids)
    seen = set(truth.tolist()).union(*(set(a.tolist()) for a in answers.values()))
    names = [c for c in classes if c in seen] + sorted(seen - set(classes))
    position = {c: i for i, c in enumerate(names)}
    n = len(names)
    size = max(4.0, 0.38 * n + 2.2)
    fig, axes = plt.subplots(len(answers), len(masks), figsize=(size * len(masks), size * len(answers)),
                             squeeze=False)
    for r, (kind, answer) in enumerate(answers.items()):
        for c, (group, mask) in enumerate(masks.items()):
            ax = axes[r, c]
            counts = np.zeros((n, n), dtype=np.int64)
            np.add.at(counts, ([position[t] for t in truth[mask]], [position[p] for p in answer[mask]]), 1)
            rows = counts.sum(axis=1, keepdims=True)
            share = np.divide(counts, rows, out=np.full(counts.shape, np.nan), where=rows > 0)
            ax.imshow(np.ma.masked_invalid(share), cmap="Blues", vmin=0.0, vmax=1.0)
            for i, j in zip(*np.nonzero(counts), strict=True):
                ax.text(j, i, str(counts[i, j]), ha="center", va="center", fontsize=6,
                        color="white" if share[i, j] > 0.6 else ("black" if i == j else "#cf222e"))
            ax.set_xticks(range(n), names, rotation=60, ha="right", fontsize=7)
            ax.set_yticks(range(n), [f"{name} ({rows[i, 0]})" for i, name in enumerate(names)], fontsize=7)
            ax.set_xlabel("predicted", fontsize=8)
            ax.set_ylabel("true (photos)", fontsize=8)
            hits = int(np.trace(counts))
            total = int(mask.sum())
            rate = f"{hits / total:.3f}" if total else "n/a"
            ax.set_title(f"{group}: {KIND_TITLES.get(kind, kind)}\n{total} photos, right {rate}", fontsize=9)
    fig.suptitle(f"{title}\n(colour: share of the true category's photos in the group; red: misses)",
                 fontsize=10)
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.7 / (size * len(answers))))   # 0.7 in for the two-line title
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
