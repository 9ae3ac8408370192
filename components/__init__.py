"""Kubeflow Pipelines components: one lightweight Python component per file, each a thin wrapper that
calls the same `fashionrec` library function as its DVC stage, with KFP artifacts instead of paths.

Every component runs in one image (`components/Dockerfile`, named by `kfp.image` in params.yaml) that
holds the installed package, so components import `fashionrec` inside their function body and KFP
installs nothing at run time (`install_kfp_package=False`).
"""

from pathlib import Path

from fashionrec.core.config import load_params

BASE_IMAGE: str = str(load_params(Path(__file__).resolve().parents[1] / "params.yaml").get("kfp.image"))
