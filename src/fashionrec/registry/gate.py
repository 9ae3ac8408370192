"""The gate: pick the winner among the evaluated candidates and decide whether it may be registered.

The winner is the candidate with the best primary metric. It passes when every gated metric reaches its
minimum in params, none trails the current champion's value by more than `max_regression` (δ), and no
shopper group (`select.groups`: kids, adults) falls below its floor (`select.group_floors`): a model that
serves kids badly does not pass on the strength of the adults' average. All gated metrics are
higher-is-better. The decision is a plain dict, written as JSON whether it passes or
not, so a person can read why a model was refused. It holds no timestamp: the same inputs give the same
file, so DVC does not re-run export and register for nothing (MLflow records when it ran).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fashionrec.core.config import numeric_leaves
from fashionrec.core.errors import DataError, FashionrecError
from fashionrec.core.files import read_json


@dataclass(frozen=True)
class Champion:
    """The registry's current champion as the gate sees it: a version and its flattened metrics."""

    version: str
    metrics: dict[str, float]
    candidate: str | None = None


@dataclass
class Decision:
    """The gate's verdict; `to_dict()` is what reports/select/decision.json holds."""

    passed: bool
    winner: str
    primary_metric: str
    ranking: list[dict[str, Any]]
    checks: list[dict[str, Any]]
    reason: str
    champion: dict[str, Any] | None
    metrics: dict[str, float]
    max_regression: float

    def to_dict(self) -> dict[str, Any]:
        return {"passed": self.passed, "winner": self.winner, "reason": self.reason,
                "primary_metric": self.primary_metric, "max_regression": self.max_regression,
                "checks": self.checks, "ranking": self.ranking, "champion": self.champion,
                "metrics": self.metrics}


def read_metrics(metrics_dir: Path, candidates: Sequence[str]) -> dict[str, dict[str, float]]:
    """Flattened metrics/<candidate>.json of every candidate; a missing or unreadable file is an error."""
    out: dict[str, dict[str, float]] = {}
    for name in candidates:
        path = Path(metrics_dir) / f"{name}.json"
        tree = read_json(path, f"{path}: metrics of candidate '{name}' not found (was it evaluated?)")
        if not isinstance(tree, dict):
            raise DataError(f"{path}: not a JSON object of metrics")
        out[name] = numeric_leaves(tree)
    return out


def check_params(params: Mapping[str, Any]) -> tuple[str, dict[str, float], float]:
    """(primary metric, {metric: minimum}, δ) from the select params, with clear errors."""
    primary = params.get("primary_metric")
    if not isinstance(primary, str) or not primary:
        raise FashionrecError("params select.primary_metric: must name a metric, e.g. test.micro_f1")
    thresholds = params.get("thresholds")
    if not isinstance(thresholds, Mapping) or not thresholds:
        raise FashionrecError("params select.thresholds: must map metric names to minimum values")
    clean = metric_numbers(thresholds, "thresholds")
    delta = params.get("max_regression", 0.0)
    if isinstance(delta, bool) or not isinstance(delta, int | float) or delta < 0:
        raise FashionrecError(f"params select.max_regression: must be a number >= 0, got {delta!r}")
    return primary, clean, float(delta)


def check_floors(params: Mapping[str, Any]) -> tuple[list[str], dict[str, float]]:
    """(groups, {metric: floor}) from `select.groups` and `select.group_floors`, with clear errors."""
    groups = params.get("groups") or []
    names_ok = isinstance(groups, Sequence) and all(isinstance(g, str) for g in groups)
    if isinstance(groups, str) or not names_ok:
        raise FashionrecError(f"params select.groups: must be a list of group names, got {groups!r}")
    floors = params.get("group_floors") or {}
    if not isinstance(floors, Mapping):
        raise FashionrecError("params select.group_floors: must map metric names to minimum values")
    return list(groups), metric_numbers(floors, "group_floors")


def metric_numbers(values: Mapping[str, Any], key: str) -> dict[str, float]:
    """{metric: minimum} of `select.<key>`, naming the entry that is not a number."""
    clean: dict[str, float] = {}
    for metric, value in values.items():
        if isinstance(value, bool) or not isinstance(value, int | float) or math.isnan(value):
            raise FashionrecError(f"params select.{key}.{metric}: must be a number, got {value!r}")
        clean[str(metric)] = float(value)
    return clean


