"""The load forecaster learns a weekly pattern from its own history and forecasts ahead of a
ramp that a reactive autoscaler only sees once it happened; a trend above the learned weeks
carries into the forecast; replicas share their rates over NATS and learn the service's sum; the
history survives a restart in NATS KV."""

from __future__ import annotations

import datetime
import random

import pytest
from llmesh.kit.bus import Bus
from llmesh.kit.forecast import SLOTS, LoadForecast, SeasonalForecaster, horizon_label, slot_of
from llmesh.kit.testing import assert_eventually, unique
from prometheus_client import REGISTRY

pytestmark = pytest.mark.timeout(60)

MINUTE = 60.0
# A Monday, 00:00 UTC.
MONDAY = datetime.datetime(2025, 3, 3, tzinfo=datetime.UTC).timestamp()


def office_load(ts: float, rng: random.Random, scale: float = 1.0) -> float:
    """A load unlike the bench's: a plateau from 8:00 to 18:00 on weekdays, a night floor, a
    quieter Saturday, Friday afternoons half as busy, ±10 % noise."""
    day, hour = divmod(((ts - MONDAY) % (7 * 86400)) / 3600.0, 24.0)
    if day < 5 and 8 <= hour < 18:
        base = 60.0 if not (day == 4 and hour >= 13) else 30.0
    elif day == 5 and 10 <= hour < 16:
        base = 12.0
    else:
        base = 4.0
    return scale * base * rng.uniform(0.9, 1.1)


def test_slots_are_hours_of_the_week_from_monday_utc():
    assert slot_of(MONDAY) == 0
    assert slot_of(MONDAY + 9 * 3600 + 59 * 60) == 9
    assert slot_of(MONDAY + 6 * 86400 + 23 * 3600) == SLOTS - 1
    assert slot_of(MONDAY + 7 * 86400) == 0
    assert (horizon_label(900), horizon_label(3600), horizon_label(90)) == ("15m", "1h", "90s")


def test_it_learns_a_weekly_pattern_and_rises_before_the_morning_ramp():
    rng = random.Random(7)
    forecaster = SeasonalForecaster()
    ts = MONDAY
    for _ in range(3 * 7 * 24 * 60):  # three weeks, a sample a minute
        ts += MINUTE
        forecaster.observe(ts, office_load(ts, rng))
    assert forecaster.slots_learned == SLOTS

    # The fourth week: each minute, the forecast 15 minutes ahead against what then comes.
    errors = []
    forecasts = {}
    for _ in range(7 * 24 * 60):
        forecasts[ts + 15 * MINUTE] = forecaster.predict(ts, 15 * MINUTE)
        ts += MINUTE
        actual = office_load(ts, rng)
        forecaster.observe(ts, actual)
        if ts in forecasts:
            errors.append(abs(forecasts[ts] - actual) / actual)
    mape = sum(errors) / len(errors)
    assert mape < 0.2, mape

    # Tuesday of that week, 7:50: the recent load is the night's, the forecast for 8:05 already the day's.
    tuesday = MONDAY + 3 * 7 * 86400 + 86400
    ramp_forecast = forecasts[tuesday + 8 * 3600 + 5 * MINUTE]
    assert ramp_forecast > 20.0, ramp_forecast
    before = forecasts[tuesday + 6 * 3600]
    assert before < 8.0, before


def test_a_week_busier_than_the_history_lifts_the_forecast_through_the_level():
    rng = random.Random(11)
    forecaster = SeasonalForecaster()
    ts = MONDAY
    for _ in range(2 * 7 * 24 * 60):
        ts += MINUTE
        forecaster.observe(ts, office_load(ts, rng))
    # The third week runs 50 % above: by Monday 11:00 the forecast for 11:15 says so.
    while ts < MONDAY + 2 * 7 * 86400 + 11 * 3600:
        ts += MINUTE
        forecaster.observe(ts, office_load(ts, rng, scale=1.5))
    assert forecaster.predict(ts, 15 * MINUTE) == pytest.approx(90.0, rel=0.15)
    assert forecaster.level == pytest.approx(1.5, rel=0.15)


def test_without_history_the_forecast_is_the_recent_load_and_state_round_trips():
    forecaster = SeasonalForecaster()
    assert forecaster.predict(MONDAY, 900) is None
    for i in range(30):
        forecaster.observe(MONDAY + i * MINUTE, 10.0)
    assert forecaster.predict(MONDAY + 29 * MINUTE, 900) == pytest.approx(10.0)

    copy = SeasonalForecaster()
    copy.restore(forecaster.to_dict())
    assert copy.to_dict() == forecaster.to_dict()
    with pytest.raises(ValueError):
        copy.restore({"version": 99, "season": []})
    with pytest.raises(ValueError):
        SeasonalForecaster(week_alpha=0)


class Clock:
    def __init__(self, now: float):
        self.now = now

    def __call__(self) -> float:
        return self.now


async def test_replicas_learn_the_sum_of_their_rates_and_the_history_survives_a_restart(nats_url):
    service = unique("svc")
    bucket = unique("forecast")
    clock = Clock(MONDAY + 9 * 3600 + 10)
    counts = {"a": 0.0, "b": 0.0}
    buses = [await Bus.connect(nats_url, "forecast-a"), await Bus.connect(nats_url, "forecast-b")]
    replicas = [
        LoadForecast(service, instance=name, bus=bus, bucket=bucket, count=lambda n=name: counts[n], clock=clock)
        for name, bus in zip(counts, buses, strict=True)
    ]
    try:
        for replica in replicas:
            await replica.start()
        for _ in range(4):  # four minutes: a handles 6 requests/s, b 3
            clock.now += MINUTE
            counts["a"] += 6 * MINUTE
            counts["b"] += 3 * MINUTE
            await replicas[0].tick()
            await replicas[1].tick()
            # b's sample reaches a before a's next tick (core NATS, same server).
            await assert_eventually(lambda: any("b" in w for w in replicas[0]._windows.values()), timeout_s=5)
        for replica in replicas:
            assert replica.forecaster.recent == pytest.approx(9.0), replica.instance
        assert REGISTRY.get_sample_value("llmesh_service_requests_per_second", {"service": service}) == 9.0
        forecast = REGISTRY.get_sample_value(
            "llmesh_forecast_requests_per_second", {"service": service, "horizon": "15m"}
        )
        assert forecast == pytest.approx(9.0)
        await replicas[0].save()

        # A new replica starts from the history kept in KV.
        fresh = LoadForecast(service, instance="c", bus=buses[1], bucket=bucket, count=lambda: 0.0, clock=clock)
        await fresh.start()
        assert fresh.forecaster.to_dict() == replicas[0].forecaster.to_dict()
    finally:
        for bus in buses:
            await bus.close()
