"""register (DVC stage `register`): the exported winner as a new MLflow model version."""

from kfp import dsl
from kfp.dsl import Artifact, Dataset, Input, Model, Output

from components import BASE_IMAGE


@dsl.component(base_image=BASE_IMAGE, install_kfp_package=False)
def register(register_params: dict, mlflow_params: dict, seed: int, onnx_model: Input[Model],
             winner_model: Input[Model], decision: Input[Artifact], validated: Input[Dataset],
             registered: Output[Artifact], run_name: str = dsl.PIPELINE_JOB_NAME_PLACEHOLDER) -> str:
    """`fashionrec register`: alias `challenger`, and `champion` when `promotion: auto`; `registered` is
    models/registered.json. The KFP run's name is recorded as who made the change. Returns the version."""
    from pathlib import Path

    from fashionrec.core.tracking import configure, run_tags
    from fashionrec.kfp.io import component_params, linked_folder
    from fashionrec.registry.steps import register as run

    p = component_params({"register": register_params}, mlflow_params, seed)
    configure(p)
    candidate = str(winner_model.metadata["candidate"])
    tags = run_tags(p, Path(validated.path) / "manifest.parquet", kfp_run=run_name)
    result = run(Path(onnx_model.path), linked_folder({candidate: winner_model.path}), Path(decision.path),
                 Path(registered.path), p.section("register"), tags=tags, by=f"kfp run {run_name}")
    registered.metadata.update({"name": result.name, "version": result.version, "aliases": result.aliases,
                                "uri": result.uri})
    return result.version