def decide(metrics: Mapping[str, Mapping[str, float]], params: Mapping[str, Any],
           champion: Champion | None) -> Decision:
    """Rank the candidates by the primary metric and gate the best one (pure: no files, no registry)."""
    primary, thresholds, delta = check_params(params)
    groups, floors = check_floors(params)
    if not metrics:
        raise FashionrecError("select: no candidates to choose from (train.candidates is empty)")
    missing = [name for name, m in metrics.items() if primary not in m]
    if len(missing) == len(metrics):
        raise DataError(f"select.primary_metric '{primary}' is in no candidate's metrics "
                        f"(candidates: {', '.join(metrics)})")
    ranking = sorted(({"candidate": name, "value": m.get(primary)} for name, m in metrics.items()),
                     key=lambda r: (r["value"] is None, -(r["value"] or 0.0), r["candidate"]))
    winner = ranking[0]["candidate"]
    got = dict(metrics[winner])

    checks: list[dict[str, Any]] = []
    failures: list[str] = []
    for metric, minimum in thresholds.items():
        value = got.get(metric)
        champ = champion.metrics.get(metric) if champion else None
        ok_min = value is not None and value >= minimum
        ok_champ = champ is None or (value is not None and value >= champ - delta)
        checks.append({"metric": metric, "value": value, "threshold": minimum, "champion": champ,
                       "passes_threshold": ok_min, "passes_champion": ok_champ,
                       "passed": ok_min and ok_champ})
        if value is None:
            failures.append(f"{metric} is missing from metrics/{winner}.json")
            continue
        if not ok_min:
            failures.append(f"{metric} = {value:.4f} is below the minimum {minimum:.4f}")
        if not ok_champ:
            failures.append(f"{metric} = {value:.4f} trails champion v{champion.version} "  # type: ignore[union-attr]
                            f"({champ:.4f}) by more than {delta:.4f}")
    for group in groups:
        for metric, floor in floors.items():
            key = f"{group}.{metric}"
            value = got.get(key)
            ok = value is not None and value >= floor
            checks.append({"metric": key, "value": value, "threshold": floor, "champion": None,
                           "group_floor": True, "passes_threshold": ok, "passes_champion": True,
                           "passed": ok})
            if value is None:
                failures.append(f"{key} is missing from metrics/{winner}.json (no {group} photo in the test "
                                "split? the group floor cannot be checked)")
            elif not ok:
                failures.append(f"{key} = {value:.4f} is below the group floor {floor:.4f}")
    passed = not failures
    if passed:
        versus = f" and is not worse than champion v{champion.version}" if champion else " (no champion yet)"
        reason = f"{winner} passes every threshold{versus}"
    else:
        reason = f"{winner} refused: " + "; ".join(failures)
    return Decision(passed=passed, winner=winner, primary_metric=primary, ranking=ranking, checks=checks,
                    reason=reason, metrics=got, max_regression=delta,
                    champion=None if champion is None else {"version": champion.version,
                                                            "candidate": champion.candidate,
                                                            "metrics": champion.metrics})


def write_decision(decision: Decision, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(decision.to_dict(), indent=2) + "\n")
    return path


def read_decision(path: Path) -> dict[str, Any]:
    """A decision JSON written by `select`; missing or malformed files raise with the path."""
    path = Path(path)
    data = read_json(path, f"{path}: gate decision not found (run `fashionrec select` first)")
    for key in ("passed", "winner", "metrics"):
        if key not in data:
            raise DataError(f"{path}: field '{key}' is missing")
    return data


# --- the fair gate (scheduled retraining) -----------------------------------------------------------------
# Kept apart from `decide` on purpose: the champion's figures here were re-scored in the same run, on the
# same test split and inventory as the challengers, so "better by min_improvement" is a fair comparison.


def check_min_improvement(params: Mapping[str, Any]) -> float:
    """`select.min_improvement`: how much a challenger must beat the re-scored champion by (>= 0)."""
    gain = params.get("min_improvement", 0.0)
    if isinstance(gain, bool) or not isinstance(gain, int | float) or math.isnan(gain) or gain < 0:
        raise FashionrecError(f"params select.min_improvement: must be a number >= 0, got {gain!r}")
    return float(gain)


def decide_fair(metrics: Mapping[str, Mapping[str, float]], params: Mapping[str, Any],
                champion: Champion | None) -> Decision:
    """`decide` against the champion re-scored in this run, plus one rule: the winner must beat it by
    `select.min_improvement` on the primary metric. A refusal reads "no change: ..."."""
    decision = decide(metrics, params, champion)
    if champion is None:
        return decision
    gain = check_min_improvement(params)
    primary = decision.primary_metric
    value, champ = decision.metrics.get(primary), champion.metrics.get(primary)
    if champ is None:
        raise DataError(f"champion v{champion.version}: its re-score has no '{primary}' "
                        "(select.primary_metric)")
    ok = value is not None and value >= champ + gain - 1e-12
    decision.checks.append({"metric": primary, "rule": "min_improvement", "value": value,
                            "threshold": champ + gain, "champion": champ, "passes_threshold": ok,
                            "passes_champion": ok, "passed": ok})
    if decision.champion is not None:
        decision.champion["rescored"] = True
    if not ok:
        decision.passed = False
        why = (f"{decision.winner} {primary} = {value:.4f} does not beat champion v{champion.version} "
               f"re-scored on this run's test split ({champ:.4f}) by select.min_improvement {gain:.4f}")
        rest = decision.reason.split(" refused: ", 1)[1] if " refused: " in decision.reason else ""
        decision.reason = f"no change: {why}" + (f"; {rest}" if rest else "")
    else:
        decision.reason += (f"; beats champion v{champion.version} re-scored on this run's test split by "
                            f"{value - champ:.4f} >= {gain:.4f}")
    return decision
