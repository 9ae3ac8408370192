"""The serving image, run for real: started from its own entrypoint as its own non-root user with a real
bundle mounted read-only, it answers a photo with that bundle's versions and refuses a bad upload; torch is
not in it; the default image stays within its size budget (no pandas, pyarrow, scikit-learn, SciPy or
Faiss: a kind whose extra it lacks is refused naming that extra); and on an empty bundles volume it waits,
not ready, until a bundle is activated beside it."""

from __future__ import annotations

import json
import time
import urllib.request
from pathlib import Path

import pytest

from fashionrec.data.manifest import read_manifest
from fashionrec.data.shards import read_image_bytes
from tests.container.utils import (
    PARAMS,
    ROOT,
    SERVE_IMAGE,
    ImageBundle,
    build_bundle,
    get,
    image_mb,
    post_image,
    run_in_image,
    serve_image,
    wait_status,
)
from tests.serving.utils import free_port

pytestmark = pytest.mark.image
START_TIMEOUT_S = 120
REAL_PHOTOS = ROOT.parent / "shared" / "datasets" / "clothing-dataset" / "images"
FORBIDDEN = ("torch", "torchvision", "mlflow", "kfp", "dvc", "great_expectations", "matplotlib")


# Verdicts come back as exit codes: `buildah run --isolation chroot` propagates them reliably, while the
# tail of a short-lived process's output can be lost when it exits (seen under load).
IMPORT_TORCH = """
import sys
try:
    import torch
except ModuleNotFoundError as exc:
    sys.exit(42 if exc.name == "torch" else 1)
sys.exit(0)
"""
FIND_FORBIDDEN = f"""
import importlib.util, sys
found = [m for m in {list(FORBIDDEN)!r} if importlib.util.find_spec(m) is not None]
print(found)
sys.exit(len(found))
"""


def test_image_is_non_root_with_healthcheck_and_without_torch(serve_image_config: dict) -> None:
    config = serve_image_config
    assert config["User"] not in ("", "root", "0")
    health = " ".join(config["Healthcheck"]["Test"])
    assert "/healthz" in health and config["Healthcheck"]["Interval"] > 0
    whoami = run_in_image(SERVE_IMAGE, ["sh", "-c", 'test "$(id -u)" -ne 0'], tag="id")
    assert whoami.returncode == 0, f"the image's user is root: {whoami.stderr}"
    torch = run_in_image(SERVE_IMAGE, ["python", "-c", IMPORT_TORCH], tag="torch")
    assert torch.returncode == 42, f"`import torch` must fail with ModuleNotFoundError: {torch.stderr}"
    found = run_in_image(SERVE_IMAGE, ["python", "-c", FIND_FORBIDDEN], tag="probe")
    assert found.returncode == 0, f"training packages in the serving image: {found.stdout} {found.stderr}"


# An index kind's extra absent from the image: the verdict of `require_kind('hnsw')` as an exit code
HNSW_REFUSED = """
import sys
from fashionrec.core.errors import MissingDependency
from fashionrec.index import require_kind
try:
    require_kind("hnsw")
except MissingDependency as exc:
    print(exc)
    sys.exit(43 if "`hnsw` extra" in str(exc) else 1)
sys.exit(0)
"""
LEFT_OUT = ("pandas", "pyarrow", "sklearn", "scipy", "faiss")   # issue 23: ~460 MB the server never used


def test_default_image_is_within_its_budget_and_refuses_a_kind_it_lacks_by_name(
        serve_image_config: dict) -> None:
    images = PARAMS["images"]
    extras = images.get("serve_extras") or []
    report = ROOT / images["cache"] / "build.json"
    assert report.is_file(), f"no {report}: `make images` writes it (the base image's reference)"
    base = json.loads(report.read_text())["base"]["ref"]
    above = image_mb(SERVE_IMAGE) - image_mb(base)
    print(f"serving image: {above:.1f} MB above its base {base} (extras {extras})")
    if not extras:   # the budget is the default image's; each extra adds its library
        assert above <= images["max_serve_mb"], \
            f"the serving image is {above:.1f} MB above its base, over images.max_serve_mb"
        probe = f"import importlib.util, sys; sys.exit(len([m for m in {list(LEFT_OUT)!r} " \
                "if importlib.util.find_spec(m)]))"
        found = run_in_image(SERVE_IMAGE, ["python", "-c", probe], tag="left-out")
        assert found.returncode == 0, f"{found.returncode} of {LEFT_OUT} are in the default serving image"
    if "hnsw" not in extras:
        refused = run_in_image(SERVE_IMAGE, ["python", "-c", HNSW_REFUSED], tag="hnsw")
        assert refused.returncode == 43, f"hnsw must be refused naming its extra: {refused.stdout} " \
                                         f"{refused.stderr}"


