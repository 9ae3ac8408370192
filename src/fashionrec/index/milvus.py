"""The `milvus` index kind: a bundle's inventory in one Milvus collection, searched by name.

One collection per bundle version (`<prefix>_<version>`): the item row (primary key: the row of the
bundle's items table), item id, embedding and the scalar fields the API returns and filters on, with the
bundle version and the model's sha256 as collection properties. A collection is filled by batched inserts,
or, on a Milvus server (`index.milvus.load`), by one bulk import of Parquet files uploaded to the server's
object storage (`index.milvus.bulk_import`): milvus-lite has no bulk import. A server (a cluster, or
`milvus-lite server` on one machine) holds the vectors, so a serving replica holds only its model: the
items' fields come back from the search. Every call is bounded by `timeout_s`; every failure is an
`IndexUnavailable` naming the URI and the collection, never the token (read from the environment variable
`token_env`).

`pymilvus` is imported only here and only when the kind is used (the `milvus` extra).
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from fashionrec.core.errors import DataError, IndexUnavailable
from fashionrec.core.settings import MILVUS_LITE_TYPES, MILVUS_SERVER_TYPES
from fashionrec.index.base import NeighbourIndex, as_matrix

PK, VECTOR = "row", "embedding"
FIELDS = ["item_id", "title", "category", "kids", "attributes", "image"]   # returned with every hit
MAX_VARCHAR = 65_535
RELEASED = ("released", "not loaded")   # Milvus's words for a collection that must be loaded again
POLL_S = 0.2   # wait between looks at an index build or a load (bounded by build_timeout_s)


@dataclass(frozen=True)
class MilvusSettings:
    """`index.milvus` (core/settings.py `MilvusParams` holds the defaults and checks)."""

    uri: str | None = None            # no default server: a cluster's comes from its ConfigMap
    token_env: str = "FASHIONREC_MILVUS_TOKEN"
    db_name: str = ""
    backend: str = "lite"
    alias: str = "items_serving"
    collection_prefix: str = "fashionrec"
    index_type: str = "HNSW"
    index_params: dict[str, Any] = field(default_factory=lambda: {"M": 16, "efConstruction": 200})
    search_params: dict[str, Any] = field(default_factory=lambda: {"ef": 128})
    allowed_index_types: dict[str, list[str]] = field(default_factory=lambda: {
        "lite": list(MILVUS_LITE_TYPES), "server": list(MILVUS_SERVER_TYPES)})
    timeout_s: float = 10.0
    build_timeout_s: float = 600.0
    insert_batch: int = 1000
    exact_filter_max: int = 2000
    load: str = "auto"                # auto | insert | bulk_import (see `load_method`)
    bulk_import: dict[str, Any] = field(default_factory=dict)   # index.milvus.bulk_import (defaults there)

    @classmethod
    def from_mapping(cls, values: dict[str, Any] | None) -> MilvusSettings:
        from fashionrec.core.settings import MilvusParams, check

        return cls(**check(MilvusParams, values or {}, "index.milvus").model_dump())

    def collection(self, version: str) -> str:
        """The collection of one bundle version (Milvus names: letters, digits, underscores)."""
        return f"{self.collection_prefix}_{version.replace('-', '_')}"

    def check_index_type(self) -> None:
        """Refuse, by name, an index type this backend cannot build (milvus-lite would silently scan)."""
        allowed = self.allowed_index_types.get(self.backend) or []
        if self.index_type.upper() not in {t.upper() for t in allowed}:
            raise DataError(f"params index.milvus.index_type: {self.index_type!r} cannot be built by the "
                            f"'{self.backend}' backend (index.milvus.backend); it builds {allowed}")

    def storage(self) -> ImportStorage:
        """`index.milvus.bulk_import`, checked (core/settings.py `MilvusBulkImport` holds the defaults)."""
        from fashionrec.core.settings import MilvusBulkImport, check

        return ImportStorage(**check(MilvusBulkImport, self.bulk_import or {},
                                     "index.milvus.bulk_import").model_dump())

    def load_method(self) -> str:
        """How a collection is filled: `insert` or `bulk_import`. Refused by name: bulk_import asked for on
        milvus-lite (it has no import) or without the server's bucket."""
        if self.load == "insert":
            return "insert"
        if self.backend != "server":
            if self.load == "bulk_import":
                raise DataError(f"params index.milvus.load: bulk_import needs a Milvus server (index."
                                f"milvus.backend: server); the '{self.backend}' backend has no bulk import: "
                                "set load to insert or auto")
            return "insert"
        if not self.storage().bucket:
            if self.load == "bulk_import":
                raise DataError("params index.milvus.bulk_import.bucket is not set: name the Milvus server's "
                                "object-storage bucket (its minio.bucketName) the import files go to")
            return "insert"
        return "bulk_import"


