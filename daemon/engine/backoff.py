"""Per-job polling backoff: IonQ's helper schedule (1 s, x1.5, cap 30 s) plus jitter."""

from __future__ import annotations

import math
import random

from qjobd.daemon.config import PollingConfig


class Backoff:
    """The next poll interval of a job, from its previous one.

    ``cap`` (where taken) lowers the schedule's cap for one job: a job near its predicted
    end grows to ``near_end_cap()`` rather than to ``max_interval``.
    """

    def __init__(self, policy: PollingConfig, rng: random.Random | None = None) -> None:
        self.policy = policy
        self._rng = rng or random.Random()

    def first(self) -> float:
        return self._jittered(self.policy.initial_interval)

    def near_end_cap(self) -> float:
        """The cap of a job near its predicted end: ``near_end_factor`` of ``max_interval``."""
        p = self.policy
        return max(p.max_interval * p.near_end_factor, p.initial_interval)

    def at_most(self, interval: float, cap: float) -> float:
        """``interval``, or ``cap`` if that is shorter, jittered."""
        return self._jittered(min(interval, cap), cap)

    def next(self, previous: float | None, cap: float | None = None) -> float:
        """The interval after ``previous``: grown by the factor, capped, jittered.

        ``previous`` is the jittered value a job stored; growth starts from the schedule
        step it was drawn from, so jitter does not compound along a job's life.
        """
        if previous is None:
            return self.first()
        top = self._top(cap)
        grown = min(self._step_of(previous, top) * self.policy.backoff_factor, top)
        return self._jittered(grown, top)

    def step_of(self, interval: float, cap: float | None = None) -> float:
        """The un-jittered schedule value nearest ``interval`` (1, 1.5, 2.25, ... 30 s)."""
        return self._step_of(interval, self._top(cap))

    def _top(self, cap: float | None) -> float:
        return self.policy.max_interval if cap is None else min(cap, self.policy.max_interval)

    def _step_of(self, interval: float, top: float) -> float:
        """The un-jittered schedule value nearest ``interval``, at most ``top``."""
        p = self.policy
        if interval >= top * (1 - p.jitter):
            return top
        if p.backoff_factor <= 1 or interval <= p.initial_interval:
            return p.initial_interval
        k = round(math.log(interval / p.initial_interval, p.backoff_factor))
        return min(p.initial_interval * p.backoff_factor ** k, top)

    def _jittered(self, interval: float, top: float | None = None) -> float:
        # jitter spreads jobs submitted together so their polls do not stay in lockstep
        j = self.policy.jitter
        value = interval * (1 + self._rng.uniform(-j, j)) if j else interval
        return min(value, (self.policy.max_interval if top is None else top) * (1 + j))
