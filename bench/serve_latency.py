"""Benchmark: `POST /recommend` latency (one client) and server RSS on a realistic bundle.

Builds a bundle from an ONNX model (default: EfficientNet-lite0 with its ImageNet weights and an untrained
head, made by the project's factory and export, or pass --onnx, e.g. the registered champion's file) over
the validated dataset (or --catalog), starts `fashionrec serve` on a free loopback port, sends
--requests sequential uploads of dataset photos and prints p50/p99 latency and the server's RSS.

    nice -n 10 .venv/bin/python bench/serve_latency.py --requests 200
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import httpx
import numpy as np
import yaml

ROOT = Path(__file__).resolve().parents[1]


def export_lite0(out: Path) -> Path:
    import torch

    from fashionrec.models.factory import build_model, new_card
    from fashionrec.registry.export import export_onnx

    tree = yaml.safe_load((ROOT / "params.yaml").read_text())
    classes = tree["subset"]["classes"]
    torch.manual_seed(0)
    block = tree["train"]["models"]["efficientnet_lite0"]
    card = new_card("efficientnet_lite0", block, classes, [*classes, "kids"])
    return export_onnx(build_model(card, pretrained=True).eval(), out)[0]


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--onnx", type=Path)
    ap.add_argument("--catalog", type=Path)
    ap.add_argument("--manifest", type=Path, default=ROOT / "data/validated/manifest.parquet")
    ap.add_argument("--requests", type=int, default=200)
    ap.add_argument("--kind", default="auto")
    args = ap.parse_args()

    work = Path(tempfile.mkdtemp(prefix="fashionrec-bench-"))
    onnx_path = args.onnx or export_lite0(work / "model")
    tree = yaml.safe_load((ROOT / "params.yaml").read_text())
    tree["index"].update(model=str(onnx_path), catalog=str(args.catalog) if args.catalog else None,
                         manifest=str(args.manifest), bundles=str(work / "bundles"), kind=args.kind,
                         summary=str(work / "summary.json"))
    tree["serve"].update(bundles=str(work / "bundles"), static_dir=str(ROOT / "serving/static"))
    (work / "params.yaml").write_text(yaml.safe_dump(tree))
    cli = str(Path(sys.executable).with_name("fashionrec"))
    started = time.perf_counter()
    built = json.loads(subprocess.run([cli, "index", "-p", str(work / "params.yaml")], check=True,
                                      capture_output=True, text=True).stdout)
    print(f"index: {built['items']} items embedded in {built['embed_seconds']} s "
          f"({time.perf_counter() - started:.0f} s with smoke test), kind {built['index']['kind']}, "
          f"recall@{built['index']['recall_k']} {built['index']['recall_at_k']}")

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([cli, "serve", "-p", str(work / "params.yaml"), "--port", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(300):
            try:
                if urllib.request.urlopen(f"{url}/readyz", timeout=2).status == 200:
                    break
            except OSError:
                time.sleep(0.3)
        import pandas as pd
        images = list(pd.read_parquet(work / "bundles/current/items.parquet")["image"])[: args.requests]
        root = json.loads((work / "bundles/current/manifest.json").read_text())["items"]["inventory_root"]
        payloads = [(Path(root) / p).read_bytes() for p in images]
        times = []
        with httpx.Client(base_url=url, timeout=30) as http:
            for i in range(args.requests + 10):
                data = payloads[i % len(payloads)]
                t0 = time.perf_counter()
                r = http.post("/recommend", files={"image": ("q.jpg", data, "image/jpeg")}, data={"k": "5"})
                dt = time.perf_counter() - t0
                assert r.status_code == 200, r.text
                if i >= 10:   # warm-up excluded
                    times.append(dt * 1000)
            health = http.get("/healthz").json()
        ms = np.array(times)
        print(f"provider {health['provider']}; {len(ms)} requests: p50 {np.percentile(ms, 50):.1f} ms, "
              f"p90 {np.percentile(ms, 90):.1f} ms, p99 {np.percentile(ms, 99):.1f} ms; "
              f"server RSS {rss_mb(proc.pid):.0f} MB")
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=20)


if __name__ == "__main__":
    main()
