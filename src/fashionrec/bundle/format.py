"""The deploy bundle: one immutable, versioned folder under `bundles/` that a server loads whole.

    bundles/v0003-20261123T053012Z/
      model.onnx           the model that made the embeddings (queries must use the same one)
      preprocessing.json   Preprocessing.to_dict() (+ classes/labels)
      embeddings.npy       (N, D) float32, L2-normalised, row i = items row i
      items.json           the item table, one list per column: item_id, title, category, kids,
                           attributes, image (relative to the inventory root, or a URL)
      index.hnsw           only for kind `hnsw`: the graph in Faiss's HNSW graph format
      manifest.json        version, build time, model version, index kind/params/recall, counts, sha256s
      SHA256SUMS           `sha256sum -c` format, every file above including manifest.json

Format 2 keeps the item table as JSON (the standard library reads it: a server needs neither pandas nor
pyarrow, ~200 MB of its image); format 1 kept it as items.parquet, read where pyarrow is installed (the
deployer, the pipeline venv) and refused with a clear message elsewhere. No pickles: exact indexes are
rebuilt from embeddings.npy at load (deterministic, a second for thousands of items). A folder is written
under a temporary name and renamed into place, its files made read-only; a bundle whose checksums do not
match is refused at load.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from fashionrec.core.errors import BundleError
from fashionrec.core.files import sha256_file

FORMAT = 2                   # what this code writes
READABLE = (1, 2)            # what it reads (format 1: the item table in ITEMS_V1)
MODEL, PREP, EMBEDDINGS, ITEMS = "model.onnx", "preprocessing.json", "embeddings.npy", "items.json"
ITEMS_V1 = "items.parquet"
GRAPH = "index.hnsw"
MANIFEST, SUMS = "manifest.json", "SHA256SUMS"
VERSION_RE = re.compile(r"^v(\d{4,})-\d{8}T\d{6}Z$")
ITEM_COLUMNS = ["item_id", "title", "category", "kids", "attributes", "image"]


def is_url(value: str) -> bool:
    """An item image given as a URL rather than a path under the inventory root."""
    return value.startswith(("http://", "https://"))


def verify_bundle(folder: Path) -> dict[str, Any]:
    """Check every file against SHA256SUMS (none missing, extra or changed); return the manifest."""
    folder = Path(folder)
    if not folder.is_dir():
        raise BundleError(f"bundle not found: {folder}")
    sums_path = folder / SUMS
    if not sums_path.is_file():
        raise BundleError(f"{folder}: no {SUMS} (incomplete bundle)")
    listed: dict[str, str] = {}
    for lineno, line in enumerate(sums_path.read_text().splitlines(), 1):
        parts = line.split("  ", 1)
        if len(parts) != 2 or not re.fullmatch(r"[0-9a-f]{64}", parts[0]):
            raise BundleError(f"{sums_path}: malformed line {lineno}")
        listed[parts[1]] = parts[0]
    present = {p.name for p in folder.iterdir()} - {SUMS}
    if missing := sorted(set(listed) - present):
        raise BundleError(f"{folder}: missing file(s) {missing}")
    if extra := sorted(present - set(listed)):
        raise BundleError(f"{folder}: unexpected file(s) {extra} not covered by {SUMS}")
    for name, want in sorted(listed.items()):
        got = sha256_file(folder / name)
        if got != want:
            raise BundleError(f"{folder / name}: checksum mismatch (sha256 {got[:12]}…, "
                              f"expected {want[:12]}…)")
    try:
        manifest = json.loads((folder / MANIFEST).read_text())
    except (OSError, ValueError) as exc:
        raise BundleError(f"{folder / MANIFEST}: unreadable ({exc})") from exc
    if manifest.get("format") not in READABLE:
        raise BundleError(f"{folder / MANIFEST}: format {manifest.get('format')!r}, this code reads "
                          f"{' and '.join(map(str, READABLE))}")
    return manifest
