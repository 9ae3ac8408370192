"""Schemathesis against the served app's own OpenAPI schema, non-image routes: generated requests (valid
and invalid) for every operation, every response checked by Schemathesis's default checks (no server
error, a documented status code, a documented content type, a body matching its schema, ...).

Every failure found is compared with `KNOWN_GAPS` (empty: every status a route returns is declared). A
new failure fails the test, and so does a listed gap that is fixed, so the list only shrinks. The app is
its own (not the `served` fixture's), since Schemathesis runs the app's lifespan on a loop of its own.
Derandomised: the same requests on every run.
"""

from __future__ import annotations

from typing import Any

import pytest
import schemathesis
from fastapi import FastAPI
from hypothesis import HealthCheck, given, settings

from fashionrec.serve.app import create_app
from fashionrec.serve.config import ServeConfig
from tests.serving.conftest import Assets
from tests.serving.utils import deploy_with, write_params

IMAGE_ROUTES = {"/recommend", "/items/{item_id}/image"}   # uploads and files: tests/serving, reliability
EXAMPLES = 60

# (operation, Schemathesis failure, status code or content type) the app returns without declaring it:
# none (404 of an unknown item, 401/403/409 of /admin/reload and /metrics' text format are declared).
KNOWN_GAPS: set[tuple[str, str, str]] = set()


def failure_key(operation: str, failure: Any) -> tuple[str, str, str]:
    detail = getattr(failure, "status_code", None) or getattr(failure, "content_type", "")
    return operation, type(failure).__name__, str(detail).split(";")[0]


def run_operation(operation: Any, found: dict[tuple[str, str, str], str], statuses: set[int]) -> None:
    name = f"{operation.method.upper()} {operation.path}"

    @settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
              suppress_health_check=list(HealthCheck))
    @given(case=operation.as_strategy())
    def check(case: Any) -> None:
        try:
            statuses.add(case.call_and_validate().status_code)
        except BaseExceptionGroup as group:   # Schemathesis's FailureGroup: one entry per failed check
            for failure in group.exceptions:
                found.setdefault(failure_key(name, failure), str(failure)[:300])

    check()


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory, assets: Assets) -> FastAPI:
    folder = tmp_path_factory.mktemp("openapi")
    params = write_params(folder, assets.model_a, assets.catalog, serve__watch_interval_s=0)
    deploy_with(params)
    return create_app(ServeConfig.from_params(params))


def test_non_image_routes_return_only_what_their_schema_declares(app: FastAPI) -> None:
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    found: dict[tuple[str, str, str], str] = {}
    statuses: set[int] = set()
    operations = [result.ok() for result in schema.get_all_operations()]
    tested = sorted(f"{op.method.upper()} {op.path}" for op in operations if op.path not in IMAGE_ROUTES)
    assert tested == ["GET /healthz", "GET /info", "GET /items/{item_id}", "GET /metrics", "GET /readyz",
                      "POST /admin/reload"], "a new route: decide whether it belongs here"
    for operation in operations:
        if operation.path not in IMAGE_ROUTES:
            run_operation(operation, found, statuses)
    assert not [key for key in found if key[1] == "ServerError"], found
    new = {key: found[key] for key in sorted(set(found) - KNOWN_GAPS)}
    assert not new, f"responses the schema does not declare: {new}"
    fixed = sorted(KNOWN_GAPS - set(found))
    assert not fixed, f"declared now (remove from KNOWN_GAPS): {fixed}"
    assert 200 in statuses
