"""The deploy bundle: one immutable, versioned folder under `bundles/` that a server loads whole.

    bundles/v0003-20261123T053012Z/
      model.onnx           the model that made the embeddings (queries must use the same one)
      preprocessing.json   Preprocessing.to_dict() (+ classes/labels)
      embeddings.npy       (N, D) float32, L2-normalised, row i = items row i
      items.parquet        item_id, title, category, kids, attributes, image (relative to the inventory
                           root, or a URL)
      index.hnsw           only for kind `hnsw`: the graph in hnswlib's binary format
      manifest.json        version, build time, model version, index kind/params/recall, counts, sha256s
      SHA256SUMS           `sha256sum -c` format, every file above including manifest.json

No pickles: exact indexes are rebuilt from embeddings.npy at load (deterministic, a second for thousands of
items). A folder is written under a temporary name and renamed into place, its files made read-only; a
bundle whose checksums do not match is refused at load.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import re
import shutil
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from fashionrec.errors import FashionrecError
from fashionrec.index import build_index
from fashionrec.index.base import NeighbourIndex
from fashionrec.index.hnsw import HnswIndex

log = logging.getLogger(__name__)

FORMAT = 1
MODEL, PREP, EMBEDDINGS, ITEMS = "model.onnx", "preprocessing.json", "embeddings.npy", "items.parquet"
GRAPH = "index.hnsw"
MANIFEST, SUMS = "manifest.json", "SHA256SUMS"
VERSION_RE = re.compile(r"^v(\d{4,})-\d{8}T\d{6}Z$")
ITEM_COLUMNS = ["item_id", "title", "category", "kids", "attributes", "image"]
INDEX_KINDS = ("balltree", "brute", "hnsw")


class BundleError(FashionrecError):
    """A bundle is missing, incomplete or corrupted (the message names the file)."""


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


@contextlib.contextmanager
def bundles_lock(bundles_dir: Path) -> Iterator[None]:
    """An exclusive lock on the bundles folder: version numbers, the pointer and pruning change under it."""
    bundles_dir.mkdir(parents=True, exist_ok=True)
    with open(bundles_dir / ".lock", "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


@contextlib.contextmanager
def deploy_lock(bundles_dir: Path) -> Iterator[None]:
    """One deploy at a time per bundles folder: a second concurrent deploy fails at once, cleanly,
    rather than queueing and then activating a bundle built from a possibly older model."""
    bundles_dir.mkdir(parents=True, exist_ok=True)
    with open(bundles_dir / ".deploy.lock", "a+") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.seek(0)
            holder = fh.read().strip() or "another process"
            raise BundleError(f"{bundles_dir}: another deploy is in progress ({holder}); "
                              "nothing was changed, try again when it has finished") from None
        try:
            fh.truncate(0)
            fh.write(f"pid {os.getpid()}")
            fh.flush()
            yield
        finally:
            fh.truncate(0)
            fcntl.flock(fh, fcntl.LOCK_UN)


def list_versions(bundles_dir: Path) -> list[str]:
    """Complete bundle folders, oldest first."""
    if not bundles_dir.is_dir():
        return []
    names = [p.name for p in bundles_dir.iterdir()
             if p.is_dir() and not p.is_symlink() and VERSION_RE.match(p.name)]
    return sorted(names, key=lambda n: int(VERSION_RE.match(n).group(1)))  # type: ignore[union-attr]


def make_index(embeddings: np.ndarray, kind: str, params: dict[str, Any],
               graph_file: Path | None = None) -> NeighbourIndex:
    """The shared `build_index` for exact kinds; hnswlib's graph is loaded from the bundle when it has one."""
    if kind == "hnsw":
        allowed = {"M", "ef_construction", "ef_search", "seed", "build_threads"}
        unknown = sorted(set(params) - allowed)
        if unknown:
            raise BundleError(f"index kind 'hnsw': unknown parameter(s) {unknown}; "
                              f"accepted: {sorted(allowed)}")
        return HnswIndex(embeddings, graph_file=graph_file, **params)
    return build_index(embeddings, kind, **params)


@dataclass
class BundleContent:
    """Everything a bundle holds, before it is written."""

    model_file: Path
    preprocessing: dict[str, Any]
    model_version: str
    model_uri: str
    embeddings: np.ndarray
    items: pd.DataFrame              # ITEM_COLUMNS, `image` relative to inventory_root (or a URL)
    inventory_root: str | None
    index_kind: str
    index_params: dict[str, Any]
    index: NeighbourIndex
    index_report: dict[str, Any] = field(default_factory=dict)
    parent: str | None = None
    embedded: int = 0                # how many items this build embedded (the rest came from `parent`)
    skipped: list[dict[str, str]] = field(default_factory=list)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:   # alive, but another user's
        return True
    return True


def remove_abandoned(bundles_dir: Path) -> list[str]:
    """Delete what a deploy killed mid-way leaves: its `.tmp-<version>-<pid>` folder and `.current-<pid>`
    pointer, when that pid is dead, so they neither pile up nor keep reserving version numbers. Call under
    `bundles_lock`."""
    removed = []
    for path in [*bundles_dir.glob(".tmp-v*"), *bundles_dir.glob(".current-*")]:
        m = re.fullmatch(r"\.(?:tmp-v\d+-\d{8}T\d{6}Z|current)-(\d+)", path.name)
        if not m or _pid_alive(int(m.group(1))):
            continue
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
        removed.append(path.name)
    return sorted(removed)


