"""The KFP train step on a cluster: one candidate trained as a Kubeflow Trainer TrainJob (runtime
`torch-distributed`, kfp.trainer.runtime), submitted and awaited through the `kubeflow` SDK.

The step's pod is a small submitter. It stages the job's inputs on the run's workspace volume (the
validated manifest, pointing at a copy of the images, and a params.yaml for the candidate), submits a
TrainJob whose nodes run the pipeline image's `fashionrec train <candidate>` (which reads the runtime's
PET_NNODES / PET_NPROC_PER_NODE / PET_NODE_RANK / PET_MASTER_* and starts the DDP ranks), waits for it,
and copies the model folder rank 0 wrote into the step's `model` artifact. The step's task config (kfp
2.17 `dsl.TaskConfig` passthroughs: resources with the GPUs, tolerations, node selector, env, volumes)
becomes the TrainJob's per-node resources and pod patches, so the job lands where the step would have.
A retried step resumes the job from the checkpoint on the workspace. A failed job fails the step with the
TrainJob's own reason.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from fashionrec.core.errors import KfpError, TrainingError

COMPLETE, FAILED = "Complete", "Failed"
NODE = "node"                     # the torch runtime's replicated job and its trainer container


@dataclass(frozen=True)
class TrainJobRequest:
    """What one candidate's TrainJob asks for (the test reads it back from the submitted body)."""

    name: str
    image: str
    runtime: str
    nodes: int
    procs_per_node: int
    command: list[str]
    resources: dict[str, Any] = field(default_factory=dict)      # per node: cpu, memory, nvidia.com/gpu
    env: list[dict[str, Any]] = field(default_factory=list)      # k8s EnvVar dicts (valueFrom kept)
    volumes: list[dict[str, Any]] = field(default_factory=list)
    volume_mounts: list[dict[str, Any]] = field(default_factory=list)
    tolerations: list[dict[str, Any]] = field(default_factory=list)
    node_selector: dict[str, str] = field(default_factory=dict)


def per_node_resources(task_resources: Mapping[str, Any] | None) -> dict[str, Any]:
    """The step's passed-through resources (a k8s ResourceRequirements) as the SDK's per-node dict:
    the limits where set (GPUs are limits), else the requests."""
    res = dict(task_resources or {})
    merged = {**(res.get("requests") or {}), **(res.get("limits") or {})}
    return {str(k): v for k, v in merged.items() if v not in (None, "", 0, "0")}


def job_request(name: str, image: str, candidate: str, job_dir: Path, trainer: Mapping[str, Any],
                distributed: Mapping[str, Any], task_config: Any, resume: bool) -> TrainJobRequest:
    """The TrainJob for `candidate`: shape from `train.distributed` (nodes, processes per node), the
    runtime from kfp.trainer, placement and volumes from the step's task config."""
    nodes = int(distributed.get("nodes", 1))
    procs = int(distributed.get("procs_per_node", 1))
    command = ["fashionrec", "train", candidate, "-p", str(job_dir / "params.yaml"),
               "--nnodes", str(nodes), "--nproc", str(procs), *(["--resume"] if resume else [])]
    tc = task_config
    return TrainJobRequest(
        name=name, image=image, runtime=str(trainer.get("runtime") or "torch-distributed"), nodes=nodes,
        procs_per_node=procs, command=command, resources=per_node_resources(getattr(tc, "resources", None)),
        env=_merged_env(getattr(tc, "env", None) or [], trainer.get("env") or []),
        volumes=list(getattr(tc, "volumes", None) or []),
        volume_mounts=list(getattr(tc, "volume_mounts", None) or []),
        tolerations=list(getattr(tc, "tolerations", None) or []),
        node_selector=dict(getattr(tc, "node_selector", None) or {}))


