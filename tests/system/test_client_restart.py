"""qjobd.client against a real `qjobd serve` subprocess killed with -9 mid-wait.

A wait() in progress when the daemon dies keeps trying to reach it; once the daemon is
back it resumes the batch (a lost local simulator job runs again), and the same wait()
returns the completed batch. With no daemon coming back, wait() gives up after its
``reconnect_for`` and raises DaemonUnreachable.
"""

from __future__ import annotations

import asyncio
import signal
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from qjobd.client import AsyncClient, Batch, Client, DaemonUnreachable
from qjobd.testing.daemon_process import DaemonProcess, wait_until
from tests.conftest import short_tmpdir
from tests.system.test_e2e import LOCAL_CONFIG, SLOW

#: SLOW with a mid-circuit reset: Aer must simulate it shot by shot (about 0.35 s a shot
#: on this machine's cores, where SLOW itself samples 32 shots in well under a second), so
#: the job is still running when the daemon is killed
STALLING = SLOW.replace("measure q -> c;\n", "reset q[0];\nh q[0];\nmeasure q -> c;\n")
SHOTS = 8


@pytest.fixture
def qjobd() -> Iterator[DaemonProcess]:
    d = DaemonProcess(short_tmpdir(), LOCAL_CONFIG)
    d.start()
    yield d
    d.stop()


def _running(d: DaemonProcess, batch_id: str) -> bool:
    with Client(d.socket) as c:
        return any(j.state in ("submitted", "running") for j in c.get(batch_id).jobs)


class Waiter(threading.Thread):
    """``Client.wait`` (or AsyncClient's, in its own loop) in a thread of its own."""

    def __init__(self, d: DaemonProcess, batch_id: str, use_async: bool = False,
                 **wait: Any) -> None:
        super().__init__(daemon=True)
        self.d, self.batch_id, self.use_async, self.kw = d, batch_id, use_async, wait
        self.result: Batch | BaseException | None = None
        self.ended_at: float | None = None

    def run(self) -> None:
        try:
            if self.use_async:
                self.result = asyncio.run(self._async())
            else:
                with Client(self.d.socket) as c:
                    self.result = c.wait(self.batch_id, **self.kw)
        except BaseException as exc:
            self.result = exc
        self.ended_at = time.monotonic()

    async def _async(self) -> Batch:
        async with AsyncClient(self.d.socket) as c:
            return await c.wait(self.batch_id, **self.kw)


@pytest.mark.parametrize("use_async", [False, True], ids=["Client", "AsyncClient"])
def test_wait_survives_kill_9_and_restart_and_returns_the_completed_batch(
        qjobd: DaemonProcess, use_async: bool) -> None:
    with Client(qjobd.socket) as c:
        batch = c.submit({"slow": STALLING}, backend="local", shots=SHOTS)
    wait_until(lambda: _running(qjobd, batch.id), 30, "the job to be running")
    waiter = Waiter(qjobd, batch.id, use_async, timeout=180, reconnect_for=60)
    waiter.start()
    time.sleep(0.3)
    assert waiter.is_alive()

    assert qjobd.signal(signal.SIGKILL) == -signal.SIGKILL
    time.sleep(1.5)  # the wait meets a stale socket: connection refused, again and again
    assert waiter.is_alive()
    restarted = time.monotonic()
    qjobd.start()

    waiter.join(150)
    assert not waiter.is_alive()
    assert isinstance(waiter.result, Batch), repr(waiter.result)
    assert waiter.result.completed and waiter.result.id == batch.id
    assert waiter.ended_at is not None and waiter.ended_at > restarted
    with Client(qjobd.socket) as c:
        job = c.get(batch.id).jobs[0]
        results = c.results(batch.id)
    assert job.attempts >= 2  # the local job died with the daemon and ran again
    assert sum(results["slow"].counts.values()) == results["slow"].shots == SHOTS


def test_wait_gives_up_after_reconnect_for_when_no_daemon_comes_back(
        qjobd: DaemonProcess) -> None:
    with Client(qjobd.socket) as c:
        batch = c.submit({"slow": STALLING}, backend="local", shots=SHOTS)
    waiter = Waiter(qjobd, batch.id, timeout=180, reconnect_for=2.0)
    waiter.start()
    time.sleep(0.3)
    killed = time.monotonic()  # the wait's first failure comes after this
    qjobd.kill()
    waiter.join(30)
    assert not waiter.is_alive()
    assert isinstance(waiter.result, DaemonUnreachable), repr(waiter.result)
    assert waiter.ended_at is not None and 2.0 <= waiter.ended_at - killed < 6
    assert "refused" in str(waiter.result) or "no such socket" in str(waiter.result)
