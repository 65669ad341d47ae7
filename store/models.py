"""The records the store keeps, as immutable values."""

from __future__ import annotations

import secrets
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from qjobd.store.states import JobState

_ALPHABET = "0123456789abcdefghjkmnpqrstvwxyz"  # Crockford's base32, lower case


def new_id() -> str:
    """A 26-character id that sorts by creation time (48 bits of ms, 80 random bits)."""
    n = (time.time_ns() // 1_000_000) << 80 | secrets.randbits(80)
    chars = []
    for _ in range(26):
        n, r = divmod(n, 32)
        chars.append(_ALPHABET[r])
    return "".join(reversed(chars))


@dataclass(frozen=True, slots=True)
class CircuitRecord:
    label: str
    source: str
    qasm_version: int
    num_qubits: int
    num_clbits: int


@dataclass(frozen=True, slots=True)
class NewBatch:
    """A validated submission, ready to be stored."""

    owner_uid: int
    backend: str
    shots: int
    circuits: Sequence[CircuitRecord]
    #: the circuit labels of each remote job, in order (the backend's grouping)
    groups: Sequence[Sequence[str]]
    name: str | None = None
    tags: Mapping[str, str] = field(default_factory=dict)
    options: Mapping[str, Any] = field(default_factory=dict)
    timeout: float | None = None
    idempotency_key: str | None = None
    #: digest of the request body, to tell a retry from a different request with the same key
    request_hash: str | None = None
    #: the submitter's own JSON object, stored and returned as given (None: none given)
    metadata: Mapping[str, Any] | None = None
    #: checks the daemon could not make on the circuits, one sentence each
    warnings: Sequence[str] = ()


@dataclass(frozen=True, slots=True)
class Job:
    id: str
    batch_id: str
    position: int
    backend: str
    submission_key: str
    remote_id: str | None
    state: JobState
    remote_status: str | None
    error: str | None
    attempts: int
    poll_interval: float | None
    next_poll_at: float | None
    created_at: float
    updated_at: float
    finished_at: float | None
    labels: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Batch:
    seq: int
    id: str
    owner_uid: int
    backend: str
    shots: int
    name: str | None
    tags: Mapping[str, str]
    options: Mapping[str, Any]
    timeout: float | None
    state: JobState
    error: str | None
    cancel_requested: bool
    created_at: float
    updated_at: float
    finished_at: float | None
    jobs: tuple[Job, ...] = ()
    #: the submitter's metadata object, if any
    metadata: Mapping[str, Any] | None = None
    #: checks the daemon could not make on the circuits, one sentence each
    warnings: tuple[str, ...] = ()

    @property
    def deadline(self) -> float | None:
        return None if self.timeout is None else self.created_at + self.timeout


@dataclass(frozen=True, slots=True)
class Result:
    label: str
    job_id: str
    counts: Mapping[str, int]
    shots: int


@dataclass(frozen=True, slots=True)
class Event:
    seq: int
    ts: float
    batch_id: str | None
    job_id: str | None
    kind: str
    state: str | None
    detail: Mapping[str, Any] | None
