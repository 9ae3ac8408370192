"""Running the Kubeflow pipeline: its arguments from params.yaml, a run or a recurring run on a cluster
(through `kfp.Client`), a local run with `kfp.local` (no cluster, no Docker), and compiling the spec.

The pipeline's parameters are params.yaml's sections, so `fashionrec kfp submit -s
train.models.simple_cnn.epochs=5` sends exactly what `fashionrec train` would read. Cluster runs talk to
the MLflow server in `kfp.mlflow_tracking_uri` and write bundles to the claim mounted at
`kfp.bundles_mount`; local runs use the project's tracking store (or `MLFLOW_TRACKING_URI`) and
`index.bundles`.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import sys
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from fashionrec.core.config import DEFAULT_SEED, Params, set_dotted
from fashionrec.core.errors import KfpError
from fashionrec.core.tracking import configure, tracking_uri
from fashionrec.kfp.io import without_nulls

SECTIONS = ("ingest", "subset", "validate", "evaluate", "select", "export", "register", "index", "serve")
PIPELINE_MODULE = "pipelines.training_pipeline"


def with_overrides(params: Params, overrides: dict[str, Any]) -> Params:
    """A copy of params with `{dotted.key: value}` applied (the `kfp.local.tiny` block, a source)."""
    tree = json.loads(json.dumps(params.tree))
    for key, value in overrides.items():
        set_dotted(tree, key, value)
    return Params(tree=tree, root=params.root)


def candidates_of(train: dict[str, Any]) -> list[dict[str, Any]]:
    """The loop items: `{"name": candidate, **train.models[candidate]}` for each of train.candidates."""
    names = train.get("candidates") or []
    models = train.get("models") or {}
    if not isinstance(names, list) or not names:
        raise KfpError(f"params train.candidates: expected a non-empty list of names, got {names!r}")
    missing = [n for n in names if n not in models]
    if missing:
        raise KfpError(f"params train.candidates: {missing} have no block in train.models ({sorted(models)})")
    return [{"name": str(n), **models[n]} for n in names]


def pipeline_arguments(params: Params, *, local: bool = False) -> dict[str, Any]:
    """The pipeline's arguments from params: one dict per section, the candidates, seed, MLflow and the
    bundles folder. Cluster (default): `kfp.source`, `kfp.mlflow_tracking_uri`, `kfp.bundles_mount`.
    Local: `ingest.source`, this machine's tracking URI, `index.bundles`, all made absolute."""
    kfp = params.section("kfp")
    train = params.section("train")
    args: dict[str, Any] = {f"{name}_params": params.section(name) for name in SECTIONS}
    args["candidates"] = candidates_of(train)
    args["train_params"] = {k: v for k, v in train.items() if k not in ("candidates", "models")}
    mlflow = params.section("mlflow")
    if local:
        source = str(params.get("ingest.source") or "auto")
        args["source"] = source if source == "auto" else str(params.path(source).resolve())
        mlflow["tracking_uri"] = tracking_uri(params)
        artifacts = params.path(mlflow.get("artifact_root") or "mlflow/artifacts")
        mlflow["artifact_root"] = str(artifacts.resolve())
        args["bundles_dir"] = str(params.path(args["index_params"]["bundles"]).resolve())
    else:
        args["source"] = str(kfp["source"])
        mlflow["tracking_uri"] = str(kfp["mlflow_tracking_uri"])
        args["bundles_dir"] = str(kfp["bundles_mount"])
    args["mlflow_params"] = mlflow
    args["seed"] = int(params.get("seed", DEFAULT_SEED))
    return without_nulls(args)


def project_root() -> Path:
    """The checkout holding pipelines/ and components/ (the package is installed from it, editable)."""
    for root in (Path(__file__).resolve().parents[2], Path.cwd()):
        if (root / "pipelines" / "training_pipeline.py").is_file() and (root / "components").is_dir():
            return root
    raise KfpError("pipelines/training_pipeline.py not found: run from the fashionrec checkout")


def load_pipeline() -> Any:
    """The `training_pipeline` function (components are read from their source files, so from a checkout)."""
    root = str(project_root())
    if root not in sys.path:
        sys.path.insert(0, root)
    return importlib.import_module(PIPELINE_MODULE).training_pipeline


def compile_pipeline(out: Path) -> Path:
    """Write the pipeline spec (YAML) to out."""
    from kfp import compiler

    out.parent.mkdir(parents=True, exist_ok=True)
    compiler.Compiler().compile(load_pipeline(), str(out))
    return out


# --- local runs ------------------------------------------------------------------------------------------


@dataclass
class LocalRun:
    run_dir: str
    source: str
    tasks: list[str]            # tasks this run executed (cache hits write no folder)
    gate: dict[str, Any] | None  # select's outputs: passed, winner, reason
    arguments: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if k != "arguments"}


