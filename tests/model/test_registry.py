"""The registry against a real MLflow server: a simple_cnn trained for one epoch on the tiny dataset,
evaluated, gated, exported and registered; aliases, manual and automatic promotion, rollback and its
trail, the champion loaded back from MLflow, and refusals (failed gate, tampered ONNX) that change nothing.

Each test registers under its own model name, so they share one server and one trained model.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import mlflow
import numpy as np
import pytest
import yaml
from mlflow import MlflowClient

from fashionrec.core.errors import GateFailed, ParityError, RegistryError
from fashionrec.core.tracking import run_tags
from fashionrec.models.base import EmbeddingModel
from fashionrec.models.store import load_model
from fashionrec.registry.export import export, parity_images
from fashionrec.registry.mlflow_registry import HISTORY_TAG, get_champion
from fashionrec.registry.steps import promote_version, register, rollback_champion, select
from fashionrec.runtime.session import create_session
from tests.model.utils import export_params, select_params, tamper


@dataclass
class Pipeline:
    root: Path
    models: Path
    decision: Path
    export: Path
    manifest: Path
    metrics: dict
    model: EmbeddingModel
    tags: dict[str, str]


@pytest.fixture(scope="module")
def pipeline(mlflow_server: str, tiny_validated, tmp_path_factory) -> Pipeline:
    """train (1 epoch) -> evaluate -> select -> export, through the project's library functions."""
    from fashionrec.evaluate.evaluate import evaluate
    from fashionrec.train.loop import train

    root = tmp_path_factory.mktemp("registry_project")
    p = tiny_validated.params
    section = p.section("train")
    section["models"]["simple_cnn"].update(epochs=1, batch_size=16)
    manifest = tiny_validated.validated / "manifest.parquet"
    train("simple_cnn", section, manifest=manifest, out_dir=root / "models/simple_cnn",
          cache_dir=root / ".cache/features", checkpoint_dir=root / ".cache/checkpoints/simple_cnn",
          tracking_params=p, seed=0)
    ev = p.section("evaluate")
    ev["instance"]["n_queries"], ev["latency_queries"] = 16, 10
    evaluate(root / "models/simple_cnn", tiny_validated.validated, root / "metrics/simple_cnn.json",
             root / "reports/evaluate/simple_cnn", ev, progress=False)
    decision = root / "reports/select/decision.json"
    gate = select_params(thresholds={"test.micro_f1": 0.0, "retrieval.precision_at_5": 0.0,
                                     "instance.top5": 0.0})
    select(root / "metrics", ["simple_cnn"], decision, gate, name="registry-select")
    export(root / "models", decision, manifest, root / "models/export", export_params())
    return Pipeline(root=root, models=root / "models", decision=decision, export=root / "models/export",
                    manifest=manifest, metrics=json.loads((root / "metrics/simple_cnn.json").read_text()),
                    model=load_model(root / "models/simple_cnn"), tags=run_tags(p, manifest))


def reg(pipe: Pipeline, name: str, promotion: str = "manual", export_dir: Path | None = None,
        decision: Path | None = None):
    params = {"name": name, "promotion": promotion, "pip_requirements": ["onnxruntime-gpu==1.31.1"],
              "execution_providers": ["CUDAExecutionProvider", "CPUExecutionProvider"]}
    return register(export_dir or pipe.export, pipe.models, decision or pipe.decision,
                    pipe.root / f"registered-{name}.json", params, tags=pipe.tags, by="tester")


def aliases(name: str) -> dict[str, str]:
    return {a: v for a, v in MlflowClient().get_registered_model(name).aliases.items()}


