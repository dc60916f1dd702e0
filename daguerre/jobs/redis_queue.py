"""A JobQueue on Redis Streams with a consumer group (redis-py): many API nodes push, many workers claim.

Each message is one stream entry (field `m`: the serialized JobSpec). Workers read with XREADGROUP as members
of one consumer group, so an entry goes to exactly one of them, and it stays in the group's pending list until
the worker acknowledges it (XACK, then XDEL) after the job's results are stored. A live worker refreshes its
entries' idle time (XCLAIM ... JUSTID, which does not count a delivery, in a Lua script that first checks that
the entry is still pending to this consumer: XCLAIM alone would take it from whoever holds it); an entry idle
longer than the visibility timeout belonged to a worker that died, and the next claim takes it over with
XAUTOCLAIM, which raises its delivery count (read back with XPENDING). The worker moves an entry delivered too
many times to the dead-letter stream (`{key}:dead`).

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
# consumer; returns the others (taken over by another worker, or acknowledged).
_EXTEND = """
local lost = {}
for i = 3, #ARGV do
  local p = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[i], ARGV[i], 1)
  if p[1] and p[1][2] == ARGV[2] then
    redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0, ARGV[i], 'JUSTID')
  else
    table.insert(lost, ARGV[i])
  end
end
return lost
"""


class RedisStreamQueue:
    durable = True  # as durable as the Redis server's persistence (AOF: docs/deploy.md)

    def __init__(self, client, *, key: str = "daguerre:jobs", group: str = "workers", consumer: str = "worker",
                 maxsize: int = 1000, visibility_s: float = 30.0):  # fmt: skip
        import redis

        self.r, self.key, self.group, self.consumer, self.maxsize = client, key, group, consumer, maxsize
        self.visibility_s = visibility_s
        try:
            self.r.xgroup_create(key, group, id="0", mkstream=True)
        except redis.ResponseError as e:
            if "BUSYGROUP" not in str(e):
                raise
        self._take = self.r.register_script(_TAKE)
        self._extend = self.r.register_script(_EXTEND)

    def push(self, message: str, *, force: bool = False) -> None:
        if not force and len(self) >= self.maxsize:
            raise QueueFull(f"the queue is full ({self.maxsize} waiting jobs)")
        self.r.xadd(self.key, {FIELD: message})

    def claim(self, timeout: float) -> Claim | None:
        # A dead worker's entry first: it has waited longest.
        _, entries, *_ = self.r.xautoclaim(self.key, self.group, self.consumer, int(self.visibility_s * 1000),
                                           start_id="0-0", count=1)  # fmt: skip
        entries = [e for e in entries if e and e[1]]
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

    def ack(self, claim: Claim) -> None:
        if not claim.id:  # a rider: acknowledged with its claim
            return
        pipe = self.r.pipeline()
        pipe.xack(self.key, self.group, claim.id)
        pipe.xdel(self.key, claim.id)
        pipe.delete(self._riders(claim.id))
        pipe.execute()

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
        self.r.xclaim(self.key, self.group, "deferred", 0, [claim.id], idle=idle,
                      retrycount=max(0, claim.deliveries - 1), justid=True)  # fmt: skip

    def release(self, idle_s: float) -> None:
        pending = self.r.xpending_range(self.key, self.group, min="-", max="+", count=10_000,
                                        idle=int(idle_s * 1000))  # fmt: skip
        ids = [p["message_id"] for p in pending]
        if ids:  # idle past the visibility timeout: the next claim's XAUTOCLAIM takes them over
            self.r.xclaim(self.key, self.group, "released", 0, ids, idle=int(self.visibility_s * 1000) + 1000,
                          justid=True)  # fmt: skip

    def bury(self, claim: Claim, reason: str) -> None:
        pipe = self.r.pipeline()  # MULTI/EXEC: all or nothing
        pipe.xadd(f"{self.key}:dead", {FIELD: claim.message, "reason": reason, "deliveries": claim.deliveries,
                                       "at": time.time()})  # fmt: skip
        pipe.xack(self.key, self.group, claim.id)
        pipe.xdel(self.key, claim.id)
        pipe.delete(self._riders(claim.id))  # the worker queues the riders again
        pipe.execute()

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
