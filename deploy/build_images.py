#!/usr/bin/env python3
"""Build the project's container images with buildah: `make images` (serving) or `make images IMAGES=all`.

Why a script and not one `docker build` line: this machine has no Docker engine and reaches no container
registry, so the base image comes from Debian's own packages (debootstrap, cached as a tarball under
`images.cache` and imported once into the local image store), and pip inside the build steps reaches its
package index only with this machine's pip configuration and CA file, mounted read-only into each step.
Elsewhere the Dockerfiles build as they are (`ARG BASE=python:3.11-slim`). Names, base recipe and cache
come from params.yaml `images`; each build's time and size are written to `<cache>/build.json`.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from fashionrec.core.config import load_params
from fashionrec.core.errors import ParamsError

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILES = {"serve": "serving/Dockerfile", "pipeline": "components/Dockerfile"}
TOOLS = ("buildah", "podman", "debootstrap")
TRIM = ("var/cache/apt/archives", "var/lib/apt/lists", "usr/share/man", "usr/share/info")  # emptied in base


class BuildError(RuntimeError):
    """A build step failed; the message says which and how to fix it."""


def run(cmd: list[str], **kwargs: Any) -> subprocess.CompletedProcess:
    """Run a command, echoing it; a failure raises BuildError with its exit status."""
    print("+", " ".join(cmd), flush=True)
    proc = subprocess.run(cmd, **kwargs)
    if proc.returncode != 0:
        raise BuildError(f"`{' '.join(cmd[:3])} ...` failed with exit status {proc.returncode}")
    return proc


def image_exists(ref: str) -> bool:
    return subprocess.run(["buildah", "inspect", "--type", "image", ref], capture_output=True).returncode == 0


def image_bytes(ref: str) -> int:
    """The image's size in the local store (all its layers, uncompressed)."""
    out = subprocess.run(["podman", "image", "inspect", "--format", "{{.Size}}", ref],
                         capture_output=True, text=True, check=True).stdout
    return int(out.strip())


def debian_mirror(suite: str) -> str:
    """The Debian mirror apt uses here for `suite` (its sources list), else deb.debian.org."""
    sources = Path("/etc/apt")
    files = [sources / "sources.list", *sorted((sources / "sources.list.d").glob("*"))]
    for path in files:
        if not path.is_file():
            continue
        uris: list[str] = []
        suites: list[str] = []
        for line in path.read_text().splitlines():
            words = line.split("#", 1)[0].split()
            if words[:1] == ["deb"]:
                rest = [w for w in words[1:] if not w.startswith("[")]
                if len(rest) >= 2 and rest[1] == suite:
                    return rest[0]
            elif words[:1] == ["URIs:"]:
                uris = words[1:]
            elif words[:1] == ["Suites:"]:
                suites = words[1:]
            if uris and suites:
                if suite in suites:
                    return uris[0]
                uris, suites = [], []
    return "http://deb.debian.org/debian"


def local_base(cfg: dict[str, Any], cache: Path) -> tuple[str, dict[str, Any]]:
    """A base image from Debian packages: reused from the image store, else from the cached tarball, else
    debootstrapped (~80 s) and cached. The tag carries a hash of the recipe, so a changed recipe rebuilds."""
    recipe = {"suite": cfg["suite"], "packages": sorted(cfg["packages"]), "trim": TRIM, "format": 2}
    key = hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:12]
    ref = f"localhost/fashionrec-base:{cfg['suite']}-{key}"
    info: dict[str, Any] = {"ref": ref, "from": "store"}
    if image_exists(ref):
        return ref, info
    tarball = cache / f"base-{cfg['suite']}-{key}.tar"
    started = time.monotonic()
    if not tarball.is_file():
        mirror = debian_mirror(cfg["suite"]) if cfg.get("mirror", "auto") == "auto" else cfg["mirror"]
        with tempfile.TemporaryDirectory(dir=cache, prefix="rootfs-") as tmp:
            rootfs = Path(tmp) / "rootfs"
            run(["debootstrap", "--variant=minbase", f"--include={','.join(cfg['packages'])}",
                 cfg["suite"], str(rootfs), mirror], stdout=subprocess.DEVNULL)
            for rel in TRIM:   # files only: apt expects its folders (lists/partial) to exist
                for child in sorted((rootfs / rel).rglob("*")):
                    if child.is_symlink() or child.is_file():
                        child.unlink()
            partial = tarball.with_suffix(".partial")
            run(["tar", "-C", str(rootfs), "-cf", str(partial), "."])
            partial.rename(tarball)
        info["from"] = "debootstrap"
    else:
        info["from"] = "tarball"
    run(["podman", "import", "--quiet", str(tarball), ref], stdout=subprocess.DEVNULL)
    info["seconds"] = round(time.monotonic() - started, 1)
    return ref, info


