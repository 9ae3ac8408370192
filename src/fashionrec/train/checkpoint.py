"""Resumable training state: written atomically after every epoch to `.cache/checkpoints/<candidate>/`.

A checkpoint holds everything the next epoch depends on (weights, optimizer, schedule, RNG states, the
best weights so far, history, early-stopping counter, MLflow run id) and a fingerprint of the candidate's
config and data, so resuming continues exactly where an uninterrupted run would be, and refuses to mix a
checkpoint with a changed config or dataset.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fashionrec.core.errors import TrainingError

LAST = "last.pt"


def fingerprint(*parts: Any) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def rng_state() -> dict[str, Any]:
    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def save_checkpoint(directory: Path, state: dict[str, Any]) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / LAST
    tmp = directory / (LAST + ".tmp")
    torch.save({**state, "rng": rng_state()}, tmp)
    os.replace(tmp, path)
    return path


def load_checkpoint(directory: Path, expected_fingerprint: str) -> dict[str, Any]:
    """The last checkpoint, or a TrainingError saying why it cannot be resumed."""
    path = directory / LAST
    if not path.is_file():
        raise TrainingError(f"--resume: no checkpoint at {path} (train without --resume first)")
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:
        raise TrainingError(f"{path}: unreadable checkpoint ({type(exc).__name__}: {exc})") from exc
    if state.get("fingerprint") != expected_fingerprint:
        raise TrainingError(f"{path}: written for a different config or dataset (fingerprint "
                            f"{state.get('fingerprint')} != {expected_fingerprint}); train without --resume")
    return state
