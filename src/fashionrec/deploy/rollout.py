"""Going live: smoke-test a bundle, switch the `bundles/current` symlink atomically, tell the running servers,
keep the last N bundles.

`history.json` holds the activation stack (`bundle.store.read_activations`): going live pushes, so the
bundle below the top is the one that served before. Only `deploy.reconcile` calls `go_live`: it is the one
place where a bundle is activated. Servers notice a switch by watching the pointer, and are also told at
once with `POST /admin/reload` (token from the environment variable named in params).
"""

from __future__ import annotations

import json
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
    bundles_lock,
    current_version,
    list_versions,
    read_activations,
    set_current,
    write_activations,
)
from fashionrec.core.errors import DataError, SmokeTestFailed
from fashionrec.data.images import open_image
from fashionrec.deploy.catalog import fetch_image
from fashionrec.deploy.config import DeployConfig


@dataclass
class RolloutResult:
    action: str                    # activate | restore (a kept bundle, verified, not re-smoke-tested)
    version: str
    previous: str | None
    smoke: dict[str, Any] | None
    pruned: list[str]
    notified: list[dict[str, Any]] = field(default_factory=list)

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
    for row in rows.tolist():
        source = state.image_source(row)
        try:
            image = source if isinstance(source, Path) else fetch_image(str(source), cfg.max_image_bytes)
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


def prune(bundles_dir: Path, keep: int, protect: set[str]) -> list[str]:
    """Delete all but the newest `keep` bundles, never one in `protect` (current and rollback targets)."""
    versions = list_versions(bundles_dir)
    doomed = [v for v in versions[: max(0, len(versions) - max(1, keep))] if v not in protect]
    for version in doomed:
        shutil.rmtree(bundles_dir / version)
    return doomed


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
    history = read_activations(bundles_dir)
    return version in history["stack"] or any(e.get("version") == version and e.get("action") in
                                               ("activate", "restore") for e in history["log"])


def go_live(cfg: DeployConfig, version: str, smoke: bool, reason: str = "") -> RolloutResult:
    """Make `version` current: smoke-tested first when it never served, checksums verified when it did
    (a kept bundle goes back live in well under a second). Call under the deploy lock (reconcile does)."""
    bundles_dir = cfg.bundles
    folder = bundles_dir / version
    report = smoke_test(folder, cfg) if smoke else None
    if not smoke:
        verify_bundle(folder)
    with bundles_lock(bundles_dir):
        previous = current_version(bundles_dir)
        history = read_activations(bundles_dir)
        stack = [v for v in history["stack"] if (bundles_dir / v).is_dir()]
        if previous is not None and (not stack or stack[-1] != previous):
            stack.append(previous)   # a pointer set by hand joins the stack
        set_current(bundles_dir, version)
        if version in stack[-2:-1]:
            stack.pop()              # back to the one below: a rollback pops rather than pushes
        elif not stack or stack[-1] != version:
            stack.append(version)
        history["log"].append({"action": "activate" if smoke else "restore", "version": version,
                               "previous": previous, "at": datetime.now(UTC).isoformat(timespec="seconds"),
                               **({"reason": reason} if reason else {})})
        pruned = prune(bundles_dir, cfg.keep, protect={version, *stack[-2:]})
        history["stack"] = [v for v in stack if v not in pruned]
        write_activations(bundles_dir, history)
    notified = notify_servers(list(cfg.notify), cfg.admin_token_env) if cfg.notify else []
    return RolloutResult("activate" if smoke else "restore", version, previous, report, pruned, notified)
