"""Fixtures for the serving-image tests: the built image (missing = a failure, never a skip) and a real
bundle built by the project's own deploy code from the generated tiny dataset and an exported model."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.container.utils import SERVE_IMAGE, ImageBundle, ImageMissing, build_bundle, require_image
from tests.serving.utils import export_model


@pytest.fixture(scope="session")
def serve_image_config() -> dict[str, Any]:
    """The serving image's config; a missing image fails the test (CI builds it in `make test`)."""
    try:
        return require_image(SERVE_IMAGE)
    except ImageMissing as exc:
        pytest.fail(str(exc), pytrace=False)


@pytest.fixture(scope="session")
def image_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real SimpleCNN from the project's factory, exported to ONNX by the project's export."""
    return export_model(tmp_path_factory.mktemp("image_model"), seed=3)


@pytest.fixture(scope="session")
def image_bundle(tiny_validated, image_model: Path, tmp_path_factory: pytest.TempPathFactory) -> ImageBundle:
    return build_bundle(tmp_path_factory.mktemp("image_bundles"), tiny_validated.validated, image_model)