def test_register_manual_is_challenger_until_promoted(pipeline: Pipeline) -> None:
    result = reg(pipeline, "reg-manual")
    client = MlflowClient()
    assert result.version == "1" and result.aliases == ["challenger"] and result.promoted is None
    assert aliases("reg-manual") == {"challenger": "1"}  # no champion: a person decides
    saved = json.loads((pipeline.root / "registered-reg-manual.json").read_text())
    assert saved["uri"] == "models:/reg-manual/1" and saved["aliases"] == ["challenger"]

    tags = client.get_model_version("reg-manual", "1").tags
    assert float(tags["metric.test.micro_f1"]) == pipeline.metrics["test"]["micro_f1"]
    assert float(tags["metric.instance.top5"]) == pipeline.metrics["instance"]["top5"]
    assert tags["gate.passed"] == "true" and json.loads(tags["gate.decision"])["winner"] == "simple_cnn"
    assert tags["data_version"] == pipeline.tags["data_version"] != "unknown"
    assert tags["git_commit"] == pipeline.tags["git_commit"] and tags["candidate"] == "simple_cnn"
    assert tags["training_run_id"]

    artifacts = {f.path for f in client.list_artifacts(result.run_id, "pytorch")}
    assert {"pytorch/model.pt", "pytorch/card.json"} <= artifacts
    local = Path(mlflow.artifacts.download_artifacts("models:/reg-manual/1"))
    spec = json.loads((local / "extra_files/preprocessing.json").read_text())
    assert spec["labels"] == pipeline.model.card.labels
    requirements = (local / "requirements.txt").read_text().split()
    assert "onnxruntime-gpu==1.31.1" in requirements
    assert not any(r.startswith("onnxruntime==") or r == "onnxruntime" for r in requirements)
    flavor = yaml.safe_load((local / "MLmodel").read_text())["flavors"]["onnx"]
    assert flavor["providers"] == ["CUDAExecutionProvider", "CPUExecutionProvider"]

    change = promote_version("1", "reg-manual", by="alice", reason="looked at the grids")
    assert change.changed and change.champion == "1" and change.previous_champion is None
    assert aliases("reg-manual") == {"challenger": "1", "champion": "1"}
    again = promote_version("1", "reg-manual", by="alice", reason="twice")
    assert not again.changed and "already the champion" in again.message
    trail = json.loads(client.get_registered_model("reg-manual").tags[HISTORY_TAG])
    assert [(e["action"], e["version"], e["by"]) for e in trail] == [("promote", "1", "alice")]


def test_auto_promotion_and_champion_reproduces_pytorch(pipeline: Pipeline) -> None:
    result = reg(pipeline, "reg-auto", promotion="auto")
    assert result.aliases == ["challenger", "champion"] and result.promoted.changed
    champion = get_champion(MlflowClient(), "reg-auto")
    assert champion.version == result.version and champion.metrics["test.micro_f1"] == \
        pipeline.metrics["test"]["micro_f1"]

    queries, _ = parity_images(pipeline.manifest, export_params(), pipeline.model)
    import torch

    with torch.inference_mode():
        expected = pipeline.model(torch.from_numpy(queries.batch))[0].numpy()
    onnx_model = mlflow.onnx.load_model("models:/reg-auto@champion")
    got = create_session(onnx_model.SerializeToString()).run(queries.batch)["embedding"]
    assert np.abs(got - expected).max() <= 1e-4
    pyfunc = mlflow.pyfunc.load_model("models:/reg-auto@champion")
    out = pyfunc.predict({"image": queries.batch})
    assert np.abs(np.asarray(out["embedding"]) - expected).max() <= 1e-4


