"""A real `milvus-lite server` on loopback for the milvus index kind: started and stopped by PID."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.milvus.auth_proxy import AuthProxy
from tests.serving.utils import free_port, stop


@dataclass
class LiteServer:
    """One `milvus-lite server` process over a data folder; `restart` keeps the folder (and the port)."""

    data_dir: Path
    log: Path
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen | None = None

    @property
    def uri(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 120.0) -> None:
        exe = Path(sys.executable).with_name("milvus-lite")
        fh = open(self.log, "a")  # noqa: SIM115 - owned by the process for its lifetime
        self.proc = subprocess.Popen([str(exe), "server", "--data-dir", str(self.data_dir), "--host",
                                      "127.0.0.1", "--port", str(self.port)], stdout=fh,
                                     stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:   # the port accepting connections is the event waited for
            if self.proc.poll() is not None:
                raise RuntimeError(f"milvus-lite exited ({self.proc.returncode}): "
                                   f"{self.log.read_text()[-2000:]}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                    return
            except OSError:
                time.sleep(0.2)
        stop(self.proc)
        raise TimeoutError(f"milvus-lite did not listen on {self.port} within {timeout}s")

    def stop(self) -> None:
        if self.proc is not None:
            stop(self.proc)
            self.proc = None

    def restart(self) -> None:
        self.stop()
        self.start()


@pytest.fixture(scope="session")
def milvus_lite(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiteServer]:
    folder = tmp_path_factory.mktemp("milvus_lite")
    server = LiteServer(data_dir=folder / "data", log=folder / "server.log")
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def lite(milvus_lite: LiteServer) -> LiteServer:
    """The session's server, running (a test that stopped it leaves it to this fixture to start again)."""
    if milvus_lite.proc is None or milvus_lite.proc.poll() is not None:
        milvus_lite.start()
    return milvus_lite


@dataclass(frozen=True)
class Assets:
    model_a: Path          # two different real models (different seeds): different embeddings
    model_b: Path
    catalog: Path          # 40 items, relative image paths


@pytest.fixture(scope="session")
def assets(tmp_path_factory: pytest.TempPathFactory) -> Assets:
    from tests.serving.utils import export_model, make_catalog

    base = tmp_path_factory.mktemp("milvus_assets")
    return Assets(model_a=export_model(base / "model_a", seed=1),
                  model_b=export_model(base / "model_b", seed=2),
                  catalog=make_catalog(base / "inventory", 40, seed=1))


@pytest.fixture
def guarded(lite: LiteServer) -> Iterator[AuthProxy]:
    """The session's milvus-lite behind a front that, like a server with authorization on, checks tokens."""
    proxy = AuthProxy(f"127.0.0.1:{lite.port}", token="root:right-token").start()
    try:
        yield proxy
    finally:
        proxy.stop()
