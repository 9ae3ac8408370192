"""Benchmark: `dvc repro` wall time, cold (nothing computed) and warm (nothing changed), in a temp copy.

The copy holds dvc.yaml, params.yaml and src/ (the stages' code dependencies; the installed `fashionrec` runs
them) with its own DVC cache, MLflow store and bundles. By default the dataset is the generated tiny one
(the `kfp.local.tiny` overrides, efficientnet_lite0 shrunk to 64 px and one epoch, and gate thresholds at
zero so the run goes end to end); `--source PATH` uses a real dataset folder with the project's params
(hours on 2 CPU cores). Per-stage times come from the cold run's log.

    nice -n 10 .venv/bin/python bench/pipeline.py
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml
from common import ROOT, Run, table

from fashionrec.core.config import set_dotted
from fashionrec.data.versions import new_additions
from fashionrec.train.recipe import RECIPE_FILE, cuda_present, resolve_recipe, write_recipe_file

TINY_EXTRA = {
    "train.candidates": ["pixels", "simple_cnn", "efficientnet_lite0"],   # dvc.yaml's select needs all three
    "train.models.efficientnet_lite0.size": 64,
    "train.models.efficientnet_lite0.epochs": 1,
    "train.models.efficientnet_lite0.batch_size": 8,
    "select.thresholds": {"test.micro_f1": 0.0, "retrieval.precision_at_5": 0.0, "instance.top5": 0.0},
    "select.group_floors": {"precision_at_1": 0.0, "accuracy": 0.0},
    "export.quantize.enabled": False,
}


def make_copy(work: Path, source: str) -> Path:
    proj = work / "project"
    proj.mkdir()
    for name in ("dvc.yaml", "params.yaml", "data/label_review.csv"):   # the last: a dep of the subset stage
        (proj / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name, proj / name)
    shutil.copytree(ROOT / "src", proj / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    tree = yaml.safe_load((proj / "params.yaml").read_text())
    if source == "tiny":
        from fashionrec.data.synthetic import make_tiny_dataset

        tiny = make_tiny_dataset(work / "source" / "clothing-dataset")
        overrides = {**(tree["kfp"]["local"].get("tiny") or {}), **TINY_EXTRA,
                     "ingest.source": str(tiny.root), "subset.subsets.benchmark.classes": list(tiny.classes)}
    else:
        overrides = {"ingest.source": str(Path(source).resolve())}
    overrides.update({"mlflow.tracking_uri": "sqlite:///mlflow/mlflow.db",
                      "mlflow.artifact_root": "mlflow/artifacts", "index.bundles": "bundles",
                      "serve.bundles": "bundles"})
    for key, value in overrides.items():
        set_dotted(tree, key, value)
    (proj / "params.yaml").write_text(yaml.safe_dump(tree, sort_keys=False))
    write_recipe_file(proj / RECIPE_FILE, resolve_recipe(tree["train"], cuda_present()))   # dvc.yaml's vars
    new_additions(proj / str(tree["ingest"].get("additions") or "data/additions"))  # ingest's dep
    return proj


def repro(proj: Path, env: dict[str, str], log: Path) -> tuple[float, int, str]:
    started = time.perf_counter()
    done = subprocess.run(["dvc", "repro"], cwd=proj, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    log.write_text(done.stdout + "\n--- stderr ---\n" + done.stderr)
    return seconds, done.returncode, done.stdout


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--source", default="tiny", help="tiny (generated) or a dataset folder")
    ap.add_argument("--keep", action="store_true", help="keep the temp copy (its path is printed)")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()

    run = Run("pipeline" if args.source == "tiny" else "pipeline_real")
    work = Path(tempfile.mkdtemp(prefix="fashionrec-bench-pipeline-"))
    bin_dir = str(Path(sys.executable).parent)
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    env.update(PATH=f"{bin_dir}:{env.get('PATH', '')}", DVC_NO_ANALYTICS="1", MLFLOW_DISABLE_TELEMETRY="true",
               PYTHONUNBUFFERED="1")
    try:
        proj = make_copy(work, args.source)
        subprocess.run(["dvc", "init", "--no-scm", "-q"], cwd=proj, env=env, check=True)
        subprocess.run(["dvc", "config", "core.analytics", "false"], cwd=proj, env=env, check=True)
        rows: list[dict[str, Any]] = []
        for phase in ("cold", "warm"):
            seconds, code, out = repro(proj, env, work / f"{phase}.log")
            ran = re.findall(r"Running stage '([^']+)'", out)
            skipped = re.findall(r"Stage '([^']+)' didn't change, skipping", out)
            rows.append({"phase": phase, "seconds": round(seconds, 1), "exit": code, "stages_run": len(ran),
                         "stages_skipped": len(skipped)})
            print(f"  {phase}: {seconds:.1f} s, exit {code}, {len(ran)} stages run, {len(skipped)} skipped")
            if code != 0:
                print((work / f"{phase}.log").read_text()[-3000:])
                break
        print()
        print(table(rows, ["phase", "seconds", "exit", "stages_run", "stages_skipped"]))
        run.save({"source": args.source, "rows": rows,
                  "overrides": TINY_EXTRA if args.source == "tiny" else None}, args.out)
    finally:
        if args.keep:
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
