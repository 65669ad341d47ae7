"""A backend's request budget: a token bucket shared by every request to that backend.

Submits, polls, result fetches and cancels all draw from it. A 429 pauses the whole
bucket until the provider's Retry-After has passed.

Waiters are served by priority, then in arrival order: a request that tracks work
already running remotely (a poll, a result fetch, a cancel) goes before one that creates
more work (a submit). Without this, a 10,000-circuit batch puts its creates in front
of every poll for as long as the creates take, and results are seen late.
"""

from __future__ import annotations

import asyncio
import enum
import heapq
import itertools


class Priority(enum.IntEnum):
    """Lower is served first."""

    TRACK = 0   #: polls, result fetches, cancels, lookups
    CREATE = 1  #: submissions (and each fragment of an upload)


class RequestBudget:
    """At most ``rate`` requests per second (0 = unlimited), with pauses for 429s."""

    def __init__(self, rate: float, *, burst: float = 1.0) -> None:
        self.rate = rate
        # a burst of 1 spaces requests evenly: no window of 1 s ever holds more than rate + 1
        self.burst = max(1.0, burst)
        self._tokens = self.burst
        self._loop = asyncio.get_running_loop()
        self._last = self._loop.time()
        self._paused_until = 0.0
        #: (priority, arrival, future) of every waiter, best first
        self._waiters: list[tuple[int, int, asyncio.Future[None]]] = []
        self._arrival = itertools.count()
        self._dispatcher: asyncio.Task[None] | None = None
        #: set when the rate, a pause or the waiters change, to wake the dispatcher
        self._changed = asyncio.Event()
        #: requests granted so far (for health and tests)
        self.granted = 0

    @property
    def paused_for(self) -> float:
        """Seconds left of a provider-ordered pause (0 if none)."""
        return max(0.0, self._paused_until - self._loop.time())

    @property
    def waiting(self) -> int:
        """Requests waiting for permission now."""
        return sum(1 for _, _, fut in self._waiters if not fut.done())

    def set_rate(self, rate: float) -> None:
        self._refill()
        self.rate = rate
        self._poke()

    def _poke(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    def pause(self, seconds: float) -> None:
        """Send nothing to this backend for ``seconds`` (extends, never shortens, a pause)."""
        self._paused_until = max(self._paused_until, self._loop.time() + max(0.0, seconds))
        self._tokens = min(self._tokens, 1.0)
        self._poke()

    async def acquire(self, priority: Priority = Priority.TRACK) -> None:
        """Wait for permission to send one request."""
        if not self._waiters and self._take():
            self.granted += 1
            return
        fut: asyncio.Future[None] = self._loop.create_future()
        heapq.heappush(self._waiters, (int(priority), next(self._arrival), fut))
        if self._dispatcher is None or self._dispatcher.done():
            self._dispatcher = self._loop.create_task(self._dispatch())
        else:
            self._poke()  # a better waiter may have arrived
        try:
            await fut
        except asyncio.CancelledError:
            if fut.done() and not fut.cancelled():
                # granted, then cancelled before it could be used: give the token back
                self.granted -= 1
                self._tokens = min(self.burst, self._tokens + 1.0)
            self._poke()
            raise

    async def _dispatch(self) -> None:
        """Grant the best waiter each time the bucket allows, until none is left."""
        while self._waiters:
            fut = self._waiters[0][2]
            if fut.done():  # cancelled while waiting
                heapq.heappop(self._waiters)
                continue
            now = self._loop.time()
            if now < self._paused_until:
                await self._sleep(self._paused_until - now)
                continue
            if self._take():
                heapq.heappop(self._waiters)
                self.granted += 1
                fut.set_result(None)
                continue
            await self._sleep((1.0 - self._tokens) / self.rate)

    def _take(self) -> bool:
        """Take a token if one may be spent now."""
        if self._loop.time() < self._paused_until:
            return False
        if self.rate <= 0:
            return True
        self._refill()
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return True
        return False

    async def _sleep(self, seconds: float) -> None:
        """Sleep, but wake early if the rate, a pause or the waiters change."""
        try:
            await asyncio.wait_for(self._changed.wait(), seconds)
        except TimeoutError:
            pass

    def _refill(self) -> None:
        now = self._loop.time()
        if self.rate > 0:
            self._tokens = min(self.burst, self._tokens + (now - self._last) * self.rate)
        self._last = now
