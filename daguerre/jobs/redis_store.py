"""A JobStore on Redis (redis-py), so that every API node and worker sees the same jobs.

One hash per job (`{prefix}:job:{owner}:{taskUUID}`) holds the same fields as the SQLite store's columns, so
both read a job with the same code (store._job). Indexes: a sequence for the job numbers (`{prefix}:seq`),
number -> job (`{prefix}:num:N`), each owner's jobs by number (a sorted set, for listings), the unfinished jobs
by creation time (a sorted set, for start-up recovery; one per owner, for the in-flight limit; the queued ones,
for queue positions), and the count per status (a hash). Every change that
moves a job between statuses is one Lua script, so the counts and indexes never disagree with the hashes and
`start` is a compare-and-set: of two workers, one gets the job.
"""

from __future__ import annotations

import json
import time

from daguerre.jobs.store import _COLUMNS, RUNNING, Job, _job, _json, _payload, _progress

_SEP = "\x00"

# Every script that moves a job between statuses keeps the indexes with `move`: the count per status, the
# unfinished set (all, and one per owner: the in-flight limit is one ZCARD) and the queued set (queuePosition is
# one ZCOUNT), each scored by creation time. `u` is the unfinished set's key; the others are named after it.
_MOVE = """
local function move(u, counts, member, old, new, created)
  if old == new then return end
  local owner = string.sub(member, 1, string.find(member, '\\0', 1, true) - 1)
  local mine, queued = u .. ':owner:' .. owner, u .. ':queued'
  if old then redis.call('HINCRBY', counts, old, -1) end
  if new then redis.call('HINCRBY', counts, new, 1) end
  if new == 'queued' or new == 'running' then
    redis.call('ZADD', u, created, member)
    redis.call('ZADD', mine, created, member)
  else
    redis.call('ZREM', u, member)
    redis.call('ZREM', mine, member)
  end
  if new == 'queued' then redis.call('ZADD', queued, created, member) else redis.call('ZREM', queued, member) end
end
"""
# KEYS: job, seq, owner-index, unfinished, counts. ARGV: field/value pairs (no number), then the member and score.
_CREATE = (
    _MOVE
    + """
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
local n = redis.call('INCR', KEYS[2])
local member, created, status = ARGV[#ARGV - 1], ARGV[#ARGV], nil
for i = 1, #ARGV - 2, 2 do
  redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1])
  if ARGV[i] == 'status' then status = ARGV[i + 1] end
end
redis.call('HSET', KEYS[1], 'number', n)
redis.call('SET', KEYS[2] .. ':' .. n, member)
redis.call('ZADD', KEYS[3], n, string.sub(member, string.find(member, '\\0', 1, true) + 1))
move(KEYS[4], KEYS[5], member, nil, status, created)
return n
"""
)
# KEYS: job, unfinished, counts. ARGV: member, then field/value pairs (status among them when it changes).
_SET = (
    _MOVE
    + """
local old = redis.call('HGET', KEYS[1], 'status')
if not old then return 0 end
local new = old
for i = 2, #ARGV, 2 do
  redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1])
  if ARGV[i] == 'status' then new = ARGV[i + 1] end
end
move(KEYS[2], KEYS[3], ARGV[1], old, new, redis.call('HGET', KEYS[1], 'created_at'))
return 1
"""
)
# KEYS: job, unfinished, counts. ARGV: member, now, again. Queued -> running (with again, running -> running too);
# 0 if it is not queued any more.
_START = (
    _MOVE
    + """
local old = redis.call('HGET', KEYS[1], 'status')
if old ~= 'queued' and not (ARGV[3] == '1' and old == 'running') then return 0 end
redis.call('HSET', KEYS[1], 'status', 'running', 'started_at', ARGV[2], 'updated_at', ARGV[2])
move(KEYS[2], KEYS[3], ARGV[1], old, 'running', redis.call('HGET', KEYS[1], 'created_at'))
return 1
"""
)
# KEYS: job, unfinished, counts. ARGV: member, now. Flags the job; a queued one is cancelled at once.
_CANCEL = (
    _MOVE
    + """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
redis.call('HSET', KEYS[1], 'cancel', '1', 'updated_at', ARGV[2])
if redis.call('HGET', KEYS[1], 'status') == 'queued' then
  redis.call('HSET', KEYS[1], 'status', 'cancelled', 'completed_at', ARGV[2])
  move(KEYS[2], KEYS[3], ARGV[1], 'queued', 'cancelled', 0)
end
return 1
"""
)
# KEYS: job, seq, owner-index, unfinished, counts. ARGV: member, taskUUID.
_DELETE = (
    _MOVE
    + """
local status = redis.call('HGET', KEYS[1], 'status')
if not status then return 0 end
local n = redis.call('HGET', KEYS[1], 'number')
redis.call('DEL', KEYS[1], KEYS[2] .. ':' .. n)
redis.call('ZREM', KEYS[3], ARGV[2])
move(KEYS[4], KEYS[5], ARGV[1], status, nil, 0)
return 1
"""
)
# KEYS: unfinished. A store from before the per-owner and queued sets: build them once from the unfinished set.
_REINDEX = """
if redis.call('SET', KEYS[1] .. ':indexed', '1', 'NX') == false then return 0 end
local all = redis.call('ZRANGE', KEYS[1], 0, -1, 'WITHSCORES')
for i = 1, #all, 2 do
  local member, created = all[i], all[i + 1]
  local sep = string.find(member, '\\0', 1, true)
  local owner, task = string.sub(member, 1, sep - 1), string.sub(member, sep + 1)
  redis.call('ZADD', KEYS[1] .. ':owner:' .. owner, created, member)
  if redis.call('HGET', ARGV[1] .. ':job:' .. owner .. ':' .. task, 'status') == 'queued' then
    redis.call('ZADD', KEYS[1] .. ':queued', created, member)
  end
end
return 1
"""


