"""`fashionrec deployer`: a long-running controller that keeps serving on the `champion` alias.

Two triggers, one worker: MLflow webhooks (`model_version_alias.created` / `.deleted`, HMAC-signed) wake
it at once; a poll of the alias every `deployer.poll_interval_s` catches lost deliveries. The worker runs
one `deploy.reconcile.reconcile` at a time (the same function every other deploy path ends in). A move of
the alias it has not seen recorded is written to the champion trail (who: the webhook or the poll; when: the
event's time). A version that cannot be served is refused: serving keeps the last good bundle, the version
gets the tag `deploy.refused` with the reason, `/status` and `/metrics` show it, and it is not retried
until the alias is set again.

Webhook checks (MLflow signs `<delivery id>.<timestamp>.<body>` with HMAC-SHA256, header
`X-MLflow-Signature: v1,<base64>`): a bad or missing signature is refused (401), a timestamp outside
`max_clock_skew_s` too (401), a delivery id seen before is a replay (409). Each refusal logs one line
(delivery ids cut to 64 characters), is counted in `/metrics` and listed apart from the deploy events, so a
flood of forged deliveries cannot push the real history out of `/status`.

The HTTP face is bounded like the server's: a body over `max_body_bytes` is refused (413) from its
Content-Length before a byte is read (while streaming, when chunked), headers and body have deadlines, the
connections a limit, and a signed body nested deeper than `max_json_depth` is a 400, not a RecursionError.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import itertools
import json
import logging
import re
import threading
import time
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from starlette.requests import ClientDisconnect

from fashionrec.bundle.store import current_version, deploy_lock
from fashionrec.core.errors import BundleError, FashionrecError, WebhookRefused
from fashionrec.deploy.config import DeployConfig, DeployerConfig
from fashionrec.deploy.reconcile import mark_unservable, reconcile

log = logging.getLogger("fashionrec.deployer")
SIGNATURE_HEADER = "X-MLflow-Signature"
TIMESTAMP_HEADER = "X-MLflow-Timestamp"
DELIVERY_HEADER = "X-MLflow-Delivery-Id"
ALIAS_EVENTS = {("model_version_alias", "created"), ("model_version_alias", "deleted")}
ID_CHARS = 64        # a delivery id (and any header) is cut to this in logs, messages and /status
STRINGS = re.compile(rb'"(?:[^"\\]|\\.)*"')
BRACKETS = re.compile(rb"[\[\]{}]")


def short(value: str, limit: int = ID_CHARS) -> str:
    """A client-chosen string as it may appear in a log line: at most `limit` characters, marked when cut."""
    return value if len(value) <= limit else f"{value[:limit]}…(+{len(value) - limit} chars)"


def json_depth(body: bytes) -> int:
    """How deeply a JSON text nests arrays and objects (strings skipped), without parsing it: Python's
    parser recurses, so a deep body must be refused before it reaches `json.loads`."""
    steps = (1 if b in b"[{" else -1 for b in BRACKETS.findall(STRINGS.sub(b"", body)))
    return max(itertools.accumulate(steps, initial=0))


def sign(secret: str, delivery_id: str, timestamp: str, body: bytes) -> str:
    """MLflow's webhook signature of one delivery (`v1,<base64 HMAC-SHA256>`)."""
    content = f"{delivery_id}.{timestamp}.".encode() + body
    return "v1," + base64.b64encode(hmac.new(secret.encode(), content, hashlib.sha256).digest()).decode()


