"""What keeps the server's memory bounded: no training stack imported, a replaced bundle really freed.

The memory figures themselves (RSS at steady state and after a rollout) live in bench/serve.py; these
tests check the mechanisms, without timing or memory thresholds.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import threading
import time
import weakref
from dataclasses import replace
from pathlib import Path

import pytest
from deploykit import ROOT, TOKEN, write_params
from fastapi.testclient import TestClient

from fashionrec.core.config import Params
from fashionrec.core.errors import FashionrecError
from fashionrec.data.images import open_image
from fashionrec.deploy.build import build_index_bundle
from fashionrec.serve.app import ServeConfig, create_app
from fashionrec.serve.holder import StateHolder
from fashionrec.serve.memory import release_memory
from fashionrec.serve.state import ServingState

# Loaded through serving/app.py (the ASGI entry) in a fresh interpreter, one request answered, then the
# heavy packages that serving must not need are looked up in sys.modules.
SERVER_IMPORTS = """
import json, sys
from fastapi.testclient import TestClient
import serving.app
photo = open(sys.argv[1], "rb").read()
with TestClient(serving.app.app) as client:
    answer = client.post("/recommend", files={"image": ("q.jpg", photo, "image/jpeg")})
    assert answer.status_code == 200, answer.text
print(json.dumps(sorted(m for m in sys.argv[2:] if m in sys.modules)))
"""
NOT_IN_A_SERVER = ["torch", "torchvision", "mlflow", "matplotlib", "great_expectations"]


def photo(assets, item: str = "item005") -> Path:
    return Path(assets.catalog).parent / "images" / f"{item}.jpg"


def held(state: ServingState) -> list[weakref.ref]:
    """Weak references to a state and the big things it owns (model session, index)."""
    return [weakref.ref(state), weakref.ref(state.session), weakref.ref(state.index)]


def test_a_serving_process_does_not_import_the_training_stack(project: Params, assets) -> None:
    build_index_bundle(project)
    env = {**os.environ, "FASHIONREC_PARAMS": str(project.root / "params.yaml"),
           "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    out = subprocess.run([sys.executable, "-c", SERVER_IMPORTS, str(photo(assets)), *NOT_IN_A_SERVER],
                         capture_output=True, text=True, env=env, cwd=ROOT, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert json.loads(out.stdout.strip().splitlines()[-1]) == []


def test_a_switch_frees_the_previous_bundle_after_its_last_request(project: Params, assets) -> None:
    build_index_bundle(project)
    holder = StateHolder(project.path("bundles"), None, None, intra_op_threads=1)
    assert holder.reload()
    first = holder.state
    refs = held(first)
    answered: list[str] = []

    def request_in_flight(state: ServingState) -> None:
        """A request that took the first state and is still answering from it after the switch."""
        while holder.state is state:
            time.sleep(0.01)
        time.sleep(0.3)   # still busy well after the switch
        hits = state.search(state.embed([open_image(photo(assets))])[0], 5)
        answered.append(state.item_ids[hits[0].row])

    worker = threading.Thread(target=request_in_flight, args=(first,))
    del first
    worker.start()
    build_index_bundle(project, model=str(assets.model_b))
    assert holder.reload()
    assert answered == ["item005"]   # the reload waited for it...
    assert [ref() for ref in refs] == [None, None, None]   # ...and nothing else holds the old bundle
    worker.join()


def test_admin_reload_leaves_nothing_of_the_previous_bundle(project: Params, assets,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FASHIONREC_ADMIN_TOKEN", TOKEN)
    build_index_bundle(project)
    app = create_app(ServeConfig.from_params(project))
    with TestClient(app) as client:
        payload = photo(assets).read_bytes()
        before = client.post("/recommend", files={"image": ("q.jpg", payload, "image/jpeg")}).json()
        refs = held(app.state.holder.state)
        build_index_bundle(project, model=str(assets.model_b))
        reload = client.post("/admin/reload", headers={"Authorization": f"Bearer {TOKEN}"})
        assert reload.status_code == 200 and reload.json()["reloaded"] is True
        assert [ref() for ref in refs] == [None, None, None]
        after = client.post("/recommend", files={"image": ("q.jpg", payload, "image/jpeg")}).json()
        assert after["index_version"] != before["index_version"]


def test_a_state_does_not_keep_the_bundle_embeddings(project: Params) -> None:
    build_index_bundle(project)
    holder = StateHolder(project.path("bundles"), None, None, intra_op_threads=1)
    holder.reload()
    state = holder.state
    assert not hasattr(state, "bundle") and not hasattr(state, "embeddings")
    stored = state.stored_embeddings()
    assert stored.shape == (state.size, state.index.dim) and not stored.flags.writeable


def test_compute_threads_must_be_positive(tmp_path: Path, assets) -> None:
    params = write_params(tmp_path, assets.model_a, assets.catalog)
    with pytest.raises(FashionrecError, match="compute_threads"):
        create_app(replace(ServeConfig.from_params(params), compute_threads=0))


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="malloc_trim is glibc's")
def test_release_memory_trims_the_glibc_heap() -> None:
    assert release_memory() is True
