"""Budget counters with atomic reservations, and request-rate counters: Redis Lua scripts, or a
process-local twin.

Each counter (one subject, one meter, one period) holds ``used`` (settled usage) and ``reserved``
(the sum of open reservations, each with an expiry). ``admit`` checks every counter of a model call
and reserves on all of them, or on none, in one atomic step: in Redis one Lua script (scripts run
alone), in the embedded default one lock. A counter admits while ``used + reserved < limit``, so N
concurrent callers can overshoot a limit by at most the last admitted reservation. A reservation
expires after the TTL given at reservation unless ``renew`` pushes its expiry forward (its call is
still running); one never settled (its worker crashed, so nobody renews it) then lapses.

Missing counters (a new period, or Redis lost its data) are seeded from the durable rollup: admit
returns which are missing, the caller computes the seeds from the database and admits again.

Request rates are fixed windows: ``count_rates`` counts one request against every rate that
applies, in order, in one step (one round trip to Redis however many rates there are), and stops at
the first rate the request goes over: the later ones do not count it.
"""
from __future__ import annotations

import heapq
import threading
import time
from dataclasses import dataclass

MISSING = "missing"
ADMITTED = "admitted"
REFUSED = "refused"


@dataclass(frozen=True)
class Admission:
    outcome: str  # ADMITTED, REFUSED or MISSING
    refused_index: int | None = None  # which counter refused (0-based)
    spent: bool = True  # refused by its used amount alone (False: by reservations of calls in flight)
    missing: tuple[int, ...] = ()  # which counters need a seed (0-based)


@dataclass(frozen=True)
class CounterCall:
    """One counter as the ledger sees it."""

    key: str
    limit: int
    amount: int
    expires_at: int  # epoch seconds after which the counter itself may be dropped
    seed: int | None = None


_PURGE = """
local function purge(h, z, now)
  local expired = redis.call('ZRANGEBYSCORE', z, '-inf', now)
  for _, rid in ipairs(expired) do
    local amount = redis.call('HGET', h, 'r:' .. rid)
    if amount then
      redis.call('HINCRBY', h, 'reserved', -tonumber(amount))
      redis.call('HDEL', h, 'r:' .. rid)
    end
  end
  if #expired > 0 then redis.call('ZREMRANGEBYSCORE', z, '-inf', now) end
end
"""

# KEYS: per counter, its hash then its reservation-expiry zset.
# ARGV: now, reservation id ('' = only check), reservation expiry, then per counter:
#       limit, amount, seed ('' = none), counter expiry.
# Refuses {0, i, 1} when counter i's used amount reaches its limit; a reservation is also refused
# {0, i, 0} while used + reserved does (calls in flight hold the rest). A check admits then.
ADMIT_LUA = _PURGE + """
local now, rid, rexp = tonumber(ARGV[1]), ARGV[2], tonumber(ARGV[3])
local n = #KEYS / 2
-- Already admitted: this is the same admission run again (its reply was lost, the pool retried).
if rid ~= '' and n > 0 and redis.call('HEXISTS', KEYS[1], 'r:' .. rid) == 1 then return {1} end
local missing = {}
for i = 1, n do
  local h, base = KEYS[2 * i - 1], 3 + (i - 1) * 4
  if redis.call('EXISTS', h) == 0 then
    if ARGV[base + 3] == '' then
      missing[#missing + 1] = i
    else
      redis.call('HSET', h, 'used', ARGV[base + 3], 'reserved', 0)
      redis.call('EXPIREAT', h, ARGV[base + 4])
    end
  end
end
if #missing > 0 then return {-1, missing} end
for i = 1, n do
  local h, z, base = KEYS[2 * i - 1], KEYS[2 * i], 3 + (i - 1) * 4
  purge(h, z, now)
  local used = tonumber(redis.call('HGET', h, 'used') or '0')
  local reserved = tonumber(redis.call('HGET', h, 'reserved') or '0')
  local limit = tonumber(ARGV[base + 1])
  if used >= limit then return {0, i, 1} end
  if rid ~= '' and used + reserved >= limit then return {0, i, 0} end
end
if rid ~= '' then
  for i = 1, n do
    local h, z, base = KEYS[2 * i - 1], KEYS[2 * i], 3 + (i - 1) * 4
    redis.call('HINCRBY', h, 'reserved', ARGV[base + 2])
    redis.call('HSET', h, 'r:' .. rid, ARGV[base + 2])
    redis.call('ZADD', z, rexp, rid)
    redis.call('EXPIREAT', z, ARGV[base + 4])
  end
end
return {1}
"""

