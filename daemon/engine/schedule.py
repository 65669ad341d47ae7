"""The per-job poll schedule: how long a job waits for its next poll.

IonQ's helper schedule (1 s, x1.5, cap 30 s) plus jitter, stretched by the provider's
prediction of the time a job has left, and capped lower once that predicted time is
over. Pure: the only clock is the one it is given (wall time, for the due times the
store and the API show) and the only randomness its ``rng``.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass

from qjobd.daemon.config import PollingConfig

#: the pace (requests/s) a restart's overdue polls are spread at when the backend has no
#: budget: "unlimited" must not mean 4,000 requests in the first second after a restart
UNBUDGETED_RESUME_RATE = 100.0


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


@dataclass(frozen=True, slots=True)
class NextPoll:
    """A job's next poll, as the schedule sets it."""

    #: seconds from now
    wait: float
    #: its wall time (what the API shows, and the store keeps when it is news)
    at: float
    #: the job's interval from now on: where its backoff goes on from
    interval: float
    #: the un-jittered schedule step ``interval`` was drawn from
    step: float
    #: a predicted wait is over: the job's cap is the near-end one from now on
    near_end: bool

    def is_news(self, saved_step: float | None, saved_at: float | None) -> bool:
        """Whether the store must be told, given the step and due time it holds.

        A new step of the backoff is news; so is a poll earlier than the stored one (a
        crash would resume the job that late: a stretched wait cut short by an early
        poll). The same step again is not: a job at the cap is not rewritten at each
        poll (100,000 jobs at 30 s would be 3,300 row updates a second); a crash finds
        its stored due time overdue, and a restart polls it within the resume spread.
        """
        return self.step != saved_step or (saved_at is not None and saved_at > self.at)


class PollSchedule:
    """When each job is polled next: the backoff, the prediction stretch, the near-end cap.

    ``clock`` gives wall time (``time.time`` by default); ``rng`` the jitter.
    """

    def __init__(self, polling: PollingConfig, *, clock: Callable[[], float] = time.time,
                 rng: random.Random | None = None) -> None:
        self.polling = polling
        self._backoff = Backoff(polling, rng)
        self._clock = clock

    def first(self) -> NextPoll:
        """The first poll of a job just created remotely."""
        interval = self._backoff.first()
        return NextPoll(wait=interval, at=self._clock() + interval, interval=interval,
                        step=self._backoff.step_of(interval), near_end=False)

    def step_of(self, interval: float) -> float:
        """The schedule step a stored interval was drawn from (what the store holds)."""
        return self._backoff.step_of(interval)

    def after(self, interval: float | None, *, early: bool = False, near_end: bool = False,
              eta: float | None = None) -> NextPoll:
        """The poll after one that found the job where it was.

        ``interval`` is the job's current interval (None: start the schedule again).
        ``early``: that poll came before it was due, to fill a request: the job keeps
        its interval. ``eta``, the provider's prediction of the time the job has left,
        stretches the wait to ``prediction_trust`` of it (at most
        ``prediction_max_wait``): a job predicted to wait in a queue for ten more minutes
        is not asked about every 30 s meanwhile. After a stretched wait the job is near
        its predicted end: its schedule goes on from the length of that wait, capped at
        ``near_end_factor`` of ``max_interval`` (a job that old would be polled at the
        cap; a little more often buys quicker detection with some of the polls saved,
        and a young job is not pushed to the cap).
        """
        backoff, p = self._backoff, self.polling
        trust = p.prediction_trust
        cap = backoff.near_end_cap() if near_end and trust else None
        if early and interval is not None:
            new = interval
        else:
            new = backoff.next(interval, cap)
        wait = new
        if eta is not None and trust:
            stretched = min(trust * eta, p.prediction_max_wait)
            if stretched > new:
                wait = stretched
                near_end, cap = True, backoff.near_end_cap()
                new = backoff.at_most(stretched, cap)
        return NextPoll(wait=wait, at=self._clock() + wait, interval=new,
                        step=backoff.step_of(new, cap), near_end=near_end)

    def resume_spread(self, overdue: int, *, per_request: int, rate: float) -> float:
        """Seconds over which a restart spreads ``overdue`` polls that fell due while the
        daemon was down (``rate``: the budget, 0 = unlimited).

        Not fired at once: the budget would hold a burst back anyway, but a spread keeps
        the order fair and the first seconds responsive. At least the first interval, at
        most ``max_interval``.
        """
        needed = overdue / max(1, per_request) / (rate or UNBUDGETED_RESUME_RATE)
        return min(max(needed, self.polling.initial_interval), self.polling.max_interval)