class ReplayGuard:
    """Delivery ids seen within the timestamp window (bounded): a second delivery of one is a replay."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.seen: OrderedDict[str, float] = OrderedDict()
        self.lock = threading.Lock()

    def first_time(self, delivery_id: str) -> bool:
        key = hashlib.sha256(delivery_id.encode()).hexdigest()   # 64 bytes whatever the id's length
        with self.lock:
            if key in self.seen:
                return False
            self.seen[key] = time.time()
            while len(self.seen) > self.size:
                self.seen.popitem(last=False)
            return True


def verify_delivery(headers: dict[str, str], body: bytes, secret: str | None, max_skew_s: float,
                    guard: ReplayGuard, now: float | None = None, max_depth: int = 32) -> dict[str, Any]:
    """The parsed payload of an authentic, fresh, first-seen delivery; WebhookRefused otherwise (its
    message quotes the delivery id cut to `ID_CHARS`)."""
    if not secret:
        raise WebhookRefused("webhooks are off: no secret configured (deployer.webhook_secret_env)",
                             status=503, kind="disabled")
    delivery, stamp, signature = (headers.get(h.lower(), "") for h in
                                  (DELIVERY_HEADER, TIMESTAMP_HEADER, SIGNATURE_HEADER))
    if not (delivery and stamp and signature):
        raise WebhookRefused(f"missing header(s): need {DELIVERY_HEADER}, {TIMESTAMP_HEADER}, "
                             f"{SIGNATURE_HEADER}", kind="unsigned")
    named = short(delivery)
    if not hmac.compare_digest(sign(secret, delivery, stamp, body), signature):
        raise WebhookRefused(f"delivery {named}: signature does not match (forged, or another secret)",
                             kind="forged")
    try:
        age = (now or time.time()) - int(stamp)
    except ValueError:
        raise WebhookRefused(f"delivery {named}: timestamp {short(stamp, 20)!r} is not unix seconds",
                             kind="stale") from None
    if abs(age) > max_skew_s:
        raise WebhookRefused(f"delivery {named}: timestamp {stamp} is {age:.0f} s off (window "
                             f"{max_skew_s:.0f} s): stale or replayed", kind="stale")
    if not guard.first_time(delivery):
        raise WebhookRefused(f"delivery {named}: already received (replay)", status=409, kind="replay")
    depth = json_depth(body)
    if depth > max_depth:
        raise WebhookRefused(f"delivery {named}: payload nests {depth} levels deep (deployer.max_json_depth "
                             f"{max_depth}); an MLflow event nests 2", status=400, kind="malformed")
    try:
        payload = json.loads(body)
        if not isinstance(payload, dict) or not isinstance(payload.get("data"), dict):
            raise ValueError("no 'data' object")
    except (ValueError, RecursionError) as exc:
        raise WebhookRefused(f"delivery {named}: payload is not an MLflow event ({short(str(exc), 200)})",
                             status=400, kind="malformed") from None
    return payload


@dataclass
class Trigger:
    source: str                       # startup | webhook | poll
    at: str
    version: str | None = None        # what the event said the alias points at
    delivery: str | None = None


@dataclass
class Status:
    started_at: str
    in_progress: Trigger | None = None
    live: dict[str, Any] = field(default_factory=dict)
    desired: dict[str, Any] = field(default_factory=dict)
    last: dict[str, Any] | None = None
    refused: dict[str, str] = field(default_factory=dict)
    events: deque = field(default_factory=lambda: deque(maxlen=50))
    refused_deliveries: deque = field(default_factory=lambda: deque(maxlen=20))   # apart from `events`
    refusals: dict[str, int] = field(default_factory=dict)                        # by kind, ever


class Deployer:
    """The worker, its triggers and what it reports."""

    def __init__(self, cfg: DeployConfig, dcfg: DeployerConfig) -> None:
        self.cfg, self.dcfg = cfg, dcfg
        self.guard = ReplayGuard(dcfg.replay_memory)
        self.wake = threading.Event()
        self.stopping = threading.Event()
        self.pending: deque[Trigger] = deque(maxlen=100)
        self.status = Status(started_at=_now(), refused_deliveries=deque(maxlen=dcfg.refused_memory))
        self.registry = CollectorRegistry()
        self.reconciles = Counter("fashionrec_deployer_reconciles", "Reconciles by outcome",
                                  ["outcome"], registry=self.registry)
        self.webhooks = Counter("fashionrec_deployer_webhooks", "Webhook deliveries by outcome",
                                ["outcome"], registry=self.registry)
        self.seconds = Histogram("fashionrec_deployer_reconcile_seconds", "Reconcile duration by outcome",
                                 ["outcome"], registry=self.registry,
                                 buckets=(0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 300, 1800))
        self.live = Gauge("fashionrec_deployer_live", "The live bundle (1)", ["bundle", "model_version"],
                          registry=self.registry)
        self.refused_gauge = Gauge("fashionrec_deployer_refused", "Model versions refused (1)",
                                   ["version"], registry=self.registry)
        self.thread = threading.Thread(target=self._run, name="deployer-worker", daemon=True)

    # --- triggers ---------------------------------------------------------------------------------

    def trigger(self, trig: Trigger) -> None:
        self.pending.append(trig)
        self.wake.set()

    def refuse(self, exc: WebhookRefused) -> None:
        """Count and list a refused delivery (apart from the deploy events: a flood cannot push those out)."""
        self.webhooks.labels(exc.kind).inc()
        self.status.refusals[exc.kind] = self.status.refusals.get(exc.kind, 0) + 1
        self.status.refused_deliveries.append({"at": _now(), "refusal": exc.kind, "reason": str(exc)})
        log.warning("webhook refused (%s): %s", exc.kind, exc)

    def webhook(self, headers: dict[str, str], body: bytes) -> dict[str, Any]:
        try:
            payload = verify_delivery(headers, body, self.dcfg.webhook_secret, self.dcfg.max_clock_skew_s,
                                      self.guard, max_depth=self.dcfg.max_json_depth)
        except WebhookRefused as exc:
            self.refuse(exc)
            raise
        data = payload["data"]
        key = (payload.get("entity"), payload.get("action"))
        if key not in ALIAS_EVENTS or data.get("name") != self.dcfg.registered_model \
                or data.get("alias") != self.dcfg.alias:
            self.webhooks.labels("ignored").inc()
            return {"accepted": False, "ignored": f"{key[0]}.{key[1]} {data.get('name')}@{data.get('alias')}"}
        self.webhooks.labels("accepted").inc()
        created = key[1] == "created" and data.get("version") is not None
        version = str(data.get("version")) if created else None
        delivery = short(headers.get(DELIVERY_HEADER.lower(), ""))
        self._event("webhook", action=key[1], version=version, delivery=delivery)
        log.info("webhook %s: %s@%s -> %s", delivery, data.get("name"), data.get("alias"), version)
        if version is not None:
            self.status.refused.pop(version, None)   # set again: worth another try
        self.trigger(Trigger("webhook", str(payload.get("timestamp") or _now()), version, delivery))
        return {"accepted": True, "version": version}

    # --- the worker -------------------------------------------------------------------------------

    def start(self) -> None:
        try:   # taking the deploy lock removes what a deploy that died left (no other writer is active)
            with deploy_lock(self.cfg.bundles):
                pass
        except BundleError as exc:   # a deploy is running (the CLI, a pipeline): it cleaned up on taking it
            log.info("start-up clean-up skipped: %s", exc)
        self._refresh_live()
        self.trigger(Trigger("startup", _now()))
        self.thread.start()

    def stop(self) -> None:
        self.stopping.set()
        self.wake.set()

    def _run(self) -> None:
        while not self.stopping.is_set():
            fired = self.wake.wait(timeout=self.dcfg.poll_interval_s)
            self.wake.clear()
            if self.stopping.is_set():
                return
            trig = None
            while self.pending:
                trig = self.pending.popleft()     # several events: the alias is read once, now
            self.converge(trig if fired and trig else Trigger("poll", _now()))

    def converge(self, trig: Trigger) -> None:
        """Read the alias, reconcile serving to exactly that version, then record the move in the trail
        (serving first: the trail write takes a few registry round trips); never raises."""
        from fashionrec.deploy.model import pin_model

        self.status.in_progress = trig
        started = time.perf_counter()
        outcome, version = "error", None
        try:
            try:
                pinned, desired = pin_model(self.cfg.model, self.cfg.tracking_uri)
                version = desired.rsplit("/", 1)[-1]
            except FashionrecError as exc:
                self.status.desired = {"model": self.cfg.model, "error": str(exc)}
                outcome = "no-champion"
                log.info("nothing to deploy: %s", exc)
                return
            self.status.desired = {"model_version": desired, "trigger": trig.source}
            if desired in self.status.refused and trig.source != "startup":
                outcome = "skipped-refused"
                return
            try:
                result = reconcile(self.cfg, model=pinned, reason=f"deployer ({trig.source})")
            except FashionrecError as exc:
                outcome = "refused"
                self.status.refused[desired] = str(exc)
                self.refused_gauge.labels(desired).set(1)
                self.status.last = {"outcome": "refused", "trigger": trig.source, "at": _now(),
                                    "model_version": desired, "reason": str(exc)}
                log.error("refused %s: %s; serving keeps %s", desired, exc, current_version(self.cfg.bundles))
                self._refresh_live()
                mark_unservable(self.cfg, self.dcfg.registered_model, version, str(exc))
                self._record_move(version, trig)
                return
            outcome = result.action
            self.status.refused.pop(desired, None)
            if desired in _labels(self.refused_gauge):
                self.refused_gauge.remove(desired)
            self.status.last = {"outcome": outcome, "trigger": trig.source, "at": _now(),
                                "version": result.version, "model_version": result.model_version,
                                "embedded": result.embedded, "seconds": result.seconds,
                                "missing": result.missing,
                                "missing_reasons": [f"{m['item_id']}: {m['reason']}"
                                                    for m in result.skipped[:5]]}
            self._refresh_live()
            if outcome == "incomplete":
                log.info("%s serves %s; %d catalog item(s) still missing (images unreadable), retried at the "
                         "next event or poll", result.version, result.model_version, result.missing)
            elif outcome != "unchanged":
                log.info("reconciled (%s): %s now serves %s (%s, embedded %d, %.2f s)", trig.source,
                         result.version, result.model_version, outcome, result.embedded, result.seconds)
                mark_unservable(self.cfg, self.dcfg.registered_model, version, None)
            self._record_move(version, trig)
        except Exception as exc:  # registry unreachable and the like: logged, retried at the next trigger
            self.status.last = {"outcome": "error", "trigger": trig.source, "at": _now(),
                                "reason": f"{type(exc).__name__}: {exc}"}
            log.exception("reconcile failed; retried at the next event or poll")
        finally:
            self.reconciles.labels(outcome).inc()
            self.seconds.labels(outcome).observe(time.perf_counter() - started)
            self._event("reconcile", trigger=trig.source, outcome=outcome, version=version)
            self.status.in_progress = None
            self._refresh_live()

    def _record_move(self, version: str, trig: Trigger) -> None:
        """Write an alias move this process sees first (the MLflow UI) into the champion trail."""
        from mlflow import MlflowClient

        from fashionrec.registry.mlflow_registry import record_alias_move

        by = ("mlflow (webhook: alias set outside fashionrec, e.g. the MLflow UI)" if trig.source == "webhook"
              else f"mlflow ({trig.source}: alias found moved)")
        entry = record_alias_move(MlflowClient(self.cfg.tracking_uri), self.dcfg.registered_model, version,
                                  at=trig.at, by=by, reason=f"delivery {trig.delivery}" if trig.delivery
                                  else "seen by the deployer's poll")
        if entry:
            log.info("champion trail: %s", entry)

    def _refresh_live(self) -> None:
        current = current_version(self.cfg.bundles)
        live: dict[str, Any] = {"bundle": current}
        if current is not None:
            try:
                manifest = json.loads((self.cfg.bundles / current / "manifest.json").read_text())
                live["model_version"] = manifest["model"]["version"]
            except (OSError, ValueError, KeyError):
                pass
        if live != self.status.live:
            self.live.clear()
            if current is not None:
                self.live.labels(current, str(live.get("model_version"))).set(1)
        self.status.live = live

    def _event(self, event: str, **fields: Any) -> None:
        self.status.events.append({"at": _now(), "event": event, **fields})

    def status_dict(self) -> dict[str, Any]:
        s = self.status
        return {"registered_model": self.dcfg.registered_model, "alias": self.dcfg.alias,
                "started_at": s.started_at, "webhooks": bool(self.dcfg.webhook_secret),
                "poll_interval_s": self.dcfg.poll_interval_s, "bundles": str(self.cfg.bundles),
                "live": s.live, "desired": s.desired, "in_progress": s.in_progress.__dict__ if s.in_progress
                else None, "last": s.last, "refused": s.refused, "events": list(s.events),
                "webhooks_refused": {"counts": dict(s.refusals), "recent": list(s.refused_deliveries)}}


def _labels(gauge: Gauge) -> set[str]:
    return {sample.labels.get("version") for metric in gauge.collect() for sample in metric.samples}


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


async def read_body(request: Request, max_bytes: int, timeout_s: float) -> bytes:
    """The request body, at most `max_bytes` (a larger Content-Length is refused before a byte is read;
    a chunked body when it grows past the limit) within `timeout_s`: WebhookRefused 413 / 408."""
    length = request.headers.get("content-length")
    too_large = WebhookRefused(f"request body of over {max_bytes} bytes (deployer.max_body_bytes); an MLflow "
                               "event is under 1 KB", status=413, kind="too_large")
    if length is not None and (not length.isdigit() or int(length) > max_bytes):
        raise too_large
    chunks, seen = [], 0
    try:
        async with asyncio.timeout(timeout_s):
            async for chunk in request.stream():
                seen += len(chunk)
                if seen > max_bytes:
                    raise too_large
                chunks.append(chunk)
    except TimeoutError:
        raise WebhookRefused(f"the request body did not arrive within {timeout_s:g} s "
                             "(deployer.body_timeout_s)", status=408, kind="body_timeout") from None
    return b"".join(chunks)


def create_deployer_app(deployer: Deployer) -> FastAPI:
    """The controller's HTTP face: the webhook, `/status`, `/healthz`, `/metrics`."""
    from contextlib import asynccontextmanager

    @asynccontextmanager
    async def lifespan(_: FastAPI):  # type: ignore[no-untyped-def]
        deployer.start()
        yield
        deployer.stop()

    app = FastAPI(title="fashionrec deployer", lifespan=lifespan, docs_url=None, redoc_url=None)

    @app.post("/webhooks/mlflow")
    async def mlflow_webhook(request: Request) -> Response:
        try:
            body = await read_body(request, deployer.dcfg.max_body_bytes, deployer.dcfg.body_timeout_s)
        except WebhookRefused as exc:
            deployer.refuse(exc)
            return JSONResponse({"error": exc.kind, "message": str(exc)}, status_code=exc.status,
                                headers={"Connection": "close"})
        except ClientDisconnect:
            return Response(status_code=400)   # nobody to answer
        try:
            return JSONResponse(deployer.webhook({k.lower(): v for k, v in request.headers.items()}, body))
        except WebhookRefused as exc:
            return JSONResponse({"error": exc.kind, "message": str(exc)}, status_code=exc.status)

    @app.get("/status")
    def status() -> dict[str, Any]:
        return deployer.status_dict()

    @app.get("/healthz")
    def healthz() -> JSONResponse:
        alive = deployer.thread.is_alive()
        return JSONResponse({"status": "ok" if alive else "worker stopped", "live": deployer.status.live},
                            status_code=200 if alive else 503)

    @app.get("/metrics")
    def metrics() -> Response:
        return Response(generate_latest(deployer.registry), media_type=CONTENT_TYPE_LATEST)

    return app


