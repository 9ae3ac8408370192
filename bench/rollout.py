"""Benchmark: a bundle rollout across serving replicas sharing one bundles folder, as pods share the volume.

Builds two bundles with the project's deploy code (two real exported models over one generated inventory;
the second built but not activated), starts --replicas serving processes on the bundles folder (from the
serving image with `buildah run`, read-only mounts, as in a pod; or `fashionrec serve` from the venv where
the image cannot run), and drives them with a round-robin client. Mid-stream the second bundle is activated
(smoke test, then the `current` switch) as the deployer does, then the first again (a rollback), and so on
for --rounds activations. Reported: failed requests (must be 0), responses whose model and index versions
are not one bundle's pair (must be 0), a replica answering from another bundle after it switched (must not
happen), each replica's switch time after the pointer moved and the last one's, and each replica's start
to /readyz (for the image: container start).

    nice -n 10 .venv/bin/python bench/rollout.py --replicas 3 --runner auto
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import yaml
from common import ROOT, Run, table

from fashionrec.deploy.rollout import activate

sys.path.insert(0, str(ROOT))   # the runners and bundle helpers of the tests (tests/ is a package), one copy
from tests.container import utils as container_utils  # noqa: E402
from tests.serving import utils as serving_utils  # noqa: E402
from tests.serving.utils import deploy_with  # noqa: E402


def pick_runner(wanted: str) -> str:
    if wanted != "auto":
        return wanted
    try:
        container_utils.require_image()
    except container_utils.ImageMissing as exc:
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
            port = serving_utils.free_port()
            log = self.work / f"replica{i}.log"
            if self.runner == "image":
                server = self.stack.enter_context(container_utils.serve_image(
                    self.work / "bundles", self.inventory, port, log, tag=f"replica{i}"))
            else:
                server = self.stack.enter_context(venv_server(self.work / "params.yaml", port, log))
            servers.append(server)
        for server in servers:   # started together, like pods of one Deployment
            container_utils.wait_status(server, "/readyz", 200, 180)
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
    server = container_utils.ImageServer(proc, f"http://127.0.0.1:{port}", log, time.monotonic())
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
            code, body = container_utils.post_image(urls[replica], payloads[i % len(payloads)])
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
    ap.add_argument("--rounds", type=int, default=5, help="activations: new, old, new, ...")
    ap.add_argument("--timeout", type=float, default=60.0, help="give up waiting for a replica to switch")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()

    run = Run("rollout")
    runner = pick_runner(args.runner)
    watch_s = float(yaml.safe_load((ROOT / "params.yaml").read_text())["serve"]["watch_interval_s"])
    work = Path(tempfile.mkdtemp(prefix="fashionrec-bench-rollout-"))
    try:
        catalog = serving_utils.make_catalog(work / "inventory", args.items, seed=1)
        model_a = serving_utils.export_model(work / "model_a", seed=1)
        model_b = serving_utils.export_model(work / "model_b", seed=2)
        params_b = serving_utils.write_params(work, model_b, catalog, serve__watch_interval_s=watch_s)
        params_a = serving_utils.write_params(work, model_a, catalog, serve__watch_interval_s=watch_s)
        first = deploy_with(params_a, rebuild=True)
        second = deploy_with(params_b, activate=False)
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
            rounds = []
            for r in range(args.rounds):   # second, first, second...: a rollout, a rollback, a rollout
                target, params = (second, params_b) if r % 2 == 0 else (first, params_a)
                began = time.monotonic()
                rollout = activate(work / "bundles", target.version, params)
                switched = time.monotonic()   # the pointer moved (activate renames it as its last step)
                deadline = switched + args.timeout
                while time.monotonic() < deadline:
                    new = {x["replica"] for x in seen
                           if x.get("index") == target.version and x["sent"] >= switched}
                    if len(new) == args.replicas:
                        break
                    time.sleep(0.1)
                time.sleep(args.after)
                rounds.append({"round": r, "version": target.version, "began": began, "switched": switched,
                               "ended": time.monotonic(), "smoke": rollout.to_dict().get("smoke")})
            stop.set()
            client.join(timeout=30)
        results = summarize(seen, pairs, rounds, args.replicas)
        results.update({"runner": runner, "replicas": args.replicas, "items": args.items,
                        "watch_interval_s": watch_s, "start_to_ready_s": replicas.ready_s})
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(table(results["rounds"], ["round", "version", "requests", "smoke_and_switch_s", "switch_s",
                                    "last_switch_s", "went_back"]))
    print(f"\n{results['requests']} requests, {results['failed']} failed, {results['mixed']} mixed; "
          f"last replica switched at most {results['last_switch_s_max']} s after the pointer moved "
          f"(watch interval {watch_s} s); runner {runner}; start to /readyz {results['start_to_ready_s']} s")
    run.save(results, args.out)
    if results["failed"] or results["mixed"] or any(r["went_back"] for r in results["rounds"]):
        sys.exit(1)


def summarize(seen: list[dict[str, Any]], pairs: dict[str, str], rounds: list[dict[str, Any]],
              replicas: int) -> dict[str, Any]:
    """Failures, answers whose model and index are not one bundle's pair, and per round and replica: when
    it first answered from the activated bundle, and whether it answered from another one after that."""
    failed = [x for x in seen if x["status"] != 200]
    mixed = [x for x in seen if x["status"] == 200 and pairs.get(x["index"]) != x["model"]]
    table_rows = []
    for rd in rounds:
        window = [x for x in seen if rd["began"] <= x["sent"] < rd["ended"] and x["status"] == 200]
        switch, went_back = [], False
        for i in range(replicas):
            mine = [x for x in window if x["replica"] == i]
            first_new = next((x for x in mine if x["index"] == rd["version"] and x["sent"] >= rd["switched"]),
                             None)
            switch.append(round(first_new["t"] - rd["switched"], 2) if first_new else None)
            went_back |= first_new is not None and any(x["index"] != rd["version"] for x in mine
                                                       if x["sent"] > first_new["t"])
        table_rows.append({"round": rd["round"], "version": rd["version"], "requests": len(window),
                           "smoke_and_switch_s": round(rd["switched"] - rd["began"], 2), "switch_s": switch,
                           "last_switch_s": max(switch) if None not in switch else None,
                           "went_back": went_back, "smoke": rd["smoke"]})
    lasts = [r["last_switch_s"] for r in table_rows]
    return {"requests": len(seen), "failed": len(failed), "mixed": len(mixed),
            "failures": [x.get("error") or x["status"] for x in failed[:5]], "rounds": table_rows,
            "last_switch_s_max": max(lasts) if None not in lasts else None,
            "last_switch_s_median": sorted(lasts)[len(lasts) // 2] if None not in lasts else None,
            "versions": sorted({x["index"] for x in seen if x["status"] == 200})}


if __name__ == "__main__":
    main()
