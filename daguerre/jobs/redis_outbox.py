"""An Outbox on Redis (redis-py): every API node and worker sees the same owed webhooks and uploads.

One sorted set (`{key}`) scores each send's id by when it is next due (as in the SQLite outbox: now, the end of
its lease, or its retry time); a hash per send (`{key}:{id}`) holds its item, its lease token and its attempts. A
settled send leaves the set, and its hash, emptied of the item, expires after KEEP_S (a known id is not owed
again). Writing a send, taking due ones, and marking one done or due again under its lease are Lua scripts:
atomic, so two senders never hold one send at once and a stale sender's answer is ignored.
"""

from __future__ import annotations

import json
import secrets
import time

from daguerre.jobs.outbox import KEEP_S, Lease

# KEYS[1] the set. ARGV: id, item, token, attempt, due. 0 if the id is known already.
_ADD = """
local h = KEYS[1] .. ':' .. ARGV[1]
if redis.call('EXISTS', h) == 1 then return 0 end
redis.call('HSET', h, 'item', ARGV[2], 'token', ARGV[3], 'attempt', ARGV[4])
redis.call('ZADD', KEYS[1], ARGV[5], ARGV[1])
return 1
"""

# KEYS[1] the set. ARGV: now, lease end, token, limit. Returns id, item, attempt triples.
_DUE = """
local out = {}
for _, id in ipairs(redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[4]))) do
  local h = KEYS[1] .. ':' .. id
  local item = redis.call('HGET', h, 'item')
  if item then
    redis.call('ZADD', KEYS[1], ARGV[2], id)
    redis.call('HSET', h, 'token', ARGV[3])
    local attempt = redis.call('HINCRBY', h, 'attempt', 1)
    table.insert(out, id)
    table.insert(out, item)
    table.insert(out, attempt)
  else
    redis.call('ZREM', KEYS[1], id)
  end
end
return out
"""
# KEYS[1] the set. ARGV: id, token, how long to keep a settled id, then the retry time (absent: done). 1 if the
# lease was still the holder's.
_SETTLE = """
local h = KEYS[1] .. ':' .. ARGV[1]
if ARGV[2] == '' or redis.call('HGET', h, 'token') ~= ARGV[2] then return 0 end
if ARGV[4] then
  redis.call('HSET', h, 'token', '')
  redis.call('ZADD', KEYS[1], ARGV[4], ARGV[1])
else
  redis.call('HDEL', h, 'item')
  redis.call('HSET', h, 'token', '')
  redis.call('EXPIRE', h, ARGV[3])
  redis.call('ZREM', KEYS[1], ARGV[1])
end
return 1
"""


class RedisOutbox:
    def __init__(self, client, *, key: str = "daguerre:outbox"):
        self.r, self.key = client, key
        self._add = self.r.register_script(_ADD)
        self._due = self.r.register_script(_DUE)
        self._settle = self.r.register_script(_SETTLE)

    def add(self, id: str, item: dict, *, lease_s: float | None) -> Lease | None:
        token = secrets.token_hex(8) if lease_s is not None else ""
        added = self._add(keys=[self.key], args=[id, json.dumps(item), token, 1 if token else 0,
                                                 time.time() + (lease_s or 0)])  # fmt: skip
        return Lease(id=id, token=token, item=item, attempt=1) if token and added else None

    def due(self, limit: int, *, lease_s: float) -> list[Lease]:
        if limit <= 0:
            return []
        now, token = time.time(), secrets.token_hex(8)
        flat = self._due(keys=[self.key], args=[now, now + lease_s, token, limit])
        return [Lease(id=_text(flat[i]), token=token, item=json.loads(flat[i + 1]), attempt=int(flat[i + 2]))
                for i in range(0, len(flat), 3)]  # fmt: skip

    def done(self, lease: Lease) -> bool:
        return bool(self._settle(keys=[self.key], args=[lease.id, lease.token, KEEP_S]))

    def retry(self, lease: Lease, at: float) -> bool:
        return bool(self._settle(keys=[self.key], args=[lease.id, lease.token, KEEP_S, at]))

    def next_due(self) -> float | None:
        first = self.r.zrange(self.key, 0, 0, withscores=True)
        return float(first[0][1]) if first else None

    def __len__(self) -> int:
        return self.r.zcard(self.key)

    def close(self) -> None:
        pass


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else value
