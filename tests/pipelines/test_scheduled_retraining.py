"""Scheduled retraining end to end, with real parts: a git repository and a DVC local remote in a temporary
folder holding the generated tiny dataset as data versions, `fashionrec add-photos` (the real CLI: GX
suite, dvc add/repro/push, git commit), whole pipeline runs with kfp.local reading the data through DVC at
a git revision, and the real MLflow server.

1. run 1 on data v1: a champion is registered (with its lineage) and deployed;
2. run 2 on the same revision: "no change", nothing trained, registered or deployed;
3. new photos as data v2: the run trains on v2, re-scores the champion on v2's test split, and registers
   only when the winner beats it by select.min_improvement (both outcomes);
4. bad photos (unknown label, undecodable file, copy of a test image): refused or quarantined by name,
   no data version made.

The champion of run 1 is deliberately weak (a CNN at a negligible learning rate) and run 3's candidate is
`pixels` (no training loop: fast), so "better by min_improvement" is a certain outcome, not a coin toss.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from mlflow import MlflowClient

from fashionrec.core.config import Params, set_dotted
from fashionrec.core.errors import FashionrecError
from fashionrec.data.intake import sender_split
from fashionrec.data.manifest import SPLITS, read_dataset, read_manifest
from fashionrec.data.shards import read_image_bytes
from fashionrec.data.synthetic import draw_item
from fashionrec.data.versions import DataVersion, init_project
from fashionrec.kfp.client import LocalRun, run_local
from fashionrec.registry.gate import Champion, decide_fair

ROOT = Path(__file__).resolve().parents[2]
NAME = "scheduled-test"   # its own registered model on the shared test server
BIN = Path(sys.executable).parent
TRAINING = {"train", "evaluate", "score-champion", "select", "export", "register", "deploy"}
pytestmark = pytest.mark.filterwarnings("ignore:.*no effect in the current local runner:UserWarning")


# --- the project: git + DVC repository, data v1 ---------------------------------------------------------


class Project:
    def __init__(self, base: Path, tiny_source) -> None:
        self.base = base
        self.repo = base / "repo"
        self.tree = yaml.safe_load((ROOT / "params.yaml").read_text())
        overrides = {**self.tree["kfp"]["local"]["tiny"], "ingest.source": str(tiny_source.root),
                     "subset.subsets.benchmark.classes": list(tiny_source.classes), "register.name": NAME,
                     "index.model": f"models:/{NAME}@champion", "index.bundles": str(base / "bundles"),
                     "select.thresholds": {m: 0.0 for m in self.tree["select"]["thresholds"]},
                     "select.group_floors": {m: 0.0 for m in self.tree["select"]["group_floors"]}}
        for key, value in overrides.items():
            set_dotted(self.tree, key, value)
        self.v1: DataVersion = init_project(self.repo, ROOT, self.tree, base / "dvc-remote")
        self.runs: dict[str, LocalRun] = {}

    def params(self, **overrides) -> Params:
        """The pipeline's arguments come from these params (as a schedule's would); the data from the repo."""
        tree = json.loads(json.dumps(self.tree))
        for key, value in overrides.items():
            set_dotted(tree, key.replace("__", "."), value)
        return Params(tree=tree, root=self.repo)

    def run(self, label: str, **overrides) -> LocalRun:
        self.runs[label] = run_local(self.params(**overrides), pipeline_root=self.base / "runs",
                                     repo=self.repo, data_rev="main")
        print(f"\n[timing] run {label}: {self.runs[label].seconds} s, tasks {self.runs[label].tasks}")
        return self.runs[label]

    def head(self) -> str:
        return git(self.repo, "rev-parse", "HEAD")

    def bundles(self) -> tuple:
        """Everything serving would notice: the bundle folders, `current`, the activation history."""
        folder = self.base / "bundles"
        if not folder.is_dir():
            return ((), None, None)
        history = folder / "history.json"
        return (tuple(sorted(os.listdir(folder))), os.readlink(folder / "current"),
                history.read_text() if history.is_file() else None)

    def add_photos(self, folder: Path, *flags: str) -> subprocess.CompletedProcess:
        env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
               "DVC_NO_ANALYTICS": "1"}
        return subprocess.run([str(BIN / "fashionrec"), "add-photos", str(folder), "-p",
                               str(self.repo / "params.yaml"), *flags], cwd=self.repo, env=env,
                              capture_output=True, text=True, timeout=900)


def git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=repo, capture_output=True, text=True, check=True).stdout.strip()


# run 1: a champion that is easy to beat (one CNN, learning rate next to nothing)
WEAK = {"train__candidates": ["simple_cnn"], "train__models__simple_cnn__lr": 1.0e-7}
# run 3: the pixels candidate; δ opened wide so that only min_improvement decides (δ: test_fair_gate_rules)
RETRAIN = {"train__candidates": ["pixels"], "select__max_regression": 1.0}


@pytest.fixture(scope="module")
def project(mlflow_server, tiny_source, tmp_path_factory) -> Project:
    return Project(tmp_path_factory.mktemp("scheduled"), tiny_source)


def versions() -> list[str]:
    return sorted(v.version for v in MlflowClient().search_model_versions(f"name='{NAME}'"))


def champion() -> str | None:
    return MlflowClient().get_registered_model(NAME).aliases.get("champion")


# --- 1. data v1: trained, registered with its lineage, deployed ------------------------------------------


@pytest.fixture(scope="module")
def run1(project: Project) -> LocalRun:
    return project.run("1", **WEAK)


def test_run1_registers_a_champion_with_lineage_and_deploys(project: Project, run1: LocalRun):
    assert run1.lineage["changed"] is True and "no champion" in run1.lineage["reason"]
    assert run1.gate["passed"] is True
    assert {"fetch-data", "validate", "check-lineage", *TRAINING} <= set(run1.tasks)
    assert champion() == "1" and versions() == ["1"]
    tags = MlflowClient().get_model_version(NAME, "1").tags
    assert tags["lineage.data_rev"] == "main"
    assert tags["lineage.data_commit"] == project.v1.commit == tags["git_commit"]
    assert tags["lineage.data_md5"] == project.v1.md5 == tags["data_version"]
    assert tags["lineage.params_hash"].startswith("sha256:")
    assert tags["lineage.code_version"].startswith("sha256:")
    assert tags["lineage.pipeline_run_id"] not in ("", "None")
    # the pipeline read data/subset at main through DVC: what dvc repro wrote, checked against dvc.lock
    fetched = Path(run1.run_dir) / "fetch-data" / "subset"
    product = project.tree["subset"]["product"]
    assert len(read_manifest(fetched)) == len(read_manifest(project.repo / "data" / "subset" / product)) > 0
    lock = yaml.safe_load((project.repo / "dvc.lock").read_text())
    assert [o["md5"] for o in lock["stages"][f"subset@{product}"]["outs"]] == [project.v1.md5]
    assert tags["gate.passed"] == "true" and tags["kfp_run"].startswith("fashionrec-training")
    history = json.loads(MlflowClient().get_registered_model(NAME).tags["champion_history"])
    assert history[-1]["by"].startswith("kfp run fashionrec-training")
    # serving's current bundle holds that model and every validated image
    bundles, current, _ = project.bundles()
    assert current in bundles
    manifest = json.loads((project.base / "bundles" / current / "manifest.json").read_text())
    assert manifest["model"]["version"] == f"{NAME}/1"
    run = Path(run1.run_dir)
    summary = json.loads((run / "deploy" / "summary").read_text())
    assert summary["version"] == current
    assert summary["items"] == len(read_manifest(run / "validate" / "validated")) > 0
    # the candidate was trained (logged to MLflow) and evaluated; the pictures are viewable pages
    [loop] = sorted(run.glob("for-loop-*"))
    metrics = json.loads((loop / "evaluate" / "metrics").read_text())
    assert 0.0 <= metrics["test"]["micro_f1"] <= 1.0 and "top5" in metrics["instance"]
    plots = (loop / "evaluate" / "plots").read_text()   # confusion matrix, top-5 grid, misses by group
    assert plots.count("data:image/png;base64,") == 3 and "misses.csv" in plots
    assert (loop / "train" / "loss_curve").read_text().count("data:image/png;base64,") == 1
    ref = json.loads((loop / "train" / "model" / "mlflow.json").read_text())
    assert MlflowClient().get_run(ref["run_id"]).data.tags["evaluated"] == "true"
    docs = (run / "validate" / "data_docs").read_text()
    assert "Data validation: passed" in docs and docs.count("<iframe") == 3
    assert (run / "validate" / "reports" / "data_docs" / "index.html").is_file()


# --- 2. the same revision again: no change ----------------------------------------------------------------


def test_run2_same_revision_is_no_change(project: Project, run1: LocalRun):
    before = project.bundles()
    run2 = project.run("2", **WEAK)
    assert run2.lineage["changed"] is False
    assert run2.lineage["reason"].startswith("no change:") and project.v1.md5 in run2.lineage["reason"]
    assert not TRAINING & set(run2.tasks), run2.tasks          # nothing trained, scored or registered
    assert "record-no-change" in run2.tasks and run2.gate is None
    assert versions() == ["1"] and champion() == "1"
    assert project.bundles() == before                          # serving untouched
    report = (Path(run2.run_dir) / "record-no-change" / "report").read_text()
    assert report.startswith("## No change") and project.v1.md5 in report
    # ... and MLflow has a run saying so
    run_id = json.loads(run2.lineage["lineage"])["lineage.pipeline_run_id"]
    [mlflow_run] = MlflowClient().search_runs(
        [e.experiment_id for e in MlflowClient().search_experiments()],
        filter_string=f"tags.outcome = 'no change' and tags.step = 'no-change' and "
                      f"tags.`lineage.pipeline_run_id` = '{run_id}'")
    assert mlflow_run.data.tags["lineage.data_md5"] == project.v1.md5
    assert mlflow_run.data.tags["reason"] == run2.lineage["reason"]


# --- 3. new photos: data v2, a fair gate ------------------------------------------------------------------


def photo_folder(folder: Path, project: Project, n: int = 16, seed: int = 7, first_sender: int = 500) -> Path:
    """n new labelled photos of the tiny classes in the upstream layout, from new senders: one per split,
    each found so that add-photos gives it that split (sender_split), holding about the subset's share of
    the photos (at least two in train and in test)."""
    from fashionrec.data.synthetic import CLASSES

    product = project.tree["subset"]["product"]
    shares = read_dataset(project.repo / "data" / "subset" / product)["expected_shares"]
    quota = {s: max(2, round(n * shares[s])) for s in SPLITS}
    senders: dict[str, int] = {}
    candidate = first_sender
    while len(senders) < len(SPLITS):
        senders.setdefault(sender_split(candidate, shares), candidate)
        candidate += 1
    rng = np.random.default_rng(seed)
    (folder / "images").mkdir(parents=True)
    rows, labels = [], list(CLASSES)
    for split in SPLITS:
        for _ in range(quota[split]):
            label = labels[len(rows) % len(labels)]
            image_id = f"new-{seed}-{len(rows):03d}-{label.lower()}"
            draw_item(label, rng, (80, 80)).save(folder / "images" / f"{image_id}.jpg", quality=90)
            rows.append({"image": image_id, "sender_id": senders[split], "label": label, "kids": False})
    pd.DataFrame(rows).to_csv(folder / "images.csv", index=False)
    return folder


@pytest.fixture(scope="module")
def v2(project: Project, run1: LocalRun, tmp_path_factory) -> dict:
    folder = photo_folder(tmp_path_factory.mktemp("photos") / "batch", project)
    head = project.head()
    done = project.add_photos(folder)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    print(f"\n[timing] add-photos: {result}")
    assert result["version"]["commit"] == project.head() != head
    return result


def test_add_photos_records_a_new_data_version(project: Project, v2: dict):
    assert len(v2["added"]) >= 16 and v2["splits"]["test"] >= 2 and not v2["quarantined"]
    assert v2["splits"]["train"] >= 2 and v2["splits"]["validation"] >= 2
    assert v2["version"]["md5"] != project.v1.md5
    assert git(project.repo, "log", "-1", "--format=%s").startswith("data: add")
    changed = git(project.repo, "show", "--name-only", "--format=", "HEAD").split()
    assert {"data/additions.dvc", "dvc.lock"} <= set(changed)
    product = project.tree["subset"]["product"]
    subset = read_manifest(project.repo / "data" / "subset" / product)
    assert set(v2["added"]) <= set(subset["id"])
    # each new sender in one split, and no photo of data v1 moved to another split
    v1 = read_manifest(Path(project.runs["1"].run_dir) / "fetch-data" / "subset")
    assert (subset.groupby("sender_id")["split"].nunique() == 1).all()
    assert subset.set_index("id").loc[v1["id"], "split"].tolist() == v1["split"].tolist()
    # the benchmark subset is the published split: new photos never enter it
    bench = read_manifest(project.repo / "data" / "subset" / "benchmark")
    assert not set(v2["added"]) & set(bench["id"])
    # pushed: a fresh clone at that commit gets the bytes from the remote alone
    clone = project.base / "clone"
    subprocess.run(["git", "clone", "-q", str(project.repo), str(clone)], check=True)
    env = {**os.environ, "DVC_NO_ANALYTICS": "1"}
    subprocess.run([str(BIN / "dvc"), "pull", "-q", f"data/subset/{product}"], cwd=clone, check=True, env=env,
                   capture_output=True)
    assert len(read_manifest(clone / "data" / "subset" / product)) == len(subset)


def test_run3_no_improvement_is_no_change(project: Project, v2: dict):
    before = project.bundles()
    run3 = project.run("3a", **RETRAIN, select__min_improvement=1.0)   # no model can gain 1.0
    lineage = json.loads(run3.lineage["lineage"])
    assert run3.lineage["changed"] is True and "data_md5" in run3.lineage["reason"]
    assert lineage["lineage.data_md5"] == v2["version"]["md5"]
    assert lineage["lineage.data_commit"] == v2["version"]["commit"]
    assert {"train", "evaluate", "score-champion", "select", "record-rejection"} <= set(run3.tasks)
    assert not {"export", "register", "deploy"} & set(run3.tasks)
    assert run3.gate["passed"] is False and run3.gate["reason"].startswith("no change:")
    assert "re-scored on this run's test split" in run3.gate["reason"]
    assert versions() == ["1"] and champion() == "1" and project.bundles() == before
    check_champion_rescored_on_v2(project, run3)
    report = (Path(run3.run_dir) / "record-rejection" / "report").read_text()
    assert report.startswith(f"## Gate refused: {run3.gate['winner']}") and "| no |" in report


def test_run3_inputs_the_gate_refused_are_not_retrained(project: Project, v2: dict):
    """Run 3a's data, code and params again, the champion unchanged: the gate's refusal stands, nothing is
    trained (a weekly schedule would otherwise retrain and refuse the same thing every week)."""
    if "3a" not in project.runs:
        pytest.skip("needs run 3a (the refusal) first")
    refused = json.loads(project.runs["3a"].lineage["lineage"])["lineage.pipeline_run_id"]
    before = project.bundles()
    again = project.run("3a-again", **RETRAIN, select__min_improvement=1.0)
    assert again.lineage["changed"] is False
    reason = again.lineage["reason"]
    assert reason.startswith("no change:")
    assert f"already refused by the gate against champion v1 (pipeline run {refused})" in reason
    assert not TRAINING & set(again.tasks) and "record-no-change" in again.tasks, again.tasks
    assert versions() == ["1"] and champion() == "1" and project.bundles() == before


def check_champion_rescored_on_v2(project: Project, run: LocalRun) -> None:
    """The decision's champion figures are the re-score of this run (not its registered tags), made on
    this run's test split: v2's, larger than v1's."""
    out = Path(run.run_dir)
    decision = json.loads((out / "select" / "decision").read_text())
    rescored = json.loads((out / "score-champion" / "champion").read_text())
    assert decision["champion"]["rescored"] is True and decision["champion"]["version"] == rescored["version"]
    assert decision["champion"]["metrics"] == rescored["metrics"]
    validated = read_manifest(out / "validate" / "validated")
    per_class = pd.read_csv(out / "score-champion" / "reports" / "per_class.csv")
    tested = int(per_class.loc[per_class["decision"] == "argmax", "support"].sum())
    v1_test = int((read_manifest(Path(project.runs["1"].run_dir) / "validate" / "validated")["split"]
                   == "test").sum())
    assert tested == int((validated["split"] == "test").sum()) > v1_test


