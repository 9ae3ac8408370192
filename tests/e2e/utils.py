"""Helpers of the promotion tests. The stack, all real and on loopback: an MLflow server with webhooks
(SQLite), the deployer, three `fashionrec serve` processes on one bundles folder,
and a request stream against all three.

Registered versions of `fashionrec` (tiny SimpleCNN models exported by the project's exporter):
1 = model A, 2 = model B, 3 = A with its artifacts deleted, 4 = A plus noise (fails the smoke test),
5 = A again (a new version: a new bundle), 6 = B made slow (a build long enough to kill mid-way).
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
import numpy as np
import onnx
from onnx import helper, numpy_helper

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


def slow_model(src: Path, dst: Path, matmuls: int = 48, size: int = 768) -> Path:
    """Same embeddings, but each call also multiplies big matrices (result times zero): a slow build, several
    seconds on one quiet thread (6 matmuls were done within the test's 0.5 s on a quiet machine)."""
    def extra(graph: onnx.GraphProto) -> None:
        graph.initializer.extend([
            numpy_helper.from_array(np.full((size, size), 1.0 / size, np.float32), "slow_w"),
            numpy_helper.from_array(np.array([size, size], np.int64), "slow_shape"),
            numpy_helper.from_array(np.array(0.0, np.float32), "slow_zero")])
        nodes = [helper.make_node("ReduceMean", ["image"], ["slow_m"], keepdims=0),
                 helper.make_node("Expand", ["slow_m", "slow_shape"], ["slow_0"])]
        for i in range(matmuls):
            nodes.append(helper.make_node("MatMul", [f"slow_{i}", "slow_w"], [f"slow_{i + 1}"]))
        nodes += [helper.make_node("ReduceSum", [f"slow_{matmuls}"], ["slow_sum"], keepdims=0),
                  helper.make_node("Mul", ["slow_sum", "slow_zero"], ["slow_nil"]),
                  helper.make_node("Add", ["embedding_raw", "slow_nil"], ["embedding"])]
        graph.node.extend(nodes)
    return _edit_outputs(src, dst, extra)


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
    versions: dict[str, str]          # a, b, missing, noisy, a_again, slow -> registered version
    servers: list[str]
    stream: Stream
    query: Path
    deployer_port: int
    deployer_log: Path
    env: dict[str, str]
    procs: dict[str, subprocess.Popen] = field(default_factory=dict)
    webhook_id: str | None = None

    @property
    def deployer_url(self) -> str:
        return f"http://127.0.0.1:{self.deployer_port}"

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
    with mlflow.start_run():
        info = log_onnx(onnx_path, json.loads(spec_path.read_text()), spec_path, NAME, {})
    version = str(info.registered_model_version)
    client.set_model_version_tag(NAME, version, "gate.passed", "true")
    return version


