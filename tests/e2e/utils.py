"""Helpers of the promotion tests. The stack, all real and on loopback: an MLflow server with webhooks
(SQLite), the deployer, three `fashionrec serve` processes on one bundles folder,
and a request stream against all three.

Registered versions of `fashionrec` (tiny SimpleCNN models exported by the project's exporter):
1 = model A, 2 = model B, 3 = A with its artifacts deleted, 4 = A plus noise (fails the smoke test),
5 = A again (a new version: a new bundle), 6 = B again (the build the test kills mid-way).

The inventory's images are served over HTTP by a gated server (tests/gate.py): the test holds an image
request to know, whatever the machine's speed, that the deployer is in the middle of a build.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import onnx
from onnx import helper

from tests.gate import GatedServer
from tests.serving import utils as kit

ROOT = Path(__file__).resolve().parents[2]

NAME = "fashionrec"
SECRET = "e2e-webhook-secret"
CLI = str(Path(sys.executable).with_name("fashionrec"))
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"


def _edit_outputs(src: Path, dst: Path, extra: Any) -> Path:
    """Copy an exported model, rerouting its `embedding` output through nodes made by `extra`."""
    model = onnx.load(str(src))
    graph = model.graph
    for node in graph.node:
        node.output[:] = ["embedding_raw" if o == "embedding" else o for o in node.output]
    extra(graph)
    dst.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(dst))
    shutil.copyfile(src.parent / "preprocessing.json", dst.parent / "preprocessing.json")
    return dst


def noisy_model(src: Path, dst: Path) -> Path:
    """Same model, but every call adds fresh noise: stored and re-embedded vectors disagree."""
    def extra(graph: onnx.GraphProto) -> None:
        graph.node.extend([
            helper.make_node("RandomNormalLike", ["embedding_raw"], ["noise"], scale=1.0),
            helper.make_node("Add", ["embedding_raw", "noise"], ["noisy"]),
            helper.make_node("LpNormalization", ["noisy"], ["embedding"], axis=1, p=2)])
    return _edit_outputs(src, dst, extra)


def url_catalog(catalog: Path, base_url: str) -> Path:
    """The same catalog with every image as a URL under `base_url` (the CSV's folder served there)."""
    lines = catalog.read_text().splitlines()
    out = [lines[0]]
    for line in lines[1:]:
        item_id, image, rest = line.split(",", 2)
        out.append(f"{item_id},{base_url}/{image},{rest}")
    path = catalog.with_name("catalog-urls.csv")
    path.write_text("\n".join(out) + "\n")
    return path


def start(cmd: list[str], log: Path, env: dict[str, str], cwd: Path) -> subprocess.Popen:
    return subprocess.Popen(cmd, stdout=open(log, "w"), stderr=subprocess.STDOUT,  # noqa: SIM115
                            env=env, cwd=cwd, start_new_session=True)


@dataclass
class Stream:
    """Requests against every server, all the time: (server, time, status, model, index, item ids)."""

    urls: list[str]
    payload: bytes
    seen: list[tuple[int, float, int, str | None, str | None, list[str]]] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    stop_flag: threading.Event = field(default_factory=threading.Event)
    threads: list[threading.Thread] = field(default_factory=list)

    def run(self, i: int) -> None:
        with httpx.Client(base_url=self.urls[i], timeout=30) as http:
            while not self.stop_flag.is_set():
                try:
                    r = http.post("/recommend", files={"image": ("q.jpg", self.payload, "image/jpeg")},
                                  data={"k": "5"})
                    body = r.json()
                    ids = [x["item_id"] for x in body.get("items", [])]
                    self.seen.append((i, time.monotonic(), r.status_code, body.get("model_version"),
                                      body.get("index_version"), ids))
                except Exception as exc:  # a refused or dropped connection is a failed request
                    self.failures.append(f"server {i}: {exc!r}")
                time.sleep(0.02)

    def start(self) -> None:
        self.threads = [threading.Thread(target=self.run, args=(i,), daemon=True)
                        for i in range(len(self.urls))]
        for t in self.threads:
            t.start()

    def stop(self) -> None:
        self.stop_flag.set()
        for t in self.threads:
            t.join(timeout=60)

    def latest(self, i: int) -> tuple | None:
        for entry in reversed(self.seen):
            if entry[0] == i:
                return entry
        return None

    def wait_answered(self, since: float, timeout: float) -> None:
        """Until every server has answered a request after `since` (fails after timeout)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if all((e := self.latest(i)) and e[1] > since for i in range(len(self.urls))):
                return
            time.sleep(0.05)
        raise AssertionError(f"not every server answered within {timeout} s")

    def wait_all(self, model_version: str, timeout: float, since: float) -> float:
        """Seconds from `since` until every server answered with `model_version` (fails after timeout)."""
        deadline = since + timeout
        while time.monotonic() < deadline:
            done = [e for i in range(len(self.urls)) if (e := self.latest(i)) and e[3] == model_version
                    and e[1] > since]
            if len(done) == len(self.urls):
                return max(e[1] for e in done) - since
            time.sleep(0.05)
        raise AssertionError(f"not every server on {model_version} within {timeout} s: "
                             f"{[(self.latest(i) or (None,) * 5)[3:5] for i in range(len(self.urls))]}")


@dataclass
class Stack:
    root: Path
    params_file: Path
    bundles: Path
    mlflow_uri: str
    client: Any
    versions: dict[str, str]          # a, b, missing, noisy, a_again, held -> registered version
    servers: list[str]
    stream: Stream
    query: Path
    deployer_port: int
    deployer_log: Path
    env: dict[str, str]
    images: GatedServer               # serves the inventory's images; holds them when the test says
    procs: dict[str, subprocess.Popen] = field(default_factory=dict)
    webhook_id: str | None = None

    @property
    def deployer_url(self) -> str:
        return f"http://127.0.0.1:{self.deployer_port}"

    def webhooks(self, outcome: str = "accepted") -> float:
        """How many webhook deliveries the deployer counted with this outcome (its /metrics)."""
        with urllib.request.urlopen(f"{self.deployer_url}/metrics", timeout=10) as resp:
            text = resp.read().decode()
        line = f'fashionrec_deployer_webhooks_total{{outcome="{outcome}"}} '
        return sum(float(row[len(line):]) for row in text.splitlines() if row.startswith(line))

    def status(self) -> dict[str, Any]:
        with urllib.request.urlopen(f"{self.deployer_url}/status", timeout=10) as resp:
            return json.loads(resp.read())

    def start_deployer(self, *sets: str) -> subprocess.Popen:
        cmd = [CLI, "deployer", "-p", str(self.params_file), "--port", str(self.deployer_port)]
        for s in sets:
            cmd += ["-s", s]
        with open(self.deployer_log, "a") as fh:
            fh.write(f"--- start {' '.join(cmd)}\n")
        proc = subprocess.Popen(cmd, stdout=open(self.deployer_log, "a"), stderr=subprocess.STDOUT,  # noqa: SIM115
                                env=self.env, cwd=self.root, start_new_session=True)
        kit.wait_http(f"{self.deployer_url}/healthz", timeout=120, proc=proc)
        self.procs["deployer"] = proc
        return proc

    def cli(self, *args: str) -> subprocess.Popen:
        return subprocess.Popen([CLI, *args, "-p", str(self.params_file)], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, env=self.env, cwd=self.root)


def register(client: Any, mlflow: Any, onnx_path: Path) -> str:
    from fashionrec.registry.steps import log_onnx

    spec_path = onnx_path.parent / "preprocessing.json"
    # the stack's own server's Default experiment: mlflow's active experiment is process state, and an
    # earlier test in this process may have set one that exists only on its own server
    with mlflow.start_run(experiment_id="0"):
        info = log_onnx(onnx_path, json.loads(spec_path.read_text()), spec_path, NAME, {})
    version = str(info.registered_model_version)
    client.set_model_version_tag(NAME, version, "gate.passed", "true")
    return version


