"""Helpers for the deploy and serving tests: a generated inventory, real exported models, real servers."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from PIL import Image, ImageDraw

from fashionrec.core.config import Params, load_params
from fashionrec.models.factory import build_model, new_card
from fashionrec.runtime.export import export_onnx

ROOT = Path(__file__).resolve().parents[2]
CATEGORIES = ["t-shirt", "pants", "shoes", "dress"]
TOKEN = "test-admin-token"

# The shared server helpers (free_port, wait_http, stop) live in the top-level conftest; load that file
# by path, since `import conftest` would find whichever conftest pytest imported last.
_spec = importlib.util.spec_from_file_location("fashionrec_tests_conftest", ROOT / "tests" / "conftest.py")
_root = sys.modules.setdefault(_spec.name, importlib.util.module_from_spec(_spec))  # type: ignore[arg-type]
_spec.loader.exec_module(_root)  # type: ignore[union-attr]
free_port, wait_http, stop = _root.free_port, _root.wait_http, _root.stop


def draw_item(path: Path, index: int, seed: int, size: tuple[int, int] = (96, 128)) -> Path:
    """A distinct product-like picture: a coloured garment shape on a plain background."""
    rng = np.random.default_rng(seed * 1000 + index)
    bg = tuple(int(v) for v in rng.integers(180, 256, 3))
    fg = tuple(int(v) for v in rng.integers(0, 200, 3))
    img = Image.new("RGB", size, bg)
    draw = ImageDraw.Draw(img)
    w, h = size
    shape = index % len(CATEGORIES)
    box = [int(w * 0.2), int(h * 0.15), int(w * 0.8), int(h * 0.85)]
    if shape == 0:
        draw.rectangle(box, fill=fg)
        draw.rectangle([int(w * 0.05), box[1], int(w * 0.95), int(h * 0.35)], fill=fg)
    elif shape == 1:
        draw.rectangle([box[0], box[1], int(w * 0.45), box[3]], fill=fg)
        draw.rectangle([int(w * 0.55), box[1], box[2], box[3]], fill=fg)
    elif shape == 2:
        draw.ellipse([box[0], int(h * 0.5), box[2], box[3]], fill=fg)
    else:
        draw.polygon([(w // 2, box[1]), (box[0], box[3]), (box[2], box[3])], fill=fg)
    for _ in range(3):
        x, y = (int(v) for v in rng.integers(0, min(w, h), 2))
        draw.ellipse([x, y, x + 9, y + 9], fill=tuple(int(v) for v in rng.integers(0, 256, 3)))
    img.save(path, quality=92)
    return path


def make_catalog(folder: Path, count: int, seed: int, prefix: str = "item") -> Path:
    """`count` images under folder/images and folder/catalog.csv (relative image paths)."""
    images = folder / "images"
    images.mkdir(parents=True, exist_ok=True)
    lines = ["item_id,image,title,category,attributes"]
    for i in range(count):
        draw_item(images / f"{prefix}{i:03d}.jpg", i, seed)
        category = CATEGORIES[i % len(CATEGORIES)]
        lines.append(f"{prefix}{i:03d},images/{prefix}{i:03d}.jpg,{category.title()} {prefix} {i},{category},"
                     f"{'kids' if i % 3 == 0 else ''}")
    (folder / "catalog.csv").write_text("\n".join(lines) + "\n")
    return folder / "catalog.csv"


def export_model(out_dir: Path, seed: int) -> Path:
    """A real SimpleCNN from the project's factory (seeded, untrained), exported by the project's export."""
    torch.manual_seed(seed)
    card = new_card("simple_cnn", {"arch": "simple_cnn", "size": 32, "hidden": 64, "channels": [8, 16]},
                    CATEGORIES, [*CATEGORIES, "kids"])
    model = build_model(card, pretrained=False).eval()
    path, _ = export_onnx(model, out_dir)
    return path


def write_params(folder: Path, model: Path, catalog: Path | None, **overrides: Any) -> Params:
    """A params.yaml in folder whose index/serve sections point at folder/bundles."""
    tree: dict[str, Any] = yaml.safe_load((ROOT / "params.yaml").read_text())
    index = {**tree["index"], "model": str(model), "catalog": str(catalog) if catalog else None,
             "bundles": "bundles", "summary": "reports/index/summary.json", "recall_queries": 30,
             "smoke_queries": 3, "notify": []}
    serve = {**tree["serve"], "bundles": "bundles", "static_dir": str(ROOT / "serving" / "static"),
             "watch_interval_s": 0.5, "intra_op_threads": 1}
    out = {"seed": 42, "mlflow": tree.get("mlflow", {}), "index": index, "serve": serve}
    for key, value in overrides.items():
        section, name = key.split("__", 1)
        out[section][name] = value
    path = folder / "params.yaml"
    path.write_text(yaml.safe_dump(out))
    return load_params(path)


def start_server(params: Params, log: Path) -> tuple[subprocess.Popen, str]:
    """`fashionrec serve` as a real uvicorn process on a free loopback port (stop it with `stop`)."""
    port = free_port()
    env = {**os.environ, "FASHIONREC_ADMIN_TOKEN": TOKEN, "OMP_NUM_THREADS": "1"}
    fh = open(log, "w")  # noqa: SIM115 - owned by the process for its lifetime
    cmd = [str(Path(sys.executable).with_name("fashionrec")), "serve", "-p", str(params.root / "params.yaml"),
           "--port", str(port)]
    proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env,
                            start_new_session=True, cwd=params.root)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_http(f"{url}/readyz", timeout=120, proc=proc)
    except Exception:
        stop(proc)
        raise RuntimeError(f"server did not become ready; log:\n{log.read_text()[-3000:]}") from None
    return proc, url
