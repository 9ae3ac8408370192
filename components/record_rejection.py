"""record_rejection (the gate's Else branch): what `dvc repro` says by stopping at `select`."""

from kfp import dsl
from kfp.dsl import Artifact, Input, Markdown, Metrics, Output

from components import BASE_IMAGE


@dsl.component(base_image=BASE_IMAGE, install_kfp_package=False)
def record_rejection(decision: Input[Artifact], report: Output[Markdown], gate: Output[Metrics]) -> str:
    """The refused winner, each gated metric beside its threshold and the champion's value, as a page and
    metrics in the KFP UI. Nothing else happens: the registry and serving stay as they were (select has
    already logged the decision to MLflow). Returns the reason."""
    from pathlib import Path

    from fashionrec.kfp.io import decision_markdown
    from fashionrec.registry.gate import read_decision

    verdict = read_decision(Path(decision.path))
    Path(report.path).write_text(decision_markdown(verdict))
    gate.log_metric("gate_passed", 0.0)
    for check in verdict.get("checks", []):
        if check.get("value") is not None:
            gate.log_metric(str(check["metric"]), float(check["value"]))
    return str(verdict.get("reason", ""))
