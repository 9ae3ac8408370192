"""Benchmark: a bundle rollout across serving replicas sharing one bundles folder, as pods share the volume.

Builds two bundles with the project's deploy code (two real exported models over one generated inventory;
the second built but not activated), starts --replicas serving processes on the bundles folder (from the
serving image with `buildah run`, read-only mounts, as in a pod; or `fashionrec serve` from the venv where
the image cannot run), and drives them with a round-robin client. Mid-stream the second bundle is activated
(smoke test, then the `current` switch) as the deployer does. Reported: failed requests (must be 0),
responses whose model and index versions are not one bundle's pair (must be 0), a replica going back to
the old bundle after switching (must not happen), each replica's switch time after the pointer moved and
the last one's, and (image runs) each container's start to /readyz.

    nice -n 10 .venv/bin/python bench/rollout.py --replicas 3 --runner auto
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from types import ModuleType
from typing import Any

import yaml
from common import ROOT, Run, table

from fashionrec.deploy.build import build_index_bundle
from fashionrec.deploy.rollout import activate


def load(name: str, path: Path) -> ModuleType:
    """A test helper module by path (tests/ is no package): one copy of the runners and bundle helpers."""
    spec = importlib.util.spec_from_file_location(name, path)
    module = sys.modules.setdefault(name, importlib.util.module_from_spec(spec))  # type: ignore[arg-type]
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module


deploykit = load("fashionrec_tests_deploykit", ROOT / "tests" / "serving" / "deploykit.py")
imagekit = load("fashionrec_tests_imagekit", ROOT / "tests" / "container" / "imagekit.py")


def pick_runner(wanted: str) -> str:
    if wanted != "auto":
        return wanted
    try:
        imagekit.require_image()
    except imagekit.ImageMissing as exc:
        print(f"serving image unavailable ({exc}): replicas run from the venv")
        return "venv"
    return "image" if os.geteuid() == 0 else "venv"


class Replicas:
    """N serving processes on one bundles folder, started from the image or the venv, stopped by PID."""

    def __init__(self, runner: str, work: Path, inventory: Path, count: int) -> None:
        self.runner, self.work, self.inventory, self.count = runner, work, inventory, count
        self.stack = contextlib.ExitStack()
        self.urls: list[str] = []
        self.ready_s: list[float] = []

    def __enter__(self) -> Replicas:
        servers = []
        for i in range(self.count):
            port = deploykit.free_port()
            log = self.work / f"replica{i}.log"
            if self.runner == "image":
                server = self.stack.enter_context(imagekit.serve_image(
                    self.work / "bundles", self.inventory, port, log, tag=f"replica{i}"))
            else:
                server = self.stack.enter_context(venv_server(self.work / "params.yaml", port, log))
            servers.append(server)
        for server in servers:   # started together, like pods of one Deployment
            imagekit.wait_status(server, "/readyz", 200, 180)
            self.ready_s.append(round(time.monotonic() - server.started, 2))
            self.urls.append(server.url)
        return self

    def __exit__(self, *exc: object) -> None:
        self.stack.close()


@contextlib.contextmanager
def venv_server(params: Path, port: int, log: Path):  # type: ignore[no-untyped-def]
    """`fashionrec serve` from this venv, the same command the image's entrypoint runs."""
    fh = open(log, "w")  # noqa: SIM115 - owned by the process for its lifetime
    cmd = [str(Path(sys.executable).with_name("fashionrec")), "serve", "-p", str(params), "--port", str(port)]
    proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True,
                            cwd=params.parent, env={**os.environ, "OMP_NUM_THREADS": "1"})
    server = imagekit.ImageServer(proc, f"http://127.0.0.1:{port}", log, time.monotonic())
    try:
        yield server
    finally:
        server.stop()
        fh.close()


