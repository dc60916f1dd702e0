"""Pushing results out: webhooks (Standard Webhooks signatures) and uploadEndpoint PUTs, with retries.

`ResultDelivery` is what the worker calls after each stored image and at a job's end: it asks the job's
protocol adapter for the webhook body (each door shapes its own) and hands the sends to `DeliveryService`.

Every request goes through the guarded OutboundClient with redirects off. A webhook is retried
on any non-2xx answer or a network failure, an upload on 5xx or a network failure (a 4xx is
final), following the configured schedule; a webhook keeps its webhook-id across retries so
the receiver can de-duplicate. Pending retries live in memory: a restart drops them.
"""

from __future__ import annotations

import base64
import hashlib
import heapq
import hmac
import itertools
import json
import logging
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime

from daguerre.imaging import CONTENT_TYPES
from daguerre.jobs.outbound import OutboundClient, OutboundError
from daguerre.jobs.store import Job
from daguerre.storage import ResultStore

log = logging.getLogger(__name__)


def derived_webhook_secret(server_secret: bytes, owner: str) -> str:
    """The Standard Webhooks secret (whsec_ + base64) of an owner, derived from the server's secret."""
    raw = hmac.new(server_secret, f"webhook:{owner}".encode(), hashlib.sha256).digest()[:24]
    return "whsec_" + base64.b64encode(raw).decode()


@dataclass(order=True)
class _Attempt:
    due: float
    seq: int
    kind: str = field(compare=False)  # "webhook" | "upload"
    url: str = field(compare=False)
    body: bytes = field(compare=False)
    headers: dict = field(compare=False)
    task_uuid: str = field(compare=False)
    attempt: int = field(compare=False, default=0)  # 0 = first try
    msg_id: str = field(compare=False, default="")
    secret: str = field(compare=False, default="")
    retries: int | None = field(compare=False, default=None)  # None = one per step of the schedule


