"""Per-job polling backoff: IonQ's helper schedule (1 s, x1.5, cap 30 s) plus jitter."""

from __future__ import annotations

import math
import random

from daemon.config import PollingConfig


class Backoff:
    """The next poll interval of a job, from its previous one."""

    def __init__(self, policy: PollingConfig, rng: random.Random | None = None) -> None:
        self.policy = policy
        self._rng = rng or random.Random()

    def first(self) -> float:
        return self._jittered(self.policy.initial_interval)

    def near_end(self) -> float:
        """The interval of a job near its predicted end: ``near_end_factor`` of the cap."""
        p = self.policy
        return self._jittered(max(p.max_interval * p.near_end_factor, p.initial_interval))

    def next(self, previous: float | None) -> float:
        """The interval after ``previous``: grown by the factor, capped, jittered.

        ``previous`` is the jittered value a job stored; growth starts from the schedule
        step it was drawn from, so jitter does not compound along a job's life.
        """
        if previous is None:
            return self.first()
        p = self.policy
        grown = min(self._step_of(previous) * p.backoff_factor, p.max_interval)
        return self._jittered(grown)

    def step_of(self, interval: float) -> float:
        """The un-jittered schedule value nearest ``interval`` (1, 1.5, 2.25, ... 30 s)."""
        return self._step_of(interval)

    def _step_of(self, interval: float) -> float:
        """The un-jittered schedule value nearest ``interval``."""
        p = self.policy
        if interval >= p.max_interval * (1 - p.jitter):
            return p.max_interval
        if p.backoff_factor <= 1 or interval <= p.initial_interval:
            return p.initial_interval
        k = round(math.log(interval / p.initial_interval, p.backoff_factor))
        return min(p.initial_interval * p.backoff_factor ** k, p.max_interval)

    def _jittered(self, interval: float) -> float:
        # jitter spreads jobs submitted together so their polls do not stay in lockstep
        j = self.policy.jitter
        value = interval * (1 + self._rng.uniform(-j, j)) if j else interval
        return min(value, self.policy.max_interval * (1 + j))
