"""Candidates by architecture: parse a candidate's params block, make its card, build the model.

A candidate block (`train.models.<name>` in params.yaml) holds an `arch` key, the architecture's keys
(the fields of its config dataclass) and training keys (`fashionrec.train.config.TrainConfig`). The card
keeps the whole block, so `load_model` rebuilds exactly the trained network.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from fashionrec.core.errors import TrainingError
from fashionrec.models.base import EmbeddingModel, ModelCard
from fashionrec.models.efficientnet import EfficientNetConfig, EfficientNetLite
from fashionrec.models.pixels import PixelsConfig, PixelsModel
from fashionrec.models.simple_cnn import SimpleCNN, SimpleCNNConfig

ARCHES: dict[str, tuple[type, type[EmbeddingModel]]] = {
    "pixels": (PixelsConfig, PixelsModel),
    "simple_cnn": (SimpleCNNConfig, SimpleCNN),
    "efficientnet": (EfficientNetConfig, EfficientNetLite),
}


def _check_type(value: Any, annotation: str, where: str) -> Any:
    """Coerce a YAML value to a dataclass field's annotated type, or raise naming the field."""
    if value is None:
        if "None" in annotation:
            return None
        raise TrainingError(f"{where}: must not be null")
    base = annotation.replace(" | None", "").strip()
    ok = {
        "bool": lambda v: isinstance(v, bool),
        "int": lambda v: isinstance(v, int) and not isinstance(v, bool),
        "float": lambda v: isinstance(v, int | float) and not isinstance(v, bool),
        "str": lambda v: isinstance(v, str),
    }
    if base.startswith("dict"):
        item = base[base.find(",") + 1:].rstrip("]").strip()   # dict[str, float] -> float
        if not isinstance(value, Mapping) or not all(isinstance(k, str) for k in value):
            raise TrainingError(f"{where}: expected a mapping of names to {item}, got {value!r}")
        if item in ok and not all(ok[item](v) for v in value.values()):
            raise TrainingError(f"{where}: expected a mapping of names to {item}, got {value!r}")
        return {k: float(v) for k, v in value.items()} if item == "float" else dict(value)
    if base.startswith(("tuple", "list")):
        if not isinstance(value, list | tuple):
            raise TrainingError(f"{where}: expected a list, got {value!r}")
        item = base[base.find("[") + 1:].split(",")[0].rstrip("]").strip()   # tuple[float, float] -> float
        if item in ok and not all(ok[item](v) for v in value):
            raise TrainingError(f"{where}: expected a list of {item}, got {value!r}")
        return tuple(float(v) for v in value) if item == "float" else tuple(value)
    if base in ok and not ok[base](value):
        raise TrainingError(f"{where}: expected {base}, got {value!r}")
    return float(value) if base == "float" else value


def config_from_dict(cls: type, data: Mapping[str, Any], where: str) -> Any:
    """Build dataclass `cls` from the keys of `data` it knows (others are ignored), typed and validated."""
    kwargs = {}
    for f in dataclasses.fields(cls):
        if f.name in data:
            kwargs[f.name] = _check_type(data[f.name], str(f.type), f"{where}.{f.name}")
    cfg = cls(**kwargs)
    errors = cfg.validate(where) if hasattr(cfg, "validate") else []
    if errors:
        raise TrainingError("; ".join(errors))
    return cfg


def field_names(cls: type) -> set[str]:
    return {f.name for f in dataclasses.fields(cls)}


def arch_of(candidate: str, block: Mapping[str, Any]) -> str:
    arch = block.get("arch")
    if arch not in ARCHES:
        raise TrainingError(f"train.models.{candidate}.arch: '{arch}' is not one of {sorted(ARCHES)}")
    return arch


def arch_config(candidate: str, block: Mapping[str, Any]) -> Any:
    """The architecture's config dataclass from a candidate block."""
    cls, _ = ARCHES[arch_of(candidate, block)]
    return config_from_dict(cls, block, f"train.models.{candidate}")


def new_card(candidate: str, block: Mapping[str, Any], classes: list[str], labels: list[str]) -> ModelCard:
    """A fresh card for a candidate to be trained on this label vocabulary."""
    cfg = arch_config(candidate, block)
    prep = dataclasses.replace(cfg.preprocessing(), labels=tuple(labels))
    return ModelCard(candidate=candidate, arch=arch_of(candidate, block), classes=list(classes),
                     labels=list(labels), embedding_dim=cfg.output_dim(), preprocessing=prep.to_dict(),
                     config=dict(block))


def build_model(card: ModelCard, pretrained: bool = False) -> EmbeddingModel:
    """The network a card describes; `pretrained` loads ImageNet weights where the architecture has them."""
    cfg = arch_config(card.candidate, card.config)
    _, model_cls = ARCHES[card.arch]
    return model_cls(card, cfg, pretrained=pretrained)
