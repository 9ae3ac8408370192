"""The train step on a cluster: the TrainJob it submits through the `kubeflow` SDK (runtime, nodes,
processes, GPUs, tolerations, volumes, env), run as a node would run it, and a failed job failing the step
with the job's own reason. The SDK's Kubernetes backend builds and submits the body; only the API server
is a stand-in (tests/pipelines/fake_trainer.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from kfp import dsl

from fashionrec.core.errors import TrainingError
from fashionrec.kfp.client import cluster_recipe, pipeline_arguments, train_params_of
from fashionrec.kfp.io import component_params
from fashionrec.kfp.trainjob import run_trainjob
from fashionrec.models.store import load_model
from tests.pipelines.fake_trainer import FakeCluster

WORKSPACE_MOUNT = "/kfp-workspace"


def task_config(compiled, gpus: int) -> dsl.TaskConfig:
    """What KFP passes through from the train step as compiled (kfp.resources.train, the GPU pool's
    toleration, the loop item's GPUs), the MLflow env from the cluster, and the run's workspace volume."""
    kfp = compiled.params.section("kfp")
    res = kfp["resources"]["train"]
    return dsl.TaskConfig(
        resources={"requests": {"cpu": res["cpu"], "memory": res["memory"]},
                   "limits": {kfp["gpu"]["accelerator"]: gpus}},
        tolerations=[dict(kfp["gpu"]["toleration"])],
        node_selector={"cloud.google.com/gke-accelerator": "nvidia-l4"},
        env=[{"name": "MLFLOW_TRACKING_URI", "valueFrom": {
            "configMapKeyRef": {"name": kfp["mlflow"]["config_map"], "key": "tracking_uri"}}}],
        volumes=[{"name": "kfp-workspace", "persistentVolumeClaim": {"claimName": "run-1-workspace"}}],
        volume_mounts=[{"name": "kfp-workspace", "mountPath": WORKSPACE_MOUNT}])


def tree_for(tiny_validated, nodes: int, procs: int, **model: Any) -> dict[str, Any]:
    """The component's params tree for simple_cnn, as the train step builds it."""
    section = tiny_validated.params.section("train")
    train = train_params_of(section, cluster_recipe(section, tiny_validated.params.section("kfp")))
    train["distributed"] = {**train["distributed"], "nodes": nodes, "procs_per_node": procs}
    train["device"] = "cpu"
    block = {**section["models"]["simple_cnn"], "epochs": 1, "size": 32, "batch_size": 4, **model}
    sections = {"train": {**train, "candidates": ["simple_cnn"], "models": {"simple_cnn": block}}}
    return component_params(sections, {}, 0).tree


def trainer_params(compiled) -> dict[str, Any]:
    """kfp.trainer as the compiled pipeline passes it (cluster arguments)."""
    return pipeline_arguments(compiled.params)["trainer_params"]


def test_the_trainjob_it_submits(compiled, tiny_validated, tmp_path: Path) -> None:
    cluster = FakeCluster()
    trainer = trainer_params(compiled)
    assert trainer["enabled"] is True and trainer["runtime"] == "torch-distributed"
    assert pipeline_arguments(compiled.params, local=True)["trainer_params"]["enabled"] is False
    with pytest.raises(TrainingError, match="wrote no"):   # nothing ran: the stand-in only records
        run_trainjob("simple_cnn", tree_for(tiny_validated, nodes=2, procs=4), trainer, tmp_path / "ws",
                     tiny_validated.validated, tiny_validated.subset, tmp_path / "model",
                     task_config(compiled, gpus=4), backend=cluster)
    [body] = cluster.created
    assert body["kind"] == "TrainJob" and body["apiVersion"] == "trainer.kubeflow.org/v1alpha1"
    assert body["metadata"]["name"].startswith("fr-simple-cnn-")
    spec = body["spec"]
    assert spec["runtimeRef"] == {"name": "torch-distributed", "kind": "ClusterTrainingRuntime"}
    t = spec["trainer"]
    assert t["image"] == compiled.params.get("kfp.image")
    assert t["numNodes"] == 2
    job_dir = tmp_path / "ws" / "train" / "simple_cnn"
    assert t["command"] == ["fashionrec", "train", "simple_cnn", "-p", str(job_dir / "params.yaml"),
                            "--nnodes", "2", "--nproc", "4"]
    gpu = compiled.params.get("kfp.gpu.accelerator")
    assert t["resourcesPerNode"]["limits"][gpu] == t["resourcesPerNode"]["requests"][gpu] == 4
    assert t["resourcesPerNode"]["requests"]["cpu"] == compiled.params.get("kfp.resources.train.cpu")
    [patch] = spec["runtimePatches"]
    [job] = patch["trainingRuntimeSpec"]["template"]["spec"]["replicatedJobs"]
    assert job["name"] == "node"
    pod = job["template"]["spec"]["template"]["spec"]
    assert pod["tolerations"] == [dict(compiled.params.get("kfp.gpu.toleration"))]
    assert pod["nodeSelector"] == {"cloud.google.com/gke-accelerator": "nvidia-l4"}
    assert pod["volumes"] == [{"name": "kfp-workspace",
                               "persistentVolumeClaim": {"claimName": "run-1-workspace"}}]
    [container] = pod["containers"]
    assert container["name"] == "node"
    assert container["volumeMounts"] == [{"name": "kfp-workspace", "mountPath": WORKSPACE_MOUNT}]
    # MLflow reaches the nodes as references to the cluster's ConfigMap and Secret, never as values
    env = {e["name"]: e["valueFrom"] for e in container["env"]}
    mlflow = compiled.params.section("kfp")["mlflow"]
    assert env["MLFLOW_TRACKING_URI"] == {"configMapKeyRef": {"name": mlflow["config_map"],
                                                              "key": "tracking_uri"}}
    for key, name in mlflow["secret_env"].items():
        assert env[name] == {"secretKeyRef": {"name": mlflow["secret"], "key": key}}
    assert all("value" not in e for e in container["env"])
    # the job's inputs are staged on the workspace: the manifest points at the copied images
    from fashionrec.data.manifest import read_manifest

    df = read_manifest(job_dir / "validated")
    from fashionrec.data.shards import read_image_bytes

    assert all(p.startswith(str(job_dir / "subset")) and read_image_bytes(p) for p in df["abspath"])


def test_a_failed_job_fails_the_step_with_its_reason(compiled, tiny_validated, tmp_path: Path) -> None:
    cluster = FakeCluster(fail_with=("JobFailed", "jobset fr-x: node-1 OOMKilled (exit code 137)"))
    with pytest.raises(TrainingError, match=r"^TrainJob fr-simple-cnn-\w+ failed: JobFailed: jobset fr-x: "
                                            r"node-1 OOMKilled \(exit code 137\)$"):
        run_trainjob("simple_cnn", tree_for(tiny_validated, nodes=1, procs=1), trainer_params(compiled),
                     tmp_path / "ws", tiny_validated.validated, tiny_validated.subset, tmp_path / "model",
                     task_config(compiled, gpus=1), backend=cluster)
    assert not (tmp_path / "model").exists()


def test_the_job_runs_as_a_node_runs_it_and_the_step_collects_the_model(compiled, tiny_validated,
                                                                         mlflow_server: str,
                                                                         tmp_path: Path) -> None:
    """One node, 2 processes (gloo on CPU): the command the TrainJob carries trains the candidate with
    the runtime's PET_* environment, and the step's `model` artifact is rank 0's model folder."""
    cluster = FakeCluster(run=True, env={"OMP_NUM_THREADS": "1"})
    summary = run_trainjob("simple_cnn", tree_for(tiny_validated, nodes=1, procs=2),
                           trainer_params(compiled), tmp_path / "ws", tiny_validated.validated,
                           tiny_validated.subset, tmp_path / "model", task_config(compiled, gpus=0),
                           backend=cluster)
    [done] = cluster.outputs
    assert done.returncode == 0, done.stderr[-3000:]
    assert summary["epochs_run"] == 1 and summary["device"] == "cpu" and summary["run_id"]
    model = load_model(tmp_path / "model")
    assert model.card.candidate == "simple_cnn"
    for name in ("model.pt", "card.json", "history.csv", "loss_curve.png", "mlflow.json"):
        assert (tmp_path / "model" / name).is_file(), name
    # a retried step resumes from the checkpoint the job left on the workspace
    cluster.run = False
    run_trainjob("simple_cnn", tree_for(tiny_validated, nodes=1, procs=2), trainer_params(compiled),
                 tmp_path / "ws", tiny_validated.validated, tiny_validated.subset, tmp_path / "model2",
                 task_config(compiled, gpus=0), backend=cluster)
    assert cluster.created[0]["spec"]["trainer"]["command"][-1] == "2"
    assert cluster.created[-1]["spec"]["trainer"]["command"][-1] == "--resume"
