"""Fixtures for deploy and serving: two real exported models, a generated inventory, built bundles."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from deploykit import export_model, make_catalog, write_params
from fastapi.testclient import TestClient

from fashionrec.core.config import Params
from fashionrec.deploy.build import build_index_bundle
from fashionrec.serve.app import ServeConfig, create_app


@dataclass(frozen=True)
class Assets:
    model_a: Path          # two different real models (different seeds): different embeddings
    model_b: Path
    catalog: Path          # 40 items, relative image paths
    extra: Path            # 8 more items for incremental adds (ids extra000..)


@pytest.fixture(scope="session")
def assets(tmp_path_factory: pytest.TempPathFactory) -> Assets:
    base = tmp_path_factory.mktemp("deploy_assets")
    return Assets(model_a=export_model(base / "model_a", seed=1),
                  model_b=export_model(base / "model_b", seed=2),
                  catalog=make_catalog(base / "inventory", 40, seed=1),
                  extra=make_catalog(base / "extra", 8, seed=7, prefix="extra"))


@pytest.fixture
def project(tmp_path: Path, assets: Assets) -> Params:
    """A fresh project folder (params.yaml + empty bundles/) using model A and the 40-item catalog."""
    return write_params(tmp_path, assets.model_a, assets.catalog)


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory, assets: Assets) -> Iterator[TestClient]:
    """An in-process app over one built bundle (for request-level tests)."""
    folder = tmp_path_factory.mktemp("served")
    params = write_params(folder, assets.model_a, assets.catalog, serve__watch_interval_s=0)
    build_index_bundle(params)
    with TestClient(create_app(ServeConfig.from_params(params))) as client:
        yield client
