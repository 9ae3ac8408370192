"""Bundles: build, checksums, smoke test, switch and rollback, pruning, incremental adds, index kinds."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from fashionrec.bundle.format import MANIFEST, SUMS, verify_bundle
from fashionrec.bundle.load import load_bundle
from fashionrec.bundle.store import (
    HISTORY,
    current_version,
    deploy_lock,
    list_versions,
    read_activations,
    remove_abandoned,
    write_activations,
)
from fashionrec.core.config import Params
from fashionrec.core.errors import BundleError, DataError, FashionrecError, SmokeTestFailed
from fashionrec.data.manifest import read_manifest
from fashionrec.data.shards import read_image_bytes
from fashionrec.deploy.catalog import read_catalog
from fashionrec.deploy.reconcile import add_items, roll_back_deploy
from fashionrec.deploy.rollout import go_live
from fashionrec.index.brute import BruteIndex
from fashionrec.index.hnsw import HnswIndex
from fashionrec.index.recall import recall_at_k, tune_ef_search
from fashionrec.serve.state import load_state
from tests.serving.utils import config, deploy_with, make_catalog, write_params


def bundles(params: Params) -> Path:
    return params.path("bundles")


def test_build_writes_a_complete_checksummed_bundle(project: Params) -> None:
    result = deploy_with(project)
    folder = Path(result.bundle)
    assert sorted(p.name for p in folder.iterdir()) == sorted(
        ["model.onnx", "preprocessing.json", "embeddings.npy", "items.json", MANIFEST, SUMS])
    assert not list(folder.glob("*.pkl")) and not list(folder.glob("*.pickle"))
    manifest = verify_bundle(folder)
    assert manifest["items"]["count"] == 40 and result.embedded == 40
    assert manifest["model"]["version"].startswith("local-")
    assert manifest["index"]["kind"] == "balltree" and manifest["index"]["recall_at_k"] == 1.0
    assert set(manifest["files"]) == {"model.onnx", "preprocessing.json", "embeddings.npy", "items.json"}
    assert manifest["format"] == 2
    assert manifest["created_at"]
    emb = np.load(folder / "embeddings.npy", allow_pickle=False)
    assert emb.shape[0] == 40 and np.allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
    # `sha256sum -c` agrees with our own check
    assert subprocess.run(["sha256sum", "-c", "--quiet", SUMS], cwd=folder).returncode == 0
    assert current_version(bundles(project)) == result.version
    assert result.rollout["smoke"]["image_queries"] == 3
    summary = json.loads(project.path("reports/deploy/summary.json").read_text())
    assert summary["version"] == result.version


def test_each_item_finds_itself_through_the_served_model(project: Params) -> None:
    result = deploy_with(project)
    state = load_state(Path(result.bundle))
    from fashionrec.data.images import open_image
    for row in range(0, 40, 7):
        vector = state.embed([open_image(state.image_source(row))])[0]
        assert state.search(vector, 1)[0].row == row


@pytest.mark.parametrize("damage", ["flip_byte", "delete_file", "extra_file"])
def test_a_corrupted_bundle_is_refused_at_load(project: Params, damage: str) -> None:
    folder = Path(deploy_with(project, activate=False).bundle)
    target = folder / "embeddings.npy"
    target.chmod(0o644)
    if damage == "flip_byte":
        data = bytearray(target.read_bytes())
        data[-3] ^= 0xFF
        target.write_bytes(bytes(data))
        words = "checksum mismatch"
    elif damage == "delete_file":
        target.unlink()
        words = "missing file"
    else:
        (folder / "notes.txt").write_text("hello")
        words = "unexpected file"
    with pytest.raises(BundleError, match=words):
        load_bundle(folder)
    with pytest.raises(BundleError, match=words):
        go_live(config(project), folder.name, smoke=True)
    assert current_version(bundles(project)) is None


def test_rollout_switches_and_rollback_returns(project: Params, assets) -> None:
    first = deploy_with(project)
    second = deploy_with(project, model=str(assets.model_b))
    assert second.rollout["previous"] == first.version
    assert current_version(bundles(project)) == second.version
    assert load_bundle(Path(second.bundle)).model_version != load_bundle(Path(first.bundle)).model_version
    back = roll_back_deploy(config(project), by="test", reason="r")
    assert (back.version, back.previous, back.embedded) == (first.version, second.version, 0)
    assert current_version(bundles(project)) == first.version
    with pytest.raises(BundleError, match="no previous bundle"):
        roll_back_deploy(config(project), by="test", reason="r")
    assert current_version(bundles(project)) == first.version
    log = read_activations(bundles(project))["log"]
    assert [e["action"] for e in log] == ["activate", "activate", "restore"]


def test_rollback_deploy_cli(project: Params, assets) -> None:
    first = deploy_with(project)
    deploy_with(project, model=str(assets.model_b))
    cli = Path(sys.executable).with_name("fashionrec")
    out = subprocess.run([str(cli), "rollback-deploy", "-p", str(project.root / "params.yaml")],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["version"] == first.version
    assert os.readlink(bundles(project) / "current") == first.version
    again = subprocess.run([str(cli), "rollback-deploy", "-p", str(project.root / "params.yaml")],
                           capture_output=True, text=True, timeout=120)
    assert again.returncode == 1
    assert again.stderr.startswith("error: ") and "no previous bundle" in again.stderr


def test_old_bundles_are_pruned_but_current_and_previous_kept(tmp_path: Path, assets) -> None:
    params = write_params(tmp_path, assets.model_a, assets.catalog, index__keep=2)
    versions = [deploy_with(params, rebuild=True).version for _ in range(4)]
    assert list_versions(bundles(params)) == versions[-2:]
    assert roll_back_deploy(config(params), by="t", reason="r").version == versions[-2]


def test_smoke_test_refuses_a_bundle_whose_model_does_not_match_its_embeddings(project: Params,
                                                                              assets) -> None:
    good = Path(deploy_with(project, activate=False).bundle)
    bad = bundles(project) / "v9999-20260101T000000Z"
    shutil.copytree(good, bad)
    for p in bad.iterdir():
        p.chmod(0o644)
    shutil.copyfile(assets.model_b, bad / "model.onnx")    # the other model, checksums made to match
    from fashionrec.core.files import sha256_file
    manifest = json.loads((bad / MANIFEST).read_text())
    manifest["version"] = bad.name
    (bad / MANIFEST).write_text(json.dumps(manifest))
    (bad / SUMS).write_text("".join(f"{sha256_file(p)}  {p.name}\n" for p in sorted(bad.iterdir())
                                    if p.name != SUMS))
    with pytest.raises(SmokeTestFailed, match="model and embeddings disagree"):
        go_live(config(project), bad.name, smoke=True)
    assert current_version(bundles(project)) is None


def test_add_items_embeds_only_the_new_items(project: Params, assets, tmp_path: Path) -> None:
    first = deploy_with(project)
    old_images = Path(assets.catalog).parent / "images"
    hidden = tmp_path / "hidden_images"
    shutil.copytree(old_images, hidden)
    shutil.rmtree(old_images)   # old items cannot be re-embedded: any attempt would fail
    try:
        result = add_items(config(project).with_(activate=False), assets.extra)
    finally:
        shutil.copytree(hidden, old_images)
    assert (result.embedded, result.items, result.parent) == (8, 48, first.version)
    go_live(config(project), result.version, smoke=True)   # the smoke test re-embeds old and new items
    old, new = load_bundle(Path(first.bundle)), load_bundle(Path(result.bundle))
    assert np.array_equal(new.embeddings[:40], old.embeddings)   # the old vectors, untouched
    assert new.items["item_id"][40:] == [f"extra{i:03d}" for i in range(8)]
    assert new.model_version == old.model_version
    assert current_version(bundles(project)) == result.version
    # the new rows are what a fresh embedding of those images gives
    state = load_state(Path(result.bundle))
    from fashionrec.data.images import open_image
    fresh = state.embed([open_image(state.image_source(45))])[0]
    assert float(fresh @ new.embeddings[45]) > 0.999
    # and item images of both generations are served from inside the (widened) inventory root
    assert state.image_source(0).is_file() and state.image_source(45).is_file()


def test_add_items_refuses_ids_already_in_the_bundle(project: Params, assets) -> None:
    deploy_with(project)
    with pytest.raises(DataError, match="already in bundle"):
        add_items(config(project), assets.catalog)


def test_unreadable_inventory_images_are_skipped_and_listed(tmp_path: Path, assets) -> None:
    catalog = make_catalog(tmp_path / "inv", 10, seed=3)
    (tmp_path / "inv/images/item004.jpg").write_bytes(b"broken")
    (tmp_path / "inv/images/item006.jpg").unlink()
    params = write_params(tmp_path, assets.model_a, catalog)
    result = deploy_with(params)
    assert result.items == 8
    assert {s["item_id"] for s in result.skipped} == {"item004", "item006"}
    assert any("cannot decode" in s["reason"] for s in result.skipped)


def test_catalog_errors_name_the_row(tmp_path: Path) -> None:
    bad = tmp_path / "c.csv"
    bad.write_text("item_id,image\na,x.jpg\na,y.jpg\n")
    with pytest.raises(DataError, match=r"duplicate item_id \['a'\] on rows \[2, 3\]"):
        read_catalog(bad)
    bad.write_text("id,picture\n1,x.jpg\n")
    with pytest.raises(DataError, match="lacks column"):
        read_catalog(bad)


def test_hnsw_index_behind_the_same_interface(tmp_path: Path, assets) -> None:
    params = write_params(tmp_path, assets.model_a, assets.catalog, index__kind="hnsw")
    result = deploy_with(params)
    assert result.index["kind"] == "hnsw" and result.index["recall_at_k"] >= 0.9
    assert (Path(result.bundle) / "index.hnsw").is_file()
    state = load_state(Path(result.bundle))
    assert state.index.kind == "hnsw"
    grown = add_items(config(params), assets.extra)          # the graph is extended, not rebuilt
    assert grown.index["kind"] == "hnsw" and grown.embedded == 8
    assert load_state(Path(grown.bundle)).index.size == 48


def test_auto_picks_exact_for_small_and_hnsw_for_large(tmp_path: Path, assets) -> None:
    params = write_params(tmp_path, assets.model_a, assets.catalog, index__kind="auto",
                          index__auto_exact_max=20)
    assert deploy_with(params).index["kind"] == "hnsw"
    params = write_params(tmp_path, assets.model_a, assets.catalog, index__kind="auto",
                          index__auto_exact_max=1000)
    assert deploy_with(params).index["kind"] == "brute"


def test_hnsw_recall_against_exact_on_random_vectors() -> None:
    rng = np.random.default_rng(0)
    data = rng.normal(size=(3000, 32)).astype(np.float32)
    data /= np.linalg.norm(data, axis=1, keepdims=True)
    queries = data[:100] + 0.05 * rng.normal(size=(100, 32)).astype(np.float32)
    good = HnswIndex(data, ef_search=64)
    poor = HnswIndex(data, M=2, ef_construction=4, ef_search=1)
    exact = BruteIndex(data)
    assert recall_at_k(good, exact, queries, 10) >= 0.95
    assert recall_at_k(poor, exact, queries, 10) < recall_at_k(good, exact, queries, 10)
    d_good, i_good = good.query(queries[:5], 5)
    d_exact, i_exact = exact.query(queries[:5], 5)
    assert np.allclose(np.sort(d_good, axis=1), d_good)
    assert np.allclose(d_good[:, 0], d_exact[:, 0], atol=1e-4)


def test_hnsw_build_threads_parallel_and_reproducible(tmp_path: Path) -> None:
    """A parallel build finds what a single-threaded one finds; one thread gives the same graph twice;
    a bad thread count names the parameter."""
    rng = np.random.default_rng(1)
    data = rng.normal(size=(2000, 16)).astype(np.float32)
    data /= np.linalg.norm(data, axis=1, keepdims=True)
    exact = BruteIndex(data)
    parallel = HnswIndex(data, build_threads=0)
    assert parallel.build_threads >= 1
    assert recall_at_k(parallel, exact, data[:50], 10) >= 0.95
    one, again = HnswIndex(data, build_threads=1), HnswIndex(data, build_threads=1)
    assert one.save(tmp_path / "a.hnsw").read_bytes() == again.save(tmp_path / "b.hnsw").read_bytes()
    for bad in (-1, 1.5, True):
        with pytest.raises(DataError, match="build_threads"):
            HnswIndex(data, build_threads=bad)


def test_ef_search_is_raised_until_the_target_recall() -> None:
    rng = np.random.default_rng(2)
    data = rng.normal(size=(3000, 32)).astype(np.float32)
    data /= np.linalg.norm(data, axis=1, keepdims=True)
    queries = data[:100] + 0.05 * rng.normal(size=(100, 32)).astype(np.float32)
    exact = BruteIndex(data)
    index = HnswIndex(data, M=4, ef_construction=16, ef_search=1)
    start = recall_at_k(index, exact, queries, 10)
    # (Faiss at M 4, ef_construction 16 on this data: recall 0.39 at ef 10, 0.84 at 128, 0.97 at 512)
    ef, recall = tune_ef_search(index, exact, queries, 10, target=0.95, max_ef=512)
    assert start < 0.95 <= recall and ef > 1 and index.ef_search == ef
    assert recall == pytest.approx(recall_at_k(index, exact, queries, 10))
    capped = HnswIndex(data, M=4, ef_construction=16, ef_search=1)
    assert tune_ef_search(capped, exact, queries, 10, target=1.01, max_ef=8)[0] == 8   # unreachable: the cap


def test_bundle_records_the_tuned_ef_search(tmp_path: Path, assets) -> None:
    params = write_params(tmp_path, assets.model_a, assets.catalog, index__kind="hnsw",
                          index__hnsw={"M": 4, "ef_construction": 16, "ef_search": 1, "seed": 42},
                          index__target_recall=1.01, index__max_ef_search=24)   # unreachable: the cap
    result = deploy_with(params)
    tuned = result.index["ef_search"]
    assert tuned == {"configured": 1, "tuned": 24, "target_recall": 1.01}
    assert result.index["params"]["ef_search"] == 24
    assert load_state(Path(result.bundle)).index.ef_search == tuned["tuned"]   # servers search as measured


def test_temporary_files_are_all_abandoned_under_the_deploy_lock(tmp_path: Path) -> None:
    """PIDs say nothing across pods sharing the folder: whoever holds the deploy lock is the only writer,
    so every temporary name is abandoned, whether its PID is dead or alive here."""
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    alive = os.getpid()
    for pid in (dead.pid, alive):
        (tmp_path / f".tmp-v0007-20261123T000000Z-{pid}").mkdir()
        (tmp_path / f".tmp-v0007-20261123T000000Z-{pid}" / "model.onnx").write_bytes(b"x")
        os.symlink("v0001", tmp_path / f".current-{pid}")
    (tmp_path / ".tmp-unrelated").mkdir()
    removed = remove_abandoned(tmp_path)
    assert removed == sorted([f".current-{dead.pid}", f".tmp-v0007-20261123T000000Z-{dead.pid}",
                              f".current-{alive}", f".tmp-v0007-20261123T000000Z-{alive}"])
    assert sorted(p.name for p in tmp_path.iterdir()) == [".tmp-unrelated"]


def test_catalog_from_the_validated_dataset(tiny_validated, assets, tmp_path: Path) -> None:
    """The default inventory is every validated catalog photo, kids' included; the filters work on it."""
    from fastapi.testclient import TestClient

    from fashionrec.serve.app import ServeConfig, create_app

    params = write_params(tmp_path, assets.model_a, None, serve__watch_interval_s=0,
                          index__manifest=str(tiny_validated.catalog_validated / "manifest.parquet"))
    result = deploy_with(params)
    manifest = pd.read_parquet(tiny_validated.catalog_validated / "manifest.parquet")
    assert result.items == len(manifest) and result.skipped == []
    items = load_bundle(Path(result.bundle)).items
    assert set(items["item_id"]) == set(manifest["id"].astype(str))
    assert sum(items["kids"]) == int(manifest["kids"].sum()) >= 8
    rows = read_manifest(tiny_validated.catalog_validated)
    photo = read_image_bytes(rows["abspath"].iloc[0])   # the photos live in tar shards
    with TestClient(create_app(ServeConfig.from_params(params))) as client:
        assert client.get("/info").json()["categories"] == sorted(set(manifest["category"]))
        # the image route serves each item's photo, copied out of its shard beside the bundles, unchanged
        for item_id, sha in zip(rows["id"].iloc[:3], rows["sha256"].iloc[:3], strict=True):
            r = client.get(f"/items/{item_id}/image")
            assert r.status_code == 200 and hashlib.sha256(r.content).hexdigest() == sha
        kids = client.post("/recommend", files={"image": ("q.jpg", photo, "image/jpeg")},
                           data={"kids": "true", "k": "5"}).json()["items"]
        adults = client.post("/recommend", files={"image": ("q.jpg", photo, "image/jpeg")},
                             data={"kids": "false", "k": "5", "category": "pants"}).json()["items"]
    assert len(kids) == 5 and all(item["kids"] and "kids" in item["attributes"] for item in kids)
    assert len(adults) == 5 and all(not i["kids"] and i["category"] == "pants" for i in adults)


