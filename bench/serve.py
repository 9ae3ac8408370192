"""Benchmark: `POST /recommend` under concurrent load on a real server, then again during a rollout.

Builds two bundles with the project's deploy functions from an ONNX model (default: efficientnet_lite0 with
its ImageNet weights and an untrained head, made by the project's factory and export; or --onnx, e.g. the
registered champion's file) over --items photos of the validated dataset (or --catalog), starts
`fashionrec serve` on a free loopback port, and drives it with an asyncio load generator (httpx
AsyncClient): for each concurrency level, p50/p99 latency, requests/s and errors. Then the same load runs
while the second bundle is activated mid-run (smoke test, pointer switch, `POST /admin/reload`): zero
errors expected, and both index versions must be seen by clients. The server's resident memory (VmRSS)
and its peak so far (VmHWM) are read after the steady phases and again after the rollout phase.

    nice -n 10 .venv/bin/python bench/serve.py --concurrency 1 8 32 --duration 15
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import yaml
from common import ROOT, Run, memory_mib, percentile_ms, table

from fashionrec.core.config import load_params

TOKEN = "bench-admin-token"


def export_lite0(out: Path) -> Path:
    """efficientnet_lite0 (ImageNet backbone, the project's untrained head) exported by the project."""
    import torch

    from fashionrec.models.factory import build_model, new_card
    from fashionrec.runtime.export import export_onnx

    tree = yaml.safe_load((ROOT / "params.yaml").read_text())
    classes = tree["subset"]["classes"]
    torch.manual_seed(0)
    block = tree["train"]["models"]["efficientnet_lite0"]
    card = new_card("efficientnet_lite0", block, classes, [*classes, "kids"])
    return export_onnx(build_model(card, pretrained=True).eval(), out)[0]


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def setup(work: Path, onnx: Path | None, catalog: Path | None, manifest: Path, items: int, kind: str,
          port: int):
    """params.yaml in work/ pointing at work/bundles; bundle A active, bundle B built but not active."""
    from fashionrec.deploy.build import build_index_bundle
    from fashionrec.deploy.catalog import catalog_from_manifest, write_catalog

    onnx_path = onnx or export_lite0(work / "model")
    if catalog is None:
        table_ = catalog_from_manifest(manifest)
        if items:
            table_ = table_.sample(n=min(items, len(table_)), random_state=0).sort_index()
        catalog = write_catalog(table_, work / "catalog.csv")
    tree = yaml.safe_load((ROOT / "params.yaml").read_text())
    tree["index"].update(model=str(onnx_path), catalog=str(catalog), bundles=str(work / "bundles"), kind=kind,
                         summary=str(work / "summary.json"), notify=[f"http://127.0.0.1:{port}"])
    tree["serve"].update(bundles=str(work / "bundles"), static_dir=str(ROOT / "serving/static"), port=port,
                         log_level="warning")
    (work / "params.yaml").write_text(yaml.safe_dump(tree))
    params = load_params(work / "params.yaml")
    started = time.perf_counter()
    a = build_index_bundle(params, do_activate=True)
    build_s = time.perf_counter() - started
    b = build_index_bundle(params, do_activate=False)
    print(f"bundles: {a.version} ({a.items} items, {a.index['kind']}, embedded in {a.embed_seconds} s, "
          f"{build_s:.0f} s with smoke test) active; {b.version} ready for the rollout")
    return params, catalog, a, b


def start_server(params_file: Path, port: int, log: Path) -> subprocess.Popen:
    env = {**os.environ, "FASHIONREC_ADMIN_TOKEN": TOKEN}
    cli = str(Path(sys.executable).with_name("fashionrec"))
    proc = subprocess.Popen([cli, "serve", "-p", str(params_file), "--port", str(port)],
                            stdout=log.open("w"), stderr=subprocess.STDOUT, env=env, start_new_session=True)
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited: {log.read_text()[-2000:]}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=2).status_code == 200:
                return proc
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    raise TimeoutError("server not ready in 180 s")


def stop_server(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)


