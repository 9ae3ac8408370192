"""The evaluate stage: one candidate on the test split, as labels, category retrieval and instance retrieval.

Queries are the test images; the inventory (the store) is train + validation. Every image is decoded and
embedded once (ONNX Runtime by default), the inventory goes into the index serving would use, and the
results become `metrics/<candidate>.json` (nested, for `dvc metrics`), pictures and a per-class CSV in
`reports/evaluate/<candidate>/`, and metrics + artifacts in the candidate's MLflow training run.
Every test split is also scored per group (`kids`, `adults`) and per category (`per_category.csv`,
`by_group.png`), and the catalog test split's misses are counted by (true, predicted) category pair per
group, for the classifier and the nearest item (`misses.csv`, `confusion_by_group.png`); with a `benchmark`
folder (the published top-10 split) its test split is scored too, under `benchmark.*`, reusing the
embeddings of the images both folders hold.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from fashionrec.core.config import dotted_leaves
from fashionrec.core.errors import EvaluationError, FashionrecError
from fashionrec.core.settings import EvaluateSection, check
from fashionrec.core.tracking import RUN_REF, read_run_ref
from fashionrec.data.images import open_image
from fashionrec.data.manifest import read_manifest
from fashionrec.evaluate import metrics as m
from fashionrec.evaluate.groups import (
    by_category,
    by_group,
    by_group_png,
    confusion_by_group_png,
    misses_by_pair,
)
from fashionrec.evaluate.instance import Augmentation, make_queries, sample_sources
from fashionrec.evaluate.plots import GridRow, confusion_matrix_png, retrieval_grid_png
from fashionrec.evaluate.retrieval import (
    INSTANCE_KS,
    RETRIEVAL_KS,
    category_retrieval,
    instance_retrieval,
    query_latency,
)
from fashionrec.index import IN_PROCESS, build_index, resolve_kind
from fashionrec.models.base import EmbeddingModel, ModelCard
from fashionrec.models.store import load_model
from fashionrec.runtime.embed import embed_images
from fashionrec.runtime.torch_runner import make_runner

INVENTORY_SPLITS = ("train", "validation")
TEST_SPLIT = "test"


@dataclass
class EvaluateResult:
    candidate: str
    metrics: dict[str, dict[str, float]]
    metrics_path: str
    reports: list[str]
    counts: dict[str, int]
    backend: str
    seconds: dict[str, float]
    mlflow_run_id: str | None = None
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"candidate": self.candidate, "metrics": self.metrics, "metrics_path": self.metrics_path,
                "reports": self.reports, "counts": self.counts, "backend": self.backend,
                "seconds": {k: round(v, 2) for k, v in self.seconds.items()},
                "mlflow_run_id": self.mlflow_run_id, "notes": self.notes}


# --- parameters ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class EvalConfig:
    backend: str
    device: str
    batch_size: int
    flip_tta: bool
    index_kind: str
    index_params: dict[str, dict[str, Any]]   # per kind
    auto_exact_max: int
    latency_queries: int
    instance_queries: int
    augmentation: Augmentation
    grid_queries: int
    thumb: int
    seed: int
    mlflow: bool


def read_config(params: Mapping[str, Any]) -> EvalConfig:
    """The `evaluate` section, checked (`EvaluateSection`: every error names its parameter; its fields are
    the defaults). An index kind's parameters are those set (the index classes default the rest)."""
    s = check(EvaluateSection, params, "evaluate", error=EvaluationError)
    kinds = {name: getattr(s.index, name) for name in IN_PROCESS}   # evaluation searches in-process
    kind_params = {name: kind.model_dump(exclude_unset=True) if kind else {} for name, kind in kinds.items()}
    return EvalConfig(
        backend=s.backend, device=s.device, batch_size=s.batch_size, flip_tta=s.flip_tta,
        index_kind=s.index.kind, index_params=kind_params, auto_exact_max=s.index.auto_exact_max,
        latency_queries=s.latency_queries, instance_queries=s.instance.n_queries,
        augmentation=Augmentation.from_params(s.instance.model_dump(exclude={"n_queries"})),
        grid_queries=s.grid.n_queries, thumb=s.grid.thumb, seed=s.seed, mlflow=s.mlflow)


