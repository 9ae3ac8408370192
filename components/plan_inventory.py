"""plan_inventory (kfp, `index.shard_size` > 0): the inventory's shards for the champion, before a
`ParallelFor` embeds them (the CLI and DVC `deploy` run the same steps in one process)."""

from kfp import dsl
from kfp.dsl import Dataset, Input

from components import BASE_IMAGE


@dsl.component(base_image=BASE_IMAGE, install_kfp_package=False)
def plan_inventory(index_params: dict, serve_params: dict, mlflow_params: dict, seed: int, bundles_dir: str,
                   validated: Input[Dataset], subset: Input[Dataset]) -> list:
    """The champion pinned and the validated images as inventory rows (written beside the shards in
    `bundles_dir`): one loop item per shard, each carrying the plan; one item saying why when a bundle
    already serves it. `subset` holds the images the manifest points at."""
    from fashionrec.deploy.inventory import plan_inventory as run
    from fashionrec.kfp.io import deploy_config

    cfg = deploy_config(index_params, serve_params, mlflow_params, seed, bundles_dir, validated.path)
    return run(cfg).items()
