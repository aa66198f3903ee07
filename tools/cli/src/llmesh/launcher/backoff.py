"""When the launcher restarts a process that exited: exponential backoff with a cap, reset once the
process has stayed up a while (docs/adr/0009-local-launcher-supervision.md)."""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class RestartPolicy:
    #: wait before the first restart of a run of crashes
    initial_s: float = 0.5
    #: each further crash in a row multiplies the wait by this
    factor: float = 2.0
    #: the wait never exceeds this; a crash loop is retried at this pace for as long as the mesh runs
    max_s: float = 30.0
    #: a process that ran at least this long had recovered: its next exit starts a new run at 1
    reset_after_s: float = 60.0
    #: this many crashes in a row are reported as a crash loop
    crash_loop_after: int = 5

    def __post_init__(self) -> None:
        if self.initial_s <= 0 or self.factor < 1 or self.max_s < self.initial_s or self.reset_after_s <= 0:
            raise ValueError(f"inconsistent restart policy: {self}")
        if self.crash_loop_after < 1:
            raise ValueError("crash_loop_after must be at least 1")

    def recovered(self, uptime_s: float) -> bool:
        """True once a process has run long enough for its past crashes to be forgotten."""
        return uptime_s >= self.reset_after_s

    def crashes_in_a_row(self, previous: int, uptime_s: float) -> int:
        """The length of the run of crashes after an exit `uptime_s` seconds after the start."""
        return 1 if self.recovered(uptime_s) else previous + 1

    def delay_s(self, crashes: int) -> float:
        """Seconds to wait before restarting after the `crashes`-th crash in a row (1: the first)."""
        if crashes < 1:
            raise ValueError("crashes counts from 1")
        # Past the cap the exponent no longer matters; bounding it keeps the float finite.
        exponent = min(crashes - 1, 64)
        return min(self.max_s, self.initial_s * self.factor**exponent)

    def in_crash_loop(self, crashes: int) -> bool:
        return crashes >= self.crash_loop_after
