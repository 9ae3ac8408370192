"""The one mutable thing in a server: a reference to the current `ServingState`, swapped whole on reload."""

from __future__ import annotations

import logging
import threading
import weakref
from pathlib import Path

from fashionrec.bundle.store import CURRENT
from fashionrec.core.errors import FashionrecError
from fashionrec.serve.memory import release_memory
from fashionrec.serve.state import ServingState, load_state

log = logging.getLogger(__name__)
RELEASE_WAIT_S = 10.0   # requests that still hold the previous state finish well within this


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
        self.last_error: str | None = None
        self.reloads = 0
        self._lock = threading.Lock()

    def target(self) -> Path | None:
        """The bundle folder that should be serving now."""
        if self.pinned is not None:
            return self.pinned
        link = self.bundles / CURRENT  # type: ignore[operator]
        return link.resolve() if link.is_symlink() else None

    def reload(self, force: bool = False) -> bool:
        """Load the target bundle if it differs from the serving one; True when the state changed."""
        with self._lock:
            target = self.target()
            if target is None:
                self.last_error = f"no current bundle in {self.bundles}"
                raise FashionrecError(self.last_error)
            if not force and self.state is not None and self.state.version == target.name:
                return False
            try:
                new = load_state(target, self.inventory_root, self.intra_op_threads,
                                 allow_spinning=self.allow_spinning)
            except FashionrecError as exc:
                self.last_error = str(exc)
                log.error("bundle %s refused: %s", target.name, exc)
                raise
            previous = self._swap(new)
            self.reloads += 1
            self.last_error = None
            if previous is not None:
                self._await_release(*previous)
            release_memory()   # the load's transient copies and the previous bundle, back to the OS
            return True

    def _swap(self, new: ServingState) -> tuple[str, threading.Event] | None:
        """Serve `new`; return the previous version and an event set once that state is freed."""
        old, self.state = self.state, new
        log.info("serving bundle %s (model %s), was %s", new.version, new.model_version,
                 old.version if old else None)
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
