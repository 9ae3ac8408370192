"""The `fashionrec` command: one subcommand per pipeline step.

Each command reads params.yaml, applies `--set key.path=value` overrides and its own flags (which are
shorthands for overrides), resolves paths and calls one library function. Nothing else lives here.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from fashionrec.core.config import DEFAULT_SEED, Params, load_params
from fashionrec.core.errors import FashionrecError, ParamsError

app = typer.Typer(no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False,
                  help="fashionrec pipeline steps (see README.md).")

ParamsOpt = Annotated[Path, typer.Option("--params", "-p",
                                         help="Params file (paths inside are relative to it).")]
SetOpt = Annotated[list[str] | None,
                  typer.Option("--set", "-s", help="Override: key.path=value (repeatable).")]


def load(params_file: Path, sets: list[str] | None, **flags: Any) -> Params:
    """Params with overrides, checked: `--set` first, then non-None flags given as {'stage__key': value}
    (set as they are, not through YAML text: a path keeps every character)."""
    values = {key.replace("__", "."): str(v) if isinstance(v, Path) else v
              for key, v in flags.items() if v is not None}
    return load_params(params_file, sets or [], values)


def report(result: Any) -> None:
    """Print a step's result (a dict or dataclass with `to_dict`) as indented JSON."""
    data = result.to_dict() if hasattr(result, "to_dict") else result
    typer.echo(json.dumps(data, indent=2, default=str))


