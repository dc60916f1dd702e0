"""Pushing results out: webhooks (Standard Webhooks signatures) and uploadEndpoint PUTs, with retries.

`ResultDelivery` is what the worker calls after each stored image and at a job's end: it asks the job's
protocol adapter for the webhook body (each door shapes its own) and hands the sends to `DeliveryService`.

Every send is written to the Outbox (jobs/outbox.py: the job store's database, SQLite or Redis) before it is
tried, with an id made from what it announces (task, event, image), so a job run again after its worker died
announces nothing twice; a send is tried by whichever process holds its lease: the one that wrote it, at once,
or, after a failure or a stop, the sender of any process on the same store once it is due. Pending retries
therefore survive a restart, a SIGKILL and a dead node.

Every request goes through the guarded OutboundClient with redirects off. A webhook is retried on any non-2xx
answer or a network failure, an upload on 5xx or a network failure (a 4xx is final), following the configured
schedule; a webhook keeps its webhook-id across retries so the receiver can de-duplicate. An upload reads the
image from the ResultStore when it is sent (the outbox holds its imageUUID, not its bytes).
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import json
import logging
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime

from daguerre.imaging import CONTENT_TYPES
from daguerre.jobs.outbound import OutboundClient, OutboundError
from daguerre.jobs.outbox import Lease, Outbox
from daguerre.jobs.store import Job, backend_errors
from daguerre.storage import ResultStore

log = logging.getLogger(__name__)

POLL_S = 1.0  # how often a sender looks for sends due (retries, and the ones a stopped process held)
LEASE_S = 30.0  # a send's lease: three times the outbound client's total timeout
ADD_OUTAGE_S = 60.0  # how long writing a send waits out a store that went away (a Redis restart)


def derived_webhook_secret(server_secret: bytes, owner: str) -> str:
    """The Standard Webhooks secret (whsec_ + base64) of an owner, derived from the server's secret."""
    raw = hmac.new(server_secret, f"webhook:{owner}".encode(), hashlib.sha256).digest()[:24]
    return "whsec_" + base64.b64encode(raw).decode()


def send_id(*parts: str) -> str:
    """The id (and webhook-id) of the send announcing `parts` (owner, task, event, image): the same every time."""
    return "msg_" + hashlib.sha256("\x00".join(parts).encode()).hexdigest()[:32]


