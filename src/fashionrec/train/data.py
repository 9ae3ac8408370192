"""Training data: the validated manifest as multi-hot targets per split, image datasets and augmentation.

Targets follow the label vocabulary of dataset.json (`labels` = classes + attributes): category first,
then attributes, so `argmax(logits[:, :len(classes)])` is the category.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from fashionrec.core.errors import TrainingError
from fashionrec.data.images import Preprocessing, open_image
from fashionrec.data.manifest import read_dataset, read_manifest


@dataclass
class Split:
    """One split's images and targets, in manifest order."""

    name: str
    ids: list[str]
    paths: list[str]
    shas: list[str]
    targets: np.ndarray      # (N, L) float32 multi-hot over labels
    category: np.ndarray     # (N,) int64 index into classes

    def __len__(self) -> int:
        return len(self.ids)


@dataclass
class TrainingData:
    classes: list[str]
    labels: list[str]
    train: Split
    validation: Split
    manifest: Path

    @property
    def attributes(self) -> list[str]:
        return self.labels[len(self.classes):]

    def with_validation_in_train(self) -> TrainingData:
        """The final fit's data: validation's photos added to train. Validation stays as it is, for the
        per-epoch scores, which are then no longer held out."""
        t, v = self.train, self.validation
        merged = Split("train+validation", t.ids + v.ids, t.paths + v.paths, t.shas + v.shas,
                       np.concatenate([t.targets, v.targets]), np.concatenate([t.category, v.category]))
        return TrainingData(self.classes, self.labels, merged, v, self.manifest)

    def attribute_shares(self) -> dict[str, float]:
        """{attribute: share of the train photos carrying it}."""
        n = len(self.classes)
        shares = self.train.targets[:, n:].mean(axis=0) if len(self.train) else np.zeros(len(self.attributes))
        return {name: float(v) for name, v in zip(self.attributes, shares, strict=True)}

    def attribute_pos_weight(self) -> tuple[float, ...]:
        """BCE positive weight per label: 1 for the categories, negatives / positives in train for each
        attribute (1 where train has no positive), so a rare attribute's logit is not pushed below 0."""
        n = len(self.classes)
        pos = self.train.targets[:, n:].sum(axis=0)
        ratio = np.where(pos > 0, (len(self.train) - pos) / np.maximum(pos, 1), 1.0)
        return tuple([1.0] * n + [float(r) for r in ratio])

    def check_attributes(self, names: Iterable[str], where: str) -> None:
        """Raises TrainingError naming the `names` that are not attributes of this data."""
        unknown = sorted(set(names) - set(self.attributes))
        if unknown:
            raise TrainingError(f"{where}: {unknown} are not attributes of the data "
                                f"({self.attributes}, dataset.json labels after the classes)")

    def group_weights(self, weights: dict[str, float], where: str) -> np.ndarray:
        """Per-photo loss weight of the train split: the product of `weights[a]` over the attributes `a` a
        photo carries (1 for a photo with none). Raises TrainingError naming an unknown attribute."""
        self.check_attributes(weights, f"{where}.group_weights")
        out = np.ones(len(self.train), np.float32)
        for name, w in weights.items():
            column = self.train.targets[:, self.labels.index(name)] > 0
            out[column] *= np.float32(w)
        return out

    def class_weights(self, power: float = 1.0) -> np.ndarray:
        """Per-category weight ∝ 1/frequency in train, scaled so the mean weight over samples is 1."""
        counts = np.bincount(self.train.category, minlength=len(self.classes)).astype(np.float64)
        w = np.where(counts > 0, 1.0 / np.maximum(counts, 1) ** power, 0.0)
        return (w / (w[self.train.category].mean())).astype(np.float32)


