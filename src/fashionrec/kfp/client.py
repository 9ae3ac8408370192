"""Running the Kubeflow pipeline: its arguments from params.yaml, a run or a recurring run on a cluster
(through `kfp.Client`), a local run with `kfp.local` (no cluster, no Docker), and compiling the spec.

The pipeline's parameters are params.yaml's sections, so `fashionrec kfp submit -s
train.models.simple_cnn.epochs=5` sends exactly what `fashionrec train` would read. Runs read their data
through DVC from `repo` at `data_rev` (`kfp.data`). Cluster runs take the MLflow server's URI and
credentials from a ConfigMap and a Secret (`kfp.mlflow`, nothing compiled in) and write bundles to the
claim mounted at `kfp.bundles_mount`; local runs use the project's tracking store (or
`MLFLOW_TRACKING_URI`), a local git + DVC repository and `index.bundles`. A schedule is a recurring run of
a named pipeline version uploaded first (`kfp.pipeline_name`), so a recompiled pipeline is a new version,
not a new schedule.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import json
import re
import sys
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from fashionrec.core.config import DEFAULT_SEED, Params, check_tree, set_dotted
from fashionrec.core.errors import KfpError, TrainingError
from fashionrec.core.files import sha256_file
from fashionrec.core.tracking import configure, tracking_uri
from fashionrec.kfp.io import without_nulls
from fashionrec.train.recipe import Recipe, resolve_recipe

SECTIONS = ("validate", "evaluate", "select", "export", "register", "index", "serve")
PIPELINE_MODULE = "pipelines.training_pipeline"


def with_overrides(params: Params, overrides: dict[str, Any]) -> Params:
    """A copy of params with `{dotted.key: value}` applied (the `kfp.local.tiny` block, a source), checked
    as params.yaml is."""
    tree = json.loads(json.dumps(params.tree))
    for key, value in overrides.items():
        set_dotted(tree, key, value)
    check_tree(tree)
    return Params(tree=tree, root=params.root)


def cluster_recipe(train: dict[str, Any], kfp: dict[str, Any] | None = None, local: bool = False) -> Recipe:
    """The recipe a run of the pipeline trains. On a cluster the accelerator pool decides (kfp.gpu.pool:
    the cluster has GPU nodes, so train.recipe auto takes `cuda`), not the compiling machine; a local run
    (kfp.local) trains here, so this machine's CUDA decides."""
    if local:
        from fashionrec.train.recipe import cuda_present

        gpu = cuda_present()
    else:
        gpu = bool(((kfp or {}).get("gpu") or {}).get("pool"))
    try:
        return resolve_recipe(train, cuda_available=gpu)
    except TrainingError as exc:
        raise KfpError(f"params {exc}") from None


def candidates_of(train: dict[str, Any], kfp: dict[str, Any] | None = None,
                  recipe: Recipe | None = None) -> list[dict[str, Any]]:
    """The loop items: `{"name", "gpus", **train.models[candidate]}` for each candidate of `recipe`
    (default: `cluster_recipe`); `gpus` (a string, as the accelerator limit wants it) from
    kfp.accelerators, "0" when absent."""
    kfp = kfp or {}
    names = (recipe or cluster_recipe(train, kfp)).candidates
    models = train.get("models") or {}
    gpus = {str(k): int(v or 0) for k, v in (kfp.get("accelerators") or {}).items()}
    return [{"name": str(n), "gpus": str(gpus.get(str(n), 0)), **models[n]} for n in names]


def train_params_of(train: dict[str, Any], recipe: Recipe) -> dict[str, Any]:
    """The train section every train task gets, less the candidate lists (each task trains its loop item)
    and with `recipe` fixed, so the runs' `recipe` tag is the pipeline's decision, not the pod's guess."""
    rest = {k: v for k, v in train.items() if k not in ("candidates", "models", "recipes")}
    return {**rest, "recipe": recipe.name}


