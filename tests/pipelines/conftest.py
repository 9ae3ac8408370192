"""Fixtures of the pipeline tests: the pipeline compiled once from the project's params.yaml."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from fashionrec.core.config import Params, load_params
from fashionrec.kfp.client import compile_pipeline

ROOT = Path(__file__).resolve().parents[2]


@dataclass
class Compiled:
    path: Path
    spec: dict[str, Any]        # the pipeline spec (first YAML document)
    platform: dict[str, Any]    # the Kubernetes platform spec (second document)
    params: Params              # the params.yaml it was compiled from

    def executor(self, task: str) -> dict[str, Any]:
        return self.spec["deploymentSpec"]["executors"][f"exec-{task}"]["container"]

    def k8s(self, task: str) -> dict[str, Any]:
        return self.platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"].get(f"exec-{task}", {})


@pytest.fixture(scope="session")
def compiled(tmp_path_factory: pytest.TempPathFactory) -> Compiled:
    path = compile_pipeline(tmp_path_factory.mktemp("kfp") / "training_pipeline.yaml")
    spec, platform = yaml.safe_load_all(path.read_text())
    return Compiled(path=path, spec=spec, platform=platform, params=load_params(ROOT / "params.yaml"))
