"""embed_shard (kfp, one task per inventory shard in a `ParallelFor`): embed one shard into its Parquet
file on the bundles claim; retried alone (KFP's retry), a file already written is reused."""

from kfp import dsl

from components import BASE_IMAGE


@dsl.component(base_image=BASE_IMAGE, install_kfp_package=False)
def embed_shard(index_params: dict, serve_params: dict, mlflow_params: dict, seed: int, bundles_dir: str,
                shard: dict, device: str) -> dict:
    """Embed `shard` (a loop item of plan_inventory) with the planned model. `device`: "auto" where the
    task requests a GPU, empty for index.device. Returns what it did (embedded, reused, skipped)."""
    from fashionrec.deploy.inventory import embed_planned_shard
    from fashionrec.kfp.io import deploy_config, plain

    cfg = deploy_config(index_params, serve_params, mlflow_params, seed, bundles_dir, device=device)
    return embed_planned_shard(cfg, plain(shard))