# --- data ----------------------------------------------------------------------------------------------


def split_frames(df: pd.DataFrame, card: ModelCard, source: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(test queries, train + validation inventory); refuses splits that cannot be evaluated."""
    if "split" not in df.columns:
        raise EvaluationError(f"{source}: manifest has no 'split' column (evaluate needs data/validated)")
    test = df[df["split"] == TEST_SPLIT].reset_index(drop=True)
    inventory = df[df["split"].isin(INVENTORY_SPLITS)].reset_index(drop=True)
    if test.empty:
        raise EvaluationError(f"{source}: the test split is empty; nothing to evaluate")
    present = sorted(test["category"].unique())
    if len(present) < 2:
        raise EvaluationError(f"{source}: the test split holds a single class ({present[0]!r}, {len(test)} "
                            "images); accuracy and retrieval need at least two classes")
    unknown = sorted(set(df["category"]) - set(card.classes))
    if unknown:
        raise EvaluationError(f"{source}: categories {unknown} are not among the classes of candidate "
                            f"'{card.candidate}' ({card.classes}); was it trained on another dataset?")
    need = max(*RETRIEVAL_KS, *INSTANCE_KS)
    if len(inventory) < need:
        raise EvaluationError(f"{source}: the inventory (train + validation) has {len(inventory)} images; "
                            f"top-{need} retrieval needs at least {need}")
    return test, inventory


def label_matrix(labels: pd.Series, vocabulary: list[str]) -> np.ndarray:
    """Multi-label targets (N, len(vocabulary)) from the manifest's `labels` lists."""
    position = {name: i for i, name in enumerate(vocabulary)}
    out = np.zeros((len(labels), len(vocabulary)), dtype=bool)
    for row, names in enumerate(labels):
        for name in names:
            if name in position:
                out[row, position[name]] = True
    return out


# --- metrics -------------------------------------------------------------------------------------------


def label_metrics(logits: np.ndarray, test: pd.DataFrame,
                  card: ModelCard) -> tuple[dict[str, float], pd.DataFrame, np.ndarray]:
    """test.{accuracy, micro_f1, macro_f1}, the per-class report and the confusion matrix."""
    n_classes = len(card.classes)
    if logits.shape[1] != len(card.labels):
        raise EvaluationError(f"candidate '{card.candidate}' returns {logits.shape[1]} logits for "
                            f"{len(card.labels)} labels in its card")
    class_index = {c: i for i, c in enumerate(card.classes)}
    y_true = test["category"].map(class_index).to_numpy()
    y_pred = logits[:, :n_classes].argmax(axis=1)
    truth = label_matrix(test["labels"], card.labels)
    thresholds = np.array([card.threshold(label) for label in card.labels])
    predicted = m.sigmoid(logits) >= thresholds
    scores = {"accuracy": m.accuracy(y_true, y_pred), "micro_f1": m.micro_f1(truth, predicted),
              "macro_f1": m.macro_f1(truth, predicted)}
    # Classes as the argmax decides them (the confusion-matrix view); attributes by their sigmoid, at the
    # threshold the model carries (training may choose one on validation for a rare attribute).
    classes = m.per_label_report(m.one_hot(y_true, n_classes), m.one_hot(y_pred, n_classes), card.classes)
    classes.insert(1, "decision", "argmax")
    attributes = m.per_label_report(truth[:, n_classes:], predicted[:, n_classes:], card.labels[n_classes:])
    attributes.insert(1, "decision", [f"sigmoid>={t:.4g}" for t in thresholds[n_classes:]])
    report = pd.concat([classes, attributes], ignore_index=True)
    return scores, report, m.confusion_matrix(y_true, y_pred, n_classes)


def grid_rows(test: pd.DataFrame, inventory: pd.DataFrame, distances: np.ndarray, indices: np.ndarray,
              card: ModelCard, n: int, k: int, thumb: int, seed: int) -> list[GridRow]:
    """A seeded pick of test queries, one per class first, with their top-k inventory results."""
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(test))
    picked: list[int] = []
    seen: set[str] = set()
    for i in order:  # one per class, then any
        if test["category"].iat[i] not in seen:
            picked.append(int(i))
            seen.add(test["category"].iat[i])
    picked = (picked + [int(i) for i in order if int(i) not in picked])[:n]
    # The model's framing at a size people can see (the model's own input may be 16 px).
    view = dataclasses.replace(card.prep, size=thumb)

    def pixels(path: str) -> np.ndarray:
        return np.asarray(view.resize_crop(open_image(path)))

    return [GridRow(query=pixels(test["abspath"].iat[q]), query_label=test["category"].iat[q],
                    results=[pixels(inventory["abspath"].iat[j]) for j in indices[q, :k]],
                    result_labels=[inventory["category"].iat[j] for j in indices[q, :k]],
                    distances=[float(d) for d in distances[q, :k]]) for q in picked]


