"""`kill -9` a `fashionrec train` process mid-run: `--resume` finishes it, and the result matches an
uninterrupted run (same history and weights within float tolerance), logged into the same MLflow run.

"Mid-run" is an event the test controls, not a guess at how long an epoch takes: the run talks to MLflow
through a gated proxy (tests/gate.py) that holds the request logging epoch KILL_AT's metrics. The process is
then blocked after training that epoch and before its checkpoint, and is killed there.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch
import yaml
from mlflow.tracking import MlflowClient

from tests.gate import GatedServer
from tests.reliability.training import CLI, env, history, logs_epoch

EPOCHS = 8
KILL_AT = 3          # the epoch whose metrics log is held: checkpoints 1..KILL_AT-1 exist then


def project(tiny_validated, root: Path) -> Path:
    """A params.yaml under root: the tiny dataset's params, simple_cnn for EPOCHS epochs."""
    tree = yaml.safe_load((tiny_validated.root / "params.yaml").read_text())
    tree["train"].update(manifest=str(tiny_validated.validated / "manifest.parquet"), models_dir="models",
                         cache_dir=".cache/features", checkpoints_dir=".cache/checkpoints", device="cpu")
    tree["train"]["models"]["simple_cnn"].update(epochs=EPOCHS, size=64, batch_size=2, patience=100)
    root.mkdir(parents=True, exist_ok=True)
    (root / "params.yaml").write_text(yaml.safe_dump(tree, sort_keys=False))
    return root / "params.yaml"


def train_cmd(params: Path, *extra: str) -> list[str]:
    return [CLI, "train", "simple_cnn", "-p", str(params), *extra]





def test_kill_9_mid_training_then_resume_matches_an_uninterrupted_run(tiny_validated, mlflow_server: str,
                                                                      tmp_path: Path) -> None:
    whole_params = project(tiny_validated, tmp_path / "whole")
    split_params = project(tiny_validated, tmp_path / "split")
    t0 = time.monotonic()
    subprocess.run(train_cmd(whole_params), check=True, capture_output=True, env=env(), timeout=300,
                   cwd=whole_params.parent)
    print(f"uninterrupted run: {time.monotonic() - t0:.1f} s")

    last = tmp_path / "split" / ".cache" / "checkpoints" / "simple_cnn" / "last.pt"
    with GatedServer(upstream=mlflow_server) as proxy:
        proxy.gate.arm(logs_epoch(KILL_AT))
        proc = subprocess.Popen(train_cmd(split_params), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                env=env(MLFLOW_TRACKING_URI=proxy.url), cwd=split_params.parent,
                                start_new_session=True)
        try:
            proxy.gate.wait_arrived(timeout=600)    # epoch KILL_AT trained, its checkpoint not yet written
            assert proc.poll() is None, "the run must be blocked on the held request"
            os.killpg(proc.pid, signal.SIGKILL)
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    killed_at = torch.load(last, weights_only=False)
    assert killed_at["epoch"] == KILL_AT - 1
    assert not (tmp_path / "split" / "models" / "simple_cnn" / "model.pt").exists()
    client = MlflowClient(tracking_uri=mlflow_server)
    assert client.get_run(killed_at["run_id"]).info.status == "RUNNING"   # nobody could end it

    done = subprocess.run(train_cmd(split_params, "--resume"), capture_output=True, text=True, env=env(),
                          timeout=300, cwd=split_params.parent)
    assert done.returncode == 0, done.stderr[-2000:]

    a, b = history(tmp_path / "whole"), history(tmp_path / "split")
    assert [r["epoch"] for r in a] == [r["epoch"] for r in b] == list(range(1, EPOCHS + 1))
    for ra, rb in zip(a, b, strict=True):
        for key in ra:
            assert ra[key] == pytest.approx(rb[key], rel=1e-5, abs=1e-6), (key, ra, rb)
    wa, wb = (torch.load(tmp_path / name / "models/simple_cnn/model.pt", weights_only=True)["state_dict"]
              for name in ("whole", "split"))
    assert wa.keys() == wb.keys()
    for key in wa:
        assert torch.allclose(wa[key].float(), wb[key].float(), rtol=1e-4, atol=1e-6), key
    run = client.get_run(killed_at["run_id"])
    assert run.info.status == "FINISHED"
    steps = sorted({m.step for m in client.get_metric_history(run.info.run_id, "val_micro_f1")})
    assert steps == list(range(1, EPOCHS + 1))
