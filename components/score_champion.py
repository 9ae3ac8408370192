"""score_champion: the registry's champion re-scored on this run's test split and inventory, so the gate
compares it with the challengers on the same data."""

from kfp import dsl
from kfp.dsl import Artifact, Dataset, Input, Metrics, Output

from components import BASE_IMAGE


@dsl.component(base_image=BASE_IMAGE, install_kfp_package=False)
def score_champion(register_params: dict, evaluate_params: dict, mlflow_params: dict, seed: int,
                   validated: Input[Dataset], subset: Input[Dataset], champion: Output[Metrics],
                   reports: Output[Artifact]) -> str:
    """`champion` holds `{"version", "candidate", "metrics"}` (`{}` when there is no champion yet), the
    figures select's fair gate compares with. Returns the champion's version ("none" without one)."""
    from pathlib import Path

    from fashionrec.core.tracking import configure
    from fashionrec.kfp.io import component_params
    from fashionrec.registry.retrain import rescore_champion

    p = component_params({"register": register_params, "evaluate": evaluate_params}, mlflow_params, seed)
    configure(p)
    result = rescore_champion(str(p.get("register.name") or "fashionrec"), Path(validated.path),
                              Path(champion.path), Path(reports.path), p.section("evaluate"))
    for key, value in result.get("metrics", {}).items():
        champion.log_metric(key, value)
    champion.metadata["version"] = str(result.get("version") or "none")
    return str(result.get("version") or "none")