# --- MLflow --------------------------------------------------------------------------------------------


def training_run_ref(model_dir: Path) -> dict[str, str]:
    """The training run's reference (`mlflow.json`), read before any work so a missing one fails fast."""
    try:
        return read_run_ref(model_dir)
    except FashionrecError as exc:
        raise EvaluationError(f"{exc}; or set evaluate.mlflow=false to evaluate without logging") from exc


def log_to_training_run(model_dir: Path, tree: dict[str, dict[str, float]], files: list[Path],
                        tags: dict[str, str]) -> str:
    """Add the metrics, report files and tags to the run in `<model_dir>/mlflow.json`; returns its id."""
    from mlflow.entities import Metric
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    ref = training_run_ref(model_dir)
    run_id, where = ref["run_id"], model_dir / RUN_REF
    # The run lives where training logged it; MLFLOW_TRACKING_URI only when the reference does not say.
    client = MlflowClient(tracking_uri=ref.get("tracking_uri") or os.environ.get("MLFLOW_TRACKING_URI"))
    try:
        client.get_run(run_id)
        now = int(time.time() * 1000)
        metrics = [Metric(k, float(v), now, 0) for k, v in dotted_leaves(tree).items()]
        client.log_batch(run_id, metrics=metrics)
        for path in files:
            client.log_artifact(run_id, str(path), artifact_path="evaluation")
        for key, value in {"evaluated": "true", **tags}.items():
            client.set_tag(run_id, key, value)
    except MlflowException as exc:
        raise EvaluationError(f"MLflow run {run_id} (from {where}) at {client.tracking_uri}: "
                            f"{exc.message}") from exc
    return run_id


# --- the stage -----------------------------------------------------------------------------------------


def benchmark_scores(bench: pd.DataFrame, embeddings: np.ndarray, logits: np.ndarray, card: ModelCard,
                     cfg: EvalConfig, source: str) -> tuple[dict[str, Any], pd.DataFrame]:
    """The published split's test images against its own train + validation inventory.

    Category accuracy takes the argmax over the benchmark's classes only (the task its published figures
    measure: a 10-way classifier); `accuracy_all_classes` over every class of the model.
    """
    classes = sorted(bench["category"].unique())
    unknown = [c for c in classes if c not in card.classes]
    if unknown:
        raise EvaluationError(f"{source}: benchmark categories {unknown} are not among the classes of "
                            f"candidate '{card.candidate}'")
    test = (bench["split"] == TEST_SPLIT).to_numpy()
    truth = bench.loc[test, "category"].to_numpy()
    own = np.array([card.classes.index(c) for c in classes])
    correct = np.array(classes)[logits[test][:, own].argmax(1)] == truth
    every = np.array(card.classes)[logits[test, :len(card.classes)].argmax(1)] == truth
    kind = resolve_kind(cfg.index_kind, int((~test).sum()), cfg.auto_exact_max)
    index = build_index(embeddings[~test], kind, **cfg.index_params[kind])
    _, indices = index.query(embeddings[test], max(RETRIEVAL_KS))
    inventory = bench.loc[~test, "category"].to_numpy()
    relevant = inventory[indices] == truth[:, None]
    kids = bench.loc[test, "kids"].to_numpy(dtype=bool)
    tree = {"test": {"accuracy": float(correct.mean()), "accuracy_all_classes": float(every.mean()),
                     "n": int(test.sum())},
            "retrieval": category_retrieval(indices, truth, inventory), **by_group(correct, relevant, kids)}
    return tree, by_category("benchmark", truth, correct, relevant, kids)


