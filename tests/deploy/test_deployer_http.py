"""The deployer's HTTP face under abuse (issue 22 item 6), on a real uvicorn server with the deployer's own
settings (`server_config`): bodies bounded before they are read, header and body deadlines, a connection
limit, bounded JSON depth, refusals counted apart from the deploy events, delivery ids cut in logs.

Nothing here waits on a sleep: each check blocks on the server's answer (or its closing the socket), with
bounds far above the configured deadlines."""

from __future__ import annotations

import json
import logging
import re
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from fastapi.testclient import TestClient

from fashionrec.core.errors import WebhookRefused
from fashionrec.deploy.config import DeployConfig, DeployerConfig
from fashionrec.deploy.deployer import (
    ID_CHARS,
    Deployer,
    ReplayGuard,
    create_deployer_app,
    json_depth,
    server_config,
    sign,
    verify_delivery,
)
from tests.conftest import free_port

SECRET_ENV = "FASHIONREC_TEST_DEPLOYER_SECRET"
SECRET = "s3cret"
BOUND_S = 30.0          # generous: every deadline configured below is well under a second


def make_deployer(tmp_path: Path, **limits: Any) -> Deployer:
    """A deployer whose model does not exist: its worker finds nothing to deploy and stays idle."""
    cfg = DeployConfig(bundles=tmp_path / "bundles", model=str(tmp_path / "absent.onnx"))
    dcfg = replace(DeployerConfig(webhook_secret_env=SECRET_ENV, poll_interval_s=3600, log_level="warning"),
                   **limits)
    return Deployer(cfg, dcfg)


@pytest.fixture
def secret(monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv(SECRET_ENV, SECRET)
    return SECRET


class Running:
    def __init__(self, deployer: Deployer) -> None:
        self.deployer = deployer
        self.port = free_port()
        self.server = uvicorn.Server(server_config(deployer, port=self.port))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> Running:
        self.thread.start()
        deadline = time.monotonic() + BOUND_S
        while not self.server.started:
            assert self.thread.is_alive() and time.monotonic() < deadline, "deployer did not start"
            time.sleep(0.01)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(BOUND_S)

    def connect(self) -> socket.socket:
        sock = socket.create_connection(("127.0.0.1", self.port), timeout=BOUND_S)
        return sock

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"


@pytest.fixture
def running(tmp_path: Path, secret: str, request: pytest.FixtureRequest) -> Iterator[Running]:
    limits = getattr(request, "param", {})
    with Running(make_deployer(tmp_path, **limits)) as r:
        yield r


def read_response(sock: socket.socket) -> tuple[int | None, bytes]:
    """(status, raw) of the first response on sock; (None, b"") when the server closed it unanswered."""
    raw = b""
    while b"\r\n\r\n" not in raw:
        chunk = sock.recv(65536)
        if not chunk:
            break
        raw += chunk
    if not raw:
        return None, b""
    head, _, body = raw.partition(b"\r\n\r\n")
    length = re.search(rb"(?i)content-length: (\d+)", head)
    while length and len(body) < int(length.group(1)):
        chunk = sock.recv(65536)
        if not chunk:
            break
        body += chunk
    return int(raw.split(b" ", 2)[1]), head + b"\r\n\r\n" + body


def signed(body: bytes, delivery: str = "d-1") -> dict[str, str]:
    stamp = str(int(time.time()))
    return {"X-MLflow-Delivery-Id": delivery, "X-MLflow-Timestamp": stamp,
            "X-MLflow-Signature": sign(SECRET, delivery, stamp, body), "Content-Type": "application/json"}


def test_a_body_over_the_limit_is_refused_from_its_content_length_before_it_is_read(running) -> None:
    with running.connect() as sock:
        sock.sendall(b"POST /webhooks/mlflow HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Content-Length: 400000000\r\n\r\n")      # 400 MB announced, not one byte sent
        status, raw = read_response(sock)
    assert status == 413 and b"too_large" in raw
    status_body = httpx.get(running.url("/status"), timeout=BOUND_S).json()
    assert status_body["webhooks_refused"]["counts"] == {"too_large": 1}
    assert all(e["event"] != "webhook-refused" for e in status_body["events"])
    metrics = httpx.get(running.url("/metrics"), timeout=BOUND_S).text
    assert 'fashionrec_deployer_webhooks_total{outcome="too_large"} 1.0' in metrics


def test_a_chunked_body_is_refused_once_it_grows_past_the_limit(running) -> None:
    limit = running.deployer.dcfg.max_body_bytes
    chunk = b"[" * 16384
    with running.connect() as sock:
        sock.sendall(b"POST /webhooks/mlflow HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n")
        for _ in range(limit // len(chunk) + 1):                 # past the limit, the body never ends
            sock.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))
        status, raw = read_response(sock)
    assert status == 413 and b"max_body_bytes" in raw


