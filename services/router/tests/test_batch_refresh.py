"""The cache refresh's off-peak window (batch_refresh.py): the quietest hour before the next peak
of the hour-of-day histogram of hits."""

from __future__ import annotations

from llmesh.services.router.batch_refresh import off_peak_window

DAY = 1_800_028_800 - 1_800_028_800 % 86400  # a UTC midnight
H = 3600


def hours(**counts: int) -> list[int]:
    histogram = [0] * 24
    for name, count in counts.items():
        histogram[int(name.removeprefix("h"))] = count
    return histogram


def test_the_window_is_the_quietest_hour_before_the_peak_the_latest_of_equals():
    # A morning peak at 09:00, some traffic in the evening; planned at 20:30.
    histogram = hours(h9=50, h10=30, h20=8, h21=5, h22=2, h23=1, h0=0, h1=0, h2=0, h3=0, h4=1, h5=3, h6=6, h7=9, h8=20)
    window = off_peak_window(histogram, DAY + 20 * H + 1800)
    assert window.peak_start == DAY + 24 * H + 9 * H and window.peak_end == window.peak_start + H
    assert window.start == DAY + 24 * H + 3 * H  # 00:00-03:00 are as quiet: 03:00, the closest to the peak


def test_in_the_window_already_it_starts_now_and_a_peak_now_means_tomorrows():
    histogram = hours(h14=10, h13=1)
    now = DAY + 13 * H + 600
    window = off_peak_window(histogram, now)
    assert (window.start, window.peak_start) == (now, DAY + 14 * H)
    during_peak = DAY + 14 * H + 60
    assert off_peak_window(histogram, during_peak).peak_start == DAY + 24 * H + 14 * H


def test_no_hits_no_window():
    assert off_peak_window([0] * 24, DAY) is None