class DeliveryService:
    """Sends from the outbox on a small thread pool; a poller thread takes the sends that come due."""

    def __init__(self, *, outbox: Outbox, outbound: OutboundClient, results: ResultStore, server_secret: bytes,
                 retry_schedule: list[float], workers: int = 4, poll_s: float = POLL_S,
                 lease_s: float = LEASE_S):  # fmt: skip
        self.outbox, self.outbound, self.results = outbox, outbound, results
        self.server_secret = server_secret
        self.schedule = list(retry_schedule)
        self.workers, self.poll_s, self.lease_s = workers, poll_s, lease_s
        self.sent = {"ok": 0, "retried": 0, "failed": 0}  # this process's sends by outcome (for tests, logs)
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="daguerre-delivery")
        self._cv = threading.Condition()
        self._busy = 0  # sends in the pool (queued or running)
        self._queued: dict[tuple[str, str], Lease] = {}  # (id, token) -> lease in the pool not started yet
        self._stop = False
        self._thread = threading.Thread(target=self._poll, name="daguerre-delivery-poller", daemon=True)
        self._thread.start()

    def webhook(self, url: str, payload: dict, *, owner: str, task_uuid: str, id: str | None = None,
                headers: dict | None = None, attempts: int | None = None) -> None:  # fmt: skip
        """POST `payload` as JSON to `url`, signed (Standard Webhooks) with the owner's secret, with any extra
        `headers` of its protocol. `id`: the send's id (a repeat is dropped; default a new one); `attempts` caps
        the tries (default: one plus a retry per step of the schedule)."""
        tries = len(self.schedule) + 1 if attempts is None else max(1, attempts)
        item = {"kind": "webhook", "url": url, "body": json.dumps(payload, separators=(",", ":")), "owner": owner,
                "task": task_uuid, "headers": {"Content-Type": "application/json", **(headers or {})},
                "tries": tries}  # fmt: skip
        self._add(id or f"msg_{uuid.uuid4().hex}", item)

    def upload(self, url: str, image_uuid: str, *, owner: str, task_uuid: str) -> None:
        """PUT a stored image's bytes to a (usually presigned) URL, once per image and URL."""
        item = {"kind": "upload", "url": url, "image": image_uuid, "owner": owner, "task": task_uuid,
                "tries": len(self.schedule) + 1}  # fmt: skip
        self._add(send_id(owner, task_uuid, "upload", image_uuid, url), item)

    def _add(self, id: str, item: dict) -> None:
        """Write a send to the outbox (waiting out a store outage: an unwritten send would be lost), leased to
        this process when its pool has room."""
        with self._cv:
            free = not self._stop and self._busy < self.workers
        lease = _through_outages(lambda: self.outbox.add(id, item, lease_s=self.lease_s if free else None),
                                 ADD_OUTAGE_S, pause=1.0, doing="write a send to")  # fmt: skip
        if lease is not None:
            self._submit(lease)
        else:
            with self._cv:
                self._cv.notify()  # written unleased (the pool is busy): the poller takes it when a slot frees

    def _submit(self, lease: Lease) -> None:
        with self._cv:
            stopped = self._stop
            if not stopped:
                self._busy += 1
                self._queued[(lease.id, lease.token)] = lease
        if stopped:  # leased as this sender stopped: due now, for the next sender
            with contextlib.suppress(Exception):  # else its lease runs out by itself
                self.outbox.retry(lease, time.time())
            return
        with contextlib.suppress(RuntimeError):  # the pool shut down since: `stop` gave this lease back
            self._pool.submit(self._run, lease)

    def _poll(self) -> None:
        while True:
            with self._cv:
                if self._stop:
                    return
                free = self.workers - self._busy
            leases, wait = [], self.poll_s
            try:
                leases = self.outbox.due(free, lease_s=self.lease_s) if free > 0 else []
                if not leases and free > 0:
                    soonest = self.outbox.next_due()
                    if soonest is not None:
                        wait = min(wait, max(0.02, soonest - time.time()))
            except Exception as e:  # noqa: BLE001 - the store is away (Redis restarting): look again later
                log.warning("cannot read the delivery outbox (%s); trying again", e)
            for lease in leases:
                self._submit(lease)
            if free <= 0 or len(leases) < free:  # nothing more due, or no room: wait for a send or a slot
                with self._cv:
                    if not self._stop:
                        self._cv.wait(wait)

    def _run(self, lease: Lease) -> None:
        with self._cv:
            if self._queued.pop((lease.id, lease.token), None) is None:  # given back at stop
                return
        try:
            self._send(lease)
        except Exception:  # noqa: BLE001 - one send's trouble never stops the sender; its lease runs out
            log.exception("delivery %s failed inside the server; it is tried again when its lease runs out", lease.id)
        finally:
            with self._cv:
                self._busy -= 1
                self._cv.notify()

    def _send(self, lease: Lease) -> None:
        a = lease.item
        kind = a["kind"]
        headers = dict(a.get("headers") or {})
        tries = min(int(a.get("tries", len(self.schedule) + 1)), len(self.schedule) + 1)
        if lease.attempt > tries + 1:  # its leases ran out with no answer recorded (one more than its tries: the
            self.sent["failed"] += 1  # last may have died with its process before sending)
            log.warning("%s for task %s given up after %d leases with no answer recorded", kind, a["task"],
                        lease.attempt - 1, extra={"taskUUID": a["task"]})  # fmt: skip
            self._settle(lease, None)
            return
        if kind == "webhook":
            from standardwebhooks.webhooks import Webhook

            body = a["body"].encode()
            now = datetime.now(tz=UTC)
            secret = derived_webhook_secret(self.server_secret, a["owner"])
            headers.update({"webhook-id": lease.id, "webhook-timestamp": str(int(now.timestamp())),
                            "webhook-signature": Webhook(secret).sign(lease.id, now, a["body"])})  # fmt: skip
        else:
            found = self.results.get(a["image"], a["owner"])
            if found is None:
                log.warning("upload for task %s dropped: image %s expired before it was sent", a["task"], a["image"],
                            extra={"taskUUID": a["task"]})  # fmt: skip
                self._settle(lease, None)
                return
            obj, body = found
            headers["Content-Type"] = CONTENT_TYPES[obj.ext]
        try:
            resp = self.outbound.request(
                "POST" if kind == "webhook" else "PUT",
                a["url"],
                parameter="webhookURL" if kind == "webhook" else "uploadEndpoint",
                content=body,
                headers=headers,
                max_redirects=0,
                max_bytes=1 << 20,
            )
            outcome: int | str = resp.status
            ok = 200 <= resp.status < 300
            final = ok or (kind == "upload" and resp.status < 500)  # an upload's 3xx/4xx is final
        except OutboundError as e:
            outcome, ok, final = e.message, False, False
        if ok or final or lease.attempt >= tries:
            if not ok:
                self.sent["failed"] += 1
                log.warning("%s for task %s failed for good after %d attempts: %s", kind, a["task"], lease.attempt,
                            outcome, extra={"taskUUID": a["task"]})  # fmt: skip
            else:
                self.sent["ok"] += 1
            self._settle(lease, None)
            return
        self.sent["retried"] += 1
        self._settle(lease, time.time() + self.schedule[lease.attempt - 1])

    def _settle(self, lease: Lease, retry_at: float | None) -> None:
        """Mark a tried send done (`retry_at` None) or due again; if the store is away (a Redis restart), keep
        asking while the lease lasts, so a send the receiver has answered is not sent again."""
        settle = (lambda: self.outbox.done(lease)) if retry_at is None else (lambda: self.outbox.retry(lease, retry_at))
        _through_outages(settle, self.lease_s / 2, pause=0.5, doing="settle a send in")

    def stop(self, timeout: float = 5.0) -> None:
        """Stop taking sends; sends not started go back to the outbox (due now, for the next sender), running
        ones get up to `timeout` seconds to finish (else their leases run out and another sender retries them)."""
        with self._cv:
            self._stop = True
            back, self._queued = list(self._queued.values()), {}
            self._busy -= len(back)
            self._cv.notify_all()
        for lease in back:
            try:
                self.outbox.retry(lease, time.time())
            except Exception:  # noqa: BLE001 - the store is gone: the lease runs out by itself
                break
        self._pool.shutdown(wait=False, cancel_futures=True)
        end = time.monotonic() + timeout
        with self._cv:
            while self._busy > 0 and time.monotonic() < end:
                self._cv.wait(max(0.01, end - time.monotonic()))


