"""Start-up without a race: `fashionrec serve` on an empty bundles folder starts, stays not ready and builds
nothing, then serves the first bundle the deployer activates (it follows `bundles/current`)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import httpx

from tests.serving.utils import deploy_with, free_port, stop, wait_http, write_params


def test_empty_bundles_folder_waits_not_ready_then_follows_current(tmp_path: Path, assets) -> None:
    params = write_params(tmp_path, assets.model_a, assets.catalog)
    bundles = params.path(params.section("serve")["bundles"])
    bundles.mkdir(parents=True, exist_ok=True)
    port = free_port()
    log = tmp_path / "server.log"
    with open(log, "w") as fh:
        proc = subprocess.Popen(
            [str(Path(sys.executable).with_name("fashionrec")), "serve", "-p", str(tmp_path / "params.yaml"),
             "--port", str(port)], stdout=fh, stderr=subprocess.STDOUT, start_new_session=True,
            cwd=tmp_path, env={**os.environ, "OMP_NUM_THREADS": "1"})
        url = f"http://127.0.0.1:{port}"
        try:
            wait_http(f"{url}/healthz", timeout=120, proc=proc)
            with httpx.Client(base_url=url, timeout=10) as http:
                r = http.get("/readyz")
                assert r.status_code == 503 and r.json()["error"] == "not_ready"
                time.sleep(3 * params.section("serve")["watch_interval_s"])
                assert list(bundles.iterdir()) == [], "a server must never build or write a bundle"
                assert http.get("/readyz").status_code == 503

                result = deploy_with(params, rebuild=True)   # the deployer: build, smoke-test, activate
                deadline = time.monotonic() + 120
                while time.monotonic() < deadline and http.get("/readyz").status_code != 200:
                    time.sleep(0.2)
                ready = http.get("/readyz")
                assert ready.status_code == 200, log.read_text()[-2000:]
                assert ready.json()["index_version"] == result.version
                assert proc.poll() is None
        finally:
            stop(proc)
