"""The backend conformance suite: the protocol's promises, checked against a real provider.

Every backend qjobd ships passes it (tests/integration/test_conformance.py), and a plugin
author runs the same suite against their own: describe the backend and its provider in
a :class:`Subject`, then subclass :class:`BackendConformance` with a ``subject``
fixture::

    import pytest
    from qjobd.testing.conformance import BackendConformance, Subject

    class MySubject(Subject):
        def backend(self):
            return MyBackend("mine", {"base_url": self.provider.url})

    class TestMyBackend(BackendConformance):
        @pytest.fixture
        def subject(self):
            with MyProvider() as provider:
                yield MySubject(provider)

Each check drives the backend as the daemon does (docs/plugins.md says what each call
must do), and checks of every call, whatever the test, that each request after the
first of a call waited for ``backend.pace``. A check that needs a capability the
backend does not declare, or a condition the subject cannot provoke on its provider,
is skipped with a reason saying which. The suite's circuits use ``h``, ``x``, ``cx``
and ``measure`` only, on at most 3 qubits.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from types import MappingProxyType
from typing import Any, ClassVar, TypeVar

import anyio
import pytest
import pytest_asyncio

from qjobd.backends import (
    AuthError,
    Backend,
    BackendError,
    Capabilities,
    Circuit,
    Counts,
    Grouping,
    RateLimited,
    Rejected,
    RemoteState,
    RemoteStatus,
    SubmitRequest,
    Unavailable,
)
from qjobd.errors import QjobdError

__all__ = ["CIRCUITS", "BackendConformance", "Run", "Subject", "Unsupported", "needs"]

T = TypeVar("T")
F = TypeVar("F", bound=Callable[..., Any])

#: the suite's circuits: label -> (OpenQASM 2 source, OpenQASM 3 source, classical bits)
CIRCUITS: Mapping[str, tuple[str, str, int]] = MappingProxyType({
    "bell": (
        'OPENQASM 2.0;\ninclude "qelib1.inc";\nqreg q[2];\ncreg c[2];\n'
        "h q[0];\ncx q[0],q[1];\nmeasure q -> c;\n",
        'OPENQASM 3.0;\ninclude "stdgates.inc";\nqubit[2] q;\nbit[2] c;\n'
        "h q[0];\ncx q[0], q[1];\nc = measure q;\n",
        2),
    "ghz-3": (
        'OPENQASM 2.0;\ninclude "qelib1.inc";\nqreg q[3];\ncreg c[3];\n'
        "h q[0];\ncx q[0],q[1];\ncx q[1],q[2];\nmeasure q -> c;\n",
        'OPENQASM 3.0;\ninclude "stdgates.inc";\nqubit[3] q;\nbit[3] c;\n'
        "h q[0];\ncx q[0], q[1];\ncx q[1], q[2];\nc = measure q;\n",
        3),
    "x.1": (
        'OPENQASM 2.0;\ninclude "qelib1.inc";\nqreg q[1];\ncreg c[1];\n'
        "x q[0];\nmeasure q[0] -> c[0];\n",
        'OPENQASM 3.0;\ninclude "stdgates.inc";\nqubit[1] q;\nbit[1] c;\n'
        "x q[0];\nc[0] = measure q[0];\n",
        1),
})
#: how far a provider's clock may run behind ours, for lookups bounded by creation time
CLOCK_SKEW = 60.0


#: why a check is skipped when the backend does not declare a capability it needs
_CAPABILITY_REASONS = {
    "batch_status": "does not declare batch_status (with max_status_batch > 1): the daemon "
                    "asks for one job per status call",
    "lookup_by_key": "does not declare lookup_by_key",
    "durable": "declares durable=False: its jobs die with its process and a restarted "
               "daemon runs them again, so there is nothing to follow or settle",
}
#: why a check is skipped when the subject leaves a provider hook as it is
_HOOK_REASONS = {
    "requests": "the subject cannot count its provider's requests",
    "fail_next": "the subject cannot make its provider answer with an HTTP error",
    "lose_create": "the subject cannot lose a create's answer",
    "jobs_with_key": "the subject cannot list its provider's jobs by submission key",
}


class Unsupported(QjobdError):
    """The subject cannot provoke this condition on its provider."""


class Subject:
    """One backend and its provider, as the suite sees them.

    Subclass it: :meth:`backend` is required. Each provider hook left as it is raises
    :class:`Unsupported`, and the checks that need it are skipped, saying so.
    """

    #: the backend's name in messages
    name: str = "backend"
    #: shots per job: few, since the suite checks shapes, not physics
    shots: int = 16
    #: the batch ``options`` every request carries
    options: ClassVar[Mapping[str, Any]] = MappingProxyType({})
    #: seconds a job of the suite's may take to end on the provider
    job_timeout: float = 30.0
    #: jobs the multi-job checks submit: enough to make a paged call take two pages
    many: int = 3
    #: the ways :meth:`lose_create` can lose a create; the lost-create check tries each
    lost_creates: Sequence[str] = ("the create's answer",)

    def backend(self) -> Backend:
        """A new, unstarted backend talking to the subject's provider.

        Called once per check, and again for a check that restarts the backend: every
        instance must see the same provider (its jobs outlive an instance, if durable).
        """
        raise NotImplementedError("a Subject must say how to build its backend")

    async def finish(self, remote_id: str) -> None:
        """Hurry the provider's job to its end, if the provider lets you (default: wait)."""

    async def requests(self) -> int:
        """How many requests the provider has answered so far (or dropped unanswered)."""
        raise Unsupported(_HOOK_REASONS["requests"])

    async def fail_next(self, status: int, retry_after: float | None = None) -> None:
        """Make the provider answer its next request with HTTP ``status``, and a
        ``Retry-After`` of ``retry_after`` seconds if given."""
        raise Unsupported(_HOOK_REASONS["fail_next"])

    async def lose_create(self, how: str) -> None:
        """Make the next submit lose an answer after the provider made the job, in the way
        ``how`` (one of :attr:`lost_creates`) names, e.g. by dropping the connection."""
        raise Unsupported(_HOOK_REASONS["lose_create"])

    async def jobs_with_key(self, submission_key: str) -> list[str]:
        """The ids of the provider's jobs made with this submission key that have run or
        will run (a job canceled before it ran, or one that can never run, is not one)."""
        raise Unsupported(_HOOK_REASONS["jobs_with_key"])

    def unknown_id(self) -> str:
        """A remote id of the provider's form that it never gave out."""
        return str(uuid.uuid4())