def test_index_pulls_the_champion_from_the_registry(mlflow_server: str, tmp_path: Path, assets) -> None:
    """`models:/fashionrec@champion` on a real MLflow server: the alias is resolved to a version and the
    bundle records it; a new champion gives a new model version in the next bundle."""
    import mlflow
    from mlflow import MlflowClient

    from fashionrec.registry.steps import log_onnx

    mlflow.set_tracking_uri(mlflow_server)
    name = f"fashionrec-deploy-{tmp_path.name}"
    client = MlflowClient()
    versions = []
    for onnx_path in (assets.model_a, assets.model_b):
        spec_path = Path(onnx_path).parent / "preprocessing.json"
        with mlflow.start_run():
            info = log_onnx(Path(onnx_path), json.loads(spec_path.read_text()), spec_path, name, {})
        versions.append(str(info.registered_model_version))
    params = write_params(tmp_path, Path("unused.onnx"), assets.catalog,
                          index__model=f"models:/{name}@champion")
    with pytest.raises(FashionrecError, match="promote one"):
        deploy_with(params)                       # registered, but nothing promoted yet
    client.set_registered_model_alias(name, "champion", versions[0])
    first = deploy_with(params)
    assert first.model_version == f"{name}/{versions[0]}"
    assert load_bundle(Path(first.bundle)).manifest["model"]["uri"] == f"models:/{name}/{versions[0]}"
    client.set_registered_model_alias(name, "champion", versions[1])
    second = deploy_with(params)
    assert second.model_version == f"{name}/{versions[1]}"
    a = load_bundle(Path(first.bundle)).embeddings
    b = load_bundle(Path(second.bundle)).embeddings
    assert not np.allclose(a, b)


