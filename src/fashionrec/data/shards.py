"""Tar shards: how a dataset's photos are stored (WebDataset layout: `<key>.jpg` + `<key>.json` per photo).

A subset folder holds a few hundred shards (`shards/<split>-NNNNNN.tar`, `subset.shard_size` photos each)
and one Parquet manifest, so DVC tracks hundreds of files, not one per photo. The manifest's `path` of a
photo is a member reference, `shards/train-000000.tar#<offset>:<size>:<key>.jpg`: the shard, where the
member's bytes start and how many there are. Reading one photo is a seek and a read (`read_member`), so
training, evaluation and export open a photo by its path as before; `iter_shard` reads a whole shard in
order (one rank's or loader worker's share). A member whose header does not name it, or whose bytes end
early (a truncated or corrupt shard), raises `ShardError` naming the shard and the key: the caller
quarantines or refuses that photo, never a whole shard in silence.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fashionrec.core.errors import DataError

SHARDS = "shards"
MARK = ".tar#"
BLOCK = tarfile.BLOCKSIZE


class ShardError(DataError):
    """A shard member that cannot be read as written: names the shard and the key."""


@dataclass(frozen=True)
class Member:
    """Where one photo lies: the shard (relative to the dataset folder), its key and its bytes' span."""

    shard: str
    key: str
    name: str           # member name, `<key><suffix>`
    offset: int
    size: int

    @property
    def ref(self) -> str:
        return member_ref(self.shard, self.offset, self.size, self.name)


def member_ref(shard: str, offset: int, size: int, name: str) -> str:
    """The path of a shard member: `<shard>.tar#<offset>:<size>:<name>`."""
    return f"{shard}#{offset}:{size}:{name}"


def is_member_ref(path: str | Path) -> bool:
    return MARK in str(path)


def parse_ref(ref: str | Path) -> tuple[Path, int, int, str]:
    """(shard file, data offset, size, member name) of a member reference."""
    text = str(ref)
    shard, _, rest = text.rpartition(MARK)
    try:
        offset, size, name = rest.split(":", 2)
        return Path(shard + ".tar"), int(offset), int(size), name
    except ValueError as exc:
        raise DataError(f"{text}: not a shard member reference (<shard>.tar#<offset>:<size>:<name>)") from exc


def read_member(ref: str | Path) -> bytes:
    """The bytes of one member, checked against its tar header (name and size) and for truncation."""
    shard, offset, size, name = parse_ref(ref)
    key = name.rsplit(".", 1)[0]
    where = f"shard {shard}, key {key}"
    try:
        with open(shard, "rb") as fh:
            if offset < BLOCK:
                raise ShardError(f"{where}: offset {offset} lies inside the first header")
            fh.seek(offset - BLOCK)
            header = fh.read(BLOCK)
            try:
                info = tarfile.TarInfo.frombuf(header, "utf-8", "surrogateescape")
            except tarfile.HeaderError as exc:
                raise ShardError(f"{where}: corrupt tar header ({exc})") from exc
            # a name over 100 characters lives in a PAX header before this one; this one holds its start
            if not name.startswith(info.name) or info.size != size:
                raise ShardError(f"{where}: the tar header says {info.name!r} of {info.size} bytes, the "
                                 f"manifest {name!r} of {size} (shard rewritten or corrupt)")
            data = fh.read(size)
    except FileNotFoundError as exc:
        raise ShardError(f"{where}: shard file not found") from exc
    if len(data) < size:
        raise ShardError(f"{where}: truncated shard ({len(data)} of {size} bytes)")
    return data


def iter_shard(path: Path) -> Iterator[tuple[str, dict[str, bytes]]]:
    """(key, {suffix: bytes}) for each photo of a shard, in order; ShardError names the shard and the last
    key read where the shard ends early or a header is corrupt."""
    key, parts, last = None, {}, None
    try:
        with tarfile.open(path, mode="r|") as tar:
            for info in tar:
                if not info.isfile():
                    continue
                base, dot, suffix = info.name.rpartition(".")
                if not dot:
                    base, suffix = info.name, ""
                if base != key and key is not None:
                    yield key, parts
                    last, parts = key, {}
                key = base
                fh = tar.extractfile(info)
                parts[suffix] = fh.read() if fh is not None else b""
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise ShardError(f"shard {path}: unreadable at key {key or '(first)'} after {last or '(none)'} "
                         f"({type(exc).__name__}: {exc})") from exc
    if key is not None:
        yield key, parts


def scan_shard(path: Path) -> dict[str, tuple[int, int]]:
    """member name -> (data offset, size), from the shard's headers (to re-index a rewritten shard)."""
    try:
        with tarfile.open(path, mode="r:") as tar:
            return {m.name: (m.offset_data, m.size) for m in tar.getmembers() if m.isfile()}
    except (tarfile.TarError, OSError) as exc:
        raise ShardError(f"shard {path}: cannot list its members ({type(exc).__name__}: {exc})") from exc


