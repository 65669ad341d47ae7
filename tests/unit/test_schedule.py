"""The per-job poll schedule: IonQ's helper backoff (1 s, x1.5, cap 30 s) plus jitter, the
stretch of a predicted wait, the near-end cap, what the store must hear, the resume spread.

No event loop and no sleeping: the wall clock is a FakeClock the tests move by hand.
"""

from __future__ import annotations

import random

import pytest

from qjobd.daemon.config import PollingConfig
from qjobd.daemon.engine.schedule import UNBUDGETED_RESUME_RATE, Backoff, PollSchedule

SPEC = PollingConfig(initial_interval=1.0, backoff_factor=1.5, max_interval=30.0, jitter=0.1)
EXACT = PollingConfig(initial_interval=1.0, backoff_factor=1.5, max_interval=30.0, jitter=0.0)
IONQ_SCHEDULE = [1.0, 1.5, 2.25, 3.375, 5.0625, 7.59375, 11.390625, 17.0859375,
                 25.62890625, 30.0, 30.0, 30.0]


def chain(backoff: Backoff, n: int) -> list[float]:
    """The first n intervals of one job, each computed from the previous one."""
    values = [backoff.first()]
    while len(values) < n:
        values.append(backoff.next(values[-1]))
    return values


def schedule(p: PollingConfig, n: int) -> list[float]:
    """The un-jittered schedule: initial, grown by the factor, capped at max."""
    values = [p.initial_interval]
    while len(values) < n:
        values.append(min(values[-1] * p.backoff_factor, p.max_interval))
    return values


def test_without_jitter_the_schedule_is_ionqs():
    assert chain(Backoff(EXACT), len(IONQ_SCHEDULE)) == pytest.approx(IONQ_SCHEDULE, abs=1e-12)


def test_the_schedule_follows_the_policy():
    p = PollingConfig(initial_interval=0.5, backoff_factor=2.0, max_interval=3.0, jitter=0.0)
    assert chain(Backoff(p), 6) == pytest.approx([0.5, 1.0, 2.0, 3.0, 3.0, 3.0])


def test_a_factor_of_one_polls_at_a_constant_interval():
    p = PollingConfig(initial_interval=2.0, backoff_factor=1.0, max_interval=30.0, jitter=0.0)
    assert chain(Backoff(p), 5) == [2.0] * 5


def test_next_of_none_is_the_first_interval():
    assert Backoff(EXACT).next(None) == 1.0


def test_an_interval_below_initial_grows_from_initial():
    assert Backoff(EXACT).next(0.01) == pytest.approx(1.5)


def test_an_interval_above_max_comes_back_to_max():
    assert Backoff(EXACT).next(100.0) == 30.0


def test_first_is_around_initial():
    backoff = Backoff(SPEC, random.Random(1))
    firsts = [backoff.first() for _ in range(200)]
    assert all(0.9 <= v <= 1.1 for v in firsts)
    assert sum(firsts) / len(firsts) == pytest.approx(1.0, abs=0.02)
    # spread over both sides of initial, not stuck at one end
    assert min(firsts) < 0.95
    assert max(firsts) > 1.05


def test_jitter_makes_values_differ():
    backoff = Backoff(SPEC, random.Random(2))
    assert len({backoff.first() for _ in range(50)}) == 50
    assert len({backoff.next(5.0) for _ in range(50)}) == 50


def test_the_same_seed_gives_the_same_sequence():
    assert chain(Backoff(SPEC, random.Random(7)), 15) == chain(Backoff(SPEC, random.Random(7)), 15)
    assert chain(Backoff(SPEC, random.Random(7)), 15) != chain(Backoff(SPEC, random.Random(8)), 15)


@pytest.mark.parametrize("previous", schedule(SPEC, 12))
def test_each_step_stays_within_jitter_of_the_grown_interval(previous):
    backoff = Backoff(SPEC, random.Random(3))
    grown = min(previous * SPEC.backoff_factor, SPEC.max_interval)
    values = [backoff.next(previous) for _ in range(100)]
    assert all(grown * 0.9 <= v <= grown * 1.1 for v in values)
    assert min(values) < grown < max(values)


def test_jittered_values_never_exceed_max_plus_jitter():
    for seed in range(5):
        values = chain(Backoff(SPEC, random.Random(seed)), 40)
        assert max(values) <= SPEC.max_interval * 1.1
        # at the cap, jobs still spread around max
        assert all(27.0 <= v <= 33.0 for v in values[15:])


def test_a_jobs_chain_stays_within_jitter_of_the_unjittered_schedule():
    expected = schedule(SPEC, 14)
    for seed in range(5):
        values = chain(Backoff(SPEC, random.Random(seed)), 14)
        for got, want in zip(values, expected, strict=True):
            assert want * 0.9 <= got <= want * 1.1, (seed, values)


# -- PollSchedule: the backoff plus predictions, on an injected clock ------------------------

#: the schedule of the IonQ tests, without jitter: predictions trusted at 0.5, at most
#: 300 s; after a predicted wait, a cap of 0.8 x 30 s = 24 s
PREDICTING = PollingConfig(initial_interval=1.0, backoff_factor=1.5, max_interval=30.0,
                           jitter=0.0)


class FakeClock:
    """Wall time that moves only when the test says."""

    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def poll_schedule(p: PollingConfig = PREDICTING, seed: int = 0) -> tuple[PollSchedule, FakeClock]:
    clock = FakeClock()
    return PollSchedule(p, clock=clock, rng=random.Random(seed)), clock


