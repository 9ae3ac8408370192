"""The data stages end to end: describe's figures, `dvc repro` + push/pull in a copy of the project, and
(slow) the real dataset."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from fashionrec.core.config import load_params, set_dotted
from fashionrec.data.describe import describe
from fashionrec.data.ingest import ingest
from fashionrec.data.manifest import read_manifest
from fashionrec.data.subset import subset
from fashionrec.data.validate import validate
from fashionrec.data.versions import new_additions

ROOT = Path(__file__).resolve().parents[2]
DATA_STAGES = ("ingest", "subset", "validate", "describe")
REAL = ROOT.parent / "shared" / "datasets" / "clothing-dataset"


def test_describe_draws_the_three_figures(tiny_validated, tmp_path):
    params = tiny_validated.params.section("describe")
    result = describe(tiny_validated.validated / "manifest.parquet", tmp_path, params)
    assert [Path(f).name for f in result.figures] == ["label_distribution.png", "image_sizes.png",
                                                      "contact_sheet.png"]
    sheet = np.asarray(Image.open(tmp_path / "contact_sheet.png").convert("RGB"), dtype=float)
    # the class colours of the tiny dataset show up: strongly red, blue, green and yellow pixels
    assert (sheet[..., 0] - sheet[..., 1:].mean(-1) > 120).sum() > 500
    assert (sheet[..., 2] - sheet[..., :2].mean(-1) > 100).sum() > 500
    for name in ("label_distribution.png", "image_sizes.png"):
        img = np.asarray(Image.open(tmp_path / name).convert("L"), dtype=float)
        assert img.shape[0] > 300 and img.std() > 10


def files_digest(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.md5(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def test_dvc_repro_then_nothing_then_push_pull(tiny_validated, tmp_path):
    """The project's data stages in a fresh git+dvc repo on the tiny source; the project's remote config."""
    repo = tmp_path / "project"
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    repo.mkdir()
    (repo / "dvc.yaml").write_text(yaml.safe_dump({"stages": {k: stages[k] for k in DATA_STAGES}},
                                                  sort_keys=False))
    shutil.copy(tiny_validated.root / "params.yaml", repo / "params.yaml")
    code = sorted({dep for k in DATA_STAGES for dep in stages[k]["deps"] if dep.startswith("src/")})
    assert "src/fashionrec/data" in code
    for dep in code:  # the code the stages depend on, as dvc.yaml names it
        shutil.copytree(ROOT / dep, repo / dep, ignore=shutil.ignore_patterns("__pycache__"))
    new_additions(repo / "data" / "additions")  # ingest's dep: no new photos yet
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
           "DVC_NO_ANALYTICS": "1", "GIT_CONFIG_NOSYSTEM": "1"}

    def dvc(*args: str) -> str:
        proc = subprocess.run([str(Path(sys.executable).with_name("dvc")), *args], cwd=repo, env=env,
                              capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, f"dvc {' '.join(args)}:\n{proc.stdout}\n{proc.stderr}"
        return proc.stdout + proc.stderr

    subprocess.run(["git", "init", "-q"], cwd=repo, check=True)
    dvc("init", "-q")
    shutil.copy(ROOT / ".dvc" / "config", repo / ".dvc" / "config")  # remote 'local' = ../.dvc-remote
    shutil.copy(ROOT / ".gitignore", repo / ".gitignore")

    first = dvc("repro", "describe")
    for stage in DATA_STAGES:
        assert f"Running stage '{stage}'" in first
    assert (repo / "reports/describe/contact_sheet.png").is_file()
    assert len(read_manifest(repo / "data/validated")) == tiny_validated.source.n_published
    lock = yaml.safe_load((repo / "dvc.lock").read_text())["stages"]
    assert lock["ingest"]["params"]["params.yaml"]["ingest"]["source"] == str(tiny_validated.source.root)

    second = dvc("repro", "describe")
    assert "Running stage" not in second
    for stage in DATA_STAGES:
        assert f"Stage '{stage}' didn't change, skipping" in second

    before = files_digest(repo / "data")
    dvc("push")
    assert any((repo / ".dvc-remote").rglob("*")), "push wrote nothing to the remote"
    for out in ("data/manifest", "data/subset", "data/validated"):
        shutil.rmtree(repo / out)
    shutil.rmtree(repo / ".dvc" / "cache")
    dvc("pull")
    assert files_digest(repo / "data") == before
    assert "Data and pipelines are up to date" in dvc("status")


@pytest.mark.slow
@pytest.mark.skipif(not (REAL / "images.csv").is_file(), reason=f"real dataset absent: {REAL}")
def test_real_dataset_end_to_end(tmp_path):
    tree = yaml.safe_load((ROOT / "params.yaml").read_text())
    set_dotted(tree, "ingest.source", str(REAL))
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(tree))
    p = load_params(tmp_path / "params.yaml")

    s = p.section("ingest")
    got = ingest(p.path(s["source"]), p.path(s["out"]), s)
    assert got.problems["rows_without_images"] == 5 and got.problems["images_without_rows"] == 358
    assert got.problems["unreadable_files"] == 0 and got.n_images == 5037 - 5
    assert {"Not sure", "Skip", "Other"} <= set(got.label_counts)

    s = p.section("subset")
    sub = subset(p.path(s["manifest"]), p.path(s["out"]), s)
    assert sub.counts == {"train": 3068, "validation": 341, "test": 372}
    assert set(sub.dropped_labels) == {"Not sure", "Skip", "Other"} and sum(sub.dropped_labels.values()) > 250
    assert 20 <= sub.relabelled <= 40 and sub.published_missing == []
    df = read_manifest(p.path(s["out"]))
    assert not df["kids"].any() and df["category"].nunique() == 10

    s = p.section("validate")
    val = validate(p.path(s["subset"]), p.path(s["out"]), p.path(s["reports"]), s)
    assert val.success and val.n_passed == 3781 and val.quarantined == []

    s = p.section("describe")
    out = describe(p.path(s["manifest"]), p.path(s["out"]), s)
    assert all(Path(f).stat().st_size > 10_000 for f in out.figures)
    summary = json.loads((p.path("reports/validate") / "summary.json").read_text())
    assert summary["success"] and summary["n_checked"] == 3781
