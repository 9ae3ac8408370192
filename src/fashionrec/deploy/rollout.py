"""Going live: smoke-test a bundle, switch the `bundles/current` symlink atomically, tell the running servers,
keep the last N bundles.

`history.json` holds the activation stack (`bundle.store.read_activations`): going live pushes, so the
bundle below the top is the one that served before. Only `deploy.reconcile` calls `go_live`: it is the one
place where a bundle is activated. Servers notice a switch by watching the pointer, and are also told at
once with `POST /admin/reload` (token from the environment variable named in params).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import urllib.request
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from fashionrec.bundle.format import verify_bundle
from fashionrec.bundle.store import (
    HISTORY,
    bundles_lock,
    current_version,
    list_versions,
    read_activations,
    set_current,
    write_activations,
)
from fashionrec.core.errors import BundleError, DataError, FashionrecError, SmokeTestFailed
from fashionrec.data.images import open_image
from fashionrec.deploy.catalog import fetcher_for
from fashionrec.deploy.config import DeployConfig

log = logging.getLogger(__name__)


@dataclass
class RolloutResult:
    action: str                    # activate | restore (a kept bundle, verified, not re-smoke-tested)
    version: str
    previous: str | None
    smoke: dict[str, Any] | None
    pruned: list[str]
    notified: list[dict[str, Any]] = field(default_factory=list)
    collection: dict[str, Any] | None = None   # kind milvus: the fleet alias moved, old collections dropped

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def smoke_test(bundle_dir: Path, cfg: DeployConfig) -> dict[str, Any]:
    """Load the bundle exactly as a server would and ask it a few questions.

    Sample items are re-embedded from their images (files, or URLs fetched again) through the bundle's
    model: each must come out as its stored embedding (model and index belong together) and find itself
    among its top-k. The index must reach `min_recall` against exact search on the stored embeddings.
    """
    from fashionrec.index.brute import BruteIndex
    from fashionrec.index.recall import recall_at_k
    from fashionrec.serve.state import load_state

    state = load_state(bundle_dir, inventory_root=cfg.inventory_root)
    stored = state.stored_embeddings()
    k = min(cfg.index.recall_k, state.size)
    rng = np.random.default_rng(cfg.seed)
    rows = rng.permutation(state.size)[: cfg.smoke_queries]
    answered, similarities = 0, []
    fetch = fetcher_for(cfg)   # one pool for the URL images among the samples
    for row in rows.tolist():
        source = state.image_source(row)
        try:
            image = source if isinstance(source, Path) else fetch.fetch(str(source))
            vector = state.embed([open_image(image)])[0]
        except DataError as exc:
            raise SmokeTestFailed(f"{bundle_dir.name}: item {state.item_ids[row]}: {exc}") from exc
        similarity = float(vector @ stored[row])
        similarities.append(similarity)
        if not similarity >= cfg.min_self_similarity:
            raise SmokeTestFailed(f"{bundle_dir.name}: item {state.item_ids[row]} re-embeds with cosine "
                                  f"{similarity:.4f} to its stored embedding: model and embeddings disagree")
        hits = state.search(vector, k)
        if row not in [h.row for h in hits] and hits[0].score < 0.999:
            raise SmokeTestFailed(f"{bundle_dir.name}: item {state.item_ids[row]} is not among its own "
                                  f"top-{k}")
        answered += 1
    fetch.close()
    for row in rows.tolist():  # the stored vectors too: the index answers for them
        if not state.search(stored[row], k):
            raise SmokeTestFailed(f"{bundle_dir.name}: empty answer for item {state.item_ids[row]}")
    sample = np.sort(rng.choice(state.size, size=min(cfg.index.recall_queries, state.size), replace=False))
    recall = recall_at_k(state.index, BruteIndex(stored), stored[sample], k)
    if recall < cfg.min_recall:
        raise SmokeTestFailed(f"{bundle_dir.name}: recall@{k} {recall:.3f} of index "
                              f"'{state.index.kind}' is below index.min_recall {cfg.min_recall}")
    return {"version": state.version, "model_version": state.model_version, "provider": state.provider,
            "items": state.size, "image_queries": answered, f"recall_at_{k}": round(recall, 4),
            "min_self_similarity": round(min(similarities), 5) if similarities else None}


def prune_order(versions: list[str], keep: int, protect: set[str], live: set[str]) -> list[str]:
    """Which bundles to delete so that at most `keep` remain (never one in `protect`): bundles that never
    went live first (a build-only bundle, or one left by a deploy killed during its smoke test), oldest
    first, then previously live ones, oldest first. A bundle that served is never deleted while one that
    never did is kept."""
    excess = len(versions) - max(1, keep)
    if excess <= 0:
        return []
    candidates = [v for v in versions if v not in protect]
    ranked = [v for v in candidates if v not in live] + [v for v in candidates if v in live]
    return ranked[:excess]


def notify_servers(urls: list[str], token_env: str) -> list[dict[str, Any]]:
    """POST /admin/reload to every server at once (each loads the bundle itself, so together they take
    as long as the slowest); a server that cannot be told still sees the pointer change."""
    from concurrent.futures import ThreadPoolExecutor

    token = os.environ.get(token_env, "")

    def tell(url: str) -> dict[str, Any]:
        req = urllib.request.Request(f"{url.rstrip('/')}/admin/reload", method="POST", data=b"",
                                     headers={"Authorization": f"Bearer {token}"})
        try:
            with urllib.request.urlopen(req, timeout=60) as resp:  # noqa: S310 - configured server URLs
                return {"url": url, "status": resp.status, "body": json.loads(resp.read() or b"{}")}
        except Exception as exc:  # connection refused, HTTP errors: reported, the rollout stands
            return {"url": url, "status": getattr(exc, "code", None), "error": str(exc)}

    if not urls:
        return []
    with ThreadPoolExecutor(max_workers=min(16, len(urls))) as pool:
        return list(pool.map(tell, urls))


def was_live(bundles_dir: Path, version: str) -> bool:
    """Whether this bundle went live before (so it passed its smoke test then)."""
    return version in ever_live(read_activations(bundles_dir))


def ever_live(history: dict[str, Any]) -> set[str]:
    """Bundles the activation history says served at some point."""
    switched = [e for e in history["log"] if e.get("action") in ("activate", "restore")
                and e.get("switched", True)]
    return set(history["stack"]) | {e["version"] for e in switched if e.get("version")}


def go_live(cfg: DeployConfig, version: str, smoke: bool, reason: str = "") -> RolloutResult:
    """Make `version` current: smoke-tested first when it never served, checksums verified when it did
    (a kept bundle goes back live in well under a second). Call under the deploy lock (reconcile does).

    The order cannot lie: the history is written first, then `current` switched, then old bundles
    pruned. A history that cannot be written (disk full) leaves `current` untouched and the command
    failing; a switch that fails puts the previous history back. Either way what serves is recorded."""
    from fashionrec.deploy import collections

    bundles_dir = cfg.bundles
    folder = bundles_dir / version
    if smoke:
        try:
            report = smoke_test(folder, cfg)
        except FashionrecError:
            collections.discard(folder)   # kind milvus: the refused bundle's collection goes with it
            raise
    else:
        report = None
        verify_bundle(folder)
        collections.ready_to_serve(folder)   # kind milvus: loaded again (not kept across a restart)
    with bundles_lock(bundles_dir):
        previous = current_version(bundles_dir)
        history = read_activations(bundles_dir)
        before = {"stack": list(history["stack"]), "log": list(history["log"])}
        stack = [v for v in history["stack"] if (bundles_dir / v).is_dir()]
        if previous is not None and (not stack or stack[-1] != previous):
            stack.append(previous)   # a pointer set by hand joins the stack
        if version in stack[-2:-1]:
            stack.pop()              # back to the one below: a rollback pops rather than pushes
        elif not stack or stack[-1] != version:
            stack.append(version)
        live = ever_live(history) | set(stack)
        doomed = prune_order(list_versions(bundles_dir), cfg.keep, {version, *stack[-2:]}, live)
        history["log"].append({"action": "activate" if smoke else "restore", "version": version,
                               "previous": previous, "at": datetime.now(UTC).isoformat(timespec="seconds"),
                               **({"reason": reason} if reason else {}),
                               **({"pruned": doomed} if doomed else {})})
        history["stack"] = [v for v in stack if v not in doomed]
        try:
            write_activations(bundles_dir, history)
        except OSError as exc:
            raise BundleError(f"{bundles_dir / HISTORY}: cannot record the switch to {version} ({exc}); "
                              f"nothing was switched, {previous} still serves") from exc
        try:
            set_current(bundles_dir, version)
        except OSError as exc:
            try:
                write_activations(bundles_dir, before)
            except OSError as undo:
                log.error("could not put the history back after a failed switch: %s", undo)
            raise BundleError(f"{bundles_dir}: cannot switch `current` to {version} ({exc}); "
                              f"{previous} still serves") from exc
        pruned = []
        for old in doomed:
            try:
                shutil.rmtree(bundles_dir / old)
                pruned.append(old)
            except OSError as exc:   # left for the next prune: recorded as no longer in the stack
                log.warning("could not prune bundle %s: %s", old, exc)
    moved = collections.follow(bundles_dir, version)
    notified = notify_servers(list(cfg.notify), cfg.admin_token_env) if cfg.notify else []
    return RolloutResult("activate" if smoke else "restore", version, previous, report, pruned, notified,
                         moved)
