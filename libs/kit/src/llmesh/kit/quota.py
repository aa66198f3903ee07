"""Budgets and global rate limits: counters shared by every router replica (docs/adr/0014).

Two stores with one interface and the same semantics:

- `RedisQuotaStore`: the counters live in Redis and every decision is one Lua script, so it is
  atomic across router replicas (all keys of a request share the tenant's hash tag, so this also
  holds on a Redis cluster). Time is Redis's own clock, so replicas' clocks do not matter.
- `MemoryQuotaStore`: the same counters in this process, for the embedded single router of
  `make up` (each operation runs without an await, so it is atomic within the event loop).

Budgets are reserve-then-settle: `reserve` holds a request's worst-case amount on every hard
budget it touches, all or nothing, and refuses when spent + reserved + amount would pass a limit;
`settle` replaces the hold by the actual amount and reports the 50/80/100 % thresholds that this
settle crossed (each one once per counter: the counter remembers the highest one reported). A
reservation nobody settles (a crashed router) expires after its TTL and its hold is released.
Amounts are integers (nano-USD or tokens), so "spent <= limit" is exact.

Rate limits are GCRA (a token bucket without a refill job): a limit of N per minute admits a
burst of N, then one every 60/N s; requests and tokens per minute are checked together, all or
nothing. A store that cannot be reached raises `QuotaStoreUnavailable`; the caller decides what
that means (budgets fail closed, rate limits per policy).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import enum
import math
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

from llmesh.kit.logging import get_logger

log = get_logger("llmesh.quota")

THRESHOLDS = (50, 80, 100)
NANOS_PER_USD = 1_000_000_000
# Counters outlive their period by this long (a settle that arrives late still finds them).
COUNTER_GRACE_S = 3 * 24 * 3600


class QuotaStoreUnavailable(Exception):
    """The store could not be reached or did not answer."""


class Scope(enum.Enum):
    TENANT = "tenant"
    BUSINESS_UNIT = "business_unit"
    USE_CASE = "use_case"
    API_KEY = "api_key"


class Period(enum.Enum):
    DAY = "day"
    MONTH = "month"

    def window(self, now: float) -> tuple[dt.datetime, dt.datetime]:
        """The UTC start and end of the period holding `now` (epoch seconds)."""
        moment = dt.datetime.fromtimestamp(now, dt.UTC)
        if self is Period.DAY:
            start = moment.replace(hour=0, minute=0, second=0, microsecond=0)
            return start, start + dt.timedelta(days=1)
        start = moment.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
        end = start.replace(year=start.year + 1, month=1) if start.month == 12 else start.replace(month=start.month + 1)
        return start, end


class Unit(enum.Enum):
    USD = "usd"
    TOKENS = "tokens"

    def to_int(self, amount: float, *, up: bool) -> int:
        """An amount in this unit as the store's integer (nano-USD or tokens), rounded up or down."""
        scaled = amount * NANOS_PER_USD if self is Unit.USD else amount
        return math.ceil(scaled - 1e-6) if up else math.floor(scaled + 1e-6)

    def from_int(self, value: int) -> float:
        return value / NANOS_PER_USD if self is Unit.USD else float(value)


@dataclasses.dataclass(frozen=True, slots=True)
class Budget:
    name: str
    scope: Scope
    period: Period
    unit: Unit
    limit: float
    hard: bool = True


@dataclasses.dataclass(frozen=True, slots=True)
class RateLimit:
    name: str
    scope: Scope
    requests_per_minute: int | None = None
    tokens_per_minute: int | None = None
    # What happens while the store is down: admit (True) or refuse with UNAVAILABLE (False).
    fail_open: bool = True


@dataclasses.dataclass(frozen=True, slots=True)
class Counter:
    """One budget's counter for one scope value and period: what a request charges."""

    key: str  # the store key (carries the tenant's hash tag)
    budget: Budget
    scope_value: str
    period_start: dt.datetime
    period_end: dt.datetime
    limit: int  # in the store's integer unit

    def ttl_s(self, now: float) -> int:
        return max(1, int(self.period_end.timestamp() - now) + COUNTER_GRACE_S)


