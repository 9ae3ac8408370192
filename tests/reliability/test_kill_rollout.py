"""Crashes around a rollout, and two deploys at once: serving always ends on one complete, consistent bundle.

- `kill -9` the server while a deploy (a `fashionrec index` process) rolls over to a new bundle, and in a
  second case the deploy too: on restart the server serves exactly the bundle `bundles/current` names,
  every answer carries that one (model version, index version) pair, and the bundle passes its checksums.
- Two deploys of different models started together: each one either succeeds or fails with a one-line
  error; `current` is a verified bundle of a deploy that succeeded; no temporary folder or pointer is left.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from deploykit import TOKEN, export_model, make_catalog, start_server, stop, write_params

from fashionrec.bundle.format import verify_bundle
from fashionrec.bundle.store import current_version, deploy_lock, list_versions, read_history
from fashionrec.core.errors import BundleError
from fashionrec.deploy.build import build_index_bundle

CLI = str(Path(sys.executable).with_name("fashionrec"))


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("reliability_models")
    return {"a": export_model(base / "a", seed=11), "b": export_model(base / "b", seed=12),
            "catalog": make_catalog(base / "inv", 30, seed=5)}


def deploy(params_root: Path, model: Path) -> subprocess.Popen:
    env = {**os.environ, "FASHIONREC_ADMIN_TOKEN": TOKEN, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([CLI, "index", "-p", str(params_root / "params.yaml"), "--model", str(model)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                            cwd=params_root, start_new_session=True)


def kill9(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)


def leftovers(bundles: Path) -> list[str]:
    return sorted(p.name for p in bundles.iterdir() if p.name.startswith((".tmp-", ".current-")))


def assert_consistent(url: str, bundles: Path, queries: list[bytes]) -> str:
    """The server answers from the bundle `current` names, and only from it."""
    current = current_version(bundles)
    assert current is not None and (bundles / current).is_dir(), f"dangling pointer {current}"
    manifest = verify_bundle(bundles / current)
    with httpx.Client(base_url=url, timeout=30) as client:
        ready = client.get("/readyz").json()
        assert ready["index_version"] == current and ready["model_version"] == manifest["model"]["version"]
        for data in queries:
            r = client.post("/recommend", files={"image": ("q.jpg", data, "image/jpeg")}, data={"k": "5"})
            assert r.status_code == 200, r.text
            body = r.json()
            assert (body["model_version"], body["index_version"]) == (manifest["model"]["version"], current)
            ids = {item["item_id"] for item in body["items"]}
            assert len(ids) == 5
    return current


@pytest.mark.parametrize("kill_deploy", [False, True], ids=["server-only", "server-and-deploy"])
def test_kill_9_server_during_rollout_restarts_on_one_consistent_bundle(models, tmp_path: Path,
                                                                        kill_deploy: bool) -> None:
    params = write_params(tmp_path, models["a"], models["catalog"])
    first = build_index_bundle(params)
    bundles = tmp_path / "bundles"
    proc, url = start_server(params, tmp_path / "server1.log")
    params = write_params(tmp_path, models["a"], models["catalog"], index__notify=[url])
    queries = [p.read_bytes() for p in sorted((models["catalog"].parent / "images").glob("*.jpg"))[:4]]
    rng = np.random.default_rng(int(kill_deploy))
    rollout = deploy(tmp_path, models["b"])
    try:
        # Wait until the deploy is writing its bundle (a .tmp- folder or the new version appears), then crash.
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and rollout.poll() is None:
            names = [p.name for p in bundles.iterdir() if p.is_dir()]
            if any(n.startswith(".tmp-") or (n != first.version and not n.startswith(".")) for n in names):
                break
            time.sleep(0.005)
        time.sleep(float(rng.uniform(0.0, 0.3)))
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
        if kill_deploy:
            kill9(rollout)
        else:
            out, err = rollout.communicate(timeout=180)
            assert rollout.returncode == 0, err[-2000:]
            result = json.loads(out)
            # The server was dead when the deploy told it to reload: reported, and the rollout stands.
            assert result["rollout"]["version"] == current_version(bundles)
    finally:
        kill9(rollout)
        stop(proc)

    proc, url = start_server(params, tmp_path / "server2.log")
    try:
        served = assert_consistent(url, bundles, queries)
        if not kill_deploy:
            assert served != first.version, "the finished rollout must be what the restarted server serves"
        history = read_history(bundles)
        assert history["stack"] and history["stack"][-1] == served
        assert all((bundles / v).is_dir() for v in history["stack"])
        for version in list_versions(bundles):
            verify_bundle(bundles / version)
        if not kill_deploy:
            assert leftovers(bundles) == []
    finally:
        stop(proc)
    if kill_deploy:   # the next deploy clears what the killed one left half-written
        again = build_index_bundle(params, do_activate=False)
        assert leftovers(bundles) == []
        assert list_versions(bundles)[-1] == again.version
        assert int(again.version[1:5]) == int(list_versions(bundles)[-2][1:5]) + 1


def test_two_concurrent_deploys_leave_one_complete_bundle_serving(models, tmp_path: Path) -> None:
    params = write_params(tmp_path, models["a"], models["catalog"])
    bundles = tmp_path / "bundles"
    first = build_index_bundle(params)
    procs = {name: deploy(tmp_path, models[name]) for name in ("a", "b")}
    outcomes = {}
    for name, p in procs.items():
        out, err = p.communicate(timeout=240)
        outcomes[name] = (p.returncode, out, err)
    succeeded = {}
    for name, (code, out, err) in outcomes.items():
        assert code in (0, 1), f"deploy {name} crashed with {code}: {err[-2000:]}"
        assert "Traceback" not in err, err[-2000:]
        if code == 0:
            succeeded[name] = json.loads(out)
        else:
            assert err.strip().splitlines()[-1].startswith("error:"), err[-2000:]
    assert succeeded, outcomes
    current = current_version(bundles)
    assert current in {r["version"] for r in succeeded.values()}
    manifest = verify_bundle(bundles / current)
    assert manifest["model"]["version"] in {r["model_version"] for r in succeeded.values()}
    history = read_history(bundles)
    assert history["stack"][-1] == current and all((bundles / v).is_dir() for v in history["stack"])
    versions = list_versions(bundles)
    assert len(versions) == 1 + len(succeeded) and first.version in versions
    for version in versions:
        verify_bundle(bundles / version)
    assert leftovers(bundles) == []
    summary = json.loads((tmp_path / "reports" / "index" / "summary.json").read_text())
    assert summary["version"] in versions


def test_deploy_refused_while_another_deploy_holds_the_lock(models, tmp_path: Path) -> None:
    """The loser of two concurrent deploys fails at once with a clear error and writes nothing."""
    params = write_params(tmp_path, models["a"], models["catalog"])
    bundles = tmp_path / "bundles"
    with deploy_lock(bundles), pytest.raises(BundleError, match="another deploy is in progress"):
        build_index_bundle(params)
    assert list_versions(bundles) == [] and current_version(bundles) is None
    assert leftovers(bundles) == []
    assert build_index_bundle(params).version in list_versions(bundles)   # the lock was released
