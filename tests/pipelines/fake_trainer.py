"""A stand-in for a cluster running Kubeflow Trainer, behind the `kubeflow` SDK's own Kubernetes backend.

No cluster can run here, so the SDK's `KubernetesBackend` is used with its Kubernetes API replaced: the
TrainJob body the SDK builds (options applied, `to_dict()` of its models) is what `create` records, and
the SDK's `wait_for_job_status` reads the job back through `get_job`. With `run=True` the cluster also
runs the job as one node would: the body's command, with the environment the torch runtime gives it
(PET_NNODES, PET_NPROC_PER_NODE, PET_NODE_RANK), on this machine; its exit code decides Complete or
Failed. Without it the job completes having run nothing; `fail_with` makes it fail with a chosen
controller condition.
"""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import datetime
from pathlib import Path
from typing import Any

from kubeflow.trainer.backends.kubernetes.backend import KubernetesBackend
from kubeflow.trainer.types import types

CLI = str(Path(sys.executable).with_name("fashionrec"))


class FakeCustomApi:
    def __init__(self, cluster: FakeCluster) -> None:
        self.cluster = cluster

    def create_namespaced_custom_object(self, group: str, version: str, namespace: str, plural: str,
                                        body: dict[str, Any]) -> dict[str, Any]:
        assert (group, version, plural) == ("trainer.kubeflow.org", "v1alpha1", "trainjobs")
        self.cluster.created.append(body)
        self.cluster.namespace_used = namespace
        self.cluster.statuses[body["metadata"]["name"]] = self.cluster.execute(body)
        return body

    def get_namespaced_custom_object(self, group: str, version: str, namespace: str, plural: str,
                                     name: str, **_: Any) -> dict[str, Any]:
        status, conditions = self.cluster.statuses[name]
        return {"metadata": {"name": name}, "status": {"conditions": conditions}}


class FakeCluster(KubernetesBackend):
    """The SDK's Kubernetes backend with the API server replaced (see the module docstring)."""

    def __init__(self, namespace: str = "team-a", run: bool = False,
                 fail_with: tuple[str, str] | None = None, env: dict[str, str] | None = None) -> None:
        self.namespace = namespace
        self.custom_api = FakeCustomApi(self)
        self.core_api = None
        self.run, self.fail_with, self.env = run, fail_with, env or {}
        self.created: list[dict[str, Any]] = []
        self.statuses: dict[str, tuple[str, list[dict[str, Any]]]] = {}
        self.namespace_used = ""
        self.outputs: list[subprocess.CompletedProcess] = []

    def get_runtime(self, name: str) -> types.Runtime:
        trainer = types.RuntimeTrainer(trainer_type=types.TrainerType.CUSTOM_TRAINER, framework="torch",
                                       image="ghcr.io/kubeflow/trainer/torch:latest")
        trainer.set_command(("torchrun",))
        return types.Runtime(name=name, trainer=trainer, kind=types.RuntimeKind.CLUSTER_TRAINING_RUNTIME)

    def get_job(self, name: str) -> types.TrainJob:
        body = next(b for b in self.created if b["metadata"]["name"] == name)
        return types.TrainJob(name=name, runtime=self.get_runtime(body["spec"]["runtimeRef"]["name"]),
                              steps=[], num_nodes=int(body["spec"]["trainer"].get("numNodes") or 1),
                              creation_timestamp=datetime.now(), status=self.statuses[name][0])

    def execute(self, body: dict[str, Any]) -> tuple[str, list[dict[str, Any]]]:
        if self.fail_with:
            reason, message = self.fail_with
            return "Failed", [{"type": "Failed", "status": "True", "reason": reason, "message": message}]
        if not self.run:   # a job that completes having done nothing
            return "Complete", [{"type": "Complete", "status": "True", "reason": "JobsCompleted"}]
        trainer = body["spec"]["trainer"]
        command = [CLI if trainer["command"][0] == "fashionrec" else trainer["command"][0],
                   *trainer["command"][1:]]
        env = {**os.environ, **self.env, "PET_NNODES": str(trainer.get("numNodes") or 1),
               "PET_NPROC_PER_NODE": "auto", "PET_NODE_RANK": "0"}
        done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600)
        self.outputs.append(done)
        if done.returncode == 0:
            return "Complete", [{"type": "Complete", "status": "True", "reason": "JobsCompleted"}]
        return "Failed", [{"type": "Failed", "status": "True", "reason": "JobFailed",
                           "message": f"node-0 exited with code {done.returncode}"}]
