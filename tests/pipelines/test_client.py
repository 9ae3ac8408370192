"""`fashionrec kfp submit` and `fashionrec kfp schedule` against a fake KFP API server on loopback: the
requests kfp.Client sends must carry the compiled spec, params.yaml's arguments (with --set overrides)
and, for a schedule, the cron trigger."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from fashionrec.cli import main
from fashionrec.core.config import load_params
from fashionrec.kfp.client import pipeline_arguments
from tests.pipelines.fake_kfp import FakeKfpApi

ROOT = Path(__file__).resolve().parents[2]
PARAMS = str(ROOT / "params.yaml")


@pytest.fixture()
def cli(capsys, monkeypatch):
    """Run `fashionrec ARGS` in-process through the real entry point: (exit code, stdout, stderr)."""
    def run(*args: str) -> tuple[int, str, str]:
        capsys.readouterr()
        monkeypatch.setattr(sys, "argv", ["fashionrec", *args])
        try:
            main()
            code = 0
        except SystemExit as exc:
            code = exc.code or 0
        out, err = capsys.readouterr()
        return code, out, err
    return run


def check_arguments(body: dict, compiled, expected: dict) -> None:
    """The request names the compiled spec and gives every pipeline input a value of its declared type."""
    assert body["pipeline_spec"] == {"pipeline_spec": compiled.spec, "platform_spec": compiled.platform}
    sent = body["runtime_config"]["parameters"]
    declared = compiled.spec["root"]["inputDefinitions"]["parameters"]
    assert set(sent) == set(declared)
    kinds = {"STRUCT": dict, "LIST": list, "STRING": str, "NUMBER_INTEGER": int}
    for name, value in sent.items():
        assert isinstance(value, kinds[declared[name]["parameterType"]]), name
    assert sent == json.loads(json.dumps(expected))


@pytest.fixture()
def kfp_api():
    with FakeKfpApi() as api:
        yield api


def test_submit_sends_the_compiled_spec_and_params(cli, kfp_api, compiled):
    code, out, err = cli("kfp", "submit", "-p", PARAMS, "--host", kfp_api.url, "--package",
                         str(compiled.path), "--run-name", "nightly",
                         "-s", "train.models.simple_cnn.epochs=7")
    assert code == 0, err
    assert json.loads(out) == {"run_id": "run-1", "url": f"{kfp_api.url}/#/runs/details/run-1"}
    # the experiment was looked up, then created, and the run filed under it
    [experiment] = kfp_api.posted("experiments")
    assert experiment["display_name"] == compiled.params.get("kfp.experiment")
    assert not experiment.get("namespace")  # kfp.namespace null: a single-user deployment
    [body] = kfp_api.posted("runs")
    assert body["display_name"] == "nightly" and body["experiment_id"] == "exp-1"
    expected = pipeline_arguments(load_params(PARAMS, ["train.models.simple_cnn.epochs=7"]))
    check_arguments(body, compiled, expected)
    simple = next(c for c in body["runtime_config"]["parameters"]["candidates"] if c["name"] == "simple_cnn")
    assert simple["epochs"] == 7


def test_schedule_uploads_a_pipeline_version_and_schedules_it(cli, kfp_api, compiled):
    code, out, err = cli("kfp", "schedule", "-p", PARAMS, "--host", kfp_api.url, "--package",
                         str(compiled.path))
    assert code == 0, err
    assert not kfp_api.rejected  # every body fitted its kfp-server-api model
    result = json.loads(out)
    assert result["recurring_run_id"] == "rr-1" and result["experiment_id"] == "exp-1"
    # the named pipeline was created, then this spec uploaded as a version named by its hash
    name = compiled.params.get("kfp.pipeline_name")
    assert [p["display_name"] for p in kfp_api.pipelines] == [name]
    version = next(v for v in kfp_api.versions if v["pipeline_version_id"] == result["pipeline_version_id"])
    assert version["display_name"].startswith(f"{name}-") and result["version_uploaded"] is True
    assert version["pipeline_spec"] == [compiled.spec, compiled.platform]
    # the recurring run points at that version: no spec inline
    [body] = kfp_api.posted("recurringruns")
    assert "pipeline_spec" not in body
    assert body["pipeline_version_reference"] == {"pipeline_id": result["pipeline_id"],
                                                  "pipeline_version_id": result["pipeline_version_id"]}
    plan = compiled.params.section("kfp")["schedule"]
    assert body["trigger"] == {"cron_schedule": {"cron": plan["cron"]}}
    assert int(body["max_concurrency"]) == plan["max_concurrency"]
    assert body["display_name"] == plan["name"] and body["mode"] == "ENABLE" and body["no_catchup"] is True
    assert body["experiment_id"] == "exp-1"
    assert body["runtime_config"]["parameters"] == json.loads(json.dumps(pipeline_arguments(compiled.params)))

    # the same spec again: its version is reused, not uploaded twice
    code, out, err = cli("kfp", "schedule", "-p", PARAMS, "--host", kfp_api.url, "--package",
                         str(compiled.path), "--cron", "0 30 2 * * *", "--name", "nightly")
    assert code == 0, err
    again = json.loads(out)
    assert again["pipeline_version_id"] == result["pipeline_version_id"]
    assert again["version_uploaded"] is False
    assert len(kfp_api.versions) == 2 and len(kfp_api.pipelines) == 1  # upload_pipeline's own + ours
    body = kfp_api.posted("recurringruns")[-1]
    assert body["trigger"]["cron_schedule"]["cron"] == "0 30 2 * * *" and body["display_name"] == "nightly"
    assert len(kfp_api.posted("experiments")) == 1  # the experiment is found and reused


def test_fake_api_checks_bodies_against_the_server_models(kfp_api):
    """A body the real API's models would not accept is refused (so the tests above could fail)."""
    import pytest as _pytest

    from tests.pipelines.fake_kfp import check_model

    check_model({"display_name": "x", "mode": "ENABLE", "trigger": {"cron_schedule": {"cron": "0 0 3 * * 1"}},
                 "pipeline_version_reference": {"pipeline_id": "p", "pipeline_version_id": "v"}},
                "V2beta1RecurringRun")
    with _pytest.raises(ValueError, match="not in V2beta1RecurringRun"):
        check_model({"display_name": "x", "pipeline_package": "inline"}, "V2beta1RecurringRun")
    with _pytest.raises(ValueError, match="not in V2beta1CronSchedule"):
        check_model({"display_name": "x", "trigger": {"cron_schedule": {"crontab": "0 0 3 * * 1"}}},
                    "V2beta1RecurringRun")
    with _pytest.raises(ValueError):
        check_model({"display_name": "x", "mode": "SOMETIMES"}, "V2beta1RecurringRun")


def test_bad_requests_fail_clearly(cli, kfp_api, compiled, tmp_path):
    code, _, err = cli("kfp", "schedule", "-p", PARAMS, "--host", kfp_api.url, "--package",
                       str(compiled.path), "--cron", "0 3 * * 1")
    assert code == 1 and "6 fields, seconds first" in err
    code, _, err = cli("kfp", "submit", "-p", PARAMS, "--host", kfp_api.url, "--package",
                       str(tmp_path / "missing.yaml"))
    assert code == 1 and "missing.yaml: compiled pipeline not found" in err
    code, _, err = cli("kfp", "submit", "-p", PARAMS, "--package", str(compiled.path))
    assert code == 1 and "no KFP host" in err
    assert not kfp_api.posted("runs") and not kfp_api.posted("recurringruns")
