"""Kind milvus at activation: the fleet alias follows the live bundle, old collections go with their bundles.

A bundle's collection is built before its bundle is written (`deploy.build.collection_builder`); here, at
`go_live`: a kept bundle's collection is loaded again before it goes back live (load state is not kept
across a Milvus restart), the fleet alias (`index.milvus.alias`) moves to the live bundle's collection after
the `current` switch, and the collections of bundles no longer kept are dropped, never one an alias names.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from fashionrec.bundle.format import MANIFEST
from fashionrec.bundle.store import list_versions
from fashionrec.core.errors import IndexUnavailable
from fashionrec.index.milvus import MilvusSettings, MilvusStore

log = logging.getLogger(__name__)


def collection_of(folder: Path) -> tuple[str, MilvusSettings] | None:
    """(collection, settings) of a milvus bundle, None for an in-process kind."""
    try:
        spec = json.loads((folder / MANIFEST).read_text())["index"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if spec.get("kind") != "milvus" or not spec.get("collection"):
        return None
    return str(spec["collection"]), MilvusSettings.from_mapping(spec.get("milvus"))


def ready_to_serve(folder: Path) -> None:
    """Before a kept milvus bundle goes back live: its collection exists and is loaded (else it raises
    IndexUnavailable naming the URI, and nothing is switched)."""
    found = collection_of(folder)
    if found is None:
        return
    name, settings = found
    store = MilvusStore(settings)
    try:
        if not store.call(f"has_collection {name}", store.client.has_collection, name):
            raise IndexUnavailable(f"Milvus at {settings.uri}: collection {name} of bundle {folder.name} "
                                   "is gone; deploy it again (`fashionrec deploy --rebuild`)")
        store.ensure_loaded(name, wait_s=settings.build_timeout_s)
    finally:
        store.close()


def discard(folder: Path) -> None:
    """Drop the collection of a bundle that will never serve (its smoke test failed), best effort."""
    found = collection_of(folder)
    if found is None:
        return
    name, settings = found
    try:
        store = MilvusStore(settings)
        try:
            store.call(f"drop_collection {name}", store.client.drop_collection, name)
        finally:
            store.close()
    except IndexUnavailable as exc:
        log.warning("collection %s of refused bundle %s not dropped: %s", name, folder.name, exc)


def follow(bundles_dir: Path, live: str) -> dict[str, Any] | None:
    """After `current` names `live`: move the fleet alias to its collection and drop the collections of
    bundles no longer kept (never one an alias names). The bundle is live whatever happens here: a failure
    is reported in the result (and the alias still names the previous collection), not raised."""
    found = collection_of(bundles_dir / live)
    if found is None:
        return None
    name, settings = found
    kept = {c[0] for v in list_versions(bundles_dir) if (c := collection_of(bundles_dir / v))}
    try:
        store = MilvusStore(settings)
        try:
            before = store.move_alias(name)
            dropped = store.prune(kept | {name})
        finally:
            store.close()
    except IndexUnavailable as exc:
        log.error("bundle %s is live, but the alias %s was not moved: %s", live, settings.alias, exc)
        return {"alias": settings.alias, "collection": name, "error": str(exc)}
    return {"alias": settings.alias, "collection": name, "previous": before, "dropped": dropped}
