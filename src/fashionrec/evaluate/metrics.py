"""Metric functions on plain arrays: label quality, category retrieval and instance retrieval.

Label metrics (accuracy, micro/macro F1, per-label precision/recall/F1, the confusion matrix) are
scikit-learn's, behind this module's input checks and conventions (undefined scores are NaN and left out of
means). The retrieval @k metrics are plain numpy: no library computes them on ranked result matrices.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
from sklearn import metrics as skm


def _as_bool_matrix(x: np.ndarray, name: str) -> np.ndarray:
    arr = np.asarray(x)
    if arr.ndim != 2:
        raise ValueError(f"{name}: expected a 2-D (samples, labels) array, got shape {arr.shape}")
    return arr.astype(bool)


def _label_pair(y_true: np.ndarray, y_pred: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    t, p = _as_bool_matrix(y_true, "y_true"), _as_bool_matrix(y_pred, "y_pred")
    if t.shape != p.shape:
        raise ValueError(f"label metrics: shapes differ, {t.shape} vs {p.shape}")
    return t, p


def _sklearn_labels(t: np.ndarray, p: np.ndarray) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """(N, L) indicator matrices as scikit-learn reads them as L labels: a single column would pass for a
    binary target with two classes, so it goes in as one vector scored on its positive label only."""
    if t.shape[1] == 1:
        return t[:, 0], p[:, 0], {"labels": [True]}
    return t, p, {}


def accuracy(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """Share of samples whose predicted class index equals the true one."""
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    if y_true.shape != y_pred.shape or y_true.size == 0:
        raise ValueError(f"accuracy: need equal, non-empty shapes, got {y_true.shape} and {y_pred.shape}")
    return float(skm.accuracy_score(y_true, y_pred))


def micro_f1(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """F1 over all (sample, label) decisions pooled: dominated by frequent labels (0 with no positives)."""
    t, p = _label_pair(y_true, y_pred)
    if t.shape[1] == 0:
        return 0.0
    t, p, labels = _sklearn_labels(t, p)
    return float(skm.f1_score(t, p, average="micro", zero_division=0.0, **labels))


def macro_f1(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """Unweighted mean of per-label F1: every label counts alike, so rare labels weigh in.

    Labels that are neither present nor predicted have no F1 and are left out (`zero_division=np.nan`),
    so an attribute absent from a small test split does not count as 0; 0 when no label has an F1.
    """
    t, p = _label_pair(y_true, y_pred)
    if t.shape[1] == 0:
        return 0.0
    t, p, labels = _sklearn_labels(t, p)
    value = float(skm.f1_score(t, p, average="macro", zero_division=np.nan, **labels))
    return 0.0 if np.isnan(value) else value


def per_label_report(y_true: np.ndarray, y_pred: np.ndarray, names: list[str]) -> pd.DataFrame:
    """precision, recall, f1 and support per label (NaN where undefined, e.g. never predicted)."""
    t, p = _label_pair(y_true, y_pred)
    if len(names) != t.shape[1]:
        raise ValueError(f"per-label report: {len(names)} names for {t.shape[1]} labels")
    if t.shape[1] == 0:
        precision = recall = f1 = np.zeros(0)
        support = np.zeros(0, int)
    else:
        st, sp, labels = _sklearn_labels(t, p)
        precision, recall, f1, support = skm.precision_recall_fscore_support(
            st, sp, average=None, zero_division=np.nan, **labels)
    return pd.DataFrame({"label": names, "precision": precision, "recall": recall, "f1": f1,
                         "support": np.asarray(support).astype(int)})


def sigmoid(logits: np.ndarray) -> np.ndarray:
    """float64 probabilities of (multi-label) logits."""
    return 1.0 / (1.0 + np.exp(-np.asarray(logits, dtype=np.float64)))


def f1_threshold(scores: np.ndarray, truth: np.ndarray, default: float = 0.5) -> float:
    """The decision threshold on `scores` (probabilities) with the best F1 against boolean `truth`.

    Ties go to the highest threshold; the threshold returned is the midpoint between that score and the
    next lower one, so a photo scored like the lowest accepted one is still accepted. `default` where
    truth has no positive (nothing to choose from)."""
    p = np.asarray(scores, dtype=np.float64).ravel()
    t = np.asarray(truth, dtype=bool).ravel()
    if p.shape != t.shape:
        raise ValueError(f"f1 threshold: {p.shape[0]} scores for {t.shape[0]} truths")
    if not t.any():
        return default
    order = np.argsort(-p, kind="stable")
    p, t = p[order], t[order]
    tp = np.cumsum(t)
    f1 = 2 * tp / (np.arange(1, len(p) + 1) + t.sum())
    last = np.r_[p[1:] != p[:-1], True]      # accept every photo down to a distinct score
    f1 = np.where(last, f1, -1.0)
    best = int(np.argmax(f1))
    below = p[best + 1] if best + 1 < len(p) else 0.0
    return float((p[best] + below) / 2)


def prevalence_threshold(scores: np.ndarray, share: float, default: float = 0.5) -> float:
    """The decision threshold on `scores` that accepts the `share` of them scored highest (at least one).

    A quantile: stable where a rare attribute has a handful of positives to choose an F1 from. The
    midpoint between the lowest accepted score and the next lower one; `default` without scores or share."""
    p = np.sort(np.asarray(scores, dtype=np.float64).ravel())[::-1]
    if len(p) == 0 or not share > 0:
        return default
    k = min(len(p), max(1, round(share * len(p))))
    below = p[k] if k < len(p) else 0.0
    return float((p[k - 1] + below) / 2)


def one_hot(indices: np.ndarray, n: int) -> np.ndarray:
    """Class indices (N,) -> boolean (N, n)."""
    out = np.zeros((len(indices), n), dtype=bool)
    out[np.arange(len(indices)), np.asarray(indices, dtype=int)] = True
    return out


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int) -> np.ndarray:
    """(n_classes, n_classes) counts: rows are true classes, columns predicted (classes absent from both
    arrays still get their row and column)."""
    t, p = np.asarray(y_true, dtype=int), np.asarray(y_pred, dtype=int)
    outside = sorted({int(c) for c in np.concatenate([t, p]) if not 0 <= c < n_classes})
    if outside:   # scikit-learn would drop those samples without a word
        raise ValueError(f"confusion matrix: class indices {outside[:10]} outside 0..{n_classes - 1}")
    if n_classes == 1:   # scikit-learn warns on a 1x1 matrix; it is just the count
        return np.array([[t.size]], dtype=np.int64)
    return skm.confusion_matrix(t, p, labels=np.arange(n_classes)).astype(np.int64)


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
