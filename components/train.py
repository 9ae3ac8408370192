"""train (DVC stage `train@<candidate>`): one candidate. On a cluster (kfp.trainer.enabled) the step submits
a Kubeflow Trainer TrainJob (runtime torch-distributed, `train.distributed` nodes x processes) and waits for
it; locally (kfp.local) it trains in its own process, as `dvc repro` does."""

from kfp import dsl
from kfp.dsl import HTML, Dataset, Input, Model, Output

from components import BASE_IMAGE


@dsl.component(base_image=BASE_IMAGE, install_kfp_package=False, task_config_passthroughs=[
    dsl.TaskConfigField.RESOURCES,                  # the GPUs and CPU/memory go to each TrainJob node
    dsl.TaskConfigField.KUBERNETES_TOLERATIONS,
    dsl.TaskConfigField.KUBERNETES_NODE_SELECTOR,
    dsl.TaskConfigPassthrough(field=dsl.TaskConfigField.ENV, apply_to_task=True),
    dsl.TaskConfigPassthrough(field=dsl.TaskConfigField.KUBERNETES_VOLUMES, apply_to_task=True)])
def train(candidate: dict, train_params: dict, mlflow_params: dict, seed: int, validated: Input[Dataset],
          subset: Input[Dataset], model: Output[Model], loss_curve: Output[HTML], trainer_params: dict,
          workspace_path: str, task_config: dsl.TaskConfig) -> str:
    """`fashionrec train <candidate>`: `candidate` is one entry of the loop, `{"name": ..., **its block}`;
    the model folder (model.pt, card.json, history, loss curve, mlflow.json) becomes the `model` artifact.
    The loop item's `gpus` (where the job runs) is not a training param. `subset` holds the images the
    validated manifest points at. `trainer_params` is kfp.trainer; `workspace_path` the run's workspace
    volume (the TrainJob's inputs, checkpoints and outputs); `task_config` the step's resources,
    tolerations, env and volumes, forwarded to the TrainJob. Returns the candidate's name."""
    import tempfile
    from pathlib import Path

    from fashionrec.kfp.io import component_params, image_page, plain

    block = plain(candidate)
    name = str(block.pop("name"))
    block.pop("gpus", None)
    p = component_params({"train": {**train_params, "candidates": [name], "models": {name: block}}},
                         mlflow_params, seed)
    out = Path(model.path)
    trainer = plain(trainer_params)
    if trainer.get("enabled"):
        from fashionrec.kfp.trainjob import run_trainjob

        summary = run_trainjob(name, p.tree, trainer, Path(workspace_path), Path(validated.path),
                               Path(subset.path), out, task_config)
    else:
        from fashionrec.train.loop import train as run

        work = Path(tempfile.mkdtemp(prefix=f"fashionrec-train-{name}-"))  # pod-local caches
        result = run(name, p.section("train"), manifest=Path(validated.path) / "manifest.parquet",
                     out_dir=out, cache_dir=work / "features", checkpoint_dir=work / "checkpoints",
                     tracking_params=p, seed=int(seed))
        summary = {"val_micro_f1": result.val_micro_f1, "best_epoch": result.best_epoch,
                   "epochs_run": result.epochs_run, "device": result.device, "run_id": result.run_id}
    model.metadata.update({"candidate": name, "val_micro_f1": summary["val_micro_f1"],
                           "device": summary["device"], "epochs_run": summary["epochs_run"],
                           "mlflow_run_id": summary["run_id"]})
    note = (f"best epoch {summary['best_epoch']}, val micro-F1 {summary['val_micro_f1']:.4f} "
            f"on {summary['device']}")
    Path(loss_curve.path).write_text(image_page(f"{name}: training history",
                                                [("loss curve", out / "loss_curve.png")], note))
    return name
