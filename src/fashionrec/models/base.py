"""The contract every candidate meets, so evaluation, export and serving treat them alike.

`forward(x)` takes a float NCHW batch normalised as `card.preprocessing` says and returns
`(embedding, logits)`: an L2-normalised embedding (B, D) for the nearest-neighbour index and label
logits (B, len(card.labels)) for multi-label prediction (sigmoid) and category prediction (argmax over
the first len(card.classes) columns).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from fashionrec.data.images import Preprocessing
from fashionrec.errors import TrainingError


@dataclass
class ModelCard:
    """What a saved model is: enough to rebuild it and to preprocess its inputs."""

    candidate: str                      # name in params (e.g. efficientnet_lite0)
    arch: str                           # pixels | simple_cnn | efficientnet
    classes: list[str]                  # categories: the first len(classes) logits
    labels: list[str]                   # classes + attributes (e.g. kids): all logits
    embedding_dim: int
    preprocessing: dict[str, Any]
    config: dict[str, Any] = field(default_factory=dict)   # the candidate's params, to rebuild it
    extra: dict[str, Any] = field(default_factory=dict)    # training facts: epochs run, best val F1...

    @property
    def prep(self) -> Preprocessing:
        return Preprocessing.from_dict(self.preprocessing)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelCard:
        return cls(**{k: v for k, v in d.items() if k in cls.__dataclass_fields__})


class EmbeddingModel(nn.Module):
    """Base class of all candidates."""

    card: ModelCard

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:  # pragma: no cover
        raise NotImplementedError


def save_model(model: EmbeddingModel, out_dir: Path) -> Path:
    """Write `model.pt` (card + state dict, no pickled classes) and `card.json` into out_dir."""
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "model.pt"
    torch.save({"card": model.card.to_dict(), "state_dict": model.state_dict()}, path)
    (out_dir / "card.json").write_text(json.dumps(model.card.to_dict(), indent=2))
    return path


def load_model(path: Path, map_location: str | torch.device = "cpu") -> EmbeddingModel:
    """Rebuild a saved candidate from its card and load its weights (eval mode)."""
    from fashionrec.models.factory import build_model

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
