"""The one path to serving: reconcile what is served with what is wanted.

Wanted = the model version behind `index.model` (the `champion` alias, or a local ONNX file), the inventory
catalogue's version (its file's hash) and the index settings. Served = the bundle `bundles/current` names.
`reconcile` makes them agree: nothing to do when the live bundle already matches; a kept bundle that
matches goes back live at once (checksums verified, no re-embedding); otherwise a new bundle is built,
smoke-tested and activated. A model that cannot be served raises (the bundle is discarded, the live one
keeps serving). The DVC stage `deploy`, the KFP `deploy` component, `fashionrec promote` / `rollback` /
`rollback-deploy` / `add-items` and the deployer all end here; `go_live` is called from nowhere else.
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from fashionrec.bundle.format import FORMAT, verify_bundle
from fashionrec.bundle.store import current_version, deploy_lock, list_versions, read_activations
from fashionrec.core.errors import BundleError, FashionrecError, ModelSourceError
from fashionrec.deploy.build import (
    Built,
    build_bundle,
    extend_bundle,
    inventory_version,
    missing_items,
    recover_missing,
)
from fashionrec.deploy.config import DeployConfig
from fashionrec.deploy.model import MODELS_URI, pin_model, resolve_model
from fashionrec.deploy.rollout import RolloutResult, go_live, was_live

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Want:
    """What should be served."""

    model: str            # pinned: models:/NAME/VERSION or an absolute ONNX path
    model_version: str    # fashionrec/3 | local-<sha12>
    inventory: str        # the catalogue's version (content hash)
    settings: str         # the index settings' fingerprint

    def matches(self, manifest: dict[str, Any]) -> bool:
        """Same model, inventory and settings, in this code's bundle format: an older format (1: the item
        table in Parquet, which the serving image cannot read) is rebuilt by the next deploy."""
        source = manifest.get("source") or {}
        return (manifest.get("format") == FORMAT
                and manifest.get("model", {}).get("version") == self.model_version
                and source.get("inventory") == self.inventory and source.get("settings") == self.settings)


@dataclass
class DeployResult:
    """What a reconcile did; printed as JSON by the CLI and written to the step's summary."""

    action: str                    # built | restored | recovered | unchanged | incomplete | built-only
    bundle: str
    version: str
    model_version: str
    items: int
    embedded: int                  # items embedded by this call (0 for a kept bundle)
    skipped: list[dict[str, str]]  # catalog items the bundle lacks (image unreadable), each with its reason
    index: dict[str, Any]
    embed_seconds: float
    seconds: float
    previous: str | None = None
    parent: str | None = None
    rollout: dict[str, Any] | None = None
    want: dict[str, Any] = field(default_factory=dict)
    precision: str = "fp32"        # fp32 | int8: the bundle's model, for the inventory and the queries
    precision_reason: str = ""
    missing: int = 0               # len(skipped): retried by every reconcile until none is left

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def wanted(cfg: DeployConfig, model: str | None = None, catalog: Path | None = None) -> Want:
    pinned, version = pin_model(model or cfg.model, cfg.tracking_uri)
    return Want(model=pinned, model_version=version, inventory=inventory_version(cfg, catalog),
                settings=cfg.index.fingerprint())


def _manifest(cfg: DeployConfig, version: str) -> dict[str, Any]:
    return json.loads((cfg.bundles / version / "manifest.json").read_text())


def kept_bundle(cfg: DeployConfig, want: Want) -> str | None:
    """The newest kept bundle that matches (its checksums intact), or None."""
    for version in reversed(list_versions(cfg.bundles)):
        try:
            if want.matches(_manifest(cfg, version)):
                verify_bundle(cfg.bundles / version)
                return version
        except (OSError, ValueError, BundleError) as exc:
            log.warning("kept bundle %s skipped: %s", version, exc)
    return None


def served_by(cfg: DeployConfig, want: Want) -> str | None:
    """The bundle a reconcile would serve without embedding the inventory: the live one when it matches
    (its missing items, if any, are retried alone), else a kept one that matches; None: a build."""
    current = current_version(cfg.bundles)
    if current is not None:
        try:
            if want.matches(_manifest(cfg, current)):
                return current
        except (OSError, ValueError):
            pass
    return kept_bundle(cfg, want)


