"""The sharded deploy tasks run by kfp.local (SubprocessRunner: each task a subprocess, the ParallelFor's
iterations included) over the tiny validated dataset with a real exported model: the bundle equals the
one `fashionrec deploy` builds in one process, and shards already on disk are reused, not embedded again."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import yaml

from fashionrec.bundle.load import load_bundle
from fashionrec.bundle.store import current_version
from fashionrec.deploy.inventory import embed_planned_shard, plan_inventory
from fashionrec.deploy.reconcile import deploy
from fashionrec.kfp.io import deploy_config, without_nulls
from tests.serving.utils import export_model

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.filterwarnings("ignore:.*no effect in the current local runner:UserWarning")


def test_kfp_local_runs_the_shards_in_parallel_for(tiny_validated, tmp_path: Path) -> None:
    from kfp import local

    from tests.pipelines.shard_pipeline import inventory_shards

    tree = yaml.safe_load((ROOT / "params.yaml").read_text())
    model = export_model(tmp_path / "model", seed=5)
    index = without_nulls({**tree["index"], "model": str(model), "shard_size": 16, "recall_queries": 20,
                           "smoke_queries": 3, "notify": []})
    serve = without_nulls(tree["serve"])
    validated = tiny_validated.catalog_validated
    args = {"index_params": index, "serve_params": serve, "mlflow_params": {}, "seed": 42,
            "validated_uri": str(validated), "subset_uri": str(tiny_validated.catalog)}

    # the same deploy in one process (the CLI's path): the reference bundle
    one = deploy_config(index, serve, {}, 42, str(tmp_path / "one"), str(validated))
    reference = load_bundle(Path(deploy(one).bundle))

    # a run that died after embedding shard 1: its file is on the claim
    bundles = tmp_path / "bundles"
    cfg = deploy_config(index, serve, {}, 42, str(bundles), str(validated))
    plan = plan_inventory(cfg)
    assert len(plan.shards) >= 3
    kept = Path(embed_planned_shard(cfg, plan.items()[1])["file"])
    kept_mtime = kept.stat().st_mtime_ns

    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(tmp_path / "runs"),
               enable_caching=False)
    run = inventory_shards(**args, bundles_dir=str(bundles))
    version = run.output
    assert current_version(bundles) == version
    built = load_bundle(bundles / version)
    assert built.items["item_id"] == reference.items["item_id"]
    np.testing.assert_allclose(built.embeddings, reference.embeddings, atol=1e-5)
    assert kept.stat().st_mtime_ns == kept_mtime   # reused by its task, not embedded again
    shard_files = sorted((bundles / ".shards").glob("shard-*.parquet"))
    assert [f.name for f in shard_files] == sorted(f"shard-{s['number']:05d}-{s['key']}.parquet"
                                                   for s in plan.shards)
    # each shard was its own task of the loop
    tasks = {d.name for d in (tmp_path / "runs").rglob("*") if (d / "executor_output.json").is_file()}
    assert {"plan-inventory", "assemble-inventory"} <= tasks
    assert any(t.startswith("embed-shard") for t in tasks)