def _through_outages(call: Callable, seconds: float, *, pause: float, doing: str):
    """call(), asked again every `pause` seconds while the store is away (a Redis restart), for up to `seconds`."""
    give_up = time.monotonic() + seconds
    while True:
        try:
            return call()
        except backend_errors() as e:
            if time.monotonic() > give_up:
                raise
            log.warning("cannot %s the delivery outbox (%s); trying again", doing, e)
            time.sleep(pause)


# A protocol adapter's webhook body for a job event (worker.EVENTS: start, logs, output with the stored
# result, completed); None = send nothing for that event.
WebhookBody = Callable[[Job, str, dict | None], dict | None]


class ResultDelivery:
    """The worker's on_event hook: webhook the events the job's door sends (its adapter shapes the bodies, the
    job's DeliverySpec says which events), PUT each image to uploadEndpoint."""

    def __init__(self, *, sender: DeliveryService, bodies: dict[str, WebhookBody],
                 attempts: dict[str, int] | None = None):  # fmt: skip
        self.sender = sender
        self.attempts = attempts or {}  # protocol -> most webhook attempts its protocol makes (else the schedule's)
        self.bodies = bodies  # protocol name (DeliverySpec.protocol) -> its adapter's webhook body

    def __call__(self, job: Job, event: str, result: dict | None) -> None:
        d = job.spec.delivery
        image = result["imageUUID"] if result is not None else ""
        if d.webhook_url and (d.webhook_events is None or event in d.webhook_events):
            payload = self.bodies[d.protocol](job, event, result)
            if payload is not None:
                headers = {"X-Webhook-Secret": d.webhook_secret} if d.webhook_secret else None
                # Progress lines are many and each new; every other event is announced once per job (and image).
                id = None if event == "logs" else send_id(job.owner, job.task_uuid, event, image)
                self.sender.webhook(d.webhook_url, payload, owner=job.owner, task_uuid=job.task_uuid, id=id,
                                    headers=headers, attempts=self.attempts.get(d.protocol))  # fmt: skip
        if d.upload_endpoint and event == "output" and result is not None:
            self.sender.upload(d.upload_endpoint, image, owner=job.owner, task_uuid=job.task_uuid)
