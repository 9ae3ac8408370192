"""What a training step feeds the model, per architecture and mode.

- `pixels`: nothing to iterate (its centroids are fitted in one pass over cached pixels);
- `simple_cnn`: cached eval-time pixels, augmented per batch by a random mirror and shift;
- `efficientnet` `frozen`/`finetune`: cached activations of the frozen front, one view drawn per image
  and step (center crop or its mirror);
- `efficientnet` `full`: raw images through a DataLoader with random resized crop, flip, colour jitter.

Every source yields (inputs, targets, indices, global batch size) batches in an order fixed by a generator
seeded per epoch, so a resumed run sees the same batches as an uninterrupted one. Under DDP each rank gets
its slice of every global batch (`rank`), so all ranks take the same number of steps.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

from fashionrec.core.errors import TrainingError
from fashionrec.data.images import Preprocessing
from fashionrec.models.base import EmbeddingModel
from fashionrec.models.efficientnet import EfficientNetLite
from fashionrec.train.config import TrainConfig
from fashionrec.train.data import ImageDataset, Split, TrainingData, shift_flip, to_input
from fashionrec.train.distributed import SINGLE, Rank, rank_slice
from fashionrec.train.features import backbone_features, cached_pixels

Batch = tuple[torch.Tensor, torch.Tensor, torch.Tensor, int]   # x, y, indices, size of the global batch
ValBatch = tuple[torch.Tensor, torch.Tensor]


@dataclass
class ArrayInputs:
    """Inputs held in memory: uint8 pixels (N, H, W, 3) or float16 activations (N, views, ...).

    For activations, `train_views` are the view indices drawn from in training and `center_view` the
    view index of the eval-time crop.
    """

    train_x: torch.Tensor
    train_y: torch.Tensor
    val_x: torch.Tensor
    val_y: torch.Tensor
    kind: str                         # pixels | activations
    prep: Preprocessing
    max_shift: int = 0
    train_views: tuple[int, ...] = (0,)
    center_view: int = 0

    def n_train(self) -> int:
        return len(self.train_x)

    def train_batches(self, generator: torch.Generator, batch_size: int,
                      rank: Rank = SINGLE) -> Iterator[Batch]:
        order = torch.randperm(len(self.train_x), generator=generator)
        for start in range(0, len(order), batch_size):
            idx = order[start:start + batch_size]
            if len(idx) < max(2, rank.world_size):   # batch norm needs two samples; every rank one
                continue
            mine = rank_slice(len(idx), rank)
            x = self.train_x[idx[mine]]
            if self.kind == "pixels":
                x = to_input(shift_flip(x, generator, self.max_shift, mine, len(idx)), self.prep)
            else:
                pick = torch.randint(0, len(self.train_views), (len(idx),), generator=generator)[mine]
                x = x[torch.arange(len(x)), torch.tensor(self.train_views)[pick]].float()
            yield x, self.train_y[idx[mine]], idx[mine], len(idx)

    def forward(self, model: EmbeddingModel, x: torch.Tensor,
                views: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """Outputs for a batch of pixels or activations; `views`: (N, V, ...) averaged over V."""
        if self.kind == "pixels":
            return model(x)
        if views:
            n, v = x.shape[:2]
            return model.head(model.cached_pooled(x.flatten(0, 1)).view(n, v, -1).mean(dim=1))
        return model.head(model.cached_pooled(x))

    @torch.no_grad()
    def train_pooled(self, model: EfficientNetLite, device: torch.device) -> torch.Tensor:
        """Pooled features of the eval-time crop of every training image (eval mode)."""
        model.eval()
        x = self.train_x[:, self.center_view]
        return torch.cat([model.cached_pooled(x[i:i + 128].float().to(device)).float().cpu()
                          for i in range(0, len(x), 128)])

    def val_batches(self, batch_size: int, rank: Rank = SINGLE) -> Iterator[ValBatch]:
        """Validation batches of the rank's part; activations keep their views axis (see
        `forward(..., views=True)`)."""
        part = rank_slice(len(self.val_x), rank)
        for start in range(part.start, part.stop, batch_size):
            end = min(start + batch_size, part.stop)
            x = self.val_x[start:end]
            x = to_input(x, self.prep) if self.kind == "pixels" else x.float()
            yield x, self.val_y[start:end]


@dataclass
class ImageInputs:
    """Raw images decoded per step by DataLoader workers (augmented for training)."""

    train: ImageDataset
    val: ImageDataset
    num_workers: int

    def n_train(self) -> int:
        return len(self.train)

    def train_batches(self, generator: torch.Generator, batch_size: int,
                      rank: Rank = SINGLE) -> Iterator[Batch]:
        # Workers seed their transforms from the loader's generator: same epoch seed, same augmentations
        # (each rank its own stream). A rank's loader reads only its slices of the global batches.
        seed = int(torch.randint(0, 2**62, (1,), generator=generator)) + rank.rank
        loader_gen = torch.Generator().manual_seed(seed)
        order = torch.randperm(len(self.train), generator=generator).tolist()
        full_only = len(order) > batch_size
        batches = [order[start:start + batch_size] for start in range(0, len(order), batch_size)]
        batches = [b for b in batches
                   if (len(b) == batch_size or not full_only) and len(b) >= rank.world_size]
        mine = [b[rank_slice(len(b), rank)] for b in batches]
        loader = DataLoader(self.train, batch_sampler=mine, num_workers=self.num_workers,
                            generator=loader_gen, pin_memory=torch.cuda.is_available())
        for (x, y), idx, whole in zip(loader, mine, batches, strict=True):
            yield x, y, torch.tensor(idx), len(whole)

    def forward(self, model: EmbeddingModel, x: torch.Tensor,
                views: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        return model(x)

    def val_batches(self, batch_size: int, rank: Rank = SINGLE) -> Iterator[ValBatch]:
        part = rank_slice(len(self.val), rank)
        yield from DataLoader(torch.utils.data.Subset(self.val, range(part.start, part.stop)),
                              batch_size=batch_size, num_workers=self.num_workers)

    @torch.no_grad()
    def train_pooled(self, model: EfficientNetLite, device: torch.device) -> torch.Tensor:
        """Pooled features of the eval-time crop of every training image (eval mode)."""
        model.eval()
        plain = ImageDataset(self.train.split, self.train.prep, augment=False)
        return torch.cat([model.pooled(x.to(device)).float().cpu()
                          for x, _ in DataLoader(plain, batch_size=64, num_workers=self.num_workers)])


def make_inputs(model: EmbeddingModel, data: TrainingData, cfg: TrainConfig, cache_dir: Path,
                device: torch.device) -> ArrayInputs | ImageInputs:
    prep = model.card.prep
    ty, vy = torch.from_numpy(data.train.targets), torch.from_numpy(data.validation.targets)
    kind = model.training_inputs()
    if kind == "images":
        return ImageInputs(
            ImageDataset(data.train, prep, cfg.augment, tuple(cfg.crop_scale), cfg.color_jitter),
            ImageDataset(data.validation, prep, augment=False), cfg.num_workers)
    if kind == "activations":
        def acts(split: Split, views: tuple[str, ...]) -> torch.Tensor:
            return torch.from_numpy(backbone_features(model, split, views, cache_dir, device,
                                                      cfg.cache_batch_size, cfg.num_workers, cfg.zoom))

        # Validation sees the center crop, plus its mirror when the model averages both (tta_flip).
        val_views = ("center", "hflip") if model.cfg.tta_flip else ("center",)
        views = tuple(dict.fromkeys(["center", *cfg.views, *val_views]))
        train_x = acts(data.train, views)
        val_x = acts(data.validation, views)[:, [views.index(v) for v in val_views]]
        return ArrayInputs(train_x, ty, val_x, vy, "activations", prep,
                           train_views=tuple(views.index(v) for v in cfg.views), center_view=0)
    if kind != "pixels":
        raise TrainingError(f"{model.card.candidate}: unknown training inputs '{kind}'")
    max_shift = prep.size // 8 if cfg.augment else 0
    return ArrayInputs(torch.from_numpy(cached_pixels(data.train, prep, cache_dir, cfg.num_workers)), ty,
                       torch.from_numpy(cached_pixels(data.validation, prep, cache_dir, cfg.num_workers)), vy,
                       "pixels", prep, max_shift)


def as_numpy(t: torch.Tensor) -> np.ndarray:
    return t.detach().float().cpu().numpy()
