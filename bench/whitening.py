"""Benchmark (issue 25): whitening the retrieval embedding, a serve-time lever without retraining.

Retrieval ranks by the cosine of the centred pooled features c = p - m, where a few directions of large
variance (lighting, background, pose) can outweigh the ones that separate categories. Two linear maps,
fitted on the inventory's own features (what a deploy has) and shrunk toward the identity by
alpha x their mean eigenvalue (alpha large: today's embedding; small: full whitening):
- `pca`: the total covariance, (S + a I)^-1/2: every direction of the inventory given equal weight;
- `within`: the within-category covariance, (S_w + a I)^-1/2: the directions in which photos of one
  category differ are shrunk, the ones between categories kept (a metric learnt from the labels, LDA-like).

One embedding pass (the evaluate stage's runner, splits and instance queries); p is recovered from the
normalised embedding and the logits as `embedding_dim.pooled_from_outputs` does; every variant is scored
as the evaluate stage scores it (`embedding_dim.score`).

    python bench/whitening.py --project /work/run8/main --alphas 3 1 0.3 0.1
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import numpy as np
from common import RESULTS, Run
from embedding_dim import COMPARED, pooled_from_outputs, score, trained_candidate

from fashionrec.data.manifest import read_manifest
from fashionrec.evaluate.evaluate import split_frames
from fashionrec.evaluate.instance import make_queries, sample_sources
from fashionrec.runtime.embed import embed_images
from fashionrec.runtime.torch_runner import make_runner


def shrunk_inverse_sqrt(cov: np.ndarray, alpha: float) -> np.ndarray:
    """(cov + alpha * mean eigenvalue * I)^-1/2, symmetric."""
    values, vectors = np.linalg.eigh(cov)
    return (vectors * (values + alpha * values.mean()) ** -0.5) @ vectors.T


def within_covariance(x: np.ndarray, labels: np.ndarray) -> np.ndarray:
    centred = np.vstack([x[labels == k] - x[labels == k].mean(0) for k in np.unique(labels)])
    return centred.T @ centred / len(x)


def unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--project", type=Path, required=True,
                    help="a checkout where the candidate was trained (params.yaml, models/, data/)")
    ap.add_argument("--candidate", default="efficientnet_lite0")
    ap.add_argument("--alphas", type=float, nargs="+", default=[3.0, 1.0, 0.3, 0.1])
    ap.add_argument("--out", type=Path, default=RESULTS / "whitening.json")
    args = ap.parse_args()
    run = Run("whitening")
    cfg, model_dir, data_dir, model = trained_candidate(args.project, args.candidate)
    card = model.card
    test, inventory = split_frames(read_manifest(data_dir), card, str(data_dir))
    sources = sample_sources(len(inventory), cfg.instance_queries, cfg.seed)
    started = time.perf_counter()
    runner = make_runner(model, cfg.backend, cfg.device)
    embed = dict(batch_size=cfg.batch_size, prep=card.prep, flip_tta=False, progress=True)
    out = embed_images(runner, [*test["abspath"], *inventory["abspath"]], **embed)
    shots = make_queries(inventory["abspath"].to_numpy()[sources], cfg.augmentation, card.prep, cfg.seed,
                         progress=False)
    shot_out = embed_images(runner, shots, **embed)
    emb = np.vstack([out.embeddings, shot_out.embeddings])
    logits = np.vstack([out.logits, shot_out.logits])
    n_test, n_inv = len(test), len(inventory)
    results: dict[str, Any] = {"candidate": args.candidate, "model": str(model_dir), "data": str(data_dir),
                               "test": n_test, "inventory": n_inv,
                               "embed_seconds": round(time.perf_counter() - started, 1), "variants": {}}
    centred = (pooled_from_outputs(model, emb, logits).double() - model.emb_mean.double()).numpy()
    stock = centred[n_test:n_test + n_inv]
    covariances = {"pca": np.cov(stock.T),
                   "within": within_covariance(stock, inventory["category"].to_numpy())}
    variants = {"centred (today)": unit(centred)}
    for kind, cov in covariances.items():
        for alpha in args.alphas:
            variants[f"{kind} alpha {alpha}"] = unit(centred @ shrunk_inverse_sqrt(cov, alpha))
    for name, e in variants.items():
        row = score(name, e, logits, n_test, n_inv, test, inventory, sources, card, cfg)
        results["variants"][name] = row
        run.save(results, args.out)
    base = results["variants"]["centred (today)"]
    for row in results["variants"].values():
        row["delta_points"] = {key: round(100 * (row[key] - base[key]), 2) for key in COMPARED}
    run.save(results, args.out)


if __name__ == "__main__":
    main()
