"""Qoro's service, as divi's ``QoroService`` speaks it: one job per batch, uploaded in two phases.

Wire facts: ``../shared/wire/qoro.md``. Spoken with httpx directly rather than through
divi: divi is synchronous, pulls about 1 GB of dependencies, retries GETs in its
transport, and polls every job every 3 s forever. Here every request is sent once and
the daemon decides about retries, budgets and backoff, as for every backend.

Submitting is two-phase: ``POST job/init/`` (its ``tag`` carries the daemon's
submission key) gives a job id, then ``POST job/{id}/add_circuits/`` uploads the
circuits, gzip+base64, in fragments packed greedily under 0.95 MB of JSON; only the last
says ``"finalized": "true"``, and a job runs only once it has. The id is handed to the
daemon (``created``) before the first fragment, so a crash mid-upload is settled on
restart by :meth:`QoroBackend.resume_interrupted` rather than left as an orphan.

Circuits go out as OpenQASM 2 only (the daemon converts OpenQASM 3 input, and refuses at
submission a circuit that has no OpenQASM 2 form). Results come paged from
``resultsV2``, each histogram a plain ``{bitstring: count}`` or a QH1/QH2 envelope
(:mod:`backends.qh`).
"""

from __future__ import annotations

import base64
import gzip
import json
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

import anyio
import structlog

from qjobd.backends import qh
from qjobd.backends.base import (
    Capabilities,
    Circuit,
    Counts,
    Grouping,
    RemoteState,
    RemoteStatus,
    SubmitRequest,
)
from qjobd.backends.errors import AuthError, BackendError, ProtocolError, Rejected, Unavailable
from qjobd.backends.http import HttpBackend, check, error_text, json_body

log = structlog.get_logger("qjobd.qoro")

DEFAULT_BASE_URL = "https://app.qoroquantum.net/api"
DEFAULT_CLUSTER = "qoro_maestro"
#: divi's cap on one add_circuits body: 0.95 MB of JSON
MAX_FRAGMENT_BYTES = int(0.95 * 1024 * 1024)  # 996,147
#: resultsV2 page size (divi's)
PAGE_LIMIT = 100

_STATES = {
    "PENDING": RemoteState.QUEUED,
    "SCHEDULED": RemoteState.QUEUED,
    # paused: not executing now, so not "running"; a job already running stays running in
    # the daemon (states never go backwards) and the raw status shows PAUSED
    "PAUSED": RemoteState.QUEUED,
    "RUNNING": RemoteState.RUNNING,
    "COMPLETED": RemoteState.COMPLETED,
    "FAILED": RemoteState.FAILED,
    "CANCELLED": RemoteState.CANCELED,
    "INSUFFICIENT_CREDITS": RemoteState.FAILED,
    "TIMED_OUT": RemoteState.FAILED,
}
_FAILURES = {
    "FAILED": "FAILED: the job failed on Qoro's side",
    "INSUFFICIENT_CREDITS": "INSUFFICIENT_CREDITS: the Qoro account has too few credits "
                            "to run the job",
    "TIMED_OUT": "TIMED_OUT: the job passed Qoro's execution deadline",
}
#: the status of a job that may not have received its finalized fragment yet
_MAYBE_UNFINALIZED = "PENDING"
_CONFIG = {"base_url", "api_key_env", "api_key_credential", "simulator_cluster",
           "qpu_system_name", "timeout", "max_qubits"}
#: qubits by simulator cluster or QPU system, where Qoro publishes one. It publishes none
#: today (Maestro, behind qoro_maestro, picks statevector, MPS or stabilizer methods by
#: circuit, so its width depends on the circuit): circuits are held to the daemon's
#: [daemon] max_qubits unless [backends.NAME] max_qubits says otherwise
TARGET_QUBITS: dict[str, int] = {}


