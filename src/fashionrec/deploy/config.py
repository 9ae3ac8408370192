"""The deploy step's configuration, built once from params at the edge (CLI, DVC, KFP component, deployer).

Library functions below take a `DeployConfig` (and explicit paths inside it), never the whole `Params`:
what a deploy reads is visible in one place, and a component can build one from its artifact paths
without injecting them into a params tree.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from fashionrec.core.config import DEFAULT_SEED, Params
from fashionrec.core.errors import ParamsError
from fashionrec.core.settings import DeployerSection, IndexSection, ServeSection, check
from fashionrec.index import AUTO_EXACT_MAX, KINDS, RECALL_K
from fashionrec.index.milvus import MilvusSettings

DEFAULT_MODEL = "models:/fashionrec@champion"
DEFAULT_ADMIN_TOKEN_ENV = "FASHIONREC_ADMIN_TOKEN"
DEFAULT_WEBHOOK_SECRET_ENV = "FASHIONREC_WEBHOOK_SECRET"
DEFAULT_DEPLOYER_PORT = 8001


@dataclass(frozen=True)
class IndexSettings:
    """How a bundle's index is built and checked (the `index` section minus paths and rollout)."""

    kind: str = "balltree"
    auto_exact_max: int = AUTO_EXACT_MAX
    kind_params: dict[str, dict[str, Any]] = field(default_factory=dict)
    recall_k: int = RECALL_K
    target_recall: float | None = 0.95
    max_ef_search: int = 1024
    recall_queries: int = 200

    def params_of(self, kind: str) -> dict[str, Any]:
        return dict(self.kind_params.get(kind) or {})

    def milvus(self) -> MilvusSettings:
        """`index.milvus` (kind milvus: the server, the alias, the collections' index type)."""
        return MilvusSettings.from_mapping(self.kind_params.get("milvus"))

    def fingerprint(self) -> str:
        """What a bundle built with these settings records: a change (kind, M, ...) means a rebuild."""
        # index.milvus counts only for kind milvus: adding the section rebuilds no in-process bundle
        kind_params = {k: v for k, v in self.kind_params.items() if k != "milvus" or self.kind == "milvus"}
        blob = json.dumps({"kind": self.kind, "auto_exact_max": self.auto_exact_max,
                           "kind_params": kind_params, "recall_k": self.recall_k,
                           "target_recall": self.target_recall, "max_ef_search": self.max_ef_search},
                          sort_keys=True, default=str)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class DeployConfig:
    """Everything the deploy step reads: where (paths), what (model, inventory), how (index, smoke test)."""

    bundles: Path
    model: str = DEFAULT_MODEL                # models:/NAME@ALIAS, models:/NAME/VERSION or an ONNX file
    catalog: Path | None = None               # catalog CSV; None: every row of `manifest`
    manifest: Path | None = None
    summary: Path | None = None               # the step's JSON summary (DVC output)
    inventory_root: Path | None = None        # serve.inventory_root (servers, smoke tests)
    index: IndexSettings = field(default_factory=IndexSettings)
    min_recall: float = 0.9
    min_self_similarity: float = 0.99
    smoke_queries: int = 5
    batch_size: int = 32
    device: str = "cpu"
    max_image_bytes: int = 20_000_000
    fetch_retries: int = 3                    # URL images: retries with exponential backoff
    fetch_backoff_s: float = 0.5
    fetch_timeout_s: float = 10.0             # connect and read timeout of each attempt
    activate: bool = True
    keep: int = 5
    notify: tuple[str, ...] = ()
    admin_token_env: str = DEFAULT_ADMIN_TOKEN_ENV
    seed: int = DEFAULT_SEED
    tracking_uri: str | None = None
    lock_wait_s: float = 600.0                # a reconcile waits this long for another deploy to finish
    precision: str = "auto"                   # auto (int8 where export accepted it) | fp32 | int8
    shard_size: int = 0                       # > 0: embed in shards of this many items that resume
    shards_dir: Path | None = None            # where shard files go (None: <bundles>/.shards)
    shard_retries: int = 1                    # a failed shard is retried alone this many times
    embed_missing_shards: bool = True         # False (a pipeline's assemble step): every shard must be on
                                              # disk already (its parallel task wrote it); not a params key

    @classmethod
    def from_params(cls, params: Params) -> DeployConfig:
        """Read `index` (+ `serve.inventory_root`, `serve.admin_token_env`, `seed`, the tracking URI)."""
        from fashionrec.core.tracking import tracking_uri

        s = check(IndexSection, params.section("index"), "index")   # its fields are the defaults
        kinds = s.model_dump(exclude_unset=True)   # a kind's parameters: those set (the index fills in)

        def path(value: Any) -> Path | None:
            return params.path(value) if value else None

        if not s.bundles:
            raise ParamsError("params index.bundles: the bundles folder is required")
        serve = check(ServeSection, params.get("serve"), "serve")
        index = IndexSettings(
            kind=s.kind, auto_exact_max=s.auto_exact_max,
            kind_params={k: dict(kinds[k] or {}) for k in KINDS if kinds.get(k) is not None},
            recall_k=s.recall_k, target_recall=s.target_recall, max_ef_search=s.max_ef_search,
            recall_queries=s.recall_queries)
        return cls(
            bundles=params.path(s.bundles), model=s.model, catalog=path(s.catalog), manifest=path(s.manifest),
            summary=path(s.summary), inventory_root=path(serve.inventory_root), index=index,
            min_recall=s.min_recall, min_self_similarity=s.min_self_similarity, smoke_queries=s.smoke_queries,
            batch_size=s.batch_size, device=s.device, max_image_bytes=s.max_image_bytes,
            fetch_retries=s.fetch_retries, fetch_backoff_s=s.fetch_backoff_s,
            fetch_timeout_s=s.fetch_timeout_s,
            activate=s.activate, keep=s.keep, notify=tuple(s.notify), admin_token_env=serve.admin_token_env,
            seed=int(params.get("seed", DEFAULT_SEED)), tracking_uri=tracking_uri(params),
            lock_wait_s=s.lock_wait_s, precision=s.precision, shard_size=s.shard_size,
            shards_dir=path(s.shards_dir), shard_retries=s.shard_retries)

    def with_(self, **changes: Any) -> DeployConfig:
        return replace(self, **changes)

    @property
    def shards_folder(self) -> Path:
        """Where inventory shards are written (`index.shards_dir`, else `<bundles>/.shards`)."""
        return self.shards_dir or self.bundles / ".shards"


