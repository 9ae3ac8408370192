"""check_lineage: has anything changed since the champion? Unchanged data, code and params end the run as
"no change" before any training."""

from typing import NamedTuple

from kfp import dsl

from components import BASE_IMAGE


@dsl.component(base_image=BASE_IMAGE, install_kfp_package=False)
def check_lineage(data_version: str, validate_params: dict, candidates: list, train_params: dict,
                  evaluate_params: dict, select_params: dict, export_params: dict, register_params: dict,
                  mlflow_params: dict, seed: int, run_id: str = dsl.PIPELINE_JOB_ID_PLACEHOLDER
                  ) -> NamedTuple("Lineage", [("changed", bool), ("reason", str), ("lineage", str)]):
    """This run's lineage (data rev, commit and DVC md5, code version, params hash, run id) against the
    champion's lineage tags; `changed` drives the pipeline's training branch."""
    import json
    from collections import namedtuple

    from fashionrec.core.tracking import configure
    from fashionrec.kfp.io import component_params, plain
    from fashionrec.registry.retrain import check_lineage as run
    from fashionrec.registry.retrain import lineage

    p = component_params({"register": register_params}, mlflow_params, seed)
    configure(p)
    shaping = plain({"validate": validate_params, "candidates": candidates, "train": train_params,
                     "evaluate": evaluate_params, "select": select_params, "export": export_params,
                     "seed": seed})
    for candidate in shaping["candidates"]:  # where a candidate runs is not what it learns
        candidate.pop("gpus", None)
    name = str(p.get("register.name") or "fashionrec")
    result = run(name, lineage(json.loads(data_version), shaping, run_id))
    out = namedtuple("Lineage", ["changed", "reason", "lineage"])
    return out(result.changed, result.reason, json.dumps(result.lineage))