class QoroBackend(HttpBackend):
    """Qoro's service, on a simulator cluster (``simulator_cluster``) or a QPU
    (``qpu_system_name``)."""

    provider = "Qoro"
    settings = _CONFIG
    default_base_url = DEFAULT_BASE_URL
    key_env = "QORO_API_KEY"
    auth_scheme = "Bearer"

    def __init__(self, name: str, config: Mapping[str, Any]) -> None:
        super().__init__(name, config)
        cluster = config.get("simulator_cluster")
        system = config.get("qpu_system_name")
        if cluster is not None and system is not None:
            raise ValueError("set simulator_cluster or qpu_system_name, not both")
        for key, value in (("simulator_cluster", cluster), ("qpu_system_name", system)):
            if value is not None and (not isinstance(value, str) or not value):
                raise ValueError(f"{key} must be a non-empty string")
        #: the init body's target: {"simulator_cluster": ...} or {"qpu_system_name": ...}
        self.target: dict[str, str] = (
            {"qpu_system_name": system} if system is not None
            else {"simulator_cluster": cluster or DEFAULT_CLUSTER})
        self.timeout = float(config.get("timeout", 60.0))
        if not self.timeout > 0:
            raise ValueError("timeout must be a positive number of seconds")
        self._key = self.read_key(config)
        max_qubits, why = self.qubit_limit(config, TARGET_QUBITS,
                                           next(iter(self.target.values())))
        self.capabilities = Capabilities(
            max_qubits=max_qubits, max_qubits_reason=why,
            grouping=Grouping.PER_BATCH, batch_status=False, max_status_batch=1,
            # the wire cannot find a job by its tag, but a job never finalized never runs
            lookup_by_key=False, lost_create_is_inert=True,
            durable=True, qasm_versions=frozenset({2}), default_shots=1000,
            max_shots=1_000_000)

    def health(self) -> dict[str, Any]:
        return {"base_url": self.base_url, **self.target}

    # -- submitting ------------------------------------------------------------------

    async def submit(self, request: SubmitRequest, *,
                     created: Callable[[str], Awaitable[None]] | None = None) -> str:
        if not request.circuits:
            raise Rejected("a Qoro job needs at least one circuit")
        # gzip and base64 of a large batch is CPU work: off the event loop; a circuit too
        # big for any fragment is refused here, before a job exists
        fragments = await anyio.to_thread.run_sync(
            pack_fragments, request.circuits, request.shots, MAX_FRAGMENT_BYTES)
        body = {"tag": request.submission_key, "job_type": "EXECUTE", "use_packing": False,
                **self.target}
        what = "init job"
        answer = json_body(check(await self.request("POST", "job/init/", what, first=True,
                                                  json=body), what), what)
        job_id = answer.get("job_id") if isinstance(answer, Mapping) else None
        if not isinstance(job_id, str) or not job_id:
            raise ProtocolError(f"{what}: the answer has no job id")
        if created is not None:
            # stored by the daemon before the upload: a crash from here on is settled by
            # resume_interrupted, never left running unknown
            await created(job_id)
        for i, fragment in enumerate(fragments):
            what = f"add circuits to job {job_id} (fragment {i + 1} of {len(fragments)})"
            response = await self.request("POST", f"job/{job_id}/add_circuits/", what,
                                        content=fragment,
                                        headers={"Content-Type": "application/json"})
            try:
                check(response, what)
            except (Rejected, AuthError):
                # refused for good: the partial job would wait forever; cancel it (best
                # effort: it never runs unfinalized anyway)
                await self._abandon(job_id)
                raise
        return job_id

    async def _abandon(self, job_id: str) -> None:
        try:
            await self._cancel_one(job_id, first=False)
        except BackendError as exc:
            log.warning("could not cancel an abandoned partial job", remote_id=job_id,
                        error=str(exc))

    async def resume_interrupted(self, remote_id: str, request: SubmitRequest) -> str | None:
        """Settle a job whose upload a crash (or a lost answer) interrupted.

        The upload itself cannot be resumed: the wire cannot say which fragments arrived,
        and re-sending one in ``append`` mode would add its circuits twice. So:

        - a status past ``PENDING`` (``SCHEDULED``, ``RUNNING``, ``PAUSED``, or terminal)
          proves the finalized fragment arrived: the job is kept and polled (nothing is
          left to upload), so the same circuits never run twice;
        - ``PENDING`` (or a status we do not know) cannot tell an unfinalized job from a
          queued one: the job is canceled, and None makes the daemon submit again. A 409
          means it turned terminal meanwhile: then it was finalized, and it is kept;
        - an unknown (404) or ``CANCELLED`` job will never run: None, submit again.
        """
        first = await self._status_one(remote_id, first=True)
        if first is None or first.state == RemoteState.CANCELED:
            return None
        if first.raw != _MAYBE_UNFINALIZED and first.state != RemoteState.UNKNOWN:
            return remote_id
        what = f"cancel partial job {remote_id}"
        response = await self.request("POST", f"job/{remote_id}/cancel/", what)
        if response.status_code == 409:
            after = await self._status_one(remote_id, first=False)
            # already terminal: finalized and ended (kept, so its outcome is reported),
            # or canceled (submit again)
            if after is not None and after.state != RemoteState.CANCELED:
                return remote_id
            return None
        if response.status_code != 404:
            check(response, what)
        return None

    # -- polling and results ---------------------------------------------------------

    async def status(self, remote_ids: Sequence[str]) -> dict[str, RemoteStatus]:
        out: dict[str, RemoteStatus] = {}
        for i, remote_id in enumerate(remote_ids):
            status = await self._status_one(remote_id, first=i == 0)
            if status is not None:  # None: the provider does not know it
                out[remote_id] = status
        return out

    async def _status_one(self, remote_id: str, *, first: bool) -> RemoteStatus | None:
        what = f"get status of job {remote_id}"
        response = await self.request("GET", f"job/{remote_id}/status/", what, first=first)
        if response.status_code == 404:
            return None
        answer = json_body(check(response, what), what)
        raw = answer.get("status") if isinstance(answer, Mapping) else None
        if not isinstance(raw, str) or not raw:
            raise ProtocolError(f"{what}: the answer has no status")
        state = _STATES.get(raw, RemoteState.UNKNOWN)
        error = None
        if state == RemoteState.FAILED:
            error = _FAILURES.get(raw, raw)
            detail = next((answer[k] for k in ("error", "detail", "message")
                           if isinstance(answer.get(k), str) and answer[k]), None)
            if detail:
                error = f"{raw}: {detail}"
        return RemoteStatus(remote_id, state, raw, error)

    async def results(self, remote_id: str, circuits: Sequence[Circuit]) -> dict[str, Counts]:
        wanted = {c.label: c.num_clbits for c in circuits}
        out: dict[str, Counts] = {}
        offset = 0
        pages = 0
        while True:
            what = f"get results of job {remote_id} (offset {offset})"
            response = await self.request("GET", f"job/{remote_id}/resultsV2/", what,
                                        first=pages == 0,
                                        params={"limit": PAGE_LIMIT, "offset": offset})
            if response.status_code == 400:
                # the engine asks only after COMPLETED: "still running" means not ready yet
                raise Unavailable(f"{what}: results not ready: {error_text(response)}")
            answer = json_body(check(response, what), what)
            entries = answer.get("results") if isinstance(answer, Mapping) else None
            if not isinstance(entries, list):
                raise ProtocolError(f"{what}: the answer has no result list")
            # decoding many or wide histograms is CPU work: off the event loop
            page = await anyio.to_thread.run_sync(_decode_page, entries, wanted)
            for label, counts in page:
                if label in out:
                    raise ProtocolError(f"{what}: label {label!r} appears twice")
                out[label] = counts
            pages += 1
            if answer.get("next") is None:
                return out
            count = answer.get("count")
            # every page advances by at least one entry: more pages than entries is a loop
            most = max(count if isinstance(count, int) else 0, len(wanted))
            if not entries or pages > most:
                raise ProtocolError(f"{what}: the answer says there is more, but the pages "
                                    "do not advance")
            offset += len(entries)

    async def cancel(self, remote_ids: Sequence[str]) -> None:
        for i, remote_id in enumerate(remote_ids):
            await self._cancel_one(remote_id, first=i == 0)

    async def _cancel_one(self, remote_id: str, *, first: bool) -> None:
        what = f"cancel job {remote_id}"
        response = await self.request("POST", f"job/{remote_id}/cancel/", what, first=first)
        # idempotent: 409 "Can only cancel a PENDING or RUNNING job" means it is already
        # terminal, 404 that it is gone; either way it is no longer running
        if response.status_code not in (404, 409):
            check(response, what)