def local_params(params: Params, source: str | None = None) -> Params:
    """params for a local run: `tiny` generates the test dataset and applies `kfp.local.tiny`; a folder
    replaces ingest.source."""
    loc = params.section("kfp")["local"]
    source = str(source or loc.get("source") or "tiny")
    if source != "tiny":
        return with_overrides(params, {"ingest.source": str(Path(source).expanduser().resolve())})
    from fashionrec.data.synthetic import make_tiny_dataset

    folder = params.path(loc.get("tiny_dir") or ".cache/kfp-local/tiny") / "clothing-dataset"
    tiny = make_tiny_dataset(folder)
    return with_overrides(params, {**(loc.get("tiny") or {}), "ingest.source": str(tiny.root),
                                   "subset.subsets.benchmark.classes": list(tiny.classes)})


def run_local(params: Params, source: str | None = None, pipeline_root: Path | None = None) -> LocalRun:
    """Run the whole pipeline on this machine with kfp.local's SubprocessRunner (each task a subprocess
    of this Python; resources, GPU and node settings are ignored with a warning)."""
    from kfp import local

    p = local_params(params, source)
    loc = p.section("kfp")["local"]
    args = pipeline_arguments(p, local=True)
    root = (pipeline_root or p.path(loc.get("pipeline_root") or ".cache/kfp-local/runs")).resolve()
    root.mkdir(parents=True, exist_ok=True)
    configure(p)  # create store and experiment once: parallel tasks would race to migrate a new SQLite file
    before = set(root.iterdir())
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(root),
               enable_caching=bool(loc.get("caching", True)), cache_root=str(root / ".kfp_cache"))
    load_pipeline()(**args)
    new = sorted((d for d in set(root.iterdir()) - before if d.is_dir() and not d.name.startswith(".")),
                 key=lambda d: d.stat().st_mtime)
    if not new:
        raise KfpError(f"{root}: the local run wrote no run folder")
    run_dir = new[-1]
    tasks = sorted({d.name for d in run_dir.rglob("*") if (d / "executor_output.json").is_file()})
    gate_file = run_dir / "select" / "executor_output.json"
    gate = json.loads(gate_file.read_text()).get("parameterValues") if gate_file.is_file() else None
    return LocalRun(run_dir=str(run_dir), source=args["source"], tasks=tasks, gate=gate, arguments=args)


# --- cluster ----------------------------------------------------------------------------------------------


def client(host: str | None, namespace: str | None = None, token: str | None = None) -> Any:
    """A kfp.Client for host (single-user without a namespace; multi-user: your profile's namespace)."""
    import kfp

    if not host:
        raise KfpError("no KFP host: pass --host URL or set kfp.host in params.yaml")
    with contextlib.redirect_stdout(sys.stderr), warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # "only works with KFP v2.0.0-beta.2 and later"
        return kfp.Client(host=host, namespace=namespace or "kubeflow", existing_token=token)


def package_path(params: Params, package: Path | None = None) -> Path:
    path = package or params.path(params.section("kfp")["package"])
    if not path.is_file():
        raise KfpError(f"{path}: compiled pipeline not found (run `make pipeline-compile`)")
    return path


def submit(params: Params, host: str | None = None, package: Path | None = None, run_name: str | None = None,
           experiment: str | None = None, token: str | None = None) -> dict[str, Any]:
    """Create a run of the compiled pipeline with params' arguments; returns its id and UI link."""
    kfp = params.section("kfp")
    path = package_path(params, package)
    c = client(host or kfp.get("host"), kfp.get("namespace"), token)
    with contextlib.redirect_stdout(sys.stderr):  # kfp prints links; stdout stays the JSON result
        result = c.create_run_from_pipeline_package(
            str(path), arguments=pipeline_arguments(params), run_name=run_name,
            experiment_name=experiment or kfp.get("experiment"), namespace=kfp.get("namespace"))
    return {"run_id": result.run_id, "url": f"{c._get_url_prefix()}/#/runs/details/{result.run_id}"}


def schedule(params: Params, host: str | None = None, cron: str | None = None, package: Path | None = None,
             name: str | None = None, experiment: str | None = None,
             token: str | None = None) -> dict[str, Any]:
    """Create a recurring run (cron, seconds first) of the compiled pipeline with params' arguments."""
    kfp = params.section("kfp")
    plan = kfp.get("schedule") or {}
    cron = str(cron or plan.get("cron") or "")
    if len(cron.split()) not in (6, 7):
        raise KfpError(f"cron '{cron}': KFP needs 6 fields, seconds first (e.g. '0 0 3 * * 1')")
    path = package_path(params, package)
    c = client(host or kfp.get("host"), kfp.get("namespace"), token)
    with contextlib.redirect_stdout(sys.stderr):
        exp = c.create_experiment(experiment or kfp.get("experiment"), namespace=kfp.get("namespace"))
        job = c.create_recurring_run(
            experiment_id=exp.experiment_id, job_name=name or plan.get("name") or kfp["pipeline_name"],
            cron_expression=cron, max_concurrency=int(plan.get("max_concurrency", 1)),
            pipeline_package_path=str(path), params=pipeline_arguments(params), no_catchup=True)
    return {"recurring_run_id": job.recurring_run_id, "experiment_id": exp.experiment_id, "cron": cron,
            "url": f"{c._get_url_prefix()}/#/recurringruns/details/{job.recurring_run_id}"}
