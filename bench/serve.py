"""Benchmark: `POST /recommend` under concurrent load on a real server, then again during a rollout.

Builds two bundles with the project's deploy functions from an ONNX model (default: efficientnet_lite0 with
its ImageNet weights and an untrained head, made by the project's factory and export; or --onnx, e.g. the
registered champion's file) over --items photos of the validated dataset (or --catalog), starts
`fashionrec serve` on a free loopback port, and drives it with an asyncio load generator (httpx
AsyncClient): for each concurrency level, p50/p99 latency, requests/s and errors. Then the same load runs
while the second bundle is activated mid-run (smoke test, pointer switch, `POST /admin/reload`): zero
errors expected, and both index versions must be seen by clients. The server's resident memory (VmRSS)
and its peak so far (VmHWM) are read after the steady phases and again after the rollout phase.

Last, a hostile burst: `--hostile-concurrency` clients post legal-but-hostile images back to back
(`tests/reliability/hostile.py`: thin, 16-bit, large under the pixel limit, strip crops) while
`--normal-concurrency` clients post ordinary photos. Reported: statuses (no 5xx other than the admission's
503 `overloaded` expected), time per hostile request, the p99 of the ordinary photos during the burst, the
server's peak RSS during the burst (sampled every 50 ms) and its settled RSS 5 s after.

Then (issue 22) a mixed load: `--mixed-clients` clients (200) for `--mixed-duration` s (20), each upload
hostile with probability `--hostile-share` (0.3), the rest ordinary photos, while a probe client calls
`/healthz` every 100 ms with a 1 s timeout (as a kubelet would). Reported: the ordinary photos' p99 and
their statuses, the probes' success rate, the peak RSS of the server's whole process tree (server and decode
workers, sampled every 50 ms) against the Deployment's limit, and the settled RSS against the idle one.

    nice -n 10 .venv/bin/python bench/serve.py --concurrency 1 8 32 --duration 15
    nice -n 10 .venv/bin/python bench/serve.py --concurrency --rollout-duration 0 --hostile-duration 0 \
        --catalog CATALOG.csv          # the mixed load only
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
from common import ROOT, Run, memory_mib, percentile_ms, rss_mib, table

from fashionrec.core.config import load_params

TOKEN = "bench-admin-token"


def export_lite0(out: Path, categories: list[str]) -> Path:
    """efficientnet_lite0 (ImageNet backbone, the project's untrained head) exported by the project; its
    classes from params' `subset.classes`, else the catalog's categories."""
    import torch

    from fashionrec.models.factory import build_model, new_card
    from fashionrec.runtime.export import export_onnx

    tree = yaml.safe_load((ROOT / "params.yaml").read_text())
    classes = tree["subset"].get("classes") or categories
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
          port: int, second: bool = True):
    """params.yaml in work/ pointing at work/bundles; bundle A active, bundle B built but not active."""
    from fashionrec.deploy.catalog import catalog_from_manifest, read_catalog, write_catalog
    from fashionrec.deploy.config import DeployConfig
    from fashionrec.deploy.reconcile import deploy

    if catalog is None:
        table_ = catalog_from_manifest(manifest)
        if items:
            table_ = table_.sample(n=min(items, len(table_)), random_state=0).sort_index()
        catalog = write_catalog(table_, work / "catalog.csv")
    onnx_path = onnx or export_lite0(work / "model", sorted(set(read_catalog(catalog)["category"])))
    tree = yaml.safe_load((ROOT / "params.yaml").read_text())
    tree["index"].update(model=str(onnx_path), catalog=str(catalog), bundles=str(work / "bundles"), kind=kind,
                         summary=str(work / "summary.json"), notify=[f"http://127.0.0.1:{port}"])
    tree["serve"].update(bundles=str(work / "bundles"), static_dir=str(ROOT / "serving/static"), port=port,
                         log_level="warning")
    (work / "params.yaml").write_text(yaml.safe_dump(tree))
    params = load_params(work / "params.yaml")
    started = time.perf_counter()
    cfg = DeployConfig.from_params(params)
    a = deploy(cfg, rebuild=True)
    build_s = time.perf_counter() - started
    b = deploy(cfg.with_(activate=False), rebuild=True) if second else None
    print(f"bundles: {a.version} ({a.items} items, {a.index['kind']}, embedded in {a.embed_seconds} s, "
          f"{build_s:.0f} s with smoke test) active; {b.version if b else 'none'} ready for the rollout",
          flush=True)
    return params, catalog, a, b


def reuse(work: Path, port: int):
    """A kept work folder: its params (on a new port) and its current bundle; no second bundle."""
    from types import SimpleNamespace

    from fashionrec.bundle.load import load_bundle

    tree = yaml.safe_load((work / "params.yaml").read_text())
    tree["serve"]["port"] = port
    tree["index"]["notify"] = [f"http://127.0.0.1:{port}"]
    (work / "params.yaml").write_text(yaml.safe_dump(tree))
    bundle = load_bundle(work / "bundles" / "current", verify=False)
    a = SimpleNamespace(version=bundle.version, items=len(bundle.items), index=bundle.manifest["index"])
    print(f"reusing bundle {a.version} ({a.items} items) in {work}", flush=True)
    return load_params(work / "params.yaml"), Path(tree["index"]["catalog"]), a, None


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


async def post_photos(client: httpx.AsyncClient, payloads: list[bytes], first: int, stride: int,
                      deadline: float, latencies: list[float], errors: list[str],
                      versions: dict[str, int] | None = None) -> None:
    """One client posting ordinary photos back to back until `deadline` (payloads first, first + stride,
    ...): the load of `load` and the shoppers of `hostile_burst`. Appends the latency of each answer, a line
    per error and, with `versions`, counts the index versions that answered."""
    i = first
    while time.perf_counter() < deadline:
        data = payloads[i % len(payloads)]
        i += stride
        t0 = time.perf_counter()
        try:
            r = await client.post("/recommend", files={"image": ("q.jpg", data, "image/jpeg")},
                                  data={"k": "5"})
        except httpx.HTTPError as exc:
            errors.append(f"{type(exc).__name__}: {exc}")
            continue
        if r.status_code != 200:
            errors.append(f"{r.status_code}: {r.text[:200]}")
            continue
        latencies.append(time.perf_counter() - t0)
        if versions is not None:
            version = r.json()["index_version"]
            versions[version] = versions.get(version, 0) + 1


async def load(url: str, payloads: list[bytes], concurrency: int, duration: float,
               during: Any = None) -> dict[str, Any]:
    """`concurrency` workers post photos back to back for `duration` s; `during()` runs in a thread at
    mid-run (the rollout). Returns latency percentiles, throughput, errors and index versions seen."""
    latencies: list[float] = []
    errors: list[str] = []
    versions: dict[str, int] = {}
    deadline = time.perf_counter() + duration
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)

    side: dict[str, Any] = {}

    async def midway() -> None:
        await asyncio.sleep(duration / 3)
        t0 = time.perf_counter()
        side["result"] = await asyncio.to_thread(during)
        side["seconds"] = round(time.perf_counter() - t0, 2)

    started = time.perf_counter()
    async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits) as client:
        tasks = [post_photos(client, payloads, w, concurrency, deadline, latencies, errors, versions)
                 for w in range(concurrency)]
        if during is not None:
            tasks.append(midway())
        await asyncio.gather(*tasks)
    elapsed = time.perf_counter() - started
    return {"concurrency": concurrency, "requests": len(latencies) + len(errors), "ok": len(latencies),
            "errors": len(errors), "error_samples": errors[:5], "seconds": round(elapsed, 2),
            "rps": round(len(latencies) / elapsed, 1), "p50_ms": round(percentile_ms(latencies, 50), 1),
            "p99_ms": round(percentile_ms(latencies, 99), 1), "versions_seen": versions, **side}


def hostile_cases() -> list[Any]:
    """The reliability tests' legal-but-hostile images (loaded by path: bench/ is not a package)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("hostile", ROOT / "tests/reliability/hostile.py")
    module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    sys.modules[spec.name] = module  # type: ignore[union-attr]  (dataclasses look their module up)
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module.hostile_images()


async def hostile_burst(url: str, pid: int, payloads: list[bytes], cases: list[Any], concurrency: int,
                        normal_concurrency: int, duration: float, settle: float = 5.0) -> dict[str, Any]:
    """Hostile uploads from `concurrency` clients and ordinary photos from `normal_concurrency` clients for
    `duration` s; the server's RSS sampled throughout and `settle` s after."""
    hostile_s: list[float] = []
    statuses: dict[str, int] = {}
    normal_s: list[float] = []
    normal_errors: list[str] = []
    peak = [rss_mib(pid)]
    deadline = time.perf_counter() + duration
    limits = httpx.Limits(max_connections=concurrency + normal_concurrency)

    async def attacker(w: int, client: httpx.AsyncClient) -> None:
        i = w
        while time.perf_counter() < deadline:
            case = cases[i % len(cases)]
            i += concurrency
            t0 = time.perf_counter()
            r = await client.post("/recommend", files={"image": ("h", case.data, "image/png")},
                                  data={"k": "5", **({"crop": case.crop} if case.crop else {})})
            hostile_s.append(time.perf_counter() - t0)
            kind = "ok" if r.status_code == 200 else (
                r.json().get("error", "?") if r.headers.get("content-type") == "application/json" else "?")
            key = f"{r.status_code} {kind}"
            statuses[key] = statuses.get(key, 0) + 1

    async def sampler() -> None:
        while time.perf_counter() < deadline:
            peak.append(rss_mib(pid))
            await asyncio.sleep(0.05)

    async with httpx.AsyncClient(base_url=url, timeout=120, limits=limits) as client:
        await asyncio.gather(sampler(), *(attacker(w, client) for w in range(concurrency)),
                             *(post_photos(client, payloads, w, normal_concurrency, deadline, normal_s,
                                           normal_errors) for w in range(normal_concurrency)))
    after = {}
    for second in range(1, int(settle) + 1):
        await asyncio.sleep(1.0)
        after[f"rss_mib_after_{second}s"] = round(rss_mib(pid), 1)
    five_xx = sum(n for k, n in statuses.items() if k.startswith("5") and not k.endswith("overloaded"))
    return {"phase": "hostile_burst", "hostile_concurrency": concurrency,
            "normal_concurrency": normal_concurrency,
            "hostile_requests": len(hostile_s), "statuses": statuses, "5xx_other_than_overloaded": five_xx,
            "hostile_p50_ms": round(percentile_ms(hostile_s, 50), 1),
            "hostile_p99_ms": round(percentile_ms(hostile_s, 99), 1),
            "hostile_max_ms": round(max(hostile_s, default=0) * 1000, 1),
            "normal_requests": len(normal_s) + len(normal_errors), "normal_errors": len(normal_errors),
            "normal_error_samples": normal_errors[:5], "normal_p50_ms": round(percentile_ms(normal_s, 50), 1),
            "normal_p99_ms": round(percentile_ms(normal_s, 99), 1), "peak_rss_mib": round(max(peak), 1),
            "settled_rss_mib": after.get(f"rss_mib_after_{int(settle)}s"), **after}


DEPLOYMENT_LIMIT_MIB = 1024    # deploy/k8s/serve-deployment.yaml: limits.memory 1Gi


def tree_rss_mib(pid: int) -> float:
    """Resident memory of a process and its children (the server and its decode workers)."""
    kids: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            kids += [int(c) for c in (task / "children").read_text().split()]
        except OSError:
            continue
    return rss_mib(pid) + sum(rss_mib(k) for k in kids if Path(f"/proc/{k}").exists())


def recommend_buckets(url: str) -> dict[float, float]:
    """The server's own `/recommend` latency histogram (cumulative counts by upper bound, /metrics)."""
    import re

    text = httpx.get(f"{url}/metrics", timeout=30).text
    out: dict[float, float] = {}
    for le, count in re.findall(r'fashionrec_request_seconds_bucket\{le="([^"]+)",route="/recommend"\} (\S+)',
                                text):
        out[float(le)] = float(count)
    return out


def server_quantile_s(before: dict[float, float], after: dict[float, float], q: float) -> float:
    """The upper bound of the histogram bucket holding the q-quantile of the requests between two reads
    (200s and refusals together: the server's own time, the clients' queueing excluded)."""
    bounds = sorted(after)
    total = after[bounds[-1]] - before.get(bounds[-1], 0.0)
    for le in bounds:
        if total and after[le] - before.get(le, 0.0) >= q * total:
            return le
    return float("inf")


async def mixed_load(url: str, pid: int, payloads: list[bytes], cases: list[Any], clients: int,
                     duration: float, share: float, settle: float = 5.0) -> dict[str, Any]:
    """`clients` clients for `duration` s, a share `share` of uploads hostile; /healthz probed meanwhile."""
    import random

    normal_s: list[float] = []
    normal_status: dict[str, int] = {}
    hostile_status: dict[str, int] = {}
    probes: dict[str, int] = {}
    probe_s: list[float] = []
    idle = tree_rss_mib(pid)
    peak = [idle]
    deadline = time.perf_counter() + duration
    limits = httpx.Limits(max_connections=clients + 1, max_keepalive_connections=clients + 1)

    def key(r: httpx.Response) -> str:
        if r.status_code == 200:
            return "200"
        kind = r.json().get("error", "?") if r.headers.get("content-type") == "application/json" else "?"
        return f"{r.status_code} {kind}"

    async def client_loop(w: int, client: httpx.AsyncClient) -> None:
        rng = random.Random(w)
        i = w
        while time.perf_counter() < deadline:
            i += clients
            hostile = rng.random() < share
            case = cases[i % len(cases)] if hostile else None
            data = case.data if case else payloads[i % len(payloads)]
            form = {"k": "5", **({"crop": case.crop} if case and case.crop else {})}
            t0 = time.perf_counter()
            try:
                r = await client.post("/recommend", files={"image": ("q", data, "image/jpeg")}, data=form)
                got = key(r)
            except httpx.HTTPError as exc:
                got = type(exc).__name__
            table_ = hostile_status if hostile else normal_status
            table_[got] = table_.get(got, 0) + 1
            if not hostile and got == "200":
                normal_s.append(time.perf_counter() - t0)

    async def prober() -> None:
        async with httpx.AsyncClient(base_url=url, timeout=1.0) as probe:
            while time.perf_counter() < deadline:
                t0 = time.perf_counter()
                try:
                    got = str((await probe.get("/healthz")).status_code)
                except httpx.HTTPError as exc:
                    got = type(exc).__name__
                probe_s.append(time.perf_counter() - t0)
                probes[got] = probes.get(got, 0) + 1
                await asyncio.sleep(0.1)

    async def sampler() -> None:
        while time.perf_counter() < deadline:
            peak.append(tree_rss_mib(pid))
            await asyncio.sleep(0.05)

    before = await asyncio.to_thread(recommend_buckets, url)
    async with httpx.AsyncClient(base_url=url, timeout=120, limits=limits) as client:
        await asyncio.gather(sampler(), prober(), *(client_loop(w, client) for w in range(clients)))
    after = await asyncio.to_thread(recommend_buckets, url)
    await asyncio.sleep(settle)
    settled = tree_rss_mib(pid)
    total_probes = sum(probes.values())
    return {"phase": "mixed", "clients": clients, "duration_s": duration, "hostile_share": share,
            "normal_status": normal_status, "hostile_status": hostile_status,
            "normal_ok": len(normal_s), "normal_p50_ms": round(percentile_ms(normal_s, 50), 1),
            "normal_p99_ms": round(percentile_ms(normal_s, 99), 1),
            "server_recommend_p50_s_at_most": server_quantile_s(before, after, 0.5),
            "server_recommend_p99_s_at_most": server_quantile_s(before, after, 0.99),
            "healthz": probes, "healthz_ok_share": round(probes.get("200", 0) / max(1, total_probes), 4),
            "healthz_p99_ms": round(percentile_ms(probe_s, 99), 1),
            "idle_tree_rss_mib": round(idle, 1), "peak_tree_rss_mib": round(max(peak), 1),
            "deployment_limit_mib": DEPLOYMENT_LIMIT_MIB, "settle_s": settle,
            "settled_tree_rss_mib": round(settled, 1),
            "settled_minus_idle_mib": round(settled - idle, 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--onnx", type=Path, help="ONNX model to deploy (default: efficientnet_lite0 export)")
    ap.add_argument("--catalog", type=Path, help="inventory CSV (default: --items photos of --manifest)")
    ap.add_argument("--manifest", type=Path, default=ROOT / "data/validated/manifest.parquet")
    ap.add_argument("--items", type=int, default=600, help="inventory size taken from the manifest (0: all)")
    ap.add_argument("--kind", default="auto")
    ap.add_argument("--concurrency", type=int, nargs="*", default=[1, 8, 32])
    ap.add_argument("--duration", type=float, default=15.0, help="seconds per concurrency level")
    ap.add_argument("--warmup", type=int, default=10, help="requests before measuring")
    ap.add_argument("--rollout-concurrency", type=int, default=8)
    ap.add_argument("--rollout-duration", type=float, default=30.0, help="0: no second bundle, no rollout")
    ap.add_argument("--hostile-duration", type=float, default=20.0, help="seconds of hostile burst (0: skip)")
    ap.add_argument("--hostile-concurrency", type=int, default=12)
    ap.add_argument("--normal-concurrency", type=int, default=2, help="ordinary clients during the burst")
    ap.add_argument("--mixed-clients", type=int, default=200, help="clients of the mixed load (0: skip)")
    ap.add_argument("--mixed-duration", type=float, default=20.0)
    ap.add_argument("--hostile-share", type=float, default=0.3, help="share of hostile uploads, mixed load")
    ap.add_argument("--work", type=Path, help="keep bundles here; reuse its bundles/current when present")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()

    run = Run("serve")
    work = args.work or Path(tempfile.mkdtemp(prefix="fashionrec-bench-serve-"))
    port = free_port()
    if args.work and (work / "bundles" / "current").is_dir():   # reuse: no embedding, no rollout
        params, catalog, a, b = reuse(work, port)
    else:
        work.mkdir(parents=True, exist_ok=True)
        params, catalog, a, b = setup(work, args.onnx, args.catalog, args.manifest, args.items, args.kind,
                                      port, second=args.rollout_duration > 0)
    from fashionrec.deploy.catalog import read_catalog
    from fashionrec.deploy.config import DeployConfig
    from fashionrec.deploy.rollout import go_live  # the switch itself, timed (B is built like A)

    payloads = [Path(p).read_bytes() for p in read_catalog(catalog)["image"].head(200)]
    proc = start_server(work / "params.yaml", port, work / "server.log")
    url = f"http://127.0.0.1:{port}"
    rows: list[dict[str, Any]] = []
    memory: list[dict[str, Any]] = []
    row: dict[str, Any] = {}
    burst: dict[str, Any] | None = None
    mixed: dict[str, Any] | None = None
    try:
        with httpx.Client(base_url=url, timeout=60) as http:
            for i in range(args.warmup):
                http.post("/recommend", files={"image": ("q.jpg", payloads[i % len(payloads)], "image/jpeg")})
            health = http.get("/healthz").json()
        for c in args.concurrency:
            row = asyncio.run(load(url, payloads, c, args.duration))
            rows.append({"phase": "steady", **row})
            print(f"  concurrency {c:3d}: p50 {row['p50_ms']:7.1f} ms  p99 {row['p99_ms']:7.1f} ms  "
                  f"{row['rps']:6.1f} req/s  errors {row['errors']}", flush=True)
        memory.append({"when": "steady", **memory_mib(proc.pid)})
        if b is not None:
            def rollout() -> dict[str, Any]:
                return go_live(DeployConfig.from_params(params), b.version, smoke=True).to_dict()

            row = asyncio.run(load(url, payloads, args.rollout_concurrency, args.rollout_duration, rollout))
            notified = row.get("result", {}).get("notified", [])
            row = {"phase": "rollout", **row, "rollout_seconds": row.pop("seconds", None),
                   "notified_status": [n.get("status") for n in notified]}
            row.pop("result", None)
            rows.append(row)
            print(f"  rollout  c={args.rollout_concurrency}: p50 {row['p50_ms']:.1f} ms  "
                  f"p99 {row['p99_ms']:.1f} ms  "
                  f"{row['rps']:.1f} req/s  errors {row['errors']}  versions {row['versions_seen']}",
                  flush=True)
            memory.append({"when": "after_rollout", **memory_mib(proc.pid)})
        if args.hostile_duration > 0:
            cases = hostile_cases()
            burst = asyncio.run(hostile_burst(url, proc.pid, payloads, cases, args.hostile_concurrency,
                                              args.normal_concurrency, args.hostile_duration))
            memory.append({"when": "after_hostile_burst", **memory_mib(proc.pid)})
            print(f"  hostile burst c={args.hostile_concurrency}+{args.normal_concurrency}: "
                  f"{burst['hostile_requests']} hostile (p50 {burst['hostile_p50_ms']} ms, p99 "
                  f"{burst['hostile_p99_ms']} ms, max {burst['hostile_max_ms']} ms) {burst['statuses']}; "
                  f"normal p99 {burst['normal_p99_ms']} ms ({burst['normal_errors']} errors); RSS peak "
                  f"{burst['peak_rss_mib']} MiB, settled {burst['settled_rss_mib']} MiB")
        if args.mixed_clients > 0:
            mixed = asyncio.run(mixed_load(url, proc.pid, payloads, hostile_cases(), args.mixed_clients,
                                           args.mixed_duration, args.hostile_share))
            print("  mixed load:", mixed, flush=True)
    finally:
        stop_server(proc)
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)
    both = b is not None and set(row.get("versions_seen", {})) == {a.version, b.version}
    print()
    if rows:
        print(table(rows, ["phase", "concurrency", "requests", "errors", "rps", "p50_ms", "p99_ms"]))
    if memory:
        print()
        print(table(memory, ["when", "rss_mib", "peak_mib"]))
    if b is not None:
        print(f"\nrollout: {'zero errors' if row['errors'] == 0 else str(row['errors']) + ' ERRORS'}; "
              f"clients saw {'both bundles' if both else 'only ' + str(list(row['versions_seen']))}; "
              f"provider {health['provider']}; server RSS {memory[-1]['rss_mib']:.0f} MiB after the rollout "
              f"(peak {memory[-1]['peak_mib']:.0f} MiB)")
    run.save({"items": a.items, "index_kind": a.index["kind"], "model": str(args.onnx or "efficientnet_lite0 "
              "(ImageNet backbone, untrained head)"), "provider": health["provider"], "rows": rows,
              "rollout_zero_errors": row.get("errors") == 0 if b else None, "rollout_saw_both_versions": both,
              "server_rss_mib": memory[-1]["rss_mib"] if memory else None, "server_memory": memory,
              "hostile_burst": burst, "mixed": mixed},
             args.out)


if __name__ == "__main__":
    main()
