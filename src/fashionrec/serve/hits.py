"""What every serving state shares, in-process index or an engine such as Milvus: a search hit, and the
bundle's model side (its folder, ONNX session and preprocessing) that embeds the queries."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from fashionrec.bundle.format import EMBEDDINGS, is_url
from fashionrec.data.images import Preprocessing
from fashionrec.runtime.session import OnnxSession


@dataclass(frozen=True)
class Hit:
    row: int
    score: float   # cosine similarity (1 - d^2 / 2 on unit vectors)
    fields: dict[str, Any] | None = None   # the item's fields, where the engine returns them (milvus)


class BundleModel:
    """The model side of a serving state; subclasses set `folder`, `session`, `prep` and
    `inventory_root`."""

    folder: Path
    session: OnnxSession
    prep: Preprocessing
    inventory_root: Path | None

    def resolve_image(self, image: str) -> Path | str | None:
        """An item's image: its URL, or its file inside the inventory root (None if it would escape it)."""
        if is_url(image):
            return image
        if self.inventory_root is None or Path(image).is_absolute():
            return None
        path = (self.inventory_root / image).resolve()
        return path if path.is_relative_to(self.inventory_root) else None

    @property
    def provider(self) -> str:
        return self.session.provider

    def stored_embeddings(self) -> np.ndarray:
        """The bundle's (N, D) item embeddings, memory-mapped read-only (checked at load; smoke tests)."""
        return np.load(self.folder / EMBEDDINGS, mmap_mode="r", allow_pickle=False)

    def embed(self, images: list[Image.Image]) -> np.ndarray:
        """RGB images -> (B, D) L2-normalised embeddings, through the bundle's own model."""
        batch = np.stack([self.prep(img) for img in images])
        emb = np.asarray(self.session.run(batch)["embedding"], np.float32)
        return emb / np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12)
