"""The compiled pipeline's structure: tasks and their order, the candidate loop, the gate's branches,
resources of every task, the train task's GPU and node placement, image and parameters from params.yaml."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml

from fashionrec.kfp.client import pipeline_arguments
from fashionrec.kfp.io import component_params, plain, without_nulls

ROOT = Path(__file__).resolve().parents[2]
TASKS = ["ingest_subset", "validate", "train", "evaluate", "select", "export", "register", "deploy",
         "record_rejection"]


def dag(compiled, component: str) -> dict:
    node = compiled.spec["root"] if component == "root" else compiled.spec["components"][component]
    return node["dag"]["tasks"]


def test_tasks_loop_and_order(compiled):
    root = dag(compiled, "root")
    assert set(root) == {"ingest-subset", "validate", "for-loop-1", "select", "condition-branches-2"}
    assert root["validate"]["dependentTasks"] == ["ingest-subset"]
    assert "validate" in root["for-loop-1"]["dependentTasks"]
    assert root["select"]["dependentTasks"] == ["for-loop-1"]
    # the loop runs over the candidates parameter, train -> evaluate inside
    loop = root["for-loop-1"]
    assert loop["parameterIterator"]["items"]["inputParameter"] == "pipelinechannel--candidates"
    assert loop["iteratorPolicy"]["parallelismLimit"] == compiled.params.get("kfp.training_parallelism")
    body = dag(compiled, "comp-for-loop-1")
    assert set(body) == {"train", "evaluate"}
    assert body["evaluate"]["dependentTasks"] == ["train"]
    # select collects every iteration's metrics and models
    inputs = root["select"]["inputs"]["artifacts"]
    assert inputs["metrics"]["taskOutputArtifact"]["producerTask"] == "for-loop-1"
    assert inputs["models"]["taskOutputArtifact"]["producerTask"] == "for-loop-1"
    select_inputs = compiled.spec["components"]["comp-select"]["inputDefinitions"]["artifacts"]
    assert select_inputs["metrics"]["isArtifactList"] and select_inputs["models"]["isArtifactList"]


def test_gate_branches(compiled):
    branches = dag(compiled, "comp-condition-branches-2")
    passed, refused = branches["condition-3"], branches["condition-4"]
    cond = "inputs.parameter_values['pipelinechannel--select-passed'] == true"
    assert passed["triggerPolicy"]["condition"] == cond
    assert refused["triggerPolicy"]["condition"] == f"!({cond})"
    on_pass = dag(compiled, passed["componentRef"]["name"])
    assert set(on_pass) == {"export", "register", "deploy"}
    assert on_pass["register"]["dependentTasks"] == ["export"]
    assert on_pass["deploy"]["dependentTasks"] == ["register"]
    assert set(dag(compiled, refused["componentRef"]["name"])) == {"record-rejection"}
    # registry-dependent steps never come from the cache
    for task in ("register", "deploy"):
        assert on_pass[task]["cachingOptions"] == {}
    assert dag(compiled, "root")["select"]["cachingOptions"] == {}


def test_resources_image_and_gpu(compiled):
    kfp = compiled.params.section("kfp")
    for task in TASKS:
        container = compiled.executor(task.replace("_", "-"))
        want = kfp["resources"][task]
        assert container["resources"]["resourceCpuRequest"] == str(want["cpu"]), task
        assert container["resources"]["resourceMemoryRequest"] == str(want["memory"]), task
        assert container["image"] == kfp["image"], task
        assert "pip install" not in " ".join(container["command"]), task  # install_kfp_package=False
        assert ("accelerator" in container["resources"]) == (task == "train"), task
    accel = compiled.executor("train")["resources"]["accelerator"]
    assert accel["resourceType"] == kfp["gpu"]["accelerator"] == "nvidia.com/gpu"
    assert accel["resourceCount"] == str(kfp["gpu"]["limit"])
    train = compiled.k8s("train")
    selector = kfp["gpu"]["node_selector"]
    assert train["nodeSelector"]["labels"] == {selector["key"]: selector["value"]}
    assert train["tolerations"] == [kfp["gpu"]["toleration"]]
    for task in TASKS:
        if task != "train":
            assert "nodeSelector" not in compiled.k8s(task.replace("_", "-")), task
    mount = compiled.k8s("deploy")["pvcMount"][0]
    assert (mount["constant"], mount["mountPath"]) == (kfp["bundles_pvc"], kfp["bundles_mount"])


def test_parameters_default_to_params_yaml(compiled):
    inputs = compiled.spec["root"]["inputDefinitions"]["parameters"]
    want = pipeline_arguments(compiled.params)
    assert set(inputs) == set(want)
    for name, value in want.items():
        assert plain(inputs[name]["defaultValue"]) == value, name
    names = [c["name"] for c in want["candidates"]]
    assert names == compiled.params.get("train.candidates")
    assert want["mlflow_params"]["tracking_uri"] == compiled.params.get("kfp.mlflow_tracking_uri")
    assert inputs["candidates"]["parameterType"] == "LIST"
    assert inputs["train_params"]["parameterType"] == "STRUCT"


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
    p = component_params({"train": {"epochs": 2.0}}, {"tracking_uri": ""}, 7.0)
    assert p.get("train.epochs") == 2 and p.get("seed") == 7
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
