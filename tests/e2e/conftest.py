"""Fixtures of the promotion tests: Debian's chromium for Playwright, and the whole stack
(tests/e2e/utils.py)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from tests.e2e.utils import (
    CHROMIUM,
    CLI,
    NAME,
    ROOT,
    SECRET,
    Stack,
    Stream,
    kit,
    noisy_model,
    register,
    start,
    url_catalog,
)
from tests.gate import GatedServer


@pytest.fixture(scope="session")
def browser_type_launch_args(browser_type_launch_args):
    """Debian's chromium (Playwright never downloads a browser here)."""
    return {**browser_type_launch_args, "executable_path": CHROMIUM,
            "args": ["--disable-gpu", "--disable-background-networking", "--disable-component-update",
                     "--disable-sync"]}


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    root = tmp_path_factory.mktemp("promotion")
    models = root / "models"
    a = kit.export_model(models / "a", seed=1)
    b = kit.export_model(models / "b", seed=2)
    noisy = noisy_model(a, models / "noisy" / "model.onnx")
    local_catalog = kit.make_catalog(root / "inventory", 40, seed=1)
    images = GatedServer(root=local_catalog.parent).__enter__()
    catalog = url_catalog(local_catalog, images.url)

    port = kit.free_port()
    mlflow_uri = f"http://127.0.0.1:{port}"
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false", "MLFLOW_DISABLE_TELEMETRY": "true",
           "MLFLOW_WEBHOOK_ALLOWED_SCHEMES": "http,https", "MLFLOW_WEBHOOK_ALLOW_PRIVATE_IPS": "true",
           "MLFLOW_WEBHOOK_REQUEST_MAX_RETRIES": "1",
           "MLFLOW_WEBHOOK_CACHE_TTL": "1",   # the server caches the webhook list (default 60 s)
           "MLFLOW_TRACKING_URI": mlflow_uri,
           "FASHIONREC_WEBHOOK_SECRET": SECRET, "FASHIONREC_ADMIN_TOKEN": kit.TOKEN, "OMP_NUM_THREADS": "1"}
    procs: dict[str, subprocess.Popen] = {}
    procs["mlflow"] = start([str(Path(sys.executable).with_name("mlflow")), "server", "--workers", "1",
                             "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}",
                             "--default-artifact-root", str(root / "artifacts"), "--host", "127.0.0.1",
                             "--port", str(port)], root / "mlflow.log", env, root)
    old_uri = os.environ.get("MLFLOW_TRACKING_URI")
    t0 = time.monotonic()

    def phase(name: str) -> None:
        print(f"[stack] {name}: {time.monotonic() - t0:.1f} s", flush=True)

    stream = None
    try:
        kit.wait_http(f"{mlflow_uri}/health", proc=procs["mlflow"])
        os.environ["MLFLOW_TRACKING_URI"] = mlflow_uri
        import mlflow
        from mlflow import MlflowClient

        mlflow.set_tracking_uri(mlflow_uri)
        phase("mlflow up")
        client = MlflowClient(mlflow_uri)
        versions = {key: register(client, mlflow, path) for key, path in
                    (("a", a), ("b", b), ("missing", a), ("noisy", noisy), ("a_again", a), ("held", b))}
        gone = Path(client.get_model_version_download_uri(NAME, versions["missing"]).removeprefix("file://"))
        assert gone.is_dir(), gone
        shutil.rmtree(gone)

        phase("six versions registered")
        server_ports = [kit.free_port() for _ in range(3)]
        servers = [f"http://127.0.0.1:{p}" for p in server_ports]
        deployer_port = kit.free_port()
        tree = yaml.safe_load((ROOT / "params.yaml").read_text())
        index = {**tree["index"], "model": f"models:/{NAME}@champion", "catalog": str(catalog),
                 "bundles": "bundles", "summary": "reports/deploy/summary.json", "recall_queries": 30,
                 "smoke_queries": 3, "notify": servers, "keep": 10, "lock_wait_s": 300}
        serve = {**tree["serve"], "bundles": "bundles", "static_dir": str(ROOT / "serving/static"),
                 "watch_interval_s": 0.5, "intra_op_threads": 1}
        params = {"seed": 42, "mlflow": {"tracking_uri": mlflow_uri}, "register": {"name": NAME},
                  "index": index, "serve": serve,
                  "deployer": {**tree["deployer"], "port": deployer_port, "poll_interval_s": 120}}
        params_file = root / "params.yaml"
        params_file.write_text(yaml.safe_dump(params))

        # The first champion, deployed the way the pipeline's last steps do it (register: promote; deploy).
        from fashionrec.core.config import load_params
        from fashionrec.deploy.config import DeployConfig
        from fashionrec.deploy.reconcile import deploy
        from fashionrec.registry.steps import promote_version

        promote_version(versions["a"], NAME, by="setup", reason="first champion")
        first = deploy(DeployConfig.from_params(load_params(params_file)))
        assert first.model_version == f"{NAME}/{versions['a']}"
        phase("first champion deployed")
        for i, p in enumerate(server_ports):
            procs[f"serve{i}"] = start([CLI, "serve", "-p", str(params_file), "--port", str(p)],
                                       root / f"serve{i}.log", env, root)
        stack = Stack(root=root, params_file=params_file, bundles=root / "bundles", mlflow_uri=mlflow_uri,
                      client=client, versions=versions, servers=servers, stream=None,  # type: ignore[arg-type]
                      query=catalog.parent / "images" / "item005.jpg", deployer_port=deployer_port,
                      deployer_log=root / "deployer.log", env=env, images=images, procs=procs)
        stack.start_deployer()
        for i, url in enumerate(servers):
            kit.wait_http(f"{url}/readyz", timeout=120, proc=procs[f"serve{i}"])
        phase("deployer and servers up")
        hook = client.create_webhook(name="deployer", url=f"{stack.deployer_url}/webhooks/mlflow",
                                     events=["model_version_alias.created", "model_version_alias.deleted"],
                                     secret=SECRET)
        stack.webhook_id = hook.webhook_id
        stream = Stream(servers, stack.query.read_bytes())
        stack.stream = stream
        stream.start()
        yield stack
    finally:
        if stream is not None:
            stream.stop()
        for proc in reversed(list(procs.values())):
            kit.stop(proc)
        images.close()
        if old_uri is None:
            os.environ.pop("MLFLOW_TRACKING_URI", None)
        else:
            os.environ["MLFLOW_TRACKING_URI"] = old_uri