@dataclass(frozen=True)
class DeployerConfig:
    """The long-running controller (`fashionrec deployer`): where it listens and how it checks events."""

    registered_model: str = "fashionrec"
    alias: str = "champion"
    host: str = "127.0.0.1"
    port: int = DEFAULT_DEPLOYER_PORT
    webhook_secret_env: str = DEFAULT_WEBHOOK_SECRET_ENV
    poll_interval_s: float = 30.0             # the alias is read this often even without webhooks
    max_clock_skew_s: float = 300.0           # webhook timestamps older or newer than this are refused
    replay_memory: int = 10_000               # delivery ids remembered to refuse replays
    log_level: str = "info"
    max_body_bytes: int = 65_536              # webhook bodies above this: 413, from Content-Length unread
    max_json_depth: int = 32                  # a signed body nested deeper: 400
    header_timeout_s: float = 10.0            # a request's headers must arrive within this
    body_timeout_s: float = 10.0              # and its body within this: 408
    max_connections: int = 32                 # open connections (idle ones too); more: a JSON 503
    timeout_keep_alive_s: float = 5.0         # idle keep-alive connections closed after this
    refused_memory: int = 20                  # refused deliveries listed in /status (apart from the events)

    @property
    def webhook_secret(self) -> str | None:
        return os.environ.get(self.webhook_secret_env) or None

    @classmethod
    def from_params(cls, params: Params) -> DeployerConfig:
        """Every field from the checked `deployer` section (its defaults are the section's)."""
        sec = check(DeployerSection, params.get("deployer"), "deployer").model_dump()
        alias_spec = str(params.get("index.model") or DEFAULT_MODEL)
        has_alias = alias_spec.startswith("models:/") and "@" in alias_spec
        alias = alias_spec.split("@", 1)[1] if has_alias else "champion"
        own = {f.name for f in fields(cls)} - {"registered_model", "alias"}
        return cls(registered_model=str(params.get("register.name") or "fashionrec"), alias=alias,
                   **{name: value for name, value in sec.items() if name in own})