# -- pure helpers (run in worker threads) --------------------------------------------------


def pack_fragments(circuits: Sequence[Circuit], shots: int, limit: int) -> list[bytes]:
    """The add_circuits bodies: circuits gzip+base64, packed greedily, each at most ``limit`` bytes.

    Sizes are exact, not estimated: the bodies are serialized here (ASCII JSON, so one
    character is one byte) and sent as they are. Only the last says ``"finalized":
    "true"`` (one byte shorter than "false", so it fits whenever the estimate did).
    """
    entries = []
    for c in circuits:
        if c.qasm_version != 2:
            raise Rejected(f"circuit {c.label!r}: Qoro takes OpenQASM 2 only, got "
                           f"OpenQASM {c.qasm_version}")
        data = base64.b64encode(gzip.compress(c.source.encode("utf-8"), compresslevel=6,
                                              mtime=0)).decode("ascii")
        entries.append(json.dumps(c.label) + ":" + json.dumps(data))
    head = '{"circuits":{'

    def tail(final: bool) -> str:
        return f'}},"mode":"append","finalized":"{"true" if final else "false"}","shots":{shots}}}'

    overhead = len(head) + len(tail(False))
    groups: list[list[str]] = []
    current: list[str] = []
    size = overhead
    for c, entry in zip(circuits, entries, strict=True):
        if overhead + len(entry) > limit:
            raise Rejected(f"circuit {c.label!r} is {len(entry):,} bytes gzipped and base64 "
                           f"encoded; one Qoro upload fragment holds at most "
                           f"{limit - overhead:,}")
        grown = size + len(entry) + (1 if current else 0)
        if current and grown > limit:
            groups.append(current)
            current, grown = [], overhead + len(entry)
        current.append(entry)
        size = grown
    groups.append(current)
    return [(head + ",".join(group) + tail(i == len(groups) - 1)).encode("ascii")
            for i, group in enumerate(groups)]


