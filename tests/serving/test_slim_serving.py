"""The serving path needs only what the default serving image installs (issue 23): a bundle's item table is
JSON and its BallTree NumPy, so a server answers with pandas, pyarrow, scikit-learn, SciPy and Faiss all
absent; a bundle whose index kind needs a missing library is refused naming the kind and the extra, while
the bundle serving keeps serving; and format-1 bundles (items.parquet) are read where pyarrow is installed
and refused with what to do where it is not."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from fashionrec.bundle.format import ITEMS, ITEMS_V1, MANIFEST, SUMS
from fashionrec.bundle.items import ItemTable, read_items
from fashionrec.bundle.load import load_bundle
from fashionrec.bundle.store import current_version, set_current
from fashionrec.core.errors import BundleError
from fashionrec.core.files import sha256_file
from fashionrec.serve.app import ServeConfig, create_app
from fashionrec.serve.state import load_state
from tests.serving.utils import ROOT, TOKEN, deploy_with, write_params

LEFT_OUT = ("pandas", "pyarrow", "sklearn", "scipy", "faiss")

# Run in a fresh interpreter where importing any of LEFT_OUT fails (None in sys.modules: Python's own
# "not importable"), as in the serving image: one request through the whole app, then what got imported.
SERVE_WITHOUT = """
import json, sys
LEFT_OUT = {left_out!r}
for name in LEFT_OUT:
    sys.modules[name] = None
from fastapi.testclient import TestClient
from fashionrec.core.config import load_params
from fashionrec.serve.app import ServeConfig, create_app
photo = open(sys.argv[2], "rb").read()
with TestClient(create_app(ServeConfig.from_params(load_params(sys.argv[1])))) as client:
    resp = client.post("/recommend", files={{"image": ("q.jpg", photo, "image/jpeg")}})
loaded = sorted(m for m, mod in sys.modules.items() if mod is not None and m.split(".")[0] in LEFT_OUT)
print(json.dumps({{"status": resp.status_code, "answer": resp.json(), "loaded": loaded}}))
"""


def photo(assets, item: str = "item001") -> Path:
    return Path(assets.catalog).parent / "images" / f"{item}.jpg"


def test_a_balltree_bundle_is_served_without_pandas_pyarrow_sklearn_scipy_or_faiss(tmp_path, assets) -> None:
    params = write_params(tmp_path, assets.model_a, assets.catalog, serve__watch_interval_s=0,
                          index__kind="balltree")
    built = deploy_with(params)
    assert sorted(p.name for p in Path(built.bundle).iterdir() if p.suffix in (".json", ".parquet")) == \
        sorted(["items.json", "manifest.json", "preprocessing.json"])
    script = SERVE_WITHOUT.format(left_out=LEFT_OUT)
    proc = subprocess.run([sys.executable, "-c", script, str(params.root / "params.yaml"),
                           str(photo(assets))], capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["status"] == 200, out
    assert out["answer"]["index_version"] == built.version and len(out["answer"]["items"]) == 5
    assert out["answer"]["items"][0]["item_id"] == "item001" and out["answer"]["items"][0]["score"] > 0.999
    assert out["loaded"] == []


def test_a_bundle_whose_kind_lacks_its_library_is_refused_by_name_and_the_old_one_keeps_serving(
        tmp_path, assets, monkeypatch: pytest.MonkeyPatch) -> None:
    params = write_params(tmp_path, assets.model_a, assets.catalog, serve__watch_interval_s=0)
    first = deploy_with(params)                                      # balltree: needs NumPy only
    hnsw = deploy_with(write_params(tmp_path, assets.model_a, assets.catalog, serve__watch_interval_s=0,
                                    index__kind="hnsw"), activate=False)
    assert json.loads((Path(hnsw.bundle) / MANIFEST).read_text())["index"]["kind"] == "hnsw"
    monkeypatch.setenv("FASHIONREC_ADMIN_TOKEN", TOKEN)
    with TestClient(create_app(ServeConfig.from_params(params))) as client:
        assert client.get("/readyz").json()["index_version"] == first.version
        monkeypatch.setitem(sys.modules, "faiss", None)              # as in an image without the extra
        set_current(params.path("bundles"), hnsw.version)
        resp = client.post("/admin/reload", headers={"Authorization": f"Bearer {TOKEN}"})
        assert resp.status_code == 409, resp.text
        message = resp.json()["message"]
        assert "index kind 'hnsw'" in message and "`hnsw` extra" in message and "fashionrec[hnsw]" in message
        health = client.get("/healthz").json()
        assert health["index_version"] == first.version and "`hnsw` extra" in health["last_error"]
        upload = {"image": ("q.jpg", photo(assets).read_bytes(), "image/jpeg")}
        answer = client.post("/recommend", files=upload)
        assert answer.status_code == 200 and answer.json()["index_version"] == first.version
        assert current_version(params.path("bundles")) == hnsw.version   # refused, not rolled back by us
        monkeypatch.delitem(sys.modules, "faiss")                     # the extra installed: it loads
        resp = client.post("/admin/reload?force=true", headers={"Authorization": f"Bearer {TOKEN}"})
        assert resp.status_code == 200 and resp.json()["index_version"] == hnsw.version


def as_format_1(folder: Path, out: Path) -> Path:
    """A copy of a format-2 bundle as format 1 wrote it: the item table in items.parquet."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    shutil.copytree(folder, out)
    for path in out.iterdir():
        path.chmod(0o644)
    table = read_items(out / ITEMS)
    pq.write_table(pa.table(table.to_dict()), out / ITEMS_V1)
    (out / ITEMS).unlink()
    manifest = json.loads((out / MANIFEST).read_text())
    manifest["format"] = 1
    manifest["files"].pop(ITEMS)
    manifest["files"][ITEMS_V1] = {"sha256": sha256_file(out / ITEMS_V1),
                                   "bytes": (out / ITEMS_V1).stat().st_size}
    (out / MANIFEST).write_text(json.dumps(manifest))
    (out / SUMS).write_text("".join(f"{sha256_file(p)}  {p.name}\n" for p in sorted(out.iterdir())
                                    if p.name != SUMS))
    return out