def test_rollback_walks_back_the_trail_and_stops_clearly(pipeline: Pipeline) -> None:
    name, client = "reg-roll", MlflowClient()
    for _ in range(3):
        reg(pipeline, name, promotion="auto")
    assert aliases(name) == {"champion": "3", "previous-champion": "2", "challenger": "3"}

    first = rollback_champion(name, by="bob", reason="bad reviews")
    assert (first.champion, first.previous_champion) == ("2", "1")
    assert aliases(name) == {"champion": "2", "previous-champion": "1", "challenger": "3"}
    second = rollback_champion(name, by="bob", reason="still bad")
    assert (second.champion, second.previous_champion) == ("1", None)
    assert aliases(name) == {"champion": "1", "challenger": "3"}
    assert "no earlier champion remains" in second.message
    with pytest.raises(RegistryError, match="v1 is the first recorded champion: there is no earlier"):
        rollback_champion(name, by="bob", reason="one too many")
    assert aliases(name)["champion"] == "1"

    trail = json.loads(client.get_registered_model(name).tags[HISTORY_TAG])
    assert [(e["action"], e["version"], e["previous"]) for e in trail] == [
        ("promote", "1", None), ("promote", "2", "1"), ("promote", "3", "2"),
        ("rollback", "2", "3"), ("rollback", "1", "2")]
    assert trail[-1]["by"] == "bob" and trail[-1]["reason"] == "still bad" and trail[-1]["at"]

    # Promote again, then move the alias by hand as the MLflow UI would: the trail records it.
    promote_version("3", name, by="carol", reason="fixed")
    client.set_registered_model_alias(name, "champion", "2")
    back = rollback_champion(name, by="carol", reason="undo the UI click")
    assert (back.champion, back.previous_champion) == ("3", "1")
    actions = [e["action"] for e in json.loads(client.get_registered_model(name).tags[HISTORY_TAG])]
    assert actions[-3:] == ["promote", "observed", "rollback"]


def test_promote_refuses_unknown_or_ungated_versions(pipeline: Pipeline) -> None:
    name, client = "reg-refuse", MlflowClient()
    reg(pipeline, name)
    with pytest.raises(RegistryError, match="has no version '7'"):
        promote_version("7", name, by="x", reason="typo")
    mlflow.register_model(client.get_model_version(name, "1").source, name)  # by hand: no gate decision
    with pytest.raises(RegistryError, match=r"v2 has no passed gate decision .* use --force"):
        promote_version("2", name, by="x", reason="skip the gate")
    assert "champion" not in aliases(name)
    assert promote_version("2", name, by="x", reason="hotfix", force=True).champion == "2"
    with pytest.raises(RegistryError, match="does not exist"):
        rollback_champion("no-such-model", by="x", reason="?")


def test_winner_worse_than_registered_champion_is_refused(pipeline: Pipeline, tmp_path: Path) -> None:
    name, client = "reg-champ", MlflowClient()
    reg(pipeline, name, promotion="auto")
    champ = pipeline.metrics
    weaker = json.loads(json.dumps(champ))
    weaker["test"]["micro_f1"] = champ["test"]["micro_f1"] - 0.05
    (tmp_path / "metrics").mkdir()
    (tmp_path / "metrics/simple_cnn.json").write_text(json.dumps(weaker))
    gate = select_params(thresholds={"test.micro_f1": 0.0, "retrieval.precision_at_5": 0.0,
                                     "instance.top5": 0.0}, max_regression=0.01)
    with pytest.raises(GateFailed, match=r"test.micro_f1 = .* trails champion v1"):
        select(tmp_path / "metrics", ["simple_cnn"], tmp_path / "d.json", gate, name=name)
    decision = json.loads((tmp_path / "d.json").read_text())
    assert decision["champion"]["version"] == "1"
    check = next(c for c in decision["checks"] if c["metric"] == "test.micro_f1")
    assert check["champion"] == champ["test"]["micro_f1"] and not check["passes_champion"]
    # the same metrics as the champion pass (within δ)
    (tmp_path / "metrics/simple_cnn.json").write_text(json.dumps(champ))
    assert select(tmp_path / "metrics", ["simple_cnn"], tmp_path / "d.json", gate, name=name).passed
    assert len(client.search_model_versions(f"name = '{name}'")) == 1


