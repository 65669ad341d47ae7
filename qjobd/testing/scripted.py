"""A scripted in-memory backend: a fake of the backend protocol for scheduler and API tests.

Jobs move queued -> running -> completed after a set number of status polls, or stay
where a test holds them. Counts put every shot on the all-zeros bitstring unless a
test plants others. Configured as any backend (``ScriptedBackend(name, config)``, config
keys ``polls_to_finish`` and ``hold``); its fault knobs are attributes.
"""

from __future__ import annotations

import itertools
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from qjobd.backends.base import (
    Backend,
    Capabilities,
    Circuit,
    Counts,
    RemoteState,
    RemoteStatus,
    SubmitRequest,
)
from qjobd.backends.errors import ProtocolError, RateLimited, Rejected, Unavailable

__all__ = ["FakeJob", "ScriptedBackend"]


@dataclass
class FakeJob:
    """One job of the scripted "provider"."""

    request: SubmitRequest
    state: RemoteState = RemoteState.QUEUED
    raw: str = "queued"
    polls: int = 0
    hold: bool = False
    counts: dict[str, Counts] = field(default_factory=dict)
    error: str | None = None


class ScriptedBackend(Backend):
    """A backend whose "provider" is a dict in memory, driven by the test."""

    capabilities = Capabilities(batch_status=True, max_status_batch=100, lookup_by_key=True,
                                default_shots=100, max_shots=10_000, max_qubits=10)

    def __init__(self, name: str, config: Mapping[str, Any]) -> None:
        super().__init__(name, config)
        self.jobs: dict[str, FakeJob] = {}
        self.by_key: dict[str, str] = {}
        self.polls_to_finish = int(config.get("polls_to_finish", 2))
        self.hold_all = bool(config.get("hold", False))
        self.status_calls = 0
        self._ids = itertools.count(1)
        #: fault knobs: the next N status calls fail; the next request gets a 429
        self.fail_status = 0
        self.rate_limit_next: float | None = None
        self.corrupt_results = False
        #: (loop time, operation) of every request that reached the "provider"
        self.calls: list[tuple[float, str]] = []
        self.submits = 0
        #: two-phase creates: set to an Event to hold the upload after ``created``
        self.upload_gate: Any = None
        #: what resume_interrupted does: "cancel" the partial job, or "resume" it
        self.on_interrupted = "cancel"

    def _arrive(self, op: str) -> None:
        import asyncio

        self.calls.append((asyncio.get_running_loop().time(), op))
        if self.rate_limit_next is not None:
            retry_after, self.rate_limit_next = self.rate_limit_next, None
            raise RateLimited("429 from the fake", retry_after=retry_after)

    async def submit(self, request: SubmitRequest, *,
                     created: Callable[[str], Awaitable[None]] | None = None) -> str:
        self._arrive("submit")
        self.submits += 1
        if request.options.get("reject"):
            raise Rejected("the fake was told to reject this")
        remote_id = f"r{next(self._ids)}"
        self.jobs[remote_id] = FakeJob(request, hold=self.hold_all)
        self.by_key[request.submission_key] = remote_id
        if self.upload_gate is not None:  # two-phase: created, then an upload that waits
            assert created is not None
            self.jobs[remote_id].hold = True
            await created(remote_id)
            await self.upload_gate.wait()
            self.jobs[remote_id].hold = self.hold_all
        return remote_id

    async def resume_interrupted(self, remote_id: str, request: SubmitRequest) -> str | None:
        self._arrive("resume")
        job = self.jobs.get(remote_id)
        if self.on_interrupted == "resume" and job is not None:
            job.hold = self.hold_all
            return remote_id
        if job is not None:
            job.state, job.raw = RemoteState.CANCELED, "canceled"
        return None

    async def status(self, remote_ids: Sequence[str]) -> dict[str, RemoteStatus]:
        self._arrive("status")
        self.status_calls += 1
        if self.fail_status > 0:
            self.fail_status -= 1
            raise Unavailable("503 from the fake")
        out = {}
        for rid in remote_ids:
            job = self.jobs.get(rid)
            if job is None:
                continue
            job.polls += 1
            if not job.hold and job.state in (RemoteState.QUEUED, RemoteState.RUNNING,
                                              RemoteState.UNKNOWN):
                if job.polls >= self.polls_to_finish:
                    self.finish(rid)
                elif job.polls >= 1:
                    job.state, job.raw = RemoteState.RUNNING, "running"
            out[rid] = RemoteStatus(rid, job.state, job.raw, job.error)
        return out

    def finish(self, remote_id: str, counts: dict[str, Counts] | None = None) -> None:
        job = self.jobs[remote_id]
        req = job.request
        job.counts = counts or job.counts or {
            c.label: {"0" * c.num_clbits: req.shots} for c in req.circuits}
        job.state, job.raw = RemoteState.COMPLETED, "completed"

    async def results(self, remote_id: str, circuits: Sequence[Circuit]) -> dict[str, Counts]:
        self._arrive("results")
        job = self.jobs.get(remote_id)
        if job is None or job.state != RemoteState.COMPLETED or self.corrupt_results:
            raise ProtocolError(f"job {remote_id} has no results")
        return job.counts

    async def cancel(self, remote_ids: Sequence[str]) -> None:
        self._arrive("cancel")
        for rid in remote_ids:
            job = self.jobs.get(rid)
            if job is not None and job.state in (RemoteState.QUEUED, RemoteState.RUNNING):
                job.state, job.raw = RemoteState.CANCELED, "canceled"

    async def lookup(self, submission_key: str, *, created_after: float | None = None
                     ) -> str | None:
        self._arrive("lookup")
        return self.by_key.get(submission_key)

    def share_remote(self, other: ScriptedBackend) -> None:
        """Talk to the same "provider" as ``other`` (a restarted daemon's new backend)."""
        self.jobs, self.by_key, self._ids = other.jobs, other.by_key, other._ids

    def validate_options(self, options: Mapping[str, Any]) -> None:
        unknown = set(options) - {"reject"}
        if unknown:
            raise ValueError(f"unknown option(s) {', '.join(sorted(unknown))}")
