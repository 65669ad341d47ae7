"""This node's part when several daemons share one PostgreSQL store (store/cluster.py).

Every ``lease_seconds / 3`` the keeper, in one round:

1. heartbeats, which renews every lease this node holds (one row), and learns the live
   nodes: each backend's budget is split evenly among them (``requests_per_second`` is
   the budget of every node together);
2. reads which jobs it holds; a job the engines drive that is no longer among them
   passed to another node (this one was cut off past its lease): it is released;
3. claims its share of the jobs nobody holds (a dead node's, once their leases expired)
   and hands them to the engines, which settle them exactly as a restart does.

A node trusts its leases until ``TRUST`` of ``lease_seconds`` after the start of its
last successful renewal (measured on its own monotonic clock, which cannot run ahead of
the database's expiry by more than clock-rate drift): past that it sends no create, so
that a create it sends can never land after another node took the job. A taken-over job
whose submission was interrupted is settled only after the provider's request timeout
has passed too, for the same reason.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import structlog

from qjobd.store.cluster import Claimed, Cluster, NodeInfo
from qjobd.store.states import JobState

log = structlog.get_logger("qjobd.leases")

#: the part of a lease a node relies on after its last renewal began
TRUST = 0.8


class LeaseKeeper:
    """Heartbeat, renewal, hand-over and claims for this node's engines."""

    def __init__(self, cluster: Cluster, runners: Mapping[str, Any],
                 adopt: Callable[[list[Claimed]], Awaitable[None]]) -> None:
        self.cluster = cluster
        self._runners = runners
        self._adopt = adopt
        self._trusted_until = 0.0
        #: the live nodes at the last heartbeat
        self.nodes: list[NodeInfo] = []
        self.rounds = 0
        #: jobs this node held at the last round that no engine drove
        self._untracked: set[str] = set()
        self.claimed = 0
        self.released = 0
        for runner in runners.values():
            runner.leases_valid = self.valid

    @property
    def node(self) -> str:
        return self.cluster.node

    @property
    def interval(self) -> float:
        return self.cluster.lease_seconds / 3

    def valid(self) -> bool:
        """Whether this node may still act on its leases (send a create)."""
        return time.monotonic() < self._trusted_until

    async def start(self) -> int:
        """At start: take back this node's own jobs (nothing else runs as this node)
        and a share of the unheld ones; how many jobs the engines got."""
        sent = time.monotonic()
        self.nodes = await self.cluster.heartbeat(self._detail())
        own = await self.cluster.claim(list(self._runners), 0, own=True)
        self._trusted_until = sent + TRUST * self.cluster.lease_seconds
        self._share_budgets()
        await self._take(own)
        return len(own) + await self._claim_share()

    async def run(self) -> None:
        """A round every ``interval`` seconds, until cancelled (then the scheduler, once
        its engines stopped, hands the leases over: :meth:`leave`)."""
        while True:
            await asyncio.sleep(self.interval)
            try:
                await self.round()
            except Exception as exc:  # the database may be away: try again next round
                log.warning("lease round failed; its leases run out unless renewed",
                            error=self.cluster.store.mask(str(exc)))

    async def round(self) -> None:
        sent = time.monotonic()
        before = {name: runner.held() for name, runner in self._runners.items()}
        self.nodes = await self.cluster.heartbeat(self._detail())  # renews every lease
        held = await self.cluster.held()
        self._trusted_until = sent + TRUST * self.cluster.lease_seconds
        for name, jobs in before.items():
            lost = [job_id for job_id, epoch in jobs.items()
                    if epoch is not None and held.get(job_id) != epoch]
            if lost:
                # still tracked, and not renewed: another node has them (or they ended)
                still = [j for j in lost if j in self._runners[name].held()]
                self.released += self._runners[name].release(
                    still, "its lease was not renewed: another node took it")
        # held here but driven by no engine (let go after a fenced write failed, say) for
        # two rounds running: given up, so that a claim (this node's or another's) takes
        # it with a new epoch (one round could be a batch stored but not yet handed over)
        tracked = {j for runner in self._runners.values() for j in runner.held()}
        untracked = set(held) - tracked
        stale = untracked & self._untracked
        self._untracked = untracked - stale
        if stale:
            await self.cluster.give_up(sorted(stale))
        self._share_budgets()
        await self._claim_share()
        self.rounds += 1

    async def _claim_share(self) -> int:
        """Claim this node's share of the jobs nobody holds; how many it got."""
        backends = list(self._runners)
        free, total, mine = await self.cluster.census(backends)
        if not free:
            return 0
        claimed = await self.cluster.claim(
            backends, Cluster.share(free, len(self.nodes), total=total, mine=mine))
        if claimed:
            log.info("claimed jobs", jobs=len(claimed),
                     taken_over=sum(c.taken_over for c in claimed), node=self.node)
            await self._take(claimed)
        return len(claimed)

    async def _take(self, claimed: list[Claimed]) -> None:
        await self._adopt(claimed)
        self.claimed += len(claimed)

    def settle_delay(self, claimed: Claimed, timeout: float) -> float:
        """Seconds before settling a taken-over interrupted submission: its last holder
        sent no create after its lease ran out, and any it sent before has landed or
        failed once the provider's request timeout has passed since."""
        if not claimed.taken_over or claimed.job.state != JobState.SUBMITTING:
            return 0.0
        return timeout

    @property
    def share(self) -> float:
        """Each live node's part of a backend's budget."""
        return 1.0 / max(1, len(self.nodes))

    def _share_budgets(self) -> None:
        for runner in self._runners.values():
            runner.set_share(self.share)

    def _detail(self) -> dict[str, Any]:
        return {"backends": {name: {"jobs": len(r.held())}
                             for name, r in self._runners.items()}}

    async def leave(self) -> None:
        """A clean stop, the engines stopped: the other nodes take the jobs at once."""
        try:
            await self.cluster.leave()
        except Exception as exc:
            log.warning("could not hand the leases over; they expire on their own",
                        error=self.cluster.store.mask(str(exc)))

    def view(self) -> dict[str, Any]:
        """What health shows of the cluster."""
        share = round(self.share, 4)
        return {
            "node": self.node, "lease_seconds": self.cluster.lease_seconds,
            "leases_valid": self.valid(), "budget_share": share,
            "nodes": [{"name": n.name, "heartbeat_age": round(n.age, 3), "leases": n.jobs,
                       "started_at": n.started_at, "budget_share": share,
                       "backends": n.detail.get("backends", {})} for n in self.nodes],
        }