def test_serves_a_mounted_bundle_with_its_versions(image_bundle: ImageBundle, tiny_validated,
                                                   tmp_path: Path) -> None:
    port = free_port()
    with serve_image(image_bundle.bundles, image_bundle.inventory, port, tmp_path / "serve.log") as server:
        ready = wait_status(server, "/readyz", 200, START_TIMEOUT_S)
        print(f"container start to /readyz: {time.monotonic() - server.started:.1f} s")
        version = image_bundle.manifest["version"]
        model_version = image_bundle.manifest["model"]["version"]
        assert ready == {"status": "ready", "busy": False, "model_version": model_version,
                         "index_version": version}
        code, health = get(server.url + "/healthz")
        assert code == 200 and health["provider"] == "CPUExecutionProvider"

        # a photo that is one of the inventory items comes back first, as itself
        test_ids = tiny_validated.source.splits["test"]
        query_id = test_ids[0]
        photos_of = read_manifest(tiny_validated.validated).set_index("id")["abspath"]
        query = read_image_bytes(photos_of[query_id])   # the photo, out of its subset shard
        code, answer = post_image(server.url, query)
        assert code == 200, answer
        assert (answer["model_version"], answer["index_version"]) == (model_version, version)
        assert len(answer["items"]) == 5
        assert answer["items"][0]["item_id"] == query_id and answer["items"][0]["score"] > 0.99
        # the item's image is served from the read-only inventory mount
        with urllib.request.urlopen(f"{server.url}/items/{query_id}/image", timeout=10) as resp:
            assert resp.read() == query

        # a real clothing photo (where the dataset is on disk): five items, same versions
        photos = sorted(REAL_PHOTOS.glob("*.jpg"))[:1] if REAL_PHOTOS.is_dir() else []
        for photo in photos:
            code, answer = post_image(server.url, photo.read_bytes())
            assert code == 200 and len(answer["items"]) == 5, answer
            assert answer["index_version"] == version

        code, answer = post_image(server.url, b"? certainly not an image", filename="bad.jpg")
        assert code == 400 and answer["error"] == "bad_image", answer
        assert server.proc.poll() is None, "a bad upload must not take the server down"
    assert server.proc.poll() is not None, "the container process is stopped by its PID"
    with pytest.raises(OSError):
        urllib.request.urlopen(f"{server.url}/healthz", timeout=2)


def test_waits_not_ready_on_an_empty_volume_until_a_bundle_is_activated(
        tiny_validated, image_model: Path, tmp_path: Path) -> None:
    bundles = tmp_path / "bundles"
    bundles.mkdir()
    inventory = tmp_path / "inventory"   # the photos are copied beside the bundles by the deploy
    inventory.mkdir()
    port = free_port()
    with serve_image(bundles, inventory, port, tmp_path / "serve.log", tag="empty") as server:
        health = wait_status(server, "/healthz", 200, START_TIMEOUT_S)
        assert health["ready"] is False
        code, body = get(server.url + "/readyz")
        assert code == 503 and body["error"] == "not_ready", body
        time.sleep(3)   # longer than serve.watch_interval_s: the pod builds nothing, it keeps waiting
        assert sorted(p.name for p in bundles.iterdir()) == []
        assert get(server.url + "/readyz")[0] == 503

        # the deployer's part, done here by the same library call: build, smoke-test and activate a
        # bundle in the shared folder (tmp_path/bundles); the server follows `current` by itself
        activated = build_bundle(tmp_path, tiny_validated.validated, image_model)
        assert activated.bundles == bundles and (bundles / "current").is_symlink()
        started = time.monotonic()
        ready = wait_status(server, "/readyz", 200, 30)
        print(f"bundle activated -> container ready: {time.monotonic() - started:.1f} s")
        assert ready["index_version"] == activated.manifest["version"]
