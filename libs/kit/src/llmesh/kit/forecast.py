"""Predictive scaling: each service forecasts its own load `lead` seconds ahead (the time a new
pod needs to start and warm up) from its history, and exports the forecast as a gauge that the
autoscaler scales on next to the current load (docs/adr/0025).

`SeasonalForecaster` is the model, pure (no clock, no I/O; the bench replays weeks through it):

- 168 hour-of-week slots (UTC, Monday 00:00 is slot 0), each the exponentially weighted average
  across weeks of the load seen in that hour (the newest week weighs `week_alpha`);
- a level: the ratio of each finished hour's load to what its slot expected, smoothed across the
  last hours (`level_alpha` per hour); it carries a trend (this week 20 % above the last ones)
  into the forecast, its effect fading over `damping_s` of lead. Hours, not minutes: a slot holds
  an hour's mean, and a minute compared with it misreads a ramp inside the hour (9:00-9:10) as a
  collapse of the load;
- forecast(t + lead) = seasonal(t + lead) × (1 + (level − 1) × exp(−lead / damping_s)); while the
  slot has no history yet, the recent load (a reactive forecast).

`LoadForecast` runs it in a service: every `step_s` it reads the service's request counter, shares
its rate with the service's other replicas in its region over NATS (so every replica learns the
load of the whole service, which does not change when the autoscaler adds pods), learns the sum,
keeps the history in the NATS KV bucket `llmesh-forecast` (key `<region>.<service>`, so a restart
or a new pod starts with the weeks learned), and sets `llmesh_forecast_requests_per_second{service,horizon}`
and `llmesh_service_requests_per_second{service}`."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import math
import os
import socket
import time
import uuid
from collections.abc import Callable, Mapping
from typing import Any

from google.protobuf import timestamp_pb2
from llmesh.events.v1 import events_pb2
from llmesh.kit.config import ServerSettings, positive, setting
from llmesh.kit.logging import get_logger
from llmesh.kit.metrics import FORECAST, RPC_REQUESTS, SERVICE_LOAD
from nats.js.errors import KeyNotFoundError

log = get_logger("llmesh.forecast")

SLOTS = 168
HOUR_S = 3600.0
WEEK_S = SLOTS * HOUR_S
# 1970-01-01 was a Thursday: shifting by three days puts Monday 00:00 UTC at slot 0.
_MONDAY_SHIFT_S = 3 * 24 * HOUR_S
# A ratio of recent to expected load is kept within these bounds (one odd minute cannot make the
# forecast explode or vanish).
MIN_LEVEL, MAX_LEVEL = 0.2, 5.0
STATE_VERSION = 1

FORECAST_BUCKET = "llmesh-forecast"
LOAD_SUBJECT_PREFIX = "llmesh.forecast.load"
# RPCs that are not the service's work: probes and tooling.
NOT_LOAD = frozenset({"Check", "Watch", "ServerReflectionInfo"})


def at_least_one(value: float) -> str | None:
    return None if value >= 1 else "must be >= 1"


@dataclasses.dataclass(frozen=True)
class ForecastSettings(ServerSettings):
    """What a service that forecasts its load reads (router, cache, classifier, inference)."""

    forecast_lead_s: float = setting(
        "LLMESH_FORECAST_LEAD_S",
        900.0,
        "seconds ahead the load forecast looks (the time a new replica needs to be ready); the "
        "autoscaler reads it as llmesh_forecast_requests_per_second",
        positive,
    )
    forecast_step_s: float = setting(
        "LLMESH_FORECAST_STEP_S",
        60.0,
        "seconds between the load samples the replicas share and learn (at least 1; the same for every replica)",
        at_least_one,
    )
    forecast_bucket: str = setting(
        "LLMESH_FORECAST_BUCKET", FORECAST_BUCKET, "NATS KV bucket keeping each service's load history"
    )


def slot_of(ts: float) -> int:
    """The hour-of-week slot (0 = Monday 00:00-01:00 UTC) of Unix time `ts`."""
    return int(((ts + _MONDAY_SHIFT_S) % WEEK_S) // HOUR_S)


def horizon_label(lead_s: float) -> str:
    """`15m`, `1h`, `90s`: the `horizon` label value of a lead."""
    if lead_s % 3600 == 0:
        return f"{int(lead_s // 3600)}h"
    if lead_s % 60 == 0:
        return f"{int(lead_s // 60)}m"
    return f"{lead_s:g}s"


class SeasonalForecaster:
    """Hour-of-week seasonality learned across weeks, with a level from the last minutes."""

    def __init__(
        self,
        *,
        week_alpha: float = 0.5,
        level_alpha: float = 0.5,
        recent_window_s: float = 300.0,
        damping_s: float = 3600.0,
        floor: float = 0.05,
    ):
        if not (0.0 < week_alpha <= 1.0 and 0.0 < level_alpha <= 1.0):
            raise ValueError("week_alpha and level_alpha must be in (0, 1]")
        if recent_window_s <= 0 or damping_s <= 0 or floor <= 0:
            raise ValueError("recent_window_s, damping_s and floor must be positive")
        self.week_alpha = week_alpha
        self.level_alpha = level_alpha
        # The recent load (the forecast while a slot has no history) is smoothed over this.
        self.recent_window_s = recent_window_s
        self.damping_s = damping_s
        # Loads below this are noise: the level's ratio adds it to both sides.
        self.floor = floor
        self.season: list[float | None] = [None] * SLOTS
        self.level = 1.0
        self.recent: float | None = None
        self.last_ts: float | None = None
        # The hour being observed now (hours since the epoch), its sum and number of samples.
        self._hour: int | None = None
        self._sum = 0.0
        self._count = 0

    # --- learning ------------------------------------------------------------------------

    def observe(self, ts: float, load: float) -> None:
        """Learns `load` (e.g. requests/s over the step that ended at `ts`)."""
        load = max(0.0, float(load))
        if self.last_ts is not None and ts <= self.last_ts:
            return  # a sample out of order (a clock step back): ignored
        hour = int(ts // HOUR_S)
        if self._hour is not None and hour != self._hour:
            self._fold()
        if self._hour != hour:
            self._hour, self._sum, self._count = hour, 0.0, 0
        self._sum += load
        self._count += 1

        step = self.recent_window_s if self.last_ts is None else ts - self.last_ts
        beta = 1.0 - math.exp(-step / self.recent_window_s)
        self.recent = load if self.recent is None else self.recent + beta * (load - self.recent)
        self.last_ts = ts

    def _fold(self) -> None:
        """Compares the finished hour with what its slot expected (the level), then folds the
        hour's mean into the slot."""
        if self._hour is None or self._count == 0:
            return
        slot = slot_of(self._hour * HOUR_S)
        mean = self._sum / self._count
        old = self.season[slot]
        if old is None:
            self.season[slot] = mean
            return
        ratio = min(MAX_LEVEL, max(MIN_LEVEL, (mean + self.floor) / (old + self.floor)))
        self.level += self.level_alpha * (ratio - self.level)
        self.season[slot] = old + self.week_alpha * (mean - old)

    # --- forecasting ---------------------------------------------------------------------

    def seasonal(self, ts: float) -> float | None:
        """What the slots expect at `ts`: its hour-of-week slot's value (None before it has one).
        Not interpolated between slots: a ramp at 9:00 shows in the forecast exactly `lead` before
        9:00 at its full height (interpolation would show half of it half an hour early, and the
        forecast at 9:15 for 9:30 would be the mean of 9:00 and 10:00)."""
        return self.season[slot_of(ts)]

    def predict(self, ts: float, lead_s: float) -> float | None:
        """The load expected at `ts + lead_s`, from what was learned up to `ts`; None before any
        observation."""
        expected = self.seasonal(ts + lead_s)
        if expected is None:
            return self.recent
        trend = (self.level - 1.0) * math.exp(-lead_s / self.damping_s)
        return max(0.0, expected * (1.0 + trend))

    @property
    def slots_learned(self) -> int:
        return sum(1 for value in self.season if value is not None)

    # --- persistence ---------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        return {
            "version": STATE_VERSION,
            "season": self.season,
            "level": self.level,
            "recent": self.recent,
            "last_ts": self.last_ts,
            "hour": self._hour,
            "sum": self._sum,
            "count": self._count,
        }

    def restore(self, state: Mapping[str, Any]) -> None:
        """Takes the history of `to_dict` (another replica's, or this one's before a restart)."""
        if state.get("version") != STATE_VERSION:
            raise ValueError(f"forecast state version {state.get('version')!r}, expected {STATE_VERSION}")
        season = state["season"]
        if not isinstance(season, list) or len(season) != SLOTS:
            raise ValueError(f"forecast state: season must list {SLOTS} slots")
        self.season = [None if v is None else max(0.0, float(v)) for v in season]
        self.level = min(MAX_LEVEL, max(MIN_LEVEL, float(state.get("level", 1.0))))
        self.recent = None if state.get("recent") is None else float(state["recent"])
        self.last_ts = None if state.get("last_ts") is None else float(state["last_ts"])
        self._hour = None if state.get("hour") is None else int(state["hour"])
        self._sum = float(state.get("sum", 0.0))
        self._count = int(state.get("count", 0))


