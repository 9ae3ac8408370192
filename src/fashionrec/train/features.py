"""Content-addressed caches of per-image arrays, so reruns skip decoding and frozen backbone passes.

Each cache lives in `.cache/features/<kind>-<hash of its spec>/` with one `.npy` per image named by the
image file's sha256: a change of preprocessing, backbone, split point or views gives a new folder, a
changed image a new file, and a different subset reuses every image it shares. Writes are atomic
(temporary file, then rename) so an interrupted fill leaves no partial entry.

On CPU the frozen part of EfficientNet runs through ONNX Runtime (several times faster than eager
PyTorch on 2 cores); on CUDA through PyTorch under autocast.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from fashionrec.data.images import Preprocessing
from fashionrec.models.efficientnet import EfficientNetLite, weights_file
from fashionrec.train.data import PixelsDataset, Split, to_input


def spec_key(spec: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(spec, sort_keys=True, default=str).encode()).hexdigest()[:16]


class FeatureCache:
    """Per-image arrays keyed by image content hash, under a folder keyed by `spec`."""

    def __init__(self, root: Path, kind: str, spec: dict[str, Any]) -> None:
        self.dir = Path(root) / f"{kind}-{spec_key(spec)}"
        self.dir.mkdir(parents=True, exist_ok=True)
        spec_file = self.dir / "spec.json"
        if not spec_file.exists():
            spec_file.write_text(json.dumps(spec, indent=2, sort_keys=True, default=str))

    def path(self, sha: str) -> Path:
        return self.dir / sha[:2] / f"{sha}.npy"

    def _write(self, sha: str, arr: np.ndarray) -> None:
        path = self.path(sha)
        path.parent.mkdir(exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
        with os.fdopen(fd, "wb") as fh:
            np.save(fh, arr)
        os.replace(tmp, path)

    def fetch(self, shas: list[str], compute: Callable[[list[int]], Any],
              desc: str = "cache") -> np.ndarray:
        """Stack the arrays of `shas`, computing missing ones with one `compute(indices)` call.

        `compute` yields (index, array) pairs for the indices it is given; each is written at once, so
        memory is bounded by the generator's batch, and one call keeps its decoding workers running from
        the first image to the last (a call per chunk stalled on each new worker's first batch).
        """
        missing = [i for i, sha in enumerate(shas) if not self.path(sha).is_file()]
        if missing:
            with tqdm(total=len(missing), desc=desc, unit="img", leave=False) as bar:
                for i, arr in compute(missing):
                    self._write(shas[i], arr)
                    bar.update(1)
        return np.stack([np.load(self.path(sha)) for sha in shas])


def _pixel_batches(paths: list[str], prep: Preprocessing, batch_size: int,
                   num_workers: int) -> DataLoader:
    return DataLoader(PixelsDataset(paths, prep), batch_size=batch_size, num_workers=num_workers,
                      shuffle=False, persistent_workers=False)


def cached_pixels(split: Split, prep: Preprocessing, root: Path, num_workers: int = 1) -> np.ndarray:
    """uint8 (N, size, size, 3) eval-time pixels of a split (decoded once, then read from the cache)."""
    cache = FeatureCache(root, "pixels", {"prep": prep.to_dict() | {"labels": []}, "format": 1})

    def compute(indices: list[int]):
        loader = _pixel_batches([split.paths[i] for i in indices], prep, 64, num_workers)
        pos = 0
        for batch in loader:
            for arr in batch.numpy():
                yield indices[pos], arr
                pos += 1

    return cache.fetch(split.shas, compute, desc=f"decode {split.name}")


class FrozenFront(nn.Module):
    """The frozen part of a candidate: trunk up to its split block, or the pooled features if all frozen."""

    def __init__(self, model: EfficientNetLite) -> None:
        super().__init__()
        self.model, self.split = model, model.split

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.split >= len(self.model.blocks):
            return self.model.pooled(x)
        return self.model.trunk(x, self.split)


def _front_runner(model: EfficientNetLite, device: torch.device, onnx_path: Path,
                  batch_size: int) -> Callable[[torch.Tensor], np.ndarray]:
    """float NCHW batch -> float16 numpy activations of the frozen front (ORT on CPU, torch on CUDA)."""
    front = FrozenFront(model).eval()
    if device.type == "cuda":
        front = front.to(device)

        def run_torch(x: torch.Tensor) -> np.ndarray:
            with torch.inference_mode(), torch.autocast("cuda", dtype=torch.float16):
                return front(x.to(device, non_blocking=True)).half().cpu().numpy()

        return run_torch
    from fashionrec.runtime.session import create_session

    if not onnx_path.is_file():
        tmp = onnx_path.with_suffix(".tmp")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(front, torch.zeros(2, 3, model.cfg.input_size, model.cfg.input_size), str(tmp),
                              input_names=["x"], output_names=["y"], opset_version=17, dynamo=False,
                              dynamic_axes={"x": {0: "batch"}, "y": {0: "batch"}})
        os.replace(tmp, onnx_path)
    session = create_session(onnx_path, providers=["CPUExecutionProvider"],
                             intra_op_threads=torch.get_num_threads())

    def run_onnx(x: torch.Tensor) -> np.ndarray:
        return session.run(x.numpy())["y"].astype(np.float16)

    return run_onnx


def view_of(x: torch.Tensor, view: str, zoom: float) -> torch.Tensor:
    """One view of a batch of eval crops (N, 3, S, S): `center` itself, `hflip` its mirror image, `zoom`
    its central `zoom` x `zoom` part resized back to S x S (a closer framing, as a random crop gives),
    `zoom_hflip` that one mirrored."""
    if view.startswith("zoom"):
        size = x.shape[-1]
        side = max(1, round(size * zoom))
        lo = (size - side) // 2
        x = torch.nn.functional.interpolate(x[..., lo:lo + side, lo:lo + side], size=(size, size),
                                            mode="bilinear", align_corners=False, antialias=True)
    return x.flip(3).contiguous() if view.endswith("hflip") else x


def backbone_features(model: EfficientNetLite, split: Split, views: tuple[str, ...], root: Path,
                      device: torch.device, batch_size: int = 32, num_workers: int = 1,
                      zoom: float = 0.8) -> np.ndarray:
    """float16 (N, len(views), ...) activations of the frozen front for each view of each image
    (`view_of`: center, hflip, zoom, zoom_hflip)."""
    prep = model.card.prep
    weights = Path(weights_file(model.cfg.variant))
    spec = {"variant": model.cfg.variant, "size": prep.size, "crop_fraction": prep.crop_fraction,
            "split": model.split, "pooled": model.split >= len(model.blocks), "views": list(views),
            "weights": f"{weights.name}:{weights.stat().st_size}", "format": 1,
            **({"zoom": zoom} if any(v.startswith("zoom") for v in views) else {})}
    cache = FeatureCache(root, f"efficientnet-{model.cfg.variant}", spec)
    state: dict[str, Callable] = {}

    def compute(indices: list[int]):
        if "run" not in state:
            state["run"] = _front_runner(model, device, cache.dir / "front.onnx", batch_size)
        loader = _pixel_batches([split.paths[i] for i in indices], prep, batch_size, num_workers)
        pos = 0
        for pixels in loader:
            x = to_input(pixels, prep)
            outs = [state["run"](view_of(x, view, zoom)) for view in views]
            for arr in np.stack(outs, axis=1):
                yield indices[pos], arr
                pos += 1

    return cache.fetch(split.shas, compute, desc=f"backbone {split.name}")