def _result(cfg: DeployConfig, action: str, version: str, started: float, want: Want | None,
            built: Built | None = None, rollout: RolloutResult | None = None,
            previous: str | None = None) -> DeployResult:
    manifest = _manifest(cfg, version)
    missing = missing_items(manifest)
    result = DeployResult(
        action=action, bundle=str(cfg.bundles / version), version=version,
        model_version=str(manifest["model"]["version"]), items=int(manifest["items"]["count"]),
        embedded=built.embedded if built else 0, skipped=missing, missing=len(missing),
        index=manifest["index"], embed_seconds=built.embed_seconds if built else 0.0,
        seconds=round(time.perf_counter() - started, 3), previous=previous,
        parent=manifest.get("parent"), rollout=rollout.to_dict() if rollout else None,
        want=asdict(want) if want else {},
        precision=str(manifest["model"].get("precision", "fp32")),
        precision_reason=str(manifest["model"].get("precision_reason", "")))
    if cfg.summary is not None:
        cfg.summary.parent.mkdir(parents=True, exist_ok=True)
        cfg.summary.write_text(json.dumps(result.to_dict(), indent=2, default=str))
    return result


def _build_and_go_live(cfg: DeployConfig, want: Want, catalog: Path | None, reason: str,
                       activate: bool = True) -> tuple[Built, RolloutResult | None]:
    with tempfile.TemporaryDirectory(prefix="fashionrec-model-") as tmp:
        source = resolve_model(want.model, Path(tmp), tracking_uri=cfg.tracking_uri,
                               precision=cfg.precision)
        if source.version != want.model_version:
            raise ModelSourceError(f"model '{want.model}': fetched {source.version}, "
                                   f"wanted {want.model_version}")
        built = build_bundle(cfg, source, catalog)
    if not activate:
        return built, None
    try:
        return built, go_live(cfg, built.folder.name, smoke=True, reason=reason)
    except FashionrecError:
        shutil.rmtree(built.folder, ignore_errors=True)   # never picked up later as a kept bundle
        raise


def reconcile(cfg: DeployConfig, model: str | None = None, catalog: Path | None = None,
              rebuild: bool = False, reason: str = "") -> DeployResult:
    """Make the live bundle what is wanted (see the module docstring). Waits for a deploy in progress,
    then reads what is wanted: queueing never activates a stale model."""
    started = time.perf_counter()
    with deploy_lock(cfg.bundles, wait_s=cfg.lock_wait_s):
        want = wanted(cfg, model, catalog)
        current = current_version(cfg.bundles)
        if current is not None and not rebuild:
            try:
                live = _manifest(cfg, current)
            except (OSError, ValueError):
                live = {}
            if want.matches(live):
                if not missing_items(live):
                    return _result(cfg, "unchanged", current, started, want, previous=current)
                return _recover(cfg, current, want, started, reason)
        kept = None if rebuild else kept_bundle(cfg, want)
        if kept is not None:
            rollout = go_live(cfg, kept, smoke=not was_live(cfg.bundles, kept), reason=reason)
            return _result(cfg, "restored", kept, started, want, rollout=rollout, previous=current)
        built, rollout = _build_and_go_live(cfg, want, catalog, reason)
        return _result(cfg, "built", built.folder.name, started, want, built, rollout, previous=current)


def _recover(cfg: DeployConfig, current: str, want: Want, started: float, reason: str) -> DeployResult:
    """The live bundle is what is wanted but lacks items whose images could not be read: retry them.
    Those that can be read now are added (a new bundle, smoke-tested, live: `recovered`); when none can,
    the live bundle stays (`incomplete`, never `unchanged`, while items are missing)."""
    built = recover_missing(cfg, current)
    if built is None:
        return _result(cfg, "incomplete", current, started, want, previous=current)
    try:
        rollout = go_live(cfg, built.folder.name, smoke=True, reason=f"{reason}: missing items recovered")
    except FashionrecError:
        shutil.rmtree(built.folder, ignore_errors=True)
        raise
    return _result(cfg, "recovered", built.folder.name, started, want, built, rollout, previous=current)


def deploy(cfg: DeployConfig, model: str | None = None, catalog: Path | None = None,
           rebuild: bool = False) -> DeployResult:
    """The `deploy` step (DVC stage, CLI, KFP component): reconcile, or with `activate: false` only
    build a bundle for later."""
    if cfg.activate:
        return reconcile(cfg, model, catalog, rebuild=rebuild, reason="deploy step")
    started = time.perf_counter()
    with deploy_lock(cfg.bundles, wait_s=cfg.lock_wait_s):
        want = wanted(cfg, model, catalog)
        built, _ = _build_and_go_live(cfg, want, catalog, "", activate=False)
        return _result(cfg, "built-only", built.folder.name, started, want, built,
                       previous=current_version(cfg.bundles))