async def load(url: str, payloads: list[bytes], concurrency: int, duration: float,
               during: Any = None) -> dict[str, Any]:
    """`concurrency` workers post photos back to back for `duration` s; `during()` runs in a thread at
    mid-run (the rollout). Returns latency percentiles, throughput, errors and index versions seen."""
    latencies: list[float] = []
    errors: list[str] = []
    versions: dict[str, int] = {}
    deadline = time.perf_counter() + duration
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)

    async def worker(w: int, client: httpx.AsyncClient) -> None:
        i = w
        while time.perf_counter() < deadline:
            data = payloads[i % len(payloads)]
            i += concurrency
            t0 = time.perf_counter()
            try:
                r = await client.post("/recommend", files={"image": ("q.jpg", data, "image/jpeg")},
                                      data={"k": "5"})
                ok = r.status_code == 200
                if ok:
                    v = r.json()["index_version"]
                    versions[v] = versions.get(v, 0) + 1
                else:
                    errors.append(f"{r.status_code}: {r.text[:200]}")
            except httpx.HTTPError as exc:
                ok = False
                errors.append(f"{type(exc).__name__}: {exc}")
            if ok:
                latencies.append(time.perf_counter() - t0)

    side: dict[str, Any] = {}

    async def midway() -> None:
        await asyncio.sleep(duration / 3)
        t0 = time.perf_counter()
        side["result"] = await asyncio.to_thread(during)
        side["seconds"] = round(time.perf_counter() - t0, 2)

    started = time.perf_counter()
    async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits) as client:
        tasks = [worker(w, client) for w in range(concurrency)]
        if during is not None:
            tasks.append(midway())
        await asyncio.gather(*tasks)
    elapsed = time.perf_counter() - started
    return {"concurrency": concurrency, "requests": len(latencies) + len(errors), "ok": len(latencies),
            "errors": len(errors), "error_samples": errors[:5], "seconds": round(elapsed, 2),
            "rps": round(len(latencies) / elapsed, 1), "p50_ms": round(percentile_ms(latencies, 50), 1),
            "p99_ms": round(percentile_ms(latencies, 99), 1), "versions_seen": versions, **side}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--onnx", type=Path, help="ONNX model to deploy (default: efficientnet_lite0 export)")
    ap.add_argument("--catalog", type=Path, help="inventory CSV (default: --items photos of --manifest)")
    ap.add_argument("--manifest", type=Path, default=ROOT / "data/validated/manifest.parquet")
    ap.add_argument("--items", type=int, default=600, help="inventory size taken from the manifest (0: all)")
    ap.add_argument("--kind", default="auto")
    ap.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    ap.add_argument("--duration", type=float, default=15.0, help="seconds per concurrency level")
    ap.add_argument("--warmup", type=int, default=10, help="requests before measuring")
    ap.add_argument("--rollout-concurrency", type=int, default=8)
    ap.add_argument("--rollout-duration", type=float, default=30.0)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()

    run = Run("serve")
    work = Path(tempfile.mkdtemp(prefix="fashionrec-bench-serve-"))
    port = free_port()
    params, catalog, a, b = setup(work, args.onnx, args.catalog, args.manifest, args.items, args.kind, port)
    from fashionrec.deploy.catalog import read_catalog
    from fashionrec.deploy.rollout import activate

    payloads = [Path(p).read_bytes() for p in read_catalog(catalog)["image"].head(200)]
    proc = start_server(work / "params.yaml", port, work / "server.log")
    url = f"http://127.0.0.1:{port}"
    rows: list[dict[str, Any]] = []
    memory: list[dict[str, Any]] = []
    try:
        with httpx.Client(base_url=url, timeout=60) as http:
            for i in range(args.warmup):
                http.post("/recommend", files={"image": ("q.jpg", payloads[i % len(payloads)], "image/jpeg")})
            health = http.get("/healthz").json()
        for c in args.concurrency:
            row = asyncio.run(load(url, payloads, c, args.duration))
            rows.append({"phase": "steady", **row})
            print(f"  concurrency {c:3d}: p50 {row['p50_ms']:7.1f} ms  p99 {row['p99_ms']:7.1f} ms  "
                  f"{row['rps']:6.1f} req/s  errors {row['errors']}")
        memory.append({"when": "steady", **memory_mib(proc.pid)})
        def rollout() -> dict[str, Any]:
            return activate(params.path(params.section("index")["bundles"]), b.version, params).to_dict()

        row = asyncio.run(load(url, payloads, args.rollout_concurrency, args.rollout_duration, rollout))
        notified = row.get("result", {}).get("notified", [])
        row = {"phase": "rollout", **row, "rollout_seconds": row.pop("seconds", None),
               "notified_status": [n.get("status") for n in notified]}
        row.pop("result", None)
        rows.append(row)
        print(f"  rollout  c={args.rollout_concurrency}: p50 {row['p50_ms']:.1f} ms  "
              f"p99 {row['p99_ms']:.1f} ms  "
              f"{row['rps']:.1f} req/s  errors {row['errors']}  versions {row['versions_seen']}")
        memory.append({"when": "after_rollout", **memory_mib(proc.pid)})
    finally:
        stop_server(proc)
        shutil.rmtree(work, ignore_errors=True)
    both = set(row["versions_seen"]) == {a.version, b.version}
    print()
    print(table(rows, ["phase", "concurrency", "requests", "errors", "rps", "p50_ms", "p99_ms"]))
    print()
    print(table(memory, ["when", "rss_mib", "peak_mib"]))
    print(f"\nrollout: {'zero errors' if row['errors'] == 0 else str(row['errors']) + ' ERRORS'}; "
          f"clients saw {'both bundles' if both else 'only ' + str(list(row['versions_seen']))}; "
          f"provider {health['provider']}; server RSS {memory[-1]['rss_mib']:.0f} MiB after the rollout "
          f"(peak {memory[-1]['peak_mib']:.0f} MiB)")
    run.save({"items": a.items, "index_kind": a.index["kind"], "model": str(args.onnx or "efficientnet_lite0 "
              "(ImageNet backbone, untrained head)"), "provider": health["provider"], "rows": rows,
              "rollout_zero_errors": row["errors"] == 0, "rollout_saw_both_versions": both,
              "server_rss_mib": memory[-1]["rss_mib"], "server_memory": memory}, args.out)


if __name__ == "__main__":
    main()