# KEYS: per counter, its hash, its reservation-expiry zset and its settled zset (the reservations
# settled until when they are remembered). ARGV: reservation id, now, until when this settlement is
# remembered, then per counter the usage to book. A reservation settled already is not booked
# again: the same settlement run again (its reply was lost, the pool retried) changes nothing.
# Returns per counter its used amount after booking, or -1 where nothing was booked (settled
# already, or no counter).
SETTLE_LUA = """
local rid, now, keep = ARGV[1], tonumber(ARGV[2]), ARGV[3]
local out = {}
for i = 1, #KEYS / 3 do
  local h, z, done = KEYS[3 * i - 2], KEYS[3 * i - 1], KEYS[3 * i]
  out[i] = -1
  redis.call('ZREMRANGEBYSCORE', done, '-inf', now)
  if not redis.call('ZSCORE', done, rid) then
    local amount = redis.call('HGET', h, 'r:' .. rid)
    if amount then
      redis.call('HINCRBY', h, 'reserved', -tonumber(amount))
      redis.call('HDEL', h, 'r:' .. rid)
    end
    redis.call('ZREM', z, rid)
    if redis.call('EXISTS', h) == 1 then out[i] = redis.call('HINCRBY', h, 'used', ARGV[3 + i]) end
    redis.call('ZADD', done, keep, rid)
    redis.call('EXPIREAT', done, keep)
  end
end
return out
"""

# KEYS: per (counter, reservation), the counter's reservation-expiry zset. ARGV: the new expiry, then
# the reservation id per key. Only a reservation still there is pushed forward (XX): a settled or
# purged one is never brought back. Returns how many were.
RENEW_LUA = """
local renewed = 0
for i = 1, #KEYS do
  if redis.call('ZSCORE', KEYS[i], ARGV[i + 1]) then
    redis.call('ZADD', KEYS[i], 'XX', ARGV[1], ARGV[i + 1])
    renewed = renewed + 1
  end
end
return renewed
"""

# ARGV: now. Returns used, reserved per counter (-1, 0 when missing).
READ_LUA = _PURGE + """
local now, out = tonumber(ARGV[1]), {}
for i = 1, #KEYS / 2 do
  local h, z = KEYS[2 * i - 1], KEYS[2 * i]
  if redis.call('EXISTS', h) == 0 then
    out[#out + 1] = -1
    out[#out + 1] = 0
  else
    purge(h, z, now)
    out[#out + 1] = tonumber(redis.call('HGET', h, 'used') or '0')
    out[#out + 1] = tonumber(redis.call('HGET', h, 'reserved') or '0')
  end
end
return out
"""

# Sets used to 0 and returns what it was (-1 when missing); open reservations stay.
TAKE_USED_LUA = """
local out = {}
for i = 1, #KEYS do
  if redis.call('EXISTS', KEYS[i]) == 0 then
    out[#out + 1] = -1
  else
    out[#out + 1] = tonumber(redis.call('HGET', KEYS[i], 'used') or '0')
    redis.call('HSET', KEYS[i], 'used', 0)
  end
end
return out
"""


# KEYS: per rate, the counter of its current window. ARGV: per rate, its limit and how many seconds
# the counter is kept (relative: Redis' clock need not agree with ours). Returns the counts, up to
# the first over its limit.
RATES_LUA = """
local counts = {}
for i = 1, #KEYS do
  local count = redis.call('INCR', KEYS[i])
  if count == 1 then redis.call('EXPIRE', KEYS[i], ARGV[2 * i]) end
  counts[i] = count
  if count > tonumber(ARGV[2 * i - 1]) then break end
end
return counts
"""


@dataclass(frozen=True)
class RateCall:
    """One rate's counter for the current window, as the ledger sees it."""

    key: str
    limit: int
    expires_at: int  # epoch seconds after which the counter itself may be dropped

    def keep_seconds(self, now: float) -> int:
        return max(1, int(self.expires_at - now))


MAX_LOCAL_RATE_COUNTERS = 100_000  # the embedded default's bound; past it the lowest counts are dropped


# How long a settlement is remembered, so that the same one run again is not booked twice: the
# Redis pools try a command once more at once after a connection error (gateway_project/redis_pool.py),
# which may have come after Redis ran it.
SETTLED_KEPT_SECONDS = 60


def _zkey(key: str) -> str:
    return f"{key}:res"


def _settled_key(key: str) -> str:
    return f"{key}:settled"


