"""Per-job polling backoff: IonQ's helper schedule (1 s, x1.5, cap 30 s) plus jitter."""

from __future__ import annotations

import random

import pytest

from qjobd.daemon.config import PollingConfig
from qjobd.daemon.engine.backoff import Backoff

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
