"""What the routes share: the config, the state holder, metrics, admission, the compute threads and the
decode workers."""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from fashionrec.core.errors import FashionrecError, ServiceUnavailable
from fashionrec.serve.admission import Admission
from fashionrec.serve.config import ServeConfig
from fashionrec.serve.decode_pool import DecodePool
from fashionrec.serve.holder import StateHolder
from fashionrec.serve.metrics import Metrics
from fashionrec.serve.state import ServingState

log = logging.getLogger(__name__)


@dataclass
class ServeContext:
    config: ServeConfig
    holder: StateHolder
    metrics: Metrics
    admission: Admission
    compute: ThreadPoolExecutor
    decoder: DecodePool

    def current(self) -> ServingState:
        """The state to answer from, or 503 `not_ready`."""
        state = self.holder.state
        if state is None:
            raise ServiceUnavailable(f"no bundle loaded yet ({self.holder.last_error})", kind="not_ready",
                                     retry_after_s=max(self.config.retry_after_s, 5))
        return state

    def reload(self, force: bool = False) -> bool:
        """Load what `current` names now (admin reload): counted, and raises BundleError when refused."""
        try:
            changed = self.holder.reload(force)
        except FashionrecError:
            self.metrics.reloads.labels("refused").inc()
            raise
        if changed:
            self._loaded("loaded")
        return changed

    def start(self) -> None:
        """The first load, with the fallback to an intact bundle; never raises (the watcher retries)."""
        try:
            served = self.holder.start()
        except Exception as exc:   # noqa: BLE001 - whatever it is, the server comes up and reports it
            self.holder.record_error(exc)
            self.metrics.reloads.labels("refused").inc()
            log.error("not ready: %s", exc)
            return
        if served:
            self._loaded("fallback" if self.holder.fallback else "loaded")

    def poll(self) -> str:
        """One look by the watcher (see `StateHolder.poll`), counted."""
        outcome = self.holder.poll()
        if outcome == "loaded":
            self._loaded("loaded")
        elif outcome == "refused":
            self.metrics.reloads.labels("refused").inc()
        elif outcome == "error":
            self.metrics.watch_errors.inc()
        return outcome

    def _loaded(self, outcome: str) -> None:
        self.metrics.reloads.labels(outcome).inc()
        if self.holder.state is not None:
            self.metrics.serving(self.holder.state)