def needs(*capabilities: str, hooks: Sequence[str] = ()) -> Callable[[F], F]:
    """Mark a check as needing these capabilities and subject hooks: where one is missing,
    the check is skipped (saying which) before its backend is even started."""
    def mark(check: F) -> F:
        check.__dict__["qjobd_needs"] = (capabilities, tuple(hooks))
        return check
    return mark


def _missing(check: Any, subject: Subject, caps: Capabilities) -> str | None:
    """Why ``check`` cannot run on this backend and subject, or None if it can."""
    capabilities, hooks = getattr(check, "qjobd_needs", ((), ()))
    for name in capabilities:
        have = getattr(caps, name)
        if name == "batch_status":
            have = have and caps.max_status_batch > 1
        if not have:
            return f"{subject.name} {_CAPABILITY_REASONS[name]}"
    for hook in hooks:
        if getattr(type(subject), hook) is getattr(Subject, hook):
            return f"{subject.name}: {_HOOK_REASONS[hook]}"
    return None


async def provoke(subject: Subject, hook: Awaitable[T]) -> T:
    """Await a provider hook; skip the check, saying why, if the subject cannot."""
    try:
        return await hook
    except Unsupported as exc:
        pytest.skip(f"{subject.name}: {exc}")


class Run:
    """One check's backends, all on the subject's provider, every call's pacing checked."""

    def __init__(self, subject: Subject) -> None:
        self.subject = subject
        self.backends: list[Backend] = []
        #: submission key -> the ids the backend passed to ``created``
        self.created: dict[str, list[str]] = {}
        #: the calls that took more than one request ("status: 2 requests")
        self.multi: list[str] = []
        self._counting = True
        self._marks: list[int] | None = None

    async def start(self, backend: Backend | None = None) -> Backend:
        """A backend (a new one from the subject if None), started, with the suite's pace hook."""
        backend = backend or self.subject.backend()
        backend.pace = self._pace
        self.backends.append(backend)
        await backend.start()
        return backend

    async def aclose(self) -> None:
        for backend in reversed(self.backends):
            await backend.aclose()

    async def counted(self) -> int | None:
        """The provider's request count, or None if the subject cannot count."""
        if not self._counting:
            return None
        try:
            return await self.subject.requests()
        except Unsupported:
            self._counting = False
            return None

    async def _pace(self) -> None:
        count = await self.counted()
        if self._marks is not None and count is not None:
            self._marks.append(count)

    async def call(self, what: str, fn: Callable[..., Awaitable[T]], *args: Any,
                   **kwargs: Any) -> T:
        """One protocol call; fails if a request after its first did not wait for ``pace``,
        or its first did (the daemon budgeted that one already)."""
        before = await self.counted()
        self._marks = []
        try:
            return await fn(*args, **kwargs)
        finally:
            marks, self._marks = self._marks, None
            if before is not None:
                after = await self.counted()
                assert after is not None
                n = after - before
                if n > 1:
                    self.multi.append(f"{what}: {n} requests")
                paced = [m - before for m in marks]
                assert paced == list(range(1, n)), (
                    f"{self.subject.name}: {what} sent {n} request(s): backend.pace must be "
                    f"awaited before each but the first (after 1..{n - 1} requests had "
                    f"been sent), but was awaited after {paced}")

    # -- requests and circuits ----------------------------------------------------------

    def circuits(self, backend: Backend) -> list[Circuit]:
        """The suite's circuits, in an OpenQASM version the backend takes."""
        versions = backend.capabilities.qasm_versions
        version = 2 if 2 in versions else 3
        return [Circuit(label, qasm2 if version == 2 else qasm3, version, bits)
                for label, (qasm2, qasm3, bits) in CIRCUITS.items()]

    def request(self, circuits: Sequence[Circuit]) -> SubmitRequest:
        return SubmitRequest(submission_key=f"qjobd-conformance-{uuid.uuid4().hex}",
                             circuits=list(circuits), shots=self.subject.shots,
                             name="qjobd conformance", options=dict(self.subject.options))

    def one_request(self, backend: Backend) -> SubmitRequest:
        """One remote job's request: one circuit, or every circuit if grouped per batch."""
        circuits = self.circuits(backend)
        if backend.capabilities.grouping == Grouping.PER_BATCH:
            return self.request(circuits)
        return self.request(circuits[:1])

    def every_circuit(self, backend: Backend) -> list[SubmitRequest]:
        """Requests covering every circuit, as the daemon groups them for this backend."""
        circuits = self.circuits(backend)
        if backend.capabilities.grouping == Grouping.PER_BATCH:
            return [self.request(circuits)]
        return [self.request([c]) for c in circuits]

    # -- calls ----------------------------------------------------------------------------

    async def submit(self, backend: Backend, request: SubmitRequest) -> str:
        async def created(remote_id: str) -> None:
            self.created.setdefault(request.submission_key, []).append(remote_id)

        remote_id = await self.call("submit", backend.submit, request, created=created)
        assert isinstance(remote_id, str) and remote_id, f"submit returned {remote_id!r}"
        return remote_id

    async def status(self, backend: Backend, remote_ids: Sequence[str]
                     ) -> dict[str, RemoteStatus]:
        """Statuses of any number of jobs, asked at most ``max_status_batch`` at a time."""
        step = backend.capabilities.max_status_batch
        seen: dict[str, RemoteStatus] = {}
        for i in range(0, len(remote_ids), step):
            chunk = list(remote_ids[i:i + step])
            answer = await self.call("status", backend.status, chunk)
            assert set(answer) <= set(chunk), f"status answered for ids not asked: " \
                                              f"{sorted(set(answer) - set(chunk))}"
            seen.update(answer)
        return seen

    async def wait(self, backend: Backend, remote_ids: Sequence[str]) -> dict[str, RemoteStatus]:
        """Poll until every job is terminal; their last statuses."""
        for remote_id in remote_ids:
            await self.subject.finish(remote_id)
        with anyio.fail_after(self.subject.job_timeout):
            while True:
                seen = await self.status(backend, remote_ids)
                missing = sorted(set(remote_ids) - set(seen))
                assert not missing, f"status() does not know jobs the provider made: {missing}"
                for remote_id, status in seen.items():
                    assert status.remote_id == remote_id
                    assert isinstance(status.state, RemoteState) and isinstance(status.raw, str)
                if all(seen[r].state.terminal for r in remote_ids):
                    return seen
                await anyio.sleep(0.05)

    async def completed(self, backend: Backend, remote_ids: Sequence[str]) -> None:
        seen = await self.wait(backend, remote_ids)
        failed = {r: (s.raw, s.error) for r, s in seen.items() if s.state != RemoteState.COMPLETED}
        assert not failed, f"jobs did not complete: {failed}"

    async def results(self, backend: Backend, remote_id: str, request: SubmitRequest
                      ) -> dict[str, Counts]:
        """The job's counts, checked: keyed by every label, each as wide as its circuit."""
        counts = await self.call("results", backend.results, remote_id, request.circuits)
        labels = {c.label for c in request.circuits}
        assert set(counts) == labels, f"results keyed by {sorted(counts)}, not {sorted(labels)}"
        for circuit in request.circuits:
            check_counts(counts[circuit.label], circuit, request.shots)
        return counts


