"""Reading the JSON files one step leaves for another, with errors that name the file."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from fashionrec.errors import DataError, FashionrecError


def read_json(path: Path, missing: str, error: type[FashionrecError] = DataError) -> Any:
    """The parsed file: `error(missing)` when there is none, `error` naming the path if it does not parse."""
    if not path.is_file():
        raise error(missing)
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise error(f"{path}: not valid JSON ({exc})") from exc
