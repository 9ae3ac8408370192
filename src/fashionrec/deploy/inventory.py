"""The deploy split for a parallel runner: plan the inventory's shards, embed one shard, assemble.

`fashionrec deploy` (CLI, DVC stage) runs the three in one process: `build_bundle` plans, embeds the shards
one after another with a progress bar, each retried alone (`shards.embed_in_shards`), and assembles. A
Kubeflow run spreads them over pods: `plan_inventory` (one task) names each shard's rows, a `ParallelFor`
runs `embed_planned_shard` once per shard (its own pod, a GPU where the pool has one, retried alone by
KFP), and `assemble_inventory` is the same reconcile as the CLI's, told that every shard is on disk: it
builds the index or the Milvus collection from the shard files, smoke-tests and activates the bundle.

The shard files live in `index.shards_dir` (default `<bundles>/.shards`: in a cluster the bundles claim,
which every task mounts), named by model, preprocessing and rows, so a retried or re-run task finds the
shards already written and embeds only the others.
"""

from __future__ import annotations

import logging
import tempfile
import time
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

from fashionrec.core.errors import DataError, ModelSourceError
from fashionrec.core.files import sha256_file
from fashionrec.deploy import shards as sharding
from fashionrec.deploy.build import embed_catalog, read_inventory
from fashionrec.deploy.config import DeployConfig
from fashionrec.deploy.model import ModelSource, resolve_model
from fashionrec.deploy.reconcile import DeployResult, deploy, served_by, wanted

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class InventoryPlan:
    """What the parallel tasks embed: the pinned model, where the shards go, each shard's rows."""

    model: str                    # pinned: models:/NAME/VERSION, or an ONNX file
    model_version: str
    model_sha256: str
    shards_dir: str
    catalog: str                  # the plan's rows (Parquet beside the shards); "" when nothing is embedded
    shards: list[dict[str, Any]] = field(default_factory=list)   # Shard.to_dict() of each, in order
    served: str | None = None     # a bundle that already serves what is wanted: nothing to embed

    def common(self) -> dict[str, Any]:
        """The fields every item carries (no nulls: a pipeline parameter cannot hold one)."""
        return {k: v for k, v in asdict(self).items() if k != "shards" and v is not None}

    def items(self) -> list[dict[str, Any]]:
        """The parallel loop's items: one per shard, each carrying the plan's common fields, so a task
        needs its item alone (and the plan is one list: kfp.local iterates only a task's single output).
        Never empty (an empty `ParallelFor` behaves differently across KFP backends): nothing to embed
        is one item saying why."""
        common = self.common()
        if self.shards:
            return [{**s, "plan": common} for s in self.shards]
        return [{"number": -1, "start": 0, "stop": 0, "key": "", "plan": common,
                 "skip": f"bundle {self.served} already serves {self.model_version} over this inventory"}]

    @classmethod
    def from_items(cls, items: list[dict[str, Any]]) -> InventoryPlan:
        """The plan back from its loop items (as a pipeline hands them over: numbers may be floats)."""
        try:
            common = items[0]["plan"]
            plan = cls(model=str(common["model"]), model_version=str(common["model_version"]),
                       model_sha256=str(common["model_sha256"]), shards_dir=str(common["shards_dir"]),
                       catalog=str(common.get("catalog") or ""), served=common.get("served") or None,
                       shards=[sharding.Shard.from_dict(i).to_dict() for i in items if not i.get("skip")])
        except (IndexError, KeyError, TypeError) as exc:
            raise DataError(f"inventory plan: missing or malformed field ({exc!r}); expected the items "
                            "plan_inventory returns") from None
        return plan


def _model(cfg: DeployConfig, model: str, version: str, workdir: Path) -> ModelSource:
    source = resolve_model(model, workdir, tracking_uri=cfg.tracking_uri, precision=cfg.precision)
    if source.version != version:
        raise ModelSourceError(f"model '{model}': fetched {source.version}, planned {version}")
    return source


def plan_inventory(cfg: DeployConfig, model: str | None = None) -> InventoryPlan:
    """The shards of this deploy (deterministic: the same model and inventory give the same plan), the
    plan's rows written beside them. Nothing to embed when the live bundle, or a kept one, already serves
    the wanted model over this inventory (the assemble step then restores or keeps it)."""
    if cfg.shard_size < 1:
        raise DataError(f"params index.shard_size must be >= 1 to plan inventory shards, got "
                        f"{cfg.shard_size}")
    want = wanted(cfg, model)
    served = served_by(cfg, want)
    out = cfg.shards_folder
    if served is not None:
        return InventoryPlan(model=want.model, model_version=want.model_version, model_sha256="",
                             shards_dir=str(out), catalog="", served=served)
    table = read_inventory(cfg).reset_index(drop=True)
    with tempfile.TemporaryDirectory(prefix="fashionrec-model-") as tmp:
        source = _model(cfg, want.model, want.model_version, Path(tmp))
        sha = sha256_file(source.onnx_path)
        shards = sharding.plan(table, cfg.shard_size, sha, source.prep)
    rows = sharding.write_catalog(table, shards, out)
    log.info("inventory plan: %d item(s) in %d shard(s) of %d, model %s", len(table), len(shards),
             cfg.shard_size, want.model_version)
    return InventoryPlan(model=want.model, model_version=want.model_version, model_sha256=sha,
                         shards_dir=str(out), catalog=str(rows), shards=[s.to_dict() for s in shards])


def embed_planned_shard(cfg: DeployConfig, item: dict[str, Any]) -> dict[str, Any]:
    """Embed one shard (a loop item of `InventoryPlan.items`) into its Parquet file; a complete file
    already there is reused (a retried or re-run task does nothing twice). Returns what it did."""
    if item.get("skip"):
        return {"shard": -1, "action": "skipped", "reason": str(item["skip"])}
    plan = InventoryPlan.from_items([item])
    shard = sharding.Shard.from_dict(item)
    out = Path(plan.shards_dir)
    path = out / shard.name
    if path.is_file():
        return {"shard": shard.number, "action": "reused", "file": str(path), "seconds": 0.0}
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="fashionrec-model-") as tmp:
        source = _model(cfg, plan.model, plan.model_version, Path(tmp))
        if sha256_file(source.onnx_path) != plan.model_sha256:
            raise ModelSourceError(f"model '{plan.model}': the file fetched is not the one planned "
                                   f"(sha256 {plan.model_sha256[:12]}...); plan again")
        catalog = sharding.read_plan_catalog(Path(plan.catalog), shard, plan.model_sha256, source.prep)
        embed = partial(embed_catalog, model_file=source.onnx_path, prep=source.prep,
                        batch_size=cfg.batch_size, cfg=cfg)
        written = sharding.embed_shard(shard, catalog, embed, out)
    return {"shard": shard.number, "action": "embedded", "file": str(written),
            "items": shard.stop - shard.start, "seconds": round(time.perf_counter() - started, 3)}


def assemble_inventory(cfg: DeployConfig, plan: InventoryPlan) -> DeployResult:
    """The deploy of `plan`'s model from the shard files its tasks wrote: the bundle (index, or Milvus
    collection: bulk import where the server has it) built, smoke-tested and activated by the one reconcile
    path. A shard missing is an error naming it, not embedded here."""
    if plan.shards and Path(plan.shards_dir) != cfg.shards_folder:
        raise DataError(f"inventory plan: shards in {plan.shards_dir}, but this step reads "
                        f"{cfg.shards_folder} (index.shards_dir differs between the tasks)")
    return deploy(cfg.with_(embed_missing_shards=False), model=plan.model)

