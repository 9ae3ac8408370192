"""A stand-in for the KFP API server on loopback: records every request kfp.Client sends and answers the
few endpoints `submit` and `schedule` use, as the v2beta1 REST API does (experiments, runs, recurring
runs, healthz). It checks nothing itself: the tests compare the recorded bodies with the compiled spec."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlparse

API = "/apis/v2beta1"


class FakeKfpApi:
    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self.experiments: list[dict[str, Any]] = []
        api = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:  # quiet
                pass

            def _answer(self) -> None:
                url = urlparse(self.path)
                length = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(length)) if length else None
                api.requests.append({"method": self.command, "path": url.path,
                                     "query": parse_qs(url.query), "body": body})
                status, reply = api.route(self.command, url.path, body)
                data = json.dumps(reply).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = _answer

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def route(self, method: str, path: str, body: Any) -> tuple[int, dict[str, Any]]:
        if path == f"{API}/healthz":
            return 200, {"multi_user": False}
        if path == f"{API}/experiments" and method == "GET":
            return 200, {"experiments": self.experiments, "total_size": len(self.experiments)}
        if path == f"{API}/experiments" and method == "POST":
            experiment = {**body, "experiment_id": f"exp-{len(self.experiments) + 1}"}
            self.experiments.append(experiment)
            return 200, experiment
        if path == f"{API}/runs" and method == "POST":
            return 200, {"run_id": "run-1", "display_name": body.get("display_name"),
                         "experiment_id": body.get("experiment_id"), "state": "PENDING"}
        if path == f"{API}/recurringruns" and method == "POST":
            return 200, {"recurring_run_id": "rr-1", "display_name": body.get("display_name"),
                         "experiment_id": body.get("experiment_id"), "status": "ENABLED"}
        return 404, {"error": f"no route for {method} {path}", "code": 5}

    def posted(self, path: str) -> list[dict[str, Any]]:
        return [r["body"] for r in self.requests if r["method"] == "POST" and r["path"] == f"{API}/{path}"]

    def __enter__(self) -> FakeKfpApi:
        self.thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.server.shutdown()
        self.server.server_close()
