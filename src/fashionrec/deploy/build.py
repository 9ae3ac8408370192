"""Building bundles: embed inventory images with the deployed ONNX model into a new bundle folder.

`build_bundle` embeds the whole inventory with one model (the champion's, or a local ONNX file).
`extend_bundle` (`add-items`) extends the current bundle: only the new items are decoded and embedded, with
the current bundle's own model, so old and new embeddings come from the same network. Both report recall@k
of the chosen index against exact search. Neither activates anything: `deploy.reconcile` does.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from fashionrec.bundle.format import GRAPH, MANIFEST, is_url
from fashionrec.bundle.load import LoadedBundle, load_bundle
from fashionrec.bundle.store import BundleContent, current_version, write_bundle
from fashionrec.core.errors import BundleError, DataError
from fashionrec.core.files import sha256_file
from fashionrec.data.images import Preprocessing
from fashionrec.deploy.catalog import catalog_from_manifest, fetcher_for, normalise, read_catalog
from fashionrec.deploy.config import DeployConfig, IndexSettings
from fashionrec.deploy.model import ModelSource
from fashionrec.index import build_index, resolve_kind
from fashionrec.index.brute import BruteIndex
from fashionrec.index.recall import recall_at_k, tune_ef_search

CHUNK = 256   # images decoded at a time (bounded memory whatever the inventory size)
log = logging.getLogger(__name__)
INVENTORY_IMAGES = "images"   # <bundles>/images/: the inventory photos copied out of the shards, by sha256


@dataclass
class Built:
    """A bundle just written (not live yet)."""

    folder: Path
    model_version: str
    items: int
    embedded: int
    precision: str                   # fp32 | int8: the bundle's model, for inventory and queries alike
    precision_reason: str
    skipped: list[dict[str, str]]
    embed_seconds: float
    parent: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def missing_entry(row: Any, reason: str) -> dict[str, str]:
    """A skipped item as the manifest lists it: its catalog row (so a later deploy can retry it without the
    catalog it came from) and why it is missing."""
    return {"item_id": str(row.item_id), "image": str(row.image), "title": str(row.title),
            "category": str(row.category), "attributes": ";".join(row.attributes), "reason": reason}


def embed_catalog(catalog: pd.DataFrame, model_file: Path, prep: Preprocessing, batch_size: int,
                  cfg: DeployConfig) -> tuple[np.ndarray, pd.DataFrame, list[dict[str, str]]]:
    """Embed every item's image; items whose image cannot be read are skipped (and listed), not fatal."""
    from fashionrec.runtime.embed import OnnxRunner, embed_images, load_pixels

    runner = OnnxRunner(model_file, device=cfg.device)
    keep: list[int] = []
    skipped: list[dict[str, str]] = []
    parts: list[np.ndarray] = []
    rows = list(catalog.itertuples())
    fetch = fetcher_for(cfg)
    try:
        with tqdm(total=len(rows), desc="inventory", unit="img") as bar:
            for start in range(0, len(rows), CHUNK):
                pixels = []
                for row in rows[start:start + CHUNK]:
                    try:
                        pixels.append(load_pixels(fetch.fetch(row.image), prep))
                        keep.append(row.Index)
                    except DataError as exc:
                        skipped.append(missing_entry(row, str(exc)))
                    bar.update(1)
                if pixels:
                    done = embed_images(runner, pixels, batch_size=batch_size, prep=prep, progress=False)
                    parts.append(done.embeddings)
    finally:
        fetch.close()
    if not keep:
        raise DataError(f"none of the {len(rows)} inventory images could be read; first problem: "
                        f"{skipped[0]['reason'] if skipped else 'no items'}")
    return np.concatenate(parts).astype(np.float32), catalog.loc[keep].reset_index(drop=True), skipped


def relative_images(images: list[str]) -> tuple[list[str], str | None]:
    """Local paths -> paths relative to their deepest common folder (the inventory root); URLs unchanged."""
    local = [p for p in images if not is_url(p)]
    if not local:
        return images, None
    root = os.path.commonpath([os.path.dirname(p) for p in local])
    return [p if is_url(p) else os.path.relpath(p, root) for p in images], root


def absolute_images(bundle: LoadedBundle) -> list[str]:
    root = bundle.manifest["items"].get("inventory_root")
    return [p if is_url(p) or root is None else os.path.join(root, p)
            for p in bundle.items.image]


