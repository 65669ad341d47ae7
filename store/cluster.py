"""Several daemons on one PostgreSQL store: nodes, job leases, and wake-ups across nodes.

Every daemon on the database is a **node** (``[daemon] node``, unique: a second daemon
with the same name refuses to start). Each non-terminal job is leased to one node at a
time, in three columns of ``jobs``:

- ``lease_node``: the node that drives the job (submits, polls, fetches results);
- ``lease_epoch``: raised at every claim. Every write the engine makes for a job names
  the epoch it holds (a *fenced* write): a node whose lease passed to another, or that
  took the job again since, changes nothing and gets :class:`LeaseLost`.

A node's leases all end together, at its row's ``lease_until`` in ``nodes`` (the
database's clock, never a node's), which the node pushes forward every third of
``lease_seconds``. Renewing is one write to that row: it never waits on a job row, which
the node's own writer may hold in a transaction meanwhile (renewing each job's row did,
and deadlocked with it under load).

A batch's jobs are leased to the node that took the submission. A node that stops
renewing (kill -9, power, network) loses its jobs when their leases expire: each other
live node claims its share of them (``FOR UPDATE SKIP LOCKED``: two claimers never wait
on, nor take, the same rows) and settles them as a restart would (a lookup by the
submission key before any resubmission). A node stopped cleanly (SIGTERM) ends its
leases at once, so the others take its jobs at their next round.

Wake-ups cross nodes through PostgreSQL's LISTEN/NOTIFY: every job move notifies
``qjobd_batch`` (long-polls and event streams on every node wake), a cancel request
``qjobd_cancel`` (the node holding the jobs cancels them), a provider's 429
``qjobd_pause`` (every node pauses that backend).
"""

from __future__ import annotations

import asyncio
import json
import math
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import structlog

from qjobd.store.errors import StoreUnavailable
from qjobd.store.models import Job
from qjobd.store.states import ACTIVE

if TYPE_CHECKING:  # psycopg is the 'postgresql' extra's: imported when a node joins
    import psycopg

    from qjobd.store.postgres import PostgresStore

log = structlog.get_logger("qjobd.cluster")

#: the database's clock, in epoch seconds: every lease time is read and written in it
DB_NOW = "extract(epoch from clock_timestamp())"
CHANNEL_BATCH = "qjobd_batch"
CHANNEL_CANCEL = "qjobd_cancel"
CHANNEL_PAUSE = "qjobd_pause"
_ACTIVE_SQL = ", ".join(f"'{s}'" for s in sorted(ACTIVE))
#: a job (``j``, its holder's row ``n`` LEFT JOINed) whose lease nobody holds: none given,
#: its node gone (a clean stop), or its node's leases run out
_FREE = f"(j.lease_node IS NULL OR n.name IS NULL OR n.lease_until < {DB_NOW})"
#: pg_try_advisory_lock's first key for "a daemon runs as this node" (the second: the
#: name's hash)
NODE_LOCK = 0x716A6F62


def _node_row(*, started: bool) -> str:
    """The upsert of a node's row (name, lease_seconds, detail): it is alive, and every
    lease it holds lasts ``lease_seconds`` more; ``started``: it has just (re)started."""
    restarted = "started_at = EXCLUDED.started_at, " if started else ""
    return ("INSERT INTO nodes (name, started_at, heartbeat_at, lease_until, detail) "
            f"VALUES (%s, {DB_NOW}, {DB_NOW}, {DB_NOW} + %s, %s) ON CONFLICT (name) DO "
            f"UPDATE SET {restarted}heartbeat_at = EXCLUDED.heartbeat_at, "
            "lease_until = EXCLUDED.lease_until, detail = EXCLUDED.detail")


@dataclass(frozen=True, slots=True)
class NodeInfo:
    """A node as the database sees it."""

    name: str
    started_at: float
    #: seconds since its last heartbeat, in the database's clock
    age: float
    #: non-terminal jobs whose lease it holds
    jobs: int
    detail: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Claimed:
    """A job this node has just leased, and the epoch its writes must name."""

    job: Job
    epoch: int
    #: the job's lease was another node's (not a new or an own one): settle it as a
    #: restart would, after that node's last request can no longer land
    taken_over: bool


