"""The API's objects as frozen dataclasses (re-exported by :mod:`qjobd.client`).

Each is built from the daemon's JSON answer with ``from_dict`` and keeps that answer as
``raw`` (what ``qjobctl --json`` prints), so a field a newer daemon adds is never out of
reach. Timestamps are timezone-aware ``datetime`` objects (UTC); states are the API's
strings (``TERMINAL_STATES`` lists the final ones).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from qjobd.store.states import TERMINAL

__all__ = [
    "TERMINAL_STATES",
    "Batch",
    "BatchPage",
    "CircuitResult",
    "Event",
    "Health",
    "Job",
    "Results",
]

#: batch and job states after which nothing changes any more (as the API spells them)
TERMINAL_STATES = frozenset(str(state) for state in TERMINAL)

def _raw() -> Any:
    """The ``raw`` field: the answer as the daemon sent it (not shown, not compared)."""
    return field(default_factory=dict, repr=False, compare=False)


def _time(value: Any) -> datetime | None:
    """An RFC 3339 timestamp of the API (``...Z``) as an aware datetime; None stays None."""
    return None if value is None else datetime.fromisoformat(str(value))


@dataclass(frozen=True, slots=True)
class Job:
    """One remote job of a batch."""

    id: str
    state: str
    remote_id: str | None = None
    #: the provider's own status string, as it last reported it
    remote_status: str | None = None
    #: the labels of the circuits this job runs
    labels: tuple[str, ...] = ()
    error: str | None = None
    attempts: int = 0
    next_poll_at: datetime | None = None
    created_at: datetime | None = None
    updated_at: datetime | None = None
    finished_at: datetime | None = None
    raw: Mapping[str, Any] = _raw()

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Job:
        return cls(
            id=str(data["id"]), state=str(data["state"]), remote_id=data.get("remote_id"),
            remote_status=data.get("remote_status"),
            labels=tuple(data.get("labels") or ()), error=data.get("error"),
            attempts=int(data.get("attempts") or 0),
            next_poll_at=_time(data.get("next_poll_at")),
            created_at=_time(data.get("created_at")), updated_at=_time(data.get("updated_at")),
            finished_at=_time(data.get("finished_at")), raw=dict(data))

    @property
    def terminal(self) -> bool:
        return self.state in TERMINAL_STATES


@dataclass(frozen=True, slots=True)
class Batch:
    """A submitted batch with its jobs (``GET /v1/batches/{id}``)."""

    id: str
    state: str
    backend: str
    shots: int | None = None
    name: str | None = None
    tags: Mapping[str, str] = field(default_factory=dict)
    options: Mapping[str, Any] = field(default_factory=dict)
    #: the batch's own time limit in seconds (it ends ``timed_out`` after it), if any
    timeout: float | None = None
    owner: str | None = None
    created_at: datetime | None = None
    updated_at: datetime | None = None
    finished_at: datetime | None = None
    error: str | None = None
    jobs: tuple[Job, ...] = ()
    #: the object given as ``metadata`` at submission, if any
    metadata: Mapping[str, Any] | None = None
    raw: Mapping[str, Any] = _raw()

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Batch:
        return cls(
            id=str(data["id"]), state=str(data["state"]), backend=str(data.get("backend", "")),
            shots=data.get("shots"), name=data.get("name"), tags=dict(data.get("tags") or {}),
            options=dict(data.get("options") or {}), timeout=data.get("timeout"),
            owner=data.get("owner"), created_at=_time(data.get("created_at")),
            updated_at=_time(data.get("updated_at")),
            finished_at=_time(data.get("finished_at")), error=data.get("error"),
            jobs=tuple(Job.from_dict(j) for j in data.get("jobs") or ()),
            metadata=data.get("metadata"), raw=dict(data))

    @property
    def terminal(self) -> bool:
        """Nothing about the batch changes any more."""
        return self.state in TERMINAL_STATES

    @property
    def completed(self) -> bool:
        """Every job completed: every circuit has its counts."""
        return self.state == "completed"

    @property
    def errors(self) -> dict[str, str]:
        """Job id -> error, for each job that has one."""
        return {job.id: job.error for job in self.jobs if job.error}


@dataclass(frozen=True, slots=True)
class BatchPage:
    """One page of ``list()``, newest first; iterate it for its batches."""

    batches: tuple[Batch, ...]
    #: pass it as ``cursor`` for the next page; None on the last
    next_cursor: str | None = None
    raw: Mapping[str, Any] = _raw()

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> BatchPage:
        return cls(batches=tuple(Batch.from_dict(b) for b in data.get("batches") or ()),
                   next_cursor=data.get("next_cursor"), raw=dict(data))

    def __iter__(self) -> Iterator[Batch]:
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)


@dataclass(frozen=True, slots=True)
class CircuitResult:
    """One circuit's counts: bitstring -> shots, highest classical bit leftmost (Qiskit's
    order, the same for every backend)."""

    label: str
    counts: Mapping[str, int]
    #: the shots run (the counts add up to it)
    shots: int
    #: the qjobd job that ran it
    job_id: str | None = None
    raw: Mapping[str, Any] = _raw()

    @classmethod
    def from_dict(cls, label: str, data: Mapping[str, Any]) -> CircuitResult:
        counts = {str(k): int(v) for k, v in (data.get("counts") or {}).items()}
        shots = data.get("shots")
        return cls(label=label, counts=counts,
                   shots=int(shots) if shots is not None else sum(counts.values()),
                   job_id=data.get("job_id"), raw=dict(data))

    def probabilities(self) -> dict[str, float]:
        """Counts as fractions of the shots."""
        total = sum(self.counts.values()) or 1
        return {bits: n / total for bits, n in self.counts.items()}


@dataclass(frozen=True, slots=True)
class Results:
    """A terminal batch's results by circuit label: ``results["bell"].counts``.

    A failed batch's results hold the circuits that did complete.
    """

    id: str
    state: str
    circuits: Mapping[str, CircuitResult] = field(default_factory=dict)
    raw: Mapping[str, Any] = _raw()

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Results:
        circuits = {str(label): CircuitResult.from_dict(str(label), r)
                    for label, r in (data.get("results") or {}).items()}
        return cls(id=str(data["id"]), state=str(data["state"]), circuits=circuits,
                   raw=dict(data))

    @property
    def counts(self) -> dict[str, Mapping[str, int]]:
        """Label -> counts, for every circuit that has results."""
        return {label: r.counts for label, r in self.circuits.items()}

    def __getitem__(self, label: str) -> CircuitResult:
        return self.circuits[label]

    def __contains__(self, label: object) -> bool:
        return label in self.circuits

    def __iter__(self) -> Iterator[str]:
        return iter(self.circuits)

    def __len__(self) -> int:
        return len(self.circuits)


@dataclass(frozen=True, slots=True)
class Event:
    """One state change of the event log (``events()``)."""

    seq: int
    kind: str
    batch_id: str | None = None
    job_id: str | None = None
    state: str | None = None
    ts: datetime | None = None
    detail: Any = None
    raw: Mapping[str, Any] = _raw()

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Event:
        return cls(seq=int(data["seq"]), kind=str(data.get("kind", "")),
                   batch_id=data.get("batch_id"), job_id=data.get("job_id"),
                   state=data.get("state"), ts=_time(data.get("ts")),
                   detail=data.get("detail"), raw=dict(data))


@dataclass(frozen=True, slots=True)
class Health:
    """``GET /v1/health``: the daemon's version and figures (the rest is in ``raw``)."""

    status: str
    version: str | None = None
    pid: int | None = None
    #: seconds since the daemon started
    uptime: float | None = None
    #: batches and jobs by state
    batches: Mapping[str, int] = field(default_factory=dict)
    jobs: Mapping[str, int] = field(default_factory=dict)
    #: backend name -> its figures (engine and backend details)
    backends: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    raw: Mapping[str, Any] = _raw()

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Health:
        return cls(status=str(data.get("status", "")), version=data.get("version"),
                   pid=data.get("pid"), uptime=data.get("uptime"),
                   batches=dict(data.get("batches") or {}), jobs=dict(data.get("jobs") or {}),
                   backends=dict(data.get("backends") or {}), raw=dict(data))
