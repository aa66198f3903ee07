"""The launcher's restart policy, on its own: no processes, no clock."""

from __future__ import annotations

import pytest
from llmesh.launcher.backoff import RestartPolicy


def test_the_wait_doubles_from_the_first_crash_up_to_the_cap():
    policy = RestartPolicy(initial_s=0.5, factor=2.0, max_s=30.0)
    assert [policy.delay_s(n) for n in range(1, 10)] == [0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0, 30.0]


def test_a_long_crash_loop_stays_at_the_cap():
    policy = RestartPolicy(max_s=30.0)
    assert policy.delay_s(10_000) == 30.0


def test_crashes_in_a_row_grow_until_the_process_stayed_up_long_enough():
    policy = RestartPolicy(reset_after_s=60.0)
    crashes = 0
    for _ in range(3):
        crashes = policy.crashes_in_a_row(crashes, uptime_s=2.0)
    assert crashes == 3
    assert policy.crashes_in_a_row(crashes, uptime_s=59.9) == 4
    assert policy.crashes_in_a_row(crashes, uptime_s=60.0) == 1, "a process that recovered starts a new run"
    assert policy.delay_s(policy.crashes_in_a_row(crashes, uptime_s=600.0)) == policy.initial_s
    assert not policy.recovered(59.9) and policy.recovered(60.0)


def test_a_crash_loop_is_named_from_the_configured_run_length():
    policy = RestartPolicy(crash_loop_after=5)
    assert not policy.in_crash_loop(4)
    assert policy.in_crash_loop(5) and policy.in_crash_loop(50)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"initial_s": 0.0},
        {"factor": 0.5},
        {"initial_s": 10.0, "max_s": 5.0},
        {"reset_after_s": 0.0},
        {"crash_loop_after": 0},
    ],
)
def test_an_inconsistent_policy_is_refused(kwargs):
    with pytest.raises(ValueError):
        RestartPolicy(**kwargs)


def test_crashes_count_from_one():
    with pytest.raises(ValueError):
        RestartPolicy().delay_s(0)
