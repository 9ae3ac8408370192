"""The MLflow model registry side: champion lookup, aliases, promotion, rollback and their history.

MLflow keeps no alias history, so every move of `champion` is appended to a JSON trail in the registered
model's tag `champion_history` ({action, version, previous, at, by, reason}). Replaying that trail gives the
stack of champions: `promote` pushes, `rollback` pops, so rolling back twice walks back two promotions, and
a third rollback past the first champion is refused. `previous-champion` always names the version a
rollback would restore.

MLflow tags have no compare-and-set, so every read-move-write of the alias and the trail happens under
`history_lock`: a mutex made of MLflow's one atomic operation, creating a registered model whose name is
taken (`<name>.champion-lock`; a holder that died is broken after `LOCK_TTL_S`). Concurrent promotions from
several machines then serialise and no entry is lost. A move made in the MLflow UI is recorded by the
deployer when its webhook (or poll) sees it (`record_alias_move`), with the time it happened.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import random
import socket
import time
from collections.abc import Iterator
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
MODEL_TAG = "registered_model"   # on a select run: the registered model its gate judged for
REFUSED_TAG = "deploy.refused"   # model-version tag: why the deployer would not serve this version
LOCK_SUFFIX = ".champion-lock"
LOCK_TTL_S = 60.0              # a lock older than this belongs to a dead holder and is broken
LOCK_WAIT_S = 60.0
LOCK_RETRY_S = (0.02, 0.1)     # each retry of the lock sleeps a random time in this range (no lockstep)


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


def lock_age(held: Any, lock: str, now_s: float) -> float:
    """Seconds the lock has been held, from its `since` tag; RegistryError when the tag is not a time."""
    raw = held.tags.get("since")
    try:
        since = float(raw)
    except (TypeError, ValueError):
        since = math.nan
    if not math.isfinite(since):
        raise RegistryError(f"registered model '{lock}': tag since={raw!r} (holder "
                            f"{held.tags.get('holder', '?')}) is not a time, so whether its holder died "
                            f"cannot be told; if no promotion is running, delete '{lock}' in the MLflow UI")
    return now_s - since


def take_lock_once(client: MlflowClient, lock: str, holder: str) -> str | None:
    """One attempt at the lock: None when taken, else why not (the error of the wait if it ends there)."""
    try:
        client.create_registered_model(lock, tags={"holder": holder, "since": repr(time.time())},
                                       description="fashionrec: champion history lock (transient)")
        return None
    except MlflowException as exc:
        if exc.error_code == "RESOURCE_DOES_NOT_EXIST":
            return "released while MLflow read it back"   # taken, then freed while MLflow worded the refusal
        if exc.error_code != "RESOURCE_ALREADY_EXISTS":
            raise
    try:
        held = client.get_registered_model(lock)
    except MlflowException as exc:
        if exc.error_code == "RESOURCE_DOES_NOT_EXIST":
            return "released meanwhile"
        return f"its holder cannot be read ({exc.error_code}: {str(exc)[:200]})"
    age = lock_age(held, lock, time.time())
    if age > LOCK_TTL_S:
        with contextlib.suppress(MlflowException):   # another waiter may have broken it first
            client.delete_registered_model(lock)      # its holder died holding it
        return f"held by {held.tags.get('holder', '?')} for {age:.0f} s: broken as abandoned"
    return f"held by {held.tags.get('holder', '?')} since {age:.1f} s ago"


@contextlib.contextmanager
def history_lock(client: MlflowClient, name: str, wait_s: float = LOCK_WAIT_S) -> Iterator[None]:
    """Hold the champion mutex of `name` (see the module docstring); raise RegistryError after `wait_s`.

    Every failed attempt checks the deadline and then sleeps, whatever made it fail: a lock that stays
    held, one whose `since` tag is not a time, or an MLflow that keeps refusing to read it all end at the
    deadline with the last reason, never in a loop hammering MLflow.
    """
    lock = f"{name}{LOCK_SUFFIX}"
    holder = f"{socket.gethostname()}:{os.getpid()}"
    deadline = time.monotonic() + wait_s
    while True:
        try:
            why = take_lock_once(client, lock, holder)
        except RegistryError as exc:
            why, error = str(exc), exc
        else:
            error = None
        if why is None:
            break
        if time.monotonic() >= deadline:
            raise RegistryError(f"registered model '{name}': champion history lock '{lock}' not taken in "
                                f"{wait_s:g} s: {why}") from error
        time.sleep(random.uniform(*LOCK_RETRY_S))
    try:
        yield
    finally:
        with contextlib.suppress(MlflowException):
            client.delete_registered_model(lock)


def read_champion_history(client: MlflowClient, name: str) -> list[dict[str, Any]]:
    """The champion trail (oldest first) from the registered model's tag."""
    raw = client.get_registered_model(name).tags.get(HISTORY_TAG)
    if not raw:
        return []
    try:
        data = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise RegistryError(f"registered model '{name}': tag {HISTORY_TAG} is not valid JSON ({exc}); "
                            "fix or delete it in the MLflow UI") from exc
    return data if isinstance(data, list) else []


