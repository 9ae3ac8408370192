"""Benchmark: DDP training throughput here (1 vs 2 processes, gloo on CPU) and a projection to N GPU nodes.

Measured here, through the real CLI (`fashionrec train simple_cnn`, `--nproc 2`):
- a generated tiny dataset whose training rows are repeated to `--images` (the same files: the pixel cache
  is filled once, so the figures are the training steps, not decoding);
- each configuration trained `--epochs` epochs after a warm-up run; one epoch's cost is the median
  interval between consecutive epochs' MLflow metric timestamps (training + validation + checkpoint,
  without start-up, data loading or saving). Configurations: 1 process x 1 thread, 1 process x 2 threads
  (both cores), 2 processes x 1 thread (DDP);
- the decode + augmentation rate of one core on real photos (`--photos`, the torchvision pipeline the GPU
  config trains through), the bound a GPU node's loaders put on its GPUs.

Projected (a model, not a measurement; its assumptions are printed with it): images/s of efficientnet_lite0
full fine-tuning on N nodes x G GPUs, from the measured per-GPU rate in docs/BENCHMARKS.md (H100), the
trainable parameter count (the all-reduce's size), ring all-reduce time over the stated bandwidths (not
overlapped with the backward pass: pessimistic), and the loaders' CPU bound.

    nice -n 19 .venv/bin/python bench/train_scale.py --images 2048 --size 64 --epochs 4
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml
from common import ROOT, Run, table

CLI = str(Path(sys.executable).with_name("fashionrec"))
GPU_IMAGES_PER_S = 650.0   # docs/BENCHMARKS.md "GPU": efficientnet_lite0_gpu, 3,068 photos, 90 s / 19 epochs
SETUPS = [("1 process x 1 thread", 1, 1), ("1 process x 2 threads", 1, 2), ("2 processes x 1 thread", 2, 1)]


def dataset(work: Path, images: int) -> Path:
    """The tiny dataset through ingest -> subset -> validate, its training rows repeated to `images`."""
    sys.path.insert(0, str(ROOT))
    from fashionrec.data.manifest import read_manifest
    from fashionrec.data.synthetic import make_tiny_dataset
    from tests.conftest import run_data_stages, tiny_params

    root = work / "project"
    params = tiny_params(root, make_tiny_dataset(work / "source" / "clothing-dataset"))
    run_data_stages(params)
    validated = root / "data" / "validated" / "benchmark"
    df = read_manifest(validated)
    train = df[df["split"] == "train"]
    repeated = pd.concat([train] * -(-images // len(train)), ignore_index=True).head(images)
    big = pd.concat([df[df["split"] != "train"], repeated], ignore_index=True)
    out = work / "validated"
    out.mkdir()
    big.assign(path=big["abspath"]).drop(columns=["abspath"]).to_parquet(out / "manifest.parquet")
    shutil.copy(validated / "dataset.json", out / "dataset.json")
    return out / "manifest.parquet"


def params_file(work: Path, manifest: Path, batch: int, size: int) -> Path:
    tree = yaml.safe_load((ROOT / "params.yaml").read_text())
    tree["train"].update(manifest=str(manifest), models_dir="models", cache_dir=str(work / "cache"),
                         checkpoints_dir="checkpoints", device="cpu")
    tree["train"]["models"]["simple_cnn"].update(size=size, batch_size=batch, patience=100)
    tree["mlflow"].update(tracking_uri=f"sqlite:///{work / 'mlflow.db'}",
                          artifact_root=str(work / "artifacts"))
    path = work / "params.yaml"
    path.write_text(yaml.safe_dump(tree, sort_keys=False))
    return path


def epoch_seconds(params: Path, procs: int, threads: int, epochs: int) -> dict[str, float]:
    """Train `epochs` epochs; one epoch's wall time is the median interval between the MLflow timestamps
    of consecutive epochs' metrics (rank 0 logs each epoch as it ends): start-up, data loading and saving
    are left out, whatever the machine's load does to them."""
    import json
    import statistics

    from mlflow.tracking import MlflowClient

    cmd = [CLI, "train", "simple_cnn", "-p", str(params), "--epochs", str(epochs),
           *(["--nproc", str(procs)] if procs > 1 else [])]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    t0 = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=params.parent)
    if done.returncode:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{done.stderr[-3000:]}")
    wall = time.perf_counter() - t0
    ref = json.loads((params.parent / "models" / "simple_cnn" / "mlflow.json").read_text())
    history = MlflowClient(tracking_uri=ref["tracking_uri"]).get_metric_history(ref["run_id"], "train_loss")
    stamps = sorted(m.timestamp for m in history)
    gaps = [(b - a) / 1000 for a, b in zip(stamps, stamps[1:], strict=False)]
    return {"epoch": statistics.median(gaps), "min": min(gaps), "max": max(gaps), "wall": wall}


def decode_rate(photos: int) -> dict[str, Any]:
    """Images/s of one core decoding and augmenting real photos as the GPU config does (224 px)."""
    import torch

    from fashionrec.data.images import Preprocessing
    from fashionrec.train.data import ImageDataset, Split

    folder = Path("/work/shared/datasets/clothing-dataset/images")
    paths = sorted(folder.glob("*.jpg"))[:photos] if folder.is_dir() else []
    if not paths:
        return {"photos": 0, "note": f"{folder}: no photos here"}
    torch.set_num_threads(1)
    split = Split("train", [p.stem for p in paths], [str(p) for p in paths], [""] * len(paths),
                  np.zeros((len(paths), 1), np.float32), np.zeros(len(paths), np.int64))
    ds = ImageDataset(split, Preprocessing(size=224), augment=True)
    ds[0]
    t0 = time.perf_counter()
    for i in range(len(ds)):
        ds[i]
    seconds = time.perf_counter() - t0
    return {"photos": len(paths), "seconds": round(seconds, 2), "images_per_s_per_core": len(paths) / seconds}