def stream(urls: list[str], payloads: list[bytes], stop: threading.Event, out: list[dict[str, Any]]) -> None:
    """One client, requests sent to the replicas in turn (round robin), each answer recorded."""
    i = 0
    while not stop.is_set():
        replica = i % len(urls)
        sent = time.monotonic()
        try:
            code, body = imagekit.post_image(urls[replica], payloads[i % len(payloads)])
            out.append({"t": time.monotonic(), "sent": sent, "replica": replica, "status": code,
                        "model": body.get("model_version"), "index": body.get("index_version")})
        except Exception as exc:  # a refused or dropped connection is a failed request
            out.append({"t": time.monotonic(), "sent": sent, "replica": replica, "status": None,
                        "error": repr(exc)})
        i += 1


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--replicas", type=int, default=3)
    ap.add_argument("--runner", choices=["auto", "image", "venv"], default="auto")
    ap.add_argument("--items", type=int, default=200, help="inventory size (generated items)")
    ap.add_argument("--warmup", type=float, default=5.0, help="seconds of traffic before the switch")
    ap.add_argument("--after", type=float, default=3.0, help="seconds of traffic after the last switch")
    ap.add_argument("--timeout", type=float, default=60.0, help="give up waiting for a replica to switch")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()

    run = Run("rollout")
    runner = pick_runner(args.runner)
    watch_s = float(yaml.safe_load((ROOT / "params.yaml").read_text())["serve"]["watch_interval_s"])
    work = Path(tempfile.mkdtemp(prefix="fashionrec-bench-rollout-"))
    try:
        catalog = deploykit.make_catalog(work / "inventory", args.items, seed=1)
        model_a = deploykit.export_model(work / "model_a", seed=1)
        model_b = deploykit.export_model(work / "model_b", seed=2)
        params_b = deploykit.write_params(work, model_b, catalog, serve__watch_interval_s=watch_s)
        params_a = deploykit.write_params(work, model_a, catalog, serve__watch_interval_s=watch_s)
        first = build_index_bundle(params_a)
        second = build_index_bundle(params_b, do_activate=False)
        pairs = {}
        for result in (first, second):
            manifest = json.loads((Path(result.bundle) / "manifest.json").read_text())
            pairs[result.version] = manifest["model"]["version"]
        payloads = [p.read_bytes() for p in sorted((work / "inventory" / "images").glob("*.jpg"))[:50]]
        seen: list[dict[str, Any]] = []
        stop = threading.Event()
        with Replicas(runner, work, work / "inventory", args.replicas) as replicas:
            client = threading.Thread(target=stream, args=(replicas.urls, payloads, stop, seen), daemon=True)
            client.start()
            time.sleep(args.warmup)
            began = time.monotonic()
            rollout = activate(work / "bundles", second.version, params_b)
            switched = time.monotonic()   # the pointer moved (activate renames it as its last step)
            deadline = switched + args.timeout
            while time.monotonic() < deadline:
                new = {r["replica"] for r in seen
                       if r.get("index") == second.version and r["sent"] >= switched}
                if len(new) == args.replicas:
                    break
                time.sleep(0.1)
            time.sleep(args.after)
            stop.set()
            client.join(timeout=30)
        results = summarize(seen, pairs, first.version, second.version, switched, args.replicas)
        results.update({"runner": runner, "replicas": args.replicas, "items": args.items,
                        "watch_interval_s": watch_s, "smoke_and_switch_s": round(switched - began, 2),
                        "start_to_ready_s": replicas.ready_s, "smoke_test": rollout.to_dict().get("smoke")})
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(table(results["per_replica"], ["replica", "requests", "switch_s", "went_back"]))
    print(f"\n{results['requests']} requests, {results['failed']} failed, {results['mixed']} mixed; "
          f"last replica switched {results['last_switch_s']} s after the pointer moved "
          f"(watch interval {watch_s} s); runner {runner}; start to /readyz {results['start_to_ready_s']} s")
    run.save(results, args.out)
    if results["failed"] or results["mixed"] or any(r["went_back"] for r in results["per_replica"]):
        sys.exit(1)


def summarize(seen: list[dict[str, Any]], pairs: dict[str, str], old: str, new: str, switched: float,
              replicas: int) -> dict[str, Any]:
    """Failures, inconsistent answers, and per replica: when it first answered from the new bundle."""
    failed = [r for r in seen if r["status"] != 200]
    mixed = [r for r in seen if r["status"] == 200 and pairs.get(r["index"]) != r["model"]]
    per_replica = []
    for i in range(replicas):
        mine = [r for r in seen if r["replica"] == i and r["status"] == 200]
        first_new = next((r for r in mine if r["index"] == new), None)
        went_back = first_new is not None and any(r["index"] == old for r in mine
                                                  if r["sent"] > first_new["t"])
        per_replica.append({"replica": i, "requests": len(mine), "went_back": went_back,
                            "switch_s": round(first_new["t"] - switched, 2) if first_new else None})
    switches = [r["switch_s"] for r in per_replica]
    return {"requests": len(seen), "failed": len(failed), "mixed": len(mixed),
            "failures": [r.get("error") or r["status"] for r in failed[:5]],
            "per_replica": per_replica,
            "last_switch_s": max(switches) if None not in switches else None,
            "versions": sorted({r["index"] for r in seen if r["status"] == 200})}


if __name__ == "__main__":
    main()
