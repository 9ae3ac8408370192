"""A pipeline of the deploy's sharded tasks alone (the real components), fed by importers, for a kfp.local
run without training: plan_inventory -> ParallelFor(shards) { embed_shard } -> assemble_inventory. The
training pipeline wires the same tasks after `register` (tests/pipelines/test_compile_shards.py)."""

from kfp import dsl
from kfp.dsl import Dataset

from components.assemble_inventory import assemble_inventory
from components.embed_shard import embed_shard
from components.plan_inventory import plan_inventory


@dsl.pipeline(name="inventory-shards")
def inventory_shards(index_params: dict, serve_params: dict, mlflow_params: dict, seed: int, bundles_dir: str,
                     validated_uri: str, subset_uri: str) -> str:
    validated = dsl.importer(artifact_uri=validated_uri, artifact_class=Dataset).output
    subset = dsl.importer(artifact_uri=subset_uri, artifact_class=Dataset).output
    sections = {"index_params": index_params, "serve_params": serve_params, "mlflow_params": mlflow_params,
                "seed": seed, "bundles_dir": bundles_dir}
    planned = plan_inventory(**sections, validated=validated, subset=subset)
    with dsl.ParallelFor(planned.output, parallelism=2) as shard:
        embedded = embed_shard(**sections, shard=shard, device="")
    return assemble_inventory(**sections, plan=planned.output, shards=dsl.Collected(embedded.output),
                              validated=validated, subset=subset).outputs["Output"]