def _merged_env(task_env: list[dict[str, Any]], refs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The step's passed-through env, plus the MLflow references (kfp.mlflow) it does not already set."""
    names = {e.get("name") for e in task_env}
    return [*task_env, *(r for r in refs if r.get("name") not in names)]


def submit(backend: Any, req: TrainJobRequest) -> str:
    """Create the TrainJob through the SDK's Kubernetes backend; returns its name."""
    from kubeflow.trainer import CustomTrainerContainer
    from kubeflow.trainer.options.common import Name
    from kubeflow.trainer.options.kubernetes import (
        ContainerPatch,
        JobSetSpecPatch,
        JobSetTemplatePatch,
        JobSpecPatch,
        JobTemplatePatch,
        PodSpecPatch,
        PodTemplatePatch,
        ReplicatedJobPatch,
        RuntimePatch,
        TrainerCommand,
        TrainingRuntimeSpecPatch,
    )

    pod = PodSpecPatch(volumes=req.volumes or None, tolerations=req.tolerations or None,
                       node_selector=req.node_selector or None,
                       containers=[ContainerPatch(name=NODE, env=req.env or None,
                                                  volume_mounts=req.volume_mounts or None)])
    patch = RuntimePatch(training_runtime_spec=TrainingRuntimeSpecPatch(template=JobSetTemplatePatch(
        spec=JobSetSpecPatch(replicated_jobs=[ReplicatedJobPatch(name=NODE, template=JobTemplatePatch(
            spec=JobSpecPatch(template=PodTemplatePatch(spec=pod))))]))))
    trainer = CustomTrainerContainer(image=req.image, num_nodes=req.nodes,
                                     resources_per_node=req.resources or None)
    try:
        return str(backend.train(runtime=req.runtime, trainer=trainer,
                                 options=[Name(name=req.name), TrainerCommand(command=req.command), patch]))
    except (RuntimeError, TimeoutError, ValueError) as exc:
        cause = f" ({exc.__cause__})" if exc.__cause__ else ""
        raise KfpError(f"TrainJob {req.name}: could not be created on runtime '{req.runtime}': "
                       f"{exc}{cause}") from None


def wait(backend: Any, name: str, timeout_s: int, poll_s: int) -> None:
    """Wait for the TrainJob to complete; a failed job raises a TrainingError with its own reason."""
    job = backend.wait_for_job_status(name=name, status={COMPLETE, FAILED}, timeout=int(timeout_s),
                                      polling_interval=int(poll_s))
    if job.status == FAILED:
        raise TrainingError(f"TrainJob {name} failed: {failure_reason(backend, name)}")


def failure_reason(backend: Any, name: str) -> str:
    """The Failed condition of the TrainJob (reason: message), as the Trainer controller wrote it."""
    from kubeflow.trainer.constants import constants

    try:
        cr = backend.custom_api.get_namespaced_custom_object(constants.GROUP, constants.VERSION,
                                                             backend.namespace, constants.TRAINJOB_PLURAL,
                                                             name)
    except Exception as exc:  # noqa: BLE001 - the job failed either way; say why we cannot tell more
        return f"(its status could not be read: {type(exc).__name__}: {exc})"
    conditions = (cr.get("status") or {}).get("conditions") or []
    failed = [c for c in conditions if c.get("type") == FAILED and c.get("status") == "True"]
    if not failed:
        return "no Failed condition recorded"
    c = failed[-1]
    return f"{c.get('reason') or 'Failed'}: {c.get('message') or ''}".strip()


# --- staging on the workspace -------------------------------------------------------------------------


def stage_inputs(job_dir: Path, validated: Path, subset: Path, tree: Mapping[str, Any],
                 candidate: str) -> Path:
    """Copy the images and the validated manifest (paths rewritten into the copy) under `job_dir`, and
    write the candidate's params.yaml there (outputs and checkpoints on the workspace too); returns it.
    Idempotent: a retried step keeps the copy and the checkpoints."""
    from fashionrec.data.manifest import read_manifest

    images, data = job_dir / "subset", job_dir / "validated"
    if not (data / "manifest.parquet").is_file():
        if images.exists():
            shutil.rmtree(images)
        shutil.copytree(subset, images)
        df = read_manifest(validated)
        base = subset.resolve()
        rel = [str(images / Path(p).resolve().relative_to(base)) for p in df["abspath"]]
        tmp = job_dir / "validated.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        df.assign(path=rel).drop(columns=["abspath"]).to_parquet(tmp / "manifest.parquet")
        for extra in sorted(validated.iterdir()):
            if extra.is_file() and extra.name != "manifest.parquet":
                shutil.copy(extra, tmp / extra.name)
        tmp.rename(data)
    params = {**tree, "train": {
        **dict(tree.get("train") or {}), "manifest": str(data / "manifest.parquet"),
        "models_dir": str(job_dir / "models"), "cache_dir": str(job_dir / "cache"),
        "checkpoints_dir": str(job_dir / "checkpoints"), "candidates": [candidate]}}
    path = job_dir / "params.yaml"
    path.write_text(yaml.safe_dump(params, sort_keys=False))
    return path


def collect(job_dir: Path, candidate: str, out: Path) -> dict[str, Any]:
    """Copy the model folder rank 0 wrote into `out`; returns what the step reports (card extras and the
    MLflow run)."""
    folder = job_dir / "models" / candidate
    if not (folder / "model.pt").is_file():
        raise TrainingError(f"TrainJob for {candidate} completed but wrote no {folder / 'model.pt'}")
    out.mkdir(parents=True, exist_ok=True)
    for item in folder.iterdir():
        if item.is_file():
            shutil.copy(item, out / item.name)
    card = json.loads((folder / "card.json").read_text())
    extra = dict(card.get("extra") or {})
    run = json.loads((folder / "mlflow.json").read_text()) if (folder / "mlflow.json").is_file() else {}
    return {"val_micro_f1": float(extra.get("val_micro_f1", float("nan"))),
            "best_epoch": int(extra.get("best_epoch", 0)), "epochs_run": int(extra.get("epochs_run", 0)),
            "device": str(extra.get("device", "unknown")), "run_id": str(run.get("run_id", ""))}


def job_name(candidate: str) -> str:
    """A fresh DNS-1035 name for one attempt at the candidate's job (a retried step submits anew)."""
    import uuid

    slug = "".join(ch if ch.isalnum() else "-" for ch in candidate.lower()).strip("-")[:40] or "candidate"
    return f"fr-{slug}-{uuid.uuid4().hex[:6]}"


def run_trainjob(candidate: str, tree: Mapping[str, Any], trainer: Mapping[str, Any], workspace: Path,
                 validated: Path, subset: Path, out: Path, task_config: Any,
                 backend: Any = None) -> dict[str, Any]:
    """The step's whole work on a cluster: stage, submit, wait, collect (see the module docstring).
    `backend`: the SDK's Kubernetes backend (default: a TrainerClient's, in-cluster config)."""
    if backend is None:
        from kubeflow.common.types import KubernetesBackendConfig
        from kubeflow.trainer import TrainerClient

        backend = TrainerClient(KubernetesBackendConfig(namespace=trainer.get("namespace"))).backend
    job_dir = workspace / "train" / candidate
    job_dir.mkdir(parents=True, exist_ok=True)
    stage_inputs(job_dir, validated, subset, tree, candidate)
    resume = (job_dir / "checkpoints" / candidate / "last.pt").is_file()   # a retried step continues
    image = str(trainer.get("image") or "")
    if not image:
        raise KfpError("kfp.trainer.image: the image of the TrainJob's nodes is not set (kfp.image)")
    distributed = dict((tree.get("train") or {}).get("distributed") or {})
    req = job_request(job_name(candidate), image, candidate, job_dir, trainer, distributed, task_config,
                      resume)
    name = submit(backend, req)
    wait(backend, name, int(trainer.get("timeout_s", 86_400)), int(trainer.get("poll_s", 15)))
    return collect(job_dir, candidate, out)
