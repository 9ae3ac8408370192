"""The evaluate stage end to end on the tiny dataset, and its refusals."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from fashionrec.core.errors import EvaluationError
from fashionrec.data.manifest import read_dataset, read_manifest
from fashionrec.evaluate.evaluate import evaluate
from fashionrec.evaluate.groups import confusion_by_group_png, misses_by_pair
from fashionrec.models.factory import build_model, new_card
from fashionrec.models.store import save_model
from fashionrec.runtime.torch_runner import embed_model

KEYS = {
    "test": {"accuracy", "micro_f1", "macro_f1"},
    "retrieval": {"precision_at_1", "precision_at_5", "precision_at_10", "hit_at_1", "hit_at_5",
                  "hit_at_10", "map_at_10"},
    "instance": {"top1", "top5", "top10", "top20"},
    "latency": {"query_ms_p50", "query_ms_p99", "embed_ms_per_image"},
    "kids": {"n"},   # the published split's test images hold no kids' photo
    "adults": {"n", "accuracy", "precision_at_1", "precision_at_5"},
}
GROUP = {"n", "accuracy", "precision_at_1", "precision_at_5"}
FAST = {"instance": {"n_queries": 24}, "latency_queries": 20, "mlflow": False}


def eval_params(project, **changes) -> dict:
    s = project.params.section("evaluate")
    for key, value in {**FAST, **changes}.items():
        s[key] = {**s[key], **value} if isinstance(value, dict) else value
    return s


@pytest.fixture(scope="module")
def pixels_dir(tiny_validated, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A pixels candidate fitted on the tiny train split (nearest centroids: no gradient training)."""
    info = read_dataset(tiny_validated.validated)
    block = {"arch": "pixels", "size": 16}
    model = build_model(new_card("pixels", block, info["classes"], info["labels"]))
    df = read_manifest(tiny_validated.validated)
    train = df[df["split"] == "train"]
    emb = embed_model(model, list(train["abspath"]), backend="torch", progress=False).embeddings
    targets = torch.tensor([[lab in labels for lab in model.card.labels] for labels in train["labels"]])
    model.fit_once(torch.from_numpy(emb), targets)
    out = tmp_path_factory.mktemp("models") / "pixels"
    save_model(model, out)
    return out


