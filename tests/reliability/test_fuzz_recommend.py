"""Fuzz `POST /recommend` on a real uvicorn server: mutated images and malformed multipart bodies.

Seeds are real JPEG, PNG, GIF and WebP encodings of dataset photos (the tiny dataset); each case applies a
seeded mutation (bit flips, truncation, header corruption, dimension fields set huge, spliced or repeated
segments, swapped magic bytes) or sends a hand-broken multipart body; interleaved with them, legal-but-hostile
images (`hostile.py`: extreme aspect ratios, 16-bit, large under the pixel limit, strip crops). Whatever
arrives, the server (under an address-space cap) must answer with a status below 500 within a time per
request, leak no exception type or path in its bodies, stay healthy, and end with its RSS under the
400 MB budget. 2,000 cases by default; FASHIONREC_FUZZ_CASES=10000 for the long run.
"""

from __future__ import annotations

import io
import os
import struct
import time
from collections.abc import Callable, Iterator

import httpx
import numpy as np
import pytest
from PIL import Image

from fashionrec.data.images import open_image
from fashionrec.data.manifest import read_manifest
from tests.reliability.hostile import hostile_images
from tests.reliability.utils import BUDGET_MIB, LEAK
from tests.serving.utils import (
    deploy_with,
    export_model,
    make_catalog,
    start_server,
    status_of,
    stop,
    write_params,
)

CASES = int(os.environ.get("FASHIONREC_FUZZ_CASES", "2000"))
FORMATS = ("JPEG", "PNG", "GIF", "WEBP")
HOSTILE_EVERY = 40                   # one legal-but-hostile image every this many cases
SECONDS_PER_REQUEST = 5.0            # the slowest answer allowed (2 loaded cores; refusals take ms)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, object]]:
    base = tmp_path_factory.mktemp("fuzz")
    params = write_params(base, export_model(base / "model", seed=3), make_catalog(base / "inv", 24, seed=3),
                          serve__watch_interval_s=0)
    deploy_with(params)
    proc, url = start_server(params, base / "server.log", address_space_mib=3072)
    try:
        yield url, proc
    finally:
        stop(proc)


def seeds(tiny_validated) -> dict[str, list[bytes]]:
    """Real photos of the tiny dataset re-encoded in each format (small, so 2,000 cases stay quick)."""
    df = read_manifest(tiny_validated.validated)
    out: dict[str, list[bytes]] = {f: [] for f in FORMATS}
    for path in list(df["abspath"])[:3]:
        img = open_image(path)  # a shard member of the subset
        img.thumbnail((96, 96))
        for fmt in FORMATS:
            buf = io.BytesIO()
            img.save(buf, format=fmt, **({"quality": 85} if fmt in ("JPEG", "WEBP") else {}))
            out[fmt].append(buf.getvalue())
    return out


def dimension_offsets(data: bytes, fmt: str) -> list[int]:
    """Where each format stores width/height (so a mutation there claims a huge or zero-sized image)."""
    if fmt == "PNG":
        return [16, 20]
    if fmt == "GIF":
        return [6, 8]
    if fmt == "WEBP":
        return [26, 28]
    sof = data.find(b"\xff\xc0")
    return [sof + 5, sof + 7] if sof >= 0 else [0]


