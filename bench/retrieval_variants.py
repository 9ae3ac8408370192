"""Benchmark (issue 25): serve-time levers on a trained candidate, without retraining.

- **Framing**: the eval crop (`crop_fraction`: 0.875, the training's; 1.0 keeps the whole shorter side) and
  the input size (224, the training's; larger sizes see more detail, the FixRes effect).
- **Test-time flip** (`evaluate.flip_tta`): each photo averaged with its mirror image.
- **Re-ranking by the classifier**: the nearest `--shortlist` items re-scored as
  cosine similarity + lambda * log p(item's category | query), p the softmax of the query's class logits.

Each framing is one embedding pass through the evaluate stage's ONNX runner (its card's preprocessing
swapped); everything is scored as the evaluate stage scores it (`embedding_dim.score`: splits, index kind,
instance queries, metric functions). Where the candidate was fitted on train + validation, validation
photos were seen in training: choose on a candidate fitted on train only (`--select-on validation`:
validation queries against the train inventory), then read test.

    python bench/retrieval_variants.py --project /work/run2 --frames 224:0.875 224:1.0 256:1.0 --flip
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from pathlib import Path
from typing import Any

import numpy as np
from common import RESULTS, Run
from embedding_dim import COMPARED, score, trained_candidate

from fashionrec.data.manifest import read_manifest
from fashionrec.evaluate.evaluate import split_frames
from fashionrec.evaluate.instance import make_queries, sample_sources
from fashionrec.runtime.embed import embed_images
from fashionrec.runtime.torch_runner import make_runner

LAMBDAS = (0.0, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0)


def reranked(queries: np.ndarray, logits: np.ndarray, stock: np.ndarray, stock_class: np.ndarray,
             shortlist: int, lam: float) -> np.ndarray:
    """Inventory rows ranked by similarity + lam * log p(item's class | query) within the shortlist."""
    sims = queries @ stock.T
    top = np.argsort(-sims, axis=1, kind="stable")[:, :shortlist]
    z = logits - logits.max(1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(1, keepdims=True))
    s = np.take_along_axis(sims, top, 1) + lam * np.take_along_axis(logp, stock_class[top], 1)
    return np.take_along_axis(top, np.argsort(-s, axis=1, kind="stable"), 1)


def precision(ranked: np.ndarray, truth: np.ndarray, stock_class: np.ndarray, k: int) -> float:
    return float((stock_class[ranked[:, :k]] == truth[:, None]).mean())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--project", type=Path, required=True,
                    help="a checkout where the candidate was trained (params.yaml, models/, data/)")
    ap.add_argument("--candidate", default="efficientnet_lite0")
    ap.add_argument("--frames", nargs="+", default=["224:0.875", "224:1.0"], help="SIZE:CROP_FRACTION")
    ap.add_argument("--flip", action="store_true", help="also each framing with test-time flip")
    ap.add_argument("--shortlist", type=int, default=100)
    ap.add_argument("--select-on", choices=["test", "validation"], default="test",
                    help="validation: queries = validation, inventory = train (a train-only candidate)")
    ap.add_argument("--out", type=Path, default=RESULTS / "retrieval_variants.json")
    args = ap.parse_args()
    run = Run("retrieval_variants")
    cfg, model_dir, data_dir, model = trained_candidate(args.project, args.candidate)
    card = model.card
    df = read_manifest(data_dir)
    if args.select_on == "validation":
        df = df[df["split"] != "test"].replace({"split": {"validation": "test"}})
    test, inventory = split_frames(df, card, str(data_dir))
    classes = {c: i for i, c in enumerate(card.classes)}
    truth = test["category"].map(classes).to_numpy()
    stock_class = inventory["category"].map(classes).to_numpy()
    sources = sample_sources(len(inventory), cfg.instance_queries, cfg.seed)
    results: dict[str, Any] = {"candidate": args.candidate, "model": str(model_dir), "data": str(data_dir),
                               "queries": args.select_on, "test": len(test), "inventory": len(inventory),
                               "variants": {}}
    for frame in args.frames:
        size, fraction = frame.split(":")
        for flip in ([False, True] if args.flip else [False]):
            name = f"{size}px crop {fraction}{' + flip' if flip else ''}"
            started = time.perf_counter()
            model.card = dataclasses.replace(card, preprocessing={**card.preprocessing, "size": int(size),
                                                                  "crop_fraction": float(fraction)})
            runner = make_runner(model, cfg.backend, cfg.device)   # exported at this size
            embed = dict(batch_size=cfg.batch_size, prep=model.card.prep, flip_tta=flip, progress=False)
            out = embed_images(runner, [*test["abspath"], *inventory["abspath"]], **embed)
            shots = make_queries(inventory["abspath"].to_numpy()[sources], cfg.augmentation, model.card.prep,
                                 cfg.seed, progress=False)
            shot_out = embed_images(runner, shots, **embed)
            emb = np.vstack([out.embeddings, shot_out.embeddings])
            logits = np.vstack([out.logits, shot_out.logits])
            row = score(name, emb, logits, len(test), len(inventory), test, inventory, sources, card, cfg)
            q, stock = out.embeddings[:len(test)], out.embeddings[len(test):]
            row["rerank"] = {}
            for lam in LAMBDAS:
                ranked = reranked(q, out.logits[:len(test), :len(card.classes)], stock, stock_class,
                                  args.shortlist, lam)
                row["rerank"][str(lam)] = {"precision_at_1": precision(ranked, truth, stock_class, 1),
                                           "precision_at_5": precision(ranked, truth, stock_class, 5)}
            row["seconds"] = round(time.perf_counter() - started, 1)
            print(f"  rerank: {row['rerank']}", flush=True)
            results["variants"][name] = row
            run.save(results, args.out)
    base = next(iter(results["variants"].values()))
    for row in results["variants"].values():
        row["delta_points"] = {key: round(100 * (row[key] - base[key]), 2) for key in COMPARED}
    run.save(results, args.out)


if __name__ == "__main__":
    main()
