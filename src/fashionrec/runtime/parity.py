"""Does the ONNX model reproduce the PyTorch model? Checked on real images, on what shoppers would see.

Two measures: the largest absolute difference between embeddings (and logits) of the same images, and
whether each query gets the same top-k neighbours from an inventory when both the inventory and the
queries are embedded by the same runtime (PyTorch world vs ONNX world), as serving would do. A neighbour
swap between two items whose distances differ by less than `tie_tolerance` is reported as a tie, not a
mismatch: at that gap the order is decided by float rounding, not by the model.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from fashionrec.core.errors import DataError
from fashionrec.data.images import Preprocessing
from fashionrec.models.base import EmbeddingModel
from fashionrec.runtime.embed import OnnxRunner, prepare
from fashionrec.runtime.session import OnnxSession
from fashionrec.runtime.torch_runner import TorchRunner


@dataclass(frozen=True)
class ImageSet:
    """Preprocessed images (N, 3, S, S) with their ids and categories, for parity and accuracy checks."""

    ids: list[str]
    categories: list[str]
    batch: np.ndarray


def sample_split(manifest: Path, split: str, count: int | None, seed: int) -> list[dict[str, Any]]:
    """Up to `count` rows of one split of a validated manifest (seeded, sorted by id for stability)."""
    from fashionrec.data.manifest import read_manifest

    df = read_manifest(manifest)
    rows = df[df["split"] == split].sort_values("id")
    if rows.empty:
        raise DataError(f"{manifest}: split '{split}' has no images for the parity check")
    if count is not None and count < len(rows):
        rows = rows.sample(n=count, random_state=seed).sort_values("id")
    return rows[["id", "abspath", "category"]].to_dict("records")


def load_images(rows: Sequence[dict[str, Any]], prep: Preprocessing, desc: str) -> ImageSet:
    """Decode and preprocess once, the way evaluation and serving do (`inference.prepare`)."""
    arrays = [prepare(r["abspath"], prep) for r in tqdm(rows, desc=desc, leave=False)]
    return ImageSet(ids=[str(r["id"]) for r in rows], categories=[str(r["category"]) for r in rows],
                    batch=np.stack(arrays).astype(np.float32))


def run_batched(runner: TorchRunner | OnnxRunner, batch: np.ndarray,
                batch_size: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """(embeddings, logits) of a preprocessed batch through one of the shared inference runners."""
    outs = [runner(batch[i:i + batch_size]) for i in range(0, len(batch), batch_size)]
    return np.concatenate([e for e, _ in outs]), np.concatenate([lg for _, lg in outs])


def neighbours(queries: np.ndarray, inventory: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    from fashionrec.index import build_index

    return build_index(inventory, "brute").query(queries, k)


def compare_neighbours(ref_q: np.ndarray, ref_inv: np.ndarray, new_q: np.ndarray, new_inv: np.ndarray,
                       k: int, tie_tolerance: float) -> dict[str, Any]:
    """Top-k of each query in the reference world vs the new world; differing rows split into ties and
    real mismatches (judged by the reference world's distances)."""
    _, ref_idx = neighbours(ref_q, ref_inv, k)
    _, new_idx = neighbours(new_q, new_inv, k)
    identical = (ref_idx == new_idx).all(axis=1)
    ties, mismatches = 0, []
    for row in np.flatnonzero(~identical):
        ref_d = np.linalg.norm(ref_inv[ref_idx[row]] - ref_q[row], axis=1)
        new_d = np.linalg.norm(ref_inv[new_idx[row]] - ref_q[row], axis=1)
        if np.abs(np.sort(ref_d) - np.sort(new_d)).max() <= tie_tolerance:
            ties += 1
        else:
            mismatches.append({"query": int(row), "reference": ref_idx[row].tolist(),
                               "got": new_idx[row].tolist()})
    pairs = zip(ref_idx.tolist(), new_idx.tolist(), strict=True)
    overlap = np.mean([len(set(a) & set(b)) / ref_idx.shape[1] for a, b in pairs])
    return {"k": int(min(k, len(ref_inv))), "queries": int(len(ref_q)), "identical": int(identical.sum()),
            "tie_swaps": ties, "mismatches": mismatches[:20], "mismatch_count": len(mismatches),
            "mean_overlap": float(overlap)}


def throughput(fn, batch: np.ndarray, batch_size: int, repeats: int = 2) -> float:
    """Images per second of `fn(sub-batch)` over the batch (best of `repeats`, after one warm-up)."""
    fn(batch[:batch_size])
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        for i in range(0, len(batch), batch_size):
            fn(batch[i:i + batch_size])
        best = min(best, time.perf_counter() - start)
    return float(len(batch) / best) if best > 0 else float("inf")


def check_parity(model: EmbeddingModel, session: OnnxSession, queries: ImageSet, inventory: ImageSet,
                 atol: float, k: int, tie_tolerance: float, batch_size: int = 32) -> dict[str, Any]:
    """PyTorch vs ONNX Runtime on the same preprocessed images; `passed` says whether both criteria hold."""
    torch_run, onnx_run = TorchRunner(model, "cpu"), OnnxRunner(session)
    t_q, t_ql = run_batched(torch_run, queries.batch, batch_size)
    o_q, o_ql = run_batched(onnx_run, queries.batch, batch_size)
    t_inv, _ = run_batched(torch_run, inventory.batch, batch_size)
    o_inv, _ = run_batched(onnx_run, inventory.batch, batch_size)
    emb_diff = float(max(np.abs(t_q - o_q).max(), np.abs(t_inv - o_inv).max()))
    logit_diff = float(np.abs(t_ql - o_ql).max())
    nn = compare_neighbours(t_q, t_inv, o_q, o_inv, k, tie_tolerance)
    reasons = []
    if not emb_diff <= atol:  # also catches NaN
        reasons.append(f"embedding max abs diff {emb_diff:.3g} exceeds {atol:.3g}")
    if nn["mismatch_count"]:
        reasons.append(f"top-{k} neighbours differ for {nn['mismatch_count']} of {nn['queries']} queries")
    same_category = float((t_ql.argmax(1) == o_ql.argmax(1)).mean())
    return {"passed": not reasons, "reason": "; ".join(reasons) or "embeddings and neighbours match",
            "atol": atol, "embedding_max_abs_diff": emb_diff, "logits_max_abs_diff": logit_diff,
            "same_argmax": same_category, "neighbours": nn, "provider": session.provider,
            "providers": session.providers, "query_images": len(queries.ids),
            "inventory_images": len(inventory.ids), "query_ids": queries.ids}
