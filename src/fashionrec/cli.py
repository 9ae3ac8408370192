"""The `fashionrec` command: one subcommand per pipeline step.

Each command reads params.yaml, applies `--set key.path=value` overrides and its own flags (which are
shorthands for overrides), resolves paths and calls one library function. Nothing else lives here.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from fashionrec.config import Params, ParamsError, load_params
from fashionrec.errors import FashionrecError

app = typer.Typer(no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False,
                  help="fashionrec pipeline steps (see README.md).")

ParamsOpt = Annotated[Path, typer.Option("--params", "-p", help="Params file (paths inside are relative to it).")]
SetOpt = Annotated[list[str] | None, typer.Option("--set", "-s", help="Override: key.path=value (repeatable).")]


def load(params_file: Path, sets: list[str] | None, **flags: Any) -> Params:
    """Params with overrides: `--set` first, then non-None flags given as {'stage.key': value}."""
    extra = [f"{key.replace('__', '.')}={json.dumps(str(v) if isinstance(v, Path) else v)}"
             for key, v in flags.items() if v is not None]
    return load_params(params_file, [*(sets or []), *extra])


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
    report(run(p))


@app.command()
def subset(params: ParamsOpt = Path("params.yaml"), sets: SetOpt = None,
           policy: Annotated[str | None, typer.Option(help="published | grouped")] = None,
           out: Annotated[Path | None, typer.Option(help="Output folder of the subset.")] = None) -> None:
    """Select classes, drop unusable labels, cap per class and split into train/validation/test."""
    from fashionrec.data.subset import subset as run

    p = load(params, sets, subset__split__policy=policy, subset__out=out)
    report(run(p))


@app.command()
def validate(params: ParamsOpt = Path("params.yaml"), sets: SetOpt = None,
             on_bad_file: Annotated[str | None, typer.Option(help="fail | quarantine")] = None) -> None:
    """Run the Great Expectations suite over the subset; write Data Docs and a JSON summary."""
    from fashionrec.data.validate import validate as run

    p = load(params, sets, validate__on_bad_file=on_bad_file)
    report(run(p))


@app.command()
def describe(params: ParamsOpt = Path("params.yaml"), sets: SetOpt = None) -> None:
    """Plot label distributions, image sizes and a contact sheet per class."""
    from fashionrec.data.describe import describe as run

    report(run(load(params, sets)))


# --- training and evaluation stages ------------------------------------------------------------------


# --- gate, export and registry -----------------------------------------------------------------------


# --- deploy and serving ------------------------------------------------------------------------------