class DeliveryService:
    """Runs deliveries on a small thread pool; a scheduler thread re-runs failures on the schedule."""

    def __init__(self, *, outbound: OutboundClient, retry_schedule: list[float], workers: int = 4):
        self.outbound = outbound
        self.schedule = list(retry_schedule)
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="daguerre-delivery")
        self._heap: list[_Attempt] = []
        self._cv = threading.Condition()
        self._seq = itertools.count()
        self._stop = False
        self._thread = threading.Thread(target=self._scheduler, name="daguerre-delivery-scheduler", daemon=True)
        self._thread.start()

    def webhook(self, url: str, payload: dict, *, secret: str, task_uuid: str, headers: dict | None = None,
                attempts: int | None = None) -> None:  # fmt: skip
        """POST `payload` as JSON to `url`, signed (Standard Webhooks), with any extra `headers` of its protocol;
        `attempts` caps the tries (default: one plus a retry per step of the schedule)."""
        body = json.dumps(payload, separators=(",", ":")).encode()
        self._push(
            _Attempt(
                due=0,
                seq=next(self._seq),
                kind="webhook",
                url=url,
                body=body,
                headers={"Content-Type": "application/json", **(headers or {})},
                task_uuid=task_uuid,
                msg_id=f"msg_{uuid.uuid4().hex}",
                secret=secret,
                retries=len(self.schedule) if attempts is None else max(0, attempts - 1),
            )
        )

    def upload(self, url: str, data: bytes, content_type: str, *, task_uuid: str) -> None:
        """PUT the raw image bytes to a (usually presigned) URL."""
        self._push(
            _Attempt(
                due=0,
                seq=next(self._seq),
                kind="upload",
                url=url,
                body=data,
                headers={"Content-Type": content_type},
                task_uuid=task_uuid,
            )
        )

    def _push(self, a: _Attempt) -> None:
        with self._cv:
            heapq.heappush(self._heap, a)
            self._cv.notify()

    def _scheduler(self) -> None:
        while True:
            with self._cv:
                while not self._stop and (not self._heap or self._heap[0].due > time.time()):
                    wait = None if not self._heap else max(0.0, self._heap[0].due - time.time())
                    self._cv.wait(wait)
                if self._stop:
                    return
                a = heapq.heappop(self._heap)
            self._pool.submit(self._run, a)

    def _run(self, a: _Attempt) -> None:
        headers = dict(a.headers)
        if a.kind == "webhook":
            from standardwebhooks.webhooks import Webhook

            now = datetime.now(tz=UTC)
            headers.update(
                {
                    "webhook-id": a.msg_id,
                    "webhook-timestamp": str(int(now.timestamp())),
                    "webhook-signature": Webhook(a.secret).sign(a.msg_id, now, a.body.decode()),
                }
            )
        method = "POST" if a.kind == "webhook" else "PUT"
        try:
            resp = self.outbound.request(
                method,
                a.url,
                parameter="webhookURL" if a.kind == "webhook" else "uploadEndpoint",
                content=a.body,
                headers=headers,
                max_redirects=0,
                max_bytes=1 << 20,
            )
            outcome: int | str = resp.status
            ok = 200 <= resp.status < 300
            final = ok or (a.kind == "upload" and resp.status < 500)  # an upload's 3xx/4xx is final
        except OutboundError as e:
            outcome, ok, final = e.message, False, False
        retries = len(self.schedule) if a.retries is None else min(a.retries, len(self.schedule))
        if ok or final or a.attempt >= retries:
            if not ok:
                log.warning(
                    "%s for task %s failed for good after %d attempts: %s",
                    a.kind,
                    a.task_uuid,
                    a.attempt + 1,
                    outcome,
                    extra={"taskUUID": a.task_uuid},
                )
            return
        a.attempt += 1
        a.due = time.time() + self.schedule[a.attempt - 1]
        a.seq = next(self._seq)
        self._push(a)

    def stop(self) -> None:
        with self._cv:
            self._stop = True
            self._cv.notify()
        self._pool.shutdown(wait=False, cancel_futures=True)


# A protocol adapter's webhook body for a job event (worker.EVENTS: start, logs, output with the stored
# result, completed); None = send nothing for that event.
WebhookBody = Callable[[Job, str, dict | None], dict | None]


class ResultDelivery:
    """The worker's on_event hook: webhook the events the job's door sends (its adapter shapes the bodies, the
    job's DeliverySpec says which events), PUT each image to uploadEndpoint."""

    def __init__(self, *, sender: DeliveryService, results: ResultStore, server_secret: bytes,
                 bodies: dict[str, WebhookBody], attempts: dict[str, int] | None = None):  # fmt: skip
        self.sender = sender
        self.attempts = attempts or {}  # protocol -> most webhook attempts its protocol makes (else the schedule's)
        self.results = results
        self.server_secret = server_secret
        self.bodies = bodies  # protocol name (DeliverySpec.protocol) -> its adapter's webhook body

    def __call__(self, job: Job, event: str, result: dict | None) -> None:
        d = job.spec.delivery
        if d.webhook_url and (d.webhook_events is None or event in d.webhook_events):
            payload = self.bodies[d.protocol](job, event, result)
            if payload is not None:
                secret = derived_webhook_secret(self.server_secret, job.owner)
                headers = {"X-Webhook-Secret": d.webhook_secret} if d.webhook_secret else None
                self.sender.webhook(d.webhook_url, payload, secret=secret, task_uuid=job.task_uuid, headers=headers,
                                    attempts=self.attempts.get(d.protocol))  # fmt: skip
        if d.upload_endpoint and event == "output" and result is not None:
            found = self.results.get(result["imageUUID"], job.owner)
            if found is not None:
                obj, data = found
                self.sender.upload(d.upload_endpoint, data, CONTENT_TYPES[obj.ext], task_uuid=job.task_uuid)
