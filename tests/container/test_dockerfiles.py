"""Both Dockerfiles and their build contexts, read without building (the pipeline image is too heavy to
build on every CI run: `make images IMAGES=all` builds it): each builds from `ARG BASE`, every COPY source
is in its context after the ignore file, the context holds no data or models, and what each image installs
agrees with pyproject.toml (the serving set has no training dependency)."""

from __future__ import annotations

import fnmatch
import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILES = {"serve": ROOT / "serving" / "Dockerfile", "pipeline": ROOT / "components" / "Dockerfile"}
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
TRAINING = {"torch", "torchvision", "mlflow", "kfp", "kfp-kubernetes", "dvc", "great-expectations",
            "matplotlib", "onnx", "onnxruntime-gpu"}
MAX_CONTEXT_BYTES = 5_000_000


def instructions(dockerfile: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    text = re.sub(r"\\\n", " ", dockerfile.read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def ignored(path: str, rules: list[str]) -> bool:
    """Docker's .dockerignore semantics for these files: the last rule matching the path or a parent wins."""
    parts = path.split("/")
    candidates = ["/".join(parts[:i]) for i in range(1, len(parts) + 1)]
    result = False
    for rule in rules:
        negate = rule.startswith("!")
        pattern = rule.lstrip("!").rstrip("/")
        if any(fnmatch.fnmatchcase(c, pattern) for c in candidates):
            result = not negate
    return result


def context(name: str) -> list[str]:
    """The tracked files a build of `name` sends (its <Dockerfile>.dockerignore applied)."""
    dockerfile = DOCKERFILES[name]
    ignore = dockerfile.with_name(dockerfile.name + ".dockerignore")
    rules = [r.strip() for r in ignore.read_text().splitlines() if r.strip() and not r.startswith("#")]
    files = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True,
                           check=True).stdout.split()
    return [f for f in files if not ignored(f, rules)]


def requirement_names(reqs: list[str]) -> set[str]:
    return {re.split(r"[<>=!~\[ ;]", r, maxsplit=1)[0].lower().replace("_", "-") for r in reqs}


@pytest.mark.parametrize("name", sorted(DOCKERFILES))
def test_builds_from_an_argument_base(name: str) -> None:
    steps = instructions(DOCKERFILES[name])
    assert steps[0] == ("ARG", "BASE=python:3.11-slim"), "the base must be replaceable (no registry here)"
    froms = [args for word, args in steps if word == "FROM"]
    assert froms and all(f.split()[0] == "${BASE}" for f in froms)


@pytest.mark.parametrize("name", sorted(DOCKERFILES))
def test_context_has_every_copy_source_and_nothing_heavy(name: str) -> None:
    files = context(name)
    for word, args in instructions(DOCKERFILES[name]):
        if word != "COPY" or "--from=" in args:
            continue
        *sources, _dest = [a for a in args.split() if not a.startswith("--")]
        for source in sources:
            assert any(f == source or f.startswith(source.rstrip("/") + "/") for f in files), \
                f"{name}: COPY {source} is not in the build context (check its .dockerignore)"
    assert not [f for f in files if f.split("/")[0] in {"data", "models", "metrics", "reports", "tests",
                                                         "bench", "mlflow", "bundles", ".cache", ".dvc"}]
    assert sum((ROOT / f).stat().st_size for f in files) < MAX_CONTEXT_BYTES


def test_serving_set_has_no_training_dependency() -> None:
    serving = requirement_names(PYPROJECT["dependencies"] + PYPROJECT["optional-dependencies"]["serve"])
    assert not serving & TRAINING
    assert {"onnxruntime", "fastapi", "uvicorn", "numpy"} <= serving
    # issue 23 (the image's size budget): no tables, scikit-learn or Faiss in the default set
    assert not serving & {"pandas", "pyarrow", "scikit-learn", "scipy", "faiss-cpu"}
    assert requirement_names(PYPROJECT["optional-dependencies"]["hnsw"]) == {"faiss-cpu"}
    text = DOCKERFILES["serve"].read_text()
    assert "['optional-dependencies']['serve']" in text and "pip install --no-deps" in text
    steps = instructions(DOCKERFILES["serve"])
    final = steps[max(i for i, (w, _) in enumerate(steps) if w == "FROM"):]
    user = [args for word, args in final if word == "USER"]
    assert user and user[-1] not in ("root", "0")
    assert any(word == "HEALTHCHECK" and "/healthz" in args for word, args in final)
    entry = [args for word, args in final if word == "ENTRYPOINT"][-1]
    assert "/app/serving/entrypoint.sh" in entry
    script = (ROOT / "serving" / "entrypoint.sh").read_text()
    assert "exec fashionrec serve" in script and "fashionrec index" not in script, \
        "a serving container must never build a bundle (replicas would race)"


COMPILERS = re.compile(r"(?<![\w.+-])(g\+\+|gcc|clang|build-essential|python3-dev|cmake)(?![\w.+-])")


@pytest.mark.parametrize("name", sorted(DOCKERFILES))
def test_no_image_installs_a_compiler(name: str) -> None:
    """Every native dependency comes as a wheel (hnswlib, which had none, is gone): no stage of either
    image installs a compiler or Python's headers, and the serving set may not fall back to a source build."""
    installs = [args for word, args in instructions(DOCKERFILES[name])
                if word == "RUN" and re.search(r"apt-get install|apk add|dnf install|yum install", args)]
    for args in installs:
        for step in re.split(r"&&|\|\|", args):
            if re.search(r"apt-get install|apk add|dnf install|yum install", step):
                assert not COMPILERS.search(step), f"{name}: installs a compiler: {step.strip()}"
    assert not re.search(r"HNSWLIB|hnswlib", DOCKERFILES[name].read_text())
    if name == "serve":
        env = " ".join(args for word, args in instructions(DOCKERFILES[name]) if word == "ENV")
        assert "PIP_ONLY_BINARY=:all:" in env, "the serving set must install from wheels only"


def test_pipeline_image_installs_the_pipeline_extra_with_the_pinned_torch() -> None:
    text = DOCKERFILES["pipeline"].read_text()
    assert "pip install '.[pipeline]'" in text and "pip check" in text
    extra = PYPROJECT["optional-dependencies"]["pipeline"]
    pins = {r for r in extra if r.startswith(("torch==", "torchvision=="))}
    assert pins and all(pin in text for pin in pins), "the torch layer must install the pinned torch"
    assert requirement_names(extra) >= TRAINING - {"kfp-kubernetes"}


@pytest.mark.parametrize(("extras", "faiss"), [("", False), ("hnsw", True), ("hnsw,milvus-client", True)])
def test_serving_requirements_add_only_the_extras_asked_for(tmp_path: Path, extras: str, faiss: bool) -> None:
    """The Dockerfile's own requirement step, run here: the base set + `serve`, plus EXTRA_EXTRAS (what
    `make images` passes from images.serve_extras)."""
    step = next(args for word, args in instructions(DOCKERFILES["serve"])
                if word == "RUN" and "tomllib" in args)
    command = step.split(" > /requirements.txt")[0].replace("/pyproject.toml", str(ROOT / "pyproject.toml"))
    proc = subprocess.run(["sh", "-c", command.replace("python3 ", f"{sys.executable} ", 1)],
                          capture_output=True, text=True, env={**os.environ, "EXTRA_EXTRAS": extras})
    assert proc.returncode == 0, proc.stderr
    names = requirement_names(proc.stdout.split())
    assert ("faiss-cpu" in names) is faiss and ("pymilvus" in names) is ("milvus-client" in extras)
    assert {"onnxruntime", "fastapi"} <= names and not names & {"pandas", "pyarrow", "scikit-learn"}
