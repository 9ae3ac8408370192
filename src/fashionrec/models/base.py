"""The contract every candidate meets, so evaluation, export and serving treat them alike.

`forward(x)` takes a float NCHW batch normalised as `card.preprocessing` says and returns
`(embedding, logits)`: an L2-normalised embedding (B, D) for the nearest-neighbour index and label
logits (B, len(card.labels)) for multi-label prediction (sigmoid) and category prediction (argmax over
the first len(card.classes) columns).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn

from fashionrec.data.images import Preprocessing


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
    thresholds: dict[str, float] = field(default_factory=dict)   # label -> sigmoid threshold (absent: 0.5)

    def threshold(self, label: str) -> float:
        """The sigmoid threshold of `label`'s multi-label decision."""
        return float(self.thresholds.get(label, 0.5))

    @property
    def prep(self) -> Preprocessing:
        return Preprocessing.from_dict(self.preprocessing)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelCard:
        return cls(**{k: v for k, v in d.items() if k in cls.__dataclass_fields__})


class EmbeddingModel(nn.Module):
    """Base class of all candidates, with the hooks training calls, so the loop never asks which
    architecture it holds. Defaults suit a network trained end to end on cached pixels."""

    card: ModelCard
    #: False for a model fitted in one pass (`fit_once`) instead of by gradient steps
    iterative: bool = True

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:  # pragma: no cover
        raise NotImplementedError

    def training_inputs(self) -> str:
        """What a training step feeds the model: `pixels` (cached eval-time pixels, shift/flip
        augmented), `activations` (cached features of a frozen front, via `forward_cached`) or `images`
        (raw augmented images through a DataLoader)."""
        return "pixels"

    def parameter_sets(self, lr: float, backbone_lr_mult: float) -> list[tuple[list[nn.Parameter], float]]:
        """(trainable parameters, learning rate) pairs; a pretrained backbone may learn more slowly."""
        return [([p for p in self.parameters() if p.requires_grad], lr)]

    def set_train_mode(self, bn_train: bool) -> None:
        """Enter training mode; `bn_train` False keeps pretrained batch-norm statistics frozen."""
        self.train()

    def fit_once(self, embeddings: torch.Tensor, targets: torch.Tensor) -> None:
        """The one-pass fit of a non-iterative model on its embeddings of the training images."""
        raise NotImplementedError(f"{type(self).__name__} trains by gradient steps")

    def after_fit(self, train_pooled: Callable[[], torch.Tensor]) -> None:
        """Called once with the best weights restored; `train_pooled()` gives pooled features of the
        training images, for an embedding fitted after training (centering, PCA)."""
