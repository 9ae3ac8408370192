"""Rollout and rollback of bundles: smoke-test, switch the `bundles/current` symlink atomically, tell the
running servers, keep the last N bundles.

`history.json` holds the stack of activated versions: activating pushes, `rollback` pops, so a rollback
returns to the bundle that served before. Servers notice a switch by watching the pointer, and are also
told at once with `POST /admin/reload` (token from the environment variable named in params).
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
    read_history,
    set_current,
    write_history,
)
from fashionrec.core.config import DEFAULT_SEED, Params
from fashionrec.core.errors import BundleError, DataError, SmokeTestFailed
from fashionrec.data.images import open_image


@dataclass
class RolloutResult:
    action: str                    # activate | rollback
    version: str
    previous: str | None
    smoke: dict[str, Any] | None
    pruned: list[str]
    notified: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def smoke_test(bundle_dir: Path, params: Params) -> dict[str, Any]:
    """Load the bundle exactly as a server would and ask it a few questions.

    Sample items are re-embedded from their images through the bundle's model: each must come out as
    its stored embedding (model and index belong together) and find itself among its top-k. The index
    must reach `min_recall` against exact search on the stored embeddings.
    """
    from fashionrec.index import RECALL_K
    from fashionrec.index.brute import BruteIndex
    from fashionrec.index.recall import recall_at_k
    from fashionrec.serve.state import load_state

    sec = params.section("index")
    serve = params.get("serve", {}) or {}
    root = serve.get("inventory_root")
    state = load_state(bundle_dir, inventory_root=params.path(root) if root else None)
    stored = state.stored_embeddings()
    k = min(int(sec.get("recall_k", RECALL_K)), state.size)
    rng = np.random.default_rng(int(params.get("seed", DEFAULT_SEED)))
    rows = rng.permutation(state.size)[: int(sec.get("smoke_queries", 5))]
    answered, similarities = 0, []
    for row in rows.tolist():
        source = state.image_source(row)
        if not isinstance(source, Path):
            continue   # URL images are not fetched again here; the stored embedding is queried below
        try:
            vector = state.embed([open_image(source)])[0]
        except DataError as exc:
            raise SmokeTestFailed(f"{bundle_dir.name}: item {state.item_ids[row]}: {exc}") from exc
        similarity = float(vector @ stored[row])
        similarities.append(similarity)
        if similarity < float(sec.get("min_self_similarity", 0.99)):
            raise SmokeTestFailed(f"{bundle_dir.name}: item {state.item_ids[row]} re-embeds with cosine "
                                  f"{similarity:.4f} to its stored embedding: model and embeddings disagree")
        hits = state.search(vector, k)
        if row not in [h.row for h in hits] and hits[0].score < 0.999:
            raise SmokeTestFailed(f"{bundle_dir.name}: item {state.item_ids[row]} is not among its own "
                                  f"top-{k}")
        answered += 1
    for row in rows.tolist():  # the stored vectors too, so a bundle of URL images is still queried
        if not state.search(stored[row], k):
            raise SmokeTestFailed(f"{bundle_dir.name}: empty answer for item {state.item_ids[row]}")
    sample = np.sort(rng.choice(state.size, size=min(int(sec.get("recall_queries", 200)), state.size),
                                replace=False))
    queries = stored[sample]
    recall = recall_at_k(state.index, BruteIndex(stored), queries, k)
    if recall < float(sec.get("min_recall", 0.9)):
        raise SmokeTestFailed(f"{bundle_dir.name}: recall@{k} {recall:.3f} of index "
                              f"'{state.index.kind}' is below index.min_recall {sec.get('min_recall')}")
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
    """POST /admin/reload to each server; a server that cannot be told still sees the pointer change."""
    token = os.environ.get(token_env, "")
    results = []
    for url in urls:
        req = urllib.request.Request(f"{url.rstrip('/')}/admin/reload", method="POST", data=b"",
                                     headers={"Authorization": f"Bearer {token}"})
        try:
            with urllib.request.urlopen(req, timeout=60) as resp:  # noqa: S310 - configured server URLs
                results.append({"url": url, "status": resp.status, "body": json.loads(resp.read() or b"{}")})
        except Exception as exc:  # connection refused, HTTP errors: reported, the rollout stands
            results.append({"url": url, "status": getattr(exc, "code", None), "error": str(exc)})
    return results


def _notify(params: Params) -> list[dict[str, Any]]:
    urls = list(params.get("index.notify") or [])
    token_env = str(params.get("serve.admin_token_env") or "FASHIONREC_ADMIN_TOKEN")
    return notify_servers(urls, token_env) if urls else []


def activate(bundles_dir: Path, version: str, params: Params) -> RolloutResult:
    """Smoke-test a bundle, then make it current; the previous one stays as the rollback target."""
    folder = bundles_dir / version
    smoke = smoke_test(folder, params)
    with bundles_lock(bundles_dir):
        previous = current_version(bundles_dir)
        history = read_history(bundles_dir)
        if previous is not None and (not history["stack"] or history["stack"][-1] != previous):
            history["stack"].append(previous)   # a pointer set by hand joins the stack
        set_current(bundles_dir, version)
        if not history["stack"] or history["stack"][-1] != version:
            history["stack"].append(version)
        history["log"].append({"action": "activate", "version": version, "previous": previous,
                               "at": datetime.now(UTC).isoformat(timespec="seconds")})
        keep = int(params.get("index.keep", 5))
        pruned = prune(bundles_dir, keep, protect={version, *history["stack"][-2:]})
        history["stack"] = [v for v in history["stack"] if v not in pruned]
        write_history(bundles_dir, history)
    return RolloutResult("activate", version, previous, smoke, pruned, _notify(params))


def rollback(bundles_dir: Path, params: Params) -> RolloutResult:
    """Return serving to the bundle that was current before this one."""
    with bundles_lock(bundles_dir):
        current = current_version(bundles_dir)
        history = read_history(bundles_dir)
        stack = [v for v in history["stack"] if (bundles_dir / v).is_dir()]
        if current is not None and (not stack or stack[-1] != current):
            stack.append(current)
        if len(stack) < 2:
            raise BundleError(f"{bundles_dir}: no previous bundle to roll back to (history: {stack})")
        target = stack[-2]
        verify_bundle(bundles_dir / target)
        set_current(bundles_dir, target)
        history["stack"] = stack[:-1]
        history["log"].append({"action": "rollback", "version": target, "previous": current,
                               "at": datetime.now(UTC).isoformat(timespec="seconds")})
        write_history(bundles_dir, history)
    return RolloutResult("rollback", target, current, None, [], _notify(params))