def test_run3_better_by_min_improvement_registers_v2(project: Project, v2: dict):
    run3_a = project.runs.get("3a")
    before = project.bundles()
    run3 = project.run("3b", **RETRAIN)                        # select.min_improvement from params.yaml
    gain = project.tree["select"]["min_improvement"]
    assert run3.gate["passed"] is True and "beats champion v1 re-scored" in run3.gate["reason"]
    decision = json.loads((Path(run3.run_dir) / "select" / "decision").read_text())
    [rule] = [c for c in decision["checks"] if c.get("rule") == "min_improvement"]
    assert rule["passed"] and rule["value"] >= rule["champion"] + gain
    check_champion_rescored_on_v2(project, run3)
    assert versions() == ["1", "2"] and champion() == "2"
    tags = MlflowClient().get_model_version(NAME, "2").tags
    assert tags["lineage.data_md5"] == v2["version"]["md5"]
    assert tags["lineage.data_commit"] == v2["version"]["commit"]
    assert tags["candidate"] == "pixels"
    assert tags["lineage.pipeline_run_id"] != MlflowClient().get_model_version(NAME, "1").tags[
        "lineage.pipeline_run_id"]
    bundles, current, _ = project.bundles()
    assert current != before[1] and current in bundles
    if run3_a is not None:  # the same data and code; only the gate's params differ
        a = json.loads(run3_a.lineage["lineage"])
        b = json.loads(run3.lineage["lineage"])
        assert a["lineage.code_version"] == b["lineage.code_version"]
        assert a["lineage.params_hash"] != b["lineage.params_hash"]


