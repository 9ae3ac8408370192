"""Real `fashionrec serve` replicas with index kind milvus against a real `milvus-lite server`: switches and
a rollback under a request stream, a restart of everything, and the engine's faults (down, collection
released or dropped) answered 503 with Retry-After and a reason, never a 500, and recovered from."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest

from fashionrec.data.images import open_image
from fashionrec.deploy.reconcile import roll_back_deploy
from fashionrec.index.milvus import MilvusSettings, MilvusStore
from fashionrec.serve.state import load_state
from tests.milvus.test_deploy import milvus_params
from tests.serving.utils import TOKEN, config, deploy_with, start_server, stop

STREAM_SECONDS_MAX = 120
ANSWER_BOUND_S = 60   # generous: an engine call is bounded by timeout_s (5 s here)


def expected(bundle: Path, image: Path, k: int = 5) -> tuple[str, list[str]]:
    """(model version, ids) a bundle answers for one image, computed outside the servers."""
    state = load_state(bundle)
    hits = state.search(state.embed([open_image(image)])[0], k)
    return state.model_version, [h.fields["item_id"] for h in hits]


def collection(bundle: str) -> str:
    return json.loads((Path(bundle) / "manifest.json").read_text())["index"]["collection"]


def post(http: httpx.Client, payload: bytes, **data: str) -> httpx.Response:
    return http.post("/recommend", files={"image": ("q.jpg", payload, "image/jpeg")}, data={"k": "5", **data})


def test_three_replicas_two_switches_and_a_rollback_never_fail_or_mix(
        tmp_path: Path, assets, lite, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FASHIONREC_ADMIN_TOKEN", TOKEN)
    params = milvus_params(tmp_path, assets.model_a, assets.catalog, lite.uri, "t_stream")
    first = deploy_with(params)
    servers = [start_server(params, tmp_path / f"server{i}.log") for i in range(3)]
    urls = [url for _, url in servers]
    params = milvus_params(tmp_path, assets.model_a, assets.catalog, lite.uri, "t_stream",
                           {"index__notify": urls})
    query = assets.catalog.parent / "images" / "item005.jpg"
    payload = query.read_bytes()
    seen: list[tuple[int, str | None, str | None, list[str]]] = []
    failures: list[str] = []
    stop_flag = threading.Event()

    def client(url: str) -> None:
        deadline = time.monotonic() + STREAM_SECONDS_MAX
        with httpx.Client(base_url=url, timeout=30) as http:
            while not stop_flag.is_set() and time.monotonic() < deadline:
                try:
                    r = post(http, payload)
                    body = r.json()
                    seen.append((r.status_code, body.get("model_version"), body.get("index_version"),
                                 [i["item_id"] for i in body.get("items", [])]))
                except Exception as exc:  # a refused or dropped connection is a failed request
                    failures.append(repr(exc))

    def wait_for(version: str, timeout: float = 60) -> None:
        """Every replica answers from `version` (told by the deploy's notify; each also watches)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if all(httpx.get(f"{u}/healthz", timeout=10).json()["index_version"] == version for u in urls):
                return
            time.sleep(0.1)
        raise AssertionError(f"replicas never all served {version}")

    threads = [threading.Thread(target=client, args=(u,)) for u in urls]
    try:
        for t in threads:
            t.start()
        wait_for(first.version)
        second = deploy_with(params, model=str(assets.model_b))           # switch 1: another model
        assert all(n["status"] == 200 for n in second.rollout["notified"]), second.rollout["notified"]
        wait_for(second.version)
        third = deploy_with(params, rebuild=True)                          # switch 2: model A again, rebuilt
        wait_for(third.version)
        back = roll_back_deploy(config(params), by="test", reason="rollback under traffic")
        assert back.version == second.version
        wait_for(second.version)
        count, deadline = len(seen), time.monotonic() + 60
        while len(seen) < count + 6 and all(t.is_alive() for t in threads):
            assert time.monotonic() < deadline, "no answers after the rollback"
            time.sleep(0.05)   # a few answers after the rollback
    finally:
        stop_flag.set()
        for t in threads:
            t.join(timeout=60)
        for proc, _ in servers:
            stop(proc)

    assert not failures, failures[:5]
    assert [s[:3] for s in seen if s[0] != 200] == []
    answers = {b.version: expected(Path(b.bundle), query) for b in (first, second, third)}
    assert answers[first.version][1] != answers[second.version][1]   # the two models answer differently
    for _, model_version, index_version, ids in seen:
        assert (model_version, ids) == answers[index_version], (model_version, index_version, ids)
    versions = {s[2] for s in seen}
    assert versions == {first.version, second.version, third.version}
    fleet = MilvusStore(MilvusSettings(uri=lite.uri, collection_prefix="t_stream"))
    assert fleet.alias_target("t_stream_live") == collection(second.bundle)   # followed the rollback
    fleet.close()


def test_restart_of_everything_serves_the_same_collection(tmp_path: Path, assets, lite) -> None:
    params = milvus_params(tmp_path, assets.model_a, assets.catalog, lite.uri, "t_restart")
    first = deploy_with(params)
    proc, url = start_server(params, tmp_path / "server.log")
    payload = (assets.catalog.parent / "images" / "item007.jpg").read_bytes()
    try:
        before = post(httpx.Client(base_url=url, timeout=30), payload).json()
    finally:
        stop(proc)
    lite.restart()   # the collection's load state is not kept: the replica loads it again at start
    proc, url = start_server(params, tmp_path / "server2.log")
    try:
        with httpx.Client(base_url=url, timeout=30) as http:
            after = post(http, payload).json()
            health = http.get("/healthz").json()
    finally:
        stop(proc)
    assert after == before and after["index_version"] == first.version
    assert after["items"][0]["item_id"] == "item007"
    assert health["index"]["collection"] == collection(first.bundle) and health["index"]["last_error"] is None


def test_engine_faults_are_503_with_a_reason_and_recover(tmp_path: Path, assets, lite) -> None:
    params = milvus_params(tmp_path, assets.model_a, assets.catalog, lite.uri, "t_faults", timeout_s=5.0)
    first = deploy_with(params)
    name = collection(first.bundle)
    proc, url = start_server(params, tmp_path / "server.log")
    payload = (assets.catalog.parent / "images" / "item002.jpg").read_bytes()
    store = MilvusStore(MilvusSettings(uri=lite.uri))
    try:
        with httpx.Client(base_url=url, timeout=ANSWER_BOUND_S) as http:
            ok = post(http, payload, category="shoes")
            assert ok.status_code == 200 and {i["category"] for i in ok.json()["items"]} == {"shoes"}

            # Milvus down: 503 + Retry-After naming the URI, /healthz says why; back up: answers again.
            store.close()
            lite.stop()
            down = post(http, payload)
            assert down.status_code == 503 and down.headers.get("Retry-After"), down.text
            assert down.json()["error"] == "index_unavailable" and lite.uri in down.json()["message"]
            health = http.get("/healthz").json()
            assert health["status"] == "ok" and lite.uri in health["index"]["last_error"]
            lite.start()
            again = post(http, payload)
            assert again.status_code == 200, again.text
            assert http.get("/healthz").json()["index"]["last_error"] is None

            # Released under the replica: it loads its collection again and answers.
            store = MilvusStore(MilvusSettings(uri=lite.uri))
            store.call("release", store.client.release_collection, name)
            assert post(http, payload).status_code == 200
            assert store.load_state(name) == "loaded"

            # Dropped under the replica: 503 with the collection named; recreated: answers again.
            state = load_state(Path(first.bundle))
            stored = np.asarray(state.stored_embeddings())
            props = store.properties(name)
            by_row = state.index.items(list(range(state.size)))
            records = [by_row[i] for i in range(state.size)]
            del state
            store.call("drop", store.client.drop_collection, name)
            gone = post(http, payload)
            assert gone.status_code == 503 and gone.headers.get("Retry-After"), gone.text
            assert name in gone.json()["message"]
            store.create(name, stored, records, props)
            back = post(http, payload)
            assert back.status_code == 200 and back.json()["index_version"] == first.version
    finally:
        store.close()
        stop(proc)


def test_a_frozen_engine_is_a_bounded_503_never_a_hang(tmp_path: Path, assets, lite) -> None:
    """The server stopped with SIGSTOP accepts connections and never answers: every call is bounded by
    index.milvus.timeout_s (2 s here), so the request is a 503 well within the client's bound, and the
    replica answers again once the server resumes."""
    import os
    import signal

    params = milvus_params(tmp_path, assets.model_a, assets.catalog, lite.uri, "t_frozen", timeout_s=2.0)
    deploy_with(params)
    proc, url = start_server(params, tmp_path / "server.log")
    payload = (assets.catalog.parent / "images" / "item003.jpg").read_bytes()
    try:
        with httpx.Client(base_url=url, timeout=ANSWER_BOUND_S) as http:
            assert post(http, payload).status_code == 200
            os.kill(lite.proc.pid, signal.SIGSTOP)
            try:
                frozen = post(http, payload)   # httpx raises if no answer within ANSWER_BOUND_S (30x 2 s)
                assert frozen.status_code == 503 and frozen.headers.get("Retry-After"), frozen.text
                assert lite.uri in frozen.json()["message"]
                assert http.get("/healthz").json()["index"]["last_error"]
            finally:
                os.kill(lite.proc.pid, signal.SIGCONT)
            again = post(http, payload)
            assert again.status_code == 200, again.text
    finally:
        stop(proc)


def test_a_token_the_server_stops_accepting_is_a_503_saying_so_and_recovers(
        tmp_path: Path, assets, guarded, monkeypatch: pytest.MonkeyPatch) -> None:
    """The Secret rotated on the server before the replicas: every call is refused (UNAUTHENTICATED), the
    replica answers 503 with Retry-After and /healthz names the URI and the token's variable, never the
    token; once the server accepts its token again, it answers."""
    monkeypatch.setenv("FASHIONREC_MILVUS_TOKEN", guarded.token)
    params = milvus_params(tmp_path, assets.model_a, assets.catalog, guarded.uri, "t_rotated", timeout_s=5.0)
    deploy_with(params)
    proc, url = start_server(params, tmp_path / "server.log")
    payload = (assets.catalog.parent / "images" / "item004.jpg").read_bytes()
    accepted = guarded.token
    try:
        with httpx.Client(base_url=url, timeout=ANSWER_BOUND_S) as http:
            assert post(http, payload).status_code == 200
            guarded.token = "root:rotated-on-the-server"
            refused = post(http, payload)
            assert refused.status_code == 503 and refused.headers.get("Retry-After"), refused.text
            body = refused.json()
            assert body["error"] == "index_unavailable" and guarded.uri in body["message"]
            assert "authentication failed" in body["message"] and "FASHIONREC_MILVUS_TOKEN" in body["message"]
            assert accepted not in refused.text and "right-token" not in refused.text
            health = http.get("/healthz").json()
            assert "authentication failed" in health["index"]["last_error"]
            assert "right-token" not in json.dumps(health)
            guarded.token = accepted
            again = post(http, payload)
            assert again.status_code == 200 and again.json()["items"][0]["item_id"] == "item004", again.text
    finally:
        stop(proc)