@dataclasses.dataclass(frozen=True, slots=True)
class Charge:
    counter: Counter
    amount: int  # in the store's integer unit


@dataclasses.dataclass(frozen=True, slots=True)
class Crossing:
    """A settle took a counter past one of THRESHOLDS percent of its limit."""

    counter: Counter
    threshold_percent: int
    spent: int


@dataclasses.dataclass(frozen=True, slots=True)
class Refusal:
    """A reserve refused by a hard budget: its counter and what was spent and held already."""

    counter: Counter
    spent: int
    reserved: int
    amount: int


@dataclasses.dataclass(frozen=True, slots=True)
class RateCharge:
    key: str
    limit: int  # per minute
    cost: int  # requests or tokens this request takes
    rate_limit: RateLimit
    what: str  # "requests" or "tokens"


@dataclasses.dataclass(frozen=True, slots=True)
class RateRefusal:
    charge: RateCharge
    retry_after_s: float | None  # None: the cost exceeds the limit itself and will never fit


@dataclasses.dataclass(frozen=True, slots=True)
class Balance:
    spent: int
    reserved: int
    alerted_percent: int


class QuotaStore(Protocol):
    async def reserve(self, reservation_id: str, charges: Sequence[Charge], ttl_s: float) -> Refusal | None:
        """Holds every charge's amount, or none of them and returns the refusing counter. A
        reservation id that holds already has its hold replaced (a larger or smaller worst case)."""

    async def settle(self, reservation_id: str, actuals: Sequence[Charge]) -> list[Crossing]:
        """Drops the reservation's holds and adds each actual amount to its counter's spend."""

    async def balance(self, counter: Counter) -> Balance: ...

    async def acquire(self, charges: Sequence[RateCharge]) -> RateRefusal | None:
        """Takes every rate charge, or none and returns the one that refused."""

    async def refund(self, charges: Sequence[RateCharge]) -> None:
        """Gives back each charge's cost (taken by acquire, then not used), never below now."""

    async def close(self) -> None: ...


def hash_tag(tenant_id: str) -> str:
    return "{" + tenant_id + "}"


def counter_for(tenant_id: str, budget: Budget, scope_value: str, now: float) -> Counter:
    start, end = budget.period.window(now)
    key = f"llmesh:q:{hash_tag(tenant_id)}:b:{budget.name}:{budget.scope.value}:{scope_value}:{start:%Y%m%d}"
    return Counter(key, budget, scope_value, start, end, budget.unit.to_int(budget.limit, up=False))


def rate_key(tenant_id: str, limit: RateLimit, scope_value: str, what: str) -> str:
    return f"llmesh:q:{hash_tag(tenant_id)}:rl:{limit.name}:{limit.scope.value}:{scope_value}:{what}"


def crossed(spent: int, limit: int, alerted: int) -> list[int]:
    """Thresholds above `alerted` that `spent` has reached."""
    if limit <= 0:
        return [t for t in THRESHOLDS if t > alerted] if spent > 0 or limit < 0 else []
    return [t for t in THRESHOLDS if t > alerted and spent * 100 >= t * limit]


# --- policy -----------------------------------------------------------------------------------

_NAME_OK = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-.")


def _name(entry: Mapping[str, Any]) -> str:
    name = entry.get("name")
    if not isinstance(name, str) or not name or len(name) > 64 or not set(name) <= _NAME_OK:
        raise ValueError("name must be 1-64 characters of [A-Za-z0-9_.-]")
    return name


def _positive_number(entry: Mapping[str, Any], field: str) -> float:
    value = entry.get(field)
    if isinstance(value, bool) or not isinstance(value, int | float) or value < 0 or not math.isfinite(value):
        raise ValueError(f"{field} must be a number >= 0")
    return float(value)


