"""BatchChanges: every watcher is woken by a change, and no event outlives its watchers."""

from __future__ import annotations

import asyncio

import pytest

from qjobd.daemon.engine.notify import BatchChanges

pytestmark = pytest.mark.asyncio


async def test_a_watcher_that_leaves_does_not_take_the_others_wakeup() -> None:
    changes = BatchChanges()
    first, second = changes.watch("b"), changes.watch("b")
    assert first is second and changes.watched() == 1
    changes.unwatch("b", first)  # one long-poll ended (its batch looked finished)
    assert changes.watched() == 1
    waiter = asyncio.create_task(changes.wait_on(second, 5))
    await asyncio.sleep(0)
    changes.notify("b")
    assert await waiter is True
    assert changes.watched() == 0


async def test_events_of_ended_and_timed_out_waits_are_dropped() -> None:
    changes = BatchChanges()
    for i in range(100):  # waits on batches that had already ended: nothing is kept
        changes.unwatch(f"done-{i}", changes.watch(f"done-{i}"))
    assert changes.watched() == 0
    event = changes.watch("slow")
    assert await changes.wait_on(event, 0.01) is False  # timed out
    changes.unwatch("slow", event)
    again = changes.watch("slow")
    assert again is not event and changes.watched() == 1
    changes.unwatch("slow", again)
    assert changes.watched() == 0


async def test_giving_back_an_event_a_change_already_set_is_harmless() -> None:
    changes = BatchChanges()
    old = changes.watch("b")
    changes.notify("b")
    assert old.is_set()
    new = changes.watch("b")  # a later waiter
    changes.unwatch("b", old)  # the first one gives back its (set) event late
    assert changes.watched() == 1
    waiter = asyncio.create_task(changes.wait_on(new, 5))
    await asyncio.sleep(0)
    changes.notify("b")
    assert await waiter is True