def test_tampered_onnx_and_failed_gate_are_refused(pipeline: Pipeline, tmp_path: Path) -> None:
    client = MlflowClient()
    bad = tmp_path / "export"
    shutil.copytree(pipeline.export, bad)
    tamper(pipeline.export / "model.onnx", bad / "model.onnx")
    with pytest.raises(ParityError, match="changed after its parity check"):
        reg(pipeline, "reg-tampered", export_dir=bad)
    # a parity report that failed is refused too, even if the file matches it
    report = json.loads((bad / "parity.json").read_text())
    (bad / "parity.json").write_text(json.dumps({**report, "passed": False, "reason": "neighbours differ"}))
    with pytest.raises(ParityError, match="its parity check failed"):
        reg(pipeline, "reg-tampered", export_dir=bad)
    failed = tmp_path / "decision.json"
    failed.write_text(json.dumps({**json.loads(pipeline.decision.read_text()), "passed": False,
                                  "reason": "too weak"}))
    with pytest.raises(GateFailed, match="nothing registered"):
        reg(pipeline, "reg-tampered", decision=failed)
    assert not client.search_registered_models("name = 'reg-tampered'")


def test_cli_promote_and_rollback(pipeline: Pipeline, mlflow_server: str, tmp_path: Path) -> None:
    reg(pipeline, "reg-cli")
    root = Path(__file__).resolve().parents[2]
    tree = yaml.safe_load((root / "params.yaml").read_text())
    tree["register"]["name"] = "reg-cli"
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(tree))
    cli = [str(Path(sys.executable).with_name("fashionrec"))]
    env = {**os.environ, "MLFLOW_TRACKING_URI": mlflow_server}

    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([*cli, *args, "-p", str(tmp_path / "params.yaml")], capture_output=True,
                              text=True, timeout=120, env=env)

    done = run("promote", "1", "--by", "dana", "--reason", "reviewed")
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    assert out["registry"]["champion"] == "1" and aliases("reg-cli")["champion"] == "1"
    assert out["deploy"].startswith("skipped: no live bundle")        # no bundles here: the deployer's job
    shown = run("history")
    assert shown.returncode == 0, shown.stderr
    assert "promote   v1 (was vNone)  by dana: reviewed" in shown.stdout
    refused = run("rollback", "--by", "dana")
    assert refused.returncode == 1 and "error: reg-cli v1 is the first recorded champion" in refused.stderr


