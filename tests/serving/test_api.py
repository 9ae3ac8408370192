"""The HTTP API on valid requests: response shape, filters, crop, items, health, metrics, offline docs."""

from __future__ import annotations

import io
import re
from pathlib import Path

from fastapi.testclient import TestClient
from PIL import Image


def photo(assets, item: str = "item005") -> bytes:
    return (Path(assets.catalog).parent / "images" / f"{item}.jpg").read_bytes()


def recommend(client: TestClient, data: bytes, **form: str) -> dict:
    resp = client.post("/recommend", files={"image": ("q.jpg", data, "image/jpeg")}, data=form)
    assert resp.status_code == 200, resp.text
    return resp.json()


def test_recommend_returns_top_k_with_versions(served: TestClient, assets) -> None:
    body = recommend(served, photo(assets))
    assert len(body["items"]) == 5
    assert body["items"][0]["item_id"] == "item005" and body["items"][0]["score"] > 0.999
    scores = [i["score"] for i in body["items"]]
    assert scores == sorted(scores, reverse=True)
    assert set(body["items"][0]) >= {"item_id", "title", "category", "score", "image_url"}
    assert body["model_version"].startswith("local-") and body["index_version"].startswith("v0001-")
    assert len(recommend(served, photo(assets), k="50")["items"]) == 40   # capped by the inventory


def test_filters_restrict_the_answer(served: TestClient, assets) -> None:
    body = recommend(served, photo(assets), category="shoes", k="7")
    assert len(body["items"]) == 7 and {i["category"] for i in body["items"]} == {"shoes"}
    body = recommend(served, photo(assets), category="Pants", kids="true", k="10")
    assert body["items"] and all(i["category"] == "pants" and i["kids"] for i in body["items"])
    # pants are items 1, 5, 9, ... (i % 4 == 1), kids every third (i % 3 == 0): only 9, 21 and 33 pass
    assert sorted(i["item_id"] for i in body["items"]) == ["item009", "item021", "item033"]


def test_crop_changes_what_is_searched(served: TestClient, assets) -> None:
    # a collage: item 5's photo on the left, item 6's on the right; each crop finds its own item first
    left, right = (Image.open(io.BytesIO(photo(assets, i))) for i in ("item005", "item006"))
    collage = Image.new("RGB", (left.width + right.width, max(left.height, right.height)), "white")
    collage.paste(left, (0, 0))
    collage.paste(right, (left.width, 0))
    buf = io.BytesIO()
    collage.save(buf, "PNG")
    data = buf.getvalue()
    first = recommend(served, data, crop=f"0,0,{left.width},{left.height}")["items"][0]["item_id"]
    box = f"{left.width},0,{collage.width},{right.height}"
    second = recommend(served, data, crop=box)["items"][0]["item_id"]
    assert (first, second) == ("item005", "item006")


def test_items_and_their_images(served: TestClient, assets) -> None:
    item = served.get("/items/item003").json()
    assert item["item_id"] == "item003" and item["category"] == "dress" and item["kids"] is True
    image = served.get(item["image_url"])
    assert image.status_code == 200 and image.content == photo(assets, "item003")


def test_health_ready_info_and_metrics(served: TestClient) -> None:
    health = served.get("/healthz").json()
    assert health["status"] == "ok"
    assert health["provider"] in ("CPUExecutionProvider", "CUDAExecutionProvider")
    assert health["provider"] == health["providers"][0]
    assert served.get("/readyz").status_code == 200
    info = served.get("/info").json()
    assert info["categories"] == ["dress", "pants", "shoes", "t-shirt"] and info["items"] == 40
    text = served.get("/metrics").text
    assert re.search(r'fashionrec_requests_total\{method="POST",route="/recommend",status="200"\} \d', text)
    assert "fashionrec_request_seconds_bucket" in text
    assert re.search(r'fashionrec_bundle_info\{index_version="v0001-[^"]+",model_version="local-', text)


def test_docs_and_page_need_no_network(served: TestClient) -> None:
    docs = served.get("/docs").text
    urls = re.findall(r'(?:src|href)=["\']([^"\']+)', docs) + re.findall(r"url: ?'([^']+)'", docs)
    assert urls and all(u.startswith("/") for u in urls), urls
    for url in urls:
        assert served.get(url).status_code == 200, url
    page = served.get("/").text
    assets_used = re.findall(r'(?:src|href)=["\']([^"\']+)', page)
    assert all(u.startswith("/") for u in assets_used), assets_used
    assert served.get("/static/app.js").status_code == 200
    assert "/recommend" in served.get("/openapi.json").json()["paths"]


def test_not_ready_without_a_bundle(tmp_path: Path, assets) -> None:
    from fashionrec.serve.app import ServeConfig, create_app
    from tests.serving.utils import write_params

    params = write_params(tmp_path, assets.model_a, assets.catalog, serve__watch_interval_s=0)
    with TestClient(create_app(ServeConfig.from_params(params))) as client:
        assert client.get("/healthz").json()["ready"] is False
        assert client.get("/readyz").status_code == 503
        resp = client.post("/recommend", files={"image": ("q.jpg", photo(assets), "image/jpeg")})
        assert resp.status_code == 503 and resp.json()["error"] == "not_ready"