def parse_budgets(doc: Mapping[str, Any]) -> tuple[Budget, ...]:
    """The policy's `budgets` list; a malformed entry is logged and skipped."""
    entries = doc.get("budgets", [])
    if not isinstance(entries, list):
        log.warning("policy_entry_ignored", field="budgets", error="must be a list")
        return ()
    budgets: dict[str, Budget] = {}
    for entry in entries:
        try:
            if not isinstance(entry, dict):
                raise ValueError("must be an object")
            name = _name(entry)
            hard = entry.get("hard", True)
            if not isinstance(hard, bool):
                raise ValueError("hard must be true or false")
            budgets[name] = Budget(
                name=name,
                scope=Scope(entry.get("scope", "tenant")),
                period=Period(entry.get("period", "month")),
                unit=Unit(entry.get("unit", "usd")),
                limit=_positive_number(entry, "limit"),
                hard=hard,
            )
        except (ValueError, TypeError) as exc:
            log.warning("policy_entry_ignored", field="budgets", entry=repr(entry)[:200], error=str(exc))
    return tuple(budgets.values())


def parse_rate_limits(doc: Mapping[str, Any]) -> tuple[RateLimit, ...]:
    """The policy's `rate_limits` list; a malformed entry is logged and skipped."""
    entries = doc.get("rate_limits", [])
    if not isinstance(entries, list):
        log.warning("policy_entry_ignored", field="rate_limits", error="must be a list")
        return ()
    limits: dict[str, RateLimit] = {}
    for entry in entries:
        try:
            if not isinstance(entry, dict):
                raise ValueError("must be an object")
            name = _name(entry)
            per_minute = {}
            for field in ("requests_per_minute", "tokens_per_minute"):
                if entry.get(field) is not None:
                    value = entry[field]
                    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                        raise ValueError(f"{field} must be an integer >= 1")
                    per_minute[field] = value
            if not per_minute:
                raise ValueError("needs requests_per_minute or tokens_per_minute")
            fail_open = entry.get("fail_open", True)
            if not isinstance(fail_open, bool):
                raise ValueError("fail_open must be true or false")
            limits[name] = RateLimit(
                name=name, scope=Scope(entry.get("scope", "tenant")), fail_open=fail_open, **per_minute
            )
        except (ValueError, TypeError) as exc:
            log.warning("policy_entry_ignored", field="rate_limits", entry=repr(entry)[:200], error=str(exc))
    return tuple(limits.values())


# --- in-process store ---------------------------------------------------------------------------


@dataclasses.dataclass
class _Account:
    spent: int = 0
    reserved: int = 0
    alerted: int = 0
    holds: dict[str, tuple[int, float]] = dataclasses.field(default_factory=dict)  # id → (amount, expires)
    expires_at: float = 0.0


