"""Fixtures for the serving-image tests: the built image (missing = a failure, never a skip) and a real
bundle built by the project's own deploy code from the generated tiny dataset and an exported model."""

from __future__ import annotations

import importlib.util
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from imagekit import ROOT, SERVE_IMAGE, ImageMissing, require_image

from fashionrec.config import Params
from fashionrec.deploy.build import build_index_bundle


def load_deploykit() -> ModuleType:
    """tests/serving/deploykit.py (model export, params writer) by path: one copy of those helpers."""
    path = ROOT / "tests" / "serving" / "deploykit.py"
    spec = importlib.util.spec_from_file_location("fashionrec_tests_deploykit", path)
    module = sys.modules.setdefault(spec.name, importlib.util.module_from_spec(spec))  # type: ignore[arg-type]
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module


deploykit = load_deploykit()


@dataclass(frozen=True)
class ImageBundle:
    """A bundles folder with one activated bundle, and the inventory folder its item paths are relative to."""

    params: Params
    bundles: Path
    bundle: Path
    manifest: dict[str, Any]
    inventory: Path
    model: Path


@pytest.fixture(scope="session")
def serve_image_config() -> dict[str, Any]:
    """The serving image's config; a missing image fails the test (CI builds it in `make test`)."""
    try:
        return require_image(SERVE_IMAGE)
    except ImageMissing as exc:
        pytest.fail(str(exc), pytrace=False)


def build_bundle(folder: Path, validated: Path, model: Path) -> ImageBundle:
    """Every validated tiny-dataset image as an inventory item, embedded with `model`, activated."""
    params = deploykit.write_params(folder, model, None, index__manifest=str(validated / "manifest.parquet"),
                                    index__kind="balltree")
    bundle = build_index_bundle(params).bundle   # type: ignore[attr-defined]
    return bundle_info(params, Path(bundle), model)


def bundle_info(params: Params, bundle: Path, model: Path) -> ImageBundle:
    manifest = json.loads((bundle / "manifest.json").read_text())
    return ImageBundle(params=params, bundles=bundle.parent, bundle=bundle, manifest=manifest,
                       inventory=Path(manifest["items"]["inventory_root"]), model=model)


@pytest.fixture(scope="session")
def image_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real SimpleCNN from the project's factory, exported to ONNX by the project's export."""
    return deploykit.export_model(tmp_path_factory.mktemp("image_model"), seed=3)


@pytest.fixture(scope="session")
def image_bundle(tiny_validated, image_model: Path, tmp_path_factory: pytest.TempPathFactory) -> ImageBundle:
    return build_bundle(tmp_path_factory.mktemp("image_bundles"), tiny_validated.validated, image_model)
