"""Benchmark: images/s of one model, side by side: PyTorch eager, ONNX Runtime fp32, ONNX Runtime int8.

The model is efficientnet_lite0 as the project builds it (ImageNet backbone + the project's head): the
trained one from models/efficientnet_lite0/ when present, else the ImageNet backbone with a head fitted in
a few seconds (PCA projection + logistic regression on frozen pooled features of --fit-images training
photos), so int8 accuracy is measured on a head that means something; --no-fit keeps the untrained head.
Inputs are real test-split photos of data/validated (random pixels if the dataset is absent).
The int8 model is made by the project's `registry.quantize.quantize` with the settings of params.yaml
`export.quantize` (static, calibrated on training images), which also reports test accuracy fp32 vs int8.

    nice -n 10 .venv/bin/python bench/embed.py --batches 1 32 --repeats 5
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from common import ROOT, Run, cores, fp32_peak, table

from fashionrec.models.base import EmbeddingModel
from fashionrec.models.factory import build_model, new_card
from fashionrec.models.store import load_model
from fashionrec.runtime.embed import OnnxRunner
from fashionrec.runtime.export import export_onnx
from fashionrec.runtime.torch_runner import TorchRunner


def build(models_dir: Path, manifest: Path) -> tuple[EmbeddingModel, str]:
    trained = models_dir / "efficientnet_lite0" / "model.pt"
    if trained.is_file():
        return load_model(trained), f"trained ({os.path.relpath(trained, ROOT)})"
    tree = yaml.safe_load((ROOT / "params.yaml").read_text())
    dataset = manifest.parent / "dataset.json"
    if dataset.is_file():
        meta = json.loads(dataset.read_text())
        classes, labels = meta["classes"], meta["labels"]
    else:
        classes = tree["subset"]["classes"]
        labels = [*classes, "kids"]
    torch.manual_seed(0)
    card = new_card("efficientnet_lite0", tree["train"]["models"]["efficientnet_lite0"], classes, labels)
    return build_model(card, pretrained=True).eval(), "ImageNet backbone, untrained head"


def fit_head(model: EmbeddingModel, manifest: Path, count: int, seed: int) -> dict[str, Any]:
    """PCA -> embedding_dim as `project`, logistic regression on it as the class rows of `classifier`."""
    from sklearn.decomposition import PCA
    from sklearn.linear_model import LogisticRegression

    from fashionrec.runtime.parity import load_images, sample_split

    rows = sample_split(manifest, "train", count, seed)
    images = load_images(rows, model.card.prep, "fit head")
    started = time.perf_counter()
    with torch.inference_mode():
        pooled = torch.cat([model.pooled(torch.from_numpy(images.batch[i:i + 32]))
                            for i in range(0, len(images.batch), 32)]).numpy()
    dim = model.cfg.embedding_dim
    pca = PCA(n_components=min(dim, len(pooled) - 1), random_state=seed).fit(pooled)
    z = pca.transform(pooled)
    classes = model.card.classes
    y = np.array([classes.index(c) for c in images.categories])
    clf = LogisticRegression(max_iter=2000, C=1.0).fit(z, y)
    with torch.no_grad():
        w = np.zeros((dim, pooled.shape[1]), np.float32)
        w[:pca.n_components_] = pca.components_
        model.project.weight.copy_(torch.from_numpy(w))
        model.project.bias.copy_(torch.from_numpy(-(w @ pca.mean_).astype(np.float32)))
        cw = np.zeros((len(model.card.labels), dim), np.float32)
        cb = np.zeros(len(model.card.labels), np.float32)
        cw[clf.classes_, :pca.n_components_] = clf.coef_
        cb[clf.classes_] = clf.intercept_
        model.classifier.weight.copy_(torch.from_numpy(cw))
        model.classifier.bias.copy_(torch.from_numpy(cb))
    return {"fit_images": len(rows), "fit_seconds": round(time.perf_counter() - started, 1),
            "train_accuracy": float(clf.score(z, y))}


def model_flops(model: EmbeddingModel) -> float:
    """FLOPs of one image's forward pass (torch.utils.flop_counter: 2 FLOP per multiply-add)."""
    from torch.utils.flop_counter import FlopCounterMode

    size = model.card.prep.size
    counter = FlopCounterMode(display=False)
    with torch.inference_mode(), counter:
        model(torch.zeros(1, 3, size, size))
    return float(counter.get_total_flops())


