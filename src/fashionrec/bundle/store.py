"""The bundles folder: version numbers, locks, writing a new bundle (under a temporary name, renamed into
place, files made read-only), the `current` pointer and the activation history."""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import re
import secrets
import shutil
import socket
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from fashionrec.bundle.format import (
    EMBEDDINGS,
    FORMAT,
    GRAPH,
    ITEMS,
    MANIFEST,
    MODEL,
    PREP,
    SUMS,
    VERSION_RE,
)
from fashionrec.bundle.items import ItemTable, write_items
from fashionrec.core.errors import BundleError
from fashionrec.core.files import sha256_file
from fashionrec.index import NeighbourIndex

log = logging.getLogger(__name__)

CURRENT, HISTORY = "current", "history.json"


@contextlib.contextmanager
def bundles_lock(bundles_dir: Path) -> Iterator[None]:
    """An exclusive lock on the bundles folder: version numbers, the pointer and pruning change under it."""
    bundles_dir.mkdir(parents=True, exist_ok=True)
    with open(bundles_dir / ".lock", "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


@contextlib.contextmanager
def deploy_lock(bundles_dir: Path, wait_s: float = 0.0) -> Iterator[None]:
    """One deploy at a time per bundles folder. Without `wait_s` a second concurrent deploy fails at once,
    cleanly; a reconcile waits (it reads what to deploy only once it holds the lock, so queueing cannot
    activate a stale model). The lock dies with its process (flock), so a killed deploy never blocks.

    Whoever holds it is the only writer of the folder, so every temporary file there is abandoned: they are
    removed on taking it (PIDs would not tell, pods sharing a ReadWriteMany volume do not share PIDs)."""
    bundles_dir.mkdir(parents=True, exist_ok=True)
    with open(bundles_dir / ".deploy.lock", "a+") as fh:
        deadline = time.monotonic() + wait_s
        while True:
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() < deadline:
                    time.sleep(0.05)
                    continue
                fh.seek(0)
                holder = fh.read().strip() or "another process"
                raise BundleError(f"{bundles_dir}: another deploy is in progress ({holder}); "
                                  "nothing was changed, try again when it has finished") from None
        try:
            fh.truncate(0)
            fh.write(f"pid {os.getpid()} on {socket.gethostname()}")
            fh.flush()
            for name in remove_abandoned(bundles_dir):
                log.warning("removed %s: left by a deploy that died mid-way", name)
            yield
        finally:
            fh.truncate(0)
            fcntl.flock(fh, fcntl.LOCK_UN)


def list_versions(bundles_dir: Path) -> list[str]:
    """Complete bundle folders, oldest first."""
    if not bundles_dir.is_dir():
        return []
    names = [p.name for p in bundles_dir.iterdir()
             if p.is_dir() and not p.is_symlink() and VERSION_RE.match(p.name)]
    return sorted(names, key=lambda n: int(VERSION_RE.match(n).group(1)))  # type: ignore[union-attr]


@dataclass
class BundleContent:
    """Everything a bundle holds, before it is written."""

    model_file: Path
    preprocessing: dict[str, Any]
    model_version: str
    model_uri: str
    embeddings: np.ndarray
    items: Any                       # ITEM_COLUMNS by name (a DataFrame, an ItemTable), `image` relative to
                                     # inventory_root (or a URL)
    inventory_root: str | None
    index_kind: str
    index_params: dict[str, Any]
    index: NeighbourIndex | None     # None: an index outside the bundle (kind milvus), made by `prepare`
    index_report: dict[str, Any] = field(default_factory=dict)
    parent: str | None = None
    embedded: int = 0                # how many items this build embedded (the rest came from `parent`)
    skipped: list[dict[str, str]] = field(default_factory=list)
    source: dict[str, Any] = field(default_factory=dict)   # what it was built from: catalog and settings
    embedded_with: str | None = None  # sha256 of the model file that made `embeddings` (None: model_file)
    precision: str = "fp32"          # fp32 | int8: of model_file, which serves the queries too
    precision_reason: str = ""
    # Called with the new version before the manifest is written (kind milvus: builds the version's
    # collection); its dict joins the manifest's index section (e.g. the collection's name).
    prepare: Callable[[str], dict[str, Any]] | None = None


# what deploys write under a temporary name (older versions suffixed a PID, these a random token)
TEMP_NAMES = re.compile(r"\.(?:tmp-v\d+-\d{8}T\d{6}Z-|current-|history\.json\.)[0-9a-f]+")


def temp_name(prefix: str, sep: str = "-") -> str:
    """`.<prefix><sep><random>`: unique across pods sharing the folder (a PID is not)."""
    return f".{prefix}{sep}{secrets.token_hex(6)}"


def remove_abandoned(bundles_dir: Path) -> list[str]:
    """Delete every temporary file a deploy leaves while writing (`.tmp-<version>-*` folders, `.current-*`
    pointers, `.history.json.*`): only call it holding `deploy_lock` (`deploy_lock` does, on taking it), when
    no other deploy can be writing, so whatever is there was left by one that died."""
    removed = []
    for path in bundles_dir.iterdir():
        if not TEMP_NAMES.fullmatch(path.name):
            continue
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
        removed.append(path.name)
    return sorted(removed)


def _next_version(bundles_dir: Path, now: datetime) -> str:
    taken = [int(VERSION_RE.match(n).group(1)) for n in list_versions(bundles_dir)]  # type: ignore[union-attr]
    pending = [int(m.group(1)) for p in bundles_dir.glob(".tmp-v*")
               if (m := re.match(r"\.tmp-v(\d+)", p.name))]
    return f"v{max([0, *taken, *pending]) + 1:04d}-{now:%Y%m%dT%H%M%SZ}"


def write_bundle(bundles_dir: Path, content: BundleContent) -> Path:
    """Write a new bundle version and return its folder (never overwrites one)."""
    items = ItemTable.from_columns(content.items)
    n = len(items)
    if content.embeddings.shape[0] != n:
        raise BundleError(f"{n} items but {content.embeddings.shape[0]} embeddings")
    now = datetime.now(UTC)
    with bundles_lock(bundles_dir):
        version = _next_version(bundles_dir, now)
        tmp = bundles_dir / temp_name(f"tmp-{version}")
        tmp.mkdir()
    try:
        shutil.copyfile(content.model_file, tmp / MODEL)
        (tmp / PREP).write_text(json.dumps(content.preprocessing, indent=2))
        np.save(tmp / EMBEDDINGS, np.ascontiguousarray(content.embeddings, np.float32), allow_pickle=False)
        write_items(tmp / ITEMS, items)
        if content.index_kind == "hnsw":
            content.index.save(tmp / GRAPH)  # type: ignore[attr-defined]
        prepared = content.prepare(version) if content.prepare is not None else {}
        # every file hashed once, here: the manifest, SHA256SUMS and the model check reuse these digests
        checksums = {name: {"sha256": sha256_file(tmp / name), "bytes": (tmp / name).stat().st_size}
                     for name in sorted(p.name for p in tmp.iterdir())}
        model_sha = checksums[MODEL]["sha256"]
        if content.embedded_with is not None and content.embedded_with != model_sha:
            raise BundleError(f"the embeddings were made by model sha256 {content.embedded_with[:12]}… but "
                              f"the bundle's model {content.model_file} is {model_sha[:12]}…: inventory and "
                              "queries must come from one model (never fp32 embeddings with int8 queries)")
        categories = dict(sorted(Counter(items.category).items()))
        manifest = {
            "format": FORMAT, "version": version, "created_at": now.isoformat(timespec="seconds"),
            "model": {"version": content.model_version, "uri": content.model_uri,
                      "sha256": checksums[MODEL]["sha256"], "precision": content.precision,
                      "precision_reason": content.precision_reason},
            "embeddings": {"model_sha256": model_sha, "precision": content.precision},
            "index": {"kind": content.index_kind, "params": content.index_params, **content.index_report,
                      **prepared},
            "items": {"count": n, "dim": int(content.embeddings.shape[1]),
                      "categories": {str(k): int(v) for k, v in categories.items()},
                      "inventory_root": content.inventory_root,
                      "missing": len(content.skipped)},   # catalog items left out: listed in `skipped`
            "source": content.source, "parent": content.parent, "embedded": content.embedded,
            "skipped": content.skipped,
            "files": checksums,
        }
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2))
        digests = {name: c["sha256"] for name, c in checksums.items()}
        digests[MANIFEST] = sha256_file(tmp / MANIFEST)
        sums = [f"{digests[name]}  {name}" for name in sorted(digests)]
        (tmp / SUMS).write_text("\n".join(sums) + "\n")
        for p in tmp.iterdir():
            p.chmod(0o444)
        final = bundles_dir / version
        os.rename(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


def current_version(bundles_dir: Path) -> str | None:
    link = bundles_dir / CURRENT
    return os.readlink(link) if link.is_symlink() else None


def set_current(bundles_dir: Path, version: str) -> None:
    """Point `current` at version by renaming a fresh symlink over it: readers see old or new, never none."""
    tmp = bundles_dir / temp_name("current")
    os.symlink(version, tmp)
    try:
        os.replace(tmp, bundles_dir / CURRENT)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _valid_activations(data: Any, path: Path) -> dict[str, Any]:
    """{"stack": [version, ...], "log": [{action, version, ...}, ...]}, or BundleError naming the field."""
    if not isinstance(data, dict):
        raise BundleError(f"{path}: expected an object with 'stack' and 'log', got {type(data).__name__}; "
                          f"delete the file to rebuild it from the bundles' manifests")
    stack, entries = data.get("stack", []), data.get("log", [])
    if not isinstance(stack, list) or not all(isinstance(v, str) for v in stack):
        raise BundleError(f"{path}: field 'stack' must be a list of bundle versions, got {stack!r:.200}")
    if not isinstance(entries, list) or not all(isinstance(e, dict) and "action" in e for e in entries):
        raise BundleError(f"{path}: field 'log' must be a list of objects with an 'action'")
    return {"stack": stack, "log": entries}


def rebuild_activations(bundles_dir: Path) -> dict[str, Any]:
    """The activation stack as the kept bundles say it was: every complete bundle up to the current one,
    oldest first (their manifests' version order), the current one on top."""
    versions = list_versions(bundles_dir)
    current = current_version(bundles_dir)
    stack = versions[: versions.index(current) + 1] if current in versions else versions
    if current is None:
        return {"stack": [], "log": []}   # nothing went live yet
    return {"stack": stack, "log": [{"action": "rebuilt", "version": current,
                                     "at": datetime.now(UTC).isoformat(timespec="seconds"),
                                     "from": "bundle manifests"}]}


def read_activations(bundles_dir: Path) -> dict[str, Any]:
    """`history.json`: which bundles went live, in order (the stack a bundle rollback pops) and the log.

    Missing, empty or `[]` (an older or interrupted writer): rebuilt from the bundles' manifests. Any other
    shape is refused with the field at fault."""
    path = bundles_dir / HISTORY
    if not path.is_file():
        return rebuild_activations(bundles_dir)
    text = path.read_text()
    if not text.strip():
        return rebuild_activations(bundles_dir)
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise BundleError(f"{path}: unreadable deploy history ({exc}); delete the file to rebuild it from "
                          "the bundles' manifests") from exc
    if data == [] or data == {}:
        return rebuild_activations(bundles_dir)
    return _settle(_valid_activations(data, path), current_version(bundles_dir))


def _settle(history: dict[str, Any], current: str | None) -> dict[str, Any]:
    """The history as it really went: a switch is recorded before `current` moves, so a deploy killed in
    between leaves a last entry whose bundle never served (`current` still its `previous`). That entry is
    marked `"switched": false` and the stack put back as it was."""
    if not history["log"]:
        return history
    last, stack = history["log"][-1], history["stack"]
    version = last.get("version")
    if (last.get("action") not in ("activate", "restore") or version is None or current == version
            or last.get("previous") != current or last.get("switched") is False):
        return history
    last["switched"] = False
    if stack and stack[-1] == version:
        if current is None or (len(stack) >= 2 and stack[-2] == current):
            stack.pop()                      # it had pushed
        else:
            stack.append(current)            # it had popped back (a rollback): the one serving returns
    return history


def write_activations(bundles_dir: Path, history: dict[str, Any]) -> None:
    """Durable replace: temp file, fsync, rename over, fsync the folder (a crash leaves old or new)."""
    path = bundles_dir / HISTORY
    _valid_activations(history, path)
    tmp = bundles_dir / temp_name(HISTORY, ".")
    try:
        with open(tmp, "w") as fh:
            fh.write(json.dumps(history, indent=2))
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)   # a full disk leaves nothing behind
        raise
    _fsync_dir(bundles_dir)
