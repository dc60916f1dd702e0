"""A JobQueue on Redis Streams with a consumer group (redis-py): many API nodes push, many workers claim.

Each message is one stream entry (field `m`: the serialized JobSpec). Workers read with XREADGROUP as members
of one consumer group, so an entry goes to exactly one of them, and it stays in the group's pending list until
the worker acknowledges it (XACK, then XDEL) after the job's results are stored. A live worker refreshes its
entries' idle time (XCLAIM ... JUSTID, which does not count a delivery, in a Lua script that first checks that
the entry is still pending to this consumer: XCLAIM alone would take it from whoever holds it); an entry idle
longer than the visibility timeout belonged to a worker that died, and the next claim takes it over with
XAUTOCLAIM, which raises its delivery count (read back with XPENDING). No entry is taken over in the first
visibility timeout after the server starts (its idle times count the time it was down). Acknowledging and
burying check the same way that the entry is still this consumer's, so a worker that stalled past its
timeout cannot settle a job another worker runs now. The worker moves an entry delivered too many times to
the dead-letter stream (`{key}:dead`).

`waiting` reads the undelivered entries (after the group's last-delivered id) without claiming them. `take`
claims named ones alongside a claim, with one Lua script, so two workers looking at the same waiting jobs never
both get one: Streams cannot hand a consumer a chosen entry, so a taken entry is deleted from the stream and
kept in a list under its claim (`{key}:riders:{id}`), which is acknowledged with it and handed back with it
when its worker died. The capacity check is per push (XLEN, then XADD): two API nodes may overshoot it by a
message each.
"""

from __future__ import annotations

import time

from daguerre.jobs.queue import Claim, QueueFull

FIELD = "m"
# KEYS[1] stream, KEYS[2] the riders list; ARGV[1] group, ARGV[2..] messages: move still-undelivered entries
# holding them (each once) from the stream to the riders list.
_TAKE = """
local last = '0-0'
for _, g in ipairs(redis.call('XINFO', 'GROUPS', KEYS[1])) do
  local name, delivered
  for i = 1, #g, 2 do
    if g[i] == 'name' then name = g[i + 1] elseif g[i] == 'last-delivered-id' then delivered = g[i + 1] end
  end
  if name == ARGV[1] then last = delivered end
end
local wanted = {}
for i = 2, #ARGV do wanted[ARGV[i]] = (wanted[ARGV[i]] or 0) + 1 end
local taken = {}
for _, e in ipairs(redis.call('XRANGE', KEYS[1], '(' .. last, '+')) do
  local m = e[2][2]
  if wanted[m] and wanted[m] > 0 then
    wanted[m] = wanted[m] - 1
    redis.call('XDEL', KEYS[1], e[1])
    redis.call('RPUSH', KEYS[2], m)
    table.insert(taken, m)
  end
end
return taken
"""


# KEYS[1] stream. ARGV[1] group, ARGV[2] consumer, ARGV[3..] entry ids: refresh the ones still pending to this
# consumer, and take back the ones given back unrun (pending to DEFERRED or RELEASED); returns the others (taken
# over by another worker, or acknowledged).
_EXTEND = """
local lost = {}
for i = 3, #ARGV do
  local p = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[i], ARGV[i], 1)
  if p[1] and (p[1][2] == ARGV[2] or p[1][2] == 'deferred' or p[1][2] == 'released') then
    redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0, ARGV[i], 'JUSTID')
  else
    table.insert(lost, ARGV[i])
  end
end
return lost
"""

# KEYS[1] stream, KEYS[2] the entry's riders list, KEYS[3] the dead-letter stream. ARGV[1] group, ARGV[2]
# consumer, ARGV[3] entry id, ARGV[4..] the dead letter's fields (none: acknowledge only). Acknowledge and
# delete the entry (and its riders) only while it is pending to this consumer; returns 1 if it was.
_SETTLE = """
local p = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[3], ARGV[3], 1)
if not p[1] or p[1][2] ~= ARGV[2] then return 0 end
if #ARGV > 3 then redis.call('XADD', KEYS[3], '*', unpack(ARGV, 4)) end
redis.call('XACK', KEYS[1], ARGV[1], ARGV[3])
redis.call('XDEL', KEYS[1], ARGV[3])
redis.call('DEL', KEYS[2])
return 1
"""
DEFERRED, RELEASED = "deferred", "released"  # consumers holding entries given back unrun
UPTIME_EVERY_S = 1.0  # how often a claim reads the server's uptime (see `_may_take_over`)


