"""Stage ingest: the manifest of a source folder, its problems, and where the source is found."""

from __future__ import annotations

import json
import shutil
import zipfile
from pathlib import Path

import pandas as pd
import pytest

from fashionrec.core.errors import DataError
from fashionrec.data import source as source_mod
from fashionrec.data.ingest import ingest, join_additions
from fashionrec.data.manifest import COLUMNS, read_manifest
from fashionrec.data.source import ENV_VAR, resolve_source


def test_manifest_has_one_row_per_image_with_facts(tiny_validated):
    tiny = tiny_validated.source
    df = read_manifest(tiny_validated.manifest)
    assert list(df.columns[: len(COLUMNS)]) == COLUMNS
    csv = pd.read_csv(tiny.root / "images.csv")
    files = {p.stem for p in (tiny.root / "images").iterdir()}
    assert set(df["id"]) == set(csv["image"]) & files
    assert df["id"].is_unique
    row = df.set_index("id").loc[tiny.kids[0]]
    assert row["kids"] and list(row["labels"]) == [row["category"], "kids"]
    assert row["category"] == row["label"].lower()
    assert 64 <= row["width"] <= 96 and 64 <= row["height"] <= 96 and row["mode"] == "RGB"
    assert row["bytes"] == Path(row["abspath"]).stat().st_size and len(row["sha256"]) == 64
    assert df["sender_id"].dtype == "Int64" and df["kids"].dtype == bool
    assert all(Path(p).is_absolute() for p in df["path"])


def test_problems_are_recorded_not_fatal(tiny_validated):
    tiny = tiny_validated.source
    problems = json.loads((tiny_validated.manifest / "problems.json").read_text())
    assert problems["rows_without_images"] == tiny.rows_without_images
    assert problems["images_without_rows"] == tiny.images_without_rows
    assert problems["label_counts"]["Not sure"] == 1 and problems["label_counts"]["Skip"] == 1
    assert (tiny_validated.manifest / "source" / "top10-splits.csv").is_file()
    provenance = json.loads((tiny_validated.manifest / "source.json").read_text())
    assert provenance["origin"] == "explicit" and provenance["n_files"] == 4 * 12 + len(tiny.unpublished) + 3


def test_unreadable_file_and_bad_rows_are_listed(tiny_source, tmp_path):
    src = tmp_path / "src"
    shutil.copytree(tiny_source.root, src)
    victim = sorted((src / "images").iterdir())[0]
    victim.write_bytes(b"\xff\xd8 not really a jpeg")
    with open(src / "images.csv", "a") as fh:
        fh.write("bad-sender,abc,Dress,False\n")
    result = ingest(src, tmp_path / "manifest", {})
    assert result.problems["unreadable_files"] == 1 and result.examples["unreadable_files"] == [victim.stem]
    assert result.problems["bad_rows"] == 1
    problems = json.loads((tmp_path / "manifest" / "problems.json").read_text())
    assert problems["bad_rows"][0]["image"] == "bad-sender"
    assert "sender_id" in problems["bad_rows"][0]["reason"]
    assert "cannot decode" in problems["unreadable_files"][0]["error"]
    row = read_manifest(tmp_path / "manifest").set_index("id").loc[victim.stem]
    assert pd.isna(row["width"]) and row["bytes"] == victim.stat().st_size


def test_csv_without_required_columns_is_named(tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "images.csv").write_text("image,label\nx,Dress\n")
    with pytest.raises(DataError, match=r"images.csv: missing columns \['sender_id', 'kids'\]"):
        ingest(tmp_path, tmp_path / "out", {})


# --- where the source comes from ----------------------------------------------------------------------


def layout(folder: Path) -> Path:
    (folder / "images").mkdir(parents=True)
    (folder / "images.csv").write_text("image,sender_id,label,kids\n")
    return folder


def test_auto_prefers_shared_then_env_then_download(tmp_path, monkeypatch):
    shared, env = layout(tmp_path / "shared"), layout(tmp_path / "env")
    calls = []
    monkeypatch.setattr(source_mod, "download_source", lambda url, dest: calls.append((url, dest)) or env)
    kw = {"download_url": "https://example.invalid/x.zip", "download_dir": tmp_path / "raw"}

    got = resolve_source("auto", shared_path=shared, env={ENV_VAR: str(env)}, **kw)
    assert (got.path, got.origin) == (shared.resolve(), "shared")
    got = resolve_source("auto", shared_path=tmp_path / "absent", env={ENV_VAR: str(env)}, **kw)
    assert (got.path, got.origin) == (env, "env")
    got = resolve_source("auto", shared_path=tmp_path / "absent", env={}, **kw)
    assert got.origin == "download" and calls == [("https://example.invalid/x.zip", tmp_path / "raw")]
    got = resolve_source(env, shared_path=shared, env={}, **kw)
    assert (got.path, got.origin) == (env, "explicit")


def test_auto_without_any_source_says_what_to_set(tmp_path):
    with pytest.raises(DataError, match=ENV_VAR):
        resolve_source("auto", shared_path=tmp_path / "absent", env={}, download_url="", download_dir=None)


def test_explicit_source_with_wrong_layout_is_named(tmp_path):
    (tmp_path / "images").mkdir()
    with pytest.raises(DataError, match=r"missing images.csv"):
        resolve_source(tmp_path, shared_path=None, env={}, download_url=None, download_dir=None)


def test_download_unpacks_the_repository_zip(tiny_source, tmp_path):
    """The real download code, fed a file:// URL: a zip with the repository's top folder."""
    archive = tmp_path / "master.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for p in sorted(tiny_source.root.rglob("*")):
            zf.write(p, Path("clothing-dataset-master") / p.relative_to(tiny_source.root))
    got = source_mod.download_source(archive.as_uri(), tmp_path / "raw")
    assert got == tmp_path / "raw" / "clothing-dataset-master"
    assert (got / "images.csv").read_bytes() == (tiny_source.root / "images.csv").read_bytes()
    assert not (tmp_path / "raw" / "source.zip").exists()
    assert source_mod.download_source("file:///nonexistent.zip", tmp_path / "raw") == got  # cached


def test_failed_download_names_the_url(tmp_path):
    with pytest.raises(DataError, match=r"cannot download the dataset from file:///nonexistent.zip"):
        source_mod.download_source("file:///nonexistent.zip", tmp_path / "raw")


def test_join_additions_appends_rows_with_newline_line_ends(tmp_path):
    """The copied source CSV (CRLF, no final line end) is streamed, not read whole: its line ends come out as
    newlines, the additions' rows follow its last row, their header is not repeated."""
    additions, dest = tmp_path / "additions", tmp_path / "dest"
    additions.mkdir()
    dest.mkdir()
    (dest / "images.csv").write_bytes(b"image,label\r\n" + b"a,T-Shirt\r\n" * 300_000 + b"b,Dress")
    (additions / "images.csv").write_text("image,label\nc,Pants\n")
    (additions / "splits.csv").write_text("image,split\nc,train\n")
    join_additions(additions, dest)
    assert (dest / "images.csv").read_bytes() == (b"image,label\n" + b"a,T-Shirt\n" * 300_000
                                                   + b"b,Dress\nc,Pants\n")
    assert (dest / "splits.csv").read_text() == "image,split\nc,train\n"
    assert sorted(p.name for p in dest.iterdir()) == ["images.csv", "splits.csv"]   # no temporary left
