"""Embedding the inventory in shards (`index.shard_size`): the same bundle as one pass, and a re-run embeds
only the shards that are not on disk."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path

import numpy as np
import pytest

from fashionrec.bundle.load import load_bundle
from fashionrec.bundle.store import current_version
from fashionrec.core.errors import DataError
from fashionrec.core.files import sha256_file
from fashionrec.deploy.build import embed_catalog
from fashionrec.deploy.catalog import read_catalog
from fashionrec.deploy.config import DeployConfig
from fashionrec.deploy.inventory import InventoryPlan, assemble_inventory, embed_planned_shard, plan_inventory
from fashionrec.deploy.model import resolve_model
from fashionrec.deploy.shards import embed_in_shards, plan
from tests.serving.utils import deploy_with, write_params


def test_sharded_deploy_equals_one_pass_and_resumes_one_shard(tmp_path: Path, assets) -> None:
    (tmp_path / "whole").mkdir()
    (tmp_path / "sharded").mkdir()
    whole = deploy_with(write_params(tmp_path / "whole", assets.model_a, assets.catalog))
    params = write_params(tmp_path / "sharded", assets.model_a, assets.catalog, index__shard_size=7)
    sharded = deploy_with(params)
    a, b = load_bundle(Path(whole.bundle)), load_bundle(Path(sharded.bundle))
    assert b.items["item_id"] == a.items["item_id"]
    np.testing.assert_allclose(b.embeddings, a.embeddings, atol=1e-5)
    shard_dir = params.root / "bundles" / ".shards"
    files = sorted(shard_dir.glob("shard-*.parquet"))
    assert len(files) == 6   # 40 items in shards of 7

    # A crash lost shard 2: the re-run embeds it alone and reuses the five others.
    files[2].unlink()
    source = resolve_model(str(assets.model_a), tmp_path / "model")
    catalog = read_catalog(assets.catalog)
    embed = partial(embed_catalog, model_file=source.onnx_path, prep=source.prep, batch_size=8,
                    cfg=DeployConfig.from_params(params))
    embeddings, kept, skipped, stats = embed_in_shards(catalog, embed, source.onnx_path, source.prep,
                                                       shard_dir, 7, retries=0)
    assert stats == {"shards": 6, "embedded": 1, "reused": 5}
    np.testing.assert_allclose(embeddings, a.embeddings, atol=1e-5)
    assert kept["item_id"].tolist() == a.items["item_id"] and skipped == []

    # Another model's shards are never reused: the keys differ.
    other = resolve_model(str(assets.model_b), tmp_path / "model_b")
    assert {s.name for s in plan(catalog, 7, sha256_file(other.onnx_path), other.prep)}.isdisjoint(
        {f.name for f in files})


def test_planned_shards_embedded_apart_then_assembled(tmp_path: Path, assets) -> None:
    """The pipeline's split (plan, one task per shard, assemble) builds the bundle the CLI builds; the
    assemble step refuses while a shard is missing (naming it) and a retried shard reuses its file."""
    (tmp_path / "cli").mkdir()
    (tmp_path / "split").mkdir()
    whole = load_bundle(Path(deploy_with(write_params(tmp_path / "cli", assets.model_a, assets.catalog,
                                                      index__shard_size=7)).bundle))
    cfg = DeployConfig.from_params(write_params(tmp_path / "split", assets.model_a, assets.catalog,
                                                index__shard_size=7))
    plan = plan_inventory(cfg)
    assert [(s["start"], s["stop"]) for s in plan.items()] == [(i, min(i + 7, 40)) for i in range(0, 40, 7)]
    assert plan_inventory(cfg) == plan   # deterministic: a task retried plans the same shards
    # KFP hands the items over as protobuf values: every integer a float
    as_struct = json.loads(json.dumps(plan.items()), parse_int=float)
    assert as_struct[1]["start"] == 7.0 and InventoryPlan.from_items(as_struct) == plan
    *first, last = plan.items()
    with ThreadPoolExecutor(2) as pool:   # the shards embed apart, in any order
        done = list(pool.map(lambda item: embed_planned_shard(cfg, item), reversed(first)))
    assert sorted(d["shard"] for d in done) == [0, 1, 2, 3, 4] and {d["action"] for d in done} == {"embedded"}
    with pytest.raises(DataError, match=r"1 of 6 inventory shard\(s\) not embedded \(first: shard 5, items "
                                        r"35-39"):
        assemble_inventory(cfg, plan)
    assert current_version(cfg.bundles) is None   # nothing activated

    written = Path(done[0]["file"])
    before = written.stat().st_mtime_ns
    assert embed_planned_shard(cfg, first[-1])["action"] == "reused"   # a retry does nothing twice
    assert written.stat().st_mtime_ns == before
    assert embed_planned_shard(cfg, last)["action"] == "embedded"
    result = assemble_inventory(cfg, plan)
    assert result.action == "built" and current_version(cfg.bundles) == result.version
    built = load_bundle(Path(result.bundle))
    assert built.items["item_id"] == whole.items["item_id"]
    np.testing.assert_allclose(built.embeddings, whole.embeddings, atol=1e-5)

    # Deployed: the next plan embeds nothing (one item saying why), and assemble keeps the bundle.
    again = plan_inventory(cfg)
    assert again.served == result.version and again.shards == []
    [skip] = again.items()
    assert embed_planned_shard(cfg, skip)["action"] == "skipped"
    assert assemble_inventory(cfg, again).action == "unchanged"


def test_planned_shard_refuses_a_foreign_shard(tmp_path: Path, assets) -> None:
    cfg = DeployConfig.from_params(write_params(tmp_path, assets.model_a, assets.catalog,
                                                index__shard_size=16))
    plan = plan_inventory(cfg)
    forged = {**plan.items()[0], "stop": 15}   # not the rows its key names
    with pytest.raises(DataError, match=r"inventory shard 0 \(.*, items 0-14\) is not this plan's"):
        embed_planned_shard(cfg, forged)
    with pytest.raises(DataError, match="inventory plan: missing or malformed field"):
        embed_planned_shard(cfg, {k: v for k, v in plan.items()[0].items() if k != "plan"})
    with pytest.raises(DataError, match="index.shard_size must be >= 1"):
        plan_inventory(cfg.with_(shard_size=0))



def test_a_changed_title_writes_its_shard_again(tmp_path: Path, assets) -> None:
    """The bundle's items come from the shard files: a row edited in the catalog (same id, same image) is
    a new key for its shard, which is written again; the other shards' files are reused."""
    catalog = tmp_path / "catalog.csv"
    lines = assets.catalog.read_text().replace("images/", f"{assets.catalog.parent}/images/").splitlines()
    catalog.write_text("\n".join(lines) + "\n")
    params = write_params(tmp_path, assets.model_a, catalog, index__shard_size=16)
    deploy_with(params)
    shard_dir = params.root / "bundles" / ".shards"
    before = {f.name: f.stat().st_mtime_ns for f in shard_dir.glob("shard-*.parquet")}
    assert len(before) == 3
    row = next(n for n, line in enumerate(lines) if line.startswith("item020,"))
    fields = lines[row].split(",")
    lines[row] = ",".join([*fields[:2], "Red sneakers", *fields[3:]])
    catalog.write_text("\n".join(lines) + "\n")
    second = deploy_with(params)
    items = load_bundle(Path(second.bundle)).items
    titles = dict(zip(items["item_id"], items["title"], strict=True))
    assert titles["item020"] == "Red sneakers" and titles["item019"] == lines[row - 1].split(",")[2]
    after = {f.name: f.stat().st_mtime_ns for f in shard_dir.glob("shard-*.parquet")}
    kept = {name for name in before if after.get(name) == before[name]}
    assert sorted(n[:11] for n in kept) == ["shard-00000", "shard-00002"]   # items 0-15 and 32-39
    assert len(after) == 3 and not any(n.startswith("shard-00001") for n in kept)