def write_champion_history(client: MlflowClient, name: str, history: list[dict[str, Any]]) -> None:
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


def trail_with_observed(client: MlflowClient, name: str) -> tuple[list[dict[str, Any]], list[str]]:
    """The trail and stack, after recording a champion alias moved outside fashionrec (MLflow UI)."""
    history = read_champion_history(client, name)
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
    with history_lock(client, name):
        return _promote(client, name, version, by, reason)


def _promote(client: MlflowClient, name: str, version: str, by: str, reason: str) -> AliasChange:
    history, stack = trail_with_observed(client, name)
    if stack and stack[-1] == version:
        write_champion_history(client, name, history)
        return AliasChange(name, "promote", version, stack[-2] if len(stack) > 1 else None, False,
                           f"{name} v{version} is already the champion; nothing changed", history)
    previous = stack[-1] if stack else None
    history.append({"action": "promote", "version": version, "previous": previous, "at": now(),
                    "by": by, "reason": reason})
    stack.append(version)
    set_aliases(client, name, stack)
    write_champion_history(client, name, history)
    was = f" (was v{previous}, now previous-champion)" if previous else " (first champion)"
    return AliasChange(name, "promote", version, previous, True, f"{name} v{version} is the champion{was}",
                       history)


def roll_back_champion(client: MlflowClient, name: str, by: str, reason: str) -> AliasChange:
    """Restore the champion before the current one (the previous-champion alias); repeated calls walk
    further back through the promotion trail and stop with a clear error at the first champion."""
    if not model_exists(client, name):
        raise RegistryError(f"registered model '{name}' does not exist: nothing to roll back")
    with history_lock(client, name):
        return _roll_back(client, name, by, reason)


def _roll_back(client: MlflowClient, name: str, by: str, reason: str) -> AliasChange:
    history, stack = trail_with_observed(client, name)
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
    write_champion_history(client, name, history)
    below = f"; previous-champion is now v{stack[-2]}" if len(stack) > 1 else "; no earlier champion remains"
    return AliasChange(name, "rollback", target, stack[-2] if len(stack) > 1 else None, True,
                       f"{name} rolled back from v{current} to v{target}{below}", history)


def trail_summary(history: list[dict[str, Any]]) -> str:
    return ", ".join(f"{e.get('action')} v{e.get('version')}" for e in history[-6:]) or "empty"


def aliases_of(client: MlflowClient, name: str, version: str) -> list[str]:
    return sorted(client.get_model_version(name, version).aliases)


def record_alias_move(client: MlflowClient, name: str, version: str | None, at: str, by: str,
                      reason: str) -> dict[str, Any] | None:
    """Record a champion move made outside fashionrec (MLflow UI), when a webhook or poll reports it.

    Under the lock, and only if the alias still points at `version` and the trail does not already say so
    (a CLI move records itself; its webhook then finds nothing to add). A move back to the version below
    the top is a rollback (the trail pops), anything else a promotion. Returns the entry, or None."""
    with history_lock(client, name):
        current = alias_version(client, name, CHAMPION)
        if current is None or (version is not None and current != str(version)):
            return None
        history = read_champion_history(client, name)
        stack = champion_stack(history)
        if stack and stack[-1] == current:
            return None
        action = "rollback" if len(stack) > 1 and stack[-2] == current else "promote"
        entry = {"action": action, "version": current, "previous": stack[-1] if stack else None, "at": at,
                 "by": by, "reason": reason}
        history.append(entry)
        if action == "rollback":
            stack.pop()
        else:
            stack.append(current)
        write_champion_history(client, name, history)
        if len(stack) > 1:
            client.set_registered_model_alias(name, PREVIOUS, stack[-2])
        return entry


def tag_refusal(client: MlflowClient, name: str, version: str, reason: str | None) -> None:
    """Show on the model version why it is not served (or clear it once it is)."""
    if reason:
        client.set_model_version_tag(name, version, REFUSED_TAG, reason[:4900])
    else:
        with contextlib.suppress(MlflowException):
            client.delete_model_version_tag(name, version, REFUSED_TAG)