def pipeline_arguments(params: Params, *, local: bool = False, repo: str | None = None,
                       data_rev: str | None = None) -> dict[str, Any]:
    """The pipeline's arguments from params: one dict per section, the candidates, seed, MLflow, the bundles
    folder, and the data (`repo` at `data_rev`, default kfp.data). Cluster (default): no tracking URI (the
    tasks get it from the cluster's ConfigMap), `kfp.bundles_mount`. Local: this machine's tracking URI,
    `index.bundles`, made absolute."""
    kfp = params.section("kfp")
    train = params.section("train")
    args: dict[str, Any] = {f"{name}_params": params.section(name) for name in SECTIONS}
    recipe = cluster_recipe(train, kfp, local=local)
    args["candidates"] = candidates_of(train, kfp, recipe)
    args["train_params"] = train_params_of(train, recipe)
    data = kfp.get("data") or {}
    args["repo"] = str(repo or data.get("repo") or "")
    args["data_rev"] = str(data_rev or data.get("rev") or "main")
    args["product"] = str(params.get("subset.product"))   # the subset a run trains on and serves
    mlflow = params.section("mlflow")
    if local:
        mlflow["tracking_uri"] = tracking_uri(params)
        artifacts = params.path(mlflow.get("artifact_root") or "mlflow/artifacts")
        mlflow["artifact_root"] = str(artifacts.resolve())
        args["bundles_dir"] = str(params.path(args["index_params"]["bundles"]).resolve())
    else:
        mlflow = {k: v for k, v in mlflow.items() if k not in ("tracking_uri", "artifact_root")}
        args["bundles_dir"] = str(kfp["bundles_mount"])
    args["mlflow_params"] = mlflow
    trainer = dict(kfp.get("trainer") or {})
    args["trainer_params"] = {**trainer, "image": trainer.get("image") or kfp.get("image"),
                              "enabled": bool(trainer.get("enabled", True)) and not local,
                              "env": mlflow_env_refs(kfp.get("mlflow") or {})}
    args["seed"] = int(params.get("seed", DEFAULT_SEED))
    return without_nulls(args)


def mlflow_env_refs(spec: dict[str, Any]) -> list[dict[str, Any]]:
    """The tasks' MLflow variables as Kubernetes EnvVar references to the ConfigMap and Secret (kfp.mlflow),
    for pods the pipeline does not create itself (a TrainJob's nodes): names, never values."""
    refs = []
    for kind, ref in (("config_map", "configMapKeyRef"), ("secret", "secretKeyRef")):
        if spec.get(kind):
            refs += [{"name": env, "valueFrom": {ref: {"name": spec[kind], "key": key}}}
                     for key, env in (spec.get(f"{kind}_env") or {}).items()]
    return refs


def project_root() -> Path:
    """The checkout holding pipelines/ and components/ (the package is installed from it, editable)."""
    for root in (Path(__file__).resolve().parents[2], Path.cwd()):
        if (root / "pipelines" / "training_pipeline.py").is_file() and (root / "components").is_dir():
            return root
    raise KfpError("pipelines/training_pipeline.py not found: run from the fashionrec checkout")


def load_pipeline(params: Params | None = None) -> Any:
    """The `training_pipeline` function (components are read from their source files, so from a checkout).

    The pipeline's shape is read from params when it is compiled (kfp.*: resources, GPUs, retries;
    index.shard_size: one deploy task, or the inventory embedded by a `ParallelFor` over shards). With
    `params` (`fashionrec kfp compile -s ...`), the module is run again with them instead of params.yaml."""
    root = project_root()
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))
    if params is None:
        return importlib.import_module(PIPELINE_MODULE).training_pipeline
    path = root / "pipelines" / "training_pipeline.py"
    spec = importlib.util.spec_from_file_location(f"{PIPELINE_MODULE}_with_params", path)
    if spec is None or spec.loader is None:
        raise KfpError(f"{path}: cannot be loaded")
    module = importlib.util.module_from_spec(spec)
    module.PARAMS = params   # read by the module instead of params.yaml
    spec.loader.exec_module(module)
    return module.training_pipeline


def check_image(image: str) -> str:
    """`kfp.image` must be fully qualified (registry host, repository, and a tag or digest): a bare
    `name:tag` resolves to whatever registry each node defaults to."""
    first, _, rest = image.partition("/")
    has_host = bool(rest) and ("." in first or ":" in first or first == "localhost")
    last = image.rsplit("/", 1)[-1]
    if not has_host or not ("@sha256:" in image or ":" in last):
        raise KfpError(f"params kfp.image '{image}': not fully qualified; give registry/repository:tag or "
                       "@sha256:digest (e.g. ghcr.io/ORG/fashionrec-pipeline:0.1.0)")
    return image


LOOP_SUBVAR = re.compile(r"^pipelinechannel--(?P<item>.+-loop-item)-subvar-(?P<field>.+)$")