def test_a_bundled_model_goes_back_live_from_its_kept_bundle(project: Params, assets) -> None:
    """Reconcile: the same model, inventory and settings again reuse the kept bundle (no embedding)."""
    first = deploy_with(project)
    second = deploy_with(project, model=str(assets.model_b))
    assert (first.action, second.action) == ("built", "built")
    again = deploy_with(project)                               # model A again
    assert (again.action, again.version, again.embedded) == ("restored", first.version, 0)
    assert current_version(bundles(project)) == first.version
    assert deploy_with(project).action == "unchanged"
    changed = write_params(project.root, assets.model_a, assets.catalog, index__kind="brute")
    assert deploy_with(changed).action == "built"              # other index settings: a new bundle


def test_history_json_empty_or_list_is_rebuilt_from_manifests(project: Params, assets) -> None:
    first = deploy_with(project)
    second = deploy_with(project, model=str(assets.model_b))
    path = bundles(project) / HISTORY
    for broken in ("[]", "", "{}"):
        path.write_text(broken)
        assert read_activations(bundles(project))["stack"] == [first.version, second.version]
    path.write_text("[]")
    back = roll_back_deploy(config(project), by="test", reason="empty history")
    assert back.version == first.version and current_version(bundles(project)) == first.version
    stored = json.loads(path.read_text())
    assert stored["stack"] == [first.version] and stored["log"][0]["action"] == "rebuilt"
    assert not list(bundles(project).glob(f".{HISTORY}.*")), "temporary history file left behind"


