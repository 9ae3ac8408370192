"""Reliability tests share the serving helpers (real exported models, generated inventories, real servers)."""

from __future__ import annotations

import sys
from pathlib import Path

SERVING = Path(__file__).resolve().parents[1] / "serving"
if str(SERVING) not in sys.path:
    sys.path.insert(0, str(SERVING))
