"""deploy (DVC stage `deploy`, CLI `fashionrec deploy`): serve the champion over the validated inventory."""

from kfp import dsl
from kfp.dsl import Artifact, Dataset, Input, Output

from components import BASE_IMAGE


@dsl.component(base_image=BASE_IMAGE, install_kfp_package=False)
def deploy(index_params: dict, serve_params: dict, mlflow_params: dict, seed: int, bundles_dir: str,
           validated: Input[Dataset], subset: Input[Dataset], summary: Output[Artifact]) -> str:
    """`fashionrec deploy`: reconcile `bundles_dir` (in the cluster: the claim the serving pods and the
    deployer mount) to `index.model` (the champion) over every validated image; a kept bundle of that
    model is reused, else one is embedded, smoke-tested and switched to. Returns the live bundle version."""
    from fashionrec.deploy.reconcile import deploy as run
    from fashionrec.kfp.io import deploy_config

    cfg = deploy_config(index_params, serve_params, mlflow_params, seed, bundles_dir, validated.path,
                        summary=summary.path)
    result = run(cfg)
    summary.metadata.update({"bundle": result.bundle, "version": result.version, "action": result.action,
                             "model_version": result.model_version, "items": result.items})
    return result.version
