"""A stand-in for the KFP API server on loopback: records every request kfp.Client sends and answers the
few endpoints `submit` and `schedule` use, as the v2beta1 REST API does (experiments, runs, recurring
runs, pipelines and their versions with multipart uploads, healthz).

Every JSON body is checked against the `kfp-server-api` model of its endpoint (the OpenAPI-generated
classes the real server's API is described by): an unknown field, a wrong type or an invalid enum value is
answered 400, so the client call fails the test. The tests compare the recorded bodies with the spec."""

from __future__ import annotations

import email.parser
import email.policy
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlparse

API = "/apis/v2beta1"
BODY_MODELS = {f"{API}/experiments": "V2beta1Experiment", f"{API}/runs": "V2beta1Run",
               f"{API}/recurringruns": "V2beta1RecurringRun"}


class _Reply:
    def __init__(self, data: Any) -> None:
        self.data = json.dumps(data)


def check_model(data: Any, model: str, where: str = "body") -> None:
    """Raise ValueError unless `data` (JSON) fits kfp_server_api model `model`: known fields only, each of
    its declared type (nested models recursively), enum values valid (the generated setters check)."""
    import kfp_server_api
    from kfp_server_api import models

    cls = getattr(models, model, None)
    if cls is not None and hasattr(cls, "allowable_values"):  # an enum
        if data not in cls.allowable_values:
            raise ValueError(f"{where}: {data!r} is not one of {model} {cls.allowable_values}")
        return
    if cls is None or not hasattr(cls, "attribute_map"):  # primitives: the deserializer checks
        kfp_server_api.ApiClient().deserialize(_Reply(data), model)
        return
    if not isinstance(data, dict):
        raise ValueError(f"{where}: expected an object for {model}, got {type(data).__name__}")
    by_json = {v: k for k, v in cls.attribute_map.items()}
    unknown = sorted(set(data) - set(by_json))
    if unknown:
        raise ValueError(f"{where}: fields {unknown} are not in {model}")
    for key, value in data.items():
        kind = cls.openapi_types[by_json[key]]
        if value is None or kind in ("object", "dict(str, object)", "str", "int", "bool", "float",
                                     "datetime"):
            continue
        if kind.startswith("list[") and isinstance(value, list):
            for i, item in enumerate(value):
                check_model(item, kind[5:-1], f"{where}.{key}[{i}]")
        elif kind.startswith(("V2beta1", "Protobuf", "Googlerpc")) or kind[0].isupper():
            check_model(value, kind, f"{where}.{key}")
    kfp_server_api.ApiClient().deserialize(_Reply(data), model)  # types and enum values


class FakeKfpApi:
    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self.rejected: list[str] = []
        self.experiments: list[dict[str, Any]] = []
        self.pipelines: list[dict[str, Any]] = []
        self.versions: list[dict[str, Any]] = []
        api = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:  # quiet
                pass

            def _answer(self) -> None:
                url = urlparse(self.path)
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                kind = self.headers.get("Content-Type") or ""
                body = multipart(kind, raw) if kind.startswith("multipart/") else (json.loads(raw) if raw
                                                                                    else None)
                query = {k: v[0] for k, v in parse_qs(url.query).items()}
                api.requests.append({"method": self.command, "path": url.path, "query": query, "body": body})
                model = BODY_MODELS.get(url.path) if self.command == "POST" else None
                try:
                    if model:
                        check_model(body, model)
                    status, reply = api.route(self.command, url.path, body, query)
                except ValueError as exc:
                    api.rejected.append(str(exc))
                    status, reply = 400, {"error": str(exc), "code": 3}
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

    def route(self, method: str, path: str, body: Any, query: dict[str, str]) -> tuple[int, dict[str, Any]]:
        if path == f"{API}/pipelines" and method == "GET":
            wanted = [p["stringValue"] for p in json.loads(query.get("filter", "{}")).get("predicates", [])]
            found = [p for p in self.pipelines if not wanted or p["display_name"] in wanted]
            return 200, {"pipelines": found, "total_size": len(found)}
        if path == f"{API}/pipelines/upload" and method == "POST":
            pipeline = {"pipeline_id": f"p-{len(self.pipelines) + 1}", "display_name": query["name"]}
            self.pipelines.append(pipeline)
            self.add_version(pipeline["pipeline_id"], query["name"], body)
            return 200, pipeline
        if path == f"{API}/pipelines/upload_version" and method == "POST":
            return 200, self.add_version(query["pipelineid"], query["name"], body)
        if path.startswith(f"{API}/pipelines/") and path.endswith("/versions") and method == "GET":
            pid = path.split("/")[-2]
            wanted = [p["stringValue"] for p in json.loads(query.get("filter", "{}")).get("predicates", [])]
            found = [{k: v for k, v in ver.items() if k != "pipeline_spec"} for ver in self.versions
                     if ver["pipeline_id"] == pid and (not wanted or ver["display_name"] in wanted)]
            return 200, {"pipeline_versions": found, "total_size": len(found)}
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

    def add_version(self, pipeline_id: str, name: str, files: dict[str, bytes]) -> dict[str, Any]:
        import yaml

        spec = list(yaml.safe_load_all(files["uploadfile"]))
        version = {"pipeline_id": pipeline_id, "pipeline_version_id": f"v-{len(self.versions) + 1}",
                   "display_name": name, "pipeline_spec": spec}
        self.versions.append(version)
        return {k: v for k, v in version.items() if k != "pipeline_spec"}

    def posted(self, path: str) -> list[dict[str, Any]]:
        return [r["body"] for r in self.requests if r["method"] == "POST" and r["path"] == f"{API}/{path}"]

    def __enter__(self) -> FakeKfpApi:
        self.thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.server.shutdown()
        self.server.server_close()


def multipart(content_type: str, raw: bytes) -> dict[str, bytes]:
    """The parts of a multipart/form-data body by field name (kfp uploads the package as `uploadfile`)."""
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
        f"Content-Type: {content_type}\r\n\r\n".encode() + raw)
    return {part.get_param("name", header="content-disposition"): part.get_payload(decode=True)
            for part in message.iter_parts()}
