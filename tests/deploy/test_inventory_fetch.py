"""Inventory images that arrive (issue 26): URL images are fetched with retries and backoff; an item whose
image could not be fetched is listed as missing (the deploy report, the manifest, serving's `/info`) and
retried by every later reconcile, which never answers "unchanged" while items are missing.

The image server is a loopback HTTP server this test controls: it drops the connection or answers 503 for
its first requests, counted, then serves the image. Nothing waits on time."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from fashionrec.bundle.format import verify_bundle
from fashionrec.bundle.load import load_bundle
from fashionrec.bundle.store import current_version
from fashionrec.core.errors import DataError
from fashionrec.deploy.catalog import ImageFetcher, fetch_image
from fashionrec.serve.app import ServeConfig, create_app
from tests.serving.utils import deploy_with, draw_item, export_model, make_catalog, write_params

RETRIES = 2                              # 3 attempts per fetch


class Flaky:
    """Serves one JPEG at /img.jpg; the first `failures` requests are refused (odd: the connection is
    dropped unanswered, even: 503)."""

    def __init__(self, image: bytes, failures: int) -> None:
        self.image, self.failures, self.requests = image, failures, 0
        self.lock = threading.Lock()
        flaky = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:  # noqa: N802 - http.server's name
                with flaky.lock:
                    flaky.requests += 1
                    n = flaky.requests
                if n <= flaky.failures and n % 2 == 1:
                    self.close_connection = True
                    self.connection.shutdown(2)           # dropped: no status line at all
                    return
                if n <= flaky.failures:
                    self.send_response(503)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                self.send_response(200)
                self.send_header("Content-Type", "image/jpeg")
                self.send_header("Content-Length", str(len(flaky.image)))
                self.end_headers()
                self.wfile.write(flaky.image)

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/img.jpg"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def flaky(tmp_path: Path) -> Iterator[Flaky]:
    image = draw_item(tmp_path / "web.jpg", 99, seed=5).read_bytes()
    server = Flaky(image, failures=2 * (RETRIES + 1))          # the first two deploys cannot fetch it
    yield server
    server.close()


def test_an_image_that_fails_at_first_is_missing_then_added_by_a_later_deploy(tmp_path: Path,
                                                                             flaky: Flaky) -> None:
    model = export_model(tmp_path / "model", seed=21)
    catalog = make_catalog(tmp_path / "inv", 12, seed=21)
    with open(catalog, "a") as fh:
        fh.write(f"web001,{flaky.url},Web shirt,shirt,\n")
    params = write_params(tmp_path, model, catalog, index__fetch_retries=RETRIES, index__fetch_backoff_s=0.01)
    bundles = params.path("bundles")

    first = deploy_with(params)
    assert first.action == "built" and first.items == 12 and first.missing == 1
    assert flaky.requests == RETRIES + 1                       # retried, then given up
    [missing] = first.skipped
    assert missing["item_id"] == "web001" and missing["image"] == flaky.url
    assert "download failed" in missing["reason"] and missing["title"] == "Web shirt"
    manifest = verify_bundle(Path(first.bundle))
    assert manifest["items"]["missing"] == 1
    with TestClient(create_app(ServeConfig.from_params(params))) as client:
        info = client.get("/info").json()
    assert info["items"] == 12 and info["items_missing"] == 1

    second = deploy_with(params)                               # still failing: not "unchanged"
    assert second.action == "incomplete" and second.missing == 1 and second.version == first.version
    assert flaky.requests == 2 * (RETRIES + 1) and current_version(bundles) == first.version

    third = deploy_with(params)                                # the image arrives
    assert third.action == "recovered" and third.missing == 0 and third.skipped == []
    assert (third.items, third.embedded, third.parent) == (13, 1, first.version)
    assert current_version(bundles) == third.version
    bundle = load_bundle(Path(third.bundle))
    assert bundle.items["item_id"][-1] == "web001"
    assert (bundle.items.title[-1], bundle.items.category[-1]) == ("Web shirt", "shirt")
    old = load_bundle(Path(first.bundle))
    assert np.array_equal(bundle.embeddings[:12], old.embeddings)
    assert verify_bundle(Path(third.bundle))["items"]["missing"] == 0

    assert deploy_with(params).action == "unchanged"          # complete now: nothing more to do


def test_the_fetcher_reuses_its_connection_and_bounds_the_size(tmp_path: Path, flaky: Flaky) -> None:
    flaky.failures = 0
    fetcher = ImageFetcher(max_bytes=len(flaky.image), retries=RETRIES, backoff_s=0.01, timeout_s=10)
    try:
        assert fetcher.fetch(flaky.url) == flaky.image
        assert fetcher.fetch(flaky.url) == flaky.image
        assert fetcher.fetch("/a/local/path.jpg") == "/a/local/path.jpg"
        pool = next(iter(fetcher.pool.pools._container.values()))
        assert pool.num_connections == 1 and pool.num_requests == 2   # one connection, reused
    finally:
        fetcher.close()
    assert fetch_image(flaky.url, len(flaky.image)) == flaky.image      # one-off, the deploy defaults
    small = ImageFetcher(max_bytes=100, retries=0, backoff_s=0.01, timeout_s=10)
    with pytest.raises(DataError, match="larger than 100 bytes"):
        small.fetch(flaky.url)