# --- 4. bad photos: refused or quarantined by name, no data version ---------------------------------------


def test_bad_photos_are_refused_by_name(project: Project, run1: LocalRun, tmp_path):
    folder = photo_folder(tmp_path / "bad", project, n=4, seed=11)
    rows = pd.read_csv(folder / "images.csv")
    product = project.tree["subset"]["product"]
    test_row = read_manifest(project.repo / "data" / "subset" / product).query("split == 'test'").iloc[0]
    (folder / "images" / "copy-of-test.jpg").write_bytes(read_image_bytes(test_row["abspath"]))
    (folder / "images" / "broken.jpg").write_bytes(b"\xff\xd8 this is not a JPEG")
    draw_item("Dress", np.random.default_rng(3), (80, 80)).save(folder / "images" / "a-hat.jpg")
    extra = pd.DataFrame([{"image": "copy-of-test", "sender_id": 900, "label": "Shoes", "kids": False},
                          {"image": "broken", "sender_id": 901, "label": "Pants", "kids": False},
                          {"image": "a-hat", "sender_id": 902, "label": "Hat", "kids": False}])
    pd.concat([rows, extra]).to_csv(folder / "images.csv", index=False)
    head, lock = project.head(), (project.repo / "dvc.lock").read_text()
    additions = sorted(os.listdir(project.repo / "data" / "additions" / "images"))

    done = project.add_photos(folder)                               # on_bad_file: quarantine
    assert done.returncode == 1
    err = done.stderr
    assert "add-photos refused, no data version made" in err
    assert "a-hat" in err and "category=hat" in err and str(folder / "images" / "a-hat.jpg") in err
    assert "copy-of-test" in err and f"test image {test_row['id']}" in err
    summary = json.loads((project.repo / "reports" / "intake" / "summary.json").read_text())
    assert [q["id"] for q in summary["quarantined"]] == ["broken"]   # the undecodable file: set aside
    assert "broken" not in err.split("refused", 1)[1]

    done = project.add_photos(folder, "--on-bad-file", "fail")      # now the broken file refuses too
    assert done.returncode == 1
    assert "broken" in done.stderr and str(folder / "images" / "broken.jpg") in done.stderr

    # the benchmark keeps the published split: new photos are never added to it
    done = project.add_photos(folder, "--set", "subset.product=benchmark")
    assert done.returncode == 1 and "subset 'benchmark'" in done.stderr and "grouped" in done.stderr

    # nothing was added, no data version created
    assert project.head() == head and (project.repo / "dvc.lock").read_text() == lock
    assert sorted(os.listdir(project.repo / "data" / "additions" / "images")) == additions
    assert git(project.repo, "status", "--porcelain", "--", "data", "dvc.lock") == ""