def rounded(tree: dict[str, Any]) -> dict[str, Any]:
    """Every float rounded to 6 digits, nesting kept (counts stay ints)."""
    return {k: rounded(v) if isinstance(v, dict) else (round(float(v), 6) if isinstance(v, float) else v)
            for k, v in tree.items()}


def evaluate(model_dir: Path, data_dir: Path, metrics_path: Path, reports_dir: Path,
             params: dict[str, Any], *, progress: bool = True,
             benchmark_dir: Path | None = None) -> EvaluateResult:
    """Evaluate the candidate saved in model_dir on data_dir's test split (see the module docstring);
    with `benchmark_dir`, also on that folder's test split against its own inventory."""
    started = time.perf_counter()
    cfg = read_config(params)
    model_dir, data_dir = Path(model_dir), Path(data_dir)
    if cfg.mlflow:
        training_run_ref(model_dir)
    model: EmbeddingModel = load_model(model_dir)
    card = model.card
    df = read_manifest(data_dir)
    test, inventory = split_frames(df, card, str(data_dir))
    runner = make_runner(model, cfg.backend, cfg.device)
    embed = dict(batch_size=cfg.batch_size, prep=card.prep, flip_tta=cfg.flip_tta, progress=progress)

    bench = None if benchmark_dir is None else read_manifest(benchmark_dir)
    if bench is not None and "split" not in bench.columns:
        raise EvaluationError(f"{benchmark_dir}: manifest has no 'split' column (evaluate needs a validated "
                            "folder)")
    # Test images, inventory and the benchmark's other images in one pass: each decoded once.
    row = {sha: i for i, sha in enumerate([*test["sha256"], *inventory["sha256"]])}
    extra: list[str] = []
    for path, sha in ([] if bench is None else zip(bench["abspath"], bench["sha256"], strict=True)):
        if sha not in row:
            row[sha] = len(row)
            extra.append(path)
    out = embed_images(runner, [*test["abspath"], *inventory["abspath"], *extra],
                       desc=f"embed {card.candidate}", **embed)
    queries, stock = out.embeddings[:len(test)], out.embeddings[len(test):len(test) + len(inventory)]
    scores, per_class, cm = label_metrics(out.logits[:len(test)], test, card)

    kind = resolve_kind(cfg.index_kind, len(stock), cfg.auto_exact_max)
    index = build_index(stock, kind, **cfg.index_params[kind])
    k = max(*RETRIEVAL_KS, *INSTANCE_KS)
    distances, indices = index.query(queries, k)
    retrieval = category_retrieval(indices[:, :max(RETRIEVAL_KS)], test["category"].to_numpy(),
                                   inventory["category"].to_numpy())
    latency = query_latency(index, queries, 5, cfg.latency_queries)
    latency["embed_ms_per_image"] = out.ms_per_image

    t_instance = time.perf_counter()
    sources = sample_sources(len(inventory), cfg.instance_queries, cfg.seed)
    shots = make_queries(inventory["abspath"].to_numpy()[sources], cfg.augmentation, card.prep, cfg.seed,
                         progress=progress)
    shot_emb = embed_images(runner, shots, desc="embed instance queries", **embed).embeddings
    instance = instance_retrieval(index.query(shot_emb, k)[1], sources)
    t_instance = time.perf_counter() - t_instance

    truth = test["category"].to_numpy()
    answers = {"argmax": np.array(card.classes)[out.logits[:len(test), :len(card.classes)].argmax(1)],
               "nearest": inventory["category"].to_numpy()[indices[:, 0]]}
    correct = answers["argmax"] == truth
    relevant = inventory["category"].to_numpy()[indices[:, :max(RETRIEVAL_KS)]] == truth[:, None]
    kids = test["kids"].to_numpy(dtype=bool)
    tree: dict[str, Any] = {"test": scores, "retrieval": retrieval, "instance": instance, "latency": latency,
                            **by_group(correct, relevant, kids)}
    table = by_category(data_dir.name, truth, correct, relevant, kids)
    if bench is not None:
        rows = np.array([row[sha] for sha in bench["sha256"]])
        tree["benchmark"], bench_table = benchmark_scores(bench, out.embeddings[rows], out.logits[rows], card,
                                                          cfg, str(benchmark_dir))
        table = pd.concat([table, bench_table], ignore_index=True)
    tree = rounded(tree)
    bad = [key for key, v in dotted_leaves(tree).items() if not math.isfinite(v)]
    if bad:
        raise EvaluationError(f"candidate '{card.candidate}': non-finite metrics {bad}")

    reports_dir = Path(reports_dir)
    reports_dir.mkdir(parents=True, exist_ok=True)
    per_class_path = reports_dir / "per_class.csv"
    per_class.to_csv(per_class_path, index=False, float_format="%.4f")
    cm_path = confusion_matrix_png(cm, card.classes, reports_dir / "confusion_matrix.png",
                                   f"{card.candidate}: test accuracy {scores['accuracy']:.3f}")
    grid_path = retrieval_grid_png(
        grid_rows(test, inventory, distances, indices, card, cfg.grid_queries, 5, cfg.thumb, cfg.seed),
        reports_dir / "retrieval_grid.png",
        f"{card.candidate}: test query -> top-5 of the inventory ({index.kind}, Euclidean distance)")
    per_category_path = reports_dir / "per_category.csv"
    table.to_csv(per_category_path, index=False, float_format="%.4f")
    groups_path = by_group_png(table, reports_dir / "by_group.png",
                               f"{card.candidate}: category of the nearest item, kids and adults")
    misses_path = reports_dir / "misses.csv"
    misses_by_pair(truth, answers, kids).to_csv(misses_path, index=False, float_format="%.4f")
    confusion_groups_path = confusion_by_group_png(
        truth, answers, kids, card.classes, reports_dir / "confusion_by_group.png",
        f"{card.candidate}: {data_dir.name} test split, true -> predicted category by group")
    metrics_path = Path(metrics_path)
    metrics_path.parent.mkdir(parents=True, exist_ok=True)
    metrics_path.write_text(json.dumps(tree, indent=2) + "\n")

    files = [metrics_path, per_class_path, cm_path, grid_path, per_category_path, groups_path, misses_path,
             confusion_groups_path]
    tags = {"evaluate.backend": out.backend, "evaluate.index": index.kind}
    run_id = log_to_training_run(model_dir, tree, files, tags) if cfg.mlflow else None
    return EvaluateResult(
        candidate=card.candidate, metrics=tree, metrics_path=str(metrics_path),
        reports=[str(p) for p in files[1:]],
        counts={"test": len(test), "inventory": len(inventory), "instance_queries": len(sources)},
        backend=out.backend,
        seconds={"embed": out.seconds, "instance": t_instance, "total": time.perf_counter() - started},
        mlflow_run_id=run_id, notes=[f"flip_tta={'on' if cfg.flip_tta else 'off'}"])