def load_training_data(manifest: Path) -> TrainingData:
    """Train and validation splits of a validated manifest; dataset.json beside it gives the vocabulary.

    Raises TrainingError naming the row or the split when the data cannot train a model: labels outside
    the vocabulary, an empty split, fewer than two categories in train.
    """
    manifest = Path(manifest)
    folder = manifest if manifest.is_dir() else manifest.parent
    df = read_manifest(manifest)
    info = read_dataset(folder)
    classes, labels = list(info.get("classes", [])), list(info.get("labels", []))
    if not classes or labels[: len(classes)] != classes:
        raise TrainingError(f"{folder / 'dataset.json'}: 'labels' must start with the 'classes'")
    if "split" not in df.columns:
        raise TrainingError(f"{manifest}: no 'split' column (train on the subset/validated manifest)")
    index = {name: i for i, name in enumerate(labels)}

    def split(name: str) -> Split:
        rows = df[df["split"] == name]
        if rows.empty:
            raise TrainingError(f"{manifest}: split '{name}' has no images")
        targets = np.zeros((len(rows), len(labels)), np.float32)
        category = np.zeros(len(rows), np.int64)
        for i, row in enumerate(rows.itertuples(index=False)):
            if row.category not in classes:
                raise TrainingError(f"{manifest}: image {row.id}: category '{row.category}' is not in "
                                    f"dataset.json classes {classes}")
            unknown = [lab for lab in row.labels if lab not in index]
            if unknown:
                raise TrainingError(f"{manifest}: image {row.id}: labels {unknown} are not in the "
                                    f"vocabulary {labels}")
            targets[i, [index[lab] for lab in row.labels]] = 1.0
            targets[i, index[row.category]] = 1.0
            category[i] = index[row.category]
        return Split(name, list(rows["id"]), list(rows["abspath"]), list(rows["sha256"]), targets, category)

    data = TrainingData(classes, labels, split("train"), split("validation"), manifest)
    present = np.unique(data.train.category)
    if len(present) < 2:
        raise TrainingError(f"{manifest}: the train split has {len(present)} category; need at least 2")
    return data


# --- images ---------------------------------------------------------------------------------------------


def load_resized(path: str, prep: Preprocessing) -> np.ndarray:
    """Decode and resize/center-crop to uint8 (size, size, 3): the eval-time pixels of one image."""
    return np.array(prep.resize_crop(open_image(path)), dtype=np.uint8)


def to_input(pixels: np.ndarray | torch.Tensor, prep: Preprocessing) -> torch.Tensor:
    """uint8 (..., H, W, 3) pixels -> float (..., 3, H, W) normalised like `prep.normalize`."""
    x = torch.as_tensor(pixels).float().div_(255.0)
    mean = torch.tensor(prep.mean, dtype=torch.float32)
    std = torch.tensor(prep.std, dtype=torch.float32)
    return ((x - mean) / std).movedim(-1, -3).contiguous()


def shift_flip(pixels: torch.Tensor, generator: torch.Generator, max_shift: int,
               rows: slice | None = None, batch: int | None = None) -> torch.Tensor:
    """Cheap augmentation of a uint8 (B, H, W, 3) batch: random mirror and a random shift (edge-padded).

    `pixels` may be rows `rows` of a batch of `batch` images (one rank's slice): the draws are made for
    the whole batch, so every image gets what it would get in one process.
    """
    b, h, w, _ = pixels.shape
    n = b if batch is None else batch
    rows = rows if rows is not None else slice(0, n)
    out = pixels.clone()
    flip = (torch.rand(n, generator=generator) < 0.5)[rows]
    out[flip] = out[flip].flip(2)
    if max_shift > 0:
        padded = torch.nn.functional.pad(out.permute(0, 3, 1, 2).float(), [max_shift] * 4, mode="replicate")
        dy = torch.randint(0, 2 * max_shift + 1, (n,), generator=generator)[rows]
        dx = torch.randint(0, 2 * max_shift + 1, (n,), generator=generator)[rows]
        out = torch.stack([padded[i, :, dy[i]:dy[i] + h, dx[i]:dx[i] + w] for i in range(b)])
        out = out.permute(0, 2, 3, 1).to(torch.uint8)
    return out


class ImageDataset(Dataset):
    """Raw images with optional augmentation (random resized crop, flip, colour jitter) for training."""

    def __init__(self, split: Split, prep: Preprocessing, augment: bool,
                 crop_scale: tuple[float, float] = (0.35, 1.0), color_jitter: float = 0.3) -> None:
        from torchvision import transforms

        self.split, self.prep, self.augment = split, prep, augment
        jitter = [transforms.ColorJitter(color_jitter, color_jitter, color_jitter)] if color_jitter else []
        self.transform = transforms.Compose([
            transforms.RandomResizedCrop(prep.size, scale=tuple(crop_scale)),
            transforms.RandomHorizontalFlip(), *jitter])

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        img = open_image(self.split.paths[i])
        img = self.transform(img) if self.augment else self.prep.resize_crop(img)
        return torch.from_numpy(self.prep.normalize(img)), torch.from_numpy(self.split.targets[i])


class PixelsDataset(Dataset):
    """Eval-time uint8 pixels of a list of images (for filling caches with a DataLoader)."""

    def __init__(self, paths: list[str], prep: Preprocessing) -> None:
        self.paths, self.prep = paths, prep

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> torch.Tensor:
        return torch.from_numpy(load_resized(self.paths[i], self.prep))