def index_with_report(embeddings: np.ndarray, settings: IndexSettings, seed: int,
                      graph_file: Path | None = None, kind: str | None = None,
                      kind_params: dict[str, Any] | None = None) -> tuple[Any, str, dict, dict]:
    """Build the configured index and measure its recall@k against exact search on sampled items.

    For HNSW with `index.target_recall` set, `ef_search` is first raised until that recall is reached
    (the bundle records the tuned ef, so every server of it searches as measured here)."""
    requested = kind or settings.kind
    n = embeddings.shape[0]
    kind = resolve_kind(requested, n, settings.auto_exact_max)
    params = dict(kind_params) if kind_params is not None else settings.params_of(kind)
    started = time.perf_counter()
    graph = {"graph_file": graph_file} if kind == "hnsw" and graph_file is not None else {}
    index = build_index(embeddings, kind, **params, **graph)
    build_seconds = time.perf_counter() - started
    k = min(settings.recall_k, n)
    rng = np.random.default_rng(seed)
    sample = rng.choice(n, size=min(settings.recall_queries, n), replace=False)
    exact, queries = BruteIndex(embeddings), embeddings[np.sort(sample)]
    report: dict[str, Any] = {"requested_kind": requested}
    if kind == "hnsw" and settings.target_recall is not None:
        configured = index.ef_search
        ef, recall = tune_ef_search(index, exact, queries, k, settings.target_recall, settings.max_ef_search)
        params["ef_search"] = ef
        report["ef_search"] = {"configured": configured, "tuned": ef, "target_recall": settings.target_recall}
    else:
        recall = recall_at_k(index, exact, queries, k)
    report.update(recall_at_k=round(recall, 4), recall_k=k, recall_queries=int(len(sample)),
                  build_seconds=round(build_seconds, 3))
    return index, kind, params, report


def collection_builder(cfg: DeployConfig, embeddings: np.ndarray, items: pd.DataFrame,
                       model_sha256: str) -> Callable[[str], dict[str, Any]]:
    """Kind milvus: what `write_bundle` calls once the version is known: the version's collection built
    (batched insert, or one bulk import from Parquet files on a server: `index.milvus.load`; index built,
    loaded), its recall measured by name against exact search; the manifest records the collection and
    where it lives (the token only as the name of its environment variable). The index type, and a bulk
    import the backend cannot do, are refused by name here, before the collection is created."""
    from fashionrec.index.milvus import MilvusIndex, MilvusStore, bulk_api

    settings = cfg.index.milvus()
    settings.check_index_type()
    load = settings.load_method()
    if load == "bulk_import":   # the client's bulk writer and the bucket's credentials, checked now
        bulk_api()
        settings.storage().filesystem()
    MilvusStore(settings).close()   # unreachable: refused now

    def prepare(version: str) -> dict[str, Any]:
        name = settings.collection(version)
        records = items[["item_id", "title", "category", "kids", "attributes", "image"]].to_dict("records")
        store = MilvusStore(settings)
        try:
            properties = {"fashionrec.bundle_version": version, "fashionrec.model_sha256": model_sha256}
            if load == "bulk_import":
                built = store.bulk_load(name, embeddings, records, properties)
            else:
                with tqdm(total=len(records), desc=f"milvus {name}", unit="row") as bar:
                    built = store.create(name, embeddings, records, properties, progress=bar.update)
            try:
                index = MilvusIndex(collection=name, size=len(records), dim=int(embeddings.shape[1]),
                                    settings=settings)
                n = len(records)
                k = min(cfg.index.recall_k, n)
                sample = np.random.default_rng(cfg.seed).choice(n, size=min(cfg.index.recall_queries, n),
                                                                 replace=False)
                recall = recall_at_k(index, BruteIndex(embeddings), embeddings[np.sort(sample)], k)
                index.close()
            except BaseException:
                store.call(f"drop_collection {name}", store.client.drop_collection, name)
                raise
        finally:
            store.close()
        return {"collection": name, "recall_at_k": round(recall, 4), "recall_k": k,
                "recall_queries": int(len(sample)), "build_seconds": built["ready_seconds"],
                "insert_seconds": built["insert_seconds"], "load": load,
                "milvus": {"uri": settings.uri, "token_env": settings.token_env, "db_name": settings.db_name,
                           "backend": settings.backend, "alias": settings.alias,
                           "collection_prefix": settings.collection_prefix,
                           "index_type": settings.index_type, "index_params": settings.index_params,
                           "search_params": settings.search_params, "timeout_s": settings.timeout_s,
                           "build_timeout_s": settings.build_timeout_s,
                           "exact_filter_max": settings.exact_filter_max}}

    return prepare


