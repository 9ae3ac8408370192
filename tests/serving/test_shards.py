"""Embedding the inventory in shards (`index.shard_size`): the same bundle as one pass, and a re-run embeds
only the shards that are not on disk."""

from __future__ import annotations

from functools import partial
from pathlib import Path

import numpy as np

from fashionrec.bundle.load import load_bundle
from fashionrec.core.files import sha256_file
from fashionrec.deploy.build import embed_catalog
from fashionrec.deploy.catalog import read_catalog
from fashionrec.deploy.config import DeployConfig
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
