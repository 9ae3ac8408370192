"""The training pipeline for Kubeflow: the steps of dvc.yaml, one component each, run on a schedule.

    fetch_data (data/subset at data_rev, through DVC) -> validate -> check_lineage
        If changed:
            score_champion (the champion re-scored on this run's test split)
            ParallelFor(candidates) { train (a Kubeflow Trainer TrainJob) -> evaluate } -> Collected -> select
                If gate passed: export -> register -> deploy
                                (index.shard_size > 0: plan_inventory -> ParallelFor(shards) { embed_shard }
                                 -> Collected -> assemble_inventory, in place of deploy)
                Else:           record_rejection ("no change")
        Else: record_no_change (data, code and params equal the champion's lineage: nothing trained)

Parameters mirror params.yaml (one dict per section, the candidates as a list of `{name, gpus, **block}`)
plus `repo` and `data_rev`; their defaults are params.yaml's at compile time.
The `kfp` section shapes the spec itself: the image, CPU and memory requests of every task, each
candidate's GPUs (kfp.accelerators) with the GPU pool's node selector and toleration, retries of train and
evaluate, and the Kubernetes Secrets/ConfigMap the MLflow, DVC and Milvus settings come from;
`index.shard_size` > 0 embeds the inventory in shards, `kfp.inventory_parallelism` at a time, each task with
`kfp.accelerators.embed_shard` GPUs and retried alone (`index.shard_retries`), writing Parquet files on the
bundles claim that the assemble step builds the bundle from. The train step's
resources, GPUs, toleration, env and volumes pass through (`dsl.TaskConfig`) to the TrainJob it submits
(kfp.trainer); the run's workspace volume (`dsl.PipelineConfig`) carries the job's data and outputs.
Compile with `fashionrec kfp compile`; run locally with `fashionrec kfp local`; schedule with
`fashionrec kfp schedule`.
"""

import sys
from pathlib import Path

from kfp import compiler, dsl, kubernetes

from components.assemble_inventory import assemble_inventory
from components.check_lineage import check_lineage
from components.deploy import deploy
from components.embed_shard import embed_shard
from components.evaluate import evaluate
from components.export import export
from components.fetch_data import fetch_data
from components.plan_inventory import plan_inventory
from components.record_no_change import record_no_change
from components.record_rejection import record_rejection
from components.register import register
from components.score_champion import score_champion
from components.select import select
from components.train import train
from components.validate import validate
from fashionrec.core.config import Params, load_params
from fashionrec.core.settings import KfpMilvus, MilvusParams, check
from fashionrec.kfp.client import pipeline_arguments

ROOT = Path(__file__).resolve().parents[1]
# params.yaml, unless `fashionrec.kfp.client.load_pipeline` runs this module with other params
PARAMS: Params = globals().get("PARAMS") or load_params(ROOT / "params.yaml")
KFP = PARAMS.section("kfp")
D = pipeline_arguments(PARAMS)  # the parameters' defaults
SHARDED = int(PARAMS.get("index.shard_size") or 0) > 0   # the inventory embedded by a ParallelFor
# an embed_shard task with GPUs embeds on them ("auto"); without, index.device ("")
SHARD_DEVICE = "auto" if int((KFP.get("accelerators") or {}).get("embed_shard") or 0) else ""


def resources(task: dsl.PipelineTask, step: str) -> dsl.PipelineTask:
    """CPU and memory requests of `step` from params (kfp.resources)."""
    spec = KFP["resources"][step]
    return task.set_cpu_request(str(spec["cpu"])).set_memory_request(str(spec["memory"]))


def uses_mlflow(task: dsl.PipelineTask) -> dsl.PipelineTask:
    """The tracking URI (ConfigMap) and credentials (Secret) as environment variables: set by the cluster,
    not compiled into the spec (kfp.mlflow)."""
    spec = KFP["mlflow"]
    kubernetes.use_config_map_as_env(task, config_map_name=spec["config_map"],
                                     config_map_key_to_env=dict(spec["config_map_env"]))
    kubernetes.use_secret_as_env(task, secret_name=spec["secret"], secret_key_to_env=dict(spec["secret_env"]))
    return task


