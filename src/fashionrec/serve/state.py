"""The one mutable thing in a server: a reference to the current `ServingState`, swapped whole on reload."""

from __future__ import annotations

import logging
import threading
from pathlib import Path

from fashionrec.deploy.rollout import CURRENT
from fashionrec.errors import FashionrecError
from fashionrec.serve.engine import ServingState, load_state

log = logging.getLogger(__name__)


class StateHolder:
    """Loads the bundle `bundles/current` points at (or one pinned folder) and swaps it in atomically.

    A request reads `holder.state` once and uses that object to the end, so a reload mid-request cannot
    mix versions. Loading happens beside the running state; a bundle that fails to load is refused and the
    old state keeps serving.
    """

    def __init__(self, bundles: Path | None, pinned: Path | None, inventory_root: Path | None,
                 intra_op_threads: int) -> None:
        if bundles is None and pinned is None:
            raise FashionrecError("serve: give a bundles folder or a bundle")
        self.bundles = bundles
        self.pinned = pinned
        self.inventory_root = inventory_root
        self.intra_op_threads = intra_op_threads
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
                new = load_state(target, self.inventory_root, self.intra_op_threads)
            except FashionrecError as exc:
                self.last_error = str(exc)
                log.error("bundle %s refused: %s", target.name, exc)
                raise
            old, self.state = self.state, new
            self.reloads += 1
            self.last_error = None
            log.info("serving bundle %s (model %s), was %s", new.version, new.model_version,
                     old.version if old else None)
            return True