def test_evaluate_writes_metrics_reports_and_pictures(tiny_validated, pixels_dir: Path, tmp_path: Path):
    metrics_path, reports = tmp_path / "metrics" / "pixels.json", tmp_path / "reports" / "pixels"
    result = evaluate(pixels_dir, tiny_validated.validated, metrics_path, reports,
                      eval_params(tiny_validated), progress=False)
    tree = json.loads(metrics_path.read_text())
    assert {k: set(v) for k, v in tree.items()} == KEYS
    for section in ("test", "retrieval", "instance"):
        for key, value in tree[section].items():
            assert 0.0 <= value <= 1.0, f"{section}.{key}={value}"
    assert all(v > 0 for v in tree["latency"].values())
    # Coloured shapes: raw pixels already separate the classes well above chance (0.25).
    assert tree["test"]["accuracy"] > 0.5 and tree["retrieval"]["precision_at_1"] > 0.5
    assert tree["instance"]["top20"] >= tree["instance"]["top1"]
    per_class = pd.read_csv(reports / "per_class.csv")
    assert list(per_class.columns) == ["label", "decision", "precision", "recall", "f1", "support"]
    assert set(per_class["label"]) == set(read_dataset(tiny_validated.validated)["labels"])
    assert per_class.loc[per_class["decision"] == "argmax", "support"].sum() == result.counts["test"]
    for name in ("confusion_matrix.png", "retrieval_grid.png"):
        assert (reports / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert result.counts["inventory"] == 40 and result.counts["test"] == 8


@pytest.fixture(scope="module")
def trained_cnn(tiny_validated, mlflow_server: str, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """simple_cnn really trained (1 epoch) on the tiny dataset, its run on the test MLflow server."""
    from fashionrec.train.loop import train

    section = tiny_validated.params.section("train")
    section["models"]["simple_cnn"].update(epochs=1, size=32, batch_size=16)
    root = tmp_path_factory.mktemp("trained")
    out = root / "models" / "simple_cnn"
    train("simple_cnn", section, manifest=tiny_validated.validated / "manifest.parquet", out_dir=out,
          cache_dir=root / ".cache" / "features", checkpoint_dir=root / ".cache" / "checkpoints",
          tracking_params=tiny_validated.params, seed=0)
    return out


def test_evaluate_a_trained_candidate_logs_into_its_training_run(tiny_validated, trained_cnn: Path,
                                                                  mlflow_server: str, tmp_path: Path) -> None:
    from mlflow.tracking import MlflowClient

    metrics_path, reports = tmp_path / "metrics" / "simple_cnn.json", tmp_path / "reports" / "simple_cnn"
    result = evaluate(trained_cnn, tiny_validated.validated, metrics_path, reports,
                      eval_params(tiny_validated, mlflow=True), progress=False)
    tree = json.loads(metrics_path.read_text())
    assert {k: set(v) for k, v in tree.items()} == KEYS
    for section in ("test", "retrieval", "instance"):
        assert all(0.0 <= v <= 1.0 for v in tree[section].values()), tree[section]
    assert result.backend.startswith("onnx:")  # the default backend really ran in ONNX Runtime

    run_id = json.loads((trained_cnn / "mlflow.json").read_text())["run_id"]
    assert result.mlflow_run_id == run_id
    client = MlflowClient(tracking_uri=mlflow_server)
    run = client.get_run(run_id)
    for section, values in tree.items():
        for key, value in values.items():
            assert run.data.metrics[f"{section}.{key}"] == pytest.approx(value), f"{section}.{key}"
    assert "best_val_micro_f1" in run.data.metrics  # the same run training logged into
    assert run.data.tags["evaluated"] == "true" and run.data.tags["evaluate.index"] == "balltree"
    logged = {a.path for a in client.list_artifacts(run_id, "evaluation")}
    assert logged == {f"evaluation/{n}" for n in ("simple_cnn.json", "per_class.csv", "confusion_matrix.png",
                                                  "retrieval_grid.png", "per_category.csv", "by_group.png",
                                                  "misses.csv", "confusion_by_group.png")}


def test_catalog_and_benchmark_are_scored_by_group_and_category(tiny_validated, pixels_dir: Path,
                                                                tmp_path: Path) -> None:
    """The product's test split (kids included) and the benchmark's, each by group and category."""
    metrics_path, reports = tmp_path / "m.json", tmp_path / "r"
    result = evaluate(pixels_dir, tiny_validated.catalog_validated, metrics_path, reports,
                      eval_params(tiny_validated), progress=False, benchmark_dir=tiny_validated.validated)
    tree = json.loads(metrics_path.read_text())
    catalog = read_manifest(tiny_validated.catalog_validated)
    test = catalog[catalog["split"] == "test"]
    assert set(tree["kids"]) == set(tree["adults"]) == GROUP
    assert tree["kids"]["n"] == test["kids"].sum() >= 4 and tree["adults"]["n"] == (~test["kids"]).sum()
    n = tree["kids"]["n"] + tree["adults"]["n"]
    for key in ("accuracy", "precision_at_1"):  # the groups split the whole: weighted means agree
        whole = tree["test" if key == "accuracy" else "retrieval"][key]
        parts = (tree["kids"][key] * tree["kids"]["n"] + tree["adults"][key] * tree["adults"]["n"]) / n
        assert parts == pytest.approx(whole, abs=1e-5)
    bench = tree["benchmark"]
    assert bench["test"]["n"] == 8 and bench["kids"] == {"n": 0} and set(bench["adults"]) == GROUP
    assert 0.5 < bench["test"]["accuracy"] <= 1.0 and "precision_at_5" in bench["retrieval"]
    table = pd.read_csv(reports / "per_category.csv")
    assert set(table["split"]) == {"catalog", "benchmark"}
    overall = table[(table["split"] == "catalog") & (table["group"] == "all")]
    assert overall["n"].sum() == len(test) and set(overall["category"]) == set(test["category"])
    kids_rows = table[(table["split"] == "catalog") & (table["group"] == "kids")]
    assert kids_rows["n"].sum() == tree["kids"]["n"]
    assert (reports / "by_group.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert result.counts["test"] == len(test)


def test_misses_by_pair_counts_a_hand_built_case(tmp_path: Path) -> None:
    truth = np.array(["a", "a", "a", "b", "b", "c"])
    kids = np.array([True, True, False, False, True, False])
    answers = {"argmax": np.array(["a", "b", "b", "b", "a", "a"]),
               "nearest": np.array(["a", "a", "c", "b", "b", "c"])}
    table = misses_by_pair(truth, answers, kids)
    assert table.to_dict("records") == [
        {"group": "all", "kind": "argmax", "true": "a", "predicted": "b", "count": 2,
         "share": pytest.approx(2 / 3)},
        {"group": "all", "kind": "argmax", "true": "b", "predicted": "a", "count": 1, "share": 0.5},
        {"group": "all", "kind": "argmax", "true": "c", "predicted": "a", "count": 1, "share": 1.0},
        {"group": "all", "kind": "nearest", "true": "a", "predicted": "c", "count": 1,
         "share": pytest.approx(1 / 3)},
        {"group": "kids", "kind": "argmax", "true": "a", "predicted": "b", "count": 1, "share": 0.5},
        {"group": "kids", "kind": "argmax", "true": "b", "predicted": "a", "count": 1, "share": 1.0},
        {"group": "adults", "kind": "argmax", "true": "a", "predicted": "b", "count": 1, "share": 1.0},
        {"group": "adults", "kind": "argmax", "true": "c", "predicted": "a", "count": 1, "share": 1.0},
        {"group": "adults", "kind": "nearest", "true": "a", "predicted": "c", "count": 1, "share": 1.0},
    ]
    # No miss at all: an empty table with the columns; a group without photos still gets its panel.
    right = misses_by_pair(truth, {"argmax": truth}, kids)
    assert right.empty and list(right.columns) == ["group", "kind", "true", "predicted", "count", "share"]
    path = confusion_by_group_png(truth, answers, np.zeros(6, dtype=bool), ["c", "b", "a", "unused"],
                                  tmp_path / "c.png", "hand-built")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(ValueError, match=r"predicted\[nearest\] has shape \(5,\)"):
        misses_by_pair(truth, {"argmax": truth, "nearest": truth[:5]}, kids)


def test_missing_run_reference_fails_before_any_work(tiny_validated, pixels_dir: Path,
                                                     tmp_path: Path) -> None:
    with pytest.raises(EvaluationError, match="mlflow.json"):
        evaluate(pixels_dir, tiny_validated.validated, tmp_path / "m.json", tmp_path / "r",
                 eval_params(tiny_validated, mlflow=True), progress=False)
    assert not (tmp_path / "m.json").exists() and not (tmp_path / "r").exists()


def _copy_with_splits(project, tmp_path: Path, change, source: Path | None = None) -> Path:
    """A validated folder (`source`, the benchmark's by default) whose manifest is changed by `change`
    (absolute image paths)."""
    source = source or project.validated
    df = read_manifest(source)
    df["path"] = df["abspath"]
    df = change(df.drop(columns=["abspath"]))
    out = tmp_path / "validated"
    out.mkdir()
    df.to_parquet(out / "manifest.parquet", index=False)
    shutil.copy(source / "dataset.json", out / "dataset.json")
    return out


@pytest.mark.parametrize("case, message", [
    ("empty", "test split is empty"),
    ("single", "single class"),
])
def test_unusable_test_split_fails_clearly(tiny_validated, pixels_dir: Path, tmp_path: Path,
                                           case: str, message: str) -> None:
    def change(df: pd.DataFrame) -> pd.DataFrame:
        test = df["split"] == "test"
        if case == "empty":
            df.loc[test, "split"] = "train"
        else:
            keep = df["category"] == df.loc[test, "category"].iloc[0]
            df = df[~test | keep]
        return df

    data = _copy_with_splits(tiny_validated, tmp_path, change)
    with pytest.raises(EvaluationError, match=message):
        evaluate(pixels_dir, data, tmp_path / "m.json", tmp_path / "r", eval_params(tiny_validated),
                 progress=False)
    assert not (tmp_path / "m.json").exists()


def test_bad_params_name_the_key(tiny_validated, pixels_dir: Path, tmp_path: Path) -> None:
    for change, key in (({"batch_size": 0}, "evaluate.batch_size"),
                        ({"backend": "tpu"}, "evaluate.backend"),
                        ({"instance": {"crop_scale": [0.5, 2.0]}}, "evaluate.instance.crop_scale")):
        with pytest.raises(EvaluationError, match=key.replace(".", r"\.")):
            evaluate(pixels_dir, tiny_validated.validated, tmp_path / "m.json", tmp_path / "r",
                     eval_params(tiny_validated, **change), progress=False)


def test_index_kinds_give_the_same_retrieval_metrics(tiny_validated, pixels_dir: Path,
                                                     tmp_path: Path) -> None:
    trees = {}
    for kind in ("balltree", "brute"):
        path = tmp_path / f"{kind}.json"
        evaluate(pixels_dir, tiny_validated.validated, path, tmp_path / kind,
                 eval_params(tiny_validated, index={"kind": kind}), progress=False)
        trees[kind] = json.loads(path.read_text())
    for section in ("test", "retrieval", "instance"):
        assert trees["balltree"][section] == pytest.approx(trees["brute"][section])
    assert np.isfinite(trees["brute"]["latency"]["query_ms_p99"])


def test_cli_runs_the_stage_and_reports_errors_in_one_line(tiny_validated, pixels_dir: Path,
                                                           tmp_path: Path) -> None:
    import subprocess
    import sys

    exe = str(Path(sys.executable).with_name("fashionrec"))
    base = [exe, "evaluate", "-p", str(tiny_validated.root / "params.yaml"),
            "-s", f"evaluate.models_dir={pixels_dir.parent}", "-s", f"evaluate.metrics_dir={tmp_path / 'm'}",
            "-s", f"evaluate.reports={tmp_path / 'r'}", "-s", "evaluate.instance.n_queries=8",
            "-s", "evaluate.latency_queries=5", "--no-mlflow", "--index", "brute"]
    done = subprocess.run([*base, "pixels"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    assert out["metrics"] == json.loads((tmp_path / "m" / "pixels.json").read_text())
    assert (tmp_path / "r" / "pixels" / "retrieval_grid.png").is_file()
    failed = subprocess.run([*base, "no_such_candidate"], capture_output=True, text=True, timeout=300)
    assert failed.returncode == 1
    assert failed.stderr.strip().splitlines()[-1].startswith("error: model file not found")
    assert "no_such_candidate" in failed.stderr


def test_misses_add_up_to_what_each_group_got_wrong(tiny_validated, pixels_dir: Path, tmp_path: Path) -> None:
    """A catalog whose test split has a kids' dress labelled pants and an adults' pants labelled shoes: the
    misses by category pair hold those pairs and add up, per group and kind, to the photos missed."""
    def relabel(df: pd.DataFrame) -> pd.DataFrame:
        test = df["split"] == "test"
        kids_dress = df.index[test & df["kids"] & (df["category"] == "dress")][0]
        adults_pants = df.index[test & ~df["kids"] & (df["category"] == "pants")][0]
        df.loc[kids_dress, "category"], df.loc[adults_pants, "category"] = "pants", "shoes"
        return df

    data = _copy_with_splits(tiny_validated, tmp_path, relabel, tiny_validated.catalog_validated)
    metrics_path, reports = tmp_path / "m.json", tmp_path / "r"
    result = evaluate(pixels_dir, data, metrics_path, reports, eval_params(tiny_validated), progress=False)
    tree = json.loads(metrics_path.read_text())
    misses = pd.read_csv(reports / "misses.csv")
    assert list(misses.columns) == ["group", "kind", "true", "predicted", "count", "share"]
    assert (misses["true"] != misses["predicted"]).all() and (misses["count"] > 0).all()
    assert list(misses["count"]) == sorted(misses["count"], reverse=True)
    pairs = set(misses[["group", "kind", "true", "predicted"]].itertuples(index=False, name=None))
    for kind in ("argmax", "nearest"):
        assert {("kids", kind, "pants", "dress"), ("adults", kind, "shoes", "pants"),
                ("all", kind, "pants", "dress"), ("all", kind, "shoes", "pants")} <= pairs
    summed = misses.groupby(["group", "kind"])["count"].sum()
    n = tree["kids"]["n"] + tree["adults"]["n"]
    groups = {"all": {"n": n, "accuracy": tree["test"]["accuracy"],
                      "precision_at_1": tree["retrieval"]["precision_at_1"]},
              "kids": tree["kids"], "adults": tree["adults"]}
    for group, values in groups.items():
        for kind, key in (("argmax", "accuracy"), ("nearest", "precision_at_1")):
            wrong = round(values["n"] * (1 - values[key]))
            assert wrong >= 1 and summed[(group, kind)] == wrong, (group, kind)
    photos = pd.read_csv(reports / "per_category.csv").set_index(["group", "category"])["n"]
    for row in misses.itertuples():
        assert row.share == pytest.approx(row.count / photos[(row.group, row.true)], abs=1e-4)
    assert (reports / "confusion_by_group.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert {str(reports / "misses.csv"), str(reports / "confusion_by_group.png")} <= set(result.reports)