def check_counts(counts: Counts, circuit: Circuit, shots: int) -> None:
    """One circuit's counts: bitstrings as wide as its classical bits, summing to the shots."""
    assert isinstance(counts, dict) and counts, f"{circuit.label}: no counts"
    for key, count in counts.items():
        assert isinstance(key, str) and len(key) == circuit.num_clbits \
            and not key.strip("01"), f"{circuit.label}: key {key!r} is not a " \
                                     f"{circuit.num_clbits}-bit bitstring"
        assert isinstance(count, int) and not isinstance(count, bool) and count >= 0, \
            f"{circuit.label}: count {count!r} of {key!r} is not a whole number"
    assert sum(counts.values()) == shots, f"{circuit.label}: counts sum to " \
                                          f"{sum(counts.values())}, not {shots} shots"


class BackendConformance:
    """The checks every backend passes; subclass it and define a ``subject`` fixture."""

    @pytest.fixture
    def subject(self) -> Subject:
        pytest.fail("define a `subject` fixture that returns (or yields) a "
                    "qjobd.testing.conformance.Subject")

    @pytest_asyncio.fixture
    async def run(self, subject: Subject) -> AsyncIterator[Run]:
        run = Run(subject)
        try:
            yield run
        finally:
            await run.aclose()

    @pytest_asyncio.fixture
    async def backend(self, run: Run, subject: Subject, request: pytest.FixtureRequest
                      ) -> Backend:
        backend = subject.backend()
        reason = _missing(request.function, subject, backend.capabilities)
        if reason is not None:
            pytest.skip(reason)
        return await run.start(backend)

    # -- what it says it can do -------------------------------------------------------------

    @pytest.mark.asyncio
    async def test_its_capabilities_are_coherent(self, backend: Backend) -> None:
        caps = backend.capabilities
        assert isinstance(caps, Capabilities) and isinstance(caps.grouping, Grouping)
        assert caps.max_status_batch >= 1
        assert caps.batch_status or caps.max_status_batch == 1, \
            "max_status_batch > 1 without batch_status"
        assert caps.qasm_versions and caps.qasm_versions <= {2, 3}
        assert 1 <= caps.default_shots <= caps.max_shots
        assert caps.max_qubits is None or caps.max_qubits >= 1
        assert caps.max_circuits_per_batch >= 1
        assert all(isinstance(s, str) for s in backend.secrets())
        backend.validate_options({})
        with pytest.raises(ValueError, match=r"\w"):
            backend.validate_options({"surely-not-an-option-of-any-backend": 1})

    # -- status -----------------------------------------------------------------------------

    @pytest.mark.asyncio
    async def test_ids_the_provider_does_not_know_are_absent_from_status(
            self, run: Run, backend: Backend, subject: Subject) -> None:
        remote_id = await run.submit(backend, run.one_request(backend))
        unknown = subject.unknown_id()
        assert await run.call("status", backend.status, [unknown]) == {}
        if backend.capabilities.max_status_batch >= 2:
            answer = await run.call("status", backend.status, [unknown, remote_id])
            assert unknown not in answer and remote_id in answer
        await run.wait(backend, [remote_id])
        assert await run.call("status", backend.status, [unknown]) == {}

    @pytest.mark.asyncio
    @needs("batch_status")
    async def test_one_status_call_answers_for_many_jobs(self, run: Run, backend: Backend,
                                                         subject: Subject) -> None:
        caps = backend.capabilities
        n = min(caps.max_status_batch, max(2, subject.many))
        ids = [await run.submit(backend, run.one_request(backend)) for _ in range(n)]
        answer = await run.call("status", backend.status, ids)
        assert set(answer) == set(ids)
        await run.wait(backend, ids)

    # -- cancel -----------------------------------------------------------------------------

    @pytest.mark.asyncio
    async def test_cancel_is_idempotent(self, run: Run, backend: Backend,
                                        subject: Subject) -> None:
        live = run.one_request(backend)
        live_id = await run.submit(backend, live)
        await run.call("cancel", backend.cancel, [live_id])
        await run.call("cancel", backend.cancel, [live_id])  # twice: no error
        ended = await run.wait(backend, [live_id])
        assert ended[live_id].state in (RemoteState.CANCELED, RemoteState.COMPLETED,
                                        RemoteState.FAILED)
        done = run.one_request(backend)
        done_id = await run.submit(backend, done)
        await run.completed(backend, [done_id])
        await run.call("cancel", backend.cancel, [done_id])  # finished: no error, no change
        assert (await run.status(backend, [done_id]))[done_id].state == RemoteState.COMPLETED
        await run.results(backend, done_id, done)
        await run.call("cancel", backend.cancel, [subject.unknown_id()])  # unknown: no error
        await run.call("cancel", backend.cancel, [])

    # -- the provider's refusals ----------------------------------------------------------------

    @pytest.mark.asyncio
    @needs(hooks=["fail_next"])
    async def test_a_429_becomes_rate_limited_with_retry_after(
            self, run: Run, backend: Backend, subject: Subject) -> None:
        remote_id = await run.submit(backend, run.one_request(backend))
        await provoke(subject, subject.fail_next(429, retry_after=3))
        with pytest.raises(RateLimited) as caught:
            await run.call("status", backend.status, [remote_id])
        assert caught.value.retry_after == pytest.approx(3, abs=1)
        await subject.fail_next(429, retry_after=3)
        with pytest.raises(RateLimited) as caught:
            await run.submit(backend, run.one_request(backend))
        assert caught.value.retry_after == pytest.approx(3, abs=1)
        await run.wait(backend, [remote_id])

    @pytest.mark.asyncio
    @needs(hooks=["fail_next"])
    async def test_a_provider_outage_becomes_unavailable(self, run: Run, backend: Backend,
                                                         subject: Subject) -> None:
        remote_id = await run.submit(backend, run.one_request(backend))
        await provoke(subject, subject.fail_next(503))
        with pytest.raises(Unavailable):
            await run.call("status", backend.status, [remote_id])
        await run.wait(backend, [remote_id])

    # -- the request budget -----------------------------------------------------------------

    @pytest.mark.asyncio
    @needs(hooks=["requests"])
    async def test_every_request_of_a_call_is_paced(self, run: Run, backend: Backend,
                                                    subject: Subject) -> None:
        if await run.counted() is None:
            pytest.skip(f"{subject.name}: {_HOOK_REASONS['requests']}")
        caps = backend.capabilities
        started = time.time()
        requests = [run.one_request(backend) for _ in range(max(1, subject.many))]
        ids = [await run.submit(backend, r) for r in requests]
        await run.completed(backend, ids)
        for remote_id, request in zip(ids, requests, strict=True):
            await run.results(backend, remote_id, request)
        if caps.durable:  # a new instance knows nothing yet: what a restart sees
            fresh = await run.start()
            for remote_id, request in zip(ids, requests, strict=True):
                await run.results(fresh, remote_id, request)
        if caps.lookup_by_key:
            await run.call("lookup", backend.lookup, requests[0].submission_key,
                           created_after=started - CLOCK_SKEW)
        await run.call("cancel", backend.cancel, ids)
        if not run.multi:
            pytest.skip(f"{subject.name}: no call made more than one request, so none "
                        "needed pacing (and no call paced its first request)")

    # -- results ----------------------------------------------------------------------------

    @pytest.mark.asyncio
    async def test_results_are_keyed_by_every_label_submitted(self, run: Run,
                                                             backend: Backend) -> None:
        requests = run.every_circuit(backend)
        ids = [await run.submit(backend, r) for r in requests]
        await run.completed(backend, ids)
        for remote_id, request in zip(ids, requests, strict=True):
            await run.results(backend, remote_id, request)

    @pytest.mark.asyncio
    @needs("durable")
    async def test_a_new_instance_follows_the_jobs_of_the_last(
            self, run: Run, backend: Backend, subject: Subject) -> None:
        request = run.one_request(backend)
        remote_id = await run.submit(backend, request)
        restarted = await run.start()
        await run.completed(restarted, [remote_id])
        assert await run.results(restarted, remote_id, request) == \
            await run.results(backend, remote_id, request)

    # -- settling what a crash or a lost answer left ----------------------------------------

    @pytest.mark.asyncio
    @needs("lookup_by_key")
    async def test_lookup_finds_a_job_by_its_submission_key(
            self, run: Run, backend: Backend, subject: Subject) -> None:
        started = time.time() - CLOCK_SKEW
        request = run.one_request(backend)
        remote_id = await run.submit(backend, request)
        assert await run.call("lookup", backend.lookup, request.submission_key,
                              created_after=started) == remote_id
        never = f"qjobd-conformance-never-{uuid.uuid4().hex}"
        assert await run.call("lookup", backend.lookup, never, created_after=started) is None
        await run.wait(backend, [remote_id])

    @pytest.mark.asyncio
    @needs("durable", hooks=["lose_create", "jobs_with_key"])
    async def test_a_lost_create_is_settled_exactly_once(
            self, run: Run, backend: Backend, subject: Subject) -> None:
        for how in subject.lost_creates:
            await self._settle_a_lost_create(run, backend, subject, how)

    async def _settle_a_lost_create(self, run: Run, backend: Backend, subject: Subject,
                                    how: str) -> None:
        caps = backend.capabilities
        request = run.one_request(backend)
        key = request.submission_key
        started = time.time() - CLOCK_SKEW
        await provoke(subject, subject.lose_create(how))
        with pytest.raises(BackendError) as caught:
            await run.submit(backend, request)
        assert not isinstance(caught.value, Rejected | AuthError), (
            f"{how} lost: {type(caught.value).__name__}; the outcome is unknown, so raise "
            "Unavailable and let the daemon settle it")
        made = await subject.jobs_with_key(key)
        assert len(made) <= 1, f"{how} lost: the backend sent the create again ({made})"
        # what the daemon does with an interrupted submission (docs/plugins.md)
        created = run.created.get(key)
        if created:
            remote_id = await run.call("resume_interrupted", backend.resume_interrupted,
                                       created[-1], request)
        elif caps.lookup_by_key:
            remote_id = await run.call("lookup", backend.lookup, key, created_after=started)
            assert remote_id == (made[0] if made else None), \
                f"{how} lost: lookup found {remote_id!r}, the provider made {made}"
        elif caps.lost_create_is_inert:
            remote_id = None
        else:
            pytest.skip(f"{subject.name} declares neither lookup_by_key nor "
                        "lost_create_is_inert, and submit reported no id through created(): "
                        "the daemon fails such a job rather than risk a duplicate")
        if remote_id is None:
            remote_id = await run.submit(backend, request)
        await run.completed(backend, [remote_id])
        await run.results(backend, remote_id, request)
        assert await subject.jobs_with_key(key) == [remote_id], \
            f"{how} lost: more than one job ran for one submission key"