def resolve_loop_subvars(node: Any) -> int:
    """Point task inputs named after a loop item's field (`...-loop-item-subvar-gpus`, which the KFP 2.17
    compiler emits for a resource set from `item.field` but leaves unresolvable) at the loop item with a
    field selector, the form it uses for `arg=item.field`. Returns how many it fixed."""
    fixed = 0
    if isinstance(node, dict):
        inputs = node.get("inputs")
        params = inputs.get("parameters") if isinstance(inputs, dict) else None
        for name, spec in (params or {}).items():
            match = LOOP_SUBVAR.match(name)
            if match and isinstance(spec, dict) and spec.get("componentInputParameter") == name:
                spec["componentInputParameter"] = f"pipelinechannel--{match['item']}"
                spec["parameterExpressionSelector"] = f'parseJson(string_value)["{match["field"]}"]'
                fixed += 1
        fixed += sum(resolve_loop_subvars(v) for v in node.values())
    elif isinstance(node, list):
        fixed += sum(resolve_loop_subvars(v) for v in node)
    return fixed


def compile_pipeline(out: Path, params: Params | None = None) -> Path:
    """Write the pipeline spec (YAML) to out, shaped by `params` (default params.yaml; the task image
    checked first; loop-item resources resolved, see `resolve_loop_subvars`)."""
    import yaml
    from kfp import compiler

    if params is not None:
        check_image(str(params.get("kfp.image") or ""))
    out.parent.mkdir(parents=True, exist_ok=True)
    compiler.Compiler().compile(load_pipeline(params), str(out))
    docs = list(yaml.safe_load_all(out.read_text()))
    if resolve_loop_subvars(docs[0]):
        out.write_text(yaml.safe_dump_all(docs, sort_keys=False))
    return out


# --- local runs ------------------------------------------------------------------------------------------


@dataclass
class LocalRun:
    run_dir: str
    repo: str
    data_rev: str
    tasks: list[str]            # tasks this run executed (cache hits write no folder)
    gate: dict[str, Any] | None  # select's outputs: passed, winner, reason
    arguments: dict[str, Any]
    lineage: dict[str, Any] | None = None   # check_lineage's outputs: changed, reason, lineage
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if k != "arguments"}


def local_params(params: Params, source: str | None = None) -> Params:
    """params for a local run: `tiny` generates the test dataset and applies `kfp.local.tiny`; a folder
    replaces ingest.source (the data of the local repository built by `local_repo`)."""
    loc = params.section("kfp")["local"]
    source = str(source or loc.get("source") or "tiny")
    if source != "tiny":
        return with_overrides(params, {"ingest.source": str(Path(source).expanduser().resolve())})
    from fashionrec.data.synthetic import make_tiny_dataset

    folder = params.path(loc.get("tiny_dir") or ".cache/kfp-local/tiny") / "clothing-dataset"
    tiny = make_tiny_dataset(folder)
    return with_overrides(params, {**(loc.get("tiny") or {}), "ingest.source": str(tiny.root),
                                   "subset.subsets.benchmark.classes": list(tiny.classes)})


def local_repo(params: Params, source: str | None = None) -> Path:
    """The git + DVC repository local runs read (kfp.local.repo): built once from the source (the tiny
    dataset by default) with a local DVC remote beside it, data version 1 committed."""
    from fashionrec.data.versions import init_project

    p = local_params(params, source)
    repo = p.path(p.get("kfp.local.repo") or ".cache/kfp-local/repo").resolve()
    if not (repo / ".git").is_dir():
        init_project(repo, project_root(), p.tree, repo.parent / f"{repo.name}-dvc-remote")
    return repo


