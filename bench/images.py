"""Benchmark: building the container images with buildah (`make images`), cold and cached, and their sizes.

`--cold` first removes what a previous build left here (the images, buildah's cached layers, the
debootstrapped base and its tarball under images.cache), as on a fresh CI machine that already has the apt
packages; then the build runs twice: cold, then again with nothing changed (what a rerun of `make test`
pays). Sizes are the local store's (uncompressed layers), also above the base. Needs root, like the build.

    nice -n 10 .venv/bin/python bench/images.py --cold [--images all]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml
from common import ROOT, Run, table

BUILD = ROOT / "deploy" / "build_images.py"


def forget(cfg: dict[str, Any]) -> None:
    """Remove this project's images, dangling build layers and the cached base (nothing else's)."""
    refs = [cfg["serve"], cfg["pipeline"]]
    listing = subprocess.run(["buildah", "images", "--format", "{{.Name}}:{{.Tag}}"],
                             capture_output=True, text=True).stdout.split()
    refs += [r for r in listing if r.startswith("localhost/fashionrec-base:")]
    for ref in refs:
        subprocess.run(["buildah", "rmi", "-f", ref], capture_output=True)
    subprocess.run(["buildah", "rmi", "--prune"], capture_output=True)
    for tarball in (ROOT / cfg["cache"]).glob("base-*.tar"):
        tarball.unlink()


def build(images: str | None) -> dict[str, Any]:
    started = time.monotonic()
    cmd = [sys.executable, str(BUILD), *(["--images", images] if images else [])]
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    seconds = time.monotonic() - started
    report = json.loads((ROOT / yaml.safe_load((ROOT / "params.yaml").read_text())["images"]["cache"]
                         / "build.json").read_text())
    return {"seconds": round(seconds, 1), **report}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--cold", action="store_true", help="remove cached images, layers and base first")
    ap.add_argument("--images", help="serve (default: images.build), pipeline, or all")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    cfg = yaml.safe_load((ROOT / "params.yaml").read_text())["images"]
    run = Run("images")
    runs = []
    if args.cold:
        forget(cfg)
        runs.append({"build": "cold", **build(args.images)})
    runs.append({"build": "cached", **build(args.images)})
    rows = [{"build": r["build"], "image": name, "seconds": r["seconds"], "base": r["base"]["from"],
             "mb": info["mb"], "above_base_mb": info["above_base_mb"], "base_mb": r["base"]["mb"]}
            for r in runs for name, info in r["images"].items()]
    print(table(rows, ["build", "image", "seconds", "base", "mb", "above_base_mb", "base_mb"]))
    run.save({"runs": rows, "budget_above_base_mb": cfg["max_serve_mb"]}, args.out)


if __name__ == "__main__":
    main()