def pip_mounts(cache: Path) -> list[str]:
    """`--volume` flags giving build steps this machine's pip settings: one merged pip.conf (files and
    PIP_* variables, as `pip config list` reports them) plus every local path those settings name
    (CA bundle, constraints, find-links folders, file:// index roots), all read-only at the same paths."""
    out = subprocess.run([sys.executable, "-m", "pip", "config", "list"],
                         capture_output=True, text=True).stdout
    settings: dict[str, str] = {}
    for line in out.splitlines():
        key, sep, value = line.partition("=")
        if not sep:
            continue
        section, _, option = key.rpartition(".")
        if section in ("global", "install", ":env:"):
            settings[option] = value.strip().strip("'\"")
    if not settings:
        return []
    conf = cache / "pip.conf"
    conf.write_text("[global]\n" + "".join(f"{k} = {v}\n" for k, v in sorted(settings.items())))
    mounts = [f"{conf}:/etc/pip.conf:ro"]
    seen: set[str] = set()
    for value in settings.values():
        for word in value.split():
            # a file:// index's pages link to files beside its `simple/` folder: mount the folder above
            path = os.path.dirname(word[7:].rstrip("/")) if word.startswith("file://") else word
            if os.path.isabs(path) and os.path.exists(path) and path not in seen:
                seen.add(path)
                mounts.append(f"{path}:{path}:ro")
    return [flag for m in mounts for flag in ("--volume", m)]


def build(name: str, ref: str, base: str, pull: str, mounts: list[str],
          extras: list[str] | None = None) -> dict[str, Any]:
    """buildah bud of one Dockerfile (docker format, so HEALTHCHECK is kept; layers cached); `extras`: the
    serving image's EXTRA_EXTRAS (images.serve_extras)."""
    dockerfile = ROOT / DOCKERFILES[name]
    ignore = dockerfile.with_name(dockerfile.name + ".dockerignore")
    args = ["--build-arg", f"EXTRA_EXTRAS={','.join(extras)}"] if extras is not None else []
    cmd = ["buildah", "bud", "--isolation", "chroot", "--layers", "--force-rm", "--format", "docker",
           f"--pull={pull}", "--build-arg", f"BASE={base}", *args, "-f", str(dockerfile),
           "--ignorefile", str(ignore), "-t", ref, *mounts, str(ROOT)]
    started = time.monotonic()
    run(cmd)
    seconds = time.monotonic() - started
    size, base_size = image_bytes(ref), image_bytes(base)
    return {"ref": ref, "seconds": round(seconds, 1), "mb": round(size / 1e6, 1),
            "above_base_mb": round((size - base_size) / 1e6, 1)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", type=Path, default=ROOT / "params.yaml")
    parser.add_argument("--images", default=None,
                        help="comma-separated names (serve, pipeline) or `all` (default: images.build)")
    args = parser.parse_args(argv)
    cfg = load_params(args.params).section("images")   # the whole file checked: a bad key is one line
    names = (list(DOCKERFILES) if args.images == "all"
             else args.images.split(",") if args.images else list(cfg["build"]))
    if unknown := sorted(set(names) - set(DOCKERFILES)):
        raise BuildError(f"unknown image(s) {unknown}; choose from {sorted(DOCKERFILES)} or all")
    if missing := [t for t in TOOLS if shutil.which(t) is None]:
        raise BuildError(f"missing {', '.join(missing)}: apt-get install -y buildah podman debootstrap "
                         "(`make images` does it)")
    if os.geteuid() != 0:
        raise BuildError("building images here needs root (debootstrap, buildah's chroot isolation)")
    cache = (args.params.parent / cfg["cache"]).resolve()
    cache.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    if cfg["base"]["image"] == "local":
        base, base_info = local_base(cfg["base"], cache)
        pull = "never"
    else:
        base, pull = cfg["base"]["image"], "missing"
        base_info = {"ref": base, "from": "registry"}
    mounts = pip_mounts(cache)
    built = {name: build(name, cfg[name], base, pull, mounts,
                         extras=cfg["serve_extras"] if name == "serve" else None) for name in names}
    if "serve" in built:
        built["serve"]["extras"] = list(cfg["serve_extras"])
    report = {"date": datetime.now(UTC).isoformat(timespec="seconds"), "machine": platform.node(),
              "cpus": os.cpu_count(), "base": {**base_info, "mb": round(image_bytes(base) / 1e6, 1)},
              "images": built, "seconds": round(time.monotonic() - started, 1)}
    (cache / "build.json").write_text(json.dumps(report, indent=2) + "\n")
    for name, info in built.items():
        print(f"{name}: {info['ref']} {info['mb']} MB ({info['above_base_mb']} MB above the base "
              f"{base}), built in {info['seconds']} s")
    if "serve" in built and built["serve"]["above_base_mb"] > cfg["max_serve_mb"]:
        print(f"note: the serving image is {built['serve']['above_base_mb']} MB above its base, over the "
              f"{cfg['max_serve_mb']} MB budget (images.max_serve_mb; docs/BENCHMARKS.md says where it goes)")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except (BuildError, ParamsError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(1)
