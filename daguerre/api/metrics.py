"""GET /metrics: the Prometheus text format (prometheus-client), read at scrape time from the shared state.

Every API node answers for the whole deployment: the queue and job counts come from the queue and the store,
the per-worker figures from the workers' heartbeats (so any node, scraped alone, sees every worker). Worker
counters carry a `worker` label and restart from zero with the process; Prometheus' rate() handles that.

    daguerre_queue_depth{model}                 jobs waiting (per model, among the oldest LOOKAHEAD)
    daguerre_queue_oldest_wait_seconds{model}   how long the oldest waiting job has waited
    daguerre_queue_wait_seconds_sum/_count{model,worker}   time jobs waited before a worker started them
    daguerre_jobs{status}                       jobs in the store by status
    daguerre_jobs_finished_total{outcome,worker}  jobs a worker ended: success | error | cancelled
    daguerre_images_total{worker}               images stored
    daguerre_busy_seconds_total{worker,device}  seconds spent running jobs (GPU or CPU seconds)
    daguerre_workers{state}                     live workers: ready | busy | draining
    daguerre_dead_letters                       jobs set aside in the dead-letter list
    daguerre_deliveries_pending                 webhooks and uploads owed (in the outbox: not yet sent, or
                                                waiting for their next retry)
"""

from __future__ import annotations

import json
import time

from fastapi import APIRouter
from fastapi.responses import Response

from daguerre.api.deps import Services, in_thread

router = APIRouter()
LOOKAHEAD = 1000  # waiting jobs read per scrape for the per-model figures


@router.get("/metrics", include_in_schema=False)
async def metrics(services: Services):
    from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

    registry = await in_thread(_collect, services)
    return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)


def _collect(services):
    from prometheus_client import CollectorRegistry
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, SummaryMetricFamily

    from daguerre.api.health import live_workers

    queue, now = services.jobs.queue, time.time()
    depth = GaugeMetricFamily("daguerre_queue_depth", "jobs waiting for a worker", labels=["model"])
    oldest = GaugeMetricFamily("daguerre_queue_oldest_wait_seconds", "age of the oldest waiting job",
                               labels=["model"])  # fmt: skip
    per_model: dict[str, list] = {}  # model -> [waiting, the oldest one's key]
    for message in queue.waiting(LOOKAHEAD):
        try:
            data = json.loads(message)
            model, key = data["request"]["model"], (data["owner"], data["task_uuid"])
        except (ValueError, KeyError, TypeError):
            continue
        per_model.setdefault(model, [0, key])[0] += 1
    for model, (n, key) in sorted(per_model.items()):
        depth.add_metric([model], n)
        first = services.store.get(*key)
        oldest.add_metric([model], max(0.0, now - first.created_at) if first is not None else 0.0)
    jobs = GaugeMetricFamily("daguerre_jobs", "jobs in the store by status", labels=["status"])
    for status, n in sorted(services.store.counts().items()):
        jobs.add_metric([status], n)
    waits = SummaryMetricFamily("daguerre_queue_wait_seconds", "time jobs waited before a worker started them",
                                labels=["model", "worker"])  # fmt: skip
    finished = CounterMetricFamily("daguerre_jobs_finished", "jobs a worker ended", labels=["outcome", "worker"])
    images = CounterMetricFamily("daguerre_images", "images stored", labels=["worker"])
    busy = CounterMetricFamily("daguerre_busy_seconds", "seconds spent running jobs", labels=["worker", "device"])
    states = GaugeMetricFamily("daguerre_workers", "live workers", labels=["state"])
    counts = {"ready": 0, "busy": 0, "draining": 0}
    workers = live_workers(services)
    for w in workers:
        wid = w["id"]
        for outcome, n in sorted(w.get("done", {}).items()):
            finished.add_metric([outcome, wid], n)
        images.add_metric([wid], w.get("images", 0))
        busy.add_metric([wid, w.get("device", "")], w.get("busy_seconds", 0.0))
        for model, (total, n) in sorted(w.get("waits", {}).items()):
            waits.add_metric([model, wid], count_value=n, sum_value=total)
        for state in counts:
            counts[state] += bool(w.get(state))
    for state, n in counts.items():
        states.add_metric([state], n)
    dead = GaugeMetricFamily("daguerre_dead_letters", "jobs set aside in the dead-letter list")
    dead.add_metric([], queue.dead_count())
    owed = GaugeMetricFamily("daguerre_deliveries_pending", "webhooks and uploads owed (not sent, or retrying)")
    owed.add_metric([], len(services.sender.outbox))

    class Snapshot:
        def collect(self):
            return [depth, oldest, jobs, waits, finished, images, busy, states, dead, owed]

    registry = CollectorRegistry(auto_describe=False)
    registry.register(Snapshot())
    return registry