def test_a_format_1_bundle_is_read_with_pyarrow_and_refused_clearly_without(
        tmp_path, assets, monkeypatch: pytest.MonkeyPatch) -> None:
    params = write_params(tmp_path, assets.model_a, assets.catalog)
    new = Path(deploy_with(params, activate=False).bundle)
    old = as_format_1(new, tmp_path / "old" / new.name)
    assert load_bundle(old).items == load_bundle(new).items            # every column, every value
    state = load_state(old)
    assert state.item_ids == load_bundle(new).items.item_id and state.kids.dtype == bool
    monkeypatch.setitem(sys.modules, "pyarrow", None)
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)
    with pytest.raises(BundleError, match=r"format-1 bundle .*items\.parquet.* needs pyarrow.*--rebuild"):
        load_bundle(old)
    assert len(load_bundle(new).items) == 40                           # format 2 needs no pyarrow


def test_the_next_deploy_rebuilds_a_live_format_1_bundle_as_format_2(tmp_path, assets) -> None:
    """An upgrade: the live bundle matches model, inventory and settings but is format 1, which the new
    serving image cannot read; the deploy builds it again as format 2 instead of calling it unchanged."""
    params = write_params(tmp_path, assets.model_a, assets.catalog)
    first = deploy_with(params)
    folder = Path(first.bundle)
    old = as_format_1(folder, tmp_path / "old")
    shutil.rmtree(folder)
    old.rename(folder)
    assert json.loads((folder / MANIFEST).read_text())["format"] == 1
    again = deploy_with(params)
    assert again.action == "built" and again.version != first.version
    assert json.loads((Path(again.bundle) / MANIFEST).read_text())["format"] == 2
    assert current_version(params.path("bundles")) == again.version
    assert deploy_with(params).action == "unchanged"                   # and format 2 matches


def valid_table(rows: int = 40) -> dict[str, list]:
    return {"item_id": [f"i{i}" for i in range(rows)], "title": [f"T {i}" for i in range(rows)],
            "category": ["shoes"] * rows, "kids": [i % 2 == 0 for i in range(rows)],
            "attributes": [["kids"] if i % 2 == 0 else [] for i in range(rows)],
            "image": [f"images/i{i}.jpg" for i in range(rows)]}


@pytest.mark.parametrize(("edit", "words"), [
    (lambda t: t.pop("kids"), "missing column(s) ['kids']"),
    (lambda t: t["kids"].__setitem__(3, "yes"), "column 'kids' row 3: expected true or false, got 'yes'"),
    (lambda t: t["attributes"].__setitem__(5, "kids"),
     "column 'attributes' row 5: expected a list of strings"),
    (lambda t: t["title"].pop(), "column 'title' has 39 rows, item_id has 40"),
    (lambda t: t["item_id"].__setitem__(0, 7), "column 'item_id' row 0: expected a string, got 7"),
])
def test_a_malformed_item_table_is_refused_naming_the_file_column_and_row(tmp_path, edit, words) -> None:
    path = tmp_path / "items.json"
    table = valid_table()
    path.write_text(json.dumps(table))
    assert len(read_items(path)) == 40
    edit(table)
    path.write_text(json.dumps(table))
    with pytest.raises(BundleError) as err:
        read_items(path)
    assert str(path) in str(err.value) and words in str(err.value)


def test_the_item_table_takes_a_dataframe_and_keeps_plain_values() -> None:
    import pandas as pd

    frame = pd.DataFrame({"item_id": ["a", "b"], "title": ["A", "B"], "category": ["shoes", "dress"],
                          "kids": [True, False], "attributes": [["kids", "red"], None],
                          "image": ["a.jpg", "b.jpg"], "extra": [1, 2]})
    table = ItemTable.from_columns(frame)
    assert table.to_dict() == {"item_id": ["a", "b"], "title": ["A", "B"], "category": ["shoes", "dress"],
                               "kids": [True, False], "attributes": [["kids", "red"], []],
                               "image": ["a.jpg", "b.jpg"]}
    assert type(table.kids[0]) is bool and len(table) == 2
    with pytest.raises(KeyError, match="no item column 'extra'"):
        table["extra"]