def images_per_s(fn, batch: np.ndarray, batch_size: int, repeats: int,
                 min_seconds: float) -> dict[str, float]:
    """Median images/s over `repeats` timed passes (each at least `min_seconds`), after a warm-up."""
    x = np.ascontiguousarray(np.resize(batch, (batch_size, *batch.shape[1:])), np.float32)
    fn(x)
    rates = []
    for _ in range(repeats):
        n, start = 0, time.perf_counter()
        while True:
            fn(x)
            n += batch_size
            elapsed = time.perf_counter() - start
            if elapsed >= min_seconds:
                break
        rates.append(n / elapsed)
    return {"images_per_s": float(np.median(rates)), "best": float(max(rates)), "repeats": repeats}


def threaded(runner: TorchRunner, threads: int):
    def call(batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        torch.set_num_threads(threads)
        return runner(batch)

    return call


def cuda_runners(model: EmbeddingModel) -> dict[str, Any]:
    """Eager CUDA runners on a copy of the model (TorchRunner moves its model to the device)."""
    import copy

    runner = TorchRunner(copy.deepcopy(model), "cuda")

    def bf16(batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        with torch.autocast("cuda", dtype=torch.bfloat16):
            return runner(batch)

    print(f"cuda: {torch.cuda.get_device_name(0)}")
    return {"torch eager CUDA fp32": runner, "torch eager CUDA bf16": bf16}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--manifest", type=Path, default=ROOT / "data/validated/manifest.parquet")
    ap.add_argument("--models-dir", type=Path, default=ROOT / "models")
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 32])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--min-seconds", type=float, default=2.0, help="per timed pass")
    ap.add_argument("--fit-images", type=int, default=400, help="training photos for the quick head fit")
    ap.add_argument("--no-fit", action="store_true", help="keep the untrained head")
    ap.add_argument("--calibration-images", type=int, help="default: params.yaml export.quantize")
    ap.add_argument("--eval-images", type=int, default=0, help="test photos for accuracy (0: all)")
    ap.add_argument("--torch-threads", type=int, nargs="+", default=sorted({1, cores()}),
                    help="eager is timed at each; the best is the baseline (OpenMP spin-waits collapse "
                         "when the cores are shared)")
    ap.add_argument("--skip-int8", action="store_true")
    ap.add_argument("--cuda", action="store_true",
                    help="also time PyTorch eager on CUDA, fp32 and bf16 autocast (host-to-device copy and "
                         "the embeddings' copy back included, as the evaluate and index steps do)")
    ap.add_argument("--fma-units", type=int, default=2, help="FMA ports per core for the peak")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()

    run = Run("embed")
    torch.set_num_threads(cores())
    model, origin = build(args.models_dir, args.manifest)
    have_data = args.manifest.is_file()
    fitted = None
    if "untrained" in origin and have_data and not args.no_fit:
        fitted = fit_head(model, args.manifest, args.fit_images, seed=0)
        origin = (f"ImageNet backbone + head fitted on frozen features of {fitted['fit_images']} train "
                  "photos (PCA + logistic regression; no fine-tuning)")
    model.eval()
    print(f"model: efficientnet_lite0, {origin}")
    flops = model_flops(model)
    peak = fp32_peak(fma_units=args.fma_units)
    size = model.card.prep.size
    if have_data:
        from fashionrec.runtime.parity import load_images, sample_split

        rows = sample_split(args.manifest, "test", 32, 1)
        sample = load_images(rows, model.card.prep, "bench images").batch
    else:
        sample = np.random.default_rng(0).standard_normal((32, 3, size, size)).astype(np.float32)

    results: dict[str, Any] = {"model": "efficientnet_lite0", "origin": origin, "input_size": size,
                               "gflop_per_image": round(flops / 1e9, 4),
                               "gmac_per_image": round(flops / 2e9, 4), "peak": peak, "threads": cores(),
                               "head_fit": fitted, "rows": []}
    with tempfile.TemporaryDirectory(prefix="fashionrec-bench-embed-") as tmp:
        onnx_path, _ = export_onnx(model, Path(tmp))
        runners: dict[str, Any] = {f"torch eager fp32 {t}t": threaded(TorchRunner(model, "cpu"), t)
                                   for t in args.torch_threads}
        runners["onnxruntime fp32"] = OnnxRunner(onnx_path.read_bytes(), device="cpu")
        if args.cuda:
            runners.update(cuda_runners(model))
        quant = None
        if not args.skip_int8 and have_data:
            from fashionrec.registry.export import parity_images
            from fashionrec.runtime.quantize import quantize

            q = yaml.safe_load((ROOT / "params.yaml").read_text())["export"]["quantize"]
            q.update(eval_images=args.eval_images or None, batch_size=32)
            if args.calibration_images:
                q["calibration_images"] = args.calibration_images
            params = {"parity": {"seed": 42, "queries": 32, "inventory": 96, "top_k": 5},
                      "providers": ["CPUExecutionProvider"], "quantize": q}
            queries, inventory = parity_images(args.manifest, params, model)
            started = time.perf_counter()
            quant = quantize(onnx_path, args.manifest, model, queries, inventory, params, Path(tmp))
            quant["seconds"] = round(time.perf_counter() - started, 1)
            runners["onnxruntime int8"] = OnnxRunner(Path(tmp) / "model.int8.onnx", device="cpu")
        elif not args.skip_int8:
            print("no data/validated: int8 skipped (it needs calibration and test images)")
        for batch_size in args.batches:
            for name, runner in runners.items():
                r = images_per_s(runner, sample, batch_size, args.repeats, args.min_seconds)
                gflops = r["images_per_s"] * flops / 1e9
                row = {"backend": name, "batch": batch_size, "images_per_s": round(r["images_per_s"], 1),
                       "ms_per_image": round(1000 / r["images_per_s"], 2), "gflops": round(gflops, 1),
                       "pct_of_peak": (round(100 * gflops / peak["gflops"], 1)
                                       if "fp32" in name and "CUDA" not in name else None)}
                results["rows"].append(row)
                print(f"  {name:20s} batch {batch_size:3d}: {row['images_per_s']:8.1f} images/s")
        results["quantization"] = quant and {k: v for k, v in quant.items() if k != "onnx"}

    def rate(backend: str, batch: int) -> float | None:
        return next((r["images_per_s"] for r in results["rows"]
                     if r["backend"] == backend and r["batch"] == batch), None)

    checks = []
    for b in args.batches:
        eager = max(rate(f"torch eager fp32 {t}t", b) for t in args.torch_threads)
        fp32, int8 = rate("onnxruntime fp32", b), rate("onnxruntime int8", b)
        fp32_row = next(r for r in results["rows"] if r["backend"] == "onnxruntime fp32" and r["batch"] == b)
        checks.append({"batch": b, "eager_best": eager, "ort_vs_eager": round(fp32 / eager, 2),
                       "target_ort_vs_eager": 4.0,
                       "ort_pct_peak": fp32_row["pct_of_peak"], "target_pct_peak": 60.0,
                       "int8_vs_fp32": round(int8 / fp32, 2) if int8 else None, "target_int8_vs_fp32": 1.5})
    if quant:
        drop = 100 * (quant["accuracy_fp32"] - quant["accuracy_int8"])
        results["accuracy"] = {"fp32": quant["accuracy_fp32"], "int8": quant["accuracy_int8"],
                               "drop_points": round(drop, 2), "target_max_drop_points": 0.5,
                               "eval_images": quant["eval_images"], "met": drop <= 0.5}
    for c in checks:
        c["met"] = {"ort_vs_eager": c["ort_vs_eager"] >= 4.0, "pct_peak": c["ort_pct_peak"] >= 60.0,
                    "int8": c["int8_vs_fp32"] is not None and c["int8_vs_fp32"] >= 1.5}
    results["checks"] = checks
    print()
    columns = ["backend", "batch", "images_per_s", "ms_per_image", "gflops", "pct_of_peak"]
    print(table(results["rows"], columns))
    print(f"\n{flops / 2e9:.3f} GMAC/image; fp32 peak {peak['gflops']} GFLOP/s ({peak['formula']})")
    print(table(checks, ["batch", "ort_vs_eager", "ort_pct_peak", "int8_vs_fp32"]))
    if quant:
        a = results["accuracy"]
        print(f"test accuracy ({a['eval_images']} images): fp32 {a['fp32']:.4f}, int8 {a['int8']:.4f}, "
              f"drop {a['drop_points']} points (target <= 0.5)")
    run.save(results, args.out)


if __name__ == "__main__":
    main()
