"""The poll calendar: due job ids in 10-ms slots, on an injected clock (no event loop)."""

from __future__ import annotations

from qjobd.daemon.engine.calendar import SLOT, PollCalendar


class FakeClock:
    def __init__(self, now: float = 100.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def calendar() -> tuple[PollCalendar, FakeClock]:
    clock = FakeClock()
    return PollCalendar(clock), clock


def test_an_empty_calendar_has_nothing_due_and_no_wait():
    cal, _ = calendar()
    assert cal.wait() is None
    assert cal.take_due(60.0) == []
    assert cal.take_next() is None


def test_the_wait_is_until_the_earliest_slot_on_the_given_clock():
    cal, clock = calendar()
    cal.add("a", clock.now + 5.0)
    assert abs(cal.wait() - 5.0) <= SLOT
    clock.now += 4.0
    assert abs(cal.wait() - 1.0) <= SLOT
    clock.now += 2.0
    assert cal.wait() < 0  # overdue


def test_adding_says_whether_the_poll_is_now_the_earliest():
    cal, clock = calendar()
    assert cal.add("a", clock.now + 5.0)  # the first: a sleeping poller must wake
    assert not cal.add("b", clock.now + 9.0)
    assert cal.add("c", clock.now + 1.0)
    assert not cal.add("d", clock.now + 1.001)  # the same slot as c: no earlier wait


def test_polls_due_together_come_out_together_earliest_first():
    cal, clock = calendar()
    cal.add("late", clock.now + 0.04)
    cal.add("first", clock.now - 1.0)
    cal.add("second", clock.now - 0.5)
    cal.add("second-too", clock.now - 0.5)  # one slot, in the order filed
    cal.add("tomorrow", clock.now + 86_400)
    assert cal.take_due() == ["first", "second", "second-too"]
    clock.now += 0.01
    assert cal.take_due(window=0.05) == ["late"]  # within the coalescing window
    assert abs(cal.wait() - 86_400) < 1


def test_take_next_fills_a_request_from_the_polls_due_soonest():
    cal, clock = calendar()
    cal.add("in-a-minute", clock.now + 60)
    cal.add("soon", clock.now + 1)
    cal.add("soon-too", clock.now + 1)
    assert cal.take_next() == "soon-too"
    assert cal.take_next() == "soon"
    assert abs(cal.wait() - 60) <= SLOT  # the emptied slot is gone
    assert cal.take_next() == "in-a-minute"
    assert cal.take_next() is None and cal.wait() is None


def test_a_job_filed_twice_comes_out_twice():
    # the reader checks what it takes (a job may have ended or been rescheduled since)
    cal, clock = calendar()
    cal.add("a", clock.now - 1)
    cal.add("a", clock.now - 1)
    assert cal.take_due() == ["a", "a"]


def test_a_hundred_thousand_polls_spread_over_30_s_use_one_entry_per_slot():
    cal, clock = calendar()
    for i in range(100_000):
        cal.add(f"j{i}", clock.now + (i % 3000 + 0.5) * SLOT)  # mid-slot: no float edge
    assert len(cal._heap) == 3000
    clock.now += 30.0
    assert len(cal.take_due()) == 100_000