class RedisLedger:
    """The services-mode ledger: every process and worker shares these counters."""

    def __init__(self, client):
        self.client = client
        self._admit = client.register_script(ADMIT_LUA)
        self._settle = client.register_script(SETTLE_LUA)
        self._renew = client.register_script(RENEW_LUA)
        self._read = client.register_script(READ_LUA)
        self._take_used = client.register_script(TAKE_USED_LUA)
        self._count_rates = client.register_script(RATES_LUA)

    @staticmethod
    def _keys(keys: list[str]) -> list[str]:
        return [k for key in keys for k in (key, _zkey(key))]

    def admit(self, counters: list[CounterCall], *, reservation_id: str, now: float,
              reservation_expires_at: float) -> Admission:
        args: list = [now, reservation_id, reservation_expires_at]
        for c in counters:
            args += [c.limit, c.amount, "" if c.seed is None else c.seed, c.expires_at]
        reply = self._admit(keys=self._keys([c.key for c in counters]), args=args)
        if reply[0] == -1:
            return Admission(MISSING, missing=tuple(i - 1 for i in reply[1]))
        if reply[0] == 0:
            return Admission(REFUSED, refused_index=reply[1] - 1, spent=bool(reply[2]))
        return Admission(ADMITTED)

    def settle(self, keys: list[str], *, reservation_id: str, amounts: list[int]) -> list[int | None]:
        """Book ``amounts``; returns each counter's used amount after, None where nothing was booked."""
        now = time.time()
        used = self._settle(keys=[k for key in keys for k in (key, _zkey(key), _settled_key(key))],
                            args=[reservation_id, now, int(now) + SETTLED_KEPT_SECONDS, *amounts])
        return [None if u == -1 else int(u) for u in used]

    def renew(self, reservations: list[tuple[list[str], str]], *, expires_at: float) -> int:
        """Push the expiry of these (counter keys, reservation id) to ``expires_at``, where they are
        still open, in one round trip; returns how many (counter, reservation) were."""
        pairs = [(key, rid) for keys, rid in reservations for key in keys]
        if not pairs:
            return 0
        return int(self._renew(keys=[_zkey(key) for key, _ in pairs], args=[expires_at, *(r for _, r in pairs)]))

    def read(self, keys: list[str], *, now: float) -> list[tuple[int, int] | None]:
        flat = self._read(keys=self._keys(keys), args=[now])
        pairs = zip(flat[::2], flat[1::2], strict=True)
        return [None if used == -1 else (int(used), int(reserved)) for used, reserved in pairs]

    def take_used(self, keys: list[str]) -> list[int | None]:
        return [None if v == -1 else int(v) for v in self._take_used(keys=keys)]

    def forget(self, keys: list[str]) -> None:
        """Drop these counters and their open reservations: the next admission re-seeds them."""
        if keys:
            self.client.delete(*self._keys(keys))

    def count_rates(self, rates: list[RateCall], *, now: float) -> list[int]:
        """Count one request on each rate in order, up to the first it goes over: their counts."""
        args = [a for r in rates for a in (r.limit, r.keep_seconds(now))]
        return [int(c) for c in self._count_rates(keys=[r.key for r in rates], args=args)]

    def rate_counts(self, keys: list[str], *, now: float) -> list[int]:
        """The current counts of these rate counters, without counting (0 for none yet)."""
        return [int(c or 0) for c in self.client.mget(keys)] if keys else []

    def clear(self, prefix: str) -> None:
        """Drop every counter under ``prefix`` (tests and benchmarks only)."""
        for key in self.client.scan_iter(match=f"{prefix}*", count=1000):
            self.client.delete(key)


