"""The request path under attack and faults, on real servers under an address-space cap (`prlimit --as`).

- Legal-but-hostile uploads (thin, 16-bit, large under the pixel limit, strip crops): each answered at
  once with 200 or a 4xx naming the problem, none over the per-request time, and the server's RSS back
  under the 400 MB budget within seconds.
- Out of memory is the server's trouble: a 503 `out_of_memory` with Retry-After, counted, never
  `bad_image`; the server answers the next request.
- Admission: a burst of heavy uploads fills the heavy lane and its queue, the rest get 503 + Retry-After at
  once, and ordinary photos sent during the burst are answered within a second or two.
- Slow clients: headers that never finish and bodies that stall are cut off, so they hold no slot.
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
                          serve__body_timeout_s=2, serve__header_timeout_s=2, serve__limit_concurrency=12)
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


def test_out_of_memory_is_a_503_never_a_bad_image(tmp_path: Path, assets) -> None:
    """Limits opened wide on purpose, under a tight address space: the decode's allocation fails."""
    params = write_params(tmp_path, assets["model"], assets["catalog"], serve__watch_interval_s=0,
                          serve__max_image_pixels=2_000_000_000, serve__max_decode_mb=100_000,
                          serve__max_aspect_ratio=100)
    deploy_with(params, rebuild=True)
    proc, url = start_server(params, tmp_path / "server.log", address_space_mib=ADDRESS_SPACE_MIB)
    try:
        with httpx.Client(base_url=url, timeout=120) as client:
            resp = post(client, png(40000, 40000, 0, 1))     # 1-bit, 1.6 G pixels: 1.5 GiB decoded
            assert resp.status_code == 503, resp.text
            assert resp.json()["error"] == "out_of_memory" and resp.headers["retry-after"] == "1"
            assert_clean(resp)
            assert proc.poll() is None
            assert post(client, photo(assets)).status_code == 200
            assert 'fashionrec_errors_total{type="out_of_memory"} 1.0' in client.get("/metrics").text
    finally:
        stop(proc)


def test_a_burst_of_heavy_uploads_is_shed_and_photos_still_pass(server, assets) -> None:
    url, _ = server
    heavy = next(c for c in hostile_images() if c.name == "gray16_png_3000x2000")
    results: list[tuple[int, float, str | None]] = []
    normal: list[float] = []

    def send(case: Hostile) -> None:
        with httpx.Client(base_url=url, timeout=60) as client:
            started = time.perf_counter()
            resp = post(client, case.data)
            results.append((resp.status_code, time.perf_counter() - started, resp.headers.get("retry-after")))
            assert_clean(resp)

    threads = [threading.Thread(target=send, args=(heavy,)) for _ in range(10)]
    for t in threads:
        t.start()
    with httpx.Client(base_url=url, timeout=60) as client:
        for i in range(6):
            started = time.perf_counter()
            assert post(client, photo(assets, i)).status_code == 200
            normal.append(time.perf_counter() - started)
    for t in threads:
        t.join(timeout=120)
    statuses = sorted(s for s, _, _ in results)
    assert set(statuses) <= {200, 503} and statuses.count(503) >= 1 and statuses.count(200) >= 1, results
    refusals = [(elapsed, retry) for s, elapsed, retry in results if s == 503]
    assert all(retry == "1" for _, retry in refusals), refusals
    assert max(elapsed for elapsed, _ in refusals) < 1.5, refusals     # at once, not after queueing
    assert max(normal) < 3.0, normal


def test_slow_headers_and_stalled_bodies_hold_no_slot(server, assets) -> None:
    url, _ = server
    host, port = url.removeprefix("http://").split(":")
    # 12 connections (the concurrency limit) that never finish their headers...
    lorises = []
    for _ in range(12):
        s = socket.create_connection((host, int(port)))
        s.sendall(b"POST /recommend HTTP/1.1\r\nHost: x\r\n")
        lorises.append(s)
    time.sleep(0.3)
    with httpx.Client(base_url=url, timeout=10) as client:
        assert client.get("/healthz").status_code == 503      # uvicorn's limit_concurrency, for now
        time.sleep(2.5)                                         # serve.header_timeout_s: 2
        for s in lorises:
            s.settimeout(1)
            assert s.recv(100) == b""                           # closed by the server
            s.close()
        assert client.get("/healthz").status_code == 200
        # ...and a body that stalls halfway gets a 408 when serve.body_timeout_s (2) runs out
        s = socket.create_connection((host, int(port)))
        s.sendall(b"POST /recommend HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=b\r\n"
                  b"Content-Length: 5000\r\n\r\n--b\r\n")
        started = time.perf_counter()
        s.settimeout(10)
        answer = s.recv(4096)
        elapsed = time.perf_counter() - started
        while b"}" not in answer and (more := s.recv(4096)):   # the JSON body may come in a second packet
            answer += more
        s.close()
        assert answer.startswith(b"HTTP/1.1 408"), answer[:200]
        assert b"body_timeout" in answer and 1.5 < elapsed < 5
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
