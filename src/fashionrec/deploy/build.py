"""Building bundles: embed inventory images with the deployed ONNX model into a new bundle folder.

`build_bundle` embeds the whole inventory with one model (the champion's, or a local ONNX file).
`extend_bundle` (`add-items`) extends the current bundle: only the new items are decoded and embedded, with
the current bundle's own model, so old and new embeddings come from the same network. Both report recall@k
of the chosen index against exact search. Neither activates anything: `deploy.reconcile` does.
"""

from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from fashionrec.bundle.format import GRAPH, is_url
from fashionrec.bundle.load import LoadedBundle, load_bundle
from fashionrec.bundle.store import BundleContent, current_version, write_bundle
from fashionrec.core.errors import BundleError, DataError
from fashionrec.core.files import sha256_file
from fashionrec.data.images import Preprocessing
from fashionrec.deploy.catalog import catalog_from_manifest, fetch_image, read_catalog
from fashionrec.deploy.config import DeployConfig, IndexSettings
from fashionrec.deploy.model import ModelSource
from fashionrec.index import build_index, resolve_kind
from fashionrec.index.brute import BruteIndex
from fashionrec.index.recall import recall_at_k, tune_ef_search

CHUNK = 256   # images decoded at a time (bounded memory whatever the inventory size)
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


def embed_catalog(catalog: pd.DataFrame, model_file: Path, prep: Preprocessing, batch_size: int,
                  max_bytes: int, device: str = "cpu"
                  ) -> tuple[np.ndarray, pd.DataFrame, list[dict[str, str]]]:
    """Embed every item's image; items whose image cannot be read are skipped (and listed), not fatal."""
    from fashionrec.runtime.embed import OnnxRunner, embed_images, load_pixels

    runner = OnnxRunner(model_file, device=device)
    keep: list[int] = []
    skipped: list[dict[str, str]] = []
    parts: list[np.ndarray] = []
    rows = list(zip(catalog.index, catalog["item_id"], catalog["image"], strict=True))
    with tqdm(total=len(rows), desc="inventory", unit="img") as bar:
        for start in range(0, len(rows), CHUNK):
            pixels = []
            for i, item_id, image in rows[start:start + CHUNK]:
                try:
                    pixels.append(load_pixels(fetch_image(image, max_bytes), prep))
                    keep.append(i)
                except DataError as exc:
                    skipped.append({"item_id": str(item_id), "image": str(image), "reason": str(exc)})
                bar.update(1)
            if pixels:
                done = embed_images(runner, pixels, batch_size=batch_size, prep=prep, progress=False)
                parts.append(done.embeddings)
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
            for p in bundle.items["image"].astype(str)]


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
    embeddings, kept, skipped = embed_catalog(table, source.onnx_path, source.prep, cfg.batch_size,
                                              cfg.max_image_bytes, cfg.device)
    embed_seconds = time.perf_counter() - started
    images, root = relative_images(kept["image"].tolist())
    kept = kept.assign(image=images)
    index, kind, kparams, report = index_with_report(embeddings, cfg.index, cfg.seed)
    content = BundleContent(model_file=source.onnx_path, preprocessing=source.preprocessing,
                            model_version=source.version, model_uri=source.uri, embeddings=embeddings,
                            items=kept, inventory_root=root, index_kind=kind, index_params=kparams,
                            index=index, index_report=report, embedded=len(kept), skipped=skipped,
                            source={"inventory": inventory_version(cfg, catalog),
                                    "settings": cfg.index.fingerprint()},
                            embedded_with=sha256_file(source.onnx_path), precision=source.precision,
                            precision_reason=source.precision_reason)
    folder = write_bundle(cfg.bundles, content)
    return Built(folder=folder, model_version=source.version, items=len(kept), embedded=len(kept),
                 precision=source.precision, precision_reason=source.precision_reason, skipped=skipped,
                 embed_seconds=round(embed_seconds, 2))


def extend_bundle(cfg: DeployConfig, catalog: Path) -> Built:
    """A new bundle = the current one + the catalog's items, embedding only those (same model, same index
    kind; an HNSW graph is extended rather than rebuilt). It keeps its parent's source, so the deployer
    sees it as the same inventory version with items added."""
    bundles = cfg.bundles
    current = current_version(bundles)
    if current is None:
        raise BundleError(f"{bundles}: no current bundle to add items to; run `fashionrec deploy` first")
    base = load_bundle(bundles / current)
    new = read_catalog(catalog)
    clash = sorted(set(new["item_id"]) & set(base.items["item_id"].astype(str)))
    if clash:
        raise DataError(f"{catalog}: {len(clash)} item_id(s) already in bundle {current}: {clash[:10]}")
    prep = Preprocessing.from_dict(base.preprocessing)
    started = time.perf_counter()
    new_emb, kept, skipped = embed_catalog(new, base.model_file, prep, cfg.batch_size, cfg.max_image_bytes,
                                           cfg.device)
    embed_seconds = time.perf_counter() - started
    old_items = base.items.assign(image=absolute_images(base))[kept.columns.intersection(base.items.columns)]
    items = pd.concat([old_items, kept[old_items.columns]], ignore_index=True)
    images, root = relative_images(items["image"].tolist())
    items = items.assign(image=images)
    embeddings = np.concatenate([base.embeddings.astype(np.float32), new_emb])
    kind = base.manifest["index"]["kind"]
    graph = base.folder / GRAPH if kind == "hnsw" else None
    index, kind, kparams, report = index_with_report(embeddings, cfg.index, cfg.seed, graph_file=graph,
                                                     kind=kind, kind_params=base.manifest["index"]["params"])
    source = dict(base.manifest.get("source") or {})
    source["added"] = [*source.get("added", []), sha256_file(catalog)[:16]]
    content = BundleContent(model_file=base.model_file, preprocessing=base.preprocessing,
                            model_version=base.model_version, model_uri=base.manifest["model"]["uri"],
                            embeddings=embeddings, items=items, inventory_root=root, index_kind=kind,
                            index_params=kparams, index=index, index_report=report, parent=current,
                            embedded=len(kept), skipped=skipped, source=source,
                            embedded_with=base.embedded_with, precision=base.precision,
                            precision_reason=base.manifest["model"].get("precision_reason", ""))
    folder = write_bundle(bundles, content)
    return Built(folder=folder, model_version=base.model_version, items=len(items), embedded=len(kept),
                 precision=base.precision, precision_reason=content.precision_reason, skipped=skipped,
                 embed_seconds=round(embed_seconds, 2), parent=current)
