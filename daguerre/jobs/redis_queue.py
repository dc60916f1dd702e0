"""A JobQueue on Redis Streams with a consumer group (redis-py): many API nodes push, many workers claim.

Each message is one stream entry (field `m`: the serialized JobSpec). Workers read with XREADGROUP as members
of one consumer group, so an entry goes to exactly one of them. In this first step an entry is acknowledged and
deleted as it is claimed (the in-process queue's contract), so the stream holds only waiting jobs and XLEN is
the queue's length; acknowledging after the results are stored, XAUTOCLAIM of a dead worker's job and the
dead-letter stream come with the worker process (issue 17, docs/deploy.md to come).

`waiting` reads the undelivered entries (after the group's last-delivered id) without claiming them, and
`take` claims named ones with one Lua script, so two workers looking at the same waiting jobs never both get
one. The capacity check is per push (XLEN, then XADD): two API nodes may overshoot it by a message each.
"""

from __future__ import annotations

from daguerre.jobs.queue import QueueFull

FIELD = "m"
# KEYS[1] stream, ARGV[1] group, ARGV[2..] messages: delete the still-undelivered entries holding them (each once).
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
    table.insert(taken, m)
  end
end
return taken
"""


class RedisStreamQueue:
    def __init__(self, client, *, key: str = "daguerre:jobs", group: str = "workers", consumer: str = "worker",
                 maxsize: int = 1000):  # fmt: skip
        import redis

        self.r, self.key, self.group, self.consumer, self.maxsize = client, key, group, consumer, maxsize
        try:
            self.r.xgroup_create(key, group, id="0", mkstream=True)
        except redis.ResponseError as e:
            if "BUSYGROUP" not in str(e):
                raise
        self._take = self.r.register_script(_TAKE)

    def push(self, message: str, *, force: bool = False) -> None:
        if not force and self.r.xlen(self.key) >= self.maxsize:
            raise QueueFull(f"the queue is full ({self.maxsize} waiting jobs)")
        self.r.xadd(self.key, {FIELD: message})

    def claim(self, timeout: float) -> str | None:
        block = max(1, int(timeout * 1000)) if timeout > 0 else None
        got = self.r.xreadgroup(self.group, self.consumer, {self.key: ">"}, count=1, block=block)
        if not got:
            return None
        entry_id, fields = got[0][1][0]
        pipe = self.r.pipeline()
        pipe.xack(self.key, self.group, entry_id)
        pipe.xdel(self.key, entry_id)
        pipe.execute()
        return _text(fields[_key(fields)])

    def waiting(self, limit: int) -> list[str]:
        last = self._last_delivered()
        entries = self.r.xrange(self.key, min=f"({last}", max="+", count=limit)
        return [_text(fields[_key(fields)]) for _, fields in entries]

    def take(self, messages: list[str]) -> list[str]:
        if not messages:
            return []
        return [_text(m) for m in self._take(keys=[self.key], args=[self.group, *messages])]

    def __len__(self) -> int:
        return self.r.xlen(self.key)

    def _last_delivered(self) -> str:
        for g in self.r.xinfo_groups(self.key):
            if _text(g["name"]) == self.group:
                return _text(g["last-delivered-id"])
        return "0-0"


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _key(fields: dict):
    return FIELD.encode() if FIELD.encode() in fields else FIELD