class MemoryQuotaStore:
    """Counters in this process: for one router (the embedded default). Same semantics as Redis."""

    def __init__(self, *, clock: Callable[[], float] = time.time, max_rate_keys: int = 100_000):
        self._clock = clock
        self._accounts: dict[str, _Account] = {}
        self._tat: dict[str, float] = {}
        self._max_rate_keys = max_rate_keys

    def _account(self, counter: Counter, now: float) -> _Account:
        account = self._accounts.get(counter.key)
        if account is None or account.expires_at <= now:
            account = self._accounts[counter.key] = _Account()
        account.expires_at = now + counter.ttl_s(now)
        expired = [rid for rid, (_, until) in account.holds.items() if until <= now]
        for rid in expired:
            account.reserved -= account.holds.pop(rid)[0]
        return account

    def _sweep(self, now: float) -> None:
        for key in [k for k, a in self._accounts.items() if a.expires_at <= now]:
            del self._accounts[key]

    async def reserve(self, reservation_id: str, charges: Sequence[Charge], ttl_s: float) -> Refusal | None:
        now = self._clock()
        if len(self._accounts) > 10_000:
            self._sweep(now)
        accounts = [self._account(c.counter, now) for c in charges]
        for charge, account in zip(charges, accounts, strict=True):
            others = account.reserved - account.holds.get(reservation_id, (0, 0.0))[0]
            if account.spent + others + charge.amount > charge.counter.limit:
                return Refusal(charge.counter, account.spent, others, charge.amount)
        for charge, account in zip(charges, accounts, strict=True):
            previous = account.holds.pop(reservation_id, (0, 0.0))[0]
            account.reserved += charge.amount - previous
            account.holds[reservation_id] = (charge.amount, now + ttl_s)
        return None

    async def settle(self, reservation_id: str, actuals: Sequence[Charge]) -> list[Crossing]:
        now = self._clock()
        crossings = []
        for charge in actuals:
            account = self._account(charge.counter, now)
            hold = account.holds.pop(reservation_id, None)
            if hold is not None:
                account.reserved -= hold[0]
            account.spent += max(0, charge.amount)
            new = crossed(account.spent, charge.counter.limit, account.alerted)
            if new:
                account.alerted = new[-1]
                crossings += [Crossing(charge.counter, t, account.spent) for t in new]
        return crossings

    async def balance(self, counter: Counter) -> Balance:
        account = self._account(counter, self._clock())
        return Balance(account.spent, account.reserved, account.alerted)

    async def acquire(self, charges: Sequence[RateCharge]) -> RateRefusal | None:
        now = self._clock()
        if len(self._tat) > self._max_rate_keys:
            self._tat = {k: v for k, v in self._tat.items() if v > now}
        updates = []
        for charge in charges:
            if charge.cost > charge.limit:
                return RateRefusal(charge, None)
            interval = 60.0 / charge.limit
            tat = max(self._tat.get(charge.key, now), now)
            new_tat = tat + charge.cost * interval
            allow_at = new_tat - 60.0
            if allow_at > now:
                return RateRefusal(charge, allow_at - now)
            updates.append((charge.key, new_tat))
        self._tat.update(updates)
        return None

    async def refund(self, charges: Sequence[RateCharge]) -> None:
        now = self._clock()
        for charge in charges:
            if charge.cost > 0 and charge.key in self._tat:
                self._tat[charge.key] = max(self._tat[charge.key] - charge.cost * 60.0 / charge.limit, now)

    async def close(self) -> None:
        pass


# --- Redis store --------------------------------------------------------------------------------

# Shared by the scripts: Redis's clock in ms, and the release of a counter's expired holds.
# KEYS per counter: the account hash, the sorted set of its holds by expiry.
_LUA_COMMON = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local function purge(h, z)
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
local function num(h, field)
  return tonumber(redis.call('HGET', h, field) or '0')
end
"""

# ARGV: reservation id, ttl ms, then per counter: amount, limit, key ttl s.
# Returns {0} or {index (1-based), spent, reserved}.
_RESERVE = (
    _LUA_COMMON
    + """
local rid, ttl = ARGV[1], tonumber(ARGV[2])
local n = #KEYS / 2
for i = 1, n do
  local h, z = KEYS[2 * i - 1], KEYS[2 * i]
  purge(h, z)
  local amount, limit = tonumber(ARGV[3 * i]), tonumber(ARGV[3 * i + 1])
  local spent, reserved = num(h, 'spent'), num(h, 'reserved')
  local previous = tonumber(redis.call('HGET', h, 'r:' .. rid) or '0')
  if spent + reserved - previous + amount > limit then return {i, spent, reserved - previous} end
end
for i = 1, n do
  local h, z = KEYS[2 * i - 1], KEYS[2 * i]
  local amount, keep = tonumber(ARGV[3 * i]), tonumber(ARGV[3 * i + 2])
  local previous = redis.call('HGET', h, 'r:' .. rid)
  if previous then redis.call('HINCRBY', h, 'reserved', -tonumber(previous)) end
  redis.call('HINCRBY', h, 'reserved', amount)
  redis.call('HSET', h, 'r:' .. rid, amount)
  redis.call('ZADD', z, now + ttl, rid)
  redis.call('EXPIRE', h, keep)
  redis.call('EXPIRE', z, keep)
