"""The training pipeline for Kubeflow: the steps of dvc.yaml, one component each.

    ingest_subset -> validate -> ParallelFor(candidates) { train -> evaluate } -> Collected -> select
        If gate passed: export -> register -> deploy
        Else:           record_rejection

Parameters mirror params.yaml (one dict per section, the candidates as a list of `{name, **block}`); their
defaults are params.yaml's at compile time. The `kfp` section shapes the spec itself: the image, CPU and
memory requests of every task, and the train task's GPU (accelerator limit, node selector and toleration
of the GPU pool). Compile with `make pipeline-compile` (or `python -m pipelines.training_pipeline`);
run locally with `make pipeline-local`; submit with `fashionrec kfp submit`.
"""

import sys
from pathlib import Path

from kfp import compiler, dsl, kubernetes

from components.deploy import deploy
from components.evaluate import evaluate
from components.export import export
from components.ingest_subset import ingest_subset
from components.record_rejection import record_rejection
from components.register import register
from components.select import select
from components.train import train
from components.validate import validate
from fashionrec.core.config import load_params
from fashionrec.kfp.client import pipeline_arguments

ROOT = Path(__file__).resolve().parents[1]
PARAMS = load_params(ROOT / "params.yaml")
KFP = PARAMS.section("kfp")
D = pipeline_arguments(PARAMS)  # the parameters' defaults


def resources(task: dsl.PipelineTask, step: str) -> dsl.PipelineTask:
    """CPU and memory requests of `step` from params (kfp.resources)."""
    spec = KFP["resources"][step]
    return task.set_cpu_request(str(spec["cpu"])).set_memory_request(str(spec["memory"]))


def on_gpu_pool(task: dsl.PipelineTask) -> dsl.PipelineTask:
    """An accelerator limit, and the GPU pool's node selector and toleration (kfp.gpu)."""
    gpu = KFP["gpu"]
    task.set_accelerator_type(gpu["accelerator"]).set_accelerator_limit(int(gpu["limit"]))
    kubernetes.add_node_selector(task, label_key=gpu["node_selector"]["key"],
                                 label_value=gpu["node_selector"]["value"])
    tol = gpu["toleration"]
    kubernetes.add_toleration(task, key=tol.get("key"), operator=tol.get("operator", "Equal"),
                              value=tol.get("value"), effect=tol.get("effect"))
    return task


@dsl.pipeline(name=KFP["pipeline_name"], description=__doc__.splitlines()[0])
def training_pipeline(
    source: str = D["source"],
    ingest_params: dict = D["ingest_params"],
    subset_params: dict = D["subset_params"],
    validate_params: dict = D["validate_params"],
    candidates: list = D["candidates"],
    train_params: dict = D["train_params"],
    evaluate_params: dict = D["evaluate_params"],
    select_params: dict = D["select_params"],
    export_params: dict = D["export_params"],
    register_params: dict = D["register_params"],
    index_params: dict = D["index_params"],
    serve_params: dict = D["serve_params"],
    mlflow_params: dict = D["mlflow_params"],
    seed: int = D["seed"],
    bundles_dir: str = D["bundles_dir"],
):
    data = resources(ingest_subset(source=source, ingest_params=ingest_params, subset_params=subset_params),
                     "ingest_subset")
    images = data.outputs["subset"]
    checked = resources(validate(validate_params=validate_params, subset=images), "validate")
    validated = checked.outputs["validated"]

    with dsl.ParallelFor(candidates, parallelism=int(KFP["training_parallelism"])) as candidate:
        trained = on_gpu_pool(resources(train(candidate=candidate, train_params=train_params,
                                              mlflow_params=mlflow_params, seed=seed, validated=validated,
                                              subset=images), "train"))
        scored = resources(evaluate(evaluate_params=evaluate_params, mlflow_params=mlflow_params, seed=seed,
                                    model=trained.outputs["model"], validated=validated, subset=images),
                           "evaluate")

    gate = resources(select(select_params=select_params, register_params=register_params,
                            mlflow_params=mlflow_params, seed=seed,
                            metrics=dsl.Collected(scored.outputs["metrics"]),
                            models=dsl.Collected(trained.outputs["model"])), "select")
    gate.set_caching_options(False)  # the champion it compares with lives in MLflow, outside the inputs

    with dsl.If(gate.outputs["passed"] == True, "gate-passed"):  # noqa: E712 - a KFP condition, not Python
        exported = resources(export(export_params=export_params, winner_model=gate.outputs["winner_model"],
                                    decision=gate.outputs["decision"], validated=validated, subset=images),
                             "export")
        registered = resources(register(register_params=register_params, mlflow_params=mlflow_params,
                                        seed=seed, onnx_model=exported.outputs["onnx_model"],
                                        winner_model=gate.outputs["winner_model"],
                                        decision=gate.outputs["decision"], validated=validated), "register")
        registered.set_caching_options(False)
        deployed = resources(deploy(index_params=index_params, serve_params=serve_params,
                                    mlflow_params=mlflow_params, seed=seed, bundles_dir=bundles_dir,
                                    validated=validated, subset=images), "deploy").after(registered)
        deployed.set_caching_options(False)
        kubernetes.mount_pvc(deployed, pvc_name=KFP["bundles_pvc"], mount_path=KFP["bundles_mount"])
    with dsl.Else("gate-refused"):
        rejected = resources(record_rejection(decision=gate.outputs["decision"]), "record_rejection")
        rejected.set_caching_options(False)


if __name__ == "__main__":
    out = Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / KFP["package"]
    compiler.Compiler().compile(training_pipeline, str(out))
    print(out)
