"""Metric functions on plain arrays: label quality, category retrieval and instance retrieval.

Pure numpy so they can be checked against hand-computed cases and reused by any stage.
"""

from __future__ import annotations

import numpy as np
import pandas as pd


def _as_bool_matrix(x: np.ndarray, name: str) -> np.ndarray:
    arr = np.asarray(x)
    if arr.ndim != 2:
        raise ValueError(f"{name}: expected a 2-D (samples, labels) array, got shape {arr.shape}")
    return arr.astype(bool)


def accuracy(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """Share of samples whose predicted class index equals the true one."""
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    if y_true.shape != y_pred.shape or y_true.size == 0:
        raise ValueError(f"accuracy: need equal, non-empty shapes, got {y_true.shape} and {y_pred.shape}")
    return float(np.mean(y_true == y_pred))


def label_counts(y_true: np.ndarray, y_pred: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-label true positives, false positives and false negatives of (N, L) boolean matrices."""
    t, p = _as_bool_matrix(y_true, "y_true"), _as_bool_matrix(y_pred, "y_pred")
    if t.shape != p.shape:
        raise ValueError(f"label counts: shapes differ, {t.shape} vs {p.shape}")
    tp = (t & p).sum(axis=0)
    fp = (~t & p).sum(axis=0)
    fn = (t & ~p).sum(axis=0)
    return tp, fp, fn


def _f1(tp: np.ndarray, fp: np.ndarray, fn: np.ndarray) -> np.ndarray:
    """F1 = 2tp / (2tp + fp + fn); NaN where a label was neither present nor predicted."""
    denom = 2 * tp + fp + fn
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denom > 0, 2 * tp / np.maximum(denom, 1), np.nan)


def micro_f1(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """F1 over all (sample, label) decisions pooled: dominated by frequent labels."""
    tp, fp, fn = label_counts(y_true, y_pred)
    value = _f1(np.array([tp.sum()]), np.array([fp.sum()]), np.array([fn.sum()]))[0]
    return 0.0 if np.isnan(value) else float(value)


def macro_f1(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """Unweighted mean of per-label F1: every label counts alike, so rare labels weigh in.

    Labels that are neither present nor predicted have no F1 and are left out (sklearn's
    `zero_division=np.nan`), so an attribute absent from a small test split does not count as 0.
    """
    per_label = _f1(*label_counts(y_true, y_pred))
    return 0.0 if np.all(np.isnan(per_label)) else float(np.nanmean(per_label))


def per_label_report(y_true: np.ndarray, y_pred: np.ndarray, names: list[str]) -> pd.DataFrame:
    """precision, recall, f1 and support per label (NaN where undefined, e.g. never predicted)."""
    tp, fp, fn = label_counts(y_true, y_pred)
    if len(names) != tp.size:
        raise ValueError(f"per-label report: {len(names)} names for {tp.size} labels")
    with np.errstate(invalid="ignore", divide="ignore"):
        precision = np.where(tp + fp > 0, tp / np.maximum(tp + fp, 1), np.nan)
        recall = np.where(tp + fn > 0, tp / np.maximum(tp + fn, 1), np.nan)
    return pd.DataFrame({"label": names, "precision": precision, "recall": recall,
                         "f1": _f1(tp, fp, fn), "support": (tp + fn).astype(int)})


def one_hot(indices: np.ndarray, n: int) -> np.ndarray:
    """Class indices (N,) -> boolean (N, n)."""
    out = np.zeros((len(indices), n), dtype=bool)
    out[np.arange(len(indices)), np.asarray(indices, dtype=int)] = True
    return out


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int) -> np.ndarray:
    """(n_classes, n_classes) counts: rows are true classes, columns predicted."""
    cm = np.zeros((n_classes, n_classes), dtype=np.int64)
    np.add.at(cm, (np.asarray(y_true, dtype=int), np.asarray(y_pred, dtype=int)), 1)
    return cm


# --- retrieval ----------------------------------------------------------------------------------------


def _relevance(relevant: np.ndarray, k: int) -> np.ndarray:
    rel = _as_bool_matrix(relevant, "relevant")
    if k < 1 or k > rel.shape[1]:
        raise ValueError(f"k={k} must be between 1 and the {rel.shape[1]} ranked results per query")
    if rel.shape[0] == 0:
        raise ValueError("retrieval metrics need at least one query")
    return rel[:, :k]


def precision_at_k(relevant: np.ndarray, k: int) -> float:
    """Mean over queries of the share of the top k results that are relevant.

    `relevant` is (queries, ranked results): True where the result at that rank is relevant
    (for category retrieval: has the query's category).
    """
    return float(_relevance(relevant, k).mean())


def hit_at_k(relevant: np.ndarray, k: int) -> float:
    """Share of queries with at least one relevant result in the top k."""
    return float(_relevance(relevant, k).any(axis=1).mean())


def average_precision_at_k(relevant: np.ndarray, k: int,
                           n_relevant: np.ndarray | None = None) -> np.ndarray:
    """Per-query AP@k = sum_i P@i * rel_i / min(k, R), R the relevant items in the whole inventory.

    Without `n_relevant`, R is taken as the relevant results found in the top k (a more lenient
    variant that only rewards ranking). Queries with R = 0 score 0.
    """
    rel = _relevance(relevant, k).astype(np.float64)
    ranks = np.arange(1, k + 1)
    precision_at_i = np.cumsum(rel, axis=1) / ranks
    gains = (precision_at_i * rel).sum(axis=1)
    denom = rel.sum(axis=1) if n_relevant is None else np.minimum(k, np.asarray(n_relevant, dtype=np.float64))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denom > 0, gains / np.maximum(denom, 1e-12), 0.0)


def map_at_k(relevant: np.ndarray, k: int, n_relevant: np.ndarray | None = None) -> float:
    """Mean over queries of AP@k (see `average_precision_at_k`)."""
    return float(average_precision_at_k(relevant, k, n_relevant).mean())


def instance_top_k(indices: np.ndarray, targets: np.ndarray, ks: list[int]) -> dict[int, float]:
    """Share of queries whose own source item is among the first k results, for each k.

    `indices` (Q, K) are ranked inventory rows per query; `targets` (Q,) the row each query was made from.
    """
    idx = np.asarray(indices)
    tgt = np.asarray(targets).reshape(-1, 1)
    if idx.ndim != 2 or idx.shape[0] != tgt.shape[0] or idx.shape[0] == 0:
        raise ValueError(f"instance top-k: indices {idx.shape} and targets {tgt.shape[:1]} do not match")
    found = idx == tgt
    out = {}
    for k in ks:
        if k < 1 or k > idx.shape[1]:
            raise ValueError(f"instance top-k: k={k} outside 1..{idx.shape[1]}")
        out[k] = float(found[:, :k].any(axis=1).mean())
    return out


def percentile_ms(seconds: np.ndarray, q: float) -> float:
    """The q-th percentile of durations in seconds, in milliseconds."""
    arr = np.asarray(seconds, dtype=np.float64)
    if arr.size == 0:
        raise ValueError("percentile of no durations")
    return float(np.percentile(arr, q) * 1000.0)