def add_items(cfg: DeployConfig, catalog: Path) -> DeployResult:
    """`add-items`: the current bundle plus these items (only they are embedded); live unless
    `activate: false`. It keeps its parent's inventory version, so a reconcile leaves it serving."""
    started = time.perf_counter()
    with deploy_lock(cfg.bundles, wait_s=cfg.lock_wait_s):
        previous = current_version(cfg.bundles)
        built = extend_bundle(cfg, catalog)
        rollout = None
        if cfg.activate:
            try:
                rollout = go_live(cfg, built.folder.name, smoke=True, reason=f"add-items {catalog.name}")
            except FashionrecError:
                shutil.rmtree(built.folder, ignore_errors=True)
                raise
        return _result(cfg, "built" if rollout else "built-only", built.folder.name, started, None, built,
                       rollout, previous=previous)


def registry_alias(cfg: DeployConfig) -> tuple[str, str] | None:
    """(registered model, alias) when the deployed model follows an alias, else None."""
    match = MODELS_URI.match(cfg.model.strip())
    return (match["name"], match["alias"]) if match and match["alias"] else None


def roll_back_deploy(cfg: DeployConfig, by: str, reason: str) -> DeployResult:
    """`rollback-deploy`: back to the bundle that served before.

    One notion of rollback: when that bundle holds another registry version than the live one, the
    champion alias is rolled back (the trail records who and why) and serving follows it through
    `reconcile`; otherwise (items added, a local model) the activation stack is popped."""
    started = time.perf_counter()
    with deploy_lock(cfg.bundles, wait_s=cfg.lock_wait_s):
        current = current_version(cfg.bundles)
        stack = [v for v in read_activations(cfg.bundles)["stack"] if (cfg.bundles / v).is_dir()]
        if current is not None and (not stack or stack[-1] != current):
            stack.append(current)
        if len(stack) < 2:
            raise BundleError(f"{cfg.bundles}: no previous bundle to roll back to (history: {stack})")
        target = stack[-2]
        alias = registry_alias(cfg)
        model_changes = (_manifest(cfg, target)["model"]["version"]
                         != _manifest(cfg, current)["model"]["version"])
        if alias is None or not model_changes:
            rollout = go_live(cfg, target, smoke=False, reason=reason)
            return _result(cfg, "restored", target, started, None, rollout=rollout, previous=current)
    return roll_back_champion_and_deploy(cfg, alias[0], by, reason)


def promote_and_deploy(cfg: DeployConfig, name: str, version: str, by: str, reason: str, force: bool,
                       deploy_now: bool) -> dict[str, Any]:
    """`fashionrec promote`: move the alias (trail entry with who and why), then reconcile serving."""
    from fashionrec.registry.steps import promote_version

    change = promote_version(version, name, by=by, reason=reason, force=force)
    return {"registry": change.to_dict(), "deploy": _follow(cfg, name, change.champion, deploy_now, reason)}


def roll_back_champion_and_deploy(cfg: DeployConfig, name: str, by: str, reason: str,
                                  deploy_now: bool = True) -> Any:
    """`fashionrec rollback`: the alias goes back one step in the trail, serving follows it."""
    from fashionrec.registry.steps import rollback_champion

    change = rollback_champion(name, by=by, reason=reason)
    return {"registry": change.to_dict(), "deploy": _follow(cfg, name, change.champion, deploy_now, reason)}


def _follow(cfg: DeployConfig, name: str, version: str | None, deploy_now: bool,
            reason: str) -> dict[str, Any] | str:
    if not deploy_now:
        return "skipped (--no-deploy): the deployer converges from the alias"
    if not (cfg.bundles / "current").is_symlink():
        return f"skipped: no live bundle in {cfg.bundles} here; the deployer converges from the alias"
    try:
        return reconcile(cfg, reason=reason).to_dict()
    except FashionrecError as exc:
        mark_unservable(cfg, name, version, str(exc))
        raise FashionrecError(f"the alias moved to {name} v{version}, but it is not served: {exc} "
                              f"(serving kept {current_version(cfg.bundles)})") from exc


def mark_unservable(cfg: DeployConfig, name: str, version: str | None, reason: str | None) -> None:
    """Tag the model version with why it is not served (None: clear it), best effort."""
    if version is None:
        return
    try:
        from mlflow import MlflowClient

        from fashionrec.registry.mlflow_registry import tag_refusal

        tag_refusal(MlflowClient(cfg.tracking_uri), name, str(version), reason)
    except Exception as exc:  # the registry unreachable: logged, the refusal stands
        log.warning("could not tag %s v%s: %s", name, version, exc)
