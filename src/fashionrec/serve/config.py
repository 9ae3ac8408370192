"""The server's settings: params.yaml's `serve` section, with the defaults in one place (the fields below)."""

from __future__ import annotations

import os
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from fashionrec.core.config import Params
from fashionrec.core.settings import ServeSection, check
from fashionrec.data.images import DecodeLimits

PATHS = ("bundles", "bundle", "inventory_root", "static_dir")
MIB = 2**20


@dataclass(frozen=True)
class ServeConfig:
    bundles: Path | None
    bundle: Path | None = None             # serve this one folder only (no pointer, no watch)
    inventory_root: Path | None = None     # None: the root recorded in the bundle
    host: str = "127.0.0.1"
    port: int = 8000
    max_upload_bytes: int = 10_000_000
    max_image_pixels: int = 50_000_000     # header width x height (decompression bombs)
    max_decode_mb: int = 128               # header estimate: raster, conversion copies, JPEG coefficients
    decode_short_side: int = 512           # uploads decode reduced while their short side stays >= this
    min_image_side: int = 8                # shorter side of an upload or crop
    max_aspect_ratio: float = 20.0         # long / short side of an upload or crop
    max_k: int = 50
    default_k: int = 5
    watch_interval_s: float = 2.0
    intra_op_threads: int = 0
    intra_op_spinning: bool = False        # ONNX Runtime threads busy-wait between operators
    compute_threads: int = 2               # requests decoded, embedded and searched at once
    queue_size: int = 8                    # requests waiting for a compute thread; beyond: 503 + Retry-After
    formats: tuple[str, ...] = ("JPEG", "MPO", "PNG", "WEBP")   # accepted; others: 415 (empty: any)
    decode_workers: int = 2                # decode processes (killable, memory-capped)
    decode_memory_mb: int = 256            # each decode process's memory over its baseline (RLIMIT_DATA)
    decode_timeout_s: float = 10.0         # one decode's deadline; past it the worker is killed
    max_segments: int = 1024               # JPEG segments before the image data / PNG ancillary chunks
    max_jpeg_scans: int = 100              # JPEG scans (a progressive photo has about 10)
    retry_after_s: int = 1
    max_connections: int = 1024            # open connections (idle ones too); beyond: a JSON 503
    timeout_keep_alive_s: float = 5.0      # an idle keep-alive connection is closed after this
    header_timeout_s: float = 10.0         # a request's headers must all arrive within this
    body_timeout_s: float = 20.0           # and its body within this
    malloc_mmap_threshold_kb: int = 1024   # glibc: blocks above this are mmapped, so freed at once
    malloc_arena_max: int = 2              # glibc: at most this many heap arenas (0: glibc's default)
    admin_token: str | None = None
    admin_token_env: str = "FASHIONREC_ADMIN_TOKEN"
    static_dir: Path | None = None
    log_level: str = "info"
    access_log: bool = False

    @classmethod
    def from_params(cls, params: Params) -> ServeConfig:
        """Every field from the checked `serve` section (one line naming a bad key: unknown, wrongly typed
        or out of range, whoever built `params`); the admin token from the environment variable
        `serve.admin_token_env` names."""
        sec = check(ServeSection, params.section("serve"), "serve").model_dump()
        values: dict[str, Any] = {}
        for f in fields(cls):
            if f.name == "admin_token" or f.name not in sec:
                continue
            raw = sec[f.name]
            if f.name in PATHS:
                values[f.name] = params.path(raw) if raw else None
            elif f.name == "formats":
                values[f.name] = tuple(raw)
            else:
                values[f.name] = raw
        token = os.environ.get(str(values.get("admin_token_env", cls.admin_token_env))) or None
        return cls(**{"bundles": None, **values}, admin_token=token)

    def decode_limits(self) -> DecodeLimits:
        return DecodeLimits(max_pixels=self.max_image_pixels, max_decode_bytes=self.max_decode_mb * MIB,
                            min_side=self.min_image_side, max_aspect=self.max_aspect_ratio,
                            short_side=self.decode_short_side, formats=self.formats or None,
                            max_segments=self.max_segments, max_scans=self.max_jpeg_scans)

