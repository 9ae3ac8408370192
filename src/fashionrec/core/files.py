"""Small file helpers every layer shares: reading the JSON files one step leaves for another (errors name
the file) and content hashes."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from fashionrec.core.errors import DataError, FashionrecError


def read_json(path: Path, missing: str, error: type[FashionrecError] = DataError) -> Any:
    """The parsed file: `error(missing)` when there is none, `error` naming the path if it does not parse."""
    if not path.is_file():
        raise error(missing)
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise error(f"{path}: not valid JSON ({exc})") from exc


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file, read in chunks (model files and embeddings can be large)."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(chunk), b""):
            digest.update(block)
    return digest.hexdigest()
