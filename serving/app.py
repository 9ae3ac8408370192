"""ASGI entry for `uvicorn serving.app:app` (containers, process managers): the library's app factory over
the params file named by FASHIONREC_PARAMS (default `params.yaml`). `fashionrec serve` (the container's
entry point) does the same and also gives uvicorn the connection limits of params' `serve` section
(`max_connections`, `timeout_keep_alive_s` and the header deadline, all in `fashionrec.serve.protocol`);
under a bare `uvicorn serving.app:app`, pass `--timeout-keep-alive` and
`--http fashionrec.serve.protocol:HeaderDeadlineProtocol` yourself (not `--limit-concurrency`: it counts
idle connections and the probes, and answers a plain-text 503)."""

from __future__ import annotations

import os

from fashionrec.core.config import load_params
from fashionrec.serve.app import ServeConfig, create_app

app = create_app(ServeConfig.from_params(load_params(os.environ.get("FASHIONREC_PARAMS", "params.yaml"))))