class RedisStreamQueue:
    durable = True  # as durable as the Redis server's persistence (AOF: docs/deploy.md)

    def __init__(self, client, *, key: str = "daguerre:jobs", group: str = "workers", consumer: str = "worker",
                 maxsize: int = 1000, visibility_s: float = 30.0, restart_grace_s: float | None = None):  # fmt: skip
        import redis

        self.r, self.key, self.group, self.consumer, self.maxsize = client, key, group, consumer, maxsize
        self.visibility_s = visibility_s
        # After the server starts, how long before an entry is taken over (`_may_take_over`): by default a whole
        # visibility timeout, what a live worker has to extend its claim in any case.
        self.restart_grace_s = visibility_s if restart_grace_s is None else restart_grace_s
        try:
            self.r.xgroup_create(key, group, id="0", mkstream=True)
        except redis.ResponseError as e:
            if "BUSYGROUP" not in str(e):
                raise
        self._take = self.r.register_script(_TAKE)
        self._extend = self.r.register_script(_EXTEND)
        self._settle = self.r.register_script(_SETTLE)
        self._up_since: float | None = None  # when the server started (epoch seconds), as last read
        self._up_read = 0.0  # monotonic time of that reading

    def push(self, message: str, *, force: bool = False) -> None:
        if not force and len(self) >= self.maxsize:
            raise QueueFull(f"the queue is full ({self.maxsize} waiting jobs)")
        self.r.xadd(self.key, {FIELD: message})

    def claim(self, timeout: float) -> Claim | None:
        try:
            return self._claim(timeout)
        except Exception:
            self._up_read = 0.0  # the server may have restarted: read its uptime again before taking any over
            raise

    def _claim(self, timeout: float) -> Claim | None:
        # A dead worker's entry first: it has waited longest.
        entries = [e for e in self._take_over() if e and e[1]]
        if entries:
            entry_id, fields = entries[0]
            pending = self.r.xpending_range(self.key, self.group, min=entry_id, max=entry_id, count=1)
            deliveries = int(pending[0]["times_delivered"]) if pending else 2
            riders = tuple(_text(m) for m in self.r.lrange(self._riders(_text(entry_id)), 0, -1))
            return Claim(message=_text(fields[_key(fields)]), id=_text(entry_id), deliveries=deliveries,
                         riders=riders)  # fmt: skip
        block = max(1, int(timeout * 1000)) if timeout > 0 else None
        got = self.r.xreadgroup(self.group, self.consumer, {self.key: ">"}, count=1, block=block)
        if not got or not got[0][1]:
            return None
        entry_id, fields = got[0][1][0]
        return Claim(message=_text(fields[_key(fields)]), id=_text(entry_id), deliveries=1)

    def waiting(self, limit: int) -> list[str]:
        last = self._last_delivered()
        entries = self.r.xrange(self.key, min=f"({last}", max="+", count=limit)
        return [_text(fields[_key(fields)]) for _, fields in entries]

    def take(self, messages: list[str], with_: Claim) -> list[Claim]:
        if not messages:
            return []
        taken = self._take(keys=[self.key, self._riders(with_.id)], args=[self.group, *messages])
        return [Claim(message=_text(m), id="", deliveries=1) for m in taken]

    def _take_over(self) -> list:
        """The oldest entry whose claim ran out, claimed by this consumer ([] if none)."""
        idle = int(self.visibility_s * 1000)
        if self._may_take_over():
            return self.r.xautoclaim(self.key, self.group, self.consumer, idle, start_id="0-0", count=1)[1]
        # Just after a start: only an entry given back unrun (its wait is real; it did not lapse).
        pending = self.r.xpending_range(self.key, self.group, min="-", max="+", count=1, consumername=DEFERRED,
                                        idle=idle)  # fmt: skip
        return self.r.xclaim(self.key, self.group, self.consumer, idle, [pending[0]["message_id"]]) if pending else []

    def _may_take_over(self) -> bool:
        """Whether the server has been up longer than the visibility timeout. An entry's idle time counts the time
        the server was down (its pending list comes back from the AOF with the old delivery times), so just after
        a restart every running job's entry looks abandoned: none is taken over until each live worker has had a
        whole visibility timeout to extend its own."""
        now = time.monotonic()
        if self._up_since is None or now - self._up_read >= UPTIME_EVERY_S:
            self._up_since = time.time() - int(self.r.info("server")["uptime_in_seconds"])
            self._up_read = now
        return time.time() - self._up_since > self.restart_grace_s  # whole seconds, rounded down: never early

    def ack(self, claim: Claim) -> bool:
        if not claim.id:  # a rider: acknowledged with its claim
            return True
        return bool(self._settle(keys=[self.key, self._riders(claim.id), f"{self.key}:dead"],
                                 args=[self.group, self.consumer, claim.id]))  # fmt: skip

    def extend(self, claims: list[Claim]) -> list[Claim]:
        held = [c for c in claims if c.id]  # riders (no id) last as long as their claim
        if not held:
            return []
        lost = {
            _text(i) for i in self._extend(keys=[self.key], args=[self.group, self.consumer, *(c.id for c in held)])
        }
        return [c for c in held if c.id in lost]

    def defer(self, claim: Claim, seconds: float) -> None:
        # Idle just short of the visibility timeout: XAUTOCLAIM hands it out after `seconds`, counting the
        # delivery this one un-counts (RETRYCOUNT).
        idle = max(0, int((self.visibility_s - seconds) * 1000))
        self.r.xclaim(self.key, self.group, DEFERRED, 0, [claim.id], idle=idle,
                      retrycount=max(0, claim.deliveries - 1), justid=True)  # fmt: skip

    def release(self, idle_s: float) -> None:
        if not self._may_take_over():  # just restarted: idle times count the downtime, and beats may have expired
            return  # with the live workers' claims still good; the ones that lapsed are taken over after the grace
        pending = self.r.xpending_range(self.key, self.group, min="-", max="+", count=10_000,
                                        idle=int(idle_s * 1000))  # fmt: skip
        ids = [p["message_id"] for p in pending]
        if ids:  # idle past the visibility timeout: the next claim's XAUTOCLAIM takes them over
            self.r.xclaim(self.key, self.group, RELEASED, 0, ids, idle=int(self.visibility_s * 1000) + 1000,
                          justid=True)  # fmt: skip

    def bury(self, claim: Claim, reason: str) -> bool:
        # One script: all or nothing. The riders list goes with it; the worker queues the riders again.
        fields = [FIELD, claim.message, "reason", reason, "deliveries", str(claim.deliveries), "at", repr(time.time())]
        return bool(self._settle(keys=[self.key, self._riders(claim.id), f"{self.key}:dead"],
                                 args=[self.group, self.consumer, claim.id, *fields]))  # fmt: skip

    def dead(self, limit: int = 100) -> list[dict]:
        out = []
        for _, f in self.r.xrevrange(f"{self.key}:dead", count=limit):
            f = {_text(k): _text(v) for k, v in f.items()}
            out.append({"message": f[FIELD], "reason": f["reason"], "deliveries": int(f["deliveries"]),
                        "at": float(f["at"])})  # fmt: skip
        return out

    def dead_count(self) -> int:
        return self.r.xlen(f"{self.key}:dead")

    def __len__(self) -> int:
        pipe = self.r.pipeline(transaction=False)
        pipe.xlen(self.key)
        pipe.xpending(self.key, self.group)
        length, pending = pipe.execute()
        return max(0, length - int(pending["pending"]))

    def _riders(self, entry_id: str) -> str:
        return f"{self.key}:riders:{entry_id}"

    def _last_delivered(self) -> str:
        for g in self.r.xinfo_groups(self.key):
            if _text(g["name"]) == self.group:
                return _text(g["last-delivered-id"])
        return "0-0"


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _key(fields: dict):
    return FIELD.encode() if FIELD.encode() in fields else FIELD
