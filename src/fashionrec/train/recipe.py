"""Which candidates a run trains: the recipe of the device, decided once, here.

params.yaml `train.recipes` names the candidates of each recipe: `cpu` (what two cores finish: a cached
frozen front) and `cuda` (every block fine-tuned on raw images). `train.recipe` picks one: `auto` takes
`cuda` where the run has a GPU and `cpu` otherwise, `cpu`/`cuda` force one. `train.candidates`, when set,
is an explicit list that replaces the recipe's (smoke runs, `dvc exp run -S`). Every consumer (the CLI and
DVC through `fashionrec recipe`, select, the KFP compile) calls `resolve_recipe` with its own answer to
"is there a GPU?" (this process: `cuda_present()`; KFP: whether the cluster has a GPU pool), so tests
inject the answer instead of mocking torch.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from fashionrec.core.errors import TrainingError

RECIPES = ("cpu", "cuda")
RECIPE_FILE = "models/recipe.yaml"   # DVC's `vars`: the candidates dvc.yaml's foreach stages train


@dataclass(frozen=True)
class Recipe:
    name: str                    # cpu | cuda: the recipe chosen
    reason: str                  # why, for logs and the run's tags
    candidates: tuple[str, ...]  # what trains (train.candidates when set, else the recipe's)
    explicit: bool               # True: train.candidates named the list

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "reason": self.reason, "candidates": list(self.candidates),
                "explicit": self.explicit}


def cuda_present() -> bool:
    """Whether torch in this process sees a CUDA device (imports torch: pipeline processes only)."""
    import torch

    return bool(torch.cuda.is_available())


def resolve_recipe(train: Mapping[str, Any], cuda_available: bool) -> Recipe:
    """The recipe and candidate list of `train` (the params section) for a run whose GPU answer is
    `cuda_available`. Without `train.recipes` (old params), the list is train.candidates or every model."""
    models = train.get("models") or {}
    recipes = train.get("recipes") or {}
    wanted = str(train.get("recipe") or "auto")
    device = str(train.get("device") or "auto")
    if wanted in RECIPES:
        name, reason = wanted, f"train.recipe: {wanted}"
    elif wanted != "auto":
        raise TrainingError(f"train.recipe: '{wanted}' is not one of {['auto', *RECIPES]}")
    elif device.startswith("cuda") or device == "cpu":
        name = "cuda" if device.startswith("cuda") else "cpu"
        reason = f"train.device: {device}"
    else:
        name = "cuda" if cuda_available else "cpu"
        reason = "auto: CUDA present" if cuda_available else "auto: no CUDA"
    explicit = train.get("candidates")
    if explicit:
        names = [str(n) for n in explicit]
    elif recipes:
        if name not in recipes:
            raise TrainingError(f"train.recipes: no '{name}' recipe ({reason}); recipes: {sorted(recipes)}")
        names = [str(n) for n in recipes[name]]
    else:
        names = [str(n) for n in models]
    where = "train.candidates" if explicit else f"train.recipes.{name}"
    missing = [n for n in names if n not in models]
    if missing:
        raise TrainingError(f"{where}: {missing} have no block in train.models ({sorted(models)})")
    if not names:
        raise TrainingError(f"{where}: no candidates to train")
    return Recipe(name=name, reason=reason, candidates=tuple(names), explicit=bool(explicit))


HEADER = ("# Written by `fashionrec recipe` (make repro runs it) from params.yaml train.recipe/recipes\n"
          "# and this machine's CUDA: dvc.yaml's train@/evaluate@ stages iterate over recipe.candidates.\n"
          "# A record, not configuration (params.yaml is): committed with dvc.lock.\n")


def read_recipe_file(path: Path) -> dict[str, Any] | None:
    """The recipe recorded in `path` (None: no file, or not a recipe file)."""
    if not path.is_file():
        return None
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise TrainingError(f"{path}: not YAML ({exc}); rewrite it with `fashionrec recipe`") from exc
    return data.get("recipe") if isinstance(data, dict) else None


def write_recipe_file(path: Path, recipe: Recipe) -> bool:
    """Record `recipe` in `path` for DVC; True when the candidate list changed (the file was absent or
    listed others: what DVC parsed is stale). Another reason for the same list is rewritten, not stale."""
    before = read_recipe_file(path)
    if before != recipe.to_dict():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(HEADER + yaml.safe_dump({"recipe": recipe.to_dict()}, sort_keys=False))
    return (before or {}).get("candidates") != list(recipe.candidates)


def check_member(candidate: str, recipe: Recipe) -> None:
    """Refuse to train `candidate` outside the resolved recipe (a stale models/recipe.yaml under DVC, or a
    GPU candidate asked for on a CPU machine), saying how to force it."""
    if candidate not in recipe.candidates:
        raise TrainingError(
            f"train {candidate}: not in the {recipe.name} recipe ({recipe.reason}): "
            f"{list(recipe.candidates)}. DVC: run `fashionrec recipe` (make repro does) and `dvc repro` "
            f"again; by hand: force it with --set train.recipe=<cpu|cuda> or "
            f"--set train.candidates=[{candidate}]")
