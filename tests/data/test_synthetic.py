"""`fashionrec synth N OUT`: N labelled photos in the upstream layout that ingest reads like the real one."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from PIL import Image

from fashionrec.core.errors import DataError
from fashionrec.data.ingest import ingest
from fashionrec.data.synthetic import write_synthetic

ROOT = Path(__file__).resolve().parents[2]


def test_synthetic_photos_in_the_upstream_layout(tmp_path):
    got = write_synthetic(tmp_path / "src", 45, size=32, per_sender=5, kids_every=9, test_every=3,
                          progress=False)
    rows = pd.read_csv(tmp_path / "src/images.csv")
    splits = pd.read_csv(tmp_path / "src/top10-splits.csv")
    assert list(rows.columns) == ["image", "sender_id", "label", "kids"] and len(rows) == got.n == 45
    assert rows["image"].is_unique and list(splits["image"]) == list(rows["image"])
    assert got.labels == {"T-Shirt": 12, "Pants": 11, "Shoes": 11, "Dress": 11} and got.kids == 5
    assert rows.groupby("sender_id").size().max() == 5 and got.senders == 9
    assert set(splits.loc[splits["split"] == "test", "image"]) == \
        set(rows.loc[rows["sender_id"] % 3 == 0, "image"])
    with Image.open(tmp_path / "src/images" / f"{rows['image'][0]}.jpg") as img:
        assert img.size == (32, 32) and img.format == "JPEG"
    result = ingest(tmp_path / "src", tmp_path / "manifest", {"chunk_size": 10})
    assert result.n_images == 45 and result.problems["unreadable_files"] == 0


def test_cli_writes_n_photos_and_refuses_zero(tmp_path):
    cli = [str(Path(sys.executable).with_name("fashionrec")), "synth", "-p", str(ROOT / "params.yaml")]
    done = subprocess.run([*cli, "7", str(tmp_path / "out"), "--size", "16"], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["n"] == 7 and len(list((tmp_path / "out/images").iterdir())) == 7
    bad = subprocess.run([*cli, "0", str(tmp_path / "none")], capture_output=True, text=True, timeout=300)
    assert bad.returncode == 1 and "error: synth: need at least 1 photo, got 0" in bad.stderr
    with pytest.raises(DataError, match="at least 8 pixels"):
        write_synthetic(tmp_path / "small", 3, size=4)


def test_the_folder_is_the_same_whatever_the_job_count(tmp_path):
    one = write_synthetic(tmp_path / "one", 23, size=16, per_sender=4, progress=False)
    three = write_synthetic(tmp_path / "three", 23, size=16, per_sender=4, jobs=3, progress=False)
    assert one.to_dict() | {"root": ""} == three.to_dict() | {"root": ""}
    for name in ("images.csv", "top10-splits.csv"):
        assert (tmp_path / "one" / name).read_bytes() == (tmp_path / "three" / name).read_bytes()
    files = sorted(p.name for p in (tmp_path / "one/images").iterdir())
    assert files == sorted(p.name for p in (tmp_path / "three/images").iterdir()) and len(files) == 23
    assert all((tmp_path / "one/images" / f).read_bytes() == (tmp_path / "three/images" / f).read_bytes()
               for f in files)
    left = sorted(p.name for p in (tmp_path / "three").iterdir())
    assert left == ["images", "images.csv", "top10-splits.csv"]
    with pytest.raises(DataError, match="jobs must be at least 1, got 0"):
        write_synthetic(tmp_path / "none", 3, jobs=0)