def _next_version(bundles_dir: Path, now: datetime) -> str:
    taken = [int(VERSION_RE.match(n).group(1)) for n in list_versions(bundles_dir)]  # type: ignore[union-attr]
    pending = [int(m.group(1)) for p in bundles_dir.glob(".tmp-v*")
               if (m := re.match(r"\.tmp-v(\d+)", p.name))]
    return f"v{max([0, *taken, *pending]) + 1:04d}-{now:%Y%m%dT%H%M%SZ}"


def write_bundle(bundles_dir: Path, content: BundleContent) -> Path:
    """Write a new bundle version and return its folder (never overwrites one)."""
    n = len(content.items)
    if content.embeddings.shape[0] != n:
        raise BundleError(f"{n} items but {content.embeddings.shape[0]} embeddings")
    now = datetime.now(UTC)
    with bundles_lock(bundles_dir):
        for name in remove_abandoned(bundles_dir):
            log.warning("removed %s: left by a deploy that died while writing it", name)
        version = _next_version(bundles_dir, now)
        tmp = bundles_dir / f".tmp-{version}-{os.getpid()}"
        tmp.mkdir()
    try:
        shutil.copyfile(content.model_file, tmp / MODEL)
        (tmp / PREP).write_text(json.dumps(content.preprocessing, indent=2))
        np.save(tmp / EMBEDDINGS, np.ascontiguousarray(content.embeddings, np.float32), allow_pickle=False)
        items = content.items[ITEM_COLUMNS].copy()
        items["attributes"] = items["attributes"].map(list)
        items.to_parquet(tmp / ITEMS, index=False)
        if content.index_kind == "hnsw":
            content.index.save(tmp / GRAPH)  # type: ignore[attr-defined]
        files = sorted(p.name for p in tmp.iterdir())
        checksums = {name: {"sha256": sha256_file(tmp / name), "bytes": (tmp / name).stat().st_size}
                     for name in files}
        categories = content.items["category"].value_counts().sort_index()
        manifest = {
            "format": FORMAT, "version": version, "created_at": now.isoformat(timespec="seconds"),
            "model": {"version": content.model_version, "uri": content.model_uri,
                      "sha256": checksums[MODEL]["sha256"]},
            "index": {"kind": content.index_kind, "params": content.index_params, **content.index_report},
            "items": {"count": n, "dim": int(content.embeddings.shape[1]),
                      "categories": {str(k): int(v) for k, v in categories.items()},
                      "inventory_root": content.inventory_root},
            "parent": content.parent, "embedded": content.embedded, "skipped": content.skipped,
            "files": checksums,
        }
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2))
        sums = [f"{sha256_file(tmp / name)}  {name}" for name in sorted(p.name for p in tmp.iterdir())]
        (tmp / SUMS).write_text("\n".join(sums) + "\n")
        for p in tmp.iterdir():
            p.chmod(0o444)
        final = bundles_dir / version
        os.rename(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


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
    if manifest.get("format") != FORMAT:
        raise BundleError(f"{folder / MANIFEST}: format {manifest.get('format')!r}, this code reads {FORMAT}")
    return manifest


@dataclass
class LoadedBundle:
    """A verified bundle's data, ready to serve or to extend."""

    folder: Path
    manifest: dict[str, Any]
    items: pd.DataFrame
    embeddings: np.ndarray
    preprocessing: dict[str, Any]

    @property
    def version(self) -> str:
        return str(self.manifest["version"])

    @property
    def model_version(self) -> str:
        return str(self.manifest["model"]["version"])

    @property
    def model_file(self) -> Path:
        return self.folder / MODEL

    def build_index(self) -> NeighbourIndex:
        spec = self.manifest["index"]
        graph = self.folder / GRAPH if spec["kind"] == "hnsw" else None
        return make_index(self.embeddings, spec["kind"], dict(spec.get("params") or {}), graph_file=graph)


def load_bundle(folder: Path, verify: bool = True, mmap: bool = False) -> LoadedBundle:
    """Read a bundle; with `verify` (always, outside tests of the check itself) checksums come first.

    `mmap` maps the embeddings read-only instead of reading them into memory (servers: the index build
    reads them once, so the pages need not stay resident).
    """
    folder = Path(folder).resolve()
    manifest = verify_bundle(folder) if verify else json.loads((folder / MANIFEST).read_text())
    try:
        embeddings = np.load(folder / EMBEDDINGS, allow_pickle=False, mmap_mode="r" if mmap else None)
        items = pd.read_parquet(folder / ITEMS)
        prep = json.loads((folder / PREP).read_text())
    except Exception as exc:
        raise BundleError(f"{folder}: cannot read bundle data ({type(exc).__name__}: {exc})") from exc
    if embeddings.ndim != 2 or embeddings.shape[0] != len(items):
        raise BundleError(f"{folder}: {len(items)} items but embeddings of shape {embeddings.shape}")
    items["attributes"] = items["attributes"].map(lambda a: [str(x) for x in a] if a is not None else [])
    return LoadedBundle(folder=folder, manifest=manifest, items=items, embeddings=embeddings,
                        preprocessing=prep)
