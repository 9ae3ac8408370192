"""assemble_inventory (kfp, after the shards' `ParallelFor`): the deploy step from the shard files, i.e.
`fashionrec deploy` told that every shard is embedded (the index or Milvus collection built from them,
smoke test, activation)."""

from kfp import dsl
from kfp.dsl import Artifact, Dataset, Input, Output

from components import BASE_IMAGE


@dsl.component(base_image=BASE_IMAGE, install_kfp_package=False)
def assemble_inventory(index_params: dict, serve_params: dict, mlflow_params: dict, seed: int,
                       bundles_dir: str, plan: list, shards: list, validated: Input[Dataset],
                       subset: Input[Dataset], summary: Output[Artifact]) -> str:
    """Reconcile `bundles_dir` to the plan's model from its shard files (a shard missing fails the step,
    naming it). `plan`: plan_inventory's items; `shards`: the embed_shard results, collected. Returns the
    live bundle version."""
    from fashionrec.deploy.inventory import InventoryPlan
    from fashionrec.deploy.inventory import assemble_inventory as run
    from fashionrec.kfp.io import deploy_config, plain

    cfg = deploy_config(index_params, serve_params, mlflow_params, seed, bundles_dir, validated.path,
                        summary=summary.path)
    result = run(cfg, InventoryPlan.from_items(plain(plan)))
    done = [plain(s) for s in shards]
    summary.metadata.update({"bundle": result.bundle, "version": result.version, "action": result.action,
                             "model_version": result.model_version, "items": result.items,
                             "shards_embedded": sum(s.get("action") == "embedded" for s in done),
                             "shards_reused": sum(s.get("action") == "reused" for s in done)})
    return result.version