def inventory_file(cfg: DeployConfig, catalog: Path | None = None) -> Path:
    """The file the inventory is read from: a catalog CSV, else the validated manifest."""
    path = catalog or cfg.catalog or cfg.manifest
    if path is None:
        raise DataError("params index.catalog and index.manifest are both empty: no inventory to deploy")
    return path


def inventory_version(cfg: DeployConfig, catalog: Path | None = None) -> str:
    """The inventory catalogue's version: the content hash of its file (part of what a deploy wants)."""
    path = inventory_file(cfg, catalog)
    if not path.is_file():
        raise DataError(f"inventory not found: {path}")
    return sha256_file(path)[:16]


def read_inventory(cfg: DeployConfig, catalog: Path | None = None) -> pd.DataFrame:
    path = inventory_file(cfg, catalog)
    if catalog is not None or cfg.catalog is not None:
        return read_catalog(path)
    return with_image_files(catalog_from_manifest(path), path, cfg.bundles / INVENTORY_IMAGES)


def with_image_files(table: pd.DataFrame, manifest: Path, dest: Path) -> pd.DataFrame:
    """The validated photos live in tar shards; servers answer /items/{id}/image from a file: each item's
    photo is copied out once into `dest` (content-addressed, beside the bundles, so the serving pods that
    mount the bundles see it), and the bundle's inventory root becomes that folder."""
    from fashionrec.data.manifest import read_manifest
    from fashionrec.data.shards import extract_images

    sha = read_manifest(manifest).set_index("id")["sha256"]
    shas = [sha.get(i) for i in table["item_id"]]
    return table.assign(image=extract_images(table["image"].tolist(), dest, shas))


def build_bundle(cfg: DeployConfig, source: ModelSource, catalog: Path | None = None) -> Built:
    """Embed the inventory with `source` into a new bundle (written whole or not at all)."""
    table = read_inventory(cfg, catalog)
    started = time.perf_counter()
    shards: dict[str, Any] = {}
    embed = partial(embed_catalog, model_file=source.onnx_path, prep=source.prep, batch_size=cfg.batch_size,
                    cfg=cfg)
    if cfg.shard_size > 0:   # shards that resume: a re-run embeds only what is not on disk yet
        from fashionrec.deploy.shards import embed_in_shards

        embeddings, kept, skipped, shards = embed_in_shards(
            table, embed, source.onnx_path, source.prep, cfg.shards_folder,
            cfg.shard_size, cfg.shard_retries, embed_missing=cfg.embed_missing_shards)
    else:
        embeddings, kept, skipped = embed(table)
    embed_seconds = time.perf_counter() - started
    images, root = relative_images(kept["image"].tolist())
    kept = kept.assign(image=images)
    if resolve_kind(cfg.index.kind, len(kept), cfg.index.auto_exact_max) == "milvus":
        index, kind, kparams, report, prepare = None, "milvus", {}, {"requested_kind": "milvus"}, \
            collection_builder(cfg, embeddings, kept, sha256_file(source.onnx_path))
    else:
        index, kind, kparams, report = index_with_report(embeddings, cfg.index, cfg.seed)
        prepare = None
    content = BundleContent(model_file=source.onnx_path, preprocessing=source.preprocessing,
                            model_version=source.version, model_uri=source.uri, embeddings=embeddings,
                            items=kept, inventory_root=root, index_kind=kind, index_params=kparams,
                            index=index, index_report=report, embedded=len(kept), skipped=skipped,
                            source={"inventory": inventory_version(cfg, catalog),
                                    "settings": cfg.index.fingerprint()},
                            embedded_with=None,   # the very file the bundle holds: hashed once there
                            precision=source.precision,
                            precision_reason=source.precision_reason, prepare=prepare)
    folder = write_bundle(cfg.bundles, content)
    return Built(folder=folder, model_version=source.version, items=len(kept), embedded=len(kept),
                 precision=source.precision, precision_reason=source.precision_reason, skipped=skipped,
                 embed_seconds=round(embed_seconds, 2), extra={"shards": shards} if shards else {})


