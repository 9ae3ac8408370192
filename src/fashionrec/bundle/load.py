"""Reading a verified bundle back: its manifest, items, embeddings and preprocessing, and its index."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fashionrec.bundle.format import EMBEDDINGS, GRAPH, ITEMS, ITEMS_V1, MANIFEST, MODEL, PREP, verify_bundle
from fashionrec.bundle.items import ItemTable, read_items, read_items_v1
from fashionrec.core.errors import BundleError
from fashionrec.index import NeighbourIndex, build_index


@dataclass
class LoadedBundle:
    """A verified bundle's data, ready to serve or to extend."""

    folder: Path
    manifest: dict[str, Any]
    items: ItemTable
    embeddings: np.ndarray
    preprocessing: dict[str, Any]

    @property
    def version(self) -> str:
        return str(self.manifest["version"])

    @property
    def model_version(self) -> str:
        return str(self.manifest["model"]["version"])

    @property
    def precision(self) -> str:
        """fp32 | int8: the model that embedded the inventory and embeds the queries."""
        return str(self.manifest["model"].get("precision", "fp32"))

    @property
    def embedded_with(self) -> str:
        """sha256 of the model file that made the embeddings (the bundle's own model)."""
        made_by = (self.manifest.get("embeddings") or {}).get("model_sha256")
        return str(made_by or self.manifest["files"][MODEL]["sha256"])

    @property
    def model_file(self) -> Path:
        return self.folder / MODEL

    def build_index(self) -> NeighbourIndex:
        spec = self.manifest["index"]
        params = dict(spec.get("params") or {})
        if spec["kind"] == "hnsw":
            params["graph_file"] = self.folder / GRAPH
        return build_index(self.embeddings, spec["kind"], **params)


def load_bundle(folder: Path, verify: bool = True, mmap: bool = False) -> LoadedBundle:
    """Read a bundle; with `verify` (always, outside tests of the check itself) checksums come first.

    `mmap` maps the embeddings read-only instead of reading them into memory (servers: the index build
    reads them once, so the pages need not stay resident).
    """
    folder = Path(folder).resolve()
    manifest = verify_bundle(folder) if verify else json.loads((folder / MANIFEST).read_text())
    items = read_items_v1(folder / ITEMS_V1) if manifest.get("format") == 1 else read_items(folder / ITEMS)
    try:
        embeddings = np.load(folder / EMBEDDINGS, allow_pickle=False, mmap_mode="r" if mmap else None)
        prep = json.loads((folder / PREP).read_text())
    except Exception as exc:
        raise BundleError(f"{folder}: cannot read bundle data ({type(exc).__name__}: {exc})") from exc
    made_by = (manifest.get("embeddings") or {}).get("model_sha256")
    model_sha = manifest["files"][MODEL]["sha256"]
    if made_by is not None and made_by != model_sha:
        raise BundleError(f"{folder}: embeddings were made by model sha256 {made_by[:12]}… but the bundle's "
                          f"{MODEL} is {model_sha[:12]}…: refused (queries would not match the inventory)")
    if embeddings.ndim != 2 or embeddings.shape[0] != len(items):
        raise BundleError(f"{folder}: {len(items)} items but embeddings of shape {embeddings.shape}")
    return LoadedBundle(folder=folder, manifest=manifest, items=items, embeddings=embeddings,
                        preprocessing=prep)