def run_deployer(cfg: DeployConfig, dcfg: DeployerConfig) -> None:
    """`fashionrec deployer`: serve the controller until stopped."""
    import uvicorn

    logging.basicConfig(level=dcfg.log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", force=True)
    if not dcfg.webhook_secret:
        log.warning("no webhook secret in $%s: webhooks refused, the poll (every %.0f s) alone converges",
                    dcfg.webhook_secret_env, dcfg.poll_interval_s)
    Path(cfg.bundles).mkdir(parents=True, exist_ok=True)
    uvicorn.Server(server_config(Deployer(cfg, dcfg))).run()


def server_config(deployer: Deployer, port: int | None = None) -> Any:
    """uvicorn's settings for the controller: the server's header deadline and connection cap
    (`serve.protocol`: a JSON 503, where uvicorn's `limit_concurrency` counted idle sockets) and a
    keep-alive timeout, from `deployer.*`."""
    import uvicorn

    from fashionrec.serve.protocol import protocol_with_deadline

    d = deployer.dcfg
    return uvicorn.Config(create_deployer_app(deployer), host=d.host, port=d.port if port is None else port,
                          log_level=d.log_level, access_log=False,
                          http=protocol_with_deadline(d.header_timeout_s, d.max_connections),
                          timeout_keep_alive=max(1, int(d.timeout_keep_alive_s)))
