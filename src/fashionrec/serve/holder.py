"""The one mutable thing in a server: a reference to the current `ServingState`, swapped whole on reload.

Everything that can go wrong with the bundles folder is the server's trouble, never a crash: the pointer
unreadable (a symlink loop, a stale NFS handle), a bundle that fails to load, a folder renamed away from
its manifest version, a real folder where the symlink should be. Each is refused once per state of the
files on disk (`Target.signature`), recorded (`last_error`, `stale_seconds`) and logged; the previous state
keeps serving. At start, a broken `current` falls back to the newest intact bundle.
"""

from __future__ import annotations

import json
import logging
import threading
import time
import weakref
from collections import OrderedDict
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from fashionrec.bundle.format import MANIFEST
from fashionrec.bundle.store import CURRENT, list_versions
from fashionrec.core.errors import BundleError, FashionrecError, IndexUnavailable
from fashionrec.serve.memory import release_memory
from fashionrec.serve.state import ServingState, load_state

log = logging.getLogger(__name__)
RELEASE_WAIT_S = 10.0   # requests that still hold the previous state finish well within this
REFUSALS_KEPT = 32


@dataclass(frozen=True)
class Target:
    """The bundle folder that should be serving, and a signature of its files as they are on disk."""

    folder: Path
    name: str               # what `current` names: the version folder, or "current" for a real folder
    real_folder: bool       # `current` is a copied folder, not a symlink
    signature: tuple


def _signature(folder: Path) -> tuple:
    """Names, sizes, mtimes and inodes of the folder's files: a bundle changed on disk is a new target."""
    try:
        st = folder.stat()
        files = tuple(sorted((p.name, s.st_size, s.st_mtime_ns, s.st_ino)
                             for p in folder.iterdir() for s in (p.stat(),)))
    except OSError as exc:
        raise BundleError(f"bundle folder {folder.name} unreadable ({exc.strerror or exc})") from exc
    return (str(folder), st.st_ino, st.st_mtime_ns, files)


def _manifest_version(folder: Path) -> str | None:
    try:
        return str(json.loads((folder / MANIFEST).read_text())["version"])
    except (OSError, ValueError, KeyError, TypeError):
        return None   # the full load reports what is wrong