def main() -> None:
    """Entry point: library errors become one clear line on stderr and exit code 1."""
    try:
        app()
    except (FashionrecError, ParamsError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise SystemExit(1) from None


# --- data stages -------------------------------------------------------------------------------------


@app.command()
def ingest(params: ParamsOpt = Path("params.yaml"), sets: SetOpt = None,
           source: Annotated[str | None, typer.Option(help="Dataset folder, or 'auto'.")] = None,
           out: Annotated[Path | None, typer.Option(help="Output folder for the manifest.")] = None) -> None:
    """Build the Parquet manifest of the source dataset (one row per image)."""
    from fashionrec.data.ingest import ingest as run

    p = load(params, sets, ingest__source=source, ingest__out=out)
    s = p.section("ingest")
    src = s["source"] if s["source"] == "auto" else p.path(s["source"])
    report(run(src, p.path(s["out"]), s, shared_path=p.path(s["shared_path"]),
               download_dir=p.path(s["download_dir"]),
               additions=p.path(s["additions"]) if s.get("additions") else None))


SubsetArg = Annotated[str | None, typer.Argument(
    help="Subset name (an entry of subset.subsets, e.g. catalog); omitted: every subset.")]


def subset_list(p: Params, name: str | None) -> list[str]:
    from fashionrec.data.subset import subset_names

    names = subset_names(p.section("subset"))
    if name is not None and name not in names:
        raise ParamsError(f"subset.subsets: no subset named '{name}' (defined: {names})")
    return [name] if name else names


@app.command()
def subset(name: SubsetArg = None, params: ParamsOpt = Path("params.yaml"), sets: SetOpt = None,
           out: Annotated[Path | None, typer.Option(help="Folder of the subsets.")] = None) -> None:
    """Select classes, drop unusable labels, cap per class and split into train/validation/test."""
    from fashionrec.data.subset import subset as run
    from fashionrec.data.subset import subset_params

    p = load(params, sets, subset__out=out)
    s = p.section("subset")
    for one in subset_list(p, name):
        one_params = subset_params(s, one)
        if one_params.get("label_review"):
            one_params["label_review"] = str(p.path(one_params["label_review"]))
        report(run(p.path(s["manifest"]), p.path(s["out"]) / one, one_params))


@app.command()
def validate(name: SubsetArg = None, params: ParamsOpt = Path("params.yaml"), sets: SetOpt = None,
             on_bad_file: Annotated[str | None, typer.Option(help="fail | quarantine")] = None) -> None:
    """Run the Great Expectations suite over a subset; write Data Docs and a JSON summary."""
    from fashionrec.data.validate import validate as run

    p = load(params, sets, validate__on_bad_file=on_bad_file)
    s = p.section("validate")
    for one in subset_list(p, name):
        report(run(p.path(s["subset"]) / one, p.path(s["out"]) / one, p.path(s["reports"]) / one, s))


@app.command()
def describe(name: SubsetArg = None, params: ParamsOpt = Path("params.yaml"), sets: SetOpt = None) -> None:
    """Plot label distributions, the kids/adults balance, image sizes and a contact sheet per class."""
    from fashionrec.data.describe import describe as run

    p = load(params, sets)
    s = p.section("describe")
    for one in subset_list(p, name):
        report(run(p.path(s["validated"]) / one / "manifest.parquet", p.path(s["out"]) / one, s))


@app.command()
def synth(n: Annotated[int, typer.Argument(help="Number of photos to write.")],
          out: Annotated[Path, typer.Argument(help="Folder for images/, images.csv, top10-splits.csv.")],
          params: ParamsOpt = Path("params.yaml"), sets: SetOpt = None,
          size: Annotated[int | None, typer.Option(help="Photo side in pixels (synth.size).")] = None,
          seed: Annotated[int | None, typer.Option(help="Generator seed (synth.seed).")] = None,
          jobs: Annotated[int | None, typer.Option(help="Worker processes (synth.jobs).")] = None) -> None:
    """Write N synthetic labelled photos in the upstream layout (for running the data steps at scale)."""
    from fashionrec.data.synthetic import write_synthetic

    p = load(params, sets, synth__size=size, synth__seed=seed, synth__jobs=jobs)
    s = p.section("synth")
    report(write_synthetic(out, n, seed=int(s["seed"]), size=int(s["size"]), per_sender=int(s["per_sender"]),
                           kids_every=int(s["kids_every"]), test_every=int(s["test_every"]),
                           jobs=int(s["jobs"])))


# --- training and evaluation stages ------------------------------------------------------------------


@app.command()
def recipe(params: ParamsOpt = Path("params.yaml"), sets: SetOpt = None,
           check: Annotated[bool, typer.Option(
               help="DVC's `recipe` stage: fail (after rewriting it) when the file was stale.")] = False,
           out: Annotated[Path | None, typer.Option(
               help="Also write OUT/<candidate>.json, {candidate, recipe}: the `recipe` stage's output, "
                    "one train@ dependency each.")] = None
           ) -> None:
    """Resolve the candidates this machine trains (train.recipe, train.recipes, CUDA) and record them in
    models/recipe.yaml, the list dvc.yaml's train@/evaluate@ stages iterate over (`make repro` runs this
    first). With --check a stale file is rewritten and the command fails: DVC parsed the old list, so
    `dvc repro` must run again."""
    from fashionrec.train.recipe import RECIPE_FILE, cuda_present, resolve_recipe, write_recipe_file

    p = load(params, sets)
    resolved = resolve_recipe(p.section("train"), cuda_present())
    path = p.path(RECIPE_FILE)
    changed = write_recipe_file(path, resolved)
    if check and changed:
        raise FashionrecError(f"{RECIPE_FILE} was stale: this machine trains the {resolved.name} recipe "
                              f"({resolved.reason}): {list(resolved.candidates)}; rewritten, run `dvc repro` "
                              "again")
    if out is not None:   # one file per candidate: adding one to the list retrains only that one
        out.mkdir(parents=True, exist_ok=True)
        for name in resolved.candidates:
            (out / f"{name}.json").write_text(json.dumps({"candidate": name, "recipe": resolved.name}) + "\n")
    report({**resolved.to_dict(), "file": str(path), "changed": changed})


@app.command()
def train(candidate: Annotated[str, typer.Argument(help="Candidate name (a block of train.models).")],
          params: ParamsOpt = Path("params.yaml"), sets: SetOpt = None,
          resume: Annotated[bool, typer.Option(help="Continue from the last checkpoint.")] = False,
          epochs: Annotated[int | None, typer.Option(help="Epochs (overrides the candidate's).")] = None,
          lr: Annotated[float | None, typer.Option(help="Peak learning rate.")] = None,
          batch_size: Annotated[int | None, typer.Option(help="Batch size.")] = None,
          device: Annotated[str | None, typer.Option(help="auto | cpu | cuda")] = None,
          nproc: Annotated[int | None, typer.Option(
              help="DDP processes on this node (train.distributed.procs_per_node).")] = None,
          nnodes: Annotated[int | None, typer.Option(
              help="Nodes of the DDP job (train.distributed.nodes).")] = None) -> None:
    """Train one candidate and write models/<candidate>/ (model, card, history, loss curve, MLflow run).

    With more than one process (train.distributed, --nproc/--nnodes, or the cluster's PET_* variables)
    this command launches the ranks (torchrun's launcher) and each rank runs this same command."""
    import os
    import sys

    from fashionrec.train.distributed import DistributedConfig, Rank, launch
    from fashionrec.train.loop import check_world
    from fashionrec.train.loop import train as run
    from fashionrec.train.recipe import check_member, cuda_present, resolve_recipe

    m = f"train__models__{candidate}__"
    p = load(params, sets, **{m + "epochs": epochs, m + "lr": lr, m + "batch_size": batch_size},
             train__device=device, train__distributed__procs_per_node=nproc, train__distributed__nodes=nnodes)
    s = p.section("train")
    if candidate in (s.get("models") or {}):   # (an unknown name: the loop says so, listing the known)
        check_member(candidate, resolve_recipe(s, cuda_present()))
    rank = Rank.from_env(os.environ)
    shape = DistributedConfig.from_section(s, os.environ)
    if not rank.distributed and shape.world_size > 1:
        check_world(candidate, s, shape.world_size)
        launch(sys.argv[1:], shape, os.environ)
        return
    result = run(candidate, s, manifest=p.path(s["manifest"]), out_dir=p.path(s["models_dir"]) / candidate,
                 cache_dir=p.path(s["cache_dir"]), checkpoint_dir=p.path(s["checkpoints_dir"]) / candidate,
                 tracking_params=p, seed=int(p.get("seed", DEFAULT_SEED)), resume=resume)
    if rank.main:
        report(result)



@app.command()
def evaluate(candidate: Annotated[str, typer.Argument(help="Candidate name: evaluates models/<candidate>/.")],
             params: ParamsOpt = Path("params.yaml"), sets: SetOpt = None,
             backend: Annotated[str | None, typer.Option(help="auto | onnx | torch")] = None,
             index: Annotated[str | None, typer.Option(help="Index kind: balltree | brute")] = None,
             mlflow: Annotated[bool | None, typer.Option("--mlflow/--no-mlflow",
                                                         help="Log into the training run.")] = None) -> None:
    """Evaluate a trained candidate on the test split (and the benchmark's): labels, retrieval, groups."""
    from fashionrec.evaluate.evaluate import evaluate as run

    p = load(params, sets, evaluate__backend=backend, evaluate__index__kind=index, evaluate__mlflow=mlflow)
    s = p.section("evaluate")
    report(run(p.path(s["models_dir"]) / candidate, p.path(s["data"]),
               p.path(s["metrics_dir"]) / f"{candidate}.json", p.path(s["reports"]) / candidate, s,
               benchmark_dir=p.path(s["benchmark"]) if s.get("benchmark") else None))



@app.command("label-review")
def label_review(params: ParamsOpt = Path("params.yaml"), sets: SetOpt = None,
                 features: Annotated[str | None, typer.Option(
                     help="backbone (frozen ImageNet) | trained (models/<candidate>)")] = None,
                 out: Annotated[Path | None, typer.Option(help="Folder of the review sheet.")] = None
                 ) -> None:
    """Find likely mislabelled training photos (confident learning): a review sheet and contact sheet."""
    from fashionrec.train.label_issues import label_review as run

    p = load(params, sets, label_review__features=features, label_review__out=out)
    s, t = p.section("label_review"), p.section("train")
    report(run(p.path(t["manifest"]), p.path(s["out"]), s, t, cache_dir=p.path(t["cache_dir"]),
               models_dir=p.path(t["models_dir"]), seed=int(p.get("seed", DEFAULT_SEED))))


# --- gate, export and registry -----------------------------------------------------------------------

ByOpt = Annotated[str | None, typer.Option(help="Who makes the change (default: your user name).")]
ReasonOpt = Annotated[str, typer.Option(help="Why: kept in the champion history.")]


def registry_name(p: Params) -> str:
    return str(p.get("register.name") or "fashionrec")


def user(by: str | None) -> str:
    import getpass

    return by or getpass.getuser()


@app.command()
def select(params: ParamsOpt = Path("params.yaml"), sets: SetOpt = None,
           out: Annotated[Path | None, typer.Option(help="Decision JSON (written even on failure).")] = None
           ) -> None:
    """Gate: pick the best candidate by the primary metric, check thresholds and the champion."""
    from fashionrec.core.tracking import configure
    from fashionrec.registry.steps import select as run
    from fashionrec.train.recipe import cuda_present, resolve_recipe

    p = load(params, sets, select__out=out)
    configure(p)
    s = p.section("select")
    candidates = list(resolve_recipe(p.section("train"), cuda_present()).candidates)   # as train@ had
    report(run(p.path(s["metrics_dir"]), candidates, p.path(s["out"]), s, name=registry_name(p)))


@app.command()
def export(params: ParamsOpt = Path("params.yaml"), sets: SetOpt = None,
           quantize: Annotated[bool | None, typer.Option("--quantize/--no-quantize",
                                                         help="Also write an int8 model.")] = None) -> None:
    """Export the gate's winner to ONNX and check parity with PyTorch on real images."""
    from fashionrec.registry.export import export as run

    p = load(params, sets, export__quantize__enabled=quantize)
    s = p.section("export")
    report(run(p.path(s["models_dir"]), p.path(s["decision"]), p.path(s["manifest"]), p.path(s["out"]), s))


@app.command()
def register(params: ParamsOpt = Path("params.yaml"), sets: SetOpt = None,
             promotion: Annotated[str | None, typer.Option(help="auto | manual")] = None,
             by: ByOpt = None) -> None:
    """Register the exported winner in MLflow (alias challenger; champion too when promotion is auto)."""
    from fashionrec.core.tracking import configure, run_tags
    from fashionrec.registry.steps import register as run

    p = load(params, sets, register__promotion=promotion)
    configure(p)
    s = p.section("register")
    tags = run_tags(p, p.path(p.get("export.manifest", "data/validated/manifest.parquet")))
    report(run(p.path(s["export_dir"]), p.path(s["models_dir"]), p.path(s["decision"]), p.path(s["out"]), s,
               tags=tags, by=user(by)))


DeployOpt = Annotated[bool | None, typer.Option(
    "--deploy/--no-deploy", help="Reconcile serving right after the move (default: when the bundles folder "
    "has a live bundle here; elsewhere the deployer converges from the alias).")]


@app.command()
def promote(version: Annotated[str, typer.Argument(help="Model version to make champion.")],
            params: ParamsOpt = Path("params.yaml"), sets: SetOpt = None, by: ByOpt = None,
            reason: ReasonOpt = "promoted from the CLI",
            force: Annotated[bool, typer.Option(help="Promote even without a passed gate.")] = False,
            deploy: DeployOpt = None) -> None:
    """Make VERSION the champion (the current one becomes previous-champion); serving follows."""
    from fashionrec.core.tracking import configure
    from fashionrec.deploy.config import DeployConfig
    from fashionrec.deploy.reconcile import promote_and_deploy

    p = load(params, sets)
    configure(p)
    report(promote_and_deploy(DeployConfig.from_params(p), registry_name(p), version, by=user(by),
                              reason=reason, force=force, deploy_now=deploy is not False))


@app.command()
def rollback(params: ParamsOpt = Path("params.yaml"), sets: SetOpt = None, by: ByOpt = None,
             reason: ReasonOpt = "rolled back from the CLI", deploy: DeployOpt = None) -> None:
    """Give the champion alias back to the previous champion (repeat to go further back); serving
    follows."""
    from fashionrec.core.tracking import configure
    from fashionrec.deploy.config import DeployConfig
    from fashionrec.deploy.reconcile import roll_back_champion_and_deploy

    p = load(params, sets)
    configure(p)
    report(roll_back_champion_and_deploy(DeployConfig.from_params(p), registry_name(p), by=user(by),
                                         reason=reason, deploy_now=deploy is not False))


@app.command()
def history(params: ParamsOpt = Path("params.yaml"), sets: SetOpt = None,
            as_json: Annotated[bool, typer.Option("--json", help="Print the raw trail as JSON.")] = False
            ) -> None:
    """Print the champion trail: every move of the alias, when, by whom and why (oldest first)."""
    from fashionrec.core.tracking import configure
    from fashionrec.registry.steps import champion_history

    p = load(params, sets)
    configure(p)
    trail = champion_history(registry_name(p))
    if as_json:
        report(trail)
        return
    for e in trail:
        typer.echo(f"{e.get('at', '?'):<29} {e.get('action', '?'):<9} v{e.get('version')} "
                   f"(was v{e.get('previous')})  by {e.get('by', '?')}: {e.get('reason', '')}")


# --- deploy and serving ------------------------------------------------------------------------------


def deploy_config(p: Params) -> Any:
    from fashionrec.deploy.config import DeployConfig

    return DeployConfig.from_params(p)


@app.command("deploy")
def deploy_step(params: ParamsOpt = Path("params.yaml"), sets: SetOpt = None,
                model: Annotated[str | None, typer.Option(
                    help="models:/NAME@ALIAS, models:/NAME/VERSION or an ONNX file.")] = None,
                catalog: Annotated[Path | None, typer.Option(
                    help="Catalog CSV (default: the validated dataset).")] = None,
                kind: Annotated[str | None, typer.Option(
                    help="auto | balltree | brute | hnsw | milvus")] = None,
                activate: Annotated[bool | None, typer.Option(
                    "--activate/--no-activate", help="Reconcile serving (else only build a bundle).")] = None,
                rebuild: Annotated[bool, typer.Option(
                    help="Build anew even if a kept bundle matches.")] = False) -> None:
    """Serve the champion over the inventory: reuse a matching kept bundle, else embed a new one."""
    from fashionrec.deploy.reconcile import deploy

    p = load(params, sets, index__model=model, index__catalog=catalog, index__kind=kind,
             index__activate=activate)
    report(deploy(deploy_config(p), rebuild=rebuild))


@app.command("index", hidden=True, deprecated=True)
def index_alias(params: ParamsOpt = Path("params.yaml"), sets: SetOpt = None,
                model: Annotated[str | None, typer.Option()] = None,
                catalog: Annotated[Path | None, typer.Option()] = None,
                kind: Annotated[str | None, typer.Option()] = None,
                activate: Annotated[bool | None, typer.Option("--activate/--no-activate")] = None,
                rebuild: Annotated[bool, typer.Option()] = False) -> None:
    """Deprecated name of `deploy`."""
    typer.echo("warning: `fashionrec index` is now `fashionrec deploy`", err=True)
    deploy_step(params, sets, model, catalog, kind, activate, rebuild)


@app.command("add-photos")
def add_photos(folder: Annotated[Path, typer.Argument(help="New labelled photos: images/ + images.csv.")],
               params: ParamsOpt = Path("params.yaml"), sets: SetOpt = None,
               on_bad_file: Annotated[str | None, typer.Option(help="fail | quarantine")] = None,
               record: Annotated[bool | None, typer.Option(
                   "--record/--no-record", help="dvc add/repro/push + git commit.")] = None) -> None:
    """Check new labelled photos with the validation suite, add them to the data and record a new data
    version (DVC + a git commit) that the next scheduled run trains on."""
    from fashionrec.data.intake import add_photos as run

    p = load(params, sets, intake__on_bad_file=on_bad_file, intake__record=record)
    s = p.section("intake")
    product = str(p.get("subset.product"))
    report(run(folder, p.root, s, p.section("validate"), product=product,
               subset_dir=p.path(s["subset"]) / product,
               additions=p.path(p.get("ingest.additions") or "data/additions"), reports=p.path(s["reports"])))


@app.command("add-items")
def add_items(catalog: Annotated[Path, typer.Argument(help="Catalog CSV of the new items only.")],
              params: ParamsOpt = Path("params.yaml"), sets: SetOpt = None,
              activate: Annotated[bool | None, typer.Option("--activate/--no-activate")] = None) -> None:
    """A new bundle version = the current one + these items (only they are embedded)."""
    from fashionrec.deploy.reconcile import add_items as run

    p = load(params, sets, index__activate=activate)
    report(run(deploy_config(p), catalog))


@app.command("rollback-deploy")
def rollback_deploy(params: ParamsOpt = Path("params.yaml"), sets: SetOpt = None, by: ByOpt = None,
                    reason: ReasonOpt = "rolled back from the CLI (rollback-deploy)") -> None:
    """Serve the bundle that served before (its model version becomes the champion again, if it differs)."""
    from fashionrec.core.tracking import configure
    from fashionrec.deploy.reconcile import roll_back_deploy

    p = load(params, sets)
    configure(p)
    report(roll_back_deploy(deploy_config(p), by=user(by), reason=reason))


@app.command()
def deployer(params: ParamsOpt = Path("params.yaml"), sets: SetOpt = None,
             host: Annotated[str | None, typer.Option(help="Bind address (default deployer.host).")] = None,
             port: Annotated[int | None, typer.Option(help="Port (default deployer.port, 8001).")] = None
             ) -> None:
    """Run the deploy controller: MLflow alias webhooks + a poll keep serving on the champion."""
    from fashionrec.core.tracking import configure
    from fashionrec.deploy.config import DeployerConfig
    from fashionrec.deploy.deployer import run_deployer

    p = load(params, sets, deployer__host=host, deployer__port=port)
    configure(p)
    run_deployer(deploy_config(p), DeployerConfig.from_params(p))


@app.command()
def serve(params: ParamsOpt = Path("params.yaml"), sets: SetOpt = None,
          host: Annotated[str | None, typer.Option(help="Bind address (default 127.0.0.1).")] = None,
          port: Annotated[int | None, typer.Option(help="Port (default 8000).")] = None,
          bundle: Annotated[Path | None, typer.Option(help="Serve this bundle folder only.")] = None) -> None:
    """Serve recommendations (FastAPI + ONNX Runtime under uvicorn) and the web page."""
    from fashionrec.serve.app import serve as run

    run(load(params, sets, serve__host=host, serve__port=port, serve__bundle=bundle))


# --- Kubeflow Pipelines ------------------------------------------------------------------------------

kfp_app = typer.Typer(no_args_is_help=True, help="The pipeline on Kubeflow: compile, run locally, submit, "
                      "schedule (arguments come from params.yaml and --set).")
app.add_typer(kfp_app, name="kfp")

HostOpt = Annotated[str | None, typer.Option(help="KFP API endpoint (default: kfp.host).")]
PackageOpt = Annotated[Path | None, typer.Option(help="Compiled pipeline (default: kfp.package).")]
ExperimentOpt = Annotated[str | None, typer.Option(help="KFP experiment (default: kfp.experiment).")]
TokenOpt = Annotated[str | None, typer.Option(envvar="KFP_TOKEN", help="Bearer token for the KFP API.")]


@kfp_app.command("compile")
def kfp_compile(params: ParamsOpt = Path("params.yaml"), sets: SetOpt = None,
                out: Annotated[Path | None, typer.Option(help="Output YAML (default: kfp.package).")] = None
                ) -> None:
    """Compile pipelines/training_pipeline.py to its YAML spec (defaults: params.yaml)."""
    from fashionrec.kfp.client import compile_pipeline

    p = load(params, sets)
    report({"package": str(compile_pipeline(out or p.path(p.section("kfp")["package"]), p))})


@kfp_app.command("local")
def kfp_local(params: ParamsOpt = Path("params.yaml"), sets: SetOpt = None,
              source: Annotated[str | None, typer.Option(
                  help="tiny (generated, the default) or a dataset folder.")] = None,
              data_rev: Annotated[str | None, typer.Option(
                  help="Git revision of the data (default: kfp.data.rev).")] = None) -> None:
    """Run the whole pipeline on this machine with kfp.local (no cluster, no Docker), reading the data
    through DVC from a local git + DVC repository (kfp.local.repo; built from the source on first use)."""
    from fashionrec.kfp.client import run_local

    report(run_local(load(params, sets), source, data_rev=data_rev))


@kfp_app.command("submit")
def kfp_submit(params: ParamsOpt = Path("params.yaml"), sets: SetOpt = None, host: HostOpt = None,
               package: PackageOpt = None, experiment: ExperimentOpt = None, token: TokenOpt = None,
               run_name: Annotated[str | None, typer.Option(help="Name of the run.")] = None) -> None:
    """Create a run of the compiled pipeline on a Kubeflow cluster."""
    from fashionrec.kfp.client import submit

    report(submit(load(params, sets), host, package, run_name, experiment, token))


@kfp_app.command("schedule")
def kfp_schedule(params: ParamsOpt = Path("params.yaml"), sets: SetOpt = None, host: HostOpt = None,
                 cron: Annotated[str | None, typer.Option(
                     help="KFP cron, seconds first (default: kfp.schedule.cron).")] = None,
                 package: PackageOpt = None, experiment: ExperimentOpt = None, token: TokenOpt = None,
                 name: Annotated[str | None, typer.Option(help="Recurring run name.")] = None) -> None:
    """Create a recurring run of the compiled pipeline on a Kubeflow cluster."""
    from fashionrec.kfp.client import schedule

    report(schedule(load(params, sets), host, cron, package, name, experiment, token))


if __name__ == "__main__":   # `python -m fashionrec.cli`: how the DDP launcher starts each rank
    main()
