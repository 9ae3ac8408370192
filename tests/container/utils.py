"""Run the built serving image here: `buildah run --isolation chroot` (podman/crun cannot start containers
on this machine's cgroup layout; see ../shared/NOTES.md), host network, as the image's own user, with the
bundles and inventory folders bind-mounted read-only. Used by tests/container and bench/rollout.py."""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import signal
import subprocess
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from fashionrec.core.config import Params
from tests.serving.utils import deploy_with, write_params

ROOT = Path(__file__).resolve().parents[2]
PARAMS = yaml.safe_load((ROOT / "params.yaml").read_text())
SERVE_IMAGE: str = PARAMS["images"]["serve"]


@dataclass(frozen=True)
class ImageBundle:
    """A bundles folder with one activated bundle, and the inventory folder its item paths are relative to."""

    params: Params
    bundles: Path
    bundle: Path
    manifest: dict[str, Any]
    inventory: Path
    model: Path


def build_bundle(folder: Path, validated: Path, model: Path) -> ImageBundle:
    """Every validated tiny-dataset image as an inventory item, embedded with `model`, activated."""
    params = write_params(folder, model, None, index__manifest=str(validated / "manifest.parquet"),
                                    index__kind="balltree")
    bundle = deploy_with(params, rebuild=True).bundle   # type: ignore[attr-defined]
    return bundle_info(params, Path(bundle), model)


def bundle_info(params: Params, bundle: Path, model: Path) -> ImageBundle:
    manifest = json.loads((bundle / "manifest.json").read_text())
    return ImageBundle(params=params, bundles=bundle.parent, bundle=bundle, manifest=manifest,
                       inventory=Path(manifest["items"]["inventory_root"]), model=model)


class ImageMissing(RuntimeError):
    """The serving image is not in this machine's image store (or buildah is not installed)."""


def require_image(ref: str = SERVE_IMAGE) -> dict[str, Any]:
    """The image's Docker config (User, Entrypoint, Healthcheck...); ImageMissing says how to build it."""
    if shutil.which("buildah") is None:
        raise ImageMissing("buildah is not installed: `make images` installs it and builds the image")
    proc = subprocess.run(["buildah", "inspect", "--type", "image", ref], capture_output=True, text=True)
    if proc.returncode != 0:
        raise ImageMissing(f"image {ref} is not built: run `make images` (make test does it first)")
    return json.loads(proc.stdout)["Docker"]["config"]


def image_mb(ref: str) -> float:
    """The image's size in the local store (all its layers, uncompressed), as `make images` reports it."""
    out = subprocess.run(["podman", "image", "inspect", "--format", "{{.Size}}", ref],
                         capture_output=True, text=True, check=True).stdout
    return int(out.strip()) / 1e6


def container_name(tag: str) -> str:
    return f"fashionrec-test-{os.getpid()}-{tag}"


@contextlib.contextmanager
def working_container(ref: str, tag: str) -> Iterator[str]:
    """A buildah working container from the image (copy-on-write), removed afterwards."""
    name = container_name(tag)
    subprocess.run(["buildah", "rm", name], capture_output=True)   # a leftover of a killed run
    subprocess.run(["buildah", "from", "--pull=never", "--name", name, ref], check=True, capture_output=True)
    try:
        yield name
    finally:
        subprocess.run(["buildah", "rm", name], capture_output=True)


def run_in_image(ref: str, args: list[str], tag: str = "once") -> subprocess.CompletedProcess:
    """Run one command in a fresh container of the image, as its configured user."""
    user = require_image(ref).get("User") or "root"
    with working_container(ref, tag) as name:
        return subprocess.run(["buildah", "run", "--isolation", "chroot", "--user", user, name, "--", *args],
                              capture_output=True, text=True, timeout=120)


@dataclass
class ImageServer:
    """A serving container started from the image's own entrypoint; stop it with `stop()` (by PID)."""

    proc: subprocess.Popen
    url: str
    log: Path
    started: float        # time.monotonic() when `buildah run` was launched

    def stop(self) -> None:
        """SIGTERM the process group of `buildah run` (uvicorn in it stops too), SIGKILL if it lingers."""
        if self.proc.poll() is not None:
            return
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(timeout=20)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)

    def tail(self, chars: int = 3000) -> str:
        return self.log.read_text(errors="replace")[-chars:] if self.log.exists() else ""


@contextlib.contextmanager
def serve_image(bundles: Path, inventory: Path, port: int, log: Path, ref: str = SERVE_IMAGE,
                tag: str = "serve", env: dict[str, str] | None = None) -> Iterator[ImageServer]:
    """Start the image's ENTRYPOINT (+CMD) as its USER, bundles and inventory mounted read-only, on `port`."""
    config = require_image(ref)
    command = [*(config.get("Entrypoint") or []), *(config.get("Cmd") or [])]
    user = config.get("User") or "root"
    settings = {"PORT": str(port), "FASHIONREC_INVENTORY_ROOT": "/srv/inventory", **(env or {})}
    with working_container(ref, tag) as name:
        cmd = ["buildah", "run", "--isolation", "chroot", "--user", user,
               "--volume", f"{bundles}:/srv/bundles:ro", "--volume", f"{inventory}:/srv/inventory:ro",
               *[flag for k, v in settings.items() for flag in ("--env", f"{k}={v}")], name, "--", *command]
        fh = open(log, "w")  # noqa: SIM115 - owned by the process for its lifetime
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True)
        server = ImageServer(proc, f"http://127.0.0.1:{port}", log, time.monotonic())
        try:
            yield server
        finally:
            server.stop()
            fh.close()


def get(url: str, timeout: float = 5.0) -> tuple[int, dict[str, Any]]:
    """GET a JSON endpoint; (status, body) also for 4xx/5xx answers."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}")


def post_image(url: str, data: bytes, filename: str = "photo.jpg", k: int = 5) -> tuple[int, dict]:
    """POST /recommend as multipart/form-data (stdlib only: what any client would send)."""
    boundary = uuid.uuid4().hex
    body = io.BytesIO()
    body.write(f'--{boundary}\r\nContent-Disposition: form-data; name="k"\r\n\r\n{k}\r\n'.encode())
    body.write(f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="{filename}"\r\n'
               "Content-Type: image/jpeg\r\n\r\n".encode())
    body.write(data + f"\r\n--{boundary}--\r\n".encode())
    req = urllib.request.Request(f"{url}/recommend", data=body.getvalue(), method="POST",
                                 headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def wait_status(server: ImageServer, path: str, status: int, timeout: float) -> dict[str, Any]:
    """Poll until `path` answers `status`; fails early (with the log) if the container exited."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.proc.poll() is not None:
            raise RuntimeError(f"container exited with {server.proc.returncode}; log:\n{server.tail()}")
        with contextlib.suppress(OSError, ValueError):
            code, body = get(server.url + path, timeout=2)
            if code == status:
                return body
        time.sleep(0.2)
    raise TimeoutError(f"{server.url}{path} did not answer {status} within {timeout}s; log:\n{server.tail()}")