def run_local(params: Params, source: str | None = None, pipeline_root: Path | None = None,
              repo: Path | None = None, data_rev: str | None = None) -> LocalRun:
    """Run the whole pipeline on this machine with kfp.local's SubprocessRunner (each task a subprocess
    of this Python; resources, GPU and node settings are ignored with a warning). The data comes through
    DVC from `repo` (default: `local_repo`) at `data_rev` (default: kfp.data.rev)."""
    import time

    from kfp import components, local

    started = time.perf_counter()
    p = local_params(params, source) if repo is None else params
    loc = p.section("kfp")["local"]
    repo = Path(repo) if repo is not None else local_repo(params, source)
    args = pipeline_arguments(p, local=True, repo=str(Path(repo).resolve()), data_rev=data_rev)
    root = (pipeline_root or p.path(loc.get("pipeline_root") or ".cache/kfp-local/runs")).resolve()
    root.mkdir(parents=True, exist_ok=True)
    configure(p)  # create store and experiment once: parallel tasks would race to migrate a new SQLite file
    spec = compile_pipeline(root / ".spec" / "training_pipeline.yaml", p)  # what a cluster would get
    before = set(root.iterdir())
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(root),
               enable_caching=bool(loc.get("caching", True)), cache_root=str(root / ".kfp_cache"))
    components.load_component_from_file(str(spec))(**args)
    new = sorted((d for d in set(root.iterdir()) - before if d.is_dir() and not d.name.startswith(".")),
                 key=lambda d: d.stat().st_mtime)
    if not new:
        raise KfpError(f"{root}: the local run wrote no run folder")
    run_dir = new[-1]
    tasks = sorted({d.name for d in run_dir.rglob("*") if (d / "executor_output.json").is_file()})
    return LocalRun(run_dir=str(run_dir), repo=args["repo"], data_rev=args["data_rev"], tasks=tasks,
                    gate=outputs(run_dir, "select"), lineage=outputs(run_dir, "check-lineage"),
                    arguments=args,
                    seconds=round(time.perf_counter() - started, 1))


def outputs(run_dir: Path, task: str) -> dict[str, Any] | None:
    """A task's output parameters in a local run folder (None when it did not run)."""
    path = run_dir / task / "executor_output.json"
    return json.loads(path.read_text()).get("parameterValues") if path.is_file() else None


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


def pipeline_version(c: Any, name: str, path: Path, description: str = "") -> tuple[str, str, bool]:
    """(pipeline id, version id, uploaded): the named pipeline (created on first use) and its version for
    this compiled spec, named `<name>-<sha256 of the spec, 12 hex>`: the same spec reuses its version, a
    recompiled one becomes a new version of the same pipeline."""
    version_name = f"{name}-{sha256_file(path)[:12]}"
    pipeline_id = c.get_pipeline_id(name)
    if pipeline_id is None:
        pipeline_id = c.upload_pipeline(str(path), pipeline_name=name, description=description).pipeline_id
    wanted = json.dumps({"predicates": [{"operation": "EQUALS", "key": "display_name",
                                         "stringValue": version_name}]})
    found = c.list_pipeline_versions(pipeline_id, filter=wanted).pipeline_versions or []
    if found:
        return pipeline_id, found[0].pipeline_version_id, False
    version = c.upload_pipeline_version(str(path), version_name, pipeline_id=pipeline_id,
                                        description=description)
    return pipeline_id, version.pipeline_version_id, True


def schedule(params: Params, host: str | None = None, cron: str | None = None, package: Path | None = None,
             name: str | None = None, experiment: str | None = None,
             token: str | None = None) -> dict[str, Any]:
    """Upload the compiled pipeline as a version of the named pipeline (kfp.pipeline_name), then create a
    recurring run (cron, seconds first) of that version with params' arguments."""
    kfp = params.section("kfp")
    plan = kfp.get("schedule") or {}
    cron = str(cron or plan.get("cron") or "")
    if len(cron.split()) not in (6, 7):
        raise KfpError(f"cron '{cron}': KFP needs 6 fields, seconds first (e.g. '0 0 3 * * 1')")
    path = package_path(params, package)
    c = client(host or kfp.get("host"), kfp.get("namespace"), token)
    with contextlib.redirect_stdout(sys.stderr):
        pipeline_id, version_id, uploaded = pipeline_version(c, str(kfp["pipeline_name"]), path,
                                                             "fashionrec scheduled retraining")
        exp = c.create_experiment(experiment or kfp.get("experiment"), namespace=kfp.get("namespace"))
        job = c.create_recurring_run(
            experiment_id=exp.experiment_id, job_name=name or plan.get("name") or kfp["pipeline_name"],
            cron_expression=cron, max_concurrency=int(plan.get("max_concurrency", 1)),
            pipeline_id=pipeline_id, version_id=version_id, params=pipeline_arguments(params),
            no_catchup=True)
    return {"recurring_run_id": job.recurring_run_id, "experiment_id": exp.experiment_id, "cron": cron,
            "pipeline_id": pipeline_id, "pipeline_version_id": version_id, "version_uploaded": uploaded,
            "url": f"{c._get_url_prefix()}/#/recurringruns/details/{job.recurring_run_id}"}
