"""Deploys that cannot lie (issue 22 item 7, issue 26): the history is written before `current` switches,
so a failed record leaves the previous bundle serving and nothing behind; pruning deletes bundles that never
served before ones that did; temporary files are judged abandoned under the deploy lock, never from a PID;
each bundle file is hashed once per bundle write."""

from __future__ import annotations

import errno
import os
import threading
from collections import Counter
from pathlib import Path

import pytest

from fashionrec.bundle import store
from fashionrec.bundle.store import (
    HISTORY,
    current_version,
    deploy_lock,
    list_versions,
    read_activations,
    temp_name,
)
from fashionrec.core.config import Params
from fashionrec.core.errors import BundleError
from fashionrec.deploy import build, rollout
from fashionrec.deploy.config import DeployerConfig
from fashionrec.deploy.deployer import Deployer
from fashionrec.deploy.reconcile import roll_back_deploy
from tests.serving.utils import config, deploy_with, export_model, make_catalog, write_params

TEMP_PREFIXES = (".tmp-", ".current-", f".{HISTORY}.")


@pytest.fixture(scope="module")
def assets(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("deploy_order")
    return {"a": export_model(base / "a", seed=11), "b": export_model(base / "b", seed=12),
            "catalog": make_catalog(base / "inv", 12, seed=11)}


def project(tmp_path: Path, assets: dict[str, Path], **overrides: object) -> Params:
    return write_params(tmp_path, assets["a"], assets["catalog"], **overrides)


def leftovers(bundles: Path) -> list[str]:
    return sorted(p.name for p in bundles.iterdir() if p.name.startswith(TEMP_PREFIXES))


def full_disk_for_history(monkeypatch: pytest.MonkeyPatch) -> None:
    """fsync of the history's temporary file fails as on a full disk (ENOSPC); every other write works."""
    real = os.fsync

    def fsync(fd: int) -> None:
        if f".{HISTORY}." in os.readlink(f"/proc/self/fd/{fd}"):
            raise OSError(errno.ENOSPC, "No space left on device")
        real(fd)

    monkeypatch.setattr(store.os, "fsync", fsync)


def test_a_history_that_cannot_be_written_switches_nothing_and_the_next_deploy_succeeds(
        tmp_path: Path, assets, monkeypatch: pytest.MonkeyPatch) -> None:
    params = project(tmp_path, assets)
    bundles = params.path("bundles")
    first = deploy_with(params)
    before = read_activations(bundles)
    with monkeypatch.context() as m:
        full_disk_for_history(m)
        with pytest.raises(BundleError, match=rf"cannot record.*{first.version} still serves"):
            deploy_with(params, model=str(assets["b"]))
    assert current_version(bundles) == first.version            # the command failed: nothing switched
    assert read_activations(bundles) == before
    assert leftovers(bundles) == []                              # no temporary history file
    assert list_versions(bundles) == [first.version]             # the unrecorded bundle is gone too
    again = deploy_with(params, model=str(assets["b"]))          # the disk has room again
    assert again.action == "built" and current_version(bundles) == again.version
    assert read_activations(bundles)["stack"] == [first.version, again.version]
    assert leftovers(bundles) == []


def test_a_switch_that_fails_puts_the_previous_history_back(tmp_path: Path, assets,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    params = project(tmp_path, assets)
    bundles = params.path("bundles")
    first = deploy_with(params)
    before = read_activations(bundles)

    def no_switch(bundles_dir: Path, version: str) -> None:
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(rollout, "set_current", no_switch)
    with pytest.raises(BundleError, match=rf"cannot switch.*{first.version} still serves"):
        deploy_with(params, model=str(assets["b"]))
    assert current_version(bundles) == first.version and read_activations(bundles) == before
    assert leftovers(bundles) == []


def test_a_deploy_killed_between_record_and_switch_leaves_a_history_that_says_so(
        tmp_path: Path, assets, monkeypatch: pytest.MonkeyPatch) -> None:
    params = project(tmp_path, assets)
    bundles = params.path("bundles")
    first = deploy_with(params)
    with monkeypatch.context() as m:
        def killed(*_: object) -> None:
            raise KeyboardInterrupt("killed after the record, before the switch")

        m.setattr(rollout, "set_current", killed)
        with pytest.raises(KeyboardInterrupt):
            deploy_with(params, model=str(assets["b"]))
    history = read_activations(bundles)
    assert current_version(bundles) == first.version and history["stack"] == [first.version]
    assert history["log"][-1]["switched"] is False
    assert not rollout.was_live(bundles, history["log"][-1]["version"])
    again = deploy_with(params, model=str(assets["b"]))           # the kept bundle, smoke-tested, goes live
    assert again.action == "restored" and again.rollout["smoke"] is not None
    assert read_activations(bundles)["stack"] == [first.version, again.version]


def test_pruning_deletes_a_bundle_that_never_served_before_one_that_did(
        tmp_path: Path, assets, monkeypatch: pytest.MonkeyPatch) -> None:
    params = project(tmp_path, assets, index__keep=3)
    bundles = params.path("bundles")
    v1 = deploy_with(params).version
    v2 = deploy_with(params, rebuild=True).version
    with monkeypatch.context() as m:        # a deploy dies during its smoke test: its bundle stays
        def killed(*_: object) -> None:
            raise KeyboardInterrupt("killed during the smoke test")

        m.setattr(rollout, "smoke_test", killed)
        with pytest.raises(KeyboardInterrupt):
            deploy_with(params, model=str(assets["b"]))
    never = [v for v in list_versions(bundles) if v not in (v1, v2)]
    assert len(never) == 1 and current_version(bundles) == v2
    v4 = deploy_with(params, rebuild=True)
    assert v4.rollout["pruned"] == never                         # not v1, which served
    assert list_versions(bundles) == [v1, v2, v4.version]
    assert read_activations(bundles)["log"][-1]["pruned"] == never
    assert roll_back_deploy(config(params), by="t", reason="r").version == v2


def test_a_temp_folder_of_another_pod_is_cleaned_under_the_lock_but_a_lock_holders_is_not(
        tmp_path: Path, assets) -> None:
    params = project(tmp_path, assets)
    bundles = params.path("bundles")
    bundles.mkdir()
    other_pod = os.getppid()                  # a PID alive here, meaningless for another pod's files
    (bundles / f".tmp-v0003-20261201T000000Z-{other_pod}").mkdir()
    os.symlink("v0001", bundles / f".current-{other_pod}")
    (bundles / f".{HISTORY}.{other_pod}").write_text("{}")
    (bundles / ".tmp-not-ours").mkdir()      # not a name a deploy writes: left alone
    holding, release = threading.Event(), threading.Event()
    own: list[Path] = []

    def writer() -> None:                     # a concurrent deploy: holds the lock, writes a temp folder
        with deploy_lock(bundles):
            own.append(bundles / temp_name("tmp-v0004-20261201T000000Z"))
            own[0].mkdir()
            holding.set()
            release.wait(60)

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        assert holding.wait(60)
        deployer = Deployer(config(params).with_(model=str(tmp_path / "absent.onnx")),
                            DeployerConfig(poll_interval_s=3600))
        deployer.start()                      # its start-up clean-up cannot take the lock: skipped
        deployer.stop()
        assert own[0].is_dir()
        assert sorted(p.name for p in bundles.iterdir() if p.name.startswith(".tmp-")) == sorted(
            [own[0].name, ".tmp-not-ours"])   # the writer took the lock after the other pod died
    finally:
        release.set()
        thread.join(60)
    (bundles / f".tmp-v0005-20261201T000000Z-{other_pod}").mkdir()   # the other pod again, then dies
    with deploy_lock(bundles):
        pass
    assert leftovers(bundles) == [".tmp-not-ours"]
    assert not own[0].exists()                # abandoned once its writer let go of the lock and died


def test_each_bundle_file_is_hashed_once_per_write(tmp_path: Path, assets,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    params = project(tmp_path, assets)
    hashed: Counter[str] = Counter()
    real = store.sha256_file

    def counting(path: Path) -> str:
        hashed[Path(path).name] += 1
        return real(path)

    monkeypatch.setattr(store, "sha256_file", counting)
    monkeypatch.setattr(build, "sha256_file", counting)
    result = deploy_with(params, activate=False)
    files = sorted(p.name for p in Path(result.bundle).iterdir() if p.name != "SHA256SUMS")
    assert hashed["model.onnx"] == 1
    assert all(hashed[name] == 1 for name in files), hashed
