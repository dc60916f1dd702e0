"""Webhooks, uploads and the guarded outbound client: signatures, retries, redirects, the SSRF matrix."""

from __future__ import annotations

import json
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest
from standardwebhooks.webhooks import Webhook

from daguerre.api.keys import digest, key_id
from daguerre.jobs.delivery import derived_webhook_secret
from tests.conftest import inference_task

KEY = "dg_delivery_key"


def task(**kw):
    return inference_task(**{"steps": 1, **kw})


class Receiver:
    """A local HTTP receiver: answers each request with the next scripted status, records everything."""

    def __init__(self, statuses):
        self.statuses = list(statuses)
        self.requests: list[tuple[str, str, dict, bytes]] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def _any(self):
                body = self.rfile.read(int(self.headers.get("content-length", 0)))
                outer.requests.append((self.command, self.path, dict(self.headers), body))
                status = outer.statuses.pop(0) if outer.statuses else 200
                self.send_response(status)
                if 300 <= status < 400:
                    self.send_header("Location", f"http://127.0.0.1:{outer.port}/redirected")
                self.send_header("Content-Length", "0")
                self.end_headers()

            do_POST = do_PUT = do_GET = _any

            def log_message(self, *a):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def url(self, path="/hook"):
        return f"http://127.0.0.1:{self.port}{path}"

    def wait(self, n, timeout=60):
        deadline = time.time() + timeout
        while len(self.requests) < n and time.time() < deadline:
            time.sleep(0.05)
        return self.requests

    def close(self):
        self.server.shutdown()


@pytest.fixture(scope="module")
def srv(make_server):
    with make_server(api_keys=[KEY], outbound_allow_loopback=True, webhook_retry_schedule=[0.2, 0.4]) as s:
        yield s


def post(srv, tasks):
    return httpx.post(srv.url, json=tasks, headers={"Authorization": f"Bearer {KEY}"}, timeout=120)


def test_webhook_per_result_signed_and_retried_with_the_same_id(srv):
    rx = Receiver([500, 502])  # the first two deliveries fail and are retried
    try:
        t = task(numberResults=2, seed=4, webhookURL=rx.url(), deliveryMethod="async")
        assert post(srv, [t]).status_code == 200
        reqs = rx.wait(4)
        time.sleep(0.8)  # no further retries once each result got its 200
        assert len(rx.requests) == 4  # one webhook per result, plus two retries
        secret = derived_webhook_secret(srv.services.secret, key_id(digest(KEY)))
        by_id: dict[str, list[bytes]] = {}
        seeds = {}
        for method, _path, headers, body in reqs:
            assert method == "POST"
            payload = Webhook(secret).verify(body, {k.lower(): v for k, v in headers.items()})
            [item] = payload["data"]
            assert item["taskUUID"] == t["taskUUID"] and "error" not in item and item["imageURL"]
            by_id.setdefault(headers["webhook-id"], []).append(body)
            seeds[headers["webhook-id"]] = item["seed"]
        assert len(by_id) == 2 and sorted(seeds.values()) == [4, 5]
        for bodies in by_id.values():  # a retry re-sends the same message under the same webhook-id
            assert len(set(bodies)) == 1
    finally:
        rx.close()


def test_webhook_redirect_is_not_followed(srv):
    rx = Receiver([302, 302, 302])
    try:
        assert post(srv, [task(webhookURL=rx.url(), deliveryMethod="async")]).status_code == 200
        rx.wait(3)
        time.sleep(0.8)
        paths = [path for _m, path, _h, _b in rx.requests]
        assert paths == ["/hook"] * 3, paths  # tried, retried twice on 3xx, never sent to /redirected
    finally:
        rx.close()


def test_upload_endpoint_puts_the_image_and_stops_on_4xx(srv):
    rx = Receiver([503, 200])
    try:
        assert post(srv, [task(uploadEndpoint=rx.url("/put"), outputFormat="PNG")]).status_code == 200
        reqs = rx.wait(2)
        assert [r[0] for r in reqs] == ["PUT", "PUT"] and reqs[1][3].startswith(b"\x89PNG")
    finally:
        rx.close()
    rx = Receiver([403, 200])
    try:
        post(srv, [task(uploadEndpoint=rx.url("/put"))])
        rx.wait(1)
        time.sleep(1.0)
        assert len(rx.requests) == 1, "a 4xx upload answer is final"
    finally:
        rx.close()


def test_webhook_carries_job_errors(srv, monkeypatch):
    """A job that fails while running (here: its model file vanished after submission) is reported to the
    webhook. Unknown models are refused at submission, so the failure is injected into the engine."""
    from daguerre.errors import ModelNotFoundError

    def vanished(*a, **kw):
        raise ModelNotFoundError("model path /models/gone does not exist", parameter="model")

    monkeypatch.setattr(srv.services.worker.engine, "generate", vanished)
    rx = Receiver([])
    try:
        t = task(webhookURL=rx.url(), deliveryMethod="async")
        assert post(srv, [t]).status_code == 200
        [(_m, _p, headers, body)] = rx.wait(1)
        [err] = json.loads(body)["errors"]
        assert err["code"] == "modelNotFound" and err["taskUUID"] == t["taskUUID"]
        secret = derived_webhook_secret(srv.services.secret, key_id(digest(KEY)))
        Webhook(secret).verify(body, {k.lower(): v for k, v in headers.items()})
    finally:
        rx.close()


