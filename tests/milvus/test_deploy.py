"""The deploy step with index kind milvus against a real `milvus-lite server`: one collection per bundle,
smoke-tested by name, the fleet alias moved after activation, old collections dropped with their bundles;
index types the backend cannot build and an unreachable server refused with the live bundle kept."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from fashionrec.bundle.store import current_version
from fashionrec.core.config import Params
from fashionrec.core.errors import DataError, FashionrecError
from fashionrec.data.images import open_image
from fashionrec.deploy.reconcile import roll_back_deploy
from fashionrec.index.milvus import MilvusSettings, MilvusStore
from fashionrec.serve.remote import MilvusServingState
from fashionrec.serve.state import load_state
from tests.serving.utils import config, deploy_with, free_port, write_params

TOKEN_ENV = "FASHIONREC_MILVUS_TOKEN"


def milvus_params(folder: Path, model: Path, catalog: Path, uri: str, prefix: str,
                  overrides: dict[str, Any] | None = None, **milvus: Any) -> Params:
    """params.yaml with index kind milvus on `uri`, collections named `<prefix>_<version>`."""
    section = {"uri": uri, "collection_prefix": prefix, "alias": f"{prefix}_live", "timeout_s": 10.0,
               "build_timeout_s": 120.0,
               "insert_batch": 16, **milvus}
    return write_params(folder, model, catalog, index__kind="milvus", index__milvus=section,
                        **(overrides or {}))


def store(uri: str, prefix: str) -> MilvusStore:
    return MilvusStore(MilvusSettings(uri=uri, collection_prefix=prefix))


def test_build_smoke_activate_then_alias_and_keep(tmp_path: Path, assets, lite,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(TOKEN_ENV, "root:s3cret-in-env")   # milvus-lite takes any token; none is recorded
    params = milvus_params(tmp_path, assets.model_a, assets.catalog, lite.uri, "t_deploy",
                           {"index__keep": 2}, alias="t_deploy_live")
    first = deploy_with(params)
    manifest = json.loads((Path(first.bundle) / "manifest.json").read_text())
    name = manifest["index"]["collection"]
    assert name == f"t_deploy_{first.version.replace('-', '_')}"
    assert manifest["index"]["recall_at_k"] >= 0.9 and first.rollout["smoke"]["items"] == 40
    assert "s3cret" not in (Path(first.bundle) / "manifest.json").read_text()
    assert manifest["index"]["milvus"]["token_env"] == TOKEN_ENV
    s = store(lite.uri, "t_deploy")
    assert s.count(name) == 40
    props = s.properties(name)
    assert props["fashionrec.bundle_version"] == first.version
    assert props["fashionrec.model_sha256"] == manifest["embeddings"]["model_sha256"]
    assert s.alias_target("t_deploy_live") == name
    assert first.rollout["collection"]["collection"] == name

    # The replica's state holds no item table and no embeddings: fields come from the collection.
    state = load_state(Path(first.bundle))
    assert isinstance(state, MilvusServingState) and not hasattr(state, "titles")
    image = assets.catalog.parent / "images" / "item005.jpg"
    hits = state.search(state.embed([open_image(image)])[0], 5)
    assert hits[0].fields["item_id"] == "item005" and hits[0].score > 0.999
    shoes = state.search(state.embed([open_image(image)])[0], 5, category="shoes", kids=True)
    assert shoes and all(h.fields["category"] == "shoes" and h.fields["kids"] for h in shoes)
    catalog_shoes_kids = {f"item{i:03d}" for i in range(40) if i % 4 == 2 and i % 3 == 0}
    assert {h.fields["item_id"] for h in shoes} == catalog_shoes_kids   # exact where the filter keeps few

    second = deploy_with(params, model=str(assets.model_b))
    name2 = json.loads((Path(second.bundle) / "manifest.json").read_text())["index"]["collection"]
    assert s.alias_target("t_deploy_live") == name2 and s.count(name) == 40   # the rollback target stays
    back = roll_back_deploy(config(params), by="test", reason="rollback")
    assert back.version == first.version and s.alias_target("t_deploy_live") == name
    deploy_with(params, model=str(assets.model_b), rebuild=True)
    fourth = deploy_with(params, rebuild=True)   # keep 2: the two oldest bundles go, their collections too
    fourth_name = json.loads((Path(fourth.bundle) / "manifest.json").read_text())["index"]["collection"]
    assert s.alias_target("t_deploy_live") == fourth_name
    bundles = sorted(p.name for p in config(params).bundles.iterdir() if p.name.startswith("v"))
    assert len(bundles) == 2 and fourth.version in bundles
    assert s.collections() == [f"t_deploy_{v.replace('-', '_')}" for v in bundles]
    assert name not in s.collections() and name2 not in s.collections()
    s.close()


def test_index_type_the_backend_cannot_build_is_refused_by_name(tmp_path: Path, assets, lite) -> None:
    params = milvus_params(tmp_path, assets.model_a, assets.catalog, lite.uri, "t_refuse",
                           index_type="IVF_PQ", index_params={"nlist": 4, "m": 4})
    with pytest.raises(DataError, match=r"IVF_PQ.*cannot be built by the 'lite' backend"):
        deploy_with(params)
    assert store(lite.uri, "t_refuse").collections() == []
    assert current_version(config(params).bundles) is None


def test_unreachable_milvus_fails_the_deploy_naming_the_uri_and_keeps_the_live_bundle(
        tmp_path: Path, assets, lite, monkeypatch: pytest.MonkeyPatch) -> None:
    secret = "s3cret-milvus-token-value"
    monkeypatch.setenv(TOKEN_ENV, secret)
    params = milvus_params(tmp_path, assets.model_a, assets.catalog, lite.uri, "t_unreach")
    first = deploy_with(params)
    dead = f"http://127.0.0.1:{free_port()}"   # nothing listens there
    bad = milvus_params(tmp_path, assets.model_b, assets.catalog, dead, "t_unreach")
    with pytest.raises(FashionrecError) as info:
        deploy_with(bad)
    assert dead in str(info.value) and secret not in str(info.value)
    assert current_version(config(params).bundles) == first.version
    assert [p.name for p in config(params).bundles.iterdir() if p.name.startswith("v")] == [first.version]
    state = load_state(Path(first.bundle))   # the live bundle still answers from its collection
    assert state.search(np.asarray(state.stored_embeddings()[3]), 1)[0].fields["item_id"] == "item003"


def test_a_collection_left_by_a_dead_deploy_is_dropped_at_the_next_activation(tmp_path: Path, assets,
                                                                               lite) -> None:
    """A deploy killed after building its collection, before its bundle was written, leaves the collection
    loaded; the next activation drops it (no bundle names it, no alias points at it)."""
    params = milvus_params(tmp_path, assets.model_a, assets.catalog, lite.uri, "t_orphan")
    s = store(lite.uri, "t_orphan")
    orphan = "t_orphan_v0009_20260101T000000Z"
    vectors = np.eye(4, 8, dtype=np.float32)
    s.create(orphan, vectors, [{"item_id": f"x{i}", "category": "hat"} for i in range(4)], {})
    assert s.load_state(orphan) == "loaded"
    first = deploy_with(params)
    assert s.collections() == [collection_name(first.bundle)]
    s.close()


def collection_name(bundle: str) -> str:
    return json.loads((Path(bundle) / "manifest.json").read_text())["index"]["collection"]


def test_a_wrong_token_fails_the_deploy_naming_the_uri_never_the_token_and_keeps_the_live_bundle(
        tmp_path: Path, assets, guarded, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(TOKEN_ENV, guarded.token)
    params = milvus_params(tmp_path, assets.model_a, assets.catalog, guarded.uri, "t_token")
    first = deploy_with(params)
    wrong = "root:wrong-token-value"
    monkeypatch.setenv(TOKEN_ENV, wrong)
    refused_before = guarded.refused
    with pytest.raises(FashionrecError) as info:
        deploy_with(params, model=str(assets.model_b))
    message = str(info.value)
    assert guarded.uri in message and "authentication" in message.lower(), message
    assert wrong not in message and "wrong-token" not in message and TOKEN_ENV in message
    assert guarded.refused > refused_before   # the front really refused it: not some other failure
    assert current_version(config(params).bundles) == first.version
    assert [p.name for p in config(params).bundles.iterdir() if p.name.startswith("v")] == [first.version]
    monkeypatch.setenv(TOKEN_ENV, guarded.token)   # the live bundle still answers from its collection
    state = load_state(Path(first.bundle))
    assert state.search(np.asarray(state.stored_embeddings()[3]), 1)[0].fields["item_id"] == "item003"
    assert store(guarded.uri, "t_token").collections() == [collection_name(first.bundle)]
