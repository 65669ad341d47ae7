"""Retention: delete finished batches older than ``[daemon] retention_days``.

What goes: a batch that is terminal (every job terminal too) and finished before the
cutoff, with its jobs, circuits, results and job counts (``ON DELETE CASCADE`` from
``batches``) and its events in the event log (no foreign key: deleted by ``batch_id``),
plus batch-less events older than the cutoff. A non-terminal batch is never touched,
however old.

How: in chunks of at most :data:`CHUNK_BATCHES` batches, each chunk one operation of the
store's writer (so one transaction), cut short after :data:`CHUNK_SECONDS` of work, so a
submission or a poll waits behind at most one short chunk. Oldest first.

Why no VACUUM: SQLite puts the pages freed by a delete on its freelist and the next
inserts take them from there, so a database whose inflow and deletions balance stops
growing (tests/test_retention.py and ``python -m bench.store_growth`` show it). VACUUM
would rewrite the whole file under an exclusive lock, which the daemon cannot afford.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import structlog

from qjobd.store.errors import StoreError, StoreUnavailable
from qjobd.store.states import ACTIVE, TERMINAL
from qjobd.store.writer import WriteOp

if TYPE_CHECKING:
    from qjobd.store.store import Store

log = structlog.get_logger("qjobd.retention")

#: at most this many batches per transaction
CHUNK_BATCHES = 500
#: a chunk stops taking more batches once it has worked this long on the writer's thread
CHUNK_SECONDS = 0.1
#: how often the daemon runs the cleanup, seconds (``[daemon] retention_interval``)
DEFAULT_INTERVAL = 3600.0
DAY = 86400.0

_TERMINAL_SQL = ", ".join(f"'{s}'" for s in sorted(TERMINAL))
_ACTIVE_SQL = ", ".join(f"'{s}'" for s in sorted(ACTIVE))
# ``+state``: keep the planner on batches_finished (migration 3) rather than
# batches_state, which would visit every terminal batch ever stored
_DUE_SQL = (
    "SELECT b.id FROM batches b "
    f"WHERE b.finished_at < ? AND +b.state IN ({_TERMINAL_SQL}) "
    "AND NOT EXISTS (SELECT 1 FROM jobs j WHERE j.batch_id = b.id "
    f"AND j.state IN ({_ACTIVE_SQL})) "
    "ORDER BY b.finished_at LIMIT ?"
)


@dataclass(frozen=True, slots=True)
class Chunk:
    """What one chunk removed, and whether more may be due."""

    batches: int
    events: int
    more: bool


def purge_chunk(cutoff: float, *, limit: int = CHUNK_BATCHES,
                budget: float = CHUNK_SECONDS) -> WriteOp[Chunk]:
    """A write op that deletes up to ``limit`` batches finished before ``cutoff``."""
    if limit < 1:
        raise ValueError(f"limit must be >= 1, got {limit}")

    def op(conn: sqlite3.Connection) -> Chunk:
        # the cascade is what removes jobs, circuits and results: without it they would
        # be left behind as orphans, forever
        if conn.execute("PRAGMA foreign_keys").fetchone()[0] != 1:
            raise StoreUnavailable("retention needs PRAGMA foreign_keys=ON on the writer")
        started = time.monotonic()
        due = [str(r[0]) for r in conn.execute(_DUE_SQL, (cutoff, limit))]
        batches = events = done = 0
        for batch_id in due:
            events += conn.execute("DELETE FROM events WHERE batch_id = ?",
                                   (batch_id,)).rowcount
            batches += conn.execute("DELETE FROM batches WHERE id = ?", (batch_id,)).rowcount
            done += 1
            if time.monotonic() - started > budget:
                break
        more = len(due) == limit or done < len(due)
        if not more:  # the last chunk: events of no batch, by age
            events += conn.execute("DELETE FROM events WHERE batch_id IS NULL AND ts < ?",
                                   (cutoff,)).rowcount
        return Chunk(batches, events, more)

    return op


@dataclass(frozen=True, slots=True)
class Purge:
    """What one cleanup removed."""

    batches: int = 0
    events: int = 0
    chunks: int = 0
    seconds: float = 0.0


async def purge_finished(store: Store, cutoff: float, *, chunk: int = CHUNK_BATCHES,
                         budget: float = CHUNK_SECONDS) -> Purge:
    """Delete every batch finished before ``cutoff`` (epoch seconds), chunk by chunk."""
    started = time.monotonic()
    batches = events = chunks = 0
    while True:
        done = await store.write(purge_chunk(cutoff, limit=chunk, budget=budget))
        batches, events, chunks = batches + done.batches, events + done.events, chunks + 1
        if not done.more or done.batches == 0:  # all due are gone, or no progress
            break
        await asyncio.sleep(0)  # let other tasks queue their writes between chunks
    return Purge(batches, events, chunks, time.monotonic() - started)


def cutoff_for(retention_days: float, now: float | None = None) -> float:
    """The epoch time before which a finished batch is due."""
    return (time.time() if now is None else now) - retention_days * DAY


@dataclass(slots=True)
class RetentionStats:
    """The periodic task's record (for tests and, later, health and metrics)."""

    #: wake-ups, a disabled retention (0 days) included
    checks: int = 0
    #: cleanups attempted
    runs: int = 0
    failures: int = 0
    removed_batches: int = 0
    last_error: str | None = None


async def run_periodically(store: Store, settings: Callable[[], tuple[float, float]],
                           stats: RetentionStats | None = None) -> None:
    """Run the cleanup now and then every interval, forever (cancel the task to stop).

    ``settings()`` gives ``(retention_days, interval_seconds)``, read before every run
    so that a reloaded configuration applies; ``retention_days == 0`` keeps everything.
    A failed run (disk full, read-only file, ...) is logged and retried at the next one.
    """
    stats = stats if stats is not None else RetentionStats()
    while True:
        days, interval = settings()
        stats.checks += 1
        if days > 0:
            cutoff = cutoff_for(days)
            bound = log.bind(retention_days=days, cutoff=_iso(cutoff))
            try:
                purge = await store.purge_finished(cutoff)
            except StoreError as exc:
                stats.failures += 1
                stats.last_error = str(exc)
                bound.warning("retention cleanup failed; retrying at the next run",
                              error=str(exc), retry_in_seconds=interval)
            except Exception as exc:  # a bug: say so loudly, but keep the daemon serving
                stats.failures += 1
                stats.last_error = repr(exc)
                bound.exception("retention cleanup crashed; retrying at the next run",
                                retry_in_seconds=interval)
            else:
                stats.removed_batches += purge.batches
                emit = bound.info if purge.batches or purge.events else bound.debug
                emit("retention cleanup done", removed_batches=purge.batches,
                     removed_events=purge.events, chunks=purge.chunks,
                     seconds=round(purge.seconds, 3))
            stats.runs += 1
        await asyncio.sleep(interval)


def _iso(ts: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))