def trainable_params() -> int:
    """Trainable parameters of efficientnet_lite0_gpu (full fine-tuning): what each step all-reduces."""
    from fashionrec.core.config import load_params
    from fashionrec.models.factory import build_model, new_card

    block = load_params(ROOT / "params.yaml").section("train")["models"]["efficientnet_lite0_gpu"]
    classes = [f"c{i}" for i in range(10)]
    model = build_model(new_card("efficientnet_lite0_gpu", block, classes, classes), pretrained=False)
    return sum(p.numel() for params, _ in model.parameter_sets(1e-3, 1.0) for p in params)


def projection(n_params: int, decode_per_core: float | None, gpus_per_node: int, cores_per_node: int,
               batch_per_gpu: int, intra_gbs: float, inter_gbs: float) -> list[dict[str, Any]]:
    """Images/s of N nodes x G GPUs: per-GPU compute from the H100 measurement, ring all-reduce of the fp32
    gradients (2 (W-1)/W x bytes / bandwidth of the slowest link), not overlapped; capped by the loaders."""
    grad_bytes = 4 * n_params
    step_compute = batch_per_gpu / GPU_IMAGES_PER_S
    rows = []
    for nodes in (1, 2, 4, 8, 16):
        world = nodes * gpus_per_node
        bw = (intra_gbs if nodes == 1 else inter_gbs) * 1e9
        comm = 2 * (world - 1) / world * grad_bytes / bw if world > 1 else 0.0
        gpu_rate = world * batch_per_gpu / (step_compute + comm)
        loader_rate = nodes * cores_per_node * decode_per_core if decode_per_core else float("inf")
        rate = min(gpu_rate, loader_rate)
        rows.append({"nodes": nodes, "GPUs": world, "global batch": world * batch_per_gpu,
                     "all-reduce ms": round(comm * 1e3, 2), "GPU-bound img/s": round(gpu_rate),
                     "loader-bound img/s": round(loader_rate) if loader_rate != float("inf") else None,
                     "img/s": round(rate), "1M photos: s/epoch": round(1e6 / rate),
                     "efficiency": round(rate / (world * GPU_IMAGES_PER_S), 2)})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=4096, help="training rows (the tiny photos repeated)")
    ap.add_argument("--size", type=int, default=64, help="simple_cnn input size")
    ap.add_argument("--batch", type=int, default=64, help="global batch")
    ap.add_argument("--epochs", type=int, default=4, help="epochs per configuration (>= 2)")
    ap.add_argument("--photos", type=int, default=300, help="real photos for the decode rate (0: skip)")
    ap.add_argument("--gpus-per-node", type=int, default=8)
    ap.add_argument("--cores-per-node", type=int, default=96)
    ap.add_argument("--batch-per-gpu", type=int, default=64)
    ap.add_argument("--intra-gbs", type=float, default=150.0, help="all-reduce bandwidth in a node, GB/s")
    ap.add_argument("--inter-gbs", type=float, default=25.0, help="all-reduce bandwidth across nodes, GB/s")
    args = ap.parse_args()
    run = Run("train_scale")
    work = Path(tempfile.mkdtemp(prefix="train-scale-"))
    try:
        manifest = dataset(work, args.images)
        params = params_file(work, manifest, args.batch, args.size)
        epoch_seconds(params, 1, 2, 2)       # warm-up: fills the pixel cache, creates the MLflow store
        rows = []
        for label, procs, threads in SETUPS:
            t = epoch_seconds(params, procs, threads, args.epochs)
            rows.append({"setup": label, "processes": procs, "threads each": threads,
                         "s/epoch": round(t["epoch"], 2), "range": f"{t['min']:.1f}-{t['max']:.1f}",
                         "images/s": round(args.images / t["epoch"], 1), "run wall s": round(t["wall"], 1)})
            print(rows[-1], flush=True)
        base = next(r for r in rows if r["setup"] == "1 process x 2 threads")["images/s"]
        for r in rows:
            r["vs 1 process x 2 threads"] = round(r["images/s"] / base, 2)
        decode = decode_rate(args.photos) if args.photos else {"photos": 0}
        n_params = trainable_params()
        proj = projection(n_params, decode.get("images_per_s_per_core"), args.gpus_per_node,
                          args.cores_per_node, args.batch_per_gpu, args.intra_gbs, args.inter_gbs)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(table(rows, ["setup", "s/epoch", "range", "images/s", "vs 1 process x 2 threads", "run wall s"]))
    print(f"\ndecode + augment, one core: {decode}")
    print(f"efficientnet_lite0_gpu trainable parameters: {n_params:,} ({4 * n_params / 1e6:.1f} MB of fp32 "
          "gradients per step)")
    print(table(proj, list(proj[0])))
    run.save({"config": vars(args), "cpu": rows, "decode": decode, "trainable_params": n_params,
              "gpu_images_per_s": GPU_IMAGES_PER_S, "projection": proj})


if __name__ == "__main__":
    main()
