"""A bundle's item table: one plain list per column, written and read with the standard library's JSON.

Why not Parquet through pandas (format 1): a server only takes the columns as lists, and pandas + pyarrow
were ~200 MB of the serving image and ~140 ms of its imports. The deployer still hands a DataFrame in
(anything indexed by column name is taken); format-1 bundles are read through pyarrow where it is installed.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from fashionrec.bundle.format import ITEM_COLUMNS
from fashionrec.core.errors import BundleError

TEXT = ("item_id", "title", "category", "image")


@dataclass(frozen=True)
class ItemTable:
    """Row i of every column is item i (row i of the embeddings)."""

    item_id: list[str]
    title: list[str]
    category: list[str]
    kids: list[bool]
    attributes: list[list[str]]
    image: list[str]

    def __len__(self) -> int:
        return len(self.item_id)

    def __getitem__(self, column: str) -> list[Any]:
        if column not in ITEM_COLUMNS:
            raise KeyError(f"no item column {column!r}; the columns are {ITEM_COLUMNS}")
        return getattr(self, column)

    def to_dict(self) -> dict[str, list[Any]]:
        """{column: values}, in ITEM_COLUMNS order (e.g. for `pandas.DataFrame(table.to_dict())`)."""
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @classmethod
    def from_columns(cls, table: Any) -> ItemTable:
        """From anything indexed by column name (a DataFrame, a dict of lists, an ItemTable), values made
        plain Python as the server used them: text as str, kids as bool, attributes as lists of str."""
        missing = [c for c in ITEM_COLUMNS if c not in _names(table)]
        if missing:
            raise BundleError(f"item table: missing column(s) {missing}; expected {ITEM_COLUMNS}")
        text = {c: [str(v) for v in table[c]] for c in TEXT}
        kids = [bool(v) for v in table["kids"]]
        attributes = [[] if _absent(a) else [str(x) for x in a] for a in table["attributes"]]
        out = cls(kids=kids, attributes=attributes, **text)
        out.check("item table")
        return out

    def check(self, where: str) -> None:
        """Every column a list of the same length, every value of its column's type; BundleError names
        the column and the first row at fault."""
        n = len(self.item_id)
        for name, values in self.to_dict().items():
            if not isinstance(values, list):
                raise BundleError(f"{where}: column {name!r} must be a list, got {type(values).__name__}")
            if len(values) != n:
                raise BundleError(f"{where}: column {name!r} has {len(values)} rows, item_id has {n}")
        for name in TEXT:
            _check_rows(where, name, self[name], lambda v: isinstance(v, str), "a string")
        _check_rows(where, "kids", self.kids, lambda v: isinstance(v, bool), "true or false")
        _check_rows(where, "attributes", self.attributes,
                    lambda v: isinstance(v, list) and all(isinstance(x, str) for x in v), "a list of strings")


def _names(table: Any) -> list[str]:
    if isinstance(table, ItemTable):
        return list(ITEM_COLUMNS)
    return [str(c) for c in (table.columns if hasattr(table, "columns") else table)]


def _absent(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def _check_rows(where: str, column: str, values: list[Any], ok: Any, expected: str) -> None:
    for row, value in enumerate(values):
        if not ok(value):
            raise BundleError(f"{where}: column {column!r} row {row}: expected {expected}, got {value!r:.80}")


def write_items(path: Path, table: ItemTable) -> None:
    """The table as one JSON object of columns (UTF-8, compact)."""
    path.write_text(json.dumps(table.to_dict(), ensure_ascii=False, separators=(",", ":")), encoding="utf-8")


def read_items(path: Path) -> ItemTable:
    """A format-2 item table (items.json), every column and value checked."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise BundleError(f"{path}: unreadable item table ({type(exc).__name__}: {exc})") from exc
    if not isinstance(data, dict):
        raise BundleError(f"{path}: expected an object of columns {ITEM_COLUMNS}, got {type(data).__name__}")
    if missing := [c for c in ITEM_COLUMNS if c not in data]:
        raise BundleError(f"{path}: missing column(s) {missing}; expected {ITEM_COLUMNS}")
    table = ItemTable(**{c: data[c] for c in ITEM_COLUMNS})
    table.check(str(path))
    return table


def read_items_v1(path: Path) -> ItemTable:
    """A format-1 item table (items.parquet), through pyarrow when it is installed (the deployer, the
    pipeline venv); elsewhere BundleError says how to get a bundle this server reads."""
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise BundleError(
            f"{path.parent}: a format-1 bundle (its item table in {path.name}) needs pyarrow, which this "
            "server does not install: deploy the inventory again with this version (`fashionrec deploy "
            "--rebuild` writes format 2, read without it), or install the `deploy` extra") from None
    try:
        columns = pq.read_table(path).to_pydict()
    except Exception as exc:
        raise BundleError(f"{path}: unreadable item table ({type(exc).__name__}: {exc})") from exc
    return ItemTable.from_columns(columns)
