"""Prepare the catalog split for bench/gpu_recipe.sh, here on the CPU: `.gpu/data.tar`, small enough to
travel to a GPU machine (the device tool carries 64 MiB per call; the weight wheels travel in another call).

Every photo of the source is centre-cropped to a square, resized to `--side` pixels (260: Lite2's native
input, so no candidate sees an upsampled photo) and re-encoded at the highest JPEG quality that keeps the
tar under `--max-mb`; then `fashionrec ingest`, `subset catalog` and `validate catalog` run on that copy
with their outputs under .gpu/data (the product's split rules, params.yaml, unchanged). Every candidate on
the GPU trains on exactly these images (crop_fraction 1.0), so their figures compare with each other, not
with the CPU table of docs/BENCHMARKS.md (full-size photos).

Usage: python bench/gpu_data.py [--side 260] [--max-mb 58]
"""

from __future__ import annotations

import argparse
import io
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

from common import ROOT
from PIL import Image

from fashionrec.core.config import load_params
from fashionrec.data.source import resolve_source


def shrink(src: Path, dst: Path, side: int, quality: int) -> int:
    """Copy the source dataset (images.csv, top10-splits.csv, images/) with every photo as a side x side
    centre crop at `quality`; returns the bytes of the images written."""
    (dst / "images").mkdir(parents=True, exist_ok=True)
    for name in ("images.csv", "top10-splits.csv"):
        shutil.copy2(src / name, dst / name)
    total = 0
    for path in sorted((src / "images").iterdir()):
        with Image.open(path) as img:
            img = img.convert("RGB")
            short = min(img.size)
            left, top = (img.width - short) // 2, (img.height - short) // 2
            img = img.crop((left, top, left + short, top + short)).resize((side, side), Image.BICUBIC)
            buf = io.BytesIO()
            img.save(buf, "JPEG", quality=quality)
        (dst / "images" / path.name).write_bytes(buf.getvalue())
        total += buf.tell()
    return total


def stages(work: Path, overrides: list[str]) -> Path:
    """ingest, subset catalog and validate catalog on the shrunk copy (params.yaml plus `overrides`);
    returns the data folder."""
    data = work / "data"
    sets = {
        "ingest": ["ingest.source=" + str(work / "source"), "ingest.out=" + str(data / "manifest"),
                   "ingest.additions=null"],
        "subset": ["subset.manifest=" + str(data / "manifest" / "manifest.parquet"),
                   "subset.out=" + str(data / "subset")],
        "validate": ["validate.subset=" + str(data / "subset"), "validate.out=" + str(data / "validated"),
                     "validate.reports=" + str(work / "reports")],
    }
    for step, extra in (("ingest", []), ("subset", ["catalog"]), ("validate", ["catalog"])):
        cmd = [sys.executable, "-m", "fashionrec.cli", step, *extra, "-p", str(ROOT / "params.yaml")]
        for s in [*sets[step], *overrides]:
            cmd += ["-s", s]
        done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
        if done.returncode:
            raise SystemExit(f"{step} failed:\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}")
    return data


def pack(work: Path, data: Path) -> Path:
    """data/{subset,validated}/catalog as .gpu/data.tar, paths relative to .gpu (the manifests' are)."""
    out = work / "data.tar"
    with tarfile.open(out, "w") as tar:
        for part in ("subset/catalog", "validated/catalog"):
            tar.add(data / part, arcname=f"data/{part}")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--side", type=int, default=260, help="square side in pixels (Lite2's input: 260)")
    ap.add_argument("--max-mb", type=float, default=58.0, help="largest tar (MiB) that may travel")
    ap.add_argument("--qualities", type=int, nargs="+", default=[75, 65, 55, 45, 35],
                    help="JPEG qualities tried, best first, until the tar fits")
    ap.add_argument("--work", type=Path, default=ROOT / ".gpu")
    ap.add_argument("--source", type=Path, default=None, help="dataset folder (default: ingest.shared_path)")
    ap.add_argument("--set", "-s", dest="sets", action="append", default=[],
                    help="params override for the three stages (a smoke run on a small dataset)")
    args = ap.parse_args()
    params = load_params(ROOT / "params.yaml")
    ingest = params.section("ingest")
    source = args.source or resolve_source(ingest["source"], shared_path=params.path(ingest["shared_path"]),
                                           download_url=None, download_dir=None).path
    for quality in args.qualities:
        shutil.rmtree(args.work / "source", ignore_errors=True)
        shutil.rmtree(args.work / "data", ignore_errors=True)
        shrink(source, args.work / "source", args.side, quality)
        tar = pack(args.work, stages(args.work, args.sets))
        mb = tar.stat().st_size / 2**20
        print(f"side {args.side} quality {quality}: {tar} {mb:.1f} MiB")
        if mb <= args.max_mb:
            return
    raise SystemExit(f"no quality in {args.qualities} fits {args.max_mb} MiB: lower --side")


if __name__ == "__main__":
    main()
