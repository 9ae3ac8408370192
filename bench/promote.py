"""Promotion-to-serving time: the `champion` alias moved in MLflow -> every server answers with that model.

The real stack on loopback: an MLflow server (SQLite, webhooks on), `fashionrec deployer`, N
`fashionrec serve` processes on one bundles folder. For each inventory size, the alias is moved (as the
MLflow UI does, one REST call) to a version never bundled (embed, smoke test, switch) and back to one
bundled before (kept bundle: verify, switch), `--repeat` times each;
the clock stops when every server's `/info` names the model.

    python bench/promote.py --items 40 400 --servers 3 --repeat 2
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ROOT, Run, table  # noqa: E402

sys.path.insert(0, str(ROOT))   # the bundle helpers of the tests (tests/ is a package), one copy
from tests.serving import utils as kit  # noqa: E402

CLI = str(Path(sys.executable).with_name("fashionrec"))
SECRET = "bench-secret"


def info(url: str) -> str | None:
    try:
        with urllib.request.urlopen(f"{url}/info", timeout=5) as resp:
            return json.loads(resp.read())["model_version"]
    except OSError:
        return None


def until_all(urls: list[str], model_version: str, timeout: float = 600) -> float:
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if all(info(u) == model_version for u in urls):
            return time.monotonic() - started
        time.sleep(0.05)
    raise TimeoutError(f"servers not on {model_version} after {timeout} s")


def register(client: Any, mlflow: Any, name: str, onnx_path: Path) -> str:
    from fashionrec.registry.steps import log_onnx

    spec = onnx_path.parent / "preprocessing.json"
    with mlflow.start_run():
        info_ = log_onnx(onnx_path, json.loads(spec.read_text()), spec, name, {})
    return str(info_.registered_model_version)


def one_size(base: Path, items: int, servers: int, repeat: int, uri: str, env: dict[str, str],
             procs: list[subprocess.Popen]) -> list[dict[str, Any]]:
    import mlflow
    from mlflow import MlflowClient

    from fashionrec.core.config import load_params
    from fashionrec.deploy.config import DeployConfig
    from fashionrec.deploy.reconcile import deploy
    from fashionrec.registry.steps import promote_version

    name = f"bench{items}"
    root = base / name
    models = [kit.export_model(root / f"m{i}", seed=i + 1) for i in range(2 + repeat)]
    catalog = kit.make_catalog(root / "inventory", items, seed=3)
    client = MlflowClient(uri)
    versions = [register(client, mlflow, name, m) for m in models]
    ports = [kit.free_port() for _ in range(servers + 1)]
    urls = [f"http://127.0.0.1:{p}" for p in ports[1:]]
    tree = yaml.safe_load((ROOT / "params.yaml").read_text())
    params = {"seed": 42, "mlflow": {"tracking_uri": uri}, "register": {"name": name},
              "index": {**tree["index"], "model": f"models:/{name}@champion", "catalog": str(catalog),
                        "bundles": "bundles", "summary": None, "notify": urls, "keep": 20},
              "serve": {**tree["serve"], "bundles": "bundles", "watch_interval_s": 0.5, "intra_op_threads": 1,
                        "static_dir": str(ROOT / "serving/static")},
              "deployer": {**tree["deployer"], "port": ports[0], "poll_interval_s": 300}}
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    promote_version(versions[0], name, by="bench", reason="first", force=True)
    deploy(DeployConfig.from_params(load_params(root / "params.yaml")))
    for i, url in enumerate([f"http://127.0.0.1:{ports[0]}", *urls]):
        cmd = [CLI, "deployer" if i == 0 else "serve", "-p", str(root / "params.yaml"),
               "--port", url.rsplit(":", 1)[1]]
        procs.append(subprocess.Popen(cmd, stdout=open(root / f"p{i}.log", "w"), stderr=subprocess.STDOUT,  # noqa: SIM115
                                      env=env, cwd=root, start_new_session=True))
        kit.wait_http(f"{url}/{'healthz' if i == 0 else 'readyz'}", timeout=180, proc=procs[-1])
    client.create_webhook(name=f"deployer-{name}", url=f"http://127.0.0.1:{ports[0]}/webhooks/mlflow",
                          events=["model_version_alias.created"], secret=SECRET)
    time.sleep(1.5)   # the server's webhook cache (MLFLOW_WEBHOOK_CACHE_TTL=1 here)
    rows = []
    previous = versions[0]
    for r in range(repeat):
        for kind, version in (("new version (build)", versions[1 + r]), ("bundled before (kept)", previous)):
            client.set_registered_model_alias(name, "champion", version)
            seconds = until_all(urls, f"{name}/{version}")
            rows.append({"items": items, "servers": servers, "promotion": kind, "seconds": round(seconds, 2)})
            print(rows[-1], flush=True)
        client.set_registered_model_alias(name, "champion", versions[1 + r])
        until_all(urls, f"{name}/{versions[1 + r]}")
        previous = versions[1 + r]
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--items", type=int, nargs="+", default=[40, 400])
    ap.add_argument("--servers", type=int, default=3)
    ap.add_argument("--repeat", type=int, default=2)
    args = ap.parse_args()
    run = Run("promote")
    base = Path(tempfile.mkdtemp(prefix="fashionrec-bench-promote-"))
    port = kit.free_port()
    uri = f"http://127.0.0.1:{port}"
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false", "MLFLOW_DISABLE_TELEMETRY": "true",
           "MLFLOW_WEBHOOK_ALLOWED_SCHEMES": "http,https", "MLFLOW_WEBHOOK_ALLOW_PRIVATE_IPS": "true",
           "MLFLOW_WEBHOOK_CACHE_TTL": "1", "MLFLOW_TRACKING_URI": uri, "FASHIONREC_WEBHOOK_SECRET": SECRET,
           "FASHIONREC_ADMIN_TOKEN": kit.TOKEN, "OMP_NUM_THREADS": "1"}
    os.environ["MLFLOW_TRACKING_URI"] = uri
    procs = [subprocess.Popen([str(Path(sys.executable).with_name("mlflow")), "server", "--workers", "1",
                               "--backend-store-uri", f"sqlite:///{base / 'mlflow.db'}",
                               "--default-artifact-root", str(base / "artifacts"), "--host", "127.0.0.1",
                               "--port", str(port)],
                              stdout=open(base / "mlflow.log", "w"), stderr=subprocess.STDOUT,  # noqa: SIM115
                              env=env, start_new_session=True)]
    rows: list[dict[str, Any]] = []
    try:
        kit.wait_http(f"{uri}/health", timeout=180, proc=procs[0])
        for items in args.items:
            rows += one_size(base, items, args.servers, args.repeat, uri, env, procs)
    finally:
        for proc in reversed(procs):
            kit.stop(proc)
    print(table(rows, ["items", "servers", "promotion", "seconds"]))
    run.save({"rows": rows, "note": "alias set by REST (what the UI's Save does); tiny SimpleCNN models; "
              "clock stops when every server's /info names the model"})


if __name__ == "__main__":
    main()
