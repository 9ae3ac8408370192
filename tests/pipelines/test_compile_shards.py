"""The pipeline with `index.shard_size` > 0: the deploy step becomes plan_inventory -> ParallelFor over its
shards { embed_shard } -> assemble_inventory, with the parallelism, retries, GPUs, resources and bundles
claim from params; with shard_size 0 the single deploy task stays (tests/pipelines/test_compile.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from fashionrec.core.config import Params, load_params
from fashionrec.kfp.client import compile_pipeline, with_overrides
from tests.pipelines.conftest import Compiled

ROOT = Path(__file__).resolve().parents[2]
SHARD_TASKS = ["plan_inventory", "embed_shard", "assemble_inventory"]


def compile_with(folder: Path, overrides: dict[str, Any]) -> Compiled:
    params: Params = with_overrides(load_params(ROOT / "params.yaml"), overrides)
    path = compile_pipeline(folder / "training_pipeline.yaml", params)
    spec, platform = yaml.safe_load_all(path.read_text())
    return Compiled(path=path, spec=spec, platform=platform, params=params)


@pytest.fixture(scope="module")
def sharded(tmp_path_factory: pytest.TempPathFactory) -> Compiled:
    return compile_with(tmp_path_factory.mktemp("kfp-sharded"), {"index.shard_size": 500})


def gate_passed(compiled: Compiled) -> dict:
    """The tasks of the gate-passed branch (the one holding `register`)."""
    [tasks] = [c["dag"]["tasks"] for c in compiled.spec["components"].values()
               if "register" in c.get("dag", {}).get("tasks", {})]
    return tasks


def test_sharded_deploy_is_a_parallel_for_over_the_plan(sharded: Compiled) -> None:
    tasks = gate_passed(sharded)
    [loop_name] = [t for t in tasks if t.startswith("for-loop-")]
    assert set(tasks) == {"export", "register", "plan-inventory", loop_name, "assemble-inventory"}
    assert tasks["plan-inventory"]["dependentTasks"] == ["register"]
    loop = tasks[loop_name]
    assert loop["parameterIterator"]["items"]["inputParameter"] == "pipelinechannel--plan-inventory-Output"
    assert loop["inputs"]["parameters"]["pipelinechannel--plan-inventory-Output"]["taskOutputParameter"] == {
        "outputParameterKey": "Output", "producerTask": "plan-inventory"}
    assert loop["iteratorPolicy"]["parallelismLimit"] == sharded.params.get("kfp.inventory_parallelism") == 4
    body = sharded.spec["components"][f"comp-{loop_name}"]["dag"]["tasks"]
    assert set(body) == {"embed-shard"}
    embed = body["embed-shard"]
    assert embed["inputs"]["parameters"]["shard"] == {
        "componentInputParameter": "pipelinechannel--plan-inventory-Output-loop-item"}
    assert embed["inputs"]["parameters"]["device"] == {"runtimeValue": {"constant": "auto"}}   # on its GPU
    # a failed shard is retried alone: index.shard_retries times, kfp.retry's backoff
    retry = sharded.params.section("kfp")["retry"]
    assert embed["retryPolicy"] == {"maxRetryCount": sharded.params.get("index.shard_retries"),
                                    "backoffDuration": retry["backoff_duration"],
                                    "backoffFactor": float(retry["backoff_factor"]),
                                    "backoffMaxDuration": retry["backoff_max_duration"]}
    # assemble waits for every shard: their results collected, the plan from plan_inventory
    assemble = tasks["assemble-inventory"]
    assert set(assemble["dependentTasks"]) == {loop_name, "plan-inventory"}
    inputs = assemble["inputs"]["parameters"]
    assert inputs["shards"]["taskOutputParameter"]["producerTask"] == loop_name
    assert inputs["plan"]["taskOutputParameter"] == {"outputParameterKey": "Output",
                                                     "producerTask": "plan-inventory"}
    # nothing reads the cache: the shard files on the claim are what resumes
    for task in (tasks["plan-inventory"], embed, assemble):
        assert task["cachingOptions"] == {}


def test_sharded_tasks_resources_gpu_and_claim(sharded: Compiled) -> None:
    kfp = sharded.params.section("kfp")
    for task in SHARD_TASKS:
        name = task.replace("_", "-")
        container = sharded.executor(name)
        want = kfp["resources"][task]
        assert container["resources"]["resourceCpuRequest"] == str(want["cpu"]), task
        assert container["resources"]["resourceMemoryRequest"] == str(want["memory"]), task
        assert container["image"] == kfp["image"], task
        assert ("accelerator" in container["resources"]) == (task == "embed_shard"), task
        mount = sharded.k8s(name)["pvcMount"][0]
        assert (mount["constant"], mount["mountPath"]) == (kfp["bundles_pvc"], kfp["bundles_mount"]), task
        assert sharded.k8s(name)["secretAsEnv"][0]["secretName"] == kfp["mlflow"]["secret"], task
        # only the task that writes the collection reads the Milvus credentials
        milvus = {s["secretName"] for s in sharded.k8s(name)["secretAsEnv"]} - {kfp["mlflow"]["secret"]}
        want_milvus = {kfp["milvus"]["secret"], kfp["milvus"]["storage_secret"]}
        assert milvus == (want_milvus if task == "assemble_inventory" else set()), task
    accel = sharded.executor("embed-shard")["resources"]["accelerator"]
    assert accel["resourceType"] == kfp["gpu"]["accelerator"]
    assert accel["resourceCount"] == str(kfp["accelerators"]["embed_shard"]) == "1"
    assert sharded.k8s("embed-shard")["tolerations"] == [kfp["gpu"]["toleration"]]
    assert "exec-deploy" not in sharded.spec["deploymentSpec"]["executors"]


def test_sharded_without_gpu_other_parallelism_and_retries(tmp_path: Path) -> None:
    compiled = compile_with(tmp_path, {"index.shard_size": 100, "index.shard_retries": 3,
                                       "kfp.accelerators.embed_shard": 0, "kfp.inventory_parallelism": 2})
    tasks = gate_passed(compiled)
    [loop_name] = [t for t in tasks if t.startswith("for-loop-")]
    assert tasks[loop_name]["iteratorPolicy"]["parallelismLimit"] == 2
    embed = compiled.spec["components"][f"comp-{loop_name}"]["dag"]["tasks"]["embed-shard"]
    assert embed["retryPolicy"]["maxRetryCount"] == 3
    assert embed["inputs"]["parameters"]["device"] == {"runtimeValue": {"constant": ""}}   # index.device
    assert "accelerator" not in compiled.executor("embed-shard")["resources"]
    assert "tolerations" not in compiled.k8s("embed-shard")


def test_unsharded_keeps_the_single_deploy_task(compiled: Compiled) -> None:
    assert compiled.params.get("index.shard_size") == 0
    tasks = gate_passed(compiled)
    assert set(tasks) == {"export", "register", "deploy"}
    assert not {"exec-plan-inventory", "exec-embed-shard"} & set(compiled.spec["deploymentSpec"]["executors"])


@pytest.mark.parametrize("task", SHARD_TASKS)
def test_one_component_per_file(task: str) -> None:
    source = (ROOT / "components" / f"{task}.py").read_text()
    assert source.count("@dsl.component(") == 1
    assert "install_kfp_package=False" in source and "base_image=BASE_IMAGE" in source
