"""record_no_change (check_lineage's Else branch): the run had nothing new to learn from."""

from kfp import dsl
from kfp.dsl import Markdown, Output

from components import BASE_IMAGE


@dsl.component(base_image=BASE_IMAGE, install_kfp_package=False)
def record_no_change(reason: str, lineage: str, register_params: dict, mlflow_params: dict, seed: int,
                     report: Output[Markdown]) -> str:
    """"No change" as a page in the KFP UI and a run in MLflow (tags: outcome, reason, lineage); nothing
    is trained, registered or deployed. Returns the MLflow run id."""
    import json
    from pathlib import Path

    from fashionrec.core.tracking import configure
    from fashionrec.kfp.io import component_params
    from fashionrec.registry.mlflow_registry import CHAMPION, alias_version
    from fashionrec.registry.retrain import record_no_change as run

    p = component_params({"register": register_params}, mlflow_params, seed)
    configure(p)
    from mlflow import MlflowClient

    tags = json.loads(lineage)
    name = str(p.get("register.name") or "fashionrec")
    run_id = run(reason, tags, alias_version(MlflowClient(), name, CHAMPION))
    rows = "\n".join(f"| {k} | {v} |" for k, v in tags.items())
    Path(report.path).write_text(f"## No change\n\n{reason}\n\n| lineage | value |\n|---|---|\n{rows}\n")
    return run_id
