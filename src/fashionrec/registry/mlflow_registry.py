"""The MLflow model registry side: champion lookup, aliases, promotion, rollback and their history.

MLflow keeps no alias history, so every move of `champion` made here is appended to a JSON trail in the
registered model's tag `champion_history` ({action, version, previous, at, by, reason}). Replaying that
trail gives the stack of champions: `promote` pushes, `rollback` pops, so rolling back twice walks back two
promotions, and a third rollback past the first champion is refused. `previous-champion` always names the
version a rollback would restore. A champion moved by hand in the MLflow UI is noticed (the alias differs
from the trail) and recorded as an `observed` entry before anything else happens.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from fashionrec.core.errors import RegistryError
from fashionrec.registry.gate import Champion

CHAMPION, CHALLENGER, PREVIOUS = "champion", "challenger", "previous-champion"
HISTORY_TAG = "champion_history"
HISTORY_LIMIT = 200            # entries kept in the tag (each ~150 bytes; the tag holds 100 kB)
METRIC_PREFIX = "metric."      # model-version tags holding the flattened evaluation metrics
GATE_TAG = "gate.passed"


@dataclass
class AliasChange:
    """What promote/rollback did; `to_dict()` is printed by the CLI."""

    name: str
    action: str
    champion: str | None
    previous_champion: str | None
    changed: bool
    message: str
    history: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def alias_version(client: MlflowClient, name: str, alias: str) -> str | None:
    """The version an alias points at, or None when the alias (or the registered model) does not exist."""
    try:
        return str(client.get_model_version_by_alias(name, alias).version)
    except MlflowException as exc:
        if exc.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE", "NOT_FOUND"):
            return None
        raise


def model_exists(client: MlflowClient, name: str) -> bool:
    try:
        client.get_registered_model(name)
        return True
    except MlflowException as exc:
        if exc.error_code == "RESOURCE_DOES_NOT_EXIST":
            return False
        raise


def metrics_from_tags(tags: dict[str, str]) -> dict[str, float]:
    """Model-version tags `metric.<dotted>` -> {dotted: float}; unparsable values are skipped."""
    out: dict[str, float] = {}
    for key, value in tags.items():
        if key.startswith(METRIC_PREFIX):
            try:
                out[key[len(METRIC_PREFIX):]] = float(value)
            except ValueError:
                continue
    return out


def get_champion(client: MlflowClient, name: str) -> Champion | None:
    """The champion version with the metrics it was registered with, or None when there is none yet."""
    if not model_exists(client, name):
        return None
    version = alias_version(client, name, CHAMPION)
    if version is None:
        return None
    mv = client.get_model_version(name, version)
    return Champion(version=version, metrics=metrics_from_tags(mv.tags), candidate=mv.tags.get("candidate"))


def read_history(client: MlflowClient, name: str) -> list[dict[str, Any]]:
    raw = client.get_registered_model(name).tags.get(HISTORY_TAG)
    if not raw:
        return []
    try:
        data = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise RegistryError(f"registered model '{name}': tag {HISTORY_TAG} is not valid JSON ({exc}); "
                            "fix or delete it in the MLflow UI") from exc
    return data if isinstance(data, list) else []


def write_history(client: MlflowClient, name: str, history: list[dict[str, Any]]) -> None:
    client.set_registered_model_tag(name, HISTORY_TAG, json.dumps(history[-HISTORY_LIMIT:]))


def champion_stack(history: list[dict[str, Any]]) -> list[str]:
    """Replay the trail: promotions (and observed UI moves) push a version, rollbacks pop one."""
    stack: list[str] = []
    for event in history:
        version = str(event.get("version"))
        if event.get("action") == "rollback":
            if stack:
                stack.pop()
            if not stack or stack[-1] != version:  # a trail trimmed at HISTORY_LIMIT: trust the event
                stack.append(version)
        elif not stack or stack[-1] != version:
            stack.append(version)
    return stack


def reconcile(client: MlflowClient, name: str) -> tuple[list[dict[str, Any]], list[str]]:
    """The trail and stack, after recording a champion alias moved outside fashionrec (MLflow UI)."""
    history = read_history(client, name)
    stack = champion_stack(history)
    current = alias_version(client, name, CHAMPION)
    if current is not None and (not stack or stack[-1] != current):
        history.append({"action": "observed", "version": current, "previous": stack[-1] if stack else None,
                        "at": now(), "by": "unknown (alias moved outside fashionrec, e.g. MLflow UI)",
                        "reason": "champion alias found where the trail did not put it"})
        stack.append(current)
    return history, stack


def set_aliases(client: MlflowClient, name: str, stack: list[str]) -> None:
    """champion = top of the stack, previous-champion = the one below (deleted when there is none)."""
    client.set_registered_model_alias(name, CHAMPION, stack[-1])
    if len(stack) > 1:
        client.set_registered_model_alias(name, PREVIOUS, stack[-2])
    elif alias_version(client, name, PREVIOUS) is not None:
        client.delete_registered_model_alias(name, PREVIOUS)


def require_version(client: MlflowClient, name: str, version: str) -> Any:
    try:
        return client.get_model_version(name, str(version))
    except MlflowException as exc:
        raise RegistryError(f"registered model '{name}' has no version {version!r} "
                            f"({exc.error_code})") from exc


def promote(client: MlflowClient, name: str, version: str | int, by: str, reason: str,
            force: bool = False) -> AliasChange:
    """Make `version` the champion; the old champion becomes previous-champion. Refuses a version whose
    gate failed (tag gate.passed != true) unless `force`."""
    version = str(version)
    if not model_exists(client, name):
        raise RegistryError(f"registered model '{name}' does not exist: register a model first")
    mv = require_version(client, name, version)
    if mv.tags.get(GATE_TAG) != "true" and not force:
        raise RegistryError(f"{name} v{version} has no passed gate decision (tag {GATE_TAG}="
                            f"{mv.tags.get(GATE_TAG)!r}); use --force to promote it anyway")
    history, stack = reconcile(client, name)
    if stack and stack[-1] == version:
        write_history(client, name, history)
        return AliasChange(name, "promote", version, stack[-2] if len(stack) > 1 else None, False,
                           f"{name} v{version} is already the champion; nothing changed", history)
    previous = stack[-1] if stack else None
    history.append({"action": "promote", "version": version, "previous": previous, "at": now(),
                    "by": by, "reason": reason})
    stack.append(version)
    set_aliases(client, name, stack)
    write_history(client, name, history)
    was = f" (was v{previous}, now previous-champion)" if previous else " (first champion)"
    return AliasChange(name, "promote", version, previous, True, f"{name} v{version} is the champion{was}",
                       history)


def rollback(client: MlflowClient, name: str, by: str, reason: str) -> AliasChange:
    """Restore the champion before the current one (the previous-champion alias); repeated calls walk
    further back through the promotion trail and stop with a clear error at the first champion."""
    if not model_exists(client, name):
        raise RegistryError(f"registered model '{name}' does not exist: nothing to roll back")
    history, stack = reconcile(client, name)
    if not stack:
        raise RegistryError(f"{name} has no champion: nothing to roll back")
    if len(stack) < 2:
        raise RegistryError(f"{name} v{stack[-1]} is the first recorded champion: there is no earlier "
                            f"champion to roll back to (trail: {trail_summary(history)})")
    current, target = stack[-1], stack[-2]
    require_version(client, name, target)
    history.append({"action": "rollback", "version": target, "previous": current, "at": now(), "by": by,
                    "reason": reason})
    stack.pop()
    set_aliases(client, name, stack)
    write_history(client, name, history)
    below = f"; previous-champion is now v{stack[-2]}" if len(stack) > 1 else "; no earlier champion remains"
    return AliasChange(name, "rollback", target, stack[-2] if len(stack) > 1 else None, True,
                       f"{name} rolled back from v{current} to v{target}{below}", history)


def trail_summary(history: list[dict[str, Any]]) -> str:
    return ", ".join(f"{e.get('action')} v{e.get('version')}" for e in history[-6:]) or "empty"


def aliases_of(client: MlflowClient, name: str, version: str) -> list[str]:
    return sorted(client.get_model_version(name, version).aliases)