def requests_handled(service: str) -> float:
    """The RPCs `service` has answered in this process (its work: probes and reflection left out)."""
    total = 0.0
    for family in RPC_REQUESTS.collect():
        for sample in family.samples:
            if (
                sample.name.endswith("_total")
                and sample.labels.get("service") == service
                and sample.labels.get("method") not in NOT_LOAD
            ):
                total += sample.value
    return total


class LoadForecast:
    """One replica's part: measures its rate every `step_s`, shares it, learns the service's sum
    (a window is learned once every replica had a step to report it), exports the forecast."""

    def __init__(
        self,
        service: str,
        *,
        region: str = "local",
        instance: str | None = None,
        lead_s: float = 900.0,
        step_s: float = 60.0,
        bus=None,
        bucket: str = FORECAST_BUCKET,
        forecaster: SeasonalForecaster | None = None,
        count: Callable[[], float] | None = None,
        clock: Callable[[], float] = time.time,
        save_every: int = 5,
    ):
        if lead_s <= 0 or step_s < 1:
            raise ValueError("lead_s must be positive and step_s at least 1 s")
        self.service = service
        self.region = region
        self.instance = instance or uuid.uuid4().hex[:12]
        self.lead_s = lead_s
        self.step_s = step_s
        self.forecaster = forecaster or SeasonalForecaster()
        self._bus = bus
        self._bucket = bucket
        self._kv = None
        self._count = count or (lambda: requests_handled(service))
        self._clock = clock
        self._save_every = max(1, save_every)
        self._ticks = 0
        self._last_count: float | None = None
        self._last_at: float | None = None
        # window start → instance → requests/s; learned once a later window started.
        self._windows: dict[int, dict[str, float]] = {}
        self._horizon = horizon_label(lead_s)
        self._lock = asyncio.Lock()

    @property
    def subject(self) -> str:
        return f"{LOAD_SUBJECT_PREFIX}.{self.region}.{self.service}"

    @property
    def key(self) -> str:
        """The service's history in the KV bucket (regions learn their own load)."""
        return f"{self.region}.{self.service}"

    def _window(self, ts: float) -> int:
        return int(ts // self.step_s) * int(self.step_s)

    async def start(self) -> None:
        """Loads the history kept in NATS KV and listens to the other replicas' samples."""
        self._last_count, self._last_at = self._count(), self._clock()
        if self._bus is None:
            return
        await self._bus.subscribe(self.subject, self._on_sample)
        try:
            self._kv = await self._bus.js.create_key_value(bucket=self._bucket, history=1)
            entry = await self._kv.get(self.key)
        except KeyNotFoundError:
            log.info("forecast_history_empty", service=self.service)
        except Exception as exc:  # no JetStream: the forecast learns, but a restart starts it afresh
            log.warning("forecast_history_unavailable", service=self.service, error=repr(exc))
        else:
            try:
                self.forecaster.restore(json.loads(entry.value))
                log.info("forecast_history_loaded", service=self.service, slots=self.forecaster.slots_learned)
            except (ValueError, KeyError, TypeError) as exc:
                log.warning("forecast_history_ignored", service=self.service, error=str(exc))
        self._publish_gauges()

    async def _on_sample(self, data: bytes) -> None:
        sample = events_pb2.LoadSample.FromString(data)
        if sample.service != self.service or sample.instance == self.instance:
            return
        window = int(sample.window_start.seconds)
        if self._windows and window < min(self._windows):
            return  # too late: that window was learned already
        self._windows.setdefault(window, {})[sample.instance] = max(0.0, sample.requests_per_second)

    async def tick(self) -> None:
        """Measures the rate since the last tick, shares it, learns the windows every replica
        reported, and updates the gauges."""
        async with self._lock:
            now, count = self._clock(), self._count()
            if self._last_at is None or self._last_count is None or now <= self._last_at:
                self._last_count, self._last_at = count, now
                return
            rate = max(0.0, count - self._last_count) / (now - self._last_at)
            window = self._window(now) - int(self.step_s)  # the window that just ended
            self._last_count, self._last_at = count, now
            self._windows.setdefault(window, {})[self.instance] = rate
            await self._share(window, rate)
            # A window is complete once the next one ended too: every replica ticked in between.
            for start in sorted(w for w in self._windows if w < window):
                total = sum(self._windows.pop(start).values())
                self.forecaster.observe(start + self.step_s, total)
                SERVICE_LOAD.labels(self.service).set(total)
            self._publish_gauges()
            self._ticks += 1
            if self._ticks % self._save_every == 0:
                await self.save()

    async def _share(self, window: int, rate: float) -> None:
        if self._bus is None:
            return
        event = events_pb2.LoadSample(
            event_id=uuid.uuid4().hex,
            service=self.service,
            instance=self.instance,
            window_start=timestamp_pb2.Timestamp(seconds=window),
            window_s=self.step_s,
            requests_per_second=rate,
        )
        await self._bus.publish_core(self.subject, event, msg_id=event.event_id)

    def forecast(self) -> float | None:
        last = self.forecaster.last_ts
        return None if last is None else self.forecaster.predict(last, self.lead_s)

    def _publish_gauges(self) -> None:
        value = self.forecast()
        if value is not None:
            FORECAST.labels(self.service, self._horizon).set(value)

    async def save(self) -> None:
        """Writes the history to NATS KV (every replica learns the same sums: the last write wins)."""
        if self._kv is None:
            return
        try:
            await self._kv.put(self.key, json.dumps(self.forecaster.to_dict()).encode())
        except Exception as exc:  # NATS away: the next save tries again
            log.warning("forecast_history_not_saved", service=self.service, error=repr(exc))


async def start_forecast(app, settings: ForecastSettings, bus) -> LoadForecast:
    """A service's forecast: started (history loaded, peers heard), ticking every step while
    `app` runs. Call `save()` on stop, before the bus closes."""
    forecast = LoadForecast(
        app.name,
        region=settings.region,
        instance=f"{socket.gethostname()}-{os.getpid()}",
        lead_s=settings.forecast_lead_s,
        step_s=settings.forecast_step_s,
        bus=bus,
        bucket=settings.forecast_bucket,
    )
    await forecast.start()
    app.every(settings.forecast_step_s, forecast.tick, name=f"{app.name}-forecast")
    return forecast
