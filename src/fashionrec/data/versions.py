"""Data versions: the dataset subset as DVC records it at a git revision of the project, read back from the
DVC remote, and new versions recorded as DVC + git commits.

A data version is a git commit of the project: its `dvc.lock` names the md5 of the product subset
`data/subset/<subset.product>` (the stage `subset@<product>` output) and the DVC remote holds those
bytes. The Kubeflow pipeline reads them with `dvc.api`
at `data_rev` (a branch, tag or commit), so a scheduled run trains on exactly what `dvc repro` produced
at that revision, and its lineage names the commit and the md5.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import yaml

from fashionrec.core.errors import DataVersionError
from fashionrec.data.reviewed import write_empty_review

SUBSET_DIR = "data/subset"
REVIEW_FILE = "data/label_review.csv"   # dvc.yaml's subset stages depend on it


def subset_target(product: str) -> tuple[str, str]:
    """(dvc.lock stage, output path) of the product subset `product` (params.yaml `subset.product`)."""
    return f"subset@{product}", f"{SUBSET_DIR}/{product}"


@dataclass
class DataVersion:
    """Which data a run read: the revision asked for, the commit it resolved to, the DVC md5 of the data."""

    repo: str
    rev: str
    commit: str
    md5: str
    path: str
    n_files: int = 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def lock_md5(lock_text: str, where: str, product: str) -> str:
    """The md5 `dvc.lock` records for the product subset (a `.dir` hash for a folder)."""
    stage, out = subset_target(product)
    try:
        stages = (yaml.safe_load(lock_text) or {}).get("stages", {})
    except yaml.YAMLError as exc:
        raise DataVersionError(f"{where}: dvc.lock is not valid YAML ({exc})") from exc
    for entry in (stages.get(stage) or {}).get("outs", []):
        if str(entry.get("path", "")).rstrip("/") == out and entry.get("md5"):
            return str(entry["md5"])
    raise DataVersionError(f"{where}: dvc.lock has no md5 for {out} (stage {stage}): run `dvc repro "
                           f"{stage}` and commit dvc.lock")


def fetch_subset(repo: str, rev: str, out: Path, product: str,
                 remote_config: dict[str, Any] | None = None) -> DataVersion:
    """Copy the product subset of the project `repo` (a git URL or folder) at `rev` into `out`, through DVC:
    the bytes come from the project's DVC remote (or a cache that holds them), checked against dvc.lock."""
    path = subset_target(product)[1]
    from dvc.api import DVCFileSystem
    from dvc.exceptions import DvcException

    where = f"{repo}@{rev}"
    try:
        fs = DVCFileSystem(repo, rev=rev, remote_config=remote_config)
        commit = str(fs.repo.scm.get_rev())
        md5 = lock_md5(fs.read_text("dvc.lock"), where, product)
        shutil.rmtree(out, ignore_errors=True)
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        fs.get(path, str(out), recursive=True)
    except DataVersionError:
        raise
    except (DvcException, OSError, ValueError) as exc:
        raise DataVersionError(f"{where}: cannot read {path} through DVC ({type(exc).__name__}: {exc}); "
                               "is the revision pushed to git and its data to the DVC remote (`dvc push`)?"
                               ) from exc
    n_files = sum(1 for p in Path(out).rglob("*") if p.is_file())
    return DataVersion(repo=str(repo), rev=str(rev), commit=commit, md5=md5, path=path, n_files=n_files)


def run(cmd: Sequence[str], cwd: Path, what: str) -> str:
    """Run git/dvc in the project; a failure names the command and its output."""
    env = {**os.environ, "DVC_NO_ANALYTICS": "1"}
    try:
        done = subprocess.run(list(cmd), cwd=cwd, capture_output=True, text=True, env=env, check=False)
    except OSError as exc:
        raise DataVersionError(f"{what}: cannot run {cmd[0]} ({exc})") from exc
    if done.returncode != 0:
        tail = (done.stderr or done.stdout).strip()[-1500:]
        raise DataVersionError(f"{what}: `{' '.join(cmd)}` failed in {cwd} (exit {done.returncode}): {tail}")
    return done.stdout


