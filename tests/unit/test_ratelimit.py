"""A backend's request budget: a token bucket shared by every request, with 429 pauses."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest

from qjobd.daemon.engine.ratelimit import Priority, RequestBudget

EPS = 1e-6  # float slack for lower bounds measured with loop.time()


def now() -> float:
    return asyncio.get_running_loop().time()


async def until(cond: Callable[[], bool], limit: float = 2.0) -> None:
    """Wait for a condition, failing after a deadline of `limit` seconds."""
    deadline = now() + limit
    while not cond():
        if now() > deadline:
            pytest.fail("condition not met before the deadline")
        await asyncio.sleep(0.001)


async def grant_times(budget: RequestBudget, n: int, tasks: int = 1) -> list[float]:
    """Acquire n times from `tasks` concurrent acquirers; return the grant times, sorted."""
    times: list[float] = []
    remaining = [n]

    async def worker() -> None:
        while remaining[0] > 0:
            remaining[0] -= 1
            await budget.acquire()
            times.append(now())

    await asyncio.gather(*(worker() for _ in range(tasks)))
    return sorted(times)


async def test_n_acquires_take_n_minus_one_over_rate():
    rate, n = 100.0, 21
    budget = RequestBudget(rate)
    start = now()
    times = await grant_times(budget, n)
    assert times[-1] - times[0] >= (n - 1) / rate - EPS
    assert times[0] - start < 0.05  # the first request goes out at once
    assert now() - start < (n - 1) / rate + 0.3
    assert budget.granted == n


async def test_no_one_second_window_holds_more_than_rate_plus_one():
    rate, n = 50.0, 55  # ~1.1 s: every 1 s window of the run is full
    budget = RequestBudget(rate)
    times = await grant_times(budget, n, tasks=8)
    assert len(times) == n
    counts = [sum(1 for u in times if t <= u <= t + 1.0) for t in times]
    assert max(counts) <= rate + 1
    assert max(counts) >= rate - 2  # the window check is not vacuous


async def test_rate_zero_is_unlimited():
    budget = RequestBudget(0)
    start = now()
    times = await grant_times(budget, 1000, tasks=10)
    assert len(times) == 1000
    assert now() - start < 0.5
    assert budget.granted == 1000


async def test_pause_blocks_every_acquirer_until_it_ends():
    budget = RequestBudget(0)
    budget.pause(0.15)
    paused_at = now()
    assert 0.1 < budget.paused_for <= 0.15
    times = await grant_times(budget, 5, tasks=5)
    assert min(times) >= paused_at + 0.15 - EPS
    assert max(times) < paused_at + 0.15 + 0.3
    assert budget.paused_for == 0.0


async def test_pause_also_holds_a_rate_limited_budget():
    budget = RequestBudget(100.0)
    await budget.acquire()
    budget.pause(0.1)
    paused_at = now()
    await budget.acquire()
    assert now() >= paused_at + 0.1 - EPS


async def test_a_shorter_pause_never_shortens_a_longer_one():
    budget = RequestBudget(0)
    budget.pause(0.15)
    paused_at = now()
    budget.pause(0.01)
    budget.pause(0)
    budget.pause(-5)
    assert budget.paused_for > 0.1
    await budget.acquire()
    assert now() >= paused_at + 0.15 - EPS


async def test_a_longer_pause_extends_one_that_waiters_are_already_sleeping_on():
    budget = RequestBudget(0)
    budget.pause(0.05)
    task = asyncio.create_task(budget.acquire())
    await asyncio.sleep(0)  # let it start waiting on the short pause
    budget.pause(0.15)
    extended_at = now()
    await asyncio.wait_for(task, 2.0)
    assert now() >= extended_at + 0.15 - EPS


async def test_set_rate_changes_the_pace():
    budget = RequestBudget(10.0)
    await budget.acquire()
    budget.set_rate(200.0)
    times = await grant_times(budget, 11)
    # at the old rate, 10 more would need >= 1 s; at the new one 0.05 s
    assert times[-1] - times[0] >= 10 / 200.0 - EPS
    assert times[-1] - times[0] < 0.5
    budget.set_rate(40.0)
    times = await grant_times(budget, 5)
    assert times[-1] - times[0] >= 4 / 40.0 - EPS


async def test_set_rate_zero_lifts_the_limit():
    budget = RequestBudget(1.0)
    await budget.acquire()
    budget.set_rate(0)
    start = now()
    await grant_times(budget, 100)
    assert now() - start < 0.5


async def test_set_rate_applies_to_an_acquirer_already_waiting():
    budget = RequestBudget(0.2)
    await budget.acquire()  # the next token is 5 s away
    task = asyncio.create_task(budget.acquire())
    await asyncio.sleep(0)  # let it start waiting
    budget.set_rate(100.0)
    try:
        await asyncio.wait_for(asyncio.shield(task), 0.3)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_waiters_are_served_in_arrival_order():
    budget = RequestBudget(200.0)
    await budget.acquire()  # empty the bucket so everyone has to queue
    arrival = [3, 0, 7, 1, 5, 2, 6, 4]
    go = {i: asyncio.Event() for i in arrival}
    arrived: list[int] = []
    served: list[int] = []

    async def client(i: int) -> None:
        await go[i].wait()
        arrived.append(i)  # no await between this and queueing in acquire()
        await budget.acquire()
        served.append(i)

    tasks = [asyncio.create_task(client(i)) for i in sorted(arrival)]
    for i in arrival:
        go[i].set()
        await until(lambda i=i: i in arrived)
    await asyncio.wait_for(asyncio.gather(*tasks), 2.0)
    assert arrived == arrival
    assert served == arrival


async def test_a_cancelled_waiter_does_not_block_the_others():
    budget = RequestBudget(20.0)
    await budget.acquire()
    first = asyncio.create_task(budget.acquire())
    second = asyncio.create_task(budget.acquire())
    await asyncio.sleep(0)
    first.cancel()
    await asyncio.wait_for(second, 1.0)
    assert first.cancelled()
    assert budget.granted == 2


async def test_tracking_requests_go_before_creates_that_queued_earlier():
    budget = RequestBudget(200.0)
    await budget.acquire()  # empty the bucket so everyone has to queue
    served: list[str] = []

    async def client(name: str, priority: Priority) -> None:
        await budget.acquire(priority)
        served.append(name)

    creates = [asyncio.create_task(client(f"create{i}", Priority.CREATE)) for i in range(3)]
    await until(lambda: budget.waiting == 3)
    polls = [asyncio.create_task(client(f"poll{i}", Priority.TRACK)) for i in range(3)]
    await asyncio.wait_for(asyncio.gather(*creates, *polls), 2.0)
    # the first create may already hold the next token when the polls arrive
    assert served[-2:] == ["create1", "create2"] or served[-3:] == [
        "create0", "create1", "create2"]
    assert [s for s in served if s.startswith("poll")] == ["poll0", "poll1", "poll2"]
    assert served.index("poll0") < served.index("create1")


async def test_a_cancelled_waiter_leaves_the_queue():
    budget = RequestBudget(0.5)
    await budget.acquire()  # the next token is 2 s away
    task = asyncio.create_task(budget.acquire())
    await until(lambda: budget.waiting == 1)
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    assert budget.waiting == 0
    assert budget.granted == 1
