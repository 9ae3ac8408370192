"""ASGI entry for `uvicorn serving.app:app` (containers, process managers): the library's app factory over
the params file named by FASHIONREC_PARAMS (default `params.yaml`). `fashionrec serve` does the same."""

from __future__ import annotations

import os

from fashionrec.core.config import load_params
from fashionrec.serve.app import ServeConfig, create_app

app = create_app(ServeConfig.from_params(load_params(os.environ.get("FASHIONREC_PARAMS", "params.yaml"))))