class RedisJobStore:
    def __init__(self, client, *, prefix: str = "daguerre"):
        self.r, self.p = client, prefix
        self._create, self._set = client.register_script(_CREATE), client.register_script(_SET)
        self._start, self._cancel = client.register_script(_START), client.register_script(_CANCEL)
        self._delete = client.register_script(_DELETE)
        client.register_script(_REINDEX)(keys=[self._unfinished], args=[prefix])

    # ---- keys
    def _job_key(self, owner: str, task_uuid: str) -> str:
        return f"{self.p}:job:{owner}:{task_uuid}"

    def _owner_key(self, owner: str) -> str:
        return f"{self.p}:owner:{owner}"

    @property
    def _unfinished(self) -> str:
        return f"{self.p}:unfinished"

    @property
    def _counts(self) -> str:
        return f"{self.p}:counts"

    # ---- JobStore
    def create(self, job: Job) -> Job | None:
        fields = _fields(job)
        member = f"{job.owner}{_SEP}{job.task_uuid}"
        args = [x for kv in fields.items() for x in kv] + [member, repr(job.created_at)]
        keys = [self._job_key(*job.key), f"{self.p}:seq", self._owner_key(job.owner), self._unfinished, self._counts]
        n = self._create(keys=keys, args=args)
        if n == 0:
            return self.get(job.owner, job.task_uuid)
        job.number = int(n)
        return None

    def get(self, owner: str, task_uuid: str) -> Job | None:
        return self._read(self._job_key(owner, task_uuid))

    def get_number(self, owner: str, number: int) -> Job | None:
        member = self.r.get(f"{self.p}:seq:{number}")
        if member is None:
            return None
        found_owner, _, task_uuid = _text(member).partition(_SEP)
        return self.get(owner, task_uuid) if found_owner == owner else None

    def start(self, job: Job, *, again: bool = False) -> bool:
        now = time.time()
        ok = self._start(keys=self._status_keys(job.owner, job.task_uuid),
                         args=[_member(job), repr(now), "1" if again else "0"])  # fmt: skip
        if ok:
            job.status, job.started_at, job.updated_at = RUNNING, now, now
        return bool(ok)

    def update(self, job: Job) -> None:
        job.updated_at = time.time()
        if job.done and job.completed_at is None:
            job.completed_at = job.updated_at
        f = _fields(job)
        changed = {k: f[k] for k in ("payload", "status", "results", "error", "updated_at", "started_at",
                                     "completed_at", "progress")}  # fmt: skip
        self._set(keys=self._status_keys(job.owner, job.task_uuid),
                  args=[_member(job), *[x for kv in changed.items() for x in kv]])  # fmt: skip

    def save_progress(self, job: Job) -> None:
        self._set(keys=self._status_keys(job.owner, job.task_uuid),
                  args=[_member(job), "progress", _str(_progress(job))])  # fmt: skip

    def request_cancel(self, owner: str, task_uuid: str) -> Job | None:
        self._cancel(keys=self._status_keys(owner, task_uuid), args=[f"{owner}{_SEP}{task_uuid}", repr(time.time())])
        return self.get(owner, task_uuid)

    def cancel_requested(self, owner: str, task_uuid: str) -> bool:
        return _text(self.r.hget(self._job_key(owner, task_uuid), "cancel") or "0") == "1"

    def delete(self, owner: str, task_uuid: str) -> None:
        keys = [self._job_key(owner, task_uuid), f"{self.p}:seq", self._owner_key(owner), self._unfinished,
                self._counts]  # fmt: skip
        self._delete(keys=keys, args=[f"{owner}{_SEP}{task_uuid}", task_uuid])

    def unfinished(self) -> list[Job]:
        jobs = [self.get(*_text(m).split(_SEP, 1)) for m in self.r.zrange(self._unfinished, 0, -1)]
        return [j for j in jobs if j is not None]

    def count_unfinished(self, owner: str) -> int:
        return self.r.zcard(f"{self._unfinished}:owner:{owner}")

    def queued_before(self, created_at: float) -> int:
        return self.r.zcount(f"{self._unfinished}:queued", "-inf", f"({created_at!r}")

    def recent(self, owner: str, limit: int, before: int | None = None) -> list[Job]:
        top = f"({before}" if before is not None else "+inf"
        uuids = self.r.zrevrangebyscore(self._owner_key(owner), top, "-inf", start=0, num=limit)
        jobs = [self.get(owner, _text(u)) for u in uuids]
        return [j for j in jobs if j is not None]

    def counts(self) -> dict[str, int]:
        return {_text(k): int(v) for k, v in self.r.hgetall(self._counts).items() if int(v)}

    def beat(self, worker: dict) -> None:
        pipe = self.r.pipeline()
        pipe.set(f"{self.p}:worker:{worker['id']}", json.dumps(worker), px=max(1, int(worker["ttl"] * 1000)))
        pipe.sadd(f"{self.p}:workers", worker["id"])
        pipe.execute()

    def workers(self) -> list[dict]:
        ids = sorted(_text(i) for i in self.r.smembers(f"{self.p}:workers"))
        if not ids:
            return []
        beats = self.r.mget([f"{self.p}:worker:{i}" for i in ids])
        gone = [i for i, b in zip(ids, beats, strict=True) if b is None]
        if gone:  # expired: drop them from the set too
            self.r.srem(f"{self.p}:workers", *gone)
        return [json.loads(b) for b in beats if b is not None]

    def forget(self, worker_id: str) -> None:
        self.r.delete(f"{self.p}:worker:{worker_id}")
        self.r.srem(f"{self.p}:workers", worker_id)

    def close(self) -> None:
        self.r.close()

    # ---- helpers
    def _status_keys(self, owner: str, task_uuid: str) -> list[str]:
        return [self._job_key(owner, task_uuid), self._unfinished, self._counts]

    def _read(self, key: str) -> Job | None:
        h = {_text(k): _text(v) for k, v in self.r.hgetall(key).items()}
        if not h:
            return None
        row = [int(h["number"])] + [_value(c, h.get(c, "")) for c in _COLUMNS]
        return _job(row)


_FLOATS = {"created_at", "updated_at", "started_at", "completed_at"}


def _fields(job: Job) -> dict[str, str]:
    values = dict(zip(_COLUMNS, (job.owner, job.task_uuid, job.task_type, _payload(job), job.fingerprint,
                                 json.dumps(job.image_uuids), job.status, json.dumps(job.results), _json(job.error),
                                 job.created_at, job.updated_at, job.started_at, job.completed_at, _progress(job),
                                 int(job.cancel_requested)), strict=True))  # fmt: skip
    return {k: _str(v) for k, v in values.items()}


def _str(v) -> str:
    return "" if v is None else repr(v) if isinstance(v, float) else str(v)


def _value(column: str, text: str):
    if column in _FLOATS:
        return float(text) if text else None
    if column == "cancel":
        return int(text or 0)
    return text if text != "" or column not in ("error", "progress") else None


def _member(job: Job) -> str:
    return f"{job.owner}{_SEP}{job.task_uuid}"


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else value