def _decode_page(entries: list[Any], wanted: Mapping[str, int]) -> list[tuple[str, Counts]]:
    out = []
    for entry in entries:
        if not isinstance(entry, Mapping) or not isinstance(entry.get("label"), str):
            raise ProtocolError("a result entry has no label")
        label = entry["label"]
        if label not in wanted:
            continue  # not one of ours
        out.append((label, histogram_counts(label, entry.get("results"), wanted[label])))
    return out


def histogram_counts(label: str, histogram: Any, width: int) -> Counts:
    """Counts of one circuit from a plain ``{bitstring: count}`` or a QH1/QH2 envelope.

    Every key must be ``width`` (the circuit's classical bits) wide. Raises ProtocolError
    naming the circuit and the check that failed.
    """
    if isinstance(histogram, Mapping) and "encoding" in histogram:
        encoding = histogram.get("encoding")
        try:
            counts = qh.decode_envelope(histogram)
        except qh.QHError as exc:
            raise ProtocolError(f"circuit {label!r}: corrupt {str(encoding).upper()} "
                                f"histogram: {exc}") from None
        n_bits = histogram["n_bits"]
        if n_bits != width:
            raise ProtocolError(f"circuit {label!r}: the histogram is {n_bits} bits wide but "
                                f"the circuit has {width} classical bits")
        return counts
    if not isinstance(histogram, Mapping):
        raise ProtocolError(f"circuit {label!r}: the histogram is "
                            f"{type(histogram).__name__}, not an object")
    counts: Counts = {}
    for key, count in histogram.items():
        bits = key.replace(" ", "") if isinstance(key, str) else ""
        if len(bits) != width or bits.strip("01"):
            raise ProtocolError(f"circuit {label!r}: histogram key {key!r} is not a "
                                f"{width}-bit bitstring")
        if isinstance(count, bool) or not isinstance(count, int | float) or count < 0 \
                or (isinstance(count, float) and not count.is_integer()):
            raise ProtocolError(f"circuit {label!r}: count {count!r} of {key!r} is not a "
                                "whole number")
        if count:
            counts[bits] = counts.get(bits, 0) + int(count)
    return counts