class Cluster:
    """This node's membership of the database: its heartbeat, its leases, its wake-ups."""

    def __init__(self, store: PostgresStore, node: str, lease_seconds: float) -> None:
        self.store = store
        self.node = node
        self.lease_seconds = lease_seconds
        self._lock: psycopg.AsyncConnection[Any] | None = None
        self._listening = asyncio.Event()

    # -- membership ------------------------------------------------------------------

    async def join(self, detail: Mapping[str, Any] | None = None) -> None:
        """Take the node's name (refused if a live daemon has it) and say it is here."""
        import psycopg

        conn = await psycopg.AsyncConnection.connect(self.store.url, autocommit=True,
                                                     connect_timeout=30)
        cur = await conn.execute("SELECT pg_try_advisory_lock(%s, hashtext(%s))",
                                 (NODE_LOCK, self.node))
        row = await cur.fetchone()
        if not (row and row[0]):
            await conn.close()
            raise StoreUnavailable(f"another qjobd runs as node {self.node!r} on "
                                   f"{self.store.path}: give each daemon its own "
                                   "[daemon] node")
        self._lock = conn
        await conn.execute(_node_row(started=True), self._row_args(detail))
        self.store.node, self.store.lease_seconds = self.node, self.lease_seconds

    async def leave(self) -> None:
        """A clean stop: end this node's leases now (the others take its jobs at their
        next round) and remove it from the nodes; then give the name back."""
        try:
            # its jobs' leases name a node that is gone: free at once
            await self.store.execute("DELETE FROM nodes WHERE name = %s", (self.node,))
        finally:
            if self._lock is not None:
                await self._lock.close()
                self._lock = None

    async def heartbeat(self, detail: Mapping[str, Any] | None = None) -> list[NodeInfo]:
        """Say this node is alive, renewing every lease it holds (one row); the live
        nodes (this one included), by name. A node whose row was removed (it was taken
        for dead and cleaned up) is put back: its jobs that no one took are its again."""
        await self.store.execute(_node_row(started=False), self._row_args(detail))
        return await self.nodes()

    def _row_args(self, detail: Mapping[str, Any] | None) -> tuple[Any, ...]:
        return self.node, self.lease_seconds, json.dumps(dict(detail or {}))

    async def nodes(self, *, live_only: bool = True) -> list[NodeInfo]:
        """The nodes whose heartbeat is at most ``lease_seconds`` old (or every one)."""
        rows = await self.store.fetchall(
            f"SELECT n.name, n.started_at, {DB_NOW} - n.heartbeat_at, n.detail, "
            "(SELECT count(*) FROM jobs j WHERE j.lease_node = n.name "
            f"AND j.state IN ({_ACTIVE_SQL})), n.lease_until > {DB_NOW} "
            "FROM nodes n ORDER BY n.name")
        out = [NodeInfo(str(r[0]), float(r[1]), max(0.0, float(r[2])), int(r[4]),
                        json.loads(r[3]) if r[3] else {}) for r in rows
               if not live_only or r[5] or r[0] == self.node]
        return out

    # -- leases ----------------------------------------------------------------------

    async def held(self) -> dict[str, int]:
        """The jobs this node holds the leases of (:meth:`heartbeat` renews them all),
        with their epochs: a job missing here was taken by another node, or ended. A read:
        no job row is locked."""
        rows = await self.store.fetchall(
            "SELECT id, lease_epoch FROM jobs "
            f"WHERE lease_node = %s AND state IN ({_ACTIVE_SQL})", (self.node,))
        return {str(r[0]): int(r[1]) for r in rows}

    async def give_up(self, job_ids: Sequence[str]) -> None:
        """End this node's leases of these jobs now (a claim takes them again)."""
        await self.store.execute(
            "UPDATE jobs SET lease_node = NULL WHERE id = ANY(%s) AND lease_node = %s",
            (list(job_ids), self.node))

    async def claimable(self, backends: Sequence[str]) -> int:
        """Non-terminal jobs of these backends whose lease nobody holds now."""
        return (await self.census(backends))[0]

    async def census(self, backends: Sequence[str]) -> tuple[int, int, int]:
        """Non-terminal jobs of these backends: (unheld, all, this node's)."""
        rows = await self.store.fetchall(
            f"SELECT count(*) FILTER (WHERE {_FREE}), count(*), "
            "count(*) FILTER (WHERE j.lease_node = %s) "
            "FROM jobs j LEFT JOIN nodes n ON n.name = j.lease_node "
            f"WHERE j.state IN ({_ACTIVE_SQL}) AND j.backend = ANY(%s)",
            (self.node, list(backends)))
        free, total, mine = rows[0] if rows else (0, 0, 0)
        return int(free), int(total), int(mine)

    async def claim(self, backends: Sequence[str], limit: int, *,
                    own: bool = False) -> list[Claimed]:
        """Lease up to ``limit`` jobs nobody holds, oldest first; ``own`` (at start): every
        job still leased to this node's name instead, whatever its expiry (nothing else
        runs as this node: the name is locked)."""
        if limit <= 0 and not own:
            return []
        from qjobd.store.store import _JOB_COLUMNS, _job
        if own:
            which, args = "j.lease_node = %s", [self.node]
        else:
            which, args = _FREE, []
        columns = ", ".join(f"j.{c.strip()}" for c in _JOB_COLUMNS.split(","))
        rows = await self.store.execute_returning(
            "WITH free AS (SELECT j.id, j.lease_node AS was FROM jobs j "
            "LEFT JOIN nodes n ON n.name = j.lease_node "
            f"WHERE j.state IN ({_ACTIVE_SQL}) AND j.backend = ANY(%s) AND {which} "
            "ORDER BY j.created_at, j.id LIMIT %s FOR UPDATE OF j SKIP LOCKED) "
            "UPDATE jobs j SET lease_node = %s, lease_epoch = j.lease_epoch + 1 "
            "FROM free WHERE j.id = free.id "
            f"RETURNING {columns}, j.lease_epoch, free.was",
            (list(backends), *args, None if own else limit, self.node))
        if not rows:
            return []
        width = len(_JOB_COLUMNS.split(","))
        labels = await self.store.labels_of([str(r[0]) for r in rows])
        return [Claimed(_job(r[:width], labels.get(str(r[0]), ())), int(r[width]),
                        taken_over=r[width + 1] is not None and r[width + 1] != self.node)
                for r in rows]

    @staticmethod
    def share(claimable: int, live_nodes: int, *, total: int | None = None,
              mine: int = 0) -> int:
        """How many of the unheld jobs one node claims in a round: up to an equal share
        of all the unfinished jobs (``total``; so that the live nodes split a dead one's
        in one round each, rather than halving what is left at each claim), else an
        equal share of the unheld ones."""
        live = max(1, live_nodes)
        if total is None:
            return math.ceil(claimable / live)
        room = math.ceil(total / live) - mine
        return min(claimable, room if room > 0 else math.ceil(claimable / live))

    # -- wake-ups --------------------------------------------------------------------

    async def publish_pause(self, backend: str, seconds: float) -> None:
        await self.store.execute("SELECT pg_notify(%s, %s)", (CHANNEL_PAUSE, json.dumps(
            {"node": self.node, "backend": backend, "seconds": seconds})))

    async def listen(self, *, on_batch: Callable[[str], None],
                     on_cancel: Callable[[str], Awaitable[None]],
                     on_pause: Callable[[str, float], None]) -> None:
        """Deliver other nodes' notifications until cancelled; reconnects after a loss
        (and then wakes every waiter once: what happened meanwhile is in the store)."""
        import psycopg

        delay = 0.5
        while True:
            try:
                conn = await psycopg.AsyncConnection.connect(self.store.url, autocommit=True,
                                                             connect_timeout=30)
            except psycopg.Error as exc:
                log.warning("cannot listen for other nodes; retrying",
                            error=self.store.mask(str(exc)), delay=delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, self.lease_seconds)
                continue
            try:
                for channel in (CHANNEL_BATCH, CHANNEL_CANCEL, CHANNEL_PAUSE):
                    await conn.execute(f"LISTEN {channel}")
                self._listening.set()
                on_batch("")  # "" wakes every waiter: changes may have been missed
                delay = 0.5
                async for note in conn.notifies():
                    await self._deliver(note.channel, note.payload, on_batch, on_cancel,
                                        on_pause)
            except psycopg.Error as exc:
                log.warning("lost the notification connection; reconnecting",
                            error=self.store.mask(str(exc)))
            finally:
                self._listening.clear()
                await conn.close()

    async def listening(self) -> None:
        """Until :meth:`listen` receives notifications."""
        await self._listening.wait()

    async def _deliver(self, channel: str, payload: str, on_batch: Callable[[str], None],
                       on_cancel: Callable[[str], Awaitable[None]],
                       on_pause: Callable[[str, float], None]) -> None:
        try:
            if channel == CHANNEL_BATCH:
                on_batch(payload)
            elif channel == CHANNEL_CANCEL:
                await on_cancel(payload)
            elif channel == CHANNEL_PAUSE:
                note = json.loads(payload)
                if note.get("node") != self.node:
                    on_pause(str(note["backend"]), float(note["seconds"]))
        except Exception:  # one bad notification must not stop the others
            log.exception("could not handle a notification", channel=channel)