MAGIC = [b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n", b"GIF89a", b"RIFF\x00\x00\x00\x00WEBP", b"II*\x00", b"BM"]


def mutate(data: bytes, fmt: str, rng: np.random.Generator) -> tuple[str, bytes]:
    b = bytearray(data)
    op = int(rng.integers(0, 8))
    if op == 0:
        for _ in range(int(rng.integers(1, 33))):
            pos = int(rng.integers(0, len(b)))
            b[pos] ^= 1 << int(rng.integers(0, 8))
        return "bit_flips", bytes(b)
    if op == 1:
        return "truncate", bytes(b[: int(rng.integers(0, len(b)))])
    if op == 2:
        end = min(len(b), 64)
        for _ in range(int(rng.integers(1, 9))):
            b[int(rng.integers(0, end))] = int(rng.integers(0, 256))
        return "header_bytes", bytes(b)
    if op == 3:
        for pos in dimension_offsets(data, fmt):
            value = int(rng.choice([0, 1, 0xFFFF, 0x7FFF, 0xFFFFFFFF, int(rng.integers(0, 1 << 16))]))
            if fmt == "PNG":
                b[pos:pos + 4] = struct.pack(">I", value & 0xFFFFFFFF)
            elif fmt == "JPEG":
                b[pos:pos + 2] = struct.pack(">H", value & 0xFFFF)
            else:
                b[pos:pos + 2] = struct.pack("<H", value & 0xFFFF)
        return "dimensions", bytes(b)
    if op == 4:
        start = int(rng.integers(0, len(b)))
        length = int(rng.integers(1, 512))
        return "insert_random", bytes(b[:start] + rng.bytes(length) + b[start:])
    if op == 5:
        start = int(rng.integers(0, len(b)))
        seg = b[start:start + int(rng.integers(1, 256))]
        return "repeat_segment", bytes(b[:start] + seg * int(rng.integers(2, 50)) + b[start:])
    if op == 6:
        magic = MAGIC[int(rng.integers(0, len(MAGIC)))]
        return "swap_magic", magic + bytes(b[len(magic):])
    start = int(rng.integers(0, len(b)))
    return "zero_tail", bytes(b[:start]) + bytes(len(b) - start)


def multipart(parts: list[tuple[str, str | None, bytes]], boundary: str = "fuzzboundary") -> bytes:
    out = b""
    for name, filename, payload in parts:
        disp = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename else "")
        out += f"--{boundary}\r\nContent-Disposition: {disp}\r\n".encode()
        if filename:
            out += b"Content-Type: image/jpeg\r\n"
        out += b"\r\n" + payload + b"\r\n"
    return out + f"--{boundary}--\r\n".encode()


def malformed(image: bytes, rng: np.random.Generator) -> tuple[str, dict[str, str], bytes]:
    """A hand-built request body that breaks multipart or the form's fields in one way."""
    ok_ct = {"Content-Type": "multipart/form-data; boundary=fuzzboundary"}
    good = multipart([("image", "q.jpg", image)])
    field_values = [b"abc", b"-1", b"0", b"1e9", b"99999999999999999999", b"", b"\xff\xfe", b"5" * 5000,
                    b"NaN", b"1,2,3", b"0,0,0,0", b"-5,-5,10,10", b"10,10,5,5", b"a,b,c,d", b"inf,0,1,1"]
    cases: list[Callable[[], tuple[str, dict[str, str], bytes]]] = [
        lambda: ("no_boundary_param", {"Content-Type": "multipart/form-data"}, good),
        lambda: ("wrong_boundary", {"Content-Type": "multipart/form-data; boundary=other"}, good),
        lambda: ("no_closing_boundary", ok_ct, good[: good.rfind(b"--fuzzboundary--")]),
        lambda: ("cut_body", ok_ct, good[: int(rng.integers(0, len(good)))]),
        lambda: ("json_content_type", {"Content-Type": "application/json"}, good),
        lambda: ("urlencoded", {"Content-Type": "application/x-www-form-urlencoded"}, b"image=%ff%d8&k=5"),
        lambda: ("no_content_type", {}, good),
        lambda: ("missing_image", ok_ct, multipart([("k", None, b"5")])),
        lambda: ("image_as_text_field", ok_ct, multipart([("image", None, image[:200])])),
        lambda: ("two_images", ok_ct, multipart([("image", "a.jpg", image), ("image", "b.jpg", image)])),
        lambda: ("bad_k", ok_ct, multipart([("image", "q.jpg", image),
                                            ("k", None, field_values[int(rng.integers(0, 10))])])),
        lambda: ("bad_crop", ok_ct, multipart([("image", "q.jpg", image),
                                               ("crop", None, field_values[int(rng.integers(0, 15))])])),
        lambda: ("bad_kids", ok_ct, multipart([("image", "q.jpg", image), ("kids", None, b"maybe")])),
        lambda: ("odd_category", ok_ct, multipart([("image", "q.jpg", image),
                                                   ("category", None, "ünïcödé\u202e".encode())])),
        lambda: ("garbage_headers", ok_ct, b"--fuzzboundary\r\n" + rng.bytes(300) + b"\r\n\r\n" + image),
        lambda: ("random_body", ok_ct, rng.bytes(int(rng.integers(0, 4096)))),
        lambda: ("huge_header_line", ok_ct, b"--fuzzboundary\r\nContent-Disposition: form-data; "
                 b'name="image"; ' + b"x" * 20000 + b"\r\n\r\n" + image + b"\r\n--fuzzboundary--\r\n"),
        lambda: ("non_utf8_name", ok_ct,
                 multipart([("im\xffage", "q.jpg", image)]).replace(b"\xc3\xbf", b"\xff")),
        lambda: ("flipped_body", ok_ct, bytes(x ^ 0x20 if rng.random() < 0.02 else x for x in good)),
        lambda: ("empty_body", ok_ct, b""),
    ]
    return cases[int(rng.integers(0, len(cases)))]()


