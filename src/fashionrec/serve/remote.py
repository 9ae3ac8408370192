"""A serving state whose inventory lives in a Milvus collection (index kind `milvus`).

The replica holds the bundle's ONNX model and its manifest, never the embeddings or the item table: a
search returns the items' fields with the hits, so resident memory does not grow with the inventory. The
collection is the one the bundle's manifest names, so a state switch changes (model, collection) together
and no answer mixes one model's queries with another's vectors. Filters run inside the search (Milvus
boolean expressions), exactly where they keep few rows. The engine's trouble is an `IndexUnavailable`:
a 503 with Retry-After, never a 500.
"""

from __future__ import annotations

import json
import weakref
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from fashionrec.bundle.format import MODEL, PREP, is_url, verify_bundle
from fashionrec.core.errors import BundleError
from fashionrec.data.images import Preprocessing
from fashionrec.index.milvus import MilvusIndex, MilvusSettings, filter_expression
from fashionrec.runtime.session import DEFAULT_PROVIDERS, OnnxSession, create_session
from fashionrec.serve.hits import BundleModel, Hit


class _RemoteRows(Mapping[str, int]):
    """`item_id -> row`, asked of the collection (the /items routes)."""

    def __init__(self, index: MilvusIndex) -> None:
        self._index = index

    def __getitem__(self, item_id: str) -> int:
        row = self._index.row_of(str(item_id))
        if row is None:
            raise KeyError(item_id)
        return row

    def __contains__(self, item_id: object) -> bool:
        return self._index.row_of(str(item_id)) is not None

    def __iter__(self) -> Iterator[str]:
        raise TypeError("the items of a milvus bundle are not listed by a replica")

    def __len__(self) -> int:
        return self._index.size


class _RemoteColumn:
    """One field of the items by row, asked of the collection (smoke-test messages)."""

    def __init__(self, index: MilvusIndex, name: str) -> None:
        self._index, self._name = index, name

    def __getitem__(self, row: int) -> Any:
        found = self._index.items([int(row)]).get(int(row))
        if found is None:
            raise IndexError(row)
        return found[self._name]

    def __len__(self) -> int:
        return self._index.size


class MilvusServingState(BundleModel):
    """A bundle's model + its collection on a Milvus server, with `serve.state.ServingState`'s interface
    (not its subclass: that one reads the item table, which a replica of this kind never holds). Built
    once, never mutated afterwards."""

    def __init__(self, folder: Path, manifest: dict[str, Any], preprocessing: dict[str, Any],
                 session: OnnxSession, index: MilvusIndex, inventory_root: Path | None) -> None:
        self.folder = folder
        self.manifest = manifest
        self.session = session
        self.index = index
        self.prep = Preprocessing.from_dict(preprocessing)
        self.version = str(manifest["version"])
        self.model_version = str(manifest["model"]["version"])
        self.precision = str(manifest["model"].get("precision", "fp32"))
        self.inventory_root = inventory_root.resolve() if inventory_root is not None else None
        self.categories = sorted(set(manifest["items"].get("categories") or {}) - {""})
        self.rows = _RemoteRows(index)
        self.item_ids = _RemoteColumn(index, "item_id")
        self.collection = index.collection
        weakref.finalize(self, index.close)           # the connection goes with the state

    @property
    def size(self) -> int:
        return self.index.size

    def search(self, vector: Any, k: int, category: str | None = None,
               kids: bool | None = None) -> list[Hit]:
        found = self.index.search(vector, k, filter_expression(category, kids))
        return [Hit(row, float(1.0 - dist ** 2 / 2.0), fields) for row, dist, fields in found]

    def hit_item(self, hit: Hit) -> dict[str, Any]:
        return self._public(hit.fields) if hit.fields is not None else self.item(hit.row)

    def item(self, row: int) -> dict[str, Any]:
        found = self.index.items([row]).get(int(row))
        if found is None:
            raise KeyError(row)
        return self._public(found)

    @staticmethod
    def _public(fields: dict[str, Any]) -> dict[str, Any]:
        item_id, image = str(fields["item_id"]), str(fields["image"])
        return {"item_id": item_id, "title": fields["title"], "category": fields["category"],
                "kids": bool(fields["kids"]), "attributes": list(fields["attributes"]),
                "image_url": image if is_url(image) else f"/items/{item_id}/image"}

    def image_source(self, row: int) -> Path | str | None:
        found = self.index.items([row]).get(int(row))
        if found is None:
            return None
        image = str(found["image"])
        return self.resolve_image(image)


def load_milvus_state(folder: Path, manifest: dict[str, Any], inventory_root: Path | None,
                      intra_op_threads: int, providers: tuple[str, ...] = DEFAULT_PROVIDERS,
                      allow_spinning: bool = True) -> MilvusServingState:
    """The model from the (verified) bundle folder, the collection its manifest names, loaded in Milvus
    (load state is not persisted across a server restart)."""
    spec = manifest["index"]
    if not spec.get("collection"):
        raise BundleError(f"{folder}: index kind milvus but the manifest names no collection")
    try:
        prep = json.loads((folder / PREP).read_text())
    except (OSError, ValueError) as exc:
        raise BundleError(f"{folder / PREP}: unreadable ({exc})") from exc
    settings = MilvusSettings.from_mapping(spec.get("milvus"))
    index = MilvusIndex(collection=str(spec["collection"]), size=int(manifest["items"]["count"]),
                        dim=int(manifest["items"]["dim"]), settings=settings)
    try:
        index.ensure_loaded()
        want = {"fashionrec.bundle_version": str(manifest["version"]),
                "fashionrec.model_sha256": str((manifest.get("embeddings") or {}).get("model_sha256"))}
        got = index._guard(lambda s: s.properties(index.collection))
        wrong = {k: got.get(k) for k, v in want.items() if got.get(k) != v}
        if wrong:
            raise BundleError(f"collection {index.collection} at {settings.uri} belongs to another bundle or "
                              f"model ({wrong}); refused: answers would mix versions")
        session = create_session(folder / MODEL, providers=providers, intra_op_threads=intra_op_threads,
                                  allow_spinning=allow_spinning)
    except BaseException:
        index.close()
        raise
    if "embedding" not in session.output_names:
        raise BundleError(f"{folder / MODEL}: model has no 'embedding' output ({session.output_names})")
    root = inventory_root
    if root is None and manifest["items"].get("inventory_root"):
        root = Path(manifest["items"]["inventory_root"])
    return MilvusServingState(folder, manifest, prep, session, index, root)


def is_milvus_bundle(folder: Path) -> dict[str, Any] | None:
    """The verified manifest when the bundle's index is a Milvus collection, else None (not verified)."""
    try:
        kind = json.loads((folder / "manifest.json").read_text())["index"]["kind"]
    except (OSError, ValueError, KeyError, TypeError):
        return None   # the full load reports what is wrong
    return verify_bundle(folder) if kind == "milvus" else None
