"""Saved candidates: `model.pt` (card + state dict, no pickled classes) and `card.json`, and rebuilding a
candidate from them through the factory."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from fashionrec.core.errors import TrainingError
from fashionrec.models.base import EmbeddingModel, ModelCard
from fashionrec.models.factory import build_model


def save_model(model: EmbeddingModel, out_dir: Path) -> Path:
    """Write `model.pt` (card + state dict, no pickled classes) and `card.json` into out_dir."""
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "model.pt"
    torch.save({"card": model.card.to_dict(), "state_dict": model.state_dict()}, path)
    (out_dir / "card.json").write_text(json.dumps(model.card.to_dict(), indent=2))
    return path


def load_model(path: Path, map_location: str | torch.device = "cpu") -> EmbeddingModel:
    """Rebuild a saved candidate from its card and load its weights (eval mode)."""
    path = Path(path)
    if path.is_dir():
        path = path / "model.pt"
    if not path.is_file():
        raise TrainingError(f"model file not found: {path}")
    blob = torch.load(path, map_location=map_location, weights_only=True)
    card = ModelCard.from_dict(blob["card"])
    model = build_model(card, pretrained=False)
    model.load_state_dict(blob["state_dict"])
    return model.eval()
