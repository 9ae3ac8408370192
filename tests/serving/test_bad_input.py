"""Bad uploads and parameters get a 4xx JSON error with a message, and the server keeps answering."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image


def jpeg(size: tuple[int, int] = (80, 100), color: tuple[int, int, int] = (200, 30, 30)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, "JPEG")
    return buf.getvalue()


def png_bomb(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims width x height pixels (compressed rows of zeros)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)   # 1-bit grayscale
    row = b"\x00" + b"\x00" * ((width + 7) // 8)
    comp = zlib.compressobj(9)
    data = b"".join(comp.compress(row) for _ in range(min(height, 2000))) + comp.flush()
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", data) + chunk(b"IEND", b"")


def post(client: TestClient, data: bytes | None, **form: str):
    files = {"image": ("upload.jpg", data, "image/jpeg")} if data is not None else None
    return client.post("/recommend", files=files, data=form)


def assert_error(resp, status: int, kind: str, words: str) -> None:
    assert resp.status_code == status, resp.text
    body = resp.json()
    assert body["error"] == kind, body
    assert words.lower() in body["message"].lower(), body


CASES = [
    ("empty body", None, {}, 422, "invalid_request", "image"),
    ("empty file", b"", {}, 400, "empty_upload", "empty"),
    ("not an image", b"? certainly not an image", {}, 400, "bad_image", "cannot decode"),
    # serve.formats: a GIF signature is refused by name before any GIF code runs (it used to be a 400)
    ("gif signature", b"GIF89a? certainly not", {}, 415, "unsupported_format", "GIF images are not accepted"),
    ("html", b"<html><body>hi</body></html>", {}, 400, "bad_image", "cannot decode"),
    ("truncated jpeg", jpeg()[:300], {}, 400, "bad_image", "cannot decode"),
    ("decompression bomb", png_bomb(20_000, 20_000), {}, 413, "decompression_bomb", "limit"),
    ("k zero", jpeg(), {"k": "0"}, 422, "bad_k", "between 1 and 50"),
    ("k too big", jpeg(), {"k": "51"}, 422, "bad_k", "between 1 and 50"),
    ("k not a number", jpeg(), {"k": "five"}, 422, "invalid_request", "k:"),
    ("unknown category", jpeg(), {"category": "spacesuit"}, 422, "bad_filter", "unknown category"),
    ("kids not a bool", jpeg(), {"kids": "sometimes"}, 422, "invalid_request", "kids"),
    ("crop outside", jpeg((80, 100)), {"crop": "10,10,90,50"}, 422, "bad_crop", "outside the 80x100 image"),
    ("crop negative", jpeg(), {"crop": "-5,0,20,20"}, 422, "bad_crop", "outside"),
    ("crop inverted", jpeg(), {"crop": "40,40,10,10"}, 422, "bad_crop", "must exceed"),
    ("crop malformed", jpeg(), {"crop": "1,2,three,4"}, 422, "bad_crop", "four numbers"),
    ("crop nan", jpeg(), {"crop": "nan,0,10,10"}, 422, "bad_crop", "four numbers"),
]


@pytest.mark.parametrize(("name", "data", "form", "status", "kind", "words"), CASES,
                         ids=[c[0] for c in CASES])
def test_bad_input_is_a_4xx_json_error(served: TestClient, name: str, data: bytes | None, form: dict,
                                       status: int, kind: str, words: str) -> None:
    assert_error(post(served, data, **form), status, kind, words)
    ok = post(served, jpeg())   # and the server still answers
    assert ok.status_code == 200 and len(ok.json()["items"]) == 5


def test_upload_over_the_size_limit(served: TestClient) -> None:
    noise = np.random.default_rng(0).integers(0, 256, 10_100_000, dtype=np.uint8).tobytes()
    resp = post(served, noise)
    assert_error(resp, 413, "too_large", "upload limit is 10000000")


def test_wrong_method_and_unknown_routes_are_json(served: TestClient) -> None:
    assert_error(served.get("/recommend"), 405, "method_not_allowed", "")
    assert_error(served.get("/items/no-such-item"), 404, "not_found", "no-such-item")
    assert_error(served.get("/items/no-such-item/image"), 404, "not_found", "no-such-item")


def test_admin_needs_the_token(served: TestClient) -> None:
    assert_error(served.post("/admin/reload"), 403, "forbidden", "no admin token")


def unusual_images() -> dict[str, bytes]:
    out = {}
    rgb = Image.new("RGB", (90, 120), (30, 120, 200))
    for name, img, fmt in [
        ("cmyk.jpg", rgb.convert("CMYK"), "JPEG"),
        ("gray.png", rgb.convert("L"), "PNG"),
        ("alpha.png", rgb.convert("RGBA"), "PNG"),
        ("palette.png", rgb.convert("P"), "PNG"),
        ("gray16.png", Image.fromarray(np.full((120, 90), 40000, np.uint16)), "PNG"),
        ("webp.webp", rgb, "WEBP"),
    ]:
        buf = io.BytesIO()
        img.save(buf, fmt)
        out[name] = buf.getvalue()
    frames = [Image.new("RGB", (60, 60), c) for c in [(255, 0, 0), (0, 255, 0)]]
    buf = io.BytesIO()
    frames[0].save(buf, "WEBP", save_all=True, append_images=frames[1:], duration=100, loop=0)
    out["animated.webp"] = buf.getvalue()
    exif = Image.Exif()
    exif[0x0112] = 6   # orientation: rotate 90 degrees
    buf = io.BytesIO()
    Image.new("RGB", (120, 60), (10, 200, 10)).save(buf, "JPEG", exif=exif.tobytes())
    out["exif_rotated.jpg"] = buf.getvalue()
    return out


@pytest.mark.parametrize("name", sorted(unusual_images()))
def test_unusual_but_valid_images_are_accepted(served: TestClient, name: str) -> None:
    resp = post(served, unusual_images()[name], k="3")
    assert resp.status_code == 200, resp.text
    assert len(resp.json()["items"]) == 3


@pytest.mark.parametrize("fmt", ["GIF", "TIFF", "BMP", "ICO"])
def test_formats_outside_the_allowlist_get_415_naming_the_format(served: TestClient, fmt: str) -> None:
    """serve.formats (JPEG, MPO, PNG, WEBP): GIF and TIFF were accepted before; now refused by name."""
    buf = io.BytesIO()
    Image.new("RGB", (90, 120), (30, 120, 200)).save(buf, fmt)
    assert_error(post(served, buf.getvalue()), 415, "unsupported_format", f"{fmt} images are not accepted")
    assert post(served, jpeg()).status_code == 200


def test_exif_rotation_applies_before_the_crop_box(served: TestClient) -> None:
    data = unusual_images()["exif_rotated.jpg"]     # stored 120x60, displayed 60x120
    assert post(served, data, crop="0,0,60,120").status_code == 200
    assert_error(post(served, data, crop="0,0,120,60"), 422, "bad_crop", "60x120")


def test_errors_are_counted_by_type_in_metrics(served: TestClient) -> None:
    post(served, b"not an image")
    text = served.get("/metrics").text
    assert 'fashionrec_errors_total{type="bad_image"}' in text
    assert 'fashionrec_request_seconds_bucket{le="0.1",route="/recommend"}' in text


def test_item_images_never_escape_the_inventory_folder(tmp_path, assets) -> None:
    """A bundle whose item table points outside the inventory (checksums made to match), and an
    inventory file that is a symlink to outside: neither is served."""
    import json
    import shutil
    from pathlib import Path

    from fashionrec.bundle.format import ITEMS, MANIFEST, SUMS
    from fashionrec.core.files import sha256_file
    from fashionrec.serve.app import ServeConfig, create_app
    from tests.serving.utils import deploy_with, write_params

    inventory = tmp_path / "inv"
    shutil.copytree(Path(assets.catalog).parent, inventory)
    params = write_params(tmp_path, assets.model_a, inventory / "catalog.csv", serve__watch_interval_s=0)
    folder = Path(deploy_with(params, activate=False).bundle)
    for p in folder.iterdir():
        p.chmod(0o644)
    items = json.loads((folder / ITEMS).read_text())
    items["image"][:2] = ["../../../../../../etc/passwd", "/etc/passwd"]
    (folder / ITEMS).write_text(json.dumps(items))
    manifest = json.loads((folder / MANIFEST).read_text())
    manifest["files"][ITEMS]["sha256"] = sha256_file(folder / ITEMS)
    (folder / MANIFEST).write_text(json.dumps(manifest))
    (folder / SUMS).write_text("".join(f"{sha256_file(p)}  {p.name}\n" for p in sorted(folder.iterdir())
                                       if p.name != SUMS))
    link = inventory / "images" / "item002.jpg"
    link.unlink()
    link.symlink_to("/etc/passwd")
    params = write_params(tmp_path, assets.model_a, inventory / "catalog.csv", serve__watch_interval_s=0,
                          serve__bundle=str(folder))
    with TestClient(create_app(ServeConfig.from_params(params))) as client:
        for item_id in ("item000", "item001", "item002"):
            resp = client.get(f"/items/{item_id}/image")
            assert_error(resp, 404, "not_found", "not available")
            assert b"root:" not in resp.content
        assert client.get("/items/item003/image").status_code == 200
        assert client.get("/items/..%2F..%2Fetc%2Fpasswd/image").status_code == 404