class ShardWriter:
    """Writes photos into `<folder>/shards/<prefix>-NNNNNN.tar`, `size` photos per shard.

    Shards are reproducible (fixed mtime, owner and mode: the same photos give the same bytes, so DVC
    sees no change) and written whole or not at all (a temporary name, renamed when full or closed).
    """

    def __init__(self, folder: Path, size: int) -> None:
        if size < 1:
            raise DataError(f"subset.shard_size: must be >= 1, got {size}")
        self.folder = Path(folder)
        self.size = size
        self.counts: dict[str, int] = {}
        self._fh: io.BufferedWriter | None = None
        self._name = ""
        self._prefix = ""
        self._members = 0
        self._offset = 0
        (self.folder / SHARDS).mkdir(parents=True, exist_ok=True)

    def add(self, prefix: str, key: str, suffix: str, data: bytes, meta: dict[str, Any]) -> Member:
        """Append one photo (its bytes and its JSON record) to the current shard of `prefix`."""
        if self._fh is None or self._prefix != prefix or self._members >= self.size:
            self._open(prefix)
        name = f"{key}{suffix}"
        offset = self._put(name, data)
        self._put(f"{key}.json", json.dumps(meta, sort_keys=True, default=str).encode())
        self._members += 1
        return Member(shard=self._name, key=key, name=name, offset=offset, size=len(data))

    def _put(self, name: str, data: bytes) -> int:
        """One member: its header (GNU tar; a long name gets GNU's long-name record), bytes, padding.
        Written directly rather than through TarFile.addfile, which builds each header twice."""
        assert self._fh is not None
        info = tarfile.TarInfo(name)
        info.size, info.mtime, info.mode = len(data), 0, 0o644
        header = info.tobuf(tarfile.GNU_FORMAT, "utf-8", "surrogateescape")
        pad = -len(data) % BLOCK
        self._fh.write(header)
        self._fh.write(data)
        self._fh.write(b"\0" * pad)
        offset = self._offset + len(header)
        self._offset = offset + len(data) + pad
        return offset

    def _open(self, prefix: str) -> None:
        self._close()
        number = self.counts.get(prefix, 0)
        self.counts[prefix] = number + 1
        self._prefix, self._members, self._offset = prefix, 0, 0
        self._name = f"{SHARDS}/{prefix}-{number:06d}.tar"
        self._fh = open(self._tmp(), "wb")  # noqa: SIM115 - closed in _close

    def _tmp(self) -> Path:
        return self.folder / f"{self._name}.tmp"

    def _close(self) -> None:
        if self._fh is None:
            return
        end = self._offset + 2 * BLOCK   # two zero blocks end the archive, padded to a whole record
        self._fh.write(b"\0" * (2 * BLOCK + (-end % tarfile.RECORDSIZE)))
        self._fh.close()
        os.replace(self._tmp(), self.folder / self._name)
        self._fh = None

    def close(self) -> None:
        self._close()

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        if exc[0] is None:
            self._close()
        elif self._fh is not None:  # a failed write leaves no partial shard
            self._fh.close()
            self._tmp().unlink(missing_ok=True)
            self._fh = None


def read_image_bytes(path: str | Path) -> bytes:
    """A photo's bytes by its manifest path: a shard member or a plain file."""
    if is_member_ref(path):
        return read_member(path)
    return Path(path).read_bytes()


def extract_images(paths: list[str], dest: Path, shas: list[str | None] | None = None) -> list[str]:
    """Plain-file copies of shard members (for consumers that need a file per photo, e.g. the serving
    inventory's image route), content-addressed (`<sha256[:2]>/<sha256><suffix>`) so repeated deploys and
    data versions share them: with the manifest's `shas`, a copy already there is not read again. Plain
    paths pass through. Returns the path of each."""
    dest = Path(dest)
    out = []
    for path, known in zip(paths, shas or [None] * len(paths), strict=True):
        if not isinstance(path, str) or not is_member_ref(path):
            out.append(path)
            continue
        suffix = Path(parse_ref(path)[3]).suffix or ".jpg"
        if known and (dest / known[:2] / f"{known}{suffix}").is_file():
            out.append(str(dest / known[:2] / f"{known}{suffix}"))
            continue
        data = read_member(path)
        digest = hashlib.sha256(data).hexdigest()
        target = dest / digest[:2] / f"{digest}{suffix}"
        if not target.is_file():
            target.parent.mkdir(parents=True, exist_ok=True)
            tmp = target.with_name(f".{target.name}.tmp")
            tmp.write_bytes(data)
            os.replace(tmp, target)
        out.append(str(target))
    return out
