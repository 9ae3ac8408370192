"""The `index` stage and `add-items`: embed inventory images with the deployed ONNX model into a new bundle.

`build_index_bundle` embeds the whole inventory with the champion (or a local ONNX file). `add_items`
extends the current bundle: only the new items are decoded and embedded, with the current bundle's own
model, so old and new embeddings come from the same network. Both report recall@k of the chosen index
against exact search and, unless told not to, roll serving over to the new bundle.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from fashionrec.bundle.format import GRAPH, is_url
from fashionrec.bundle.load import LoadedBundle, load_bundle
from fashionrec.bundle.store import BundleContent, current_version, deploy_lock, write_bundle
from fashionrec.core.config import DEFAULT_SEED, Params
from fashionrec.core.errors import BundleError, DataError
from fashionrec.core.files import sha256_file
from fashionrec.core.tracking import tracking_uri
from fashionrec.data.images import Preprocessing
from fashionrec.deploy.catalog import catalog_from_manifest, fetch_image, read_catalog
from fashionrec.deploy.model import resolve_model
from fashionrec.deploy.rollout import RolloutResult, activate
from fashionrec.index import AUTO_EXACT_MAX, RECALL_K, build_index, resolve_kind
from fashionrec.index.brute import BruteIndex
from fashionrec.index.recall import recall_at_k, tune_ef_search

CHUNK = 256   # images decoded at a time (bounded memory whatever the inventory size)


@dataclass
class IndexResult:
    """What a build did; printed as JSON by the CLI and written to the stage summary."""

    bundle: str
    version: str
    model_version: str
    items: int
    embedded: int
    precision: str                   # fp32 | int8: the bundle's model, for inventory and queries alike
    precision_reason: str
    skipped: list[dict[str, str]]
    index: dict[str, Any]
    embed_seconds: float
    rollout: dict[str, Any] | None = None
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


def index_with_report(embeddings: np.ndarray, sec: dict[str, Any], seed: int,
                      graph_file: Path | None = None, kind: str | None = None) -> tuple[Any, str, dict, dict]:
    """Build the configured index and measure its recall@k against exact search on sampled items.

    For HNSW with `index.target_recall` set, `ef_search` is first raised until that recall is reached
    (the bundle records the tuned ef, so every server of it searches as measured here)."""
    requested = kind or str(sec.get("kind", "auto"))
    n = embeddings.shape[0]
    kind = resolve_kind(requested, n, int(sec.get("auto_exact_max", AUTO_EXACT_MAX)))
    params = dict(sec.get(kind) or {})
    started = time.perf_counter()
    graph = {"graph_file": graph_file} if kind == "hnsw" and graph_file is not None else {}
    index = build_index(embeddings, kind, **params, **graph)
    build_seconds = time.perf_counter() - started
    k = min(int(sec.get("recall_k", RECALL_K)), n)
    rng = np.random.default_rng(seed)
    sample = rng.choice(n, size=min(int(sec.get("recall_queries", 200)), n), replace=False)
    exact, queries = BruteIndex(embeddings), embeddings[np.sort(sample)]
    report: dict[str, Any] = {"requested_kind": requested}
    if kind == "hnsw" and sec.get("target_recall") is not None:
        configured = index.ef_search
        ef, recall = tune_ef_search(index, exact, queries, k, float(sec["target_recall"]),
                                    int(sec.get("max_ef_search", 1024)))
        params["ef_search"] = ef
        report["ef_search"] = {"configured": configured, "tuned": ef, "target_recall": sec["target_recall"]}
    else:
        recall = recall_at_k(index, exact, queries, k)
    report.update(recall_at_k=round(recall, 4), recall_k=k, recall_queries=int(len(sample)),
                  build_seconds=round(build_seconds, 3))
    return index, kind, params, report


def _finish(params: Params, sec: dict[str, Any], content: BundleContent, embed_seconds: float,
            do_activate: bool) -> IndexResult:
    bundles = params.path(sec["bundles"])
    folder = write_bundle(bundles, content)
    manifest = load_bundle(folder).manifest
    rollout: RolloutResult | None = activate(bundles, folder.name, params) if do_activate else None
    result = IndexResult(bundle=str(folder), version=folder.name, model_version=content.model_version,
                         items=len(content.items), embedded=content.embedded, skipped=content.skipped,
                         precision=content.precision, precision_reason=content.precision_reason,
                         index=manifest["index"], embed_seconds=round(embed_seconds, 2),
                         rollout=rollout.to_dict() if rollout else None, parent=content.parent)
    if sec.get("summary"):
        summary = params.path(sec["summary"])
        summary.parent.mkdir(parents=True, exist_ok=True)
        summary.write_text(json.dumps(result.to_dict(), indent=2, default=str))
    return result


def build_index_bundle(params: Params, model: str | None = None, catalog: Path | None = None,
                       do_activate: bool | None = None) -> IndexResult:
    """The deploy stage: champion (or a local ONNX) + inventory -> a new bundle, then roll over to it."""
    sec = params.section("index")
    with deploy_lock(params.path(sec["bundles"])):
        return _build_index_bundle(params, sec, model, catalog, do_activate)


def _build_index_bundle(params: Params, sec: dict[str, Any], model: str | None, catalog: Path | None,
                        do_activate: bool | None) -> IndexResult:
    spec = model or str(sec.get("model") or "models:/fashionrec@champion")
    if catalog is not None:
        table = read_catalog(catalog)
    elif sec.get("catalog"):
        table = read_catalog(params.path(sec["catalog"]))
    else:
        table = catalog_from_manifest(params.path(sec["manifest"]))
    with tempfile.TemporaryDirectory(prefix="fashionrec-model-") as tmp:
        source = resolve_model(spec, Path(tmp), tracking_uri=tracking_uri(params),
                               precision=str(sec.get("precision", "auto")))
        made_by = sha256_file(source.onnx_path)  # the file that embeds the inventory (and, bundled, queries)
        started = time.perf_counter()
        embeddings, kept, skipped = embed_catalog(table, source.onnx_path, source.prep,
                                                  int(sec.get("batch_size", 32)),
                                                  int(sec.get("max_image_bytes", 20_000_000)),
                                                  str(sec.get("device", "cpu")))
        embed_seconds = time.perf_counter() - started
        images, root = relative_images(kept["image"].tolist())
        kept = kept.assign(image=images)
        seed = int(params.get("seed", DEFAULT_SEED))
        index, kind, kparams, report = index_with_report(embeddings, sec, seed)
        content = BundleContent(model_file=source.onnx_path, preprocessing=source.preprocessing,
                                model_version=source.version, model_uri=source.uri, embeddings=embeddings,
                                items=kept, inventory_root=root, index_kind=kind, index_params=kparams,
                                index=index, index_report=report, embedded=len(kept), skipped=skipped,
                                embedded_with=made_by, precision=source.precision,
                                precision_reason=source.precision_reason)
        go = bool(sec.get("activate", True)) if do_activate is None else do_activate
        return _finish(params, sec, content, embed_seconds, go)


def add_items(params: Params, catalog: Path, do_activate: bool | None = None) -> IndexResult:
    """A new bundle = the current one + the catalog's items, embedding only those (same model, same index
    kind; an HNSW graph is extended rather than rebuilt)."""
    sec = params.section("index")
    bundles = params.path(sec["bundles"])
    with deploy_lock(bundles):
        return _add_items(params, sec, bundles, catalog, do_activate)


def _add_items(params: Params, sec: dict[str, Any], bundles: Path, catalog: Path,
               do_activate: bool | None) -> IndexResult:
    current = current_version(bundles)
    if current is None:
        raise BundleError(f"{bundles}: no current bundle to add items to; run `fashionrec index` first")
    base = load_bundle(bundles / current)
    new = read_catalog(catalog)
    clash = sorted(set(new["item_id"]) & set(base.items["item_id"].astype(str)))
    if clash:
        raise DataError(f"{catalog}: {len(clash)} item_id(s) already in bundle {current}: {clash[:10]}")
    prep = Preprocessing.from_dict(base.preprocessing)
    started = time.perf_counter()
    new_emb, kept, skipped = embed_catalog(new, base.model_file, prep, int(sec.get("batch_size", 32)),
                                           int(sec.get("max_image_bytes", 20_000_000)),
                                           str(sec.get("device", "cpu")))
    embed_seconds = time.perf_counter() - started
    old_items = base.items.assign(image=absolute_images(base))[kept.columns.intersection(base.items.columns)]
    items = pd.concat([old_items, kept[old_items.columns]], ignore_index=True)
    images, root = relative_images(items["image"].tolist())
    items = items.assign(image=images)
    embeddings = np.concatenate([base.embeddings.astype(np.float32), new_emb])
    kind = base.manifest["index"]["kind"]
    graph = base.folder / GRAPH if kind == "hnsw" else None
    same = {**sec, kind: base.manifest["index"]["params"]}   # the parent's index kind and parameters
    index, kind, kparams, report = index_with_report(embeddings, same, int(params.get("seed", DEFAULT_SEED)),
                                                     graph_file=graph, kind=kind)
    content = BundleContent(model_file=base.model_file, preprocessing=base.preprocessing,
                            model_version=base.model_version, model_uri=base.manifest["model"]["uri"],
                            embeddings=embeddings, items=items, inventory_root=root, index_kind=kind,
                            index_params=kparams, index=index, index_report=report, parent=current,
                            embedded=len(kept), skipped=skipped, embedded_with=base.embedded_with,
                            precision=base.precision, precision_reason=base.manifest["model"].get(
                                "precision_reason", ""))
    go = bool(sec.get("activate", True)) if do_activate is None else do_activate
    return _finish(params, sec, content, embed_seconds, go)
