"""Every dependency in pyproject.toml earns its place: imported by the code or the tests, or its line says
why it is there; and the Swagger UI files the server hands to browsers are swagger-api's own release."""

from __future__ import annotations

import functools
import hashlib
import re
import tomllib
from importlib.metadata import packages_distributions
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PYPROJECT = ROOT / "pyproject.toml"
CODE = ["src", "tests", "components", "pipelines", "bench", "deploy", "serving"]

# sha256 of the files of swagger-ui-dist 5.31.0 as npm serves it (swagger-api's release, `npm pack
# swagger-ui-dist@5.31.0`, integrity sha512-zSUTIck02fSga6rc…): the swagger-ui-bundle-v2 wheel is a fork's
# repackaging (docs/DEPENDENCIES.md), so what it ships is checked against the upstream files.
SWAGGER_UI = {
    "swagger-ui-bundle.js": "93b7b0862a80e2786f85b560be7693c2344354ffa7e7e224f850a54349724c31",
    "swagger-ui.css": "9e576f8322132c76949da47f9bb53c891373c303ea3a761ff548ffc9de50a98c",
    "favicon-32x32.png": "3ed612f41e050ca5e7000cad6f1cbe7e7da39f65fca99c02e99e6591056e5837",
}


def normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def requirement_lines() -> list[tuple[str, str, str]]:
    """(group, distribution name, the requirement's line with the comment line above it) for each entry."""
    text = PYPROJECT.read_text()
    project = tomllib.loads(text)["project"]
    groups = {"base": project["dependencies"], **project["optional-dependencies"]}
    lines = text.splitlines()
    out = []
    for group, reqs in groups.items():
        for req in reqs:
            name = re.split(r"[<>=!~\[ ;]", req, maxsplit=1)[0]
            at = next(i for i, line in enumerate(lines) if f'"{req}"' in line)
            out.append((group, name, lines[at - 1] + "\n" + lines[at]))
    return out


def imported_modules() -> set[str]:
    """Top-level module names imported anywhere in the project's Python files."""
    found: set[str] = set()
    pattern = re.compile(r"^\s*(?:from|import)\s+([A-Za-z_][\w]*)", re.M)
    for folder in CODE:
        for path in (ROOT / folder).rglob("*.py"):
            found |= set(pattern.findall(path.read_text(errors="replace")))
    return found


@functools.cache
def installed_modules() -> dict[str, list[str]]:
    return packages_distributions()


def modules_of(distribution: str) -> set[str]:
    """The top-level modules a distribution provides (its own name when it is not installed here)."""
    owned = {module for module, dists in installed_modules().items()
             if normalise(distribution) in {normalise(d) for d in dists}}
    return owned or {normalise(distribution).replace("-", "_")}


def test_every_dependency_is_imported_or_says_why() -> None:
    imported = imported_modules()
    unexplained = []
    for group, name, context in requirement_lines():
        if modules_of(name) & imported:
            continue
        requirement, comment_above = context.splitlines()[1], context.splitlines()[0].strip()
        if "#" not in requirement and not comment_above.startswith("#"):
            unexplained.append(f"{group}: {name}")
    assert not unexplained, f"nothing imports these and no comment says why they are there: {unexplained}"


def test_the_check_sees_an_unexplained_dependency() -> None:
    """The rule above can fail: a made-up requirement with no importer and no comment is reported."""
    assert not modules_of("surely-not-a-dependency-xyz") & imported_modules()
    assert modules_of("scikit-learn") == {"sklearn"} and "sklearn" in imported_modules()


def test_hnswlib_is_gone_and_faiss_is_the_hnsw_library() -> None:
    names = {normalise(name) for _, name, _ in requirement_lines()}
    assert "hnswlib" not in names and "faiss-cpu" in names
    assert not [p for folder in CODE for p in (ROOT / folder).rglob("*.py")
                if re.search(r"^\s*(import|from)\s+hnswlib", p.read_text(errors="replace"), re.M)]


def test_served_swagger_ui_files_are_the_upstream_release() -> None:
    import swagger_ui_bundle

    folder = Path(str(swagger_ui_bundle.swagger_ui_path))
    assert folder.name == "swagger-ui-5.31.0"
    for name, digest in SWAGGER_UI.items():
        assert hashlib.sha256((folder / name).read_bytes()).hexdigest() == digest, \
            f"{folder / name} differs from swagger-ui-dist 5.31.0"

