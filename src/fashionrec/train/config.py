"""The training keys of a candidate block (its architecture keys belong to the model's config)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from fashionrec.core.errors import TrainingError
from fashionrec.models.factory import ARCHES, arch_of, config_from_dict, field_names
from fashionrec.models.losses import METRIC_LOSSES

SCHEDULES = ("constant", "cosine", "onecycle")
OPTIMIZERS = ("adam", "adamw")
CLASS_WEIGHTS = ("none", "balanced")
VIEWS = ("center", "hflip", "zoom", "zoom_hflip")
FIT_ON = ("train", "train+validation")
POS_WEIGHTS = ("none", "balanced")
THRESHOLDS = ("fixed", "validation", "prevalence", "carried")
MEMORY_FORMATS = ("contiguous", "channels_last")


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 10
    batch_size: int = 64
    optimizer: str = "adamw"          # adam | adamw
    lr: float = 1e-3
    backbone_lr_mult: float = 1.0     # lr of the pretrained layers relative to the head
    weight_decay: float = 0.01
    schedule: str = "cosine"          # constant | cosine | onecycle (per step)
    warmup_epochs: float = 0.0        # linear warm-up (cosine); onecycle warms up over its pct_start
    pct_start: float = 0.25           # onecycle: share of steps spent warming up
    label_smoothing: float = 0.0
    class_weights: str = "none"       # none | balanced (inverse category frequency per sample)
    ce_weight: float = 0.0            # add softmax CE over the categories to the per-label BCE
    metric_loss: str = "none"         # none | supcon | triplet (on the embedding)
    metric_weight: float = 0.0
    temperature: float = 0.1
    margin: float = 0.2
    patience: int = 3                 # early stopping on validation micro-F1 (epochs without gain)
    min_delta: float = 0.0
    augment: bool = True              # raw images: random resized crop, flip, colour jitter
    crop_scale: tuple[float, float] = (0.35, 1.0)
    color_jitter: float = 0.3
    views: tuple[str, ...] = ("center", "hflip")   # cached inputs: the views computed per image (one
                                      # drawn per step): center | hflip | zoom | zoom_hflip
    zoom: float = 0.8                 # the zoom views keep this share of the eval crop's side
    bn_train: bool = True             # False: the trainable backbone's batch norms keep ImageNet stats
    num_workers: int = 1              # image decoding processes (raw-image training and caches)
    cache_batch_size: int = 32
    # Layout of the convolution weights while training (the saved model is contiguous either way):
    # channels_last lets oneDNN's CPU kernels skip reorders (the same model, a different summation order).
    memory_format: str = "contiguous"   # contiguous | channels_last
    max_steps_per_epoch: int | None = None   # cap (smoke runs of big configs)
    # The final fit: train on train + validation for `epochs` (no early stopping, last weights kept);
    # `epochs_source` must say where that count came from (validation no longer holds anything out).
    fit_on: str = "train"             # train | train+validation
    epochs_source: str | None = None
    # Rare attributes (kids: ~6 % of the photos): BCE positive weight negatives/positives per attribute
    # (balanced), the sigmoid threshold stored with the model (fixed: 0.5; validation: the F1-best one on
    # the validation split; prevalence: the one deciding as many validation photos positive as the
    # attribute's share of train; carried: `carried_thresholds`, chosen on held-out photos by another run,
    # which `thresholds_source` names: a final fit has no held-out photos of its own), and a loss weight
    # per photo carrying an attribute (e.g. {kids: 3.0}).
    attribute_pos_weight: str = "none"   # none | balanced
    attribute_threshold: str = "fixed"   # fixed | validation | prevalence | carried
    carried_thresholds: dict[str, float] | None = None
    thresholds_source: str | None = None
    group_weights: dict[str, float] | None = None

    @property
    def final_fit(self) -> bool:
        return self.fit_on == "train+validation"

    def validate(self, where: str) -> list[str]:
        errors = []

        def check(ok: bool, key: str, why: str) -> None:
            if not ok:
                errors.append(f"{where}.{key}: {getattr(self, key)!r} {why}")

        check(self.epochs >= 0, "epochs", "must be >= 0")
        check(self.batch_size >= 2, "batch_size", "must be >= 2")
        check(self.optimizer in OPTIMIZERS, "optimizer", f"is not one of {list(OPTIMIZERS)}")
        check(self.lr > 0, "lr", "must be positive")
        check(self.backbone_lr_mult >= 0, "backbone_lr_mult", "must be >= 0")
        check(self.weight_decay >= 0, "weight_decay", "must be >= 0")
        check(self.schedule in SCHEDULES, "schedule", f"is not one of {list(SCHEDULES)}")
        check(self.warmup_epochs >= 0, "warmup_epochs", "must be >= 0")
        check(0 < self.pct_start < 1, "pct_start", "must be in (0, 1)")
        check(0 <= self.label_smoothing < 1, "label_smoothing", "must be in [0, 1)")
        check(self.class_weights in CLASS_WEIGHTS, "class_weights", f"is not one of {list(CLASS_WEIGHTS)}")
        check(self.ce_weight >= 0, "ce_weight", "must be >= 0")
        check(self.metric_loss in METRIC_LOSSES, "metric_loss", f"is not one of {list(METRIC_LOSSES)}")
        check(self.metric_weight >= 0, "metric_weight", "must be >= 0")
        check(self.temperature > 0, "temperature", "must be positive")
        check(self.patience >= 1, "patience", "must be >= 1")
        check(len(self.crop_scale) == 2 and 0 < self.crop_scale[0] <= self.crop_scale[1] <= 1,
              "crop_scale", "must be [min, max] with 0 < min <= max <= 1")
        check(0 <= self.color_jitter <= 1, "color_jitter", "must be in [0, 1]")
        check(bool(self.views) and all(v in VIEWS for v in self.views), "views",
              f"must be a non-empty list of {list(VIEWS)}")
        check(0.3 <= self.zoom < 1, "zoom", "must be in [0.3, 1)")
        check(self.num_workers >= 0, "num_workers", "must be >= 0")
        check(self.cache_batch_size >= 1, "cache_batch_size", "must be >= 1")
        check(self.memory_format in MEMORY_FORMATS, "memory_format", f"is not one of {list(MEMORY_FORMATS)}")
        check(self.max_steps_per_epoch is None or self.max_steps_per_epoch >= 1, "max_steps_per_epoch",
              "must be >= 1 or null")
        check(self.fit_on in FIT_ON, "fit_on", f"is not one of {list(FIT_ON)}")
        check(not self.final_fit or bool(self.epochs_source and self.epochs_source.strip()), "epochs_source",
              "must say where `epochs` came from (e.g. the best epoch of a run validated on held-out "
              "photos) when fit_on is train+validation")
        check(self.attribute_pos_weight in POS_WEIGHTS, "attribute_pos_weight",
              f"is not one of {list(POS_WEIGHTS)}")
        check(self.attribute_threshold in THRESHOLDS, "attribute_threshold",
              f"is not one of {list(THRESHOLDS)}")
        check(not (self.final_fit and self.attribute_threshold in ("validation", "prevalence")),
              "attribute_threshold",
              "chooses on photos a final fit (fit_on train+validation) trains on: choose them in a run that "
              "holds validation out and carry them (attribute_threshold: carried, carried_thresholds, "
              "thresholds_source)")
        carried = self.attribute_threshold == "carried"
        check(not carried or bool(self.carried_thresholds), "carried_thresholds",
              "must map each attribute to its threshold when attribute_threshold is carried")
        check(all(0 < t < 1 and math.isfinite(t) for t in (self.carried_thresholds or {}).values()),
              "carried_thresholds", "must be sigmoid thresholds in (0, 1)")
        check(not carried or bool(self.thresholds_source and self.thresholds_source.strip()),
              "thresholds_source", "must say which held-out run chose carried_thresholds")
        check(all(w > 0 and math.isfinite(w) for w in (self.group_weights or {}).values()), "group_weights",
              "must map attribute names to positive weights")
        return errors


def train_config(candidate: str, block: Mapping[str, Any]) -> TrainConfig:
    """Training keys of a candidate block; any key neither the architecture nor training knows is an error."""
    where = f"train.models.{candidate}"
    if not isinstance(block, Mapping):
        raise TrainingError(f"{where}: must be a mapping with an 'arch' key, got {block!r}")
    arch_cls, _ = ARCHES[arch_of(candidate, block)]
    known = {"arch"} | field_names(arch_cls) | field_names(TrainConfig)
    unknown = sorted(set(block) - known)
    if unknown:
        raise TrainingError(f"{where}: unknown key(s) {unknown}; known: {sorted(known)}")
    return config_from_dict(TrainConfig, block, where)
