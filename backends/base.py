"""The backend protocol: what the daemon asks of every provider.

A backend is small: it translates these few calls into one provider's wire format.
Retries, request budgets, backoff and persistence live once, in the daemon. It is the
async counterpart of divi's ``AsyncJobBackend``: submit labelled circuits and get a
remote handle back, query statuses (many at once where the provider can), fetch
results, cancel idempotently, and say what it can do.
"""

from __future__ import annotations

import abc
import asyncio
import enum
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from qjobd.backends._aer_cost import CostModel

__all__ = ["Backend", "Capabilities", "Circuit", "Counts", "Grouping", "RemoteState",
           "RemoteStatus", "SubmitRequest"]


class RemoteState(enum.StrEnum):
    """A provider's job status, reduced to what the daemon acts on."""

    #: accepted by the provider, waiting to run
    QUEUED = "queued"
    #: executing
    RUNNING = "running"
    #: finished; results can be fetched
    COMPLETED = "completed"
    #: finished without results
    FAILED = "failed"
    #: canceled (by us or by the provider)
    CANCELED = "canceled"
    #: a status this backend does not recognise; the daemon keeps polling
    UNKNOWN = "unknown"

    @property
    def terminal(self) -> bool:
        """The remote job is over: nothing about it changes any more."""
        return self in (RemoteState.COMPLETED, RemoteState.FAILED, RemoteState.CANCELED)


class Grouping(enum.StrEnum):
    """How a batch's circuits map onto remote jobs."""

    #: one remote job per circuit (IonQ)
    PER_CIRCUIT = "per_circuit"
    #: one remote job for the whole batch (Qoro)
    PER_BATCH = "per_batch"


@dataclass(frozen=True, slots=True)
class Capabilities:
    """What a backend can do; the daemon plans requests around it."""

    grouping: Grouping = Grouping.PER_CIRCUIT
    #: the provider can report many jobs' statuses in one request
    batch_status: bool = False
    #: at most this many ids per status request
    max_status_batch: int = 1
    #: the provider can find a job by the client's submission key
    lookup_by_key: bool = False
    #: remote jobs outlive the daemon's process (False for an in-process simulator)
    durable: bool = True
    #: a create whose answer was lost leaves nothing that will ever run (e.g. a job that
    #: runs only once its upload is finalized), so resubmitting cannot duplicate work
    lost_create_is_inert: bool = False
    #: OpenQASM major versions the provider accepts on the wire (others are converted)
    qasm_versions: frozenset[int] = frozenset({2, 3})
    default_shots: int = 1000
    max_shots: int = 1_000_000
    #: widest circuit accepted (None: no limit known; the daemon's [daemon] max_qubits)
    max_qubits: int | None = None
    #: where ``max_qubits`` comes from, said when a circuit is refused for it
    max_qubits_reason: str = ""
    #: OpenQASM versions the provider parses itself (its own compiler reads the text): a
    #: program in one of them that the reference grammar accepts but Qiskit cannot import
    #: (const, subroutines, stretch...) is sent as written, with the skipped checks said
    provider_parsed: frozenset[int] = frozenset()
    max_circuits_per_batch: int = 100_000
    #: a simulator's estimate of each circuit's run time and its limit, checked at
    #: submission (the local backend's: backends/_aer_cost.py); None: not estimated
    simulation_cost: CostModel | None = None


@dataclass(frozen=True, slots=True)
class Circuit:
    """One labelled circuit, already parsed and validated by the daemon."""

    label: str
    #: OpenQASM source in one of the backend's ``qasm_versions``
    source: str
    qasm_version: int
    #: the number of classical bits: the width of every counts key
    num_clbits: int


@dataclass(frozen=True, slots=True)
class SubmitRequest:
    """One remote job to create."""

    #: unique per remote job; stored before the request so a crash can be reconciled
    submission_key: str
    circuits: Sequence[Circuit]
    shots: int
    name: str | None = None
    options: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class RemoteStatus:
    """A remote job's status as the provider reported it."""

    remote_id: str
    state: RemoteState
    #: the provider's own status string, recorded as is
    raw: str
    #: why it failed, if it did (provider's code and message)
    error: str | None = None
    #: seconds the provider predicts the job has left, if it says (never for a
    #: terminal job); the engine may poll it less often meanwhile
    eta: float | None = None


