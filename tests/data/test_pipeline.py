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
from fashionrec.data.subset import subset, subset_params
from fashionrec.data.validate import validate
from fashionrec.data.versions import new_additions

ROOT = Path(__file__).resolve().parents[2]
DATA_STAGES = ("ingest", "subset", "validate", "describe")
SUBSETS = ("benchmark", "catalog")
RUN_STAGES = ("ingest", *(f"{stage}@{name}" for stage in DATA_STAGES[1:] for name in SUBSETS))
REAL = ROOT.parent / "shared" / "datasets" / "clothing-dataset"


def test_describe_draws_the_three_figures(tiny_validated, tmp_path):
    params = tiny_validated.params.section("describe")
    result = describe(tiny_validated.validated / "manifest.parquet", tmp_path, params)
    assert [Path(f).name for f in result.figures] == ["label_distribution.png", "kids_balance.png",
                                                      "image_sizes.png", "contact_sheet.png"]
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
    code = sorted({dep for k in DATA_STAGES for dep in stages[k].get("do", stages[k])["deps"]
                   if dep.startswith("src/")})
    assert "src/fashionrec/data" in code
    for dep in code:  # the code the stages depend on, as dvc.yaml names it
        shutil.copytree(ROOT / dep, repo / dep, ignore=shutil.ignore_patterns("__pycache__"))
    new_additions(repo / "data" / "additions")  # ingest's dep: no new photos yet
    shutil.copy(ROOT / "data" / "label_review.csv", repo / "data" / "label_review.csv")   # subset's dep
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
           "DVC_NO_ANALYTICS": "1", "GIT_CONFIG_NOSYSTEM": "1"}

    def dvc(*args: str) -> str:
        proc = subprocess.run([str(Path(sys.executable).with_name("dvc")), *args], cwd=repo, env=env,
                              capture_output=True, text=True, timeout=900)
        assert proc.returncode == 0, f"dvc {' '.join(args)}:\n{proc.stdout}\n{proc.stderr}"
        return proc.stdout + proc.stderr

    subprocess.run(["git", "init", "-q"], cwd=repo, check=True)
    dvc("init", "-q")
    shutil.copy(ROOT / ".dvc" / "config", repo / ".dvc" / "config")  # remote 'local' = ../.dvc-remote
    shutil.copy(ROOT / ".gitignore", repo / ".gitignore")

    first = dvc("repro", "describe")
    for stage in RUN_STAGES:
        assert f"Running stage '{stage}'" in first
    for name in SUBSETS:
        assert (repo / f"reports/describe/{name}/kids_balance.png").is_file()
    assert len(read_manifest(repo / "data/validated/benchmark")) == tiny_validated.source.n_published
    catalog = read_manifest(repo / "data/validated/catalog")
    # DVC versions a few shards per subset, not a file per photo
    shards = sorted(p.name for p in (repo / "data/subset/catalog/shards").iterdir())
    assert shards == ["test-000000.tar", "train-000000.tar", "validation-000000.tar"]
    assert not (repo / "data/subset/catalog/images").exists() and len(catalog) > len(shards) * 10
    assert catalog["kids"].sum() > read_manifest(repo / "data/validated/benchmark")["kids"].sum()
    lock = yaml.safe_load((repo / "dvc.lock").read_text())["stages"]
    assert lock["ingest"]["params"]["params.yaml"]["ingest"]["source"] == str(tiny_validated.source.root)

    second = dvc("repro", "describe")
    assert "Running stage" not in second
    for stage in RUN_STAGES:
        assert f"Stage '{stage}' didn't change, skipping" in second

    before = files_digest(repo / "data")
    dvc("push")
    assert any((repo / ".dvc-remote").rglob("*")), "push wrote nothing to the remote"
    for out in ("data/manifest", "data/subset/benchmark", "data/subset/catalog", "data/validated/benchmark",
                "data/validated/catalog"):
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
    sub = subset(p.path(s["manifest"]), p.path(s["out"]) / "benchmark", subset_params(s, "benchmark"))
    assert sub.counts == {"train": 3068, "validation": 341, "test": 372}
    assert set(sub.dropped_labels) == {"Not sure", "Skip", "Other"} and sum(sub.dropped_labels.values()) > 250
    assert 20 <= sub.relabelled <= 40 and sub.published_missing == []
    bench = read_manifest(p.path(s["out"]) / "benchmark")
    assert not bench["kids"].any() and bench["category"].nunique() == 10

    cat = subset(p.path(s["manifest"]), p.path(s["out"]) / "catalog", subset_params(s, "catalog"))
    df = read_manifest(p.path(s["out"]) / "catalog")
    # every benchmark test image is a catalog test image; no sender straddles two splits
    bench_test = set(bench.loc[bench["split"] == "test", "id"])
    assert bench_test <= set(df.loc[df["split"] == "test", "id"]) and cat.kept_in_test == len(bench_test)
    assert (df.groupby("sender_id")["split"].nunique() == 1).all()
    assert sum(cat.kids.values()) > 250 and all(cat.kids[split] >= 20 for split in cat.kids)
    assert df["category"].nunique() > 10 and "kids" not in set(df["category"])
    assert set(cat.under_minimum) == {"blouse", "top"} and "blouse (23)" in cat.message
    report = json.loads((p.path(s["out"]) / "catalog" / "dropped.json").read_text())
    assert report["n_kept"] == len(df) and report["n_kept"] + report["n_dropped"] == got.n_images

    s = p.section("validate")
    for name, n in (("benchmark", 3781), ("catalog", len(df))):
        val = validate(p.path(s["subset"]) / name, p.path(s["out"]) / name, p.path(s["reports"]) / name, s)
        assert val.success and val.n_passed == n and val.quarantined == []

    s = p.section("describe")
    out = describe(p.path(s["validated"]) / "catalog" / "manifest.parquet", p.path(s["out"]) / "catalog", s)
    assert all(Path(f).stat().st_size > 10_000 for f in out.figures)
    summary = json.loads((p.path("reports/validate/benchmark") / "summary.json").read_text())
    assert summary["success"] and summary["n_checked"] == 3781
