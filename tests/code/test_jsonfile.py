"""read_json: the files steps hand each other fail with the caller's error class and the path named."""

from __future__ import annotations

from pathlib import Path

import pytest

from fashionrec.core.errors import DataError, FashionrecError, TrainingError
from fashionrec.core.files import read_json
from fashionrec.registry.gate import read_decision


def test_read_json_missing_broken_and_good(tmp_path: Path) -> None:
    path = tmp_path / "x.json"
    with pytest.raises(TrainingError, match="^run the step first$"):
        read_json(path, "run the step first", TrainingError)
    path.write_text("{not json")
    with pytest.raises(DataError, match=rf"{path}: not valid JSON"):
        read_json(path, "unused")
    path.write_text('{"a": [1, 2]}')
    assert read_json(path, "unused") == {"a": [1, 2]}


def test_callers_keep_their_messages(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="gate decision not found"):
        read_decision(tmp_path / "decision.json")
    (tmp_path / "decision.json").write_text("[")
    with pytest.raises(FashionrecError, match="decision.json: not valid JSON"):
        read_decision(tmp_path / "decision.json")
