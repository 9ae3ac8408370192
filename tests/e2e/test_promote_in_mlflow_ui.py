"""A promotion in the MLflow UI reaches every server, through the deployer, under traffic.

The tests share one stack (conftest.py) and run in order: UI promotion, UI move back, bad events,
concurrent CLI promotions, `kill -9` of the deployer mid-build, and the poll alone (webhooks off).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import signal
import time
import uuid
from pathlib import Path

import httpx
import pytest

from fashionrec.bundle.format import verify_bundle
from fashionrec.bundle.store import current_version, list_versions
from fashionrec.data.images import open_image
from fashionrec.serve.state import load_state
from tests.e2e.utils import CHROMIUM, NAME, SECRET, Stack

pytestmark = pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="chromium not installed (make browser)")


def move_alias_in_ui(page, stack: Stack, version: str) -> float:
    """Open the version's page in the MLflow UI and give it the `champion` alias by clicking, as a data
    scientist would; returns the monotonic time of the click on Save."""
    from playwright.sync_api import expect

    page.goto(f"{stack.mlflow_uri}/#/models/{NAME}/versions/{version}")
    page.locator('button[data-component-id*="modelversionviewaliaseditor"]').click()
    dialog = page.get_by_role("dialog")
    box = dialog.get_by_role("combobox")
    box.click()
    box.fill("champion")
    page.keyboard.press("Enter")
    expect(dialog).to_contain_text("champion")
    dialog.get_by_role("button", name="Save aliases").click()
    clicked = time.monotonic()
    expect(dialog).to_be_hidden()
    return clicked


def model(stack: Stack, key: str) -> str:
    return f"{NAME}/{stack.versions[key]}"


def alias(stack: Stack) -> str:
    return str(stack.client.get_model_version_by_alias(NAME, "champion").version)


def trail(stack: Stack) -> list[dict]:
    return json.loads(stack.client.get_registered_model(NAME).tags.get("champion_history", "[]"))


def live_model(stack: Stack) -> str:
    current = current_version(stack.bundles)
    return json.loads((stack.bundles / current / "manifest.json").read_text())["model"]["version"]


def wait_status(stack: Stack, check, timeout: float = 120) -> dict:
    deadline = time.monotonic() + timeout
    status = {}
    while time.monotonic() < deadline:
        status = stack.status()
        if check(status):
            return status
        time.sleep(0.1)
    raise AssertionError(f"deployer status never matched: {json.dumps(status)[:3000]}")


def signed(body: bytes, delivery: str | None = None, stamp: int | None = None,
           secret: str = SECRET) -> dict[str, str]:
    delivery = delivery or str(uuid.uuid4())
    stamp_s = str(stamp if stamp is not None else int(time.time()))
    digest = hmac.new(secret.encode(), f"{delivery}.{stamp_s}.".encode() + body, hashlib.sha256).digest()
    return {"Content-Type": "application/json", "X-MLflow-Delivery-Id": delivery,
            "X-MLflow-Timestamp": stamp_s, "X-MLflow-Signature": "v1," + base64.b64encode(digest).decode()}


def assert_stream_clean(stack: Stack) -> None:
    """0 failed requests, and every answer is exactly what its bundle gives: no version mixing."""
    seen = list(stack.stream.seen)
    assert not stack.stream.failures, stack.stream.failures[:5]
    assert [s for s in seen if s[2] != 200] == []
    expected: dict[str, tuple[str, list[str]]] = {}
    for _, _, _, model_version, index_version, ids in seen:
        if index_version not in expected:
            state = load_state(stack.bundles / index_version)
            hits = state.search(state.embed([open_image(stack.query)])[0], 5)
            expected[index_version] = (state.model_version, [state.item_ids[h.row] for h in hits])
        assert (model_version, ids) == expected[index_version], (model_version, index_version, ids)


def test_ui_promotion_reaches_every_server(stack: Stack, page) -> None:
    stack.stream.wait_all(model(stack, "a"), timeout=120, since=time.monotonic())
    before = list_versions(stack.bundles)
    clicked = move_alias_in_ui(page, stack, stack.versions["b"])
    took = stack.stream.wait_all(model(stack, "b"), timeout=300, since=clicked)   # figure: bench/promote.py
    assert alias(stack) == stack.versions["b"]
    status = wait_status(stack, lambda s: s["in_progress"] is None and s["last"]["trigger"] == "webhook")
    assert status["last"]["outcome"] == "built", status["last"]
    assert len(list_versions(stack.bundles)) == len(before) + 1
    entry = trail(stack)[-1]
    assert (entry["action"], entry["version"], entry["previous"]) == ("promote", stack.versions["b"],
                                                                     stack.versions["a"])
    assert "webhook" in entry["by"]
    page.goto(f"{stack.mlflow_uri}/#/models/{NAME}")           # the trail is visible on the model page
    from playwright.sync_api import expect
    expect(page.get_by_text("champion_history").first).to_be_visible()
    assert_stream_clean(stack)
    print(f"UI promotion of a new version: every server on it {took:.2f} s after the click")


def test_ui_move_back_restores_the_kept_bundle(stack: Stack, page) -> None:
    before = list_versions(stack.bundles)
    first_bundle = before[0]
    clicked = move_alias_in_ui(page, stack, stack.versions["a"])
    took = stack.stream.wait_all(model(stack, "a"), timeout=120, since=clicked)
    assert current_version(stack.bundles) == first_bundle
    assert list_versions(stack.bundles) == before                # nothing built
    status = wait_status(stack, lambda s: s["last"]["outcome"] != "built" and not s["in_progress"],
                         timeout=120)
    assert (status["last"]["outcome"], status["last"]["embedded"]) == ("restored", 0), status["last"]
    entry = trail(stack)[-1]
    assert (entry["action"], entry["version"]) == ("rollback", stack.versions["a"])
    latest = [stack.stream.latest(i) for i in range(3)]
    assert {e[4] for e in latest} == {first_bundle}
    assert_stream_clean(stack)
    print(f"UI move back to a bundled version: every server on it {took:.2f} s after the click")


def test_bad_events_are_refused_and_serving_is_unchanged(stack: Stack) -> None:
    served = current_version(stack.bundles)
    hook = f"{stack.deployer_url}/webhooks/mlflow"
    body = json.dumps({"entity": "model_version_alias", "action": "created", "timestamp": "now",
                       "data": {"name": NAME, "alias": "champion", "version": stack.versions["a"]}}).encode()
    with httpx.Client(timeout=30) as http:
        forged = http.post(hook, content=body, headers=signed(body, secret="not-the-secret"))
        assert forged.status_code == 401 and forged.json()["error"] == "forged"
        stale = http.post(hook, content=body, headers=signed(body, stamp=int(time.time()) - 3600))
        assert stale.status_code == 401 and stale.json()["error"] == "stale"
        headers = signed(body)
        assert http.post(hook, content=body, headers=headers).status_code == 200
        replay = http.post(hook, content=body, headers=headers)
        assert replay.status_code == 409 and replay.json()["error"] == "replay"
        metrics = http.get(f"{stack.deployer_url}/metrics").text
    for kind in ("forged", "stale", "replay"):
        assert f'fashionrec_deployer_webhooks_total{{outcome="{kind}"}} 1.0' in metrics
    log = stack.deployer_log.read_text()
    assert "webhook refused (forged)" in log and "webhook refused (stale)" in log
    assert "webhook refused (replay)" in log

    for key, words in (("missing", "artifacts missing"), ("noisy", "model and embeddings disagree")):
        bundles_before = list_versions(stack.bundles)
        stack.client.set_registered_model_alias(NAME, "champion", stack.versions[key])
        status = wait_status(stack, lambda s, k=key: model(stack, k) in s["refused"] and not s["in_progress"])
        assert words in status["refused"][model(stack, key)]
        assert status["last"]["outcome"] == "refused"
        tag = stack.client.get_model_version(NAME, stack.versions[key]).tags.get("deploy.refused", "")
        assert words in tag
        assert current_version(stack.bundles) == served and list_versions(stack.bundles) == bundles_before
        assert f"refused {model(stack, key)}" in stack.deployer_log.read_text()
        metrics = httpx.get(f"{stack.deployer_url}/metrics").text
        assert f'fashionrec_deployer_refused{{version="{model(stack, key)}"}} 1.0' in metrics
        assert {stack.stream.latest(i)[4] for i in range(3)} == {served}
    stack.client.set_registered_model_alias(NAME, "champion", stack.versions["a"])
    wait_status(stack, lambda s: s["desired"].get("model_version") == model(stack, "a")
                and s["in_progress"] is None)
    assert current_version(stack.bundles) == served
    assert_stream_clean(stack)


def test_two_concurrent_cli_promotions_are_both_in_the_trail(stack: Stack) -> None:
    before = trail(stack)
    delivered = stack.webhooks("accepted") + stack.webhooks("ignored")
    procs = [stack.cli("promote", stack.versions[key], "--by", who, "--reason", f"{who} wants {key}")
             for key, who in (("b", "alice"), ("a_again", "bob"))]
    outs = [p.communicate(timeout=300) for p in procs]
    for p, (_, err) in zip(procs, outs, strict=True):
        assert p.returncode == 0, err[-3000:]
    after = trail(stack)
    new = after[len(before):]
    assert sorted(e["by"] for e in new) == ["alice", "bob"], new
    assert [e["action"] for e in new] == ["promote", "promote"]
    assert new[1]["previous"] == new[0]["version"]               # in order: the second saw the first
    assert alias(stack) == new[-1]["version"]
    winner = f"{NAME}/{new[-1]['version']}"
    stack.stream.wait_all(winner, timeout=300, since=time.monotonic())
    assert live_model(stack) == winner
    wait_status(stack, lambda s: stack.webhooks("accepted") + stack.webhooks("ignored") >= delivered + 2
                and s["in_progress"] is None, timeout=120)     # both promotions' webhooks arrived...
    assert trail(stack) == after                                 # ...and added nothing
    assert_stream_clean(stack)


def test_kill_9_mid_build_then_restart_converges(stack: Stack) -> None:
    served = current_version(stack.bundles)
    deployer = stack.procs["deployer"]
    stack.images.gate.arm(lambda method, path, body: method == "GET" and "/images/" in path)
    stack.client.set_registered_model_alias(NAME, "champion", stack.versions["held"])
    stack.images.gate.wait_arrived(timeout=120)                 # the deployer is embedding the inventory
    assert deployer.poll() is None
    assert stack.status()["in_progress"] is not None
    os.killpg(deployer.pid, signal.SIGKILL)
    deployer.wait(timeout=30)
    stack.images.gate.release(drop=True)                       # the killed build's request goes nowhere
    assert current_version(stack.bundles) == served            # nothing half-written went live
    for version in list_versions(stack.bundles):
        assert json.loads((stack.bundles / version / "manifest.json").read_text())["model"]["version"] \
            != model(stack, "held"), "the killed build must not have finished"
    killed = time.monotonic()
    stack.stream.wait_answered(since=killed, timeout=60)        # every server answered after the kill...
    assert {stack.stream.latest(i)[4] for i in range(3)} == {served}   # ...from the bundle it served before
    stack.start_deployer("deployer.poll_interval_s=2")          # restarted (also: the next test's poll)
    stack.stream.wait_all(model(stack, "held"), timeout=300, since=time.monotonic())
    current = current_version(stack.bundles)
    assert verify_bundle(stack.bundles / current)["model"]["version"] == model(stack, "held")
    status = stack.status()
    assert status["last"]["trigger"] == "startup" and status["last"]["outcome"] == "built"
    leftovers = [p.name for p in stack.bundles.iterdir() if p.name.startswith((".tmp-", ".current-"))]
    assert leftovers == []
    assert_stream_clean(stack)


def test_webhooks_off_the_poll_alone_converges(stack: Stack) -> None:
    stack.client.delete_webhook(stack.webhook_id)
    time.sleep(1.5)                                              # the server's webhook cache (TTL 1 s here)
    received = sum(e["event"] == "webhook" for e in stack.status()["events"])
    target = stack.versions["b"]                                 # bundled before: restored
    moved = time.monotonic()
    stack.client.set_registered_model_alias(NAME, "champion", target)
    took = stack.stream.wait_all(model(stack, "b"), timeout=120, since=moved)   # the poll's interval is 2 s
    status = wait_status(stack, lambda s: not s["in_progress"])
    acted = [e for e in status["events"] if e["event"] == "reconcile" and e["outcome"] != "unchanged"]
    assert (acted[-1]["trigger"], acted[-1]["outcome"]) == ("poll", "restored"), acted[-3:]
    assert sum(e["event"] == "webhook" for e in status["events"]) == received
    entry = trail(stack)[-1]
    assert entry["version"] == target and "poll" in entry["by"]
    assert_stream_clean(stack)
    print(f"poll only (interval 2 s): every server on the bundled version {took:.2f} s after the move")