def _tiny_png() -> str:
    import base64
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (64, 64), (1, 2, 3)).save(buf, "PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def test_url_image_input_is_fetched_with_redirects(srv):
    import base64

    png = base64.b64decode(_tiny_png().split(",", 1)[1])

    class Img(BaseHTTPRequestHandler):
        def do_GET(self):
            if self.path == "/start":
                self.send_response(302)
                self.send_header("Location", "/img.png")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.send_response(200)
            self.send_header("Content-Type", "image/png")
            self.send_header("Content-Length", str(len(png)))
            self.end_headers()
            self.wfile.write(png)

        def log_message(self, *a):
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Img)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{httpd.server_address[1]}/start"
        r = post(srv, [task(seedImage=url, strength=0.5)])
        assert r.status_code == 200, r.text
    finally:
        httpd.shutdown()


# ---- SSRF: with loopback NOT allowed, nothing may reach a loopback listener.

SSRF_URLS = [
    "http://{ip}:{port}/",
    "http://2130706433:{port}/",
    "http://0x7f000001:{port}/",
    "http://017700000001:{port}/",
    "http://0x7f.1:{port}/",
    "http://127.1:{port}/",
    "http://[::ffff:127.0.0.1]:{port}/",
    "http://localhost:{port}/",
    "http://[::1]:{port}/",
    "http://169.254.169.254/latest/meta-data/",
    "http://100.64.0.1/",
    "http://[64:ff9b::7f00:1]:{port}/",
    "http://[2002:7f00:1::]:{port}/",
    "file:///etc/passwd",
    "gopher://127.0.0.1:{port}/_x",
    "http://user:pw@127.0.0.1:{port}/",
    "http://127.0.0.1:{port}@example.com/",
    "http://example.com@127.0.0.1:{port}/",
    "http://10.0.0.1/",
    "http://0.0.0.0:{port}/",
    "ftp://127.0.0.1/",
]