@dataclass(frozen=True)
class ImportStorage:
    """Where bulk import files go: the Milvus server's bucket (credentials from the environment)."""

    url: str | None
    endpoint: str | None
    bucket: str | None
    prefix: str
    region: str | None
    access_key_env: str
    secret_key_env: str
    rows_per_file: int

    def filesystem(self) -> Any:
        """A pyarrow filesystem holding the bucket: S3 on the endpoint (missing credentials refused by
        name), or for `file:///DIR` that folder (the bucket a subfolder of it)."""
        from pyarrow import fs

        if self.endpoint and self.endpoint.startswith("file://"):
            root = Path(self.endpoint[len("file://"):])
            if not root.is_dir():
                raise DataError(f"index.milvus.bulk_import.endpoint {self.endpoint}: no such folder")
            return fs.SubTreeFileSystem(str(root), fs.LocalFileSystem())
        missing = [env for env in (self.access_key_env, self.secret_key_env) if not os.environ.get(env)]
        if missing:
            raise DataError(f"index.milvus.bulk_import: environment variable(s) {missing} not set: the "
                            "credentials of the Milvus server's object storage (a Secret)")
        options: dict[str, Any] = {"access_key": os.environ[self.access_key_env],
                                   "secret_key": os.environ[self.secret_key_env]}
        if self.region:
            options["region"] = self.region
        if self.endpoint:
            scheme, _, host = self.endpoint.rpartition("://")
            options.update(endpoint_override=host.rstrip("/"), scheme=scheme or "https")
        return fs.S3FileSystem(**options)


IMPORT_SCHEMA_FIELDS = [PK, VECTOR, *FIELDS]   # the columns of an import file: the collection's fields


def write_import_files(embeddings: np.ndarray, items: Sequence[dict[str, Any]], filesystem: Any, base: str,
                       rows_per_file: int) -> list[str]:
    """The collection's rows as Parquet files for a bulk import (columns: the collection's fields, row
    as primary key, attributes as JSON, as `create` inserts them), `rows_per_file` each, written to
    `base/part-NNNNN.parquet` on `filesystem` (the server's bucket). Returns the files' paths."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    data = as_matrix(embeddings, "milvus embeddings")
    if len(items) != len(data):
        raise DataError(f"milvus import files: {len(items)} items but {len(data)} embeddings")
    schema = pa.schema([(PK, pa.int64()), (VECTOR, pa.list_(pa.float32())),
                        *[(n, pa.bool_() if n == "kids" else pa.string()) for n in FIELDS]])
    if filesystem.type_name != "s3":   # a folder (file://): its directories exist before files go in
        filesystem.create_dir(base, recursive=True)
    paths = []
    for part, start in enumerate(range(0, len(data), rows_per_file)):
        stop = min(start + rows_per_file, len(data))
        scalars = [_scalar(items[i]) for i in range(start, stop)]
        columns = {PK: pa.array(np.arange(start, stop, dtype=np.int64)),
                   VECTOR: pa.array(list(data[start:stop]), type=pa.list_(pa.float32())),
                   **{n: pa.array([row[n] for row in scalars], type=schema.field(n).type) for n in FIELDS}}
        path = f"{base.rstrip('/')}/part-{part:05d}.parquet"
        pq.write_table(pa.Table.from_pydict(columns, schema=schema), path, filesystem=filesystem)
        paths.append(path)
    return paths


def bulk_api() -> tuple[Callable[..., Any], Callable[..., Any]]:
    """pymilvus's `bulk_import` and `get_import_progress` (the `pymilvus[bulk_writer]` extra)."""
    try:
        from pymilvus.bulk_writer import bulk_import, get_import_progress
    except ImportError as exc:
        raise DataError(f"index.milvus.load bulk_import needs pymilvus' bulk writer: pip install "
                        f"'fashionrec[milvus]' ({exc})") from None
    return bulk_import, get_import_progress


