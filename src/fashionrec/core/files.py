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


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file, streamed (model files and embeddings can be large); the one helper for it."""
    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()
