"""Bundle-folder faults on a real server under an address-space cap: it never dies, never loops, and says
what it serves and why.

- `current` becomes a symlink loop (a stale NFS handle fails the same way): the watcher survives,
  `/healthz` shows the error and how stale the served bundle is; a later good pointer is picked up.
- A folder whose name differs from its manifest version is refused once, not reloaded in a loop.
- `current` copied as a real folder (`cp -rL`) is served, with a log line saying so.
- A fresh start with a corrupt `current` falls back to the newest intact bundle and says so.
- A brute-force index's `embeddings.npy` truncated in place: no SIGBUS, answers go on (embeddings are in
  memory), and the change on disk is reported.
- INFO logs name every load, switch and refusal with versions.
"""

from __future__ import annotations

import os
import re
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from fashionrec.bundle.store import set_current
from tests.reliability.utils import ADDRESS_SPACE_MIB, BUDGET_MIB
from tests.serving.utils import (
    deploy_with,
    export_model,
    make_catalog,
    start_server,
    status_of,
    stop,
    write_params,
)


@pytest.fixture(scope="module")
def assets(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("bundle_faults")
    return {"model": export_model(base / "model", seed=6), "catalog": make_catalog(base / "inv", 16, seed=6)}


def eventually(check: Callable[[], Any], timeout: float = 10.0, what: str = "") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout} s: {what}")
        time.sleep(0.1)


def metric(client: httpx.Client, name: str) -> float:
    found = re.search(rf"^{re.escape(name)} ([0-9.e+]+)$", client.get("/metrics").text, re.M)
    return float(found.group(1)) if found else 0.0


def photo(assets: dict[str, Path]) -> bytes:
    return (assets["catalog"].parent / "images" / "item003.jpg").read_bytes()


def answers(client: httpx.Client, assets: dict[str, Path]) -> str:
    r = client.post("/recommend", files={"image": ("q.jpg", photo(assets), "image/jpeg")})
    assert r.status_code == 200, r.text
    return r.json()["index_version"]


def test_pointer_faults_are_survived_reported_and_never_loop(tmp_path: Path, assets) -> None:
    params = write_params(tmp_path, assets["model"], assets["catalog"], serve__watch_interval_s=0.3)
    bundles = params.path("bundles")
    first = deploy_with(params, rebuild=True)
    second = deploy_with(params, activate=False)
    proc, url = start_server(params, tmp_path / "server.log", address_space_mib=ADDRESS_SPACE_MIB)
    try:
        with httpx.Client(base_url=url, timeout=30) as client:
            # 1. a symlink loop: the watcher survives, reports, and the served bundle ages visibly
            os.symlink("current", bundles / "loop")
            os.symlink("loop", bundles / ".current-test")
            os.replace(bundles / ".current-test", bundles / "current")
            health = eventually(lambda: (h := client.get("/healthz").json())["stale_s"] and h, what="stale")
            assert health["ready"] and health["index_version"] == first.version
            assert "symlink loop" in health["last_error"] and health["last_error_at"]
            time.sleep(0.7)
            assert client.get("/healthz").json()["stale_s"] > health["stale_s"]
            assert metric(client, "fashionrec_watch_errors_total") >= 2
            assert answers(client, assets) == first.version
            # 2. a good pointer again: picked up, the error cleared
            set_current(bundles, second.version)
            eventually(lambda: client.get("/healthz").json()["index_version"] == second.version,
                       what="switch")
            health = client.get("/healthz").json()
            assert health["last_error"] is None and health["stale_s"] is None
            assert answers(client, assets) == second.version
            # 3. a folder named unlike its manifest version: refused once, then left alone
            renamed = "v0009-20990101T000000Z"
            shutil.copytree(bundles / first.version, bundles / renamed)
            refused_before = metric(client, 'fashionrec_reloads_total{outcome="refused"}')
            set_current(bundles, renamed)
            eventually(lambda: client.get("/healthz").json()["last_error"], what="refusal")
            time.sleep(3.0)                                       # ten more looks by the watcher
            assert metric(client, 'fashionrec_reloads_total{outcome="refused"}') == refused_before + 1
            health = client.get("/healthz").json()
            assert "holds bundle version" in health["last_error"]
            assert health["index_version"] == second.version
            assert health["current"] == renamed and health["stale_s"] > 2
            # 4. `current` as a real folder (cp -rL): served, and the log says so
            (bundles / "current").unlink()
            shutil.copytree(bundles / first.version, bundles / "current")
            eventually(lambda: client.get("/healthz").json()["index_version"] == first.version, what="copy")
            assert client.get("/healthz").json()["current"] == "current"
            assert answers(client, assets) == first.version
            assert proc.poll() is None
    finally:
        stop(proc)
    log = (tmp_path / "server.log").read_text()
    assert f"bundle {first.version} loaded" in log and f"bundle {second.version} loaded" in log
    assert len(re.findall(rf"bundle {renamed} refused", log)) == 1
    assert "real folder" in log and "symlink loop" in log
    assert "Traceback" not in log