def _refused_credentials(exc: BaseException) -> bool:
    """Whether the server refused the token: gRPC UNAUTHENTICATED anywhere in the chain (pymilvus wraps it
    in a generic 'Fail connecting ... illegal connection params or server unavailable')."""
    seen: BaseException | None = exc
    for _ in range(8):
        if seen is None:
            return False
        code = getattr(seen, "code", None)
        name = getattr(code(), "name", "") if callable(code) else ""
        if name == "UNAUTHENTICATED" or "auth check failure" in str(seen).lower():
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def _reason(exc: BaseException, token: str, token_env: str = "") -> str:
    """What went wrong, never the token itself."""
    if _refused_credentials(exc):
        where = f"${token_env}" if token_env else "the token variable"
        return f"authentication failed: the server refused the token in {where} (wrong, expired or missing)"
    text = str(getattr(exc, "message", "") or exc) or type(exc).__name__
    return text.replace(token, "***") if token else text


class MilvusStore:
    """One connection to a Milvus server, every call bounded and its failures made `IndexUnavailable`."""

    def __init__(self, settings: MilvusSettings) -> None:
        self.settings = settings
        self._token = os.environ.get(settings.token_env, "")
        if not settings.uri:
            raise DataError("params index.milvus.uri is not set: name the Milvus server (a cluster's, e.g. "
                            "http://milvus:19530, or a local `milvus-lite server --port P`)")
        try:
            from pymilvus import MilvusClient
        except ImportError as exc:
            raise DataError("index kind 'milvus' needs pymilvus: pip install 'fashionrec[milvus]'") from exc
        try:
            # dedicated: this store's own channel, closed with it (a shared one stays broken after a
            # server restart for every client that shares it)
            self.client = MilvusClient(uri=settings.uri, token=self._token, db_name=settings.db_name,
                                       timeout=settings.timeout_s, dedicated=True)
        except Exception as exc:  # refused, unresolvable, timed out, authentication
            what = "refused the connection" if _refused_credentials(exc) else "unreachable"
            raise IndexUnavailable(f"Milvus at {settings.uri} {what}: "
                                   f"{_reason(exc, self._token, settings.token_env)}") from None

    def call(self, what: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """`fn(*args, timeout=timeout_s, **kwargs)`; any failure -> IndexUnavailable naming URI and `what`."""
        kwargs.setdefault("timeout", self.settings.timeout_s)
        try:
            return fn(*args, **kwargs)
        except Exception as exc:
            raise IndexUnavailable(f"Milvus at {self.settings.uri}: {what} failed: "
                                   f"{_reason(exc, self._token, self.settings.token_env)}") from None

    def close(self) -> None:
        with contextlib.suppress(Exception):   # closing a dead connection is not an error
            self.client.close()

    # -- building a bundle's collection ------------------------------------------------------------
    def create(self, name: str, embeddings: np.ndarray, items: Sequence[dict[str, Any]],
               properties: dict[str, str], progress: Callable[[int], None] | None = None,
               wait_built: bool = True) -> dict[str, Any]:
        """Create collection `name` (refused if it exists), insert every row in batches, wait until the
        index is built (unless `wait_built` is False: benchmarks of a bulk load) and the collection loaded;
        on any failure the half-built collection is dropped."""
        s = self.settings
        s.check_index_type()
        data = as_matrix(embeddings, "milvus embeddings")
        if len(items) != len(data):
            raise DataError(f"milvus collection {name}: {len(items)} items but {len(data)} embeddings")
        started = time.perf_counter()
        self._new_collection(name, int(data.shape[1]), properties)
        try:
            for start in range(0, len(data), s.insert_batch):
                rows = [{PK: i, VECTOR: data[i].tolist(), **_scalar(items[i])}
                        for i in range(start, min(start + s.insert_batch, len(data)))]
                self.call(f"insert into {name}", self.client.insert, name, rows)
                if progress is not None:
                    progress(len(rows))
            inserted = time.perf_counter() - started
            self.call(f"flush {name}", self.client.flush, name)
            if wait_built:
                self.wait_built(name, len(data))
            self.ensure_loaded(name, wait_s=s.build_timeout_s)
        except BaseException:
            with contextlib.suppress(IndexUnavailable):   # the server gone: nothing more to clean from here
                self.call(f"drop_collection {name}", self.client.drop_collection, name)
            raise
        return {"collection": name, "rows": len(data), "insert_seconds": round(inserted, 3),
                "ready_seconds": round(time.perf_counter() - started, 3)}

    def _new_collection(self, name: str, dim: int, properties: dict[str, str]) -> None:
        """An empty collection of the schema (refused if it exists), its index declared."""
        from pymilvus import DataType, MilvusClient

        s = self.settings
        if self.call(f"has_collection {name}", self.client.has_collection, name):
            raise DataError(f"Milvus at {s.uri}: collection {name} already exists; a bundle's collection is "
                            "written once")
        schema = MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False)
        schema.add_field(PK, DataType.INT64, is_primary=True)
        schema.add_field(VECTOR, DataType.FLOAT_VECTOR, dim=dim)
        for name_ in FIELDS:
            if name_ == "kids":
                schema.add_field(name_, DataType.BOOL)
            else:
                schema.add_field(name_, DataType.VARCHAR, max_length=MAX_VARCHAR)
        index = self.client.prepare_index_params()
        index.add_index(field_name=VECTOR, index_type=s.index_type, metric_type="L2",
                        params=dict(s.index_params))
        self.call(f"create_collection {name}", self.client.create_collection, name, schema=schema,
                  index_params=index, properties=dict(properties))

    def bulk_load(self, name: str, embeddings: np.ndarray, items: Sequence[dict[str, Any]],
                  properties: dict[str, str], filesystem: Any = None) -> dict[str, Any]:
        """Create collection `name` and fill it with one bulk import: the rows written as Parquet files to
        the server's bucket (`index.milvus.bulk_import`; `filesystem`: that bucket, default from the
        settings), imported, the index built and the collection loaded. The files are deleted afterwards;
        on any failure the half-built collection is dropped too."""
        s = self.settings
        s.check_index_type()
        storage = s.storage()
        if not storage.bucket:
            raise DataError("params index.milvus.bulk_import.bucket is not set: no bucket to import from")
        data = as_matrix(embeddings, "milvus embeddings")
        fs_ = filesystem if filesystem is not None else storage.filesystem()
        key = f"{storage.prefix}/{name}"
        started = time.perf_counter()
        self._new_collection(name, int(data.shape[1]), properties)
        try:
            try:
                paths = write_import_files(data, items, fs_, f"{storage.bucket}/{key}", storage.rows_per_file)
            except OSError as exc:
                raise IndexUnavailable(f"Milvus at {s.uri}: import files for {name} not written to bucket "
                                       f"{storage.bucket} ({storage.endpoint or 'S3'}): {exc}") from None
            files = [p.split("/", 1)[1] for p in paths]   # the bucket's keys, as the server reads them
            job = self.start_import(name, files)
            imported = self.wait_imported(name, job, len(data))
            inserted = time.perf_counter() - started
            self.wait_built(name, len(data))
            self.ensure_loaded(name, wait_s=s.build_timeout_s)
        except BaseException:
            with contextlib.suppress(IndexUnavailable):
                self.call(f"drop_collection {name}", self.client.drop_collection, name)
            raise
        finally:
            with contextlib.suppress(OSError):
                fs_.delete_dir(f"{storage.bucket}/{key}")
        return {"collection": name, "rows": len(data), "insert_seconds": round(inserted, 3),
                "ready_seconds": round(time.perf_counter() - started, 3), "import_job": job,
                "import_files": len(files), "imported_rows": imported}

    def start_import(self, name: str, files: list[str]) -> str:
        """Ask the server to import `files` (keys in its bucket, one Parquet file each) into `name`."""
        bulk_import, _ = bulk_api()
        s = self.settings
        resp = self.call(f"bulk_import into {name}", bulk_import, url=s.storage().url or s.uri,
                         collection_name=name,
                         db_name=s.db_name, files=[[f] for f in files], api_key=self._token)
        try:
            return str(resp.json()["data"]["jobId"])
        except (ValueError, KeyError, TypeError) as exc:
            raise IndexUnavailable(f"Milvus at {s.uri}: bulk_import into {name} answered no job id "
                                   f"({exc!r})") from None

    def wait_imported(self, name: str, job: str, rows: int) -> int:
        """Poll the import job until it completes (returns the rows imported); its failure, a row count
        other than `rows`, or no end within build_timeout_s is IndexUnavailable (a server-side failure)."""
        _, progress = bulk_api()
        s = self.settings
        deadline = time.monotonic() + s.build_timeout_s
        while True:
            resp = self.call(f"get_import_progress {job}", progress, url=s.storage().url or s.uri, job_id=job,
                             api_key=self._token, db_name=s.db_name)
            try:
                data = resp.json()["data"]
            except (ValueError, KeyError, TypeError) as exc:
                raise IndexUnavailable(f"Milvus at {s.uri}: import job {job} into {name}: unreadable "
                                       f"progress ({exc!r})") from None
            state = str(data.get("state", ""))
            if state == "Completed":
                imported = int(data.get("importedRows", rows))
                if imported != rows:
                    raise IndexUnavailable(f"Milvus at {s.uri}: import job {job} into {name} completed "
                                           f"with {imported} rows, {rows} sent")
                return imported
            if state == "Failed":
                raise IndexUnavailable(f"Milvus at {s.uri}: import job {job} into {name} failed: "
                                       f"{data.get('reason') or 'no reason given'}")
            if time.monotonic() > deadline:
                raise IndexUnavailable(f"Milvus at {s.uri}: import job {job} into {name} not finished within "
                                       f"index.milvus.build_timeout_s {s.build_timeout_s} (state {state}, "
                                       f"{data.get('progress')}%)")
            time.sleep(POLL_S)

    def wait_built(self, name: str, rows: int) -> None:
        deadline = time.monotonic() + self.settings.build_timeout_s
        while True:
            info = self.call(f"describe_index {name}", self.client.describe_index, name, VECTOR)
            state = str(info.get("state", ""))
            if state.lower().endswith("failed"):
                why = info.get("index_state_fail_reason", state)
                raise IndexUnavailable(f"Milvus at {self.settings.uri}: index {self.settings.index_type} of "
                                       f"{name} failed to build: {why}")
            if state.lower().endswith("finished") and int(info.get("indexed_rows", rows)) >= rows:
                return
            if time.monotonic() > deadline:
                raise IndexUnavailable(f"Milvus at {self.settings.uri}: index of {name} not built within "
                                       f"index.milvus.build_timeout_s {self.settings.build_timeout_s}: "
                                       f"{info}")
            time.sleep(POLL_S)

    def load_state(self, name: str) -> str:
        state = self.call(f"get_load_state {name}", self.client.get_load_state, name)
        return str(state.get("state", "")).rsplit(".", 1)[-1].rsplit(":", 1)[-1].strip(" <>").lower()

    def ensure_loaded(self, name: str, wait_s: float | None = None) -> None:
        """Load a collection unless it is loaded (load state is not persisted across a server restart)."""
        if self.load_state(name) == "loaded":
            return
        self.call(f"load_collection {name}", self.client.load_collection, name,
                  timeout=wait_s or self.settings.timeout_s)
        deadline = time.monotonic() + (wait_s or self.settings.timeout_s)
        while self.load_state(name) != "loaded":
            if time.monotonic() > deadline:
                raise IndexUnavailable(f"Milvus at {self.settings.uri}: collection {name} not loaded in time")
            time.sleep(POLL_S)

    def properties(self, name: str) -> dict[str, str]:
        info = self.call(f"describe_collection {name}", self.client.describe_collection, name)
        return {str(k): str(v) for k, v in (info.get("properties") or {}).items()}

    def count(self, name: str) -> int:
        rows = self.call(f"count {name}", self.client.query, name, filter="", output_fields=["count(*)"])
        return int(rows[0]["count(*)"])

    # -- the fleet alias and old collections --------------------------------------------------------
    def alias_target(self, alias: str | None = None) -> str | None:
        """The collection an alias names (any collection of the database), None when it does not exist."""
        alias = alias or self.settings.alias
        if alias not in self.call("list_aliases", self.client.list_aliases)["aliases"]:
            return None
        return str(self.call(f"describe_alias {alias}", self.client.describe_alias, alias)["collection_name"])

    def move_alias(self, name: str, alias: str | None = None) -> str | None:
        """Point the fleet alias at `name` (created on first use); returns where it pointed before."""
        alias = alias or self.settings.alias
        before = self.alias_target(alias)
        if before == name:
            return before
        if before is None:
            self.call(f"create_alias {alias} -> {name}", self.client.create_alias, name, alias)
        else:
            self.call(f"alter_alias {alias} -> {name}", self.client.alter_alias, name, alias)
        return before

    def collections(self) -> list[str]:
        prefix = f"{self.settings.collection_prefix}_"
        names = self.call("list_collections", self.client.list_collections)
        return sorted(n for n in names if n.startswith(prefix))

    def prune(self, keep: set[str]) -> list[str]:
        """Drop this prefix's collections not in `keep`, unless an alias points at one."""
        dropped = []
        for name in self.collections():
            if name in keep:
                continue
            if self.call(f"list_aliases {name}", self.client.list_aliases, name)["aliases"]:
                continue
            self.call(f"drop_collection {name}", self.client.drop_collection, name)
            dropped.append(name)
        return dropped


