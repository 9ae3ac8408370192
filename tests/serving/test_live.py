"""Real uvicorn servers on loopback: a rollout and a rollback while a client streams requests, and the
web page driven by a real browser."""

from __future__ import annotations

import shutil
import threading
import time
from pathlib import Path

import httpx
import pytest
from deploykit import TOKEN, start_server, stop, write_params

from fashionrec.data.images import open_image
from fashionrec.deploy.build import build_index_bundle
from fashionrec.deploy.rollout import rollback
from fashionrec.serve.state import load_state

STREAM_SECONDS_MAX = 90


def expected_ids(bundle: Path, image: Path, k: int = 5) -> list[str]:
    """The answer a bundle gives for one image, computed outside the server."""
    state = load_state(bundle)
    return [state.item_ids[h.row] for h in state.search(state.embed([open_image(image)])[0], k)]


def test_rollout_and_rollback_under_traffic_never_fail_or_mix(tmp_path: Path, assets,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FASHIONREC_ADMIN_TOKEN", TOKEN)
    params = write_params(tmp_path, assets.model_a, assets.catalog)
    first = build_index_bundle(params)
    proc, url = start_server(params, tmp_path / "server.log")
    # Later builds notify this server at once (it would also see the pointer change within 0.5 s).
    params = write_params(tmp_path, assets.model_a, assets.catalog, index__notify=[url])
    query = Path(assets.catalog).parent / "images" / "item005.jpg"
    payload = query.read_bytes()
    seen: list[tuple[int, str, str, list[str]]] = []
    failures: list[str] = []
    stop_flag = threading.Event()

    def client() -> None:
        deadline = time.monotonic() + STREAM_SECONDS_MAX
        with httpx.Client(base_url=url, timeout=30) as http:
            while not stop_flag.is_set() and time.monotonic() < deadline:
                try:
                    r = http.post("/recommend", files={"image": ("q.jpg", payload, "image/jpeg")},
                                  data={"k": "5"})
                    body = r.json()
                    seen.append((r.status_code, body.get("model_version"), body.get("index_version"),
                                 [i["item_id"] for i in body.get("items", [])]))
                except Exception as exc:  # a refused or dropped connection is a failed request
                    failures.append(repr(exc))

    def wait_for(version: str, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if seen and seen[-1][2] == version:
                return
            time.sleep(0.05)
        raise AssertionError(f"server never answered from {version}; last: {seen[-1][:3] if seen else None}")

    threads = [threading.Thread(target=client) for _ in range(2)]
    try:
        for t in threads:
            t.start()
        wait_for(first.version)
        second = build_index_bundle(params, model=str(assets.model_b))     # a different model
        assert second.rollout["notified"][0]["status"] == 200, second.rollout["notified"]
        wait_for(second.version)
        back = rollback(params.path("bundles"), params)
        assert back.version == first.version and back.notified[0]["status"] == 200
        wait_for(first.version)
        time.sleep(0.3)
    finally:
        stop_flag.set()
        for t in threads:
            t.join(timeout=60)
        stop(proc)

    assert not failures, failures[:5]
    assert [s for s in seen if s[0] != 200] == []
    answers = {first.version: (first.model_version, expected_ids(Path(first.bundle), query)),
               second.version: (second.model_version, expected_ids(Path(second.bundle), query))}
    assert first.model_version != second.model_version
    assert answers[first.version][1] != answers[second.version][1]   # the two bundles answer differently
    for _, model_version, index_version, ids in seen:
        assert index_version in answers
        assert (model_version, ids) == answers[index_version], (model_version, index_version, ids)
    versions = [s[2] for s in seen]
    assert versions.count(second.version) > 0 and versions[-1] == first.version
    assert len(seen) > 20


def test_server_refuses_a_corrupt_bundle_and_keeps_serving(tmp_path: Path, assets,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    params = write_params(tmp_path, assets.model_a, assets.catalog)
    first = build_index_bundle(params)
    proc, url = start_server(params, tmp_path / "server.log")
    try:
        bad = build_index_bundle(params, do_activate=False)
        emb = Path(bad.bundle) / "embeddings.npy"
        emb.chmod(0o644)
        emb.write_bytes(emb.read_bytes()[:-8] + b"\x00" * 8)
        link = params.path("bundles") / "current"       # switched by hand, skipping the smoke test
        tmp = link.with_name(".current-test")
        tmp.symlink_to(bad.version)
        tmp.replace(link)
        with httpx.Client(base_url=url, timeout=30) as http:
            r = http.post("/admin/reload", headers={"Authorization": f"Bearer {TOKEN}"})
            assert r.status_code == 409 and "checksum mismatch" in r.json()["message"]
            assert http.post("/admin/reload", headers={"Authorization": "Bearer wrong"}).status_code == 401
            health = http.get("/healthz").json()
            assert health["index_version"] == first.version and "checksum" in health["last_error"]
            r = http.post("/recommend", files={"image": ("q.jpg", open_image_bytes(assets), "image/jpeg")})
            assert r.status_code == 200 and r.json()["index_version"] == first.version
            assert 'fashionrec_reloads_total{outcome="refused"}' in http.get("/metrics").text
    finally:
        stop(proc)


def open_image_bytes(assets) -> bytes:
    return (Path(assets.catalog).parent / "images" / "item001.jpg").read_bytes()


CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"


@pytest.fixture(scope="session")
def browser_type_launch_args(browser_type_launch_args):
    """Debian's chromium (Playwright never downloads a browser here)."""
    return {**browser_type_launch_args, "executable_path": CHROMIUM,
            "args": ["--disable-gpu", "--disable-background-networking", "--disable-component-update",
                     "--disable-sync"]}


@pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="chromium not installed (make browser)")
def test_web_page_upload_shows_five_results(tmp_path: Path, assets, page) -> None:
    from playwright.sync_api import expect

    params = write_params(tmp_path, assets.model_a, assets.catalog)
    build_index_bundle(params)
    proc, url = start_server(params, tmp_path / "server.log")
    try:
        page.goto(url)
        expect(page.locator("#versions")).to_contain_text("model local-")
        expect(page.locator("#category option")).to_have_count(5)     # any + 4 categories
        page.set_input_files("#file", str(Path(assets.catalog).parent / "images" / "item006.jpg"))
        results = page.locator("#results li")
        expect(results).to_have_count(5)
        expect(page.locator("#status")).to_contain_text("5 results")
        expect(results.first.locator(".title")).to_contain_text("item 6")   # the photo's own item first
        page.wait_for_function("[...document.querySelectorAll('#results img')]"
                               ".every(i => i.complete && i.naturalWidth > 0)")
        # crop: drag over the preview, the search reruns on the crop
        box = page.locator("#preview").bounding_box()
        page.mouse.move(box["x"] + 5, box["y"] + 5)
        page.mouse.down()
        page.mouse.move(box["x"] + box["width"] * 0.7, box["y"] + box["height"] * 0.7, steps=5)
        page.mouse.up()
        expect(page.locator("#crop")).to_be_visible()
        expect(page.locator("#status")).to_contain_text("5 results")
        # filters: kids' pants only
        page.select_option("#category", "pants")
        page.wait_for_function("(() => { const m = [...document.querySelectorAll('#results .meta')];"
                               " return m.length === 5"
                               " && m.every(x => x.textContent.includes('pants')); })()")
        page.screenshot(path=str(tmp_path / "page.png"), full_page=True)
    finally:
        stop(proc)