# --- the fair gate's rules, pure ---------------------------------------------------------------------------


def test_fair_gate_rules():
    params = {"primary_metric": "test.micro_f1", "thresholds": {"test.micro_f1": 0.5, "instance.top5": 0.5},
              "max_regression": 0.01, "min_improvement": 0.02}
    champ = Champion("3", {"test.micro_f1": 0.80, "instance.top5": 0.90}, "pixels")
    win = decide_fair({"a": {"test.micro_f1": 0.83, "instance.top5": 0.895}}, params, champ)
    assert win.passed and "beats champion v3" in win.reason
    tie = decide_fair({"a": {"test.micro_f1": 0.81, "instance.top5": 0.95}}, params, champ)
    assert not tie.passed and tie.reason.startswith("no change:") and "min_improvement 0.0200" in tie.reason
    regress = decide_fair({"a": {"test.micro_f1": 0.90, "instance.top5": 0.85}}, params, champ)
    assert not regress.passed and "instance.top5" in regress.reason and "trails champion v3" in regress.reason
    assert decide_fair({"a": {"test.micro_f1": 0.6, "instance.top5": 0.6}}, params, None).passed
    with pytest.raises(FashionrecError, match="min_improvement"):
        decide_fair({"a": {"test.micro_f1": 0.9}}, {**params, "min_improvement": -0.1}, champ)