def _scalar(item: dict[str, Any]) -> dict[str, Any]:
    attributes = item.get("attributes")
    return {"item_id": str(item["item_id"]), "title": str(item.get("title") or ""),
            "category": str(item.get("category") or ""), "kids": bool(item.get("kids")),
            "attributes": json.dumps([str(a) for a in (attributes if attributes is not None else [])]),
            "image": str(item.get("image") or "")}


def _item(entity: dict[str, Any]) -> dict[str, Any]:
    out = {name: entity.get(name) for name in FIELDS}
    out["attributes"] = json.loads(out["attributes"] or "[]")
    return out


def filter_expression(category: str | None, kids: bool | None) -> str:
    """Milvus boolean expression of the API's filters (strings quoted as JSON: no injection)."""
    parts = []
    if category is not None:
        parts.append(f"category == {json.dumps(category)}")
    if kids is not None:
        parts.append(f"kids == {'true' if kids else 'false'}")
    return " and ".join(parts)


class MilvusIndex(NeighbourIndex):
    """Search one collection by name. Same contract as the in-process kinds (`query` -> Euclidean
    distances and item rows); `search` also returns each hit's fields and runs filters inside Milvus, exactly
    where a filter keeps at most `exact_filter_max` rows (filtered HNSW loses recall there)."""

    kind = "milvus"

    def __init__(self, embeddings: np.ndarray | None = None, collection: str = "", size: int = 0,
                 dim: int = 0, settings: MilvusSettings | None = None) -> None:
        # No super().__init__: a replica holds no embeddings; size and dim come from the bundle manifest.
        if not collection:
            raise DataError("index kind 'milvus': no collection named (bundle manifest index.params)")
        self.settings = settings or MilvusSettings()
        self.collection = collection
        if embeddings is not None:
            size, dim = as_matrix(embeddings, "index embeddings").shape
        self.size, self.dim = int(size), int(dim)
        self.last_error: str | None = None
        self._lock = threading.Lock()
        self._store: MilvusStore | None = None
        self.store()   # unreachable at load: refused now, not at the first request

    def store(self) -> MilvusStore:
        with self._lock:
            if self._store is None:
                self._store = MilvusStore(self.settings)
            return self._store

    def _guard(self, fn: Callable[[MilvusStore], Any]) -> Any:
        """Run one call; a released collection (a Milvus restart forgets load state) is loaded again once,
        a lost connection is reopened at the next call; what still fails is IndexUnavailable (a 503)."""
        try:
            try:
                out = fn(self.store())
            except IndexUnavailable as exc:
                if not any(word in str(exc).lower() for word in RELEASED):
                    raise
                self.store().ensure_loaded(self.collection, wait_s=self.settings.timeout_s)
                out = fn(self.store())
        except IndexUnavailable as exc:
            self.last_error = f"{exc} (collection {self.collection})"
            self.close()   # the next call connects again (a restarted server, a moved address)
            raise IndexUnavailable(self.last_error) from None
        self.last_error = None
        return out

    def status(self) -> dict[str, Any] | None:
        return {"engine": "milvus", "uri": self.settings.uri, "collection": self.collection,
                "last_error": self.last_error}

    def ensure_loaded(self) -> None:
        self._guard(lambda s: s.ensure_loaded(self.collection, wait_s=self.settings.build_timeout_s))

    def _query(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        hits = self._guard(lambda s: s.call(
            f"search {self.collection}", s.client.search, self.collection, data=queries.tolist(), limit=k,
            output_fields=[PK], search_params={"params": dict(self.settings.search_params)}))
        distances = np.full((len(queries), k), np.inf, np.float32)
        indices = np.full((len(queries), k), -1, np.int64)
        for q, row in enumerate(hits):
            for j, hit in enumerate(list(row)[:k]):
                indices[q, j] = int(hit[PK] if PK in hit else hit["id"])
                distances[q, j] = np.sqrt(max(float(hit["distance"]), 0.0))
        return distances, indices

    def search(self, vector: np.ndarray, k: int, expression: str = "") -> list[tuple[int, float, dict]]:
        """Top-k (row, Euclidean distance, item fields) for one embedding, filtered by `expression`."""
        query = as_matrix(vector, "index queries", dim=self.dim)
        if expression and self.settings.exact_filter_max > 0:
            n = self._guard(lambda s: s.call(f"count {self.collection}", s.client.query, self.collection,
                                             filter=expression, output_fields=["count(*)"]))
            matches = int(n[0]["count(*)"])
            if matches == 0:
                return []
            if matches <= self.settings.exact_filter_max:
                return self._exact(query[0], k, expression, matches)
        hits = self._guard(lambda s: s.call(
            f"search {self.collection}", s.client.search, self.collection, data=query.tolist(), limit=k,
            filter=expression, output_fields=[PK, *FIELDS],
            search_params={"params": dict(self.settings.search_params)}))
        return [(int(h[PK] if PK in h else h["id"]), float(np.sqrt(max(float(h["distance"]), 0.0))),
                 _item(h.get("entity") or h)) for h in list(hits[0])[:k]]

    def _exact(self, query: np.ndarray, k: int, expression: str,
               matches: int) -> list[tuple[int, float, dict]]:
        rows = self._guard(lambda s: s.call(f"query {self.collection}", s.client.query, self.collection,
                                            filter=expression, output_fields=[PK, VECTOR, *FIELDS],
                                            limit=matches))
        if not rows:
            return []
        vectors = np.asarray([r[VECTOR] for r in rows], np.float32)
        ids = np.asarray([int(r[PK]) for r in rows], np.int64)
        sq = np.maximum(((vectors - query) ** 2).sum(axis=1), 0.0)
        order = np.lexsort((ids, sq))[:k]
        return [(int(ids[i]), float(np.sqrt(sq[i])), _item(rows[i])) for i in order]

    def items(self, rows: list[int]) -> dict[int, dict[str, Any]]:
        """Fields of items by row (the /items routes and smoke tests)."""
        found = self._guard(lambda s: s.call(f"query {self.collection}", s.client.query, self.collection,
                                             ids=[int(r) for r in rows], output_fields=[PK, *FIELDS]))
        return {int(r[PK]): _item(r) for r in found}

    def row_of(self, item_id: str) -> int | None:
        found = self._guard(lambda s: s.call(f"query {self.collection}", s.client.query, self.collection,
                                             filter=f"item_id == {json.dumps(item_id)}", output_fields=[PK],
                                             limit=1))
        return int(found[0][PK]) if found else None

    def close(self) -> None:
        with self._lock:
            if self._store is not None:
                self._store.close()
                self._store = None


def item_records(columns: dict[str, list[Any]]) -> Iterator[dict[str, Any]]:
    """Column lists -> one dict per row (what `MilvusStore.create` inserts)."""
    names = list(columns)
    for values in zip(*(columns[n] for n in names), strict=True):
        yield dict(zip(names, values, strict=True))
