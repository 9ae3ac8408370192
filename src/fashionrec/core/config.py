"""Pipeline parameters: `params.yaml` nested by stage, plus `key.path=value` overrides from the CLI.

Paths inside params are relative to the folder of the params file, so that `dvc repro`, the CLI and the
tests resolve them the same way whatever the working directory.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from fashionrec.core.errors import ParamsError
from fashionrec.core.settings import ParamsTree, check, section_defaults

DEFAULT_SEED = 42   # `seed` in params.yaml; what a step uses when its params carry none


@dataclass(frozen=True)
class Params:
    """The whole parameter tree and the folder its relative paths are resolved against."""

    tree: dict[str, Any]
    root: Path

    def section(self, name: str) -> dict[str, Any]:
        """One stage's parameters (a copy, so callers may not mutate the tree); a key the file omits takes
        the typed section's default (`fashionrec.core.settings`, the one set of defaults)."""
        if name not in self.tree or not isinstance(self.tree[name], Mapping):
            raise ParamsError(f"params: missing section '{name}'")
        return {**section_defaults(name), **copy.deepcopy(dict(self.tree[name]))}

    def get(self, dotted: str, default: Any = None) -> Any:
        node: Any = self.tree
        for part in dotted.split("."):
            if not isinstance(node, Mapping) or part not in node:
                return default
            node = node[part]
        return copy.deepcopy(node)

    def path(self, value: str | Path) -> Path:
        """Resolve a params path against the project root (absolute paths are kept)."""
        p = Path(value).expanduser()
        return p if p.is_absolute() else (self.root / p)


def set_dotted(tree: dict[str, Any], dotted: str, value: Any) -> None:
    """Set `a.b.c` in a nested dict, creating intermediate mappings."""
    parts = dotted.split(".")
    node = tree
    for part in parts[:-1]:
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        if not isinstance(child, dict):
            raise ParamsError(f"override '{dotted}': '{part}' is not a section")
        node = child
    node[parts[-1]] = value


def dotted_leaves(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """{'a': {'b': 1}} -> {'a.b': 1}: the dotted leaves of a nested mapping (the inverse of set_dotted)."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(dotted_leaves(value, f"{dotted}."))
        else:
            flat[dotted] = value
    return flat


def numeric_leaves(tree: Mapping[str, Any]) -> dict[str, float]:
    """The numeric dotted leaves as floats ({'test': {'micro_f1': 0.9}} -> {'test.micro_f1': 0.9}): metrics
    as the gate compares them, MLflow and KFP log them; non-numeric leaves (and booleans) are dropped."""
    return {name: float(value) for name, value in dotted_leaves(tree).items()
            if isinstance(value, int | float) and not isinstance(value, bool)}


def parse_override(text: str) -> tuple[str, Any]:
    """`train.epochs=3` -> ('train.epochs', 3); the value is parsed as YAML (lists, null, numbers)."""
    if "=" not in text:
        raise ParamsError(f"override '{text}' must look like key.path=value")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key or any(not part for part in key.split(".")):
        raise ParamsError(f"override '{text}': empty key")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as exc:
        raise ParamsError(f"override '{text}': value is not valid YAML ({exc})") from exc
    return key, value


def load_params(path: str | Path = "params.yaml", overrides: Iterable[str] = (),
                values: Mapping[str, Any] | None = None) -> Params:
    """Read a params file, apply overrides (`key=yaml` texts, then `{key: value}`) in order and check the
    result (`fashionrec.core.settings`)."""
    path = Path(path).expanduser().resolve()
    if not path.is_file():
        raise ParamsError(f"params file not found: {path}")
    try:
        tree = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ParamsError(f"{path}: not valid YAML ({exc})") from exc
    if not isinstance(tree, dict):
        raise ParamsError(f"{path}: top level must be a mapping of stages")
    for text in overrides:
        key, value = parse_override(text)
        set_dotted(tree, key, value)
    for key, value in (values or {}).items():   # typed values (CLI flags): no round trip through text
        set_dotted(tree, key, value)
    check_tree(tree)
    return Params(tree=tree, root=path.parent)


def check_tree(tree: Mapping[str, Any]) -> None:
    """Refuse a params tree with an unknown key, a wrongly typed value or one out of range, before any work
    starts (one `ParamsError` line naming the dotted key)."""
    check(ParamsTree, tree)
