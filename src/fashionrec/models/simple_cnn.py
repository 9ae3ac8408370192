"""The reference reports' small CNN, trained from scratch: two conv blocks and a 256-unit dense layer.

conv3x3 -> BN -> ReLU -> maxpool, twice; flatten; dense(hidden) -> BN -> ReLU -> dropout; a linear
multi-label head. The dense layer, L2-normalised, is the embedding.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from fashionrec.data.images import Preprocessing
from fashionrec.models.base import EmbeddingModel, ModelCard


@dataclass(frozen=True)
class SimpleCNNConfig:
    size: int = 64                 # input side (the reports used 64-100 px)
    crop_fraction: float = 0.875
    channels: tuple[int, int] = (32, 64)
    hidden: int = 256
    dropout: float = 0.5

    def validate(self, where: str) -> list[str]:
        errors = []
        if not 16 <= self.size <= 256 or self.size % 4:
            errors.append(f"{where}.size: {self.size} must be a multiple of 4 between 16 and 256")
        if not 0.1 <= self.crop_fraction <= 1.0:
            errors.append(f"{where}.crop_fraction: {self.crop_fraction} must be in (0.1, 1]")
        if len(self.channels) != 2 or any(int(c) < 1 for c in self.channels):
            errors.append(f"{where}.channels: need two positive channel counts, got {list(self.channels)}")
        if self.hidden < 2:
            errors.append(f"{where}.hidden: {self.hidden} must be at least 2")
        if not 0.0 <= self.dropout < 1.0:
            errors.append(f"{where}.dropout: {self.dropout} must be in [0, 1)")
        return errors

    def preprocessing(self) -> Preprocessing:
        return Preprocessing(size=self.size, crop_fraction=self.crop_fraction)

    def output_dim(self) -> int:
        return self.hidden


def conv_block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout),
                         nn.ReLU(inplace=True), nn.MaxPool2d(2))


class SimpleCNN(EmbeddingModel):
    def __init__(self, card: ModelCard, cfg: SimpleCNNConfig, pretrained: bool = False) -> None:
        super().__init__()
        self.card, self.cfg = card, cfg
        c1, c2 = (int(c) for c in cfg.channels)
        self.features = nn.Sequential(conv_block(3, c1), conv_block(c1, c2))
        flat = c2 * (cfg.size // 4) ** 2
        self.dense = nn.Sequential(nn.Linear(flat, cfg.hidden, bias=False), nn.BatchNorm1d(cfg.hidden),
                                   nn.ReLU(inplace=True), nn.Dropout(cfg.dropout))
        self.head = nn.Linear(cfg.hidden, len(card.labels))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.dense(self.features(x).flatten(1))
        return F.normalize(h, dim=1), self.head(h)
