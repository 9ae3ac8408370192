"""export (DVC stage `export`): the gate's winner to ONNX, with its parity check against PyTorch."""

from kfp import dsl
from kfp.dsl import Artifact, Dataset, Input, Model, Output

from components import BASE_IMAGE


@dsl.component(base_image=BASE_IMAGE, install_kfp_package=False)
def export(export_params: dict, winner_model: Input[Model], decision: Input[Artifact],
           validated: Input[Dataset], subset: Input[Dataset], onnx_model: Output[Model]):
    """`fashionrec export`: `onnx_model` is models/export/ (model.onnx, preprocessing.json, parity.json);
    a failed parity check fails the task, so nothing is registered."""
    from pathlib import Path

    from fashionrec.kfp.io import component_params, linked_folder
    from fashionrec.registry.export import export as run

    p = component_params({"export": export_params})
    candidate = str(winner_model.metadata["candidate"])
    models_dir = linked_folder({candidate: winner_model.path})
    result = run(models_dir, Path(decision.path), Path(validated.path) / "manifest.parquet",
                 Path(onnx_model.path), p.section("export"))
    onnx_model.metadata.update({"candidate": result.candidate, "onnx_sha256": result.onnx_sha256,
                                "parity_passed": bool(result.parity.get("passed")),
                                "embedding_max_abs_diff": result.parity.get("embedding_max_abs_diff")})
