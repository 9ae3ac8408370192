"""train (DVC stage `train@<candidate>`): one candidate, on the GPU node pool in the cluster."""

from kfp import dsl
from kfp.dsl import HTML, Dataset, Input, Model, Output

from components import BASE_IMAGE


@dsl.component(base_image=BASE_IMAGE, install_kfp_package=False)
def train(candidate: dict, train_params: dict, mlflow_params: dict, seed: int, validated: Input[Dataset],
          subset: Input[Dataset], model: Output[Model], loss_curve: Output[HTML]) -> str:
    """`fashionrec train <candidate>`: `candidate` is one entry of the loop, `{"name": ..., **its block}`;
    the model folder (model.pt, card.json, history, loss curve, mlflow.json) becomes the `model` artifact.
    `subset` holds the images the validated manifest points at. Returns the candidate's name."""
    import tempfile
    from pathlib import Path

    from fashionrec.kfp.io import component_params, image_page, plain
    from fashionrec.train.loop import train as run

    block = plain(candidate)
    name = str(block.pop("name"))
    p = component_params({"train": {**train_params, "candidates": [name], "models": {name: block}}},
                         mlflow_params, seed)
    work = Path(tempfile.mkdtemp(prefix=f"fashionrec-train-{name}-"))  # pod-local caches
    out = Path(model.path)
    result = run(name, p.section("train"), manifest=Path(validated.path) / "manifest.parquet", out_dir=out,
                 cache_dir=work / "features", checkpoint_dir=work / "checkpoints", tracking_params=p,
                 seed=int(seed))
    model.metadata.update({"candidate": name, "val_micro_f1": result.val_micro_f1, "device": result.device,
                           "epochs_run": result.epochs_run, "mlflow_run_id": result.run_id})
    note = f"best epoch {result.best_epoch}, val micro-F1 {result.val_micro_f1:.4f} on {result.device}"
    Path(loss_curve.path).write_text(image_page(f"{name}: training history",
                                                [("loss curve", out / "loss_curve.png")], note))
    return name