@pytest.mark.parametrize(("body", "field"), [('{"stack": "v0001", "log": []}', "'stack'"),
                                             ('{"stack": [], "log": [1]}', "'log'"),
                                             ('"text"', "expected an object"), ("{oops", "unreadable")])
def test_history_json_of_the_wrong_shape_names_the_field(project: Params, body: str, field: str) -> None:
    deploy_with(project)
    (bundles(project) / HISTORY).write_text(body)
    with pytest.raises(BundleError, match=field) as err:
        read_activations(bundles(project))
    assert str(bundles(project) / HISTORY) in str(err.value)
    with pytest.raises(BundleError, match="'stack'"):
        write_activations(bundles(project), {"stack": [1], "log": []})


def test_rollback_deploy_takes_the_deploy_lock(tmp_path: Path, assets) -> None:
    params = write_params(tmp_path, assets.model_a, assets.catalog, index__lock_wait_s=0)
    first = deploy_with(params)
    second = deploy_with(params, model=str(assets.model_b))
    with deploy_lock(bundles(params)), pytest.raises(BundleError, match="another deploy is in progress"):
        roll_back_deploy(config(params), by="test", reason="locked")
    assert current_version(bundles(params)) == second.version
    assert roll_back_deploy(config(params), by="test", reason="free").version == first.version


def test_index_is_a_deprecated_alias_of_deploy(project: Params) -> None:
    cli = Path(sys.executable).with_name("fashionrec")
    out = subprocess.run([str(cli), "index", "-p", str(project.root / "params.yaml")], capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert "`fashionrec index` is now `fashionrec deploy`" in out.stderr
    result = json.loads(out.stdout)
    assert result["action"] == "built" and current_version(bundles(project)) == result["version"]
