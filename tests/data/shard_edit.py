"""Test helpers that damage a subset's shards as disks and copies do (a member rewritten, a shard cut)."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

from fashionrec.data.manifest import read_manifest, write_manifest
from fashionrec.data.shards import iter_shard, member_ref, scan_shard


def replace_member(folder: Path, photo_id: str, data: bytes) -> None:
    """Rewrite the shard holding `photo_id` with `data` as that photo's bytes (the manifest keeps its sha256,
    so validate sees a changed or broken file); the manifest's references into that shard are re-indexed."""
    df = read_manifest(folder)
    row = df.set_index("id").loc[photo_id]
    shard = folder / row["shard"]
    members = list(iter_shard(shard))
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for key, parts in members:
            for suffix, body in parts.items():
                body = data if key == photo_id and suffix != "json" else body
                info = tarfile.TarInfo(f"{key}.{suffix}")
                info.size = len(body)
                tar.addfile(info, io.BytesIO(body))
    shard.write_bytes(buf.getvalue())
    index = scan_shard(shard)
    name = {k: v for k, v in zip(df["key"], df["path"], strict=True)}
    paths = []
    for key, sh, path in zip(df["key"], df["shard"], df["path"], strict=True):
        if sh != row["shard"]:
            paths.append(path)
            continue
        member = name[key].rsplit(":", 1)[1]
        paths.append(member_ref(sh, *index[member], member))
    write_manifest(df.drop(columns=["abspath"]).assign(path=paths), folder / "manifest.parquet")


def truncate_in(folder: Path, photo_id: str) -> Path:
    """Cut the shard holding `photo_id` in the middle of that photo's bytes; returns the shard."""
    row = read_manifest(folder).set_index("id").loc[photo_id]
    offset, size = (int(v) for v in row["path"].rsplit("#", 1)[1].split(":")[:2])
    shard = folder / row["shard"]
    with open(shard, "r+b") as fh:
        fh.truncate(offset + size // 2)
    return shard
