"""Filling a collection by bulk import (`index.milvus.load`), as far as it runs without a Milvus server:
milvus-lite has no import, so the server's REST import endpoint is a stand-in on loopback that does what
the server does with the request (reads the named Parquet files from the bucket folder and inserts their
rows into the real milvus-lite collection), then reports the job's progress. What is real: the sharded
deploy, the import files written in the collection's schema, pymilvus' `bulk_import` /
`get_import_progress` requests, the collection, its index, smoke test and alias. Not run here: a Milvus
server's own import, and an S3/MinIO upload (the bucket is a `file://` folder)."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import pytest
from pyarrow import fs

from fashionrec.bundle.store import current_version
from fashionrec.core.errors import DataError, IndexUnavailable, ParamsError
from fashionrec.index.milvus import IMPORT_SCHEMA_FIELDS, MilvusSettings, MilvusStore, write_import_files
from tests.milvus.test_deploy import TOKEN_ENV, milvus_params, store
from tests.serving.utils import deploy_with, free_port


@dataclass
class StandIn:
    """The import endpoint of a Milvus server, over milvus-lite: what it was asked, what it answers."""

    milvus_uri: str
    root: Path                      # the object storage: <root>/<bucket>/<key>
    bucket: str
    fail: str | None = None         # a job's failure reason, or None: import for real
    created: list[dict[str, Any]] = field(default_factory=list)
    headers: list[dict[str, str]] = field(default_factory=list)
    polls: int = 0
    rows: int = 0
    url: str = ""

    def create(self, body: dict[str, Any]) -> dict[str, Any]:
        self.created.append(body)
        if self.fail is None:
            from pymilvus import MilvusClient

            client = MilvusClient(self.milvus_uri)
            try:
                for [key] in body["files"]:
                    rows = pq.read_table(self.root / self.bucket / key).to_pylist()
                    client.insert(body["collectionName"], rows)
                    self.rows += len(rows)
                client.flush(body["collectionName"])
            finally:
                client.close()
        return {"code": 0, "data": {"jobId": "job-1"}}

    def describe(self, body: dict[str, Any]) -> dict[str, Any]:
        self.polls += 1
        assert body["jobId"] == "job-1"
        if self.fail is not None:
            return {"code": 0, "data": {"jobId": "job-1", "state": "Failed", "reason": self.fail}}
        if self.polls == 1:   # the first look: still importing
            return {"code": 0, "data": {"jobId": "job-1", "state": "Importing", "progress": 50}}
        return {"code": 0, "data": {"jobId": "job-1", "state": "Completed", "progress": 100,
                                    "importedRows": self.rows, "totalRows": self.rows}}


@contextmanager
def stand_in(milvus_uri: str, root: Path, bucket: str = "bucket",
             fail: str | None = None) -> Iterator[StandIn]:
    state = StandIn(milvus_uri=milvus_uri, root=root, bucket=bucket, fail=fail)
    (root / bucket).mkdir(parents=True, exist_ok=True)

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 - http.server's name
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            state.headers.append(dict(self.headers))
            routes = {"/v2/vectordb/jobs/import/create": state.create,
                      "/v2/vectordb/jobs/import/describe": state.describe}
            answer = json.dumps(routes[self.path](body)).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(answer)))
            self.end_headers()
            self.wfile.write(answer)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
    state.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=30)


def bulk_params(tmp_path: Path, assets, lite, rest: StandIn, prefix: str, **milvus: Any):
    """A sharded deploy of kind milvus whose collection is bulk imported (`load: auto` on a server)."""
    return milvus_params(tmp_path, assets.model_a, assets.catalog, lite.uri, prefix,
                         {"index__shard_size": 16}, backend="server",
                         bulk_import={"url": rest.url, "endpoint": f"file://{rest.root}",
                                      "bucket": rest.bucket, "rows_per_file": 15}, **milvus)


def test_sharded_deploy_bulk_imports_its_collection(tmp_path: Path, assets, lite,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(TOKEN_ENV, "root:import-token")
    with stand_in(lite.uri, tmp_path / "storage") as rest:
        result = deploy_with(bulk_params(tmp_path, assets, lite, rest, "t_bulk"))
    manifest = json.loads((Path(result.bundle) / "manifest.json").read_text())
    name = manifest["index"]["collection"]
    assert manifest["index"]["load"] == "bulk_import"
    assert current_version(tmp_path / "bundles") == result.version
    # one import job, three files of <= 15 rows named by their keys in the bucket, the token as bearer
    [request] = rest.created
    assert request["collectionName"] == name and request["dbName"] == ""
    assert request["files"] == [[f"fashionrec-import/{name}/part-{i:05d}.parquet"] for i in range(3)]
    assert rest.headers[0]["Authorization"] == "Bearer root:import-token"
    assert rest.polls == 2   # polled until the job completed
    s = store(lite.uri, "t_bulk")
    assert s.count(name) == 40 and s.alias_target("t_bulk_live") == name
    assert result.rollout["smoke"]["items"] == 40     # searched by name: the imported rows answer
    assert not list((tmp_path / "storage").rglob("*.parquet"))   # the upload is removed once imported
    assert len(list((tmp_path / "bundles" / ".shards").glob("shard-*.parquet"))) == 3   # 40 items / 16


def test_failed_import_drops_the_collection_and_activates_nothing(tmp_path: Path, assets, lite) -> None:
    with stand_in(lite.uri, tmp_path / "storage", fail="stand-in: segment quota exceeded") as rest, \
            pytest.raises(IndexUnavailable, match="import job job-1 into t_bulkfail_.* failed: stand-in: "
                                                  "segment quota exceeded"):
        deploy_with(bulk_params(tmp_path, assets, lite, rest, "t_bulkfail"))
    assert current_version(tmp_path / "bundles") is None
    assert store(lite.uri, "t_bulkfail").collections() == []
    assert not list((tmp_path / "storage").rglob("*.parquet"))


def test_bulk_import_refused_on_milvus_lite_by_name(tmp_path: Path, assets, lite) -> None:
    params = milvus_params(tmp_path, assets.model_a, assets.catalog, lite.uri, "t_bulklite",
                           load="bulk_import", bulk_import={"bucket": "bucket"})
    with pytest.raises(DataError, match="index.milvus.load: bulk_import needs a Milvus server .* the 'lite' "
                                        "backend has no bulk import"):
        deploy_with(params)
    assert current_version(tmp_path / "bundles") is None
    assert store(lite.uri, "t_bulklite").collections() == []


def test_load_method_and_storage_settings(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    def settings(**values: Any) -> MilvusSettings:
        return MilvusSettings(uri="http://milvus:19530", **values)

    assert settings().load_method() == "insert"                                   # lite: batched insert
    assert settings(backend="server").load_method() == "insert"                   # no bucket named
    assert settings(backend="server", bulk_import={"bucket": "b"}).load_method() == "bulk_import"
    assert settings(backend="server", load="insert", bulk_import={"bucket": "b"}).load_method() == "insert"
    with pytest.raises(DataError, match="index.milvus.bulk_import.bucket is not set"):
        settings(backend="server", load="bulk_import").load_method()
    with pytest.raises(ParamsError, match="index.milvus.bulk_import.prefix"):
        settings(bulk_import={"prefix": "../elsewhere"}).storage()
    s3 = settings(bulk_import={"bucket": "b", "endpoint": "http://minio:9000"}).storage()
    for env in (s3.access_key_env, s3.secret_key_env):
        monkeypatch.delenv(env, raising=False)
    with pytest.raises(DataError, match=r"\['FASHIONREC_MILVUS_S3_ACCESS_KEY', "
                                        r"'FASHIONREC_MILVUS_S3_SECRET_KEY'\] not set"):
        s3.filesystem()
    monkeypatch.setenv(s3.access_key_env, "minioadmin")
    monkeypatch.setenv(s3.secret_key_env, "minioadmin")
    assert isinstance(s3.filesystem(), fs.S3FileSystem)
    with pytest.raises(DataError, match="no such folder"):
        settings(bulk_import={"endpoint": f"file://{tmp_path}/absent"}).storage().filesystem()


def test_import_files_hold_the_collection_rows(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    embeddings = rng.normal(size=(25, 8)).astype(np.float32)
    items = [{"item_id": f"i{n}", "title": f"T{n}", "category": "shoes", "kids": n % 2 == 0,
              "attributes": ["kids"] if n % 2 == 0 else [], "image": f"{n}.jpg"} for n in range(25)]
    local = fs.SubTreeFileSystem(str(tmp_path), fs.LocalFileSystem())
    (tmp_path / "bucket").mkdir()
    paths = write_import_files(embeddings, items, local, "bucket/pre/coll", rows_per_file=10)
    assert paths == [f"bucket/pre/coll/part-{i:05d}.parquet" for i in range(3)]
    tables = [pq.read_table(tmp_path / p) for p in paths]
    assert [t.num_rows for t in tables] == [10, 10, 5]
    assert all(t.schema.names == IMPORT_SCHEMA_FIELDS for t in tables)
    rows = [r for t in tables for r in t.to_pylist()]
    assert [r["row"] for r in rows] == list(range(25))
    np.testing.assert_array_equal(np.array([r["embedding"] for r in rows], np.float32), embeddings)
    assert rows[2]["kids"] is True and json.loads(rows[2]["attributes"]) == ["kids"]
    with pytest.raises(DataError, match="25 items but 3 embeddings"):
        write_import_files(embeddings[:3], items, local, "bucket/x", rows_per_file=10)


def test_store_without_a_bucket_refuses_bulk_load(lite) -> None:
    s = MilvusStore(MilvusSettings(uri=lite.uri, backend="server", collection_prefix="t_nobucket"))
    try:
        with pytest.raises(DataError, match="bulk_import.bucket is not set"):
            s.bulk_load("t_nobucket_x", np.zeros((2, 4), np.float32), [{"item_id": "a"}, {"item_id": "b"}],
                        {})
        assert s.collections() == []
    finally:
        s.close()
