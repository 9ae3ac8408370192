"""What the training reliability tests (kill mid-epoch, kill a DDP rank) share: the CLI, its environment,
the run's history, and the gate's match for one epoch's metrics."""

from __future__ import annotations

import csv
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path

CLI = str(Path(sys.executable).with_name("fashionrec"))


def env(**extra: str) -> dict[str, str]:
    """The test's environment (MLFLOW_TRACKING_URI names the fixture's server), one thread for determinism."""
    return {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", **extra}


def logs_epoch(epoch: int) -> Callable[[str, str, bytes], bool]:
    """Matches MLflow's log-batch request carrying the per-epoch metrics of `epoch`."""
    def match(method: str, path: str, body: bytes) -> bool:
        if method != "POST" or not path.endswith("/runs/log-batch"):
            return False
        metrics = json.loads(body or b"{}").get("metrics", [])
        return any(m.get("key") == "val_micro_f1" and int(m.get("step", -1)) == epoch for m in metrics)
    return match


def history(root: Path) -> list[dict[str, float]]:
    with open(root / "models" / "simple_cnn" / "history.csv") as fh:
        return [{k: float(v) for k, v in row.items()} for row in csv.DictReader(fh)]