def record_version(root: Path, tracked: str, message: str, product: str, *, repro: str = "subset",
                   push: bool = True, commit: bool = True) -> DataVersion:
    """A new data version from the changed folder `tracked` (a `dvc add`ed source folder): `dvc add`,
    `dvc repro` up to `repro` (ingest -> subset: the data a run reads), `dvc push`, then one git commit of the
    `.dvc` file and dvc.lock. Returns the new commit and the subset's md5."""
    root = Path(root).resolve()
    dvc = shutil.which("dvc") or "dvc"
    run([dvc, "add", "-q", tracked], root, f"dvc add {tracked}")
    run([dvc, "repro", "-q", repro], root, f"dvc repro {repro}")
    if push:
        run([dvc, "push", "-q"], root, "dvc push")
    sha = "uncommitted"
    if commit:
        ignores = [str(g.relative_to(root)) for g in root.rglob(".gitignore")   # data/subset/.gitignore too
                   if not {".dvc", ".git"} & set(g.relative_to(root).parts)]
        run(["git", "add", f"{tracked}.dvc", "dvc.lock", *ignores], root, "git add")
        run(["git", "commit", "-q", "-m", message], root, "git commit")
        sha = run(["git", "rev-parse", "HEAD"], root, "git rev-parse").strip()
    md5 = lock_md5((root / "dvc.lock").read_text(), str(root / "dvc.lock"), product)
    return DataVersion(repo=str(root), rev="HEAD", commit=sha, md5=md5, path=subset_target(product)[1])


SPLITS_FILE = "splits.csv"  # the additions' split of each photo (`subset.split.pinned_file` pins it)


def new_additions(folder: Path) -> Path:
    """An empty additions folder (`ingest.additions`): the headers of images.csv (the upstream layout) and
    splits.csv (each added photo's split), so that `ingest`'s dependency exists before the first
    `fashionrec add-photos`."""
    folder = Path(folder)
    (folder / "images").mkdir(parents=True, exist_ok=True)
    headers = {"images.csv": "image,sender_id,label,kids", SPLITS_FILE: "image,split"}
    for name, header in headers.items():
        if not (folder / name).is_file():
            (folder / name).write_text(header + "\n")
    return folder


def init_project(root: Path, project: Path, params_tree: dict[str, Any], remote: Path,
                 message: str = "data v1") -> DataVersion:
    """A git + DVC repository at `root` shaped like the project (its dvc.yaml, the `src/` the data stages
    depend on, `params_tree` as params.yaml, an empty additions folder) with a local DVC remote, the data
    stages reproduced, pushed and committed: data version 1. For local pipeline runs and tests."""
    root, project = Path(root).resolve(), Path(project).resolve()
    root.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(project / "dvc.yaml", root / "dvc.yaml")
    (root / "models").mkdir(exist_ok=True)   # dvc.yaml's vars: the recipe file must exist to parse it
    shutil.copyfile(project / "models" / "recipe.yaml", root / "models" / "recipe.yaml")
    shutil.copytree(project / "src", root / "src", dirs_exist_ok=True,
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info"))
    (root / "params.yaml").write_text(yaml.safe_dump(params_tree, sort_keys=False))
    review = root / REVIEW_FILE   # a dep of the subset stage: the project's reviewed list, or an empty one
    if (project / REVIEW_FILE).is_file():
        review.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(project / REVIEW_FILE, review)
    else:
        write_empty_review(review)
    (root / ".gitignore").write_text("__pycache__/\n*.pyc\n/mlflow/\n/bundles/\n/.cache/\n")
    additions = new_additions(root / str((params_tree.get("ingest") or {}).get("additions")
                                         or "data/additions"))
    dvc = shutil.which("dvc") or "dvc"
    run(["git", "init", "-q", "-b", "main"], root, "git init")
    run(["git", "config", "user.email", "pipeline@fashionrec.invalid"], root, "git config")
    run(["git", "config", "user.name", "fashionrec"], root, "git config")
    run([dvc, "init", "-q"], root, "dvc init")
    run([dvc, "config", "core.analytics", "false"], root, "dvc config")
    run([dvc, "remote", "add", "-d", "local", str(Path(remote).resolve())], root, "dvc remote add")
    run([dvc, "add", "-q", str(additions.relative_to(root))], root, "dvc add")  # before git sees it
    run(["git", "add", "-A"], root, "git add")
    run(["git", "commit", "-q", "-m", "project"], root, "git commit")
    return record_version(root, str(additions.relative_to(root)), message, params_tree["subset"]["product"])