def uses_milvus(task: dsl.PipelineTask) -> dsl.PipelineTask:
    """The Milvus token and the bulk import's object-storage keys, from the Secrets the cluster manifests name
    (kfp.milvus), into the variables index.milvus reads them from. Optional: a run whose index kind is not
    milvus needs neither, and a milvus deploy without them fails naming the missing variable."""
    spec = check(KfpMilvus, KFP.get("milvus") or {}, "kfp.milvus")
    milvus = check(MilvusParams, PARAMS.section("index").get("milvus") or {}, "index.milvus")
    kubernetes.use_secret_as_env(task, secret_name=spec.secret, optional=True,
                                 secret_key_to_env={spec.token_key: milvus.token_env})
    kubernetes.use_secret_as_env(task, secret_name=spec.storage_secret, optional=True, secret_key_to_env={
        spec.access_key_key: milvus.bulk_import.access_key_env,
        spec.secret_key_key: milvus.bulk_import.secret_key_env})
    return task


def with_retries(task: dsl.PipelineTask) -> dsl.PipelineTask:
    """Retries with exponential backoff (kfp.retry): GPU nodes are preemptible."""
    r = KFP["retry"]
    return task.set_retry(num_retries=int(r["num_retries"]), backoff_duration=str(r["backoff_duration"]),
                          backoff_factor=float(r["backoff_factor"]),
                          backoff_max_duration=str(r["backoff_max_duration"]))


def placed(task: dsl.PipelineTask, gpus) -> dsl.PipelineTask:
    """`gpus` GPUs (kfp.accelerators; a train task: its loop item's `gpus`, "0" for a candidate that does
    not train on one). A GPU request is what puts a pod on a GPU node; the GPU pool's toleration lets it
    land there, and forces nothing on a CPU candidate."""
    gpu = KFP["gpu"]
    task.set_accelerator_type(gpu["accelerator"]).set_accelerator_limit(gpus)
    tol = gpu["toleration"]
    kubernetes.add_toleration(task, key=tol.get("key"), operator=tol.get("operator", "Equal"),
                              value=tol.get("value"), effect=tol.get("effect"))
    return task


def on_bundles(task: dsl.PipelineTask) -> dsl.PipelineTask:
    """The bundles claim (kfp.bundles_pvc) mounted where `bundles_dir` points: the deploy tasks' shared
    folder (bundles, shard files; ReadWriteMany when shards embed on several nodes at once)."""
    kubernetes.mount_pvc(task, pvc_name=KFP["bundles_pvc"], mount_path=KFP["bundles_mount"])
    return task


def shard_placed(task: dsl.PipelineTask) -> dsl.PipelineTask:
    """An embed_shard task: GPUs from kfp.accelerators.embed_shard (0: a CPU node), retried alone
    index.shard_retries times with kfp.retry's backoff (GPU nodes are preemptible)."""
    gpus = int((KFP.get("accelerators") or {}).get("embed_shard") or 0)
    if gpus:
        placed(task, str(gpus))
    r = KFP["retry"]
    return task.set_retry(num_retries=int(PARAMS.get("index.shard_retries") or 0),
                          backoff_duration=str(r["backoff_duration"]),
                          backoff_factor=float(r["backoff_factor"]),
                          backoff_max_duration=str(r["backoff_max_duration"]))


def uncached(task: dsl.PipelineTask) -> dsl.PipelineTask:
    """Never from the cache: the step reads something outside its inputs (a branch tip, the registry)."""
    task.set_caching_options(False)
    return task


@dsl.pipeline(name=KFP["pipeline_name"], description=__doc__.splitlines()[0],
              pipeline_config=dsl.PipelineConfig(workspace=dsl.WorkspaceConfig(
                  size=str(KFP["trainer"]["workspace_size"]))))