@pytest.mark.parametrize("running", [{"header_timeout_s": 0.3}], indirect=True)
def test_headers_that_never_end_get_the_connection_closed(running) -> None:
    with running.connect() as sock:
        sock.sendall(b"POST /webhooks/mlflow HTTP/1.1\r\nHost: x\r\n")   # and nothing more
        started = time.monotonic()
        status, _ = read_response(sock)
    assert status is None and time.monotonic() - started < BOUND_S


@pytest.mark.parametrize("running", [{"body_timeout_s": 0.3}], indirect=True)
def test_a_body_that_never_arrives_is_answered_408(running) -> None:
    with running.connect() as sock:
        sock.sendall(b"POST /webhooks/mlflow HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{\"a\":")
        status, raw = read_response(sock)
    assert status == 408 and b"body_timeout" in raw
    assert running.deployer.status.refusals == {"body_timeout": 1}


@pytest.mark.parametrize("running", [{"max_connections": 1}], indirect=True)
def test_connections_beyond_the_limit_are_refused_and_healthz_answers_again_after(running) -> None:
    request = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"
    first = running.connect()
    first.sendall(request)
    assert read_response(first)[0] == 200                      # held open (keep-alive): the one allowed
    with running.connect() as second:
        second.sendall(request)
        status, raw = read_response(second)
        assert status == 503 and b"retry-after" in raw.lower() and b'"error"' in raw
    first.close()
    deadline = time.monotonic() + BOUND_S                       # the server notices the close
    while httpx.get(running.url("/healthz"), timeout=BOUND_S).status_code != 200:
        assert time.monotonic() < deadline, "the connection limit did not free up"


@pytest.mark.parametrize("running", [{"max_body_bytes": 1_000_000}], indirect=True)
def test_a_signed_body_nested_100k_deep_is_a_400_not_a_500(running) -> None:
    body = b"[" * 100_000 + b"]" * 100_000
    r = httpx.post(running.url("/webhooks/mlflow"), content=body, headers=signed(body), timeout=BOUND_S)
    assert r.status_code == 400, r.text
    assert r.json()["error"] == "malformed" and "max_json_depth" in r.json()["message"]
    assert httpx.get(running.url("/healthz"), timeout=BOUND_S).status_code == 200


def test_json_depth_skips_strings_and_parsing_stays_bounded() -> None:
    assert json_depth(b'{"data": {"name": "[[[{{\\"[["}}') == 2
    assert json_depth(b"[" * 100_000) == 100_000
    body = b'{"data": ' * 40 + b"1" + b"}" * 40
    with pytest.raises(WebhookRefused) as err:
        verify_delivery({k.lower(): v for k, v in signed(body).items()}, body, SECRET, 300, ReplayGuard(10),
                        max_depth=32)
    assert err.value.status == 400 and "40 levels" in str(err.value)


def test_a_flood_of_forged_deliveries_is_counted_not_pushed_into_the_history(tmp_path: Path, secret,
                                                                             caplog) -> None:
    deployer = make_deployer(tmp_path, refused_memory=5)
    body = json.dumps({"entity": "model_version_alias", "action": "created",
                       "data": {"name": "fashionrec", "alias": "champion", "version": "3"}}).encode()
    huge_id = "x" * 60_000
    with TestClient(create_deployer_app(deployer)) as client:
        deadline = time.monotonic() + BOUND_S       # the start-up reconcile is recorded first
        while not any(e["event"] == "reconcile" for e in client.get("/status").json()["events"]):
            assert time.monotonic() < deadline, "the start-up reconcile was not recorded"
            time.sleep(0.01)
        real = client.get("/status").json()["events"]
        caplog.set_level(logging.WARNING, logger="fashionrec.deployer")
        for i in range(200):
            headers = {**signed(body, delivery=f"forged-{i}"), "X-MLflow-Signature": "v1,AAAA"}
            assert client.post("/webhooks/mlflow", content=body, headers=headers).status_code == 401
        headers = {**signed(body, delivery=huge_id), "X-MLflow-Signature": "v1,AAAA"}
        r = client.post("/webhooks/mlflow", content=body, headers=headers)
        assert r.status_code == 401 and len(r.json()["message"]) < 300
        status = client.get("/status").json()
        metrics = client.get("/metrics").text
    assert status["events"] == real                             # the deploy history is untouched
    assert status["webhooks_refused"]["counts"] == {"forged": 201}
    recent = status["webhooks_refused"]["recent"]
    assert len(recent) == 5 and all(len(e["reason"]) < 300 for e in recent)
    assert 'fashionrec_deployer_webhooks_total{outcome="forged"} 201.0' in metrics
    lines = [r.getMessage() for r in caplog.records if "webhook refused" in r.getMessage()]
    assert len(lines) == 201 and max(len(line) for line in lines) < 300
    assert re.search(rf"x{{{ID_CHARS}}}…\(\+{60_000 - ID_CHARS} chars\)", lines[-1])
