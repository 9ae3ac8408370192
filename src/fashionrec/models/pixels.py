"""The reference reports' baseline: a downscaled image's raw pixels are its embedding; nothing is trained.

Labels still get logits so label metrics compare with the other candidates, from nearest-centroid rules
fitted in one pass (no gradient): a category's logit is how much closer the image is to that category's
centroid than to the closest other one (so exactly the nearest category is positive); an attribute's
logit is how much closer it is to the centroid of its positive than of its negative training images.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from fashionrec.data.images import Preprocessing
from fashionrec.models.base import EmbeddingModel, ModelCard


@dataclass(frozen=True)
class PixelsConfig:
    size: int = 32                 # images are center-cropped to size x size RGB
    crop_fraction: float = 0.875
    scale: float = 20.0            # logit = scale * margin in cosine similarity

    def validate(self, where: str) -> list[str]:
        errors = []
        if not 4 <= self.size <= 256:
            errors.append(f"{where}.size: {self.size} must be between 4 and 256")
        if not 0.1 <= self.crop_fraction <= 1.0:
            errors.append(f"{where}.crop_fraction: {self.crop_fraction} must be in (0.1, 1]")
        if self.scale <= 0:
            errors.append(f"{where}.scale: must be positive")
        return errors

    def preprocessing(self) -> Preprocessing:
        return Preprocessing(size=self.size, crop_fraction=self.crop_fraction)

    def output_dim(self) -> int:
        return 3 * self.size * self.size


class PixelsModel(EmbeddingModel):
    """Embedding: the flattened, L2-normalised pixels. Logits: per-label nearest-centroid margins."""

    iterative = False

    def __init__(self, card: ModelCard, cfg: PixelsConfig, pretrained: bool = False) -> None:
        super().__init__()
        self.card, self.cfg = card, cfg
        n_labels, dim = len(card.labels), cfg.output_dim()
        self.register_buffer("positive", torch.zeros(n_labels, dim))
        self.register_buffer("negative", torch.zeros(n_labels, dim))

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(x.flatten(1), dim=1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        emb = self.embed(x)
        n = len(self.card.classes)
        pos = emb @ self.positive.T
        cats = pos[:, :n]
        top2 = cats.topk(min(2, n), dim=1).values
        best_other = torch.where(cats >= top2[:, :1], top2[:, -1:], top2[:, :1])
        attrs = pos[:, n:] - emb @ self.negative[n:].T
        # An attribute without positive training images is never predicted (cosines lie in [-1, 1]).
        attrs = torch.where(self.positive[n:].norm(dim=1) > 0, attrs, torch.full_like(attrs, -2.0))
        return emb, self.cfg.scale * torch.cat([cats - best_other, attrs], dim=1)

    @torch.no_grad()
    def fit_once(self, embeddings: torch.Tensor, targets: torch.Tensor) -> None:
        """Set each label's positive/negative centroids (unit length; zero where a side has no image)."""
        t = targets.float()
        for name, weights in (("positive", t), ("negative", 1.0 - t)):
            sums = weights.T @ embeddings
            getattr(self, name).copy_(F.normalize(sums, dim=1))