class StateHolder:
    """Loads the bundle `bundles/current` points at (or one pinned folder) and swaps it in atomically.

    A request reads `holder.state` once and uses that object to the end, so a reload mid-request cannot
    mix versions. Loading happens beside the running state; a bundle that fails to load is refused and the
    old state keeps serving. After a switch the holder keeps no reference to the previous state: it waits
    for the requests still using it, then hands the freed memory back (two bundles' worth is the peak).
    """

    def __init__(self, bundles: Path | None, pinned: Path | None, inventory_root: Path | None,
                 intra_op_threads: int, allow_spinning: bool = True) -> None:
        if bundles is None and pinned is None:
            raise FashionrecError("serve: give a bundles folder or a bundle")
        self.bundles = bundles
        self.pinned = pinned
        self.inventory_root = inventory_root
        self.intra_op_threads = intra_op_threads
        self.allow_spinning = allow_spinning
        self.state: ServingState | None = None
        self.served: tuple | None = None          # signature of the target the state was loaded from
        self.current_name: str | None = None      # what `current` named at the last look
        self.last_error: str | None = None
        self.last_error_at: float | None = None
        self.behind_since: float | None = None    # since when `current` names something not served
        self.fallback: dict[str, str] | None = None
        self.reloads = 0
        self._refused: OrderedDict[tuple, str] = OrderedDict()
        self._lock = threading.Lock()

    # -- what should be serving ---------------------------------------------------------------------
    def target(self) -> Target | None:
        """The bundle folder that should be serving now (None: no `current` at all)."""
        if self.pinned is not None:
            return Target(self.pinned, self.pinned.name, False, _signature(self.pinned))
        link = self.bundles / CURRENT  # type: ignore[operator]
        try:
            if link.is_symlink():
                folder = link.resolve(strict=True)
                if not folder.is_dir():
                    raise BundleError(f"{CURRENT} -> {folder.name} is not a bundle folder")
                return Target(folder, folder.name, False, _signature(folder))
            if link.is_dir():
                return Target(link, CURRENT, True, _signature(link))
            if link.exists():
                raise BundleError(f"{CURRENT} is neither a symlink nor a bundle folder")
            return None
        except FileNotFoundError as exc:
            raise BundleError(f"{CURRENT} -> {_readlink(link)}: no such bundle folder") from exc
        except RuntimeError as exc:   # Python 3.11's Path.resolve on a symlink loop
            raise BundleError(f"{CURRENT} -> {_readlink(link)}: symlink loop") from exc
        except OSError as exc:        # a loop on 3.13, a stale NFS handle, permissions
            raise BundleError(f"{CURRENT} -> {_readlink(link)}: unreadable ({exc.strerror or exc})") from exc

    # -- loading ------------------------------------------------------------------------------------
    def _load(self, target: Target) -> ServingState:
        version = _manifest_version(target.folder)
        if version is not None and not target.real_folder and version != target.folder.name:
            raise BundleError(f"folder {target.folder.name} holds bundle version {version} (renamed or "
                              "copied under another name); refused: a bundle folder is named by its version")
        state = load_state(target.folder, self.inventory_root, self.intra_op_threads,
                           allow_spinning=self.allow_spinning)
        if target.real_folder:
            log.warning("bundles/%s is a real folder (a copy of bundle %s), not a symlink: serving it; the "
                        "next deploy's switch should replace it with a symlink", CURRENT, state.version)
        return state

    def reload(self, force: bool = False) -> bool:
        """Load the target bundle if it differs from the serving one; True when the state changed.

        Raises BundleError when it is refused (again, without loading, if it was refused before and its
        files have not changed since, unless `force`)."""
        with self._lock:
            target = self._look()
            if target is None:
                raise self._error(BundleError(f"no {CURRENT} bundle in {self.bundles}"))
            if not force and self.served == target.signature:
                return False
            if not force and target.signature in self._refused:
                raise BundleError(self._refused[target.signature])
            try:
                new = self._load(target)
            except IndexUnavailable as exc:   # the engine's trouble, not the bundle's: retried at each look
                self._error(exc)
                log.error("bundle %s not loaded: %s", target.name, exc)
                raise
            except FashionrecError as exc:
                self._refuse(target, exc)
                raise
            self._serve(new, target)
            return True

    def start(self) -> bool:
        """First load. A broken `current` falls back to the newest intact bundle (older ones first:
        the one served before it); True when something serves."""
        try:
            return self.reload() or self.state is not None
        except FashionrecError as exc:
            first = exc
        if self.pinned is not None or self.bundles is None or not (self.bundles / CURRENT).is_symlink():
            raise first
        broken = self.current_name
        versions = list(reversed(list_versions(self.bundles)))
        older = [v for v in versions if broken is None or v < broken]
        for version in [*older, *(v for v in versions if v not in older)]:
            if version == broken:
                continue
            folder = self.bundles / version
            with self._lock:
                try:
                    new = self._load(Target(folder, version, False, _signature(folder)))
                except FashionrecError as exc:
                    log.error("fallback candidate %s refused too: %s", version, exc)
                    continue
                self._serve(new, Target(folder, version, False, _signature(folder)))
                self.fallback = {"from": broken or CURRENT, "to": version, "reason": str(first)}
                self.behind_since = time.time()
                self._error(BundleError(f"{CURRENT} ({broken}) refused: {first}; serving {version}, "
                                        "the newest intact bundle, instead"))
                log.warning("serving %s instead of bundles/current (%s), which was refused: %s",
                            version, broken, first)
                return True
        raise first

    def poll(self) -> str:
        """One look by the watcher: 'unchanged', 'loaded', 'refused' (new refusal), 'known' (refused
        before and unchanged), 'missing' or 'error' (the pointer itself unreadable). Errors are recorded,
        never raised for bundle faults."""
        try:
            target = self._look()
        except BundleError as exc:
            self._behind()
            if str(exc) != self.last_error:   # logged once per distinct error, not at every look
                log.error("bundles/%s unreadable: %s (still serving %s)", CURRENT, exc,
                          self.state.version if self.state else "nothing")
            self._error(exc)
            return "error"
        if target is None:
            if self.state is not None:
                self._behind()
            return "missing"
        if target.signature == self.served:
            self.behind_since = None
            self.fallback = None    # `current` now names what serves (the fallback, or its equal)
            return "unchanged"
        if target.signature in self._refused:
            self._behind()
            return "known"
        try:
            self.reload()
        except FashionrecError:
            self._behind()
            return "refused"
        return "loaded"

    # -- bookkeeping --------------------------------------------------------------------------------
    def _look(self) -> Target | None:
        try:
            target = self.target()
        except BundleError:
            self.current_name = _readlink(self.bundles / CURRENT) if self.bundles else None
            raise
        self.current_name = target.name if target is not None else None
        return target

    def _refuse(self, target: Target, exc: FashionrecError) -> None:
        message = f"bundle {target.name} refused: {exc}"
        self._refused[target.signature] = message
        while len(self._refused) > REFUSALS_KEPT:
            self._refused.popitem(last=False)
        self._error(BundleError(message))
        log.error("%s (still serving %s)", message, self.state.version if self.state else "nothing")

    def _error(self, exc: BaseException) -> BaseException:
        self.last_error = str(exc)
        self.last_error_at = time.time()
        return exc

    def record_error(self, exc: BaseException) -> None:
        """An error the watcher survived (anything, not only the library's)."""
        self._error(exc)
        self._behind()

    def _behind(self) -> None:
        if self.behind_since is None:
            self.behind_since = time.time()

    def stale_seconds(self) -> float | None:
        """How long `current` has named something this server does not serve (None: up to date)."""
        return None if self.behind_since is None else round(time.time() - self.behind_since, 1)

    def status(self) -> dict[str, Any]:
        at = self.last_error_at
        when = datetime.fromtimestamp(at, UTC).isoformat(timespec="seconds") if at else None
        return {"current": self.current_name, "stale_s": self.stale_seconds(), "last_error": self.last_error,
                "last_error_at": when, "fallback": self.fallback}

    # -- the swap -----------------------------------------------------------------------------------
    def _serve(self, new: ServingState, target: Target | None) -> None:
        previous = self._swap(new)
        self.served = target.signature if target is not None else None
        self.reloads += 1
        self.last_error = None
        self.last_error_at = None
        self.behind_since = None
        self.fallback = None
        if previous is not None:
            self._await_release(*previous)
        release_memory()   # the load's transient copies and the previous bundle, back to the OS

    def _swap(self, new: ServingState) -> tuple[str, threading.Event] | None:
        """Serve `new`; return the previous version and an event set once that state is freed."""
        old, self.state = self.state, new
        log.info("bundle %s loaded (model %s, %d items, index %s); serving it, was %s", new.version,
                 new.model_version, new.size, new.index.kind, old.version if old else None)
        if old is None:
            return None
        freed = threading.Event()
        weakref.finalize(old, freed.set)
        return old.version, freed

    @staticmethod
    def _await_release(version: str, freed: threading.Event) -> None:
        """Wait until the requests still answering from the previous state have dropped it."""
        if not freed.wait(RELEASE_WAIT_S):
            release_memory()  # a reference cycle may hold it: collect, then look once more
        if not freed.is_set():
            log.warning("bundle %s is still referenced %.0f s after the switch; its memory stays in use",
                        version, RELEASE_WAIT_S)


def _readlink(link: Path) -> str:
    try:
        return Path(link.readlink()).name
    except OSError:
        return "?"