class LocalLedger:
    """The embedded default's ledger: the same rules in this process, under one lock.

    The embedded default is one process (like its local-memory cache and in-memory channel
    layer), so a process-local ledger is shared by everything that can spend; a crash takes its
    open reservations with it, and the counters are re-seeded from the rollup at the next start.
    """

    def __init__(self):
        self._lock = threading.Lock()
        self._counters: dict[str, dict] = {}
        self._rates: dict[str, list] = {}  # key -> [count, expires_at]
        self._rates_swept_at = 0.0

    def _purge(self, entry: dict, now: float) -> None:
        for rid, (amount, expires) in list(entry["res"].items()):
            if expires <= now:
                entry["reserved"] -= amount
                del entry["res"][rid]

    def admit(self, counters: list[CounterCall], *, reservation_id: str, now: float,
              reservation_expires_at: float) -> Admission:
        with self._lock:
            for c in counters:
                entry = self._counters.get(c.key)
                if entry is not None and entry["expires_at"] <= now:
                    del self._counters[c.key]
            missing = tuple(i for i, c in enumerate(counters) if c.key not in self._counters and c.seed is None)
            if missing:
                return Admission(MISSING, missing=missing)
            for c in counters:
                self._counters.setdefault(c.key, {"used": c.seed, "reserved": 0, "res": {}, "expires_at": c.expires_at})
            for i, c in enumerate(counters):
                entry = self._counters[c.key]
                self._purge(entry, now)
                if entry["used"] >= c.limit:
                    return Admission(REFUSED, refused_index=i)
                if reservation_id and entry["used"] + entry["reserved"] >= c.limit:
                    return Admission(REFUSED, refused_index=i, spent=False)
            if reservation_id:
                for c in counters:
                    entry = self._counters[c.key]
                    entry["reserved"] += c.amount
                    entry["res"][reservation_id] = (c.amount, reservation_expires_at)
            return Admission(ADMITTED)

    def settle(self, keys: list[str], *, reservation_id: str, amounts: list[int]) -> list[int | None]:
        with self._lock:
            used = []
            for key, amount in zip(keys, amounts, strict=True):
                entry = self._counters.get(key)
                if entry is None:
                    used.append(None)
                    continue
                held = entry["res"].pop(reservation_id, None)
                if held is not None:
                    entry["reserved"] -= held[0]
                entry["used"] += amount
                used.append(entry["used"])
            return used

    def renew(self, reservations: list[tuple[list[str], str]], *, expires_at: float) -> int:
        with self._lock:
            renewed = 0
            for keys, rid in reservations:
                for key in keys:
                    entry = self._counters.get(key)
                    if entry is not None and rid in entry["res"]:  # settled or purged: not brought back
                        entry["res"][rid] = (entry["res"][rid][0], expires_at)
                        renewed += 1
            return renewed

    def read(self, keys: list[str], *, now: float) -> list[tuple[int, int] | None]:
        with self._lock:
            out = []
            for key in keys:
                entry = self._counters.get(key)
                if entry is None:
                    out.append(None)
                    continue
                self._purge(entry, now)
                out.append((entry["used"], entry["reserved"]))
            return out

    def take_used(self, keys: list[str]) -> list[int | None]:
        with self._lock:
            out = []
            for key in keys:
                entry = self._counters.get(key)
                out.append(None if entry is None else entry["used"])
                if entry is not None:
                    entry["used"] = 0
            return out

    def forget(self, keys: list[str]) -> None:
        with self._lock:
            for key in keys:
                self._counters.pop(key, None)

    def count_rates(self, rates: list[RateCall], *, now: float) -> list[int]:
        with self._lock:
            full = len(self._rates) >= MAX_LOCAL_RATE_COUNTERS  # e.g. a flood of new addresses
            if full or now - self._rates_swept_at > 60:  # past windows' counters are never asked for again
                self._rates = {k: v for k, v in self._rates.items() if v[1] > now}
                self._rates_swept_at = now
            if len(self._rates) >= MAX_LOCAL_RATE_COUNTERS:
                # Still full: drop a tenth, the lowest counts first (a flood's one-request counters
                # go before a sender's who is near or over a limit).
                for key in heapq.nsmallest(len(self._rates) - MAX_LOCAL_RATE_COUNTERS * 9 // 10, self._rates,
                                           key=lambda k: tuple(self._rates[k])):
                    del self._rates[key]
            counts = []
            for rate in rates:
                entry = self._rates.get(rate.key)
                if entry is None or entry[1] <= now:
                    self._rates.pop(rate.key, None)  # a new window goes last, as the newest
                    entry = self._rates[rate.key] = [0, rate.expires_at]
                entry[0] += 1
                counts.append(entry[0])
                if entry[0] > rate.limit:
                    break
            return counts

    def rate_counts(self, keys: list[str], *, now: float) -> list[int]:
        with self._lock:
            return [entry[0] if (entry := self._rates.get(key)) and entry[1] > now else 0 for key in keys]

    def clear(self, prefix: str) -> None:
        with self._lock:
            for key in [k for k in self._counters if k.startswith(prefix)]:
                del self._counters[key]
            for key in [k for k in self._rates if k.startswith(prefix)]:
                del self._rates[key]


_ledgers: dict[str, object] = {}
_ledgers_lock = threading.Lock()


def get_ledger():
    """The ledger for GATEWAY_QUOTA_REDIS_URL (Redis), or the process-local one when it is empty."""
    from django.conf import settings

    url = settings.GATEWAY_QUOTA_REDIS_URL
    ledger = _ledgers.get(url)
    if ledger is None:
        with _ledgers_lock:
            ledger = _ledgers.get(url)
            if ledger is None:
                if url:
                    import redis

                    from gateway_project.redis_pool import waiting_pool

                    timeout = settings.GATEWAY_QUOTA_REDIS_TIMEOUT_SECONDS
                    client = redis.Redis(connection_pool=waiting_pool(
                        url, socket_timeout=timeout, socket_connect_timeout=timeout))
                    ledger = RedisLedger(client)
                else:
                    ledger = LocalLedger()
                _ledgers[url] = ledger
    return ledger
