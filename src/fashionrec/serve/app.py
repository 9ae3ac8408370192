"""The FastAPI app factory: a short assembly of the serve layer's parts.

- `config.py` (`ServeConfig`: params.yaml's `serve` section), `context.py` (what routes share),
- `routes/` (one `APIRouter` module per concern, `register_routes`), `handlers.py` (named exception
  handlers, `add_exception_handlers`), `middleware.py` (body limits, security headers, metrics),
- `lifespan.py` (first load with fallback, the watch on `bundles/current`), `admission.py` (bounded queue),
- `protocol.py` (uvicorn with a header deadline), `holder.py` / `state.py` (the bundle being served).
"""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor

from fastapi import FastAPI
from PIL import Image

from fashionrec.core.config import Params
from fashionrec.core.errors import FashionrecError
from fashionrec.serve.admission import Admission
from fashionrec.serve.config import ServeConfig
from fashionrec.serve.context import ServeContext
from fashionrec.serve.decode_pool import DecodePool
from fashionrec.serve.handlers import add_exception_handlers
from fashionrec.serve.holder import StateHolder
from fashionrec.serve.lifespan import lifespan
from fashionrec.serve.memory import tune_allocator
from fashionrec.serve.metrics import Metrics
from fashionrec.serve.middleware import MULTIPART_SLACK, add_middleware
from fashionrec.serve.routes import register_routes

__all__ = ["MULTIPART_SLACK", "ServeConfig", "configure_logging", "create_app", "serve"]
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def configure_logging(level: str = "info") -> None:
    """The library's loggers (bundle loaded, switched, refused...) to stderr at `level`, once."""
    logger = logging.getLogger("fashionrec")
    logger.setLevel(level.upper())
    if not logger.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter(LOG_FORMAT))
        logger.addHandler(handler)


def create_app(config: ServeConfig) -> FastAPI:
    """A server over `config.bundles/current` (or one pinned bundle).

    `/recommend` does its work (decode, model, search) on `config.compute_threads` threads of its own,
    behind a bounded queue (`config.queue_size`); ONNX Runtime already spreads one image over every
    core, and each request in flight holds a decoded photo and the model's activations, so more at once
    only costs memory.
    """
    if config.compute_threads < 1:
        raise FashionrecError(f"serve.compute_threads must be at least 1, got {config.compute_threads}")
    if config.decode_workers < 1 or config.decode_memory_mb < 16 or config.decode_timeout_s <= 0:
        raise FashionrecError(f"serve.decode_workers ({config.decode_workers}) must be at least 1, "
                              f"serve.decode_memory_mb ({config.decode_memory_mb}) at least 16 and "
                              f"serve.decode_timeout_s ({config.decode_timeout_s}) positive")
    configure_logging(config.log_level)
    Image.MAX_IMAGE_PIXELS = config.max_image_pixels  # Pillow's own bomb limit, set explicitly
    tune_allocator(config.malloc_mmap_threshold_kb * 1024, config.malloc_arena_max)
    holder = StateHolder(config.bundles, config.bundle, config.inventory_root, config.intra_op_threads,
                         allow_spinning=config.intra_op_spinning)
    metrics = Metrics()
    admission = Admission(config.compute_threads, config.queue_size, config.retry_after_s)
    metrics.watch(holder.stale_seconds, lambda: admission.in_flight)
    compute = ThreadPoolExecutor(config.compute_threads, thread_name_prefix="fashionrec-compute")
    decoder = DecodePool(config.decode_workers, config.decode_memory_mb, config.decode_timeout_s,
                         config.decode_limits(), config.retry_after_s)
    ctx = ServeContext(config, holder, metrics, admission, compute, decoder)

    app = FastAPI(title="fashionrec", version="1", lifespan=lifespan(ctx), docs_url=None, redoc_url=None,
                  description="Photo in, the most similar inventory items out.")
    app.state.holder = holder
    app.state.metrics = metrics
    app.state.context = ctx
    csp = register_routes(app, ctx)
    add_exception_handlers(app, metrics, config.retry_after_s)
    add_middleware(app, metrics, config.max_upload_bytes, config.body_timeout_s, csp, admission)
    return app


def serve(params: Params) -> None:
    """`fashionrec serve`: one uvicorn worker (ONNX Runtime uses the cores) on 127.0.0.1 by default, with
    a keep-alive timeout, a deadline on request headers and a cap on open connections (a JSON 503).
    uvicorn's own `limit_concurrency` is not used: it counts idle keep-alive connections and the probes,
    and answers a plain-text 503 without Retry-After; work is bounded by `/recommend`'s admission."""
    import uvicorn

    from fashionrec.serve.protocol import protocol_with_deadline

    config = ServeConfig.from_params(params)
    uvicorn.run(create_app(config), host=config.host, port=config.port, log_level=config.log_level,
                access_log=config.access_log,
                http=protocol_with_deadline(config.header_timeout_s, config.max_connections,
                                            config.retry_after_s),
                timeout_keep_alive=int(config.timeout_keep_alive_s))
