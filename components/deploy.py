"""deploy (DVC stage `index`): the champion embeds the inventory into a new bundle; serving rolls over."""

from kfp import dsl
from kfp.dsl import Artifact, Dataset, Input, Output

from components import BASE_IMAGE


@dsl.component(base_image=BASE_IMAGE, install_kfp_package=False)
def deploy(index_params: dict, serve_params: dict, mlflow_params: dict, seed: int, bundles_dir: str,
           validated: Input[Dataset], subset: Input[Dataset], summary: Output[Artifact]) -> str:
    """`fashionrec index`: `index.model` (the champion) embeds every validated image into a new bundle
    under `bundles_dir` (in the cluster: the claim the serving pods mount), smoke-tests it and switches
    `current`; `summary` is reports/index/summary.json. Returns the bundle version."""
    from pathlib import Path

    from fashionrec.deploy.build import build_index_bundle
    from fashionrec.kfp.io import component_params

    index = {**index_params, "manifest": str(Path(validated.path) / "manifest.parquet"),
             "bundles": bundles_dir, "summary": summary.path}
    p = component_params({"index": index, "serve": serve_params}, mlflow_params, seed)
    result = build_index_bundle(p)
    summary.metadata.update({"bundle": result.bundle, "version": result.version,
                             "model_version": result.model_version, "items": result.items})
    return result.version