#: counts keyed by bitstring, highest classical bit leftmost (Qiskit's order)
Counts = dict[str, int]


class Backend(abc.ABC):
    """A provider of quantum job execution.

    Every method may raise :class:`qjobd.backends.errors.BackendError` subclasses:
    ``Unavailable``/``RateLimited`` (retry later), ``Rejected`` (never retry),
    ``AuthError`` and ``ProtocolError``.
    """

    capabilities: Capabilities = Capabilities()
    #: set by the daemon: awaited before each request after the first of one call (an
    #: upload in fragments, paged results, a cancel after a status), so that such a call
    #: draws from the backend's request budget per request, as a one-request call does
    pace: Callable[[], Awaitable[None]] | None = None

    def __init__(self, name: str, config: Mapping[str, Any]) -> None:
        #: the name the backend is configured under (``[backends.<name>]``)
        self.name = name
        self.config = config

    async def start(self) -> None:  # noqa: B027 - optional hook
        """Acquire resources (HTTP clients, worker processes). Called once."""

    async def aclose(self) -> None:  # noqa: B027 - optional hook
        """Release resources. Remote jobs are left running."""

    @abc.abstractmethod
    async def submit(self, request: SubmitRequest, *,
                     created: Callable[[str], Awaitable[None]] | None = None) -> str:
        """Create one remote job and return its remote id.

        Never retried by the backend itself: a retry could create a second job. A backend
        that creates a job in several requests (create, then upload) awaits
        ``created(remote_id)`` as soon as the id exists and before the next request: the
        daemon stores the id, so a crash mid-upload can be settled with
        :meth:`resume_interrupted` instead of leaving an orphan.
        """

    @abc.abstractmethod
    async def status(self, remote_ids: Sequence[str]) -> dict[str, RemoteStatus]:
        """The statuses of these jobs (at most ``max_status_batch`` ids).

        Ids the provider does not know are absent from the answer.
        """

    @abc.abstractmethod
    async def results(self, remote_id: str, circuits: Sequence[Circuit]) -> dict[str, Counts]:
        """The counts of a completed job, by circuit label."""

    @abc.abstractmethod
    async def cancel(self, remote_ids: Sequence[str]) -> None:
        """Cancel these jobs. Idempotent: a job already terminal is not an error."""

    def when_terminal(self, remote_id: str) -> asyncio.Future[None] | None:
        """Optional: a future done once the remote job is terminal, for a backend that
        learns that by itself (a simulator running the job in its own workers).

        The daemon then polls the job the moment the future is done rather than at its
        next scheduled poll, so that waiters wake at once; the poll (``status``, then
        ``results``) still says what happened. Done at once if the job already ended;
        None (the default) for a backend that only knows when asked: the daemon polls on
        its schedule.
        """
        return None

    async def resume_interrupted(self, remote_id: str, request: SubmitRequest) -> str | None:
        """Settle a job whose creation was interrupted after ``created(remote_id)``.

        Return the id of a job that will run (the same one, its upload finished), or None
        after making sure the partial job never runs (e.g. canceled): the daemon then
        submits again. The default trusts a job that has an id.
        """
        return remote_id

    async def lookup(self, submission_key: str, *, created_after: float | None = None
                     ) -> str | None:
        """The remote id of the job created with this submission key, or None if none was.

        ``created_after`` (Unix time) bounds the search: no job with this key can be older.
        Only meaningful when ``capabilities.lookup_by_key``.
        """
        raise NotImplementedError(f"backend {self.name!r} cannot look up jobs by key")

    def validate_options(self, options: Mapping[str, Any]) -> None:
        """Check a batch's backend ``options`` at submission; raise ValueError saying what is wrong.

        The default accepts none.
        """
        if options:
            names = ", ".join(sorted(options))
            raise ValueError(f"backend {self.name!r} takes no options; got {names}")

    def secrets(self) -> list[str]:
        """Values that must never reach logs, answers or the database (API keys)."""
        return []

    async def reconfigure(self, config: Mapping[str, Any]) -> None:  # noqa: B027 - optional
        """Take new settings (e.g. a rotated key) without dropping jobs; on SIGHUP."""

    def health(self) -> dict[str, Any]:
        """Backend-specific health details for ``GET /v1/health``."""
        return {}