def test_fuzzed_uploads_never_get_a_5xx_and_the_server_stays_healthy(server, tiny_validated) -> None:
    url, proc = server
    pool = seeds(tiny_validated)
    rng = np.random.default_rng(20261123)
    hostile = hostile_images()
    failures, kinds, slowest = [], {}, (0.0, "")
    with httpx.Client(base_url=url, timeout=30) as client:
        for case in range(CASES):
            fmt = FORMATS[case % len(FORMATS)]
            seed = pool[fmt][case % len(pool[fmt])]
            started = time.perf_counter()
            if case % HOSTILE_EVERY == HOSTILE_EVERY - 1:
                h = hostile[(case // HOSTILE_EVERY) % len(hostile)]
                what = f"hostile {h.name}"
                r = client.post("/recommend", files={"image": ("h", h.data, "image/png")},
                                data={"k": "3", **({"crop": h.crop} if h.crop else {})})
                if r.status_code != h.status:
                    failures.append(f"case {case} ({what}): {r.status_code}, expected {h.status}")
            elif rng.random() < 0.25:
                what, headers, body = malformed(seed, rng)
                r = client.post("/recommend", content=body, headers=headers)
            else:
                what, data = mutate(seed, fmt, rng)
                r = client.post("/recommend", files={"image": (f"q.{fmt.lower()}", data, "image/jpeg")},
                                data={"k": str(int(rng.integers(1, 8)))})
            elapsed = time.perf_counter() - started
            slowest = max(slowest, (elapsed, what))
            kinds[r.status_code] = kinds.get(r.status_code, 0) + 1
            if r.status_code >= 500:
                failures.append(f"case {case} ({fmt} {what}): {r.status_code} {r.text[:200]}")
            elif r.status_code >= 400 and LEAK.search(r.text):
                failures.append(f"case {case} ({fmt} {what}): the body leaks internals: {r.text[:200]}")
        assert not failures, f"{len(failures)} of {CASES} cases failed:\n" + "\n".join(failures[:10])
        assert slowest[0] < SECONDS_PER_REQUEST, slowest
        rss = status_of(proc.pid)["VmRSS"]
        deadline = time.monotonic() + 5
        while rss > BUDGET_MIB and time.monotonic() < deadline:
            time.sleep(0.25)
            rss = status_of(proc.pid)["VmRSS"]
        assert rss <= BUDGET_MIB, f"server RSS {rss} MiB after the run (budget {BUDGET_MIB})"
        assert proc.poll() is None, "the server process died during fuzzing"
        health = client.get("/healthz").json()
        assert health["ready"] is True and health["last_error"] is None
        r = client.post("/recommend", files={"image": ("q.jpg", pool["JPEG"][0], "image/jpeg")},
                        data={"k": "5"})
        assert r.status_code == 200 and len(r.json()["items"]) == 5
        metrics = client.get("/metrics").text
        assert 'fashionrec_errors_total{type="internal"}' not in metrics
    # The mutations really exercised both sides: accepted images and refused ones.
    assert kinds.get(200, 0) > 0 and sum(v for k, v in kinds.items() if 400 <= k < 500) > CASES // 4, kinds


def test_seed_formats_are_the_ones_claimed(tiny_validated) -> None:
    pool = seeds(tiny_validated)
    for fmt, blobs in pool.items():
        assert blobs and all(Image.open(io.BytesIO(b)).format == fmt for b in blobs)
