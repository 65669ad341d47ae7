"""A backend's request budget: a token bucket shared by every request to that backend.

Submits, polls, result fetches and cancels all draw from it. A 429 pauses the whole
bucket until the provider's Retry-After has passed.
"""

from __future__ import annotations

import asyncio


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
        self._lock = asyncio.Lock()
        #: set when the rate or a pause changes, to wake a waiter sleeping on old numbers
        self._changed = asyncio.Event()
        #: requests granted so far (for health and tests)
        self.granted = 0

    @property
    def paused_for(self) -> float:
        """Seconds left of a provider-ordered pause (0 if none)."""
        return max(0.0, self._paused_until - self._loop.time())

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

    async def acquire(self) -> None:
        """Wait for permission to send one request."""
        async with self._lock:  # FIFO: waiters are served in arrival order
            while True:
                now = self._loop.time()
                if now < self._paused_until:
                    await self._sleep(self._paused_until - now)
                    continue
                if self.rate <= 0:
                    break
                self._refill()
                if self._tokens >= 1.0:
                    self._tokens -= 1.0
                    break
                await self._sleep((1.0 - self._tokens) / self.rate)
            self.granted += 1

    async def _sleep(self, seconds: float) -> None:
        """Sleep, but wake early if the rate or a pause changes."""
        try:
            await asyncio.wait_for(self._changed.wait(), seconds)
        except TimeoutError:
            pass

    def _refill(self) -> None:
        now = self._loop.time()
        if self.rate > 0:
            self._tokens = min(self.burst, self._tokens + (now - self._last) * self.rate)
        self._last = now
