"""Prometheus collectors in the app's own registry (two apps in one process never collide)."""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector

from fashionrec.serve.state import ServingState


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter("fashionrec_requests_total", "HTTP requests", ["route", "method", "status"],
                                registry=self.registry)
        self.latency = Histogram("fashionrec_request_seconds", "Request latency", ["route"],
                                 buckets=(.005, .01, .02, .03, .05, .075, .1, .2, .5, 1, 2, 5),
                                 registry=self.registry)
        self.errors = Counter("fashionrec_errors_total", "Error responses by type", ["type"],
                              registry=self.registry)
        self.reloads = Counter("fashionrec_reloads_total", "Bundle reloads", ["outcome"],
                               registry=self.registry)
        self.watch_errors = Counter("fashionrec_watch_errors_total",
                                    "Errors the bundle watcher survived (pointer unreadable, load failed)",
                                    registry=self.registry)
        self.bundle = Gauge("fashionrec_bundle_info", "The serving bundle",
                            ["model_version", "index_version"], registry=self.registry)
        self.items = Gauge("fashionrec_inventory_items", "Items in the serving index", registry=self.registry)
        self.stale = Gauge("fashionrec_bundle_stale_seconds",
                           "How long bundles/current has named a bundle this server does not serve",
                           registry=self.registry)
        self.admitted = Gauge("fashionrec_recommend_in_flight", "/recommend requests running or queued",
                              registry=self.registry)
        ProcessCollector(registry=self.registry)  # process_resident_memory_bytes: the RSS budget, watched

    def serving(self, state: ServingState) -> None:
        self.bundle.clear()
        self.bundle.labels(state.model_version, state.version).set(1)
        self.items.set(state.size)

    def watch(self, stale_seconds: Callable[[], float | None], in_flight: Callable[[], int]) -> None:
        """Read the holder's staleness and the admission count at each scrape."""
        self.stale.set_function(lambda: stale_seconds() or 0.0)
        self.admitted.set_function(in_flight)
