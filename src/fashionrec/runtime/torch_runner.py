"""The PyTorch side of inference: eager runs of a candidate and the choice between eager and ONNX Runtime.

Only training, evaluation, export and benchmarks import this module; the serving and deploy path runs
ONNX models through `fashionrec.runtime.embed` alone, without torch.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fashionrec.core.errors import TrainingError
from fashionrec.data.images import Preprocessing
from fashionrec.models.base import EmbeddingModel
from fashionrec.runtime.embed import BACKENDS, Embedded, ImageSource, OnnxRunner, embed_images
from fashionrec.runtime.export import export_onnx

log = logging.getLogger(__name__)


def resolve_device(device: str, where: str = "device") -> str:
    """'auto' -> 'cuda' when a GPU is visible, else 'cpu'; a CUDA device asked for on a machine without
    one, or a name torch does not know, raises naming the parameter (`where`)."""
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise TrainingError(f"{where}: '{device}' requested but no CUDA device is available")
    try:
        torch.device(device)
    except RuntimeError as exc:
        raise TrainingError(f"{where}: '{device}' is not a torch device ({exc})") from exc
    return device


class TorchRunner:
    """Eager PyTorch under inference_mode."""

    def __init__(self, model: EmbeddingModel, device: str = "cpu") -> None:
        self.device = torch.device(resolve_device(device))
        self.model = model.to(self.device).eval()
        self.name = f"torch:{self.device.type}"
        self.card = model.card

    def __call__(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        with torch.inference_mode():
            emb, logits = self.model(torch.from_numpy(batch).to(self.device))
        return emb.float().cpu().numpy(), logits.float().cpu().numpy()


def make_runner(model: EmbeddingModel | Any, backend: str = "auto",
                device: str = "cpu") -> TorchRunner | OnnxRunner:
    """A runner for a PyTorch candidate (`torch`, `onnx`, or `auto` = onnx with a torch fallback),
    an ONNX file path/bytes, or an `OnnxSession`."""
    if backend not in BACKENDS:
        raise TrainingError(f"inference backend '{backend}' is unknown; choose one of {', '.join(BACKENDS)}")
    if not isinstance(model, EmbeddingModel):
        return OnnxRunner(model, device=device)
    if backend == "torch":
        return TorchRunner(model, device)
    try:
        with tempfile.TemporaryDirectory(prefix="fashionrec-onnx-") as tmp:
            path, _ = export_onnx(model, Path(tmp))
            runner = OnnxRunner(path.read_bytes(), device=device)
        runner.card = model.card
        return runner
    except Exception as exc:  # export support varies by architecture; eager is always correct
        if backend == "onnx":
            raise TrainingError(
                f"cannot run candidate '{model.card.candidate}' in ONNX Runtime: {exc}") from exc
        log.warning("ONNX export of %s failed (%s); using PyTorch eager", model.card.candidate, exc)
        return TorchRunner(model, device)


def embed_model(model: EmbeddingModel | TorchRunner | OnnxRunner | Any, items: Sequence[ImageSource],
                batch_size: int = 32, device: str = "cpu", *, backend: str = "auto",
                prep: Preprocessing | None = None, **kwargs: Any) -> Embedded:
    """`embed_images` for a PyTorch candidate: runs it through `make_runner(model, backend, device)`
    (its card gives the preprocessing). Runners and ONNX models go to `embed_images` as they are."""
    if isinstance(model, EmbeddingModel):
        if backend not in BACKENDS:
            raise TrainingError(f"inference backend '{backend}' is unknown; "
                                f"choose one of {', '.join(BACKENDS)}")
        prep = prep or model.card.prep
        model = make_runner(model, backend, device)
    return embed_images(model, items, batch_size, device, prep=prep, **kwargs)