def extend_bundle(cfg: DeployConfig, catalog: Path) -> Built:
    """A new bundle = the current one + the catalog's items, embedding only those (same model, same index
    kind; an HNSW graph is extended rather than rebuilt). It keeps its parent's source, so the deployer
    sees it as the same inventory version with items added."""
    current = current_version(cfg.bundles)
    if current is None:
        raise BundleError(f"{cfg.bundles}: no current bundle to add items to; run `fashionrec deploy` first")
    return _extend(cfg, current, read_catalog(catalog), str(catalog), added=sha256_file(catalog)[:16])


def missing_items(manifest: dict[str, Any]) -> list[dict[str, str]]:
    """The items a bundle lists as skipped (their images could not be read when it was built)."""
    return list(manifest.get("skipped") or [])


def recover_missing(cfg: DeployConfig, version: str) -> Built | None:
    """A new bundle = `version` + those of its missing items whose images can be read now (embedded with its
    own model; the rest stay listed as missing), or None when none can: nothing is written then."""
    base = cfg.bundles / version
    entries = missing_items(json.loads((base / MANIFEST).read_text()))
    if not entries:
        return None
    table = normalise(pd.DataFrame(entries), f"{version}/{MANIFEST} skipped", Path("/"))
    try:
        return _extend(cfg, version, table, f"{version}'s missing items", added=None)
    except DataError as exc:   # none of them readable yet
        log.info("the %d missing item(s) of %s are still missing: %s", len(entries), version, exc)
        return None


def _extend(cfg: DeployConfig, parent: str, new: pd.DataFrame, origin: str, added: str | None) -> Built:
    """Bundle `parent` + the items of `new` (embedded with the parent's model); the parent's missing items
    stay listed unless `new` holds them. `added`: the catalog's hash, recorded in the source."""
    base = load_bundle(cfg.bundles / parent)
    clash = sorted(set(new["item_id"]) & set(base.items.item_id))
    if clash:
        raise DataError(f"{origin}: {len(clash)} item_id(s) already in bundle {parent}: {clash[:10]}")
    prep = Preprocessing.from_dict(base.preprocessing)
    started = time.perf_counter()
    new_emb, kept, skipped = embed_catalog(new, base.model_file, prep, cfg.batch_size, cfg)
    embed_seconds = time.perf_counter() - started
    base_items = pd.DataFrame(base.items.to_dict())
    old_items = base_items.assign(image=absolute_images(base))[kept.columns.intersection(base_items.columns)]
    items = pd.concat([old_items, kept[old_items.columns]], ignore_index=True)
    images, root = relative_images(items["image"].tolist())
    items = items.assign(image=images)
    embeddings = np.concatenate([base.embeddings.astype(np.float32), new_emb])
    kind = base.manifest["index"]["kind"]
    graph = base.folder / GRAPH if kind == "hnsw" else None
    prepare = None
    if kind == "milvus":   # a new collection for the new version, all rows (the old one stays for rollback)
        index, kparams, report = None, {}, {"requested_kind": "milvus"}
        prepare = collection_builder(cfg, embeddings, items, base.embedded_with)
    else:
        index, kind, kparams, report = index_with_report(embeddings, cfg.index, cfg.seed, graph_file=graph,
                                                         kind=kind,
                                                         kind_params=base.manifest["index"]["params"])
    source = dict(base.manifest.get("source") or {})
    if added is not None:
        source["added"] = [*source.get("added", []), added]
    retried = set(new["item_id"])
    still = [e for e in missing_items(base.manifest) if e.get("item_id") not in retried] + skipped
    content = BundleContent(model_file=base.model_file, preprocessing=base.preprocessing,
                            model_version=base.model_version, model_uri=base.manifest["model"]["uri"],
                            embeddings=embeddings, items=items, inventory_root=root, index_kind=kind,
                            index_params=kparams, index=index, index_report=report, parent=parent,
                            embedded=len(kept), skipped=still, source=source,
                            embedded_with=base.embedded_with, precision=base.precision,
                            precision_reason=base.manifest["model"].get("precision_reason", ""),
                            prepare=prepare)
    folder = write_bundle(cfg.bundles, content)
    return Built(folder=folder, model_version=base.model_version, items=len(items), embedded=len(kept),
                 precision=base.precision, precision_reason=content.precision_reason, skipped=still,
                 embed_seconds=round(embed_seconds, 2), parent=parent)