def test_champion_lock_is_taken_when_its_holder_lets_go_during_the_create(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """MLflow's create, on a name that exists, reads that model back to word its error; a holder that
    releases the lock in between turns the expected RESOURCE_ALREADY_EXISTS into RESOURCE_DOES_NOT_EXIST
    (two concurrent CLI promotions hit this). The lock is free then: the waiter takes it, not crash."""
    import socket
    import time

    from fashionrec.registry.mlflow_registry import LOCK_SUFFIX, history_lock

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    lock = f"race{LOCK_SUFFIX}"
    client.create_registered_model(lock, tags={"holder": "other-host:1", "since": repr(time.time())})
    store_type = type(client._get_registry_client().store)
    read_back = store_type.get_registered_model
    released: list[str] = []

    def holder_releases_first(self, name: str):
        if name == lock and not released:
            released.append(name)
            client.delete_registered_model(lock)     # the other holder lets go at this very moment
        return read_back(self, name)

    monkeypatch.setattr(store_type, "get_registered_model", holder_releases_first)
    with history_lock(client, "race", wait_s=10):
        assert client.get_registered_model(lock).tags["holder"] == f"{socket.gethostname()}:{os.getpid()}"
    assert released == [lock]
    assert not [m for m in client.search_registered_models() if m.name == lock]   # released after use


def lock_client(tmp_path: Path, lock_since: str) -> tuple[MlflowClient, str]:
    """A real local MLflow store where another holder already owns the champion lock of model 'held'."""
    from fashionrec.registry.mlflow_registry import LOCK_SUFFIX

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    lock = f"held{LOCK_SUFFIX}"
    client.create_registered_model(lock, tags={"holder": "other-host:1", "since": lock_since})
    return client, lock


def count_reads(monkeypatch: pytest.MonkeyPatch, client: MlflowClient, fail_with: Exception | None = None,
                spin_limit: int = 1000) -> list[str]:
    """Wrap the client's read of a registered model: count calls, optionally always fail, and stop a loop
    that reads far more often than a sleeping retry loop could (the old code spun here forever)."""
    calls: list[str] = []
    read = client.get_registered_model

    def counted(name: str):
        calls.append(name)
        if len(calls) > spin_limit:
            raise AssertionError(f"history_lock read the lock {len(calls)} times: it spins")
        if fail_with is not None:
            raise fail_with
        return read(name)

    monkeypatch.setattr(client, "get_registered_model", counted)
    return calls


@pytest.mark.parametrize("since", ["not-a-time", "", "nan"])
def test_champion_lock_with_a_malformed_since_tag_ends_at_the_deadline_with_a_clear_error(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, since: str) -> None:
    """A lock whose `since` is not a time cannot be judged abandoned: the waiter retries (sleeping) until
    its deadline, then names the tag, the holder and the way out; it never spins against MLflow."""
    import time

    from fashionrec.registry.mlflow_registry import LOCK_RETRY_S, history_lock

    client, lock = lock_client(tmp_path, since)
    calls = count_reads(monkeypatch, client)
    wait_s = 0.5
    started = time.monotonic()
    with pytest.raises(RegistryError, match=rf"lock '{lock}' not taken in 0.5 s: .*tag since='{since}' "
                                            r"\(holder other-host:1\) is not a time.*delete"), \
            history_lock(client, "held", wait_s=wait_s):
        pytest.fail("the lock was taken from its holder")
    assert time.monotonic() - started < 30 * wait_s + 30      # generous: the deadline, not a hang
    assert 1 <= len(calls) <= wait_s / LOCK_RETRY_S[0] + 2      # each retry slept: no spin
    assert client.get_registered_model(lock).tags["holder"] == "other-host:1"   # left to its holder


def test_champion_lock_with_a_persistent_read_error_ends_at_the_deadline_with_a_clear_error(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """MLflow refuses every read of the lock (here: the client's read patched to fail in-process): the
    waiter retries, sleeping, until its deadline and then reports the read error it kept getting."""
    import time

    from mlflow.exceptions import MlflowException
    from mlflow.protos.databricks_pb2 import INTERNAL_ERROR

    from fashionrec.registry.mlflow_registry import LOCK_RETRY_S, history_lock

    client, lock = lock_client(tmp_path, repr(time.time()))
    calls = count_reads(monkeypatch, client, MlflowException("database is locked", error_code=INTERNAL_ERROR))
    wait_s = 0.5
    started = time.monotonic()
    with pytest.raises(RegistryError, match=rf"lock '{lock}' not taken in 0.5 s: its holder cannot be read "
                                            r"\(INTERNAL_ERROR: database is locked\)"), \
            history_lock(client, "held", wait_s=wait_s):
        pytest.fail("the lock was taken from its holder")
    assert time.monotonic() - started < 30 * wait_s + 30
    assert 1 <= len(calls) <= wait_s / LOCK_RETRY_S[0] + 2
    assert set(calls) == {lock}


def test_champion_lock_of_a_dead_holder_is_broken_and_taken(tmp_path: Path) -> None:
    import socket
    import time

    from fashionrec.registry.mlflow_registry import LOCK_TTL_S, history_lock

    client, lock = lock_client(tmp_path, repr(time.time() - LOCK_TTL_S - 5))
    with history_lock(client, "held", wait_s=30):
        assert client.get_registered_model(lock).tags["holder"] == f"{socket.gethostname()}:{os.getpid()}"
    assert not [m for m in client.search_registered_models() if m.name == lock]
