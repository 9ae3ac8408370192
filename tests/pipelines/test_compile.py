"""The compiled pipeline's structure: tasks and their order, the no-change branch, the candidate loop, the
gate's branches, resources of every task, each candidate's GPU and node placement, retries, Secret-based
settings, image and parameters from params.yaml."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml

from fashionrec.core.config import load_params
from fashionrec.core.errors import KfpError
from fashionrec.kfp.client import check_image, pipeline_arguments
from fashionrec.kfp.io import component_params, plain, without_nulls

ROOT = Path(__file__).resolve().parents[2]
TASKS = ["fetch_data", "validate", "check_lineage", "score_champion", "train", "evaluate", "select", "export",
         "register", "deploy", "record_rejection", "record_no_change"]
MLFLOW_TASKS = ["check_lineage", "score_champion", "train", "evaluate", "select", "register", "deploy",
                "record_no_change"]


def dag(compiled, component: str) -> dict:
    node = compiled.spec["root"] if component == "root" else compiled.spec["components"][component]
    return node["dag"]["tasks"]


def branches(compiled, component: str) -> tuple[dict, dict]:
    """The (If, Else) pair of a dsl.If/dsl.Else group."""
    group = dag(compiled, component)
    first, second = (group[k] for k in sorted(group))
    return first, second


def test_tasks_loop_and_order(compiled):
    root = dag(compiled, "root")
    assert set(root) == {"fetch-data", "validate", "check-lineage", "condition-branches-1"}
    assert root["validate"]["dependentTasks"] == ["fetch-data"]
    assert set(root["check-lineage"]["dependentTasks"]) == {"fetch-data", "validate"}
    changed, unchanged = branches(compiled, "comp-condition-branches-1")
    cond = "inputs.parameter_values['pipelinechannel--check-lineage-changed'] == true"
    assert changed["triggerPolicy"]["condition"] == cond
    assert unchanged["triggerPolicy"]["condition"] == f"!({cond})"
    # unchanged inputs: only the record, no training
    assert set(dag(compiled, unchanged["componentRef"]["name"])) == {"record-no-change"}
    work = dag(compiled, changed["componentRef"]["name"])
    assert set(work) == {"score-champion", "for-loop-2", "select", "condition-branches-3"}
    assert set(work["select"]["dependentTasks"]) == {"for-loop-2", "score-champion"}
    loop = work["for-loop-2"]
    assert loop["parameterIterator"]["items"]["inputParameter"] == "pipelinechannel--candidates"
    assert loop["iteratorPolicy"]["parallelismLimit"] == compiled.params.get("kfp.training_parallelism")
    body = dag(compiled, "comp-for-loop-2")
    assert set(body) == {"train", "evaluate"}
    assert body["evaluate"]["dependentTasks"] == ["train"]
    # select collects every iteration's metrics and models, and takes the re-scored champion
    inputs = work["select"]["inputs"]["artifacts"]
    assert inputs["metrics"]["taskOutputArtifact"]["producerTask"] == "for-loop-2"
    assert inputs["models"]["taskOutputArtifact"]["producerTask"] == "for-loop-2"
    assert inputs["champion"]["taskOutputArtifact"]["producerTask"] == "score-champion"
    select_inputs = compiled.spec["components"]["comp-select"]["inputDefinitions"]["artifacts"]
    assert select_inputs["metrics"]["isArtifactList"] and select_inputs["models"]["isArtifactList"]


def test_gate_branches_and_caching(compiled):
    passed, refused = branches(compiled, "comp-condition-branches-3")
    cond = "inputs.parameter_values['pipelinechannel--select-passed'] == true"
    assert passed["triggerPolicy"]["condition"] == cond
    assert refused["triggerPolicy"]["condition"] == f"!({cond})"
    on_pass = dag(compiled, passed["componentRef"]["name"])
    assert set(on_pass) == {"export", "register", "deploy"}
    assert on_pass["register"]["dependentTasks"] == ["export"]
    assert on_pass["deploy"]["dependentTasks"] == ["register"]
    assert set(dag(compiled, refused["componentRef"]["name"])) == {"record-rejection"}
    # what reads a branch tip or the registry never comes from the cache (a changed champion shows)
    for task in ("register", "deploy"):
        assert on_pass[task]["cachingOptions"] == {}
    changed, _ = branches(compiled, "comp-condition-branches-1")
    work = dag(compiled, changed["componentRef"]["name"])
    assert work["select"]["cachingOptions"] == work["score-champion"]["cachingOptions"] == {}
    root = dag(compiled, "root")
    assert root["fetch-data"]["cachingOptions"] == root["check-lineage"]["cachingOptions"] == {}
    assert dag(compiled, "comp-for-loop-2")["train"]["cachingOptions"] == {"enableCache": True}


def test_resources_image_retries_and_gpu(compiled):
    kfp = compiled.params.section("kfp")
    for task in TASKS:
        container = compiled.executor(task.replace("_", "-"))
        want = kfp["resources"][task]
        assert container["resources"]["resourceCpuRequest"] == str(want["cpu"]), task
        assert container["resources"]["resourceMemoryRequest"] == str(want["memory"]), task
        assert container["image"] == kfp["image"] == check_image(kfp["image"]), task
        assert "pip install" not in " ".join(container["command"]), task  # install_kfp_package=False
        assert ("accelerator" in container["resources"]) == (task == "train"), task
    # each candidate's GPUs come from its loop item: "0" for one that does not train on one
    accel = compiled.executor("train")["resources"]["accelerator"]
    assert accel["resourceType"] == kfp["gpu"]["accelerator"] == "nvidia.com/gpu"
    loop_item = "pipelinechannel--candidates-loop-item-subvar-gpus"
    assert accel["resourceCount"] == f"{{{{$.inputs.parameters['{loop_item}']}}}}"
    # ... an input the train task resolves from the loop item's field (what the compiler leaves dangling)
    assert dag(compiled, "comp-for-loop-2")["train"]["inputs"]["parameters"][loop_item] == {
        "componentInputParameter": "pipelinechannel--candidates-loop-item",
        "parameterExpressionSelector": 'parseJson(string_value)["gpus"]'}
    items = {c["name"]: c["gpus"] for c in pipeline_arguments(compiled.params)["candidates"]}
    assert items == {"pixels": "0", "simple_cnn": "1", "efficientnet_lite0": "1",   # the cuda recipe (pool)
                     "efficientnet_lite0_gpu": "1", "efficientnet_lite2_gpu": "1"}
    assert compiled.k8s("train")["tolerations"] == [kfp["gpu"]["toleration"]]
    for task in TASKS:
        assert "nodeSelector" not in compiled.k8s(task.replace("_", "-")), task
    mount = compiled.k8s("deploy")["pvcMount"][0]
    assert (mount["constant"], mount["mountPath"]) == (kfp["bundles_pvc"], kfp["bundles_mount"])
    # retries with backoff on train and evaluate only
    body = dag(compiled, "comp-for-loop-2")
    retry = kfp["retry"]
    for task in ("train", "evaluate"):
        assert body[task]["retryPolicy"] == {
            "maxRetryCount": retry["num_retries"], "backoffDuration": retry["backoff_duration"],
            "backoffFactor": float(retry["backoff_factor"]),
            "backoffMaxDuration": retry["backoff_max_duration"]}
    assert "retryPolicy" not in dag(compiled, "root")["fetch-data"]


def test_settings_come_from_secrets_not_the_spec(compiled):
    kfp = compiled.params.section("kfp")
    text = compiled.path.read_text()
    assert "tracking_uri" not in str(compiled.spec["root"]["inputDefinitions"]["parameters"]["mlflow_params"])
    assert "http://" not in text.replace(kfp["data"]["repo"], "")  # no server address compiled in
    for task in MLFLOW_TASKS:
        k8s = compiled.k8s(task.replace("_", "-"))
        [cm] = k8s["configMapAsEnv"]
        assert cm["configMapName"] == kfp["mlflow"]["config_map"], task
        assert {e["configMapKey"]: e["envVar"] for e in cm["keyToEnv"]} == kfp["mlflow"]["config_map_env"]
        [secret] = [s for s in k8s["secretAsEnv"] if s["secretName"] == kfp["mlflow"]["secret"]]
        assert {e["secretKey"]: e["envVar"] for e in secret["keyToEnv"]} == kfp["mlflow"]["secret_env"]
    [dvc] = compiled.k8s("fetch-data")["secretAsEnv"]
    assert dvc["secretName"] == kfp["data"]["secret"]
    assert {e["secretKey"]: e["envVar"] for e in dvc["keyToEnv"]} == kfp["data"]["secret_env"]


def milvus_secrets(compiled, task: str) -> dict[str, dict[str, object]]:
    """The task's Secrets other than MLflow's: name -> {key: env, "optional": bool}."""
    mlflow = compiled.params.section("kfp")["mlflow"]["secret"]
    return {s["secretName"]: {**{e["secretKey"]: e["envVar"] for e in s["keyToEnv"]},
                              "optional": s.get("optional")}
            for s in compiled.k8s(task).get("secretAsEnv", []) if s["secretName"] != mlflow}


def test_the_deploy_task_gets_the_milvus_credentials_where_index_milvus_reads_them(compiled):
    """The token and the bulk import's keys come from the Secrets deploy/k8s/milvus names, into the variables
    index.milvus reads; optional, so a cluster serving a BallTree needs no Milvus Secret. No other task
    (training, evaluation) sees them."""
    kfp, milvus = compiled.params.section("kfp"), compiled.params.section("index")["milvus"]
    spec = kfp["milvus"]
    assert milvus_secrets(compiled, "deploy") == {
        spec["secret"]: {spec["token_key"]: milvus["token_env"], "optional": True},
        spec["storage_secret"]: {spec["access_key_key"]: milvus["bulk_import"]["access_key_env"],
                                 spec["secret_key_key"]: milvus["bulk_import"]["secret_key_env"],
                                 "optional": True}}
    for task in TASKS:
        if task != "deploy" and task != "fetch_data":
            assert milvus_secrets(compiled, task.replace("_", "-")) == {}, task
    # the Secret names and keys are the ones the cluster manifests read
    patch = (ROOT / "deploy/k8s/milvus/deployer-milvus-patch.yaml").read_text()
    for name, key in ((spec["secret"], spec["token_key"]), (spec["storage_secret"], spec["access_key_key"]),
                      (spec["storage_secret"], spec["secret_key_key"])):
        assert f"name: {name}, key: {key}" in patch, (name, key)


def test_image_must_be_fully_qualified():
    assert check_image("ghcr.io/org/fashionrec-pipeline:0.1.0")
    assert check_image("localhost:5000/fashionrec-pipeline@sha256:" + "a" * 64)
    for bad in ("fashionrec-pipeline:0.1.0", "org/fashionrec-pipeline:0.1.0", "ghcr.io/org/fashionrec"):
        with pytest.raises(KfpError, match="not fully qualified"):
            check_image(bad)


def test_parameters_default_to_params_yaml(compiled):
    inputs = compiled.spec["root"]["inputDefinitions"]["parameters"]
    want = pipeline_arguments(compiled.params)
    assert set(inputs) == set(want)
    for name, value in want.items():
        assert plain(inputs[name]["defaultValue"]) == value, name
    names = [c["name"] for c in want["candidates"]]
    assert compiled.params.get("kfp.gpu.pool") is True   # the cluster has GPU nodes: the cuda recipe
    assert names == compiled.params.get("train.recipes.cuda") and want["train_params"]["recipe"] == "cuda"
    assert "tracking_uri" not in want["mlflow_params"]  # the cluster's ConfigMap gives it
    assert (want["repo"], want["data_rev"]) == (compiled.params.get("kfp.data.repo"),
                                                compiled.params.get("kfp.data.rev"))
    assert inputs["candidates"]["parameterType"] == "LIST"
    assert inputs["train_params"]["parameterType"] == "STRUCT"


def test_the_accelerator_pool_decides_the_recipe_and_tasks_accept_their_params():
    """kfp.gpu.pool picks the recipe (not the compiling machine's GPU); a forced train.recipe or an explicit
    train.candidates wins; each train task's params (train_params + its loop item) pass the checks."""
    params = load_params(ROOT / "params.yaml")
    for pool, recipe in ((True, "cuda"), (False, "cpu")):
        tree = load_params(ROOT / "params.yaml", [f"kfp.gpu.pool={str(pool).lower()}"])
        args = pipeline_arguments(tree)
        assert [c["name"] for c in args["candidates"]] == params.get(f"train.recipes.{recipe}")
        assert args["train_params"]["recipe"] == recipe and "recipes" not in args["train_params"]
        for item in args["candidates"]:
            block = {k: v for k, v in item.items() if k not in ("name", "gpus")}
            task = component_params({"train": {**args["train_params"], "candidates": [item["name"]],
                                               "models": {item["name"]: block}}}, args["mlflow_params"], 0)
            assert task.section("train")["recipe"] == recipe
    forced = pipeline_arguments(load_params(ROOT / "params.yaml", ["train.recipe=cpu"]))
    assert [c["name"] for c in forced["candidates"]] == params.get("train.recipes.cpu")
    explicit = pipeline_arguments(load_params(ROOT / "params.yaml", ["train.candidates=[pixels]"]))
    assert [c["name"] for c in explicit["candidates"]] == ["pixels"]


def test_committed_spec_is_current(compiled):
    """pipelines/training_pipeline.yaml is what params.yaml and the components compile to today."""
    committed = ROOT / compiled.params.get("kfp.package")
    assert committed.is_file(), "run `make pipeline-compile`"
    assert list(yaml.safe_load_all(committed.read_text())) == [compiled.spec, compiled.platform], \
        "pipelines/training_pipeline.yaml is stale: run `make pipeline-compile`"


def test_pipeline_values_round_trip():
    """KFP hands dict parameters over as protobuf Structs (every number a double, no nulls)."""
    assert plain({"epochs": 1.0, "lr": 0.001, "crop": [0.6, 1.0], "n": {"k": 5.0}, "ok": True}) == \
        {"epochs": 1, "lr": 0.001, "crop": [0.6, 1], "n": {"k": 5}, "ok": True}
    assert without_nulls({"cap": None, "a": [1, None], "b": {"c": None, "d": 2}}) == {"a": [1], "b": {"d": 2}}


def test_component_params_tracking_uri(monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://inherited:5000")
    p = component_params({"evaluate": {"batch_size": 2.0}}, {"tracking_uri": ""}, 7.0)
    assert p.get("evaluate.batch_size") == 2 and p.get("seed") == 7
    assert os.environ["MLFLOW_TRACKING_URI"] == "http://inherited:5000"      # empty: the environment decides
    component_params({}, {"tracking_uri": "http://mlflow.cluster:5000"})
    assert os.environ["MLFLOW_TRACKING_URI"] == "http://mlflow.cluster:5000"  # a server: exported
    p = component_params({}, {"tracking_uri": "sqlite:////tmp/x.db", "artifact_root": "/tmp/a"})
    assert "MLFLOW_TRACKING_URI" not in os.environ                              # a file store: from params
    assert p.get("mlflow.tracking_uri") == "sqlite:////tmp/x.db"


@pytest.mark.parametrize("task", TASKS)
def test_one_component_per_file(task):
    source = (ROOT / "components" / f"{task}.py").read_text()
    assert source.count("@dsl.component(") == 1
    assert "install_kfp_package=False" in source and "base_image=BASE_IMAGE" in source
