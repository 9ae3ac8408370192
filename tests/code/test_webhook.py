"""The deployer's webhook check, byte for byte as MLflow signs (`mlflow.webhooks.delivery`)."""

from __future__ import annotations

import json
import time

import pytest

from fashionrec.core.errors import WebhookRefused
from fashionrec.deploy.deployer import ReplayGuard, sign, verify_delivery

SECRET = "s3cret"
BODY = json.dumps({"entity": "model_version_alias", "action": "created", "timestamp": "t",
                   "data": {"name": "fashionrec", "alias": "champion", "version": "3"}}).encode()


def headers(delivery: str = "d-1", stamp: int | None = None, secret: str = SECRET,
            body: bytes = BODY) -> dict:
    stamp_s = str(int(time.time()) if stamp is None else stamp)
    return {"x-mlflow-delivery-id": delivery, "x-mlflow-timestamp": stamp_s,
            "x-mlflow-signature": sign(secret, delivery, stamp_s, body)}


def test_our_signature_is_mlflows() -> None:
    from mlflow.webhooks.delivery import _generate_hmac_signature

    assert sign(SECRET, "d", "123", BODY) == _generate_hmac_signature(SECRET, "d", "123", BODY.decode())


def test_an_authentic_fresh_delivery_is_accepted_once() -> None:
    guard = ReplayGuard(10)
    payload = verify_delivery(headers(), BODY, SECRET, 300, guard)
    assert payload["data"]["version"] == "3"
    with pytest.raises(WebhookRefused, match="replay") as err:
        verify_delivery(headers(), BODY, SECRET, 300, guard)
    assert err.value.status == 409


@pytest.mark.parametrize(("make", "kind"), [
    (lambda: (headers(secret="other"), BODY), "forged"),
    (lambda: (headers(), BODY.replace(b'"3"', b'"4"')), "forged"),          # body changed after signing
    (lambda: (headers(stamp=int(time.time()) - 301), BODY), "stale"),
    (lambda: (headers(stamp=int(time.time()) + 3600), BODY), "stale"),
    (lambda: ({k: v for k, v in headers().items() if k != "x-mlflow-signature"}, BODY), "unsigned"),
])
def test_bad_deliveries_are_refused_with_their_reason(make, kind: str) -> None:
    hdrs, body = make()
    with pytest.raises(WebhookRefused) as err:
        verify_delivery(hdrs, body, SECRET, 300, ReplayGuard(10))
    assert err.value.kind == kind and err.value.status == 401


def test_without_a_secret_webhooks_are_off() -> None:
    with pytest.raises(WebhookRefused, match="no secret") as err:
        verify_delivery(headers(), BODY, None, 300, ReplayGuard(10))
    assert err.value.status == 503


def test_replay_memory_is_bounded() -> None:
    guard = ReplayGuard(2)
    assert all(guard.first_time(d) for d in ("a", "b", "c"))
    assert not guard.first_time("c") and guard.first_time("a")       # "a" was forgotten