def test_a_new_job_waits_the_first_interval_and_its_due_time_is_on_the_given_clock():
    schedule, clock = poll_schedule()
    first = schedule.first()
    assert (first.wait, first.interval, first.step, first.near_end) == (1.0, 1.0, 1.0, False)
    assert first.at == clock.now + 1.0
    clock.now += 500
    assert schedule.first().at == clock.now + 1.0


def test_each_poll_that_finds_the_job_unchanged_grows_its_wait_by_the_factor():
    schedule, _ = poll_schedule()
    interval, waits = None, []
    for _ in range(len(IONQ_SCHEDULE)):
        nxt = schedule.after(interval)
        waits.append(nxt.wait)
        interval = nxt.interval
    assert waits == pytest.approx(IONQ_SCHEDULE, abs=1e-12)


def test_a_job_polled_early_to_fill_a_request_keeps_its_interval():
    schedule, clock = poll_schedule()
    nxt = schedule.after(5.0625, early=True)
    assert (nxt.wait, nxt.interval, nxt.at) == (5.0625, 5.0625, clock.now + 5.0625)
    assert schedule.after(None, early=True).interval == 1.0  # nothing to keep: the first


def test_a_predicted_time_left_stretches_the_wait_to_its_trusted_share():
    schedule, clock = poll_schedule()
    nxt = schedule.after(1.5, eta=100.0)  # ~100 s left: trusted at 0.5
    assert nxt.wait == 50.0 and nxt.at == clock.now + 50.0
    # from then on the job is near its end: its schedule goes on from that wait, capped
    # at 0.8 of max_interval (24 s), not at the 30 s cap
    assert nxt.near_end and nxt.interval == 24.0 and nxt.step == 24.0


def test_a_short_prediction_goes_on_from_the_wait_not_from_the_near_end_cap():
    schedule, _ = poll_schedule()
    nxt = schedule.after(1.0, eta=10.0)  # a 5 s wait: the next ones grow from ~5 s
    assert (nxt.wait, nxt.interval, nxt.near_end) == (5.0, 5.0, True)
    # 5 s is nearest the schedule's 5.0625 s step: the next is 7.59 s, not 24 s
    assert schedule.after(nxt.interval, near_end=True).interval == 5.0625 * 1.5


def test_a_prediction_never_stretches_a_wait_beyond_prediction_max_wait():
    schedule, _ = poll_schedule(PollingConfig(jitter=0.0, prediction_max_wait=40.0))
    assert schedule.after(1.0, eta=10_000.0).wait == 40.0


def test_a_prediction_shorter_than_the_backoff_changes_nothing():
    schedule, _ = poll_schedule()
    nxt = schedule.after(25.62890625, eta=10.0)  # 5 s trusted, the backoff says 30 s
    assert (nxt.wait, nxt.interval, nxt.near_end) == (30.0, 30.0, False)


def test_near_its_predicted_end_a_job_grows_to_the_near_end_cap_only():
    schedule, _ = poll_schedule()
    assert schedule.after(24.0, near_end=True).interval == 24.0
    assert schedule.after(24.0).interval == 30.0


def test_without_trust_predictions_and_the_near_end_cap_are_ignored():
    schedule, _ = poll_schedule(PollingConfig(jitter=0.0, prediction_trust=0.0))
    nxt = schedule.after(24.0, near_end=True, eta=1_000.0)
    assert (nxt.wait, nxt.interval) == (30.0, 30.0)


def test_the_store_hears_of_a_new_step_but_not_of_the_same_step_again():
    schedule, _ = poll_schedule(SPEC)
    at_cap = schedule.after(30.0)
    assert at_cap.step == 30.0
    assert not at_cap.is_news(saved_step=30.0, saved_at=at_cap.at - 30.0)
    assert at_cap.is_news(saved_step=25.62890625, saved_at=at_cap.at - 30.0)
    assert at_cap.is_news(saved_step=None, saved_at=None)


def test_the_store_hears_of_a_poll_earlier_than_the_one_it_holds():
    schedule, clock = poll_schedule()
    stretched = schedule.after(30.0, eta=1_000.0)  # 300 s away, and stored
    clock.now += 1.0
    early = schedule.after(stretched.interval, early=True, near_end=True)
    assert early.step == stretched.step
    # a crash would resume the job at the stored (later) time: rewrite it
    assert early.is_news(saved_step=stretched.step, saved_at=stretched.at)


def test_the_step_of_a_stored_interval_is_the_schedule_value_it_was_drawn_from():
    schedule, _ = poll_schedule(SPEC)
    assert schedule.step_of(2.3) == 2.25
    assert schedule.step_of(31.0) == 30.0


# ScriptedBackend's 100 ids per status request, as the engine test had them
@pytest.mark.parametrize(("overdue", "rate", "seconds"), [
    (100_000, 0.0, min(100_000 / 100 / UNBUDGETED_RESUME_RATE, 30.0)),  # unbudgeted: paced
    (10, 0.0, 1.0),            # a few jobs: no slower than the first interval
    (10_000, 5.0, 20.0),       # 100 requests at 5/s
    (1_000_000, 5.0, 30.0),    # never longer than max_interval
])
def test_a_restart_spreads_its_overdue_polls_over_what_the_budget_needs(overdue, rate,
                                                                        seconds):
    schedule, _ = poll_schedule(SPEC)
    assert schedule.resume_spread(overdue, per_request=100, rate=rate) == seconds


def test_a_restart_spread_counts_one_job_per_request_without_batched_status():
    schedule, _ = poll_schedule(SPEC)
    assert schedule.resume_spread(500, per_request=1, rate=50.0) == 10.0
