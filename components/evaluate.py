"""evaluate (DVC stage `evaluate@<candidate>`): test-split labels, retrieval and instance metrics."""

from kfp import dsl
from kfp.dsl import HTML, Artifact, Dataset, Input, Metrics, Model, Output

from components import BASE_IMAGE


@dsl.component(base_image=BASE_IMAGE, install_kfp_package=False)
def evaluate(evaluate_params: dict, mlflow_params: dict, seed: int, model: Input[Model],
             validated: Input[Dataset], subset: Input[Dataset], metrics: Output[Metrics], plots: Output[HTML],
             reports: Output[Artifact]):
    """`fashionrec evaluate <candidate>`: the `metrics` file is metrics/<candidate>.json (nested; select
    reads it) and its scalars are logged flat for the KFP UI; `plots` shows the confusion matrix, the
    query -> top-5 grid and the confusion matrices by group; `reports` holds every report file (per_class.csv,
    per_category.csv, misses.csv and the pictures)."""
    from pathlib import Path

    from fashionrec.core.config import numeric_leaves
    from fashionrec.evaluate.evaluate import evaluate as run
    from fashionrec.kfp.io import component_params, image_page

    p = component_params({"evaluate": evaluate_params}, mlflow_params, seed)
    out = Path(reports.path)
    result = run(Path(model.path), Path(validated.path), Path(metrics.path), out, p.section("evaluate"))
    for key, value in numeric_leaves(result.metrics).items():
        metrics.log_metric(key, value)
    metrics.metadata["candidate"] = result.candidate
    pictures = [("confusion matrix (test split)", out / "confusion_matrix.png"),
                ("test query -> top-5 of the inventory", out / "retrieval_grid.png"),
                ("true -> predicted category by group (misses.csv counts the pairs)",
                 out / "confusion_by_group.png")]
    Path(plots.path).write_text(image_page(f"{result.candidate}: evaluation", pictures,
                                           f"backend {result.backend}; {result.counts}"))
