"""The one place ONNX Runtime sessions are made (export parity, quantization, registry checks, serving).

Sessions ask for CUDA, then CPU. On a machine without a GPU, onnxruntime-gpu falls back to CPU after one
logged error line; the provider really used is read back from the session, never assumed.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fashionrec.core.errors import FashionrecError

DEFAULT_PROVIDERS: tuple[str, ...] = ("CUDAExecutionProvider", "CPUExecutionProvider")


@dataclass
class OnnxSession:
    """An inference session plus what it really runs on."""

    session: object           # onnxruntime.InferenceSession (kept untyped: imported lazily)
    requested: list[str]
    providers: list[str]      # session.get_providers(): the providers actually in use
    input_name: str
    output_names: list[str]

    @property
    def provider(self) -> str:
        return self.providers[0]

    def run(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        """Run one float32 NCHW batch; returns {output name: array}."""
        feed = {self.input_name: np.ascontiguousarray(batch, np.float32)}
        outputs = self.session.run(self.output_names, feed)
        return dict(zip(self.output_names, outputs, strict=True))


def create_session(model: str | Path | bytes, providers: Sequence[str] = DEFAULT_PROVIDERS,
                   intra_op_threads: int = 0, quiet: bool = True, allow_spinning: bool = True) -> OnnxSession:
    """Open an ONNX model (path or serialized bytes) on the first available of `providers`.

    Providers this onnxruntime build does not know are dropped before asking (CUDA is known to
    onnxruntime-gpu even without a GPU; it then falls back to CPU by itself). `allow_spinning=False`
    puts idle intra-op threads to sleep instead of busy-waiting for the next operator: a server's other
    threads (decoding the next photo) get those cycles.
    """
    import onnxruntime as ort

    if quiet:
        ort.set_default_logger_severity(4)  # else the CUDA fallback logs an error line per session
    available = set(ort.get_available_providers())
    requested = [p for p in providers if p in available] or ["CPUExecutionProvider"]
    options = ort.SessionOptions()
    if intra_op_threads:
        options.intra_op_num_threads = intra_op_threads
    if not allow_spinning:
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    source = model if isinstance(model, bytes) else str(model)
    if not isinstance(model, bytes) and not Path(model).is_file():
        raise FashionrecError(f"ONNX model not found: {model}")
    try:
        session = ort.InferenceSession(source, sess_options=options, providers=requested)
    except Exception as exc:  # ORT raises its own exception types for invalid graphs
        name = "<bytes>" if isinstance(model, bytes) else str(model)
        raise FashionrecError(f"{name}: ONNX Runtime cannot load the model ({exc})") from exc
    return OnnxSession(session=session, requested=requested, providers=list(session.get_providers()),
                       input_name=session.get_inputs()[0].name,
                       output_names=[o.name for o in session.get_outputs()])
