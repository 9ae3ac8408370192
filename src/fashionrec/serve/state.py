"""One immutable serving state: a bundle's model session, index and item table, loaded together.

A server holds exactly one `ServingState` at a time and swaps it by reference, so every answer comes from
one (model version, index version) pair; the deploy smoke test drives the same object before a bundle
goes live. A state keeps only what answers need (session, index, item fields as lists): the bundle's
embeddings are read into memory (never memory-mapped: a file truncated or rewritten on disk under a
mapping kills the process with SIGBUS at the next search), handed to the index build (an exact index keeps
them, BallTree and HNSW their own structures), and the item table's columns are kept as lists.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from fashionrec.bundle.format import is_url
from fashionrec.bundle.load import LoadedBundle, load_bundle
from fashionrec.core.errors import BundleError
from fashionrec.data.images import Preprocessing
from fashionrec.index import require_kind
from fashionrec.index.base import NeighbourIndex
from fashionrec.runtime.session import DEFAULT_PROVIDERS, OnnxSession, create_session
from fashionrec.serve.hits import BundleModel, Hit

if TYPE_CHECKING:
    from fashionrec.serve.remote import MilvusServingState

__all__ = ["Hit", "ServingState", "load_state"]




class ServingState(BundleModel):
    """Everything one answer needs. Built once, never mutated afterwards."""

    def __init__(self, bundle: LoadedBundle, session: OnnxSession, index: NeighbourIndex,
                 inventory_root: Path | None) -> None:
        self.folder = bundle.folder
        self.manifest = bundle.manifest
        self.session = session
        self.index = index
        self.prep = Preprocessing.from_dict(bundle.preprocessing)
        self.version = bundle.version
        self.model_version = bundle.model_version
        self.precision = bundle.precision   # the one model of the bundle embeds queries as it did items
        self.inventory_root = inventory_root.resolve() if inventory_root is not None else None
        items = bundle.items
        self.item_ids: list[str] = items.item_id
        self.rows = {item_id: i for i, item_id in enumerate(self.item_ids)}
        self.titles: list[str] = items.title
        self.category = np.array(items.category, dtype=str)
        self.kids = np.array(items.kids, dtype=bool)
        self.attributes: list[list[str]] = items.attributes
        self.images: list[str] = items.image
        self.categories: list[str] = sorted(set(self.category.tolist()) - {""})

    @property
    def size(self) -> int:
        return len(self.item_ids)

    def mask(self, category: str | None, kids: bool | None) -> np.ndarray | None:
        if category is None and kids is None:
            return None
        keep = np.ones(self.size, bool)
        if category is not None:
            keep &= self.category == category
        if kids is not None:
            keep &= self.kids == kids
        return keep

    def search(self, vector: np.ndarray, k: int, category: str | None = None,
               kids: bool | None = None) -> list[Hit]:
        """Top-k items for one embedding; filters go into the index's own search (`allowed`), which
        answers min(k, items passing them) exactly as the kind defines (no over-fetch and cut)."""
        keep = self.mask(category, kids)
        if keep is not None and not keep.any():
            return []
        dist, idx = self.index.query(vector.reshape(1, -1), k, allowed=keep)
        return [Hit(int(r), float(1.0 - float(d) ** 2 / 2.0)) for d, r in zip(dist[0], idx[0], strict=True)]

    def hit_item(self, hit: Hit) -> dict[str, Any]:
        """The item a hit names, as the API returns it."""
        return self.item(hit.row)

    def item(self, row: int) -> dict[str, Any]:
        item_id = self.item_ids[row]
        return {"item_id": item_id, "title": self.titles[row], "category": self.category[row],
                "kids": bool(self.kids[row]), "attributes": list(self.attributes[row]),
                "image_url": self.images[row] if is_url(self.images[row]) else f"/items/{item_id}/image"}

    def image_source(self, row: int) -> Path | str | None:
        """The item's image file inside the inventory root, or its URL; None if it would escape the root."""
        image = self.images[row]
        return self.resolve_image(image)


def load_state(bundle_dir: Path, inventory_root: Path | None = None, intra_op_threads: int = 0,
               providers: tuple[str, ...] = DEFAULT_PROVIDERS, allow_spinning: bool = True
               ) -> ServingState | MilvusServingState:
    """Verify and load a bundle, open its model and build its index: all or nothing."""
    from fashionrec.serve.remote import is_milvus_bundle, load_milvus_state

    if (manifest := is_milvus_bundle(bundle_dir)) is not None:   # the inventory is in Milvus, not here
        return load_milvus_state(Path(bundle_dir).resolve(), manifest, inventory_root, intra_op_threads,
                                 providers, allow_spinning)
    bundle = load_bundle(bundle_dir, verify=True, mmap=False)
    require_kind(bundle.manifest["index"]["kind"])   # before the model: a missing extra refuses it at once
    session = create_session(bundle.model_file, providers=providers, intra_op_threads=intra_op_threads,
                             allow_spinning=allow_spinning)
    if "embedding" not in session.output_names:
        raise BundleError(f"{bundle.model_file}: model has no 'embedding' output ({session.output_names})")
    root = inventory_root
    if root is None and bundle.manifest["items"].get("inventory_root"):
        root = Path(bundle.manifest["items"]["inventory_root"])
    return ServingState(bundle, session, bundle.build_index(), root)
