"""What a Kubeflow component needs around its one library call: params and folders from KFP inputs, and
pages the KFP UI can show.

A component receives params.yaml's sections as pipeline parameters and its data as artifacts (each a
path). Pipeline parameters travel as protobuf Structs, whose numbers are all doubles, so integers come
back as floats (`epochs: 1.0`) and must be restored before the library's typed checks see them. The
library steps read folders of files named by candidate (`metrics/<candidate>.json`, `models/<candidate>/`);
collected artifacts are linked into such a folder. Plots become self-contained HTML (images inlined),
since the KFP UI shows one HTML file per artifact and no relative links.
"""

from __future__ import annotations

import base64
import html
import os
import sys
import tempfile
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from fashionrec.core.config import DEFAULT_SEED, Params, check_tree
from fashionrec.core.errors import FashionrecError
from fashionrec.core.files import read_json

SERVER_SCHEMES = ("http://", "https://", "databricks")


def plain(value: Any) -> Any:
    """A pipeline parameter as params.yaml had it: integral floats back to int, recursively."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, Mapping):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [plain(v) for v in value]
    return value


def without_nulls(value: Any) -> Any:
    """A params section as a pipeline default: KFP cannot compile a null, and the steps read an absent key
    (`.get`) as null."""
    if isinstance(value, Mapping):
        return {str(k): without_nulls(v) for k, v in value.items() if v is not None}
    if isinstance(value, list | tuple):
        return [without_nulls(v) for v in value if v is not None]
    return value


def component_params(sections: Mapping[str, Any], mlflow: Mapping[str, Any] | None = None,
                     seed: int | float = DEFAULT_SEED) -> Params:
    """A `Params` tree for a component: the given sections plus `mlflow` and `seed`, rooted in a fresh
    working folder (paths inside the sections are not used: artifacts give them). The sections are checked
    as `load_params` checks params.yaml: a bad key fails the task at once, in one line.

    A tracking server URI in `mlflow.tracking_uri` is exported as MLFLOW_TRACKING_URI (the variable every
    step honours); a SQLite store stays in the tree with its absolute artifact root (local runs). Empty:
    the environment decides.
    """
    tree = {name: plain(section) for name, section in sections.items()}
    tree["mlflow"] = plain(dict(mlflow or {}))
    tree["seed"] = int(seed)
    uri = str(tree["mlflow"].get("tracking_uri") or "")
    if uri.startswith(SERVER_SCHEMES):
        os.environ["MLFLOW_TRACKING_URI"] = uri
    elif uri:
        os.environ.pop("MLFLOW_TRACKING_URI", None)
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    if "kfp.dsl.executor_main" in sys.modules:   # a task's process (not a test or a compile)
        one_line_errors()
    check_tree(tree)
    return Params(tree=tree, root=Path(tempfile.mkdtemp(prefix="fashionrec-kfp-")))


def one_line_errors() -> None:
    """In a KFP task's process: a `FashionrecError` (a bad params key, missing data) ends the task with
    `error: <message>` on stderr and exit code 1, as the CLI reports it, not with a traceback. Other
    exceptions keep Python's report. The process is the task's alone (KFP's executor runs one component)."""
    previous = sys.excepthook
    if getattr(previous, "fashionrec_one_line", False):
        return

    def report(kind: type[BaseException], exc: BaseException, tb: Any) -> None:
        if isinstance(exc, FashionrecError):
            print(f"error: {exc}", file=sys.stderr)
        else:
            previous(kind, exc, tb)

    report.fashionrec_one_line = True   # type: ignore[attr-defined]
    sys.excepthook = report


def deploy_config(index_params: Mapping[str, Any], serve_params: Mapping[str, Any],
                  mlflow_params: Mapping[str, Any], seed: int | float, bundles_dir: str,
                  validated: str | None = None, summary: str | None = None, device: str = "") -> Any:
    """The `DeployConfig` of a deploy task: params from the pipeline's sections, the bundles in
    `bundles_dir` (in a cluster the claim every deploy task mounts), the inventory from the validated
    manifest. The shards go to `index.shards_dir` when absolute, else under `bundles_dir` (`.shards` by
    default): the parallel tasks and the assemble step must see one folder. `device` (set where the task
    requests a GPU) replaces index.device."""
    from fashionrec.deploy.config import DeployConfig

    p = component_params({"index": index_params, "serve": serve_params}, mlflow_params, seed)
    bundles = Path(bundles_dir)
    shards = str(p.get("index.shards_dir") or ".shards")
    changes: dict[str, Any] = {"bundles": bundles, "catalog": None,
                               "shards_dir": Path(shards) if Path(shards).is_absolute() else bundles / shards}
    if validated is not None:
        changes["manifest"] = Path(validated) / "manifest.parquet"
    if summary is not None:
        changes["summary"] = Path(summary)
    if device:
        changes["device"] = device
    return DeployConfig.from_params(p).with_(**changes)


def linked_folder(entries: Mapping[str, str | Path]) -> Path:
    """A fresh folder whose entries are symlinks `name -> artifact path` (e.g. `simple_cnn.json`,
    `simple_cnn/`), the layout the library steps read."""
    folder = Path(tempfile.mkdtemp(prefix="fashionrec-kfp-links-"))
    for name, target in entries.items():
        (folder / name).symlink_to(Path(target).resolve())
    return folder


def image_page(title: str, images: Iterable[tuple[str, Path]], notes: str = "") -> str:
    """One HTML file showing PNGs inlined as data URIs, each under its caption."""
    parts = [f"<h2>{html.escape(title)}</h2>"]
    if notes:
        parts.append(f"<p>{html.escape(notes)}</p>")
    for caption, path in images:
        if Path(path).is_file():
            data = base64.b64encode(Path(path).read_bytes()).decode("ascii")
            parts.append(f"<figure><img style='max-width:100%' src='data:image/png;base64,{data}'>"
                         f"<figcaption>{html.escape(caption)}</figcaption></figure>")
        else:
            parts.append(f"<p>{html.escape(caption)}: not produced ({html.escape(str(path))})</p>")
    return _page(title, "\n".join(parts))


def data_docs_page(reports: Path) -> str:
    """The validation reports as one HTML file: a table of the checks from `summary.json`, then every
    Great Expectations validation page embedded whole (`srcdoc`), since the site's links cannot work in
    the KFP UI. The browsable site itself is in the `reports` artifact (`data_docs/index.html`)."""
    summary = read_json(reports / "summary.json", f"{reports}: no summary.json (run validate first)")
    rows = "".join(
        f"<tr><td>{html.escape(str(c.get('name')))}</td><td>{'pass' if c.get('success') else 'FAIL'}</td>"
        f"<td>{c.get('unexpected_count', 0)}</td>"
        f"<td>{html.escape(', '.join(map(str, c.get('culprits', [])[:10])))}</td></tr>"
        for c in summary.get("checks", []))
    body = [f"<h2>Data validation: {'passed' if summary.get('success') else 'FAILED'}</h2>",
            f"<p>{summary.get('n_passed')} of {summary.get('n_checked')} images passed; "
            f"{len(summary.get('quarantined', []))} quarantined (on_bad_file: "
            f"{html.escape(str(summary.get('on_bad_file')))}).</p>",
            "<table border='1' cellpadding='4'><tr><th>check</th><th>result</th><th>unexpected</th>"
            f"<th>culprits</th></tr>{rows}</table>"]
    for page in sorted((reports / "data_docs" / "validations").rglob("*.html")):
        body.append(f"<h3>{html.escape(page.relative_to(reports / 'data_docs').as_posix())}</h3>"
                    f"<iframe style='width:100%;height:900px;border:1px solid #ccc' "
                    f"srcdoc=\"{html.escape(page.read_text(), quote=True)}\"></iframe>")
    return _page("Great Expectations Data Docs", "\n".join(body))


def decision_markdown(decision: Mapping[str, Any]) -> str:
    """The gate's decision for the KFP UI: verdict, reason, and each gated metric beside its threshold and
    the champion's value."""
    lines = [f"## Gate {'passed' if decision.get('passed') else 'refused'}: {decision.get('winner')}", "",
             str(decision.get("reason", "")), "",
             "| metric | value | threshold | champion | passed |", "|---|---|---|---|---|"]
    for c in decision.get("checks", []):
        lines.append(f"| {c.get('metric')} | {_num(c.get('value'))} | {_num(c.get('threshold'))} | "
                     f"{_num(c.get('champion'))} | {'yes' if c.get('passed') else 'no'} |")
    champion = decision.get("champion")
    ranking = ", ".join(f"{r.get('candidate')} {_num(r.get('value'))}" for r in decision.get("ranking", []))
    lines += ["", f"Champion: {'v' + str(champion['version']) if champion else 'none'}; "
              f"ranking by {decision.get('primary_metric')}: {ranking}"]
    return "\n".join(lines) + "\n"


def _num(value: Any) -> str:
    return "–" if value is None else f"{value:.4f}" if isinstance(value, float) else str(value)


def _page(title: str, body: str) -> str:
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title></head>"
            f"<body style='font-family:sans-serif'>{body}</body></html>\n")