@pytest.fixture(scope="module")
def listener():
    """A loopback TCP listener that counts every connection it accepts."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(50)
    sock.settimeout(0.2)
    state = {"accepted": 0, "stop": False}

    def loop():
        while not state["stop"]:
            try:
                conn, _ = sock.accept()
                state["accepted"] += 1
                conn.close()
            except OSError:
                continue

    th = threading.Thread(target=loop, daemon=True)
    th.start()
    yield sock.getsockname()[1], state
    state["stop"] = True
    th.join(2)
    sock.close()


@pytest.fixture(scope="module")
def strict(make_server):
    with make_server(api_keys=[KEY]) as s:  # outbound_allow_loopback stays False
        yield s


@pytest.mark.parametrize("field", ["webhookURL", "uploadEndpoint", "seedImage"])
def test_ssrf_matrix_is_refused_with_zero_connections(strict, listener, field):
    port, state = listener
    before = state["accepted"]
    for template in SSRF_URLS:
        url = template.format(ip="127.0.0.1", port=port)
        extra = {"strength": 0.5} if field == "seedImage" else {}
        r = post(strict, [task(**{field: url}, **extra)])
        assert r.status_code == 400, (url, r.text)
        [err] = r.json()["errors"]
        assert err["parameter"] == field and err["code"] in ("invalidURL", "invalidParameter", "invalidImage"), err
    time.sleep(0.3)
    assert state["accepted"] == before, "a request reached the loopback listener"


def test_redirect_to_loopback_is_refused(strict, listener):
    """A public-looking first hop cannot be simulated offline; the redirect rule is checked on the client."""
    from daguerre.jobs.outbound import OutboundClient, OutboundError, OutboundPolicy

    port, state = listener
    rx = Receiver([302])
    try:
        # Loopback allowed for the first hop only by making a client that allows it, then a strict one
        # is asked to follow: each hop is checked by the same rules, so the strict one refuses at hop 1.
        lenient = OutboundClient(OutboundPolicy(allow_loopback=True))
        resp = lenient.request("GET", rx.url("/x"), parameter="seedImage", max_redirects=0)
        assert resp.status == 302 and "127.0.0.1" in resp.headers["location"]
        with pytest.raises(OutboundError):
            OutboundClient().request("GET", resp.headers["location"], parameter="seedImage", max_redirects=3)
    finally:
        rx.close()
    assert state["accepted"] == 0


# ---- The outbox: retries survive their sender, and each send goes out once.


def _sender(tmp_path, **kw):
    from daguerre.jobs.delivery import DeliveryService
    from daguerre.jobs.outbound import OutboundClient, OutboundPolicy
    from daguerre.jobs.outbox import SQLiteOutbox
    from daguerre.storage import LocalResultStore

    return DeliveryService(outbox=SQLiteOutbox(tmp_path / "jobs.sqlite3"), results=LocalResultStore(tmp_path / "img"),
                           outbound=OutboundClient(OutboundPolicy(allow_loopback=True)), server_secret=b"s" * 32,
                           poll_s=0.1, **kw)  # fmt: skip


def test_a_retry_owed_when_its_sender_stops_is_sent_once_by_another_process(tmp_path):
    """Sender A's first try fails; A stops (a restart) before the retry is due: sender B (another process on the
    same data folder) makes the retry, under the same webhook-id, and nobody sends it a third time."""
    rx = Receiver([500])
    a = _sender(tmp_path, retry_schedule=[0.5, 0.5])
    try:
        a.webhook(rx.url(), {"n": 1}, owner="k_1", task_uuid="t-1", id="msg_fixed")
        rx.wait(1)
        a.stop()
        assert len(rx.requests) == 1 and len(a.outbox) == 1  # the retry is owed, in the store
        b = _sender(tmp_path, retry_schedule=[0.5, 0.5])
        try:
            reqs = rx.wait(2, timeout=10)
            time.sleep(1.0)
            assert len(rx.requests) == 2 and [r[2]["webhook-id"] for r in reqs] == ["msg_fixed", "msg_fixed"]
            secret = derived_webhook_secret(b"s" * 32, "k_1")
            Webhook(secret).verify(reqs[1][3], {k.lower(): v for k, v in reqs[1][2].items()})
            assert len(b.outbox) == 0
            b.webhook(rx.url(), {"n": 1}, owner="k_1", task_uuid="t-1", id="msg_fixed")  # announced again
            time.sleep(0.5)
            assert len(rx.requests) == 2  # a send id is sent once
        finally:
            b.stop()
    finally:
        rx.close()


def test_a_send_held_by_a_sender_that_died_is_sent_when_its_lease_runs_out(tmp_path):
    from daguerre.jobs.outbox import SQLiteOutbox

    rx = Receiver([])
    dead = SQLiteOutbox(tmp_path / "jobs.sqlite3")  # a process that wrote a send, leased it, and was SIGKILLed
    item = {"kind": "webhook", "url": rx.url(), "body": '{"n":2}', "owner": "k_1", "task": "t-2", "headers": {},
            "tries": 3}  # fmt: skip
    dead.add("msg_orphan", item, lease_s=0.6)
    live = _sender(tmp_path, retry_schedule=[1.0])
    try:
        assert rx.wait(1, timeout=0.4) == []  # not while the lease lasts
        [(method, _p, headers, body)] = rx.wait(1, timeout=10)
        assert method == "POST" and headers["webhook-id"] == "msg_orphan" and body == b'{"n":2}'
        time.sleep(0.5)
        assert len(rx.requests) == 1 and live.sent["ok"] == 1
    finally:
        live.stop()
        rx.close()


def test_a_send_whose_leases_all_ran_out_unanswered_is_given_up_not_tried_forever(tmp_path):
    from daguerre.jobs.outbox import SQLiteOutbox

    rx = Receiver([])
    dead = SQLiteOutbox(tmp_path / "jobs.sqlite3")  # its senders kept dying mid-send (or it cannot be prepared)
    item = {"kind": "webhook", "url": rx.url(), "body": "{}", "owner": "k_1", "task": "t-3", "headers": {}, "tries": 1}
    dead.add("msg_cursed", item, lease_s=0.05)
    time.sleep(0.1)
    assert [lease.attempt for lease in dead.due(10, lease_s=0.05)] == [2]  # the one allowed extra lease, lost too
    time.sleep(0.1)
    live = _sender(tmp_path, retry_schedule=[])
    try:
        for _ in range(100):
            if len(live.outbox) == 0:
                break
            time.sleep(0.05)
        assert len(live.outbox) == 0 and live.sent["failed"] == 1 and rx.requests == []
    finally:
        live.stop()
        rx.close()


def test_a_sender_with_every_slot_busy_waits_for_one_instead_of_polling(tmp_path):
    gate = threading.Event()
    sender = _sender(tmp_path, retry_schedule=[], workers=1)
    try:
        polls = []
        real_due = sender.outbox.due
        sender.outbox.due = lambda *a, **kw: polls.append(1) or real_due(*a, **kw)
        sender.outbound.request = lambda *a, **kw: gate.wait(10) and None  # a receiver that hangs
        sender.webhook("http://127.0.0.1:9/hook", {}, owner="k_1", task_uuid="t-4")
        time.sleep(0.2)
        before = len(polls)
        time.sleep(1.0)
        assert len(polls) - before == 0  # no slot: the outbox is not read at all (it used to be, in a busy loop)
    finally:
        gate.set()
        sender.stop()
