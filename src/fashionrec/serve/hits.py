"""One search hit, shared by every serving state (in-process index or an engine such as Milvus)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Hit:
    row: int
    score: float   # cosine similarity (1 - d^2 / 2 on unit vectors)
    fields: dict[str, Any] | None = None   # the item's fields, where the engine returns them (milvus)
