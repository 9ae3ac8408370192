"""The request path under attack and faults, on real servers under an address-space cap (`prlimit --as`).

- Legal-but-hostile uploads (thin, 16-bit, large under the pixel limit, strip crops, floods, formats outside
  `serve.formats`): each answered at once with 200 or a 4xx naming the problem, none over the per-request
  time, and the server's RSS back under the 400 MB budget within seconds.
- A decode that needs more than its worker's real memory budget is the input's cost: 413 `too_costly`
  (it was a 503 `out_of_memory` when the server decoded in its own process; now the decode worker's
  RLIMIT_DATA stops it, and the server process is untouched); the server answers the next request.
- A burst of heavy uploads: each is served or shed with 503 + Retry-After, and memory stays bounded.
- Slow clients: headers that never finish and bodies that stall are cut off, so they hold no slot, and
  the probes answer 200 meanwhile (uvicorn's `limit_concurrency`, which answered them 503, is gone).
- No response body carries an exception type, a traceback or an absolute path; security headers on every
  response.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.reliability.hostile import Hostile, hostile_images, png
from tests.reliability.utils import ADDRESS_SPACE_MIB, BUDGET_MIB, LEAK
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
    base = tmp_path_factory.mktemp("faults_assets")
    return {"model": export_model(base / "model", seed=4), "catalog": make_catalog(base / "inv", 24, seed=4)}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, assets: dict[str, Path]) -> Iterator[tuple[str, object]]:
    base = tmp_path_factory.mktemp("faults")
    params = write_params(base, assets["model"], assets["catalog"], serve__watch_interval_s=0,
                          serve__body_timeout_s=2, serve__header_timeout_s=2)
    deploy_with(params, rebuild=True)
    proc, url = start_server(params, base / "server.log", address_space_mib=ADDRESS_SPACE_MIB)
    try:
        yield url, proc
    finally:
        stop(proc)


def photo(assets: dict[str, Path], i: int = 5) -> bytes:
    return (assets["catalog"].parent / "images" / f"item{i:03d}.jpg").read_bytes()


def post(client: httpx.Client, data: bytes, crop: str | None = None) -> httpx.Response:
    return client.post("/recommend", files={"image": ("q", data, "application/octet-stream")},
                       data={"k": "3", **({"crop": crop} if crop else {})})


def assert_clean(resp: httpx.Response) -> None:
    """Security headers present; an error body names a kind and leaks no type, traceback or path."""
    assert resp.headers.get("x-content-type-options") == "nosniff"
    assert "frame-ancestors 'none'" in resp.headers.get("content-security-policy", "")
    if resp.status_code >= 400:
        body = resp.json()
        assert set(body) == {"error", "message"}, body
        assert not LEAK.search(resp.text), resp.text


def wait_rss_under(pid: int, mib: int, seconds: float) -> int:
    deadline = time.monotonic() + seconds
    while True:
        rss = status_of(pid)["VmRSS"]
        if rss <= mib or time.monotonic() > deadline:
            return rss
        time.sleep(0.25)


def test_hostile_uploads_are_answered_at_once_and_memory_comes_back(server, assets) -> None:
    url, proc = server
    timings = {}
    with httpx.Client(base_url=url, timeout=60) as client:
        assert post(client, photo(assets)).status_code == 200
        for case in hostile_images():
            started = time.perf_counter()
            resp = post(client, case.data, case.crop)
            timings[case.name] = elapsed = time.perf_counter() - started
            assert resp.status_code == case.status, (case.name, resp.text)
            if case.kind is not None:
                assert resp.json()["error"] == case.kind, (case.name, resp.text)
                assert len(resp.json()["message"]) > 20
            assert_clean(resp)
            assert elapsed < (1.0 if case.status != 200 else 5.0), (case.name, elapsed)
        assert proc.poll() is None
        memory = status_of(proc.pid)
        settled = wait_rss_under(proc.pid, BUDGET_MIB, 5.0)
        assert settled <= BUDGET_MIB, (settled, memory)
        assert memory["VmHWM"] < 1024, memory       # the pod's limit
        health = client.get("/healthz").json()
        assert health["ready"] and health["last_error"] is None
        assert 'fashionrec_errors_total{type="internal"}' not in client.get("/metrics").text


def test_a_decode_over_the_real_memory_budget_is_413_and_the_server_is_untouched(tmp_path: Path,
                                                                                 assets) -> None:
    """Header limits opened wide on purpose: the decode's allocation fails in its worker (RLIMIT_DATA,
    serve.decode_memory_mb), not in the server; 413 `too_costly` naming the budget, never `bad_image`."""
    params = write_params(tmp_path, assets["model"], assets["catalog"], serve__watch_interval_s=0,
                          serve__max_image_pixels=2_000_000_000, serve__max_decode_mb=100_000,
                          serve__max_aspect_ratio=100)
    deploy_with(params, rebuild=True)
    proc, url = start_server(params, tmp_path / "server.log", address_space_mib=ADDRESS_SPACE_MIB)
    try:
        with httpx.Client(base_url=url, timeout=120) as client:
            resp = post(client, png(40000, 40000, 0, 1))     # 1-bit, 1.6 G pixels: 1.5 GiB decoded
            assert resp.status_code == 413, resp.text
            assert resp.json()["error"] == "too_costly" and "256 MiB" in resp.json()["message"]
            assert_clean(resp)
            assert proc.poll() is None
            assert status_of(proc.pid)["VmHWM"] < BUDGET_MIB       # the server itself never decoded it
            assert post(client, photo(assets)).status_code == 200
            assert 'fashionrec_errors_total{type="too_costly"} 1.0' in client.get("/metrics").text
    finally:
        stop(proc)


def test_a_burst_of_heavy_uploads_is_served_or_shed_with_memory_bounded(server, assets) -> None:
    """Ten heavy uploads at once (the heavy lane is gone: they decode in memory-capped workers): each is
    a 200 or a 503 `overloaded` with Retry-After, the server's own peak stays under the budget, and an
    ordinary photo is answered afterwards. (Admission itself, deterministically: tests/serving/
    test_attacks.py::test_a_full_queue_refuses_work_with_503_while_probes_stay_green.)"""
    url, proc = server
    heavy = next(c for c in hostile_images() if c.name == "gray16_png_3000x2000")
    results: list[tuple[int, str | None, str | None]] = []

    def send(case: Hostile) -> None:
        with httpx.Client(base_url=url, timeout=60) as client:
            resp = post(client, case.data)
            assert_clean(resp)
            kind = resp.json().get("error") if resp.status_code != 200 else None
            results.append((resp.status_code, kind, resp.headers.get("retry-after")))

    threads = [threading.Thread(target=send, args=(heavy,)) for _ in range(10)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert len(results) == 10, results
    assert all(r == (200, None, None) or r == (503, "overloaded", "1") for r in results), results
    assert status_of(proc.pid)["VmHWM"] < BUDGET_MIB
    with httpx.Client(base_url=url, timeout=60) as client:
        assert post(client, photo(assets)).status_code == 200


def test_slow_headers_and_stalled_bodies_hold_no_slot(server, assets) -> None:
    url, _ = server
    host, port = url.removeprefix("http://").split(":")
    # 12 connections that never finish their headers: the probes still answer meanwhile...
    lorises = []
    for _ in range(12):
        s = socket.create_connection((host, int(port)))
        s.sendall(b"POST /recommend HTTP/1.1\r\nHost: x\r\n")
        lorises.append(s)
    with httpx.Client(base_url=url, timeout=10) as client:
        assert client.get("/healthz").status_code == 200
        assert post(client, photo(assets)).status_code == 200
        for s in lorises:                           # ...and serve.header_timeout_s (2) closes them
            s.settimeout(60)
            assert s.recv(100) == b""
            s.close()
        assert client.get("/healthz").status_code == 200
        # ...and a body that stalls halfway gets a 408 when serve.body_timeout_s (2) runs out
        s = socket.create_connection((host, int(port)))
        s.sendall(b"POST /recommend HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=b\r\n"
                  b"Content-Length: 5000\r\n\r\n--b\r\n")
        started = time.perf_counter()
        s.settimeout(60)
        answer = s.recv(4096)
        elapsed = time.perf_counter() - started
        while b"}" not in answer and (more := s.recv(4096)):   # the JSON body may come in a second packet
            answer += more
        s.close()
        assert answer.startswith(b"HTTP/1.1 408"), answer[:200]
        assert b"body_timeout" in answer and 1.5 < elapsed < 30
        assert post(client, photo(assets)).status_code == 200


def test_error_bodies_and_headers_on_every_kind_of_answer(server) -> None:
    url, _ = server
    with httpx.Client(base_url=url, timeout=30) as client:
        answers = [client.get("/"), client.get("/docs"), client.get("/nowhere"), client.get("/recommend"),
                   client.get("/items/nothing"), client.post("/recommend", content=b"x" * 100,
                                                             headers={"Content-Type": "multipart/form-data"}),
                   client.post("/recommend", files={"image": ("q", b"<html>not an image</html>", "x/y")}),
                   client.post("/admin/reload", headers={"Authorization": "Bearer nope"})]
        for resp in answers:
            assert_clean(resp)
        assert answers[0].status_code == 200 and "script-src 'self';" in answers[0].headers[
            "content-security-policy"]
        assert "'sha256-" in answers[1].headers["content-security-policy"]
        assert [a.status_code for a in answers[2:]] == [404, 405, 404, 400, 400, 401]