end
return {0}
"""
)

# ARGV: reservation id, then per counter: actual amount, limit, key ttl s.
# Returns a flat list of {index, threshold, spent} for each threshold crossed now.
_SETTLE = (
    _LUA_COMMON
    + """
local rid = ARGV[1]
local out = {}
for i = 1, #KEYS / 2 do
  local h, z = KEYS[2 * i - 1], KEYS[2 * i]
  purge(h, z)
  local actual, limit, keep = tonumber(ARGV[3 * i - 1]), tonumber(ARGV[3 * i]), tonumber(ARGV[3 * i + 1])
  local held = redis.call('HGET', h, 'r:' .. rid)
  if held then
    redis.call('HINCRBY', h, 'reserved', -tonumber(held))
    redis.call('HDEL', h, 'r:' .. rid)
    redis.call('ZREM', z, rid)
  end
  local spent = redis.call('HINCRBY', h, 'spent', math.max(actual, 0))
  local alerted = num(h, 'alerted')
  local top = alerted
  for _, pct in ipairs({50, 80, 100}) do
    if pct > alerted and ((limit > 0 and spent * 100 >= pct * limit) or (limit <= 0 and spent > 0)) then
      table.insert(out, i)
      table.insert(out, pct)
      table.insert(out, spent)
      top = pct
    end
  end
  if top > alerted then redis.call('HSET', h, 'alerted', top) end
  redis.call('EXPIRE', h, keep)
  redis.call('EXPIRE', z, keep)
end
return out
"""
)

_BALANCE = (
    _LUA_COMMON
    + """
purge(KEYS[1], KEYS[2])
return {num(KEYS[1], 'spent'), num(KEYS[1], 'reserved'), num(KEYS[1], 'alerted')}
"""
)

# GCRA over several limits, all or nothing. KEYS: one per limit; ARGV per limit: limit per
# minute, cost. Returns {0} or {index, retry ms} (retry -1: the cost exceeds the limit).
_ACQUIRE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + tonumber(t[2]) / 1000
local period = 60000
local tats = {}
for i = 1, #KEYS do
  local limit, cost = tonumber(ARGV[2 * i - 1]), tonumber(ARGV[2 * i])
  if cost > limit then return {i, -1} end
  local tat = math.max(tonumber(redis.call('GET', KEYS[i]) or '0'), now)
  local new_tat = tat + cost * period / limit
  local allow_at = new_tat - period
  if allow_at > now then return {i, math.ceil(allow_at - now)} end
  tats[i] = new_tat
end
for i = 1, #KEYS do
  redis.call('SET', KEYS[i], string.format('%.3f', tats[i]), 'PX', math.ceil(tats[i] - now) + 1)
end
return {0}
"""


# KEYS: one per limit; ARGV per limit: limit per minute, cost to give back.
_REFUND = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + tonumber(t[2]) / 1000
for i = 1, #KEYS do
  local tat = tonumber(redis.call('GET', KEYS[i]) or '0')
  if tat > now then
    local limit, cost = tonumber(ARGV[2 * i - 1]), tonumber(ARGV[2 * i])
    local new_tat = math.max(tat - cost * 60000 / limit, now)
    redis.call('SET', KEYS[i], string.format('%.3f', new_tat), 'PX', math.ceil(new_tat - now) + 1)
  end
