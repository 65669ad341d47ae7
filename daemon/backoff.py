"""Per-job polling backoff: IonQ's helper schedule (1 s, x1.5, cap 30 s) plus jitter."""

from __future__ import annotations

import random

from daemon.config import PollingConfig


class Backoff:
    """The next poll interval of a job, from its previous one."""

    def __init__(self, policy: PollingConfig, rng: random.Random | None = None) -> None:
        self.policy = policy
        self._rng = rng or random.Random()

    def first(self) -> float:
        return self._jittered(self.policy.initial_interval)

    def next(self, previous: float | None) -> float:
        """The interval after ``previous``: grown by the factor, capped, jittered."""
        if previous is None:
            return self.first()
        p = self.policy
        # strip the old jitter's effect by growing from the un-jittered value's range
        grown = min(max(previous, p.initial_interval) * p.backoff_factor, p.max_interval)
        return self._jittered(grown)

    def _jittered(self, interval: float) -> float:
        # jitter spreads jobs submitted together so their polls do not stay in lockstep
        j = self.policy.jitter
        value = interval * (1 + self._rng.uniform(-j, j)) if j else interval
        return min(value, self.policy.max_interval * (1 + j))
