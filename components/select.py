"""select (DVC stage `select`): the gate over every candidate's metrics and the registry's champion."""

from typing import NamedTuple

from kfp import dsl
from kfp.dsl import Artifact, Input, Metrics, Model, Output

from components import BASE_IMAGE


@dsl.component(base_image=BASE_IMAGE, install_kfp_package=False)
def select(select_params: dict, register_params: dict, mlflow_params: dict, seed: int,
           metrics: Input[list[Metrics]], models: Input[list[Model]], decision: Output[Artifact],
           winner_model: Output[Model]) -> NamedTuple("Gate", [("passed", bool), ("winner", str),
                                                                ("reason", str)]):
    """`fashionrec select`: the decision JSON is written either way; a refusal is an output (`passed`
    false, for the pipeline's dsl.If/Else) instead of a failed task. The winner's model folder is passed
    on as `winner_model`, since KFP cannot hand a collected artifact list into a condition branch."""
    import contextlib
    import shutil
    from collections import namedtuple
    from pathlib import Path

    from fashionrec.core.errors import GateFailed
    from fashionrec.core.tracking import configure
    from fashionrec.kfp.io import component_params, linked_folder
    from fashionrec.registry.gate import read_decision
    from fashionrec.registry.steps import select as run

    p = component_params({"select": select_params, "register": register_params}, mlflow_params, seed)
    configure(p)
    names = [str(m.metadata["candidate"]) for m in metrics]
    metrics_dir = linked_folder({f"{name}.json": m.path for name, m in zip(names, metrics, strict=True)})
    with contextlib.suppress(GateFailed):  # the decision file says why; the Else branch records it
        run(metrics_dir, names, Path(decision.path), p.section("select"),
            name=str(p.get("register.name") or "fashionrec"))
    verdict = read_decision(Path(decision.path))
    by_name = {str(m.metadata.get("candidate")): m for m in models}
    shutil.copytree(by_name[verdict["winner"]].path, winner_model.path, dirs_exist_ok=True)
    winner_model.metadata.update({"candidate": verdict["winner"], "gate_passed": bool(verdict["passed"])})
    decision.metadata.update({"passed": bool(verdict["passed"]), "winner": verdict["winner"]})
    gate = namedtuple("Gate", ["passed", "winner", "reason"])
    return gate(bool(verdict["passed"]), str(verdict["winner"]), str(verdict.get("reason", "")))