end
return 0
"""


class RedisQuotaStore:
    """Counters in Redis, shared by every router replica; one Lua script per decision."""

    def __init__(self, url: str, *, timeout_s: float = 0.5, max_connections: int = 64):
        import redis.asyncio as aioredis  # the router's dependency; a kit user without Redis never imports it

        self._url = url
        # A bounded pool: a burst of requests queues for a connection (up to timeout_s) rather
        # than opening one socket each.
        pool = aioredis.BlockingConnectionPool.from_url(
            url,
            max_connections=max_connections,
            timeout=timeout_s,
            socket_timeout=timeout_s,
            socket_connect_timeout=timeout_s,
            health_check_interval=10,
        )
        self._redis = aioredis.Redis(connection_pool=pool)
        self._reserve = self._redis.register_script(_RESERVE)
        self._settle = self._redis.register_script(_SETTLE)
        self._balance = self._redis.register_script(_BALANCE)
        self._acquire = self._redis.register_script(_ACQUIRE)
        self._refund = self._redis.register_script(_REFUND)

    @property
    def url(self) -> str:
        return self._url

    async def _call(self, script, keys: list[str], args: list[Any]) -> list:
        import redis.exceptions

        try:
            return await script(keys=keys, args=args)
        except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, OSError) as exc:
            raise QuotaStoreUnavailable(f"quota store at {self._url} unreachable: {exc}") from exc
        except redis.exceptions.RedisError as exc:
            # E.g. OOM (a quota Redis must not evict: maxmemory-policy noeviction), READONLY replica.
            raise QuotaStoreUnavailable(f"quota store at {self._url} refused the update: {exc}") from exc

    @staticmethod
    def _keys(counters: Sequence[Counter]) -> list[str]:
        keys = []
        for counter in counters:
            keys += [counter.key, counter.key + ":holds"]
        return keys

    async def reserve(self, reservation_id: str, charges: Sequence[Charge], ttl_s: float) -> Refusal | None:
        if not charges:
            return None
        now = time.time()
        args: list[Any] = [reservation_id, max(1, int(ttl_s * 1000))]
        for c in charges:
            args += [c.amount, c.counter.limit, c.counter.ttl_s(now)]
        result = await self._call(self._reserve, self._keys([c.counter for c in charges]), args)
        if int(result[0]) == 0:
            return None
        charge = charges[int(result[0]) - 1]
        return Refusal(charge.counter, int(result[1]), int(result[2]), charge.amount)

    async def settle(self, reservation_id: str, actuals: Sequence[Charge]) -> list[Crossing]:
        if not actuals:
            return []
        now = time.time()
        args: list[Any] = [reservation_id]
        for c in actuals:
            args += [max(0, c.amount), c.counter.limit, c.counter.ttl_s(now)]
        flat = await self._call(self._settle, self._keys([c.counter for c in actuals]), args)
        return [
            Crossing(actuals[int(flat[i]) - 1].counter, int(flat[i + 1]), int(flat[i + 2]))
            for i in range(0, len(flat), 3)
        ]

    async def balance(self, counter: Counter) -> Balance:
        spent, reserved, alerted = await self._call(self._balance, self._keys([counter]), [])
        return Balance(int(spent), int(reserved), int(alerted))

    async def acquire(self, charges: Sequence[RateCharge]) -> RateRefusal | None:
        if not charges:
            return None
        args: list[Any] = []
        for c in charges:
            args += [c.limit, c.cost]
        result = await self._call(self._acquire, [c.key for c in charges], args)
        if int(result[0]) == 0:
            return None
        index, retry_ms = result
        return RateRefusal(charges[int(index) - 1], None if int(retry_ms) < 0 else int(retry_ms) / 1000.0)

    async def refund(self, charges: Sequence[RateCharge]) -> None:
        charges = [c for c in charges if c.cost > 0]
        if not charges:
            return
        args: list[Any] = []
        for c in charges:
            args += [c.limit, c.cost]
        await self._call(self._refund, [c.key for c in charges], args)

    async def ping(self) -> None:
        import redis.exceptions

        try:
            await self._redis.ping()
        except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, OSError) as exc:
            raise QuotaStoreUnavailable(f"quota store at {self._url} unreachable: {exc}") from exc

    async def close(self) -> None:
        await self._redis.aclose()


def open_store(redis_url: str, *, timeout_s: float = 0.5) -> QuotaStore:
    """Redis when a URL is given, else the in-process store."""
    return RedisQuotaStore(redis_url, timeout_s=timeout_s) if redis_url else MemoryQuotaStore()