def test_a_fresh_start_on_a_corrupt_current_falls_back_to_the_newest_intact_bundle(tmp_path: Path,
                                                                                   assets) -> None:
    params = write_params(tmp_path, assets["model"], assets["catalog"], serve__watch_interval_s=0.3)
    bundles = params.path("bundles")
    first = deploy_with(params, rebuild=True)
    second = deploy_with(params, rebuild=True)                     # current -> second
    emb = bundles / second.version / "embeddings.npy"
    emb.chmod(0o644)
    data = bytearray(emb.read_bytes())
    data[-5] ^= 0xFF
    emb.write_bytes(bytes(data))
    proc, url = start_server(params, tmp_path / "server.log", address_space_mib=ADDRESS_SPACE_MIB)
    try:
        with httpx.Client(base_url=url, timeout=30) as client:
            health = client.get("/healthz").json()
            assert health["ready"] and health["index_version"] == first.version
            assert health["fallback"]["from"] == second.version and health["fallback"]["to"] == first.version
            assert "checksum mismatch" in health["last_error"] and health["stale_s"] is not None
            assert answers(client, assets) == first.version
            assert metric(client, 'fashionrec_reloads_total{outcome="fallback"}') == 1
            time.sleep(2.0)
            assert metric(client, 'fashionrec_reloads_total{outcome="loaded"}') == 0   # no retry loop
            set_current(bundles, first.version)                 # the operator rolls back: all clear
            eventually(lambda: client.get("/healthz").json()["fallback"] is None, what="fallback cleared")
            assert client.get("/healthz").json()["stale_s"] is None
    finally:
        stop(proc)
    log = (tmp_path / "server.log").read_text()
    assert len(re.findall(rf"bundle {second.version} refused", log)) == 1
    assert f"serving {first.version} instead of bundles/current ({second.version})" in log


def test_embeddings_truncated_under_a_brute_force_index_do_not_kill_the_server(tmp_path: Path,
                                                                               assets) -> None:
    params = write_params(tmp_path, assets["model"], assets["catalog"], serve__watch_interval_s=0.3,
                          index__kind="brute")
    bundle = deploy_with(params, rebuild=True)
    proc, url = start_server(params, tmp_path / "server.log", address_space_mib=ADDRESS_SPACE_MIB)
    try:
        with httpx.Client(base_url=url, timeout=30) as client:
            assert client.get("/healthz").json()["index_kind"] == "brute"
            emb = Path(bundle.bundle) / "embeddings.npy"
            emb.chmod(0o644)
            with open(emb, "r+b") as fh:                        # in place: same inode, pages gone
                fh.truncate(emb.stat().st_size // 3)
            for _ in range(20):
                assert answers(client, assets) == bundle.version
            assert proc.poll() is None, "the server died"
            health = eventually(lambda: (h := client.get("/healthz").json())["last_error"] and h,
                                what="change reported")
            assert health["ready"] and health["index_version"] == bundle.version
            assert "refused" in health["last_error"] and health["stale_s"] is not None
            assert answers(client, assets) == bundle.version
            assert status_of(proc.pid)["VmRSS"] <= BUDGET_MIB
    finally:
        stop(proc)