def training_pipeline(
    repo: str = D["repo"],
    data_rev: str = D["data_rev"],
    product: str = D["product"],
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
    trainer_params: dict = D["trainer_params"],
    seed: int = D["seed"],
    bundles_dir: str = D["bundles_dir"],
):
    fetched = fetch_data(repo=repo, data_rev=data_rev, product=product)
    data = uncached(resources(fetched, "fetch_data"))  # a branch moves
    data_secret = KFP["data"]
    kubernetes.use_secret_as_env(data, secret_name=data_secret["secret"],
                                 secret_key_to_env=dict(data_secret["secret_env"]))
    images = data.outputs["subset"]
    checked = resources(validate(validate_params=validate_params, subset=images), "validate")
    validated = checked.outputs["validated"]
    news = uses_mlflow(uncached(resources(check_lineage(
        data_version=data.outputs["data_version"], validate_params=validate_params, candidates=candidates,
        train_params=train_params, evaluate_params=evaluate_params, select_params=select_params,
        export_params=export_params, register_params=register_params, mlflow_params=mlflow_params,
        seed=seed).after(checked), "check_lineage")))
    lineage = news.outputs["lineage"]

    with dsl.If(news.outputs["changed"] == True, "inputs-changed"):  # noqa: E712 - a KFP condition
        champion = uses_mlflow(uncached(resources(score_champion(
            register_params=register_params, evaluate_params=evaluate_params, mlflow_params=mlflow_params,
            seed=seed, validated=validated, subset=images), "score_champion")))
        with dsl.ParallelFor(candidates, parallelism=int(KFP["training_parallelism"])) as candidate:
            trained = with_retries(uses_mlflow(placed(resources(train(
                candidate=candidate, train_params=train_params, mlflow_params=mlflow_params, seed=seed,
                validated=validated, subset=images, trainer_params=trainer_params,
                workspace_path=dsl.WORKSPACE_PATH_PLACEHOLDER), "train"), candidate.gpus)))
            scored = with_retries(uses_mlflow(resources(evaluate(
                evaluate_params=evaluate_params, mlflow_params=mlflow_params, seed=seed,
                model=trained.outputs["model"], validated=validated, subset=images), "evaluate")))

        gate = uses_mlflow(uncached(resources(select(
            select_params=select_params, register_params=register_params, mlflow_params=mlflow_params,
            seed=seed, metrics=dsl.Collected(scored.outputs["metrics"]),
            models=dsl.Collected(trained.outputs["model"]), champion=champion.outputs["champion"],
            lineage=lineage), "select")))

        with dsl.If(gate.outputs["passed"] == True, "gate-passed"):  # noqa: E712 - a KFP condition
            exported = resources(export(
                export_params=export_params, winner_model=gate.outputs["winner_model"],
                decision=gate.outputs["decision"], validated=validated, subset=images), "export")
            registered = uses_mlflow(uncached(resources(register(
                register_params=register_params, mlflow_params=mlflow_params, seed=seed,
                onnx_model=exported.outputs["onnx_model"], winner_model=gate.outputs["winner_model"],
                decision=gate.outputs["decision"], validated=validated, lineage=lineage), "register")))
            if SHARDED:
                planned = on_bundles(uses_mlflow(uncached(resources(plan_inventory(
                    index_params=index_params, serve_params=serve_params, mlflow_params=mlflow_params,
                    seed=seed, bundles_dir=bundles_dir, validated=validated, subset=images),
                    "plan_inventory").after(registered))))
                with dsl.ParallelFor(planned.output, parallelism=int(KFP["inventory_parallelism"])) as shard:
                    embedded = on_bundles(shard_placed(uses_mlflow(uncached(resources(embed_shard(
                        index_params=index_params, serve_params=serve_params, mlflow_params=mlflow_params,
                        seed=seed, bundles_dir=bundles_dir, shard=shard, device=SHARD_DEVICE),
                        "embed_shard")))))
                uses_milvus(on_bundles(uses_mlflow(uncached(resources(assemble_inventory(
                    index_params=index_params, serve_params=serve_params, mlflow_params=mlflow_params,
                    seed=seed, bundles_dir=bundles_dir, plan=planned.output,
                    shards=dsl.Collected(embedded.output), validated=validated, subset=images),
                    "assemble_inventory")))))
            else:
                uses_milvus(on_bundles(uses_mlflow(uncached(resources(deploy(
                    index_params=index_params, serve_params=serve_params, mlflow_params=mlflow_params,
                    seed=seed, bundles_dir=bundles_dir, validated=validated, subset=images),
                    "deploy").after(registered)))))
        with dsl.Else("gate-refused"):
            uncached(resources(record_rejection(decision=gate.outputs["decision"]), "record_rejection"))
    with dsl.Else("no-change"):
        uses_mlflow(uncached(resources(record_no_change(
            reason=news.outputs["reason"], lineage=lineage, register_params=register_params,
            mlflow_params=mlflow_params, seed=seed), "record_no_change")))


if __name__ == "__main__":
    out = Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / KFP["package"]
    compiler.Compiler().compile(training_pipeline, str(out))
    print(out)
