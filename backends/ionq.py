"""IonQ Cloud API v0.4: one ``ionq.qasm3.v1`` job per circuit.

Spoken with httpx directly rather than through ``ionq-core``: that client retries POSTs
(a retried create can make a second job), raises on status strings it does not know,
and would be one more generated layer between us and the wire. Here every request is
sent once, a new status is kept raw, and many jobs are polled per request
(``GET /jobs?ids=...``).

The daemon's submission key travels in the job's ``metadata`` (``qjobd_key``), so a
job whose create answer was lost in a crash can be found again instead of created twice.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from datetime import datetime
from typing import Any

from qjobd.backends.base import (
    Capabilities,
    Circuit,
    Counts,
    Grouping,
    RemoteState,
    RemoteStatus,
    SubmitRequest,
)
from qjobd.backends.errors import ProtocolError, Rejected
from qjobd.backends.http import HttpBackend, check, json_body

DEFAULT_BASE_URL = "https://api.ionq.co/v0.4"
HISTOGRAM = "ionq.result.histogram.json.v1"
PROBABILITIES = "ionq.result.probabilities.json.v1"
KEY_FIELD = "qjobd_key"
#: the API's page size limit (OpenAPI ``pagination-limit``), which ``?ids=`` queries obey too
PAGE_LIMIT = 25
_COMPLETED_CACHE = 50_000

_STATES = {
    "submitted": RemoteState.QUEUED,
    "ready": RemoteState.QUEUED,
    "started": RemoteState.RUNNING,
    "completed": RemoteState.COMPLETED,
    "failed": RemoteState.FAILED,
    "canceled": RemoteState.CANCELED,
}
_OPTIONS = {"noise_model"}
_CONFIG = {"base_url", "api_key_env", "api_key_credential", "target", "noise_model",
           "timeout", "max_ids_per_request", "lookup_max_pages", "max_qubits"}
#: qubits by target, as IonQ publishes them (docs.ionq.com; Azure Quantum's IonQ page):
#: its simulators take 29, Aria 25, Forte 36; another target: [backends.NAME] max_qubits
TARGET_QUBITS = {"simulator": 29, "qpu.aria-1": 25, "qpu.aria-2": 25, "qpu.forte-1": 36,
                 "qpu.forte-enterprise-1": 36, "qpu.harmony": 11}


class IonQBackend(HttpBackend):
    """IonQ's cloud (simulator or QPU, by ``target``)."""

    provider = "IonQ"
    settings = _CONFIG
    default_base_url = DEFAULT_BASE_URL
    key_env = "IONQ_API_KEY"
    auth_scheme = "apiKey"

    def __init__(self, name: str, config: Mapping[str, Any]) -> None:
        super().__init__(name, config)
        self.target = str(config.get("target", "simulator"))
        self.noise_model = config.get("noise_model")
        self.timeout = float(config.get("timeout", 30.0))
        max_ids = int(config.get("max_ids_per_request", PAGE_LIMIT))
        if not 1 <= max_ids <= 1000:
            raise ValueError("max_ids_per_request must be between 1 and 1000")
        self.lookup_max_pages = int(config.get("lookup_max_pages", 400))
        self._key = self.read_key(config)
        max_qubits, why = self.qubit_limit(config, TARGET_QUBITS, self.target)
        self.capabilities = Capabilities(
            grouping=Grouping.PER_CIRCUIT, batch_status=True, max_status_batch=max_ids,
            lookup_by_key=True, durable=True, qasm_versions=frozenset({3}),
            # IonQ compiles the OpenQASM 3 text itself (ionq.qasm3.v1)
            provider_parsed=frozenset({3}), max_qubits=max_qubits, max_qubits_reason=why,
            default_shots=100, max_shots=1_000_000)
        #: result descriptors of jobs seen completed by status(), so results() skips a GET
        self._completed: dict[str, Mapping[str, Any]] = {}

    # -- settings --------------------------------------------------------------------

    def validate_options(self, options: Mapping[str, Any]) -> None:
        unknown = sorted(set(options) - _OPTIONS)
        if unknown:
            raise ValueError(f"unknown option(s) {', '.join(unknown)} for IonQ; "
                             f"allowed: {', '.join(sorted(_OPTIONS))}")
        model = options.get("noise_model")
        if model is not None and not isinstance(model, str):
            raise ValueError("noise_model must be a string, e.g. \"ideal\" or \"aria-1\"")

    def health(self) -> dict[str, Any]:
        return {"base_url": self.base_url, "target": self.target}

    # -- the protocol ----------------------------------------------------------------

    async def submit(self, request: SubmitRequest, *,
                     created: Callable[[str], Awaitable[None]] | None = None) -> str:
        if len(request.circuits) != 1:
            raise Rejected(f"an IonQ job takes one circuit, got {len(request.circuits)}")
        circuit = request.circuits[0]
        body: dict[str, Any] = {
            "backend": self.target,
            "type": "ionq.qasm3.v1",
            "input": {"data": circuit.source},
            "shots": request.shots,
            "name": request.name or circuit.label,
            "metadata": {KEY_FIELD: request.submission_key, "qjobd_label": circuit.label[:400]},
        }
        model = request.options.get("noise_model", self.noise_model)
        if model:
            body["noise"] = {"model": model}
        what = "create job"
        response = check(await self.request("POST", "jobs", what, first=True, json=body), what)
        answer = json_body(response, what)
        job_id = answer.get("id") if isinstance(answer, Mapping) else None
        if not isinstance(job_id, str) or not job_id:
            raise ProtocolError(f"{what}: the answer has no job id")
        return job_id

    async def status(self, remote_ids: Sequence[str]) -> dict[str, RemoteStatus]:
        what = "get jobs"
        params: list[tuple[str, str | int]] = [("ids", i) for i in remote_ids]
        params.append(("limit", min(len(remote_ids), PAGE_LIMIT)))
        out: dict[str, RemoteStatus] = {}
        cursor: str | None = None
        for _ in range(len(remote_ids) + 1):  # follow pages, but never forever
            page = params + ([("next", cursor)] if cursor else [])
            response = check(await self.request("GET", "jobs", what, first=cursor is None,
                                                params=page), what)
            answer = json_body(response, what)
            jobs = answer.get("jobs") if isinstance(answer, Mapping) else None
            if not isinstance(jobs, list):
                raise ProtocolError(f"{what}: the answer has no job list")
            for job in jobs:
                status = self._status_of(job)
                if status is not None and status.remote_id in remote_ids:
                    out[status.remote_id] = status
            cursor = answer.get("next")
            if not cursor or len(out) >= len(remote_ids) or not jobs:
                break
        return out

    def _status_of(self, job: Any) -> RemoteStatus | None:
        if not isinstance(job, Mapping) or not isinstance(job.get("id"), str):
            return None
        raw = str(job.get("status"))
        state = _STATES.get(raw, RemoteState.UNKNOWN)
        error = None
        if state == RemoteState.FAILED:
            failure = job.get("failure") or {}
            if isinstance(failure, Mapping):
                error = f"{failure.get('code', 'failed')}: {failure.get('message', '')}".strip()
            else:
                error = str(failure)
        eta = _eta(job) if state == RemoteState.QUEUED else None
        if state == RemoteState.COMPLETED:
            if len(self._completed) >= _COMPLETED_CACHE:  # results never asked for: forget
                self._completed.pop(next(iter(self._completed)))
            self._completed[job["id"]] = job
        return RemoteStatus(job["id"], state, raw, error, eta)

    async def results(self, remote_id: str, circuits: Sequence[Circuit]) -> dict[str, Counts]:
        if len(circuits) != 1:
            raise ProtocolError(f"an IonQ job has one circuit, asked for {len(circuits)}")
        circuit = circuits[0]
        job = self._completed.pop(remote_id, None)
        first = job is not None  # seen completed by status(): the artifact is the first request
        if job is None:
            what = "get job"
            job = json_body(check(await self.request("GET", f"jobs/{remote_id}", what,
                                                     first=True), what), what)
        descriptors = job.get("results") if isinstance(job, Mapping) else None
        if not isinstance(descriptors, Mapping):
            descriptors = {}
        shots = int(job.get("shots") or 0)
        if HISTOGRAM in descriptors:
            payload = await self._artifact(remote_id, descriptors[HISTOGRAM], first=first)
            counts = _histogram_counts(payload, circuit.num_clbits)
        else:
            what = "get probabilities"
            if PROBABILITIES in descriptors:
                payload = await self._artifact(remote_id, descriptors[PROBABILITIES],
                                                first=first)
            else:
                url = f"jobs/{remote_id}/results/probabilities"
                payload = json_body(check(await self.request("GET", url, what, first=first),
                                          what), what)
            if shots <= 0:
                raise ProtocolError("the job reports no shot count to scale probabilities by")
            counts = _probability_counts(payload, circuit.num_clbits, shots)
        return {circuit.label: counts}

    async def _artifact(self, remote_id: str, descriptor: Any, *, first: bool) -> Any:
        artifact = descriptor.get("id") if isinstance(descriptor, Mapping) else None
        if not isinstance(artifact, str):
            raise ProtocolError("a result descriptor has no artifact id")
        what = "get artifact"
        url = f"jobs/{remote_id}/artifacts/{artifact}"
        return json_body(check(await self.request("GET", url, what, first=first), what), what)

    async def cancel(self, remote_ids: Sequence[str]) -> None:
        if not remote_ids:
            return
        what = "cancel"
        if len(remote_ids) == 1:
            response = await self.request("PUT", f"jobs/{remote_ids[0]}/status/cancel", what,
                                          first=True)
        else:
            response = await self.request("PUT", "jobs/status/cancel", what, first=True,
                                          json={"ids": list(remote_ids)})
        # idempotent: an unknown or already finished job is no longer running, which is all
        # a cancel asks for
        if response.status_code in (400, 404, 409):
            return
        check(response, what)

    async def lookup(self, submission_key: str, *, created_after: float | None = None
                     ) -> str | None:
        what = "list jobs"
        cursor: str | None = None
        for _ in range(self.lookup_max_pages):
            params: dict[str, str | int] = {"limit": PAGE_LIMIT, "target": self.target}
            if cursor:
                params["next"] = cursor
            answer = json_body(check(await self.request("GET", "jobs", what, first=not cursor,
                                                     params=params), what), what)
            jobs = answer.get("jobs") if isinstance(answer, Mapping) else None
            if not isinstance(jobs, list):
                raise ProtocolError(f"{what}: the answer has no job list")
            older = False
            for job in jobs:
                if not isinstance(job, Mapping):
                    continue
                metadata = job.get("metadata")
                if isinstance(metadata, Mapping) and metadata.get(KEY_FIELD) == submission_key:
                    return str(job["id"])
                submitted = _timestamp(job.get("submitted_at"))
                if created_after is not None and submitted is not None \
                        and submitted < created_after:
                    older = True  # newest first: everything after this is older still
            cursor = answer.get("next")
            if older or not cursor or not jobs:
                return None
        raise ProtocolError(f"{what}: no answer after {self.lookup_max_pages} pages; "
                            "cannot tell whether the job exists")


def _bitstring(state: str, width: int) -> str:
    try:
        value = int(state)
    except ValueError:
        raise ProtocolError(f"result state {state!r} is not a decimal integer") from None
    if value < 0 or value >= 1 << max(width, 1):
        raise ProtocolError(f"result state {value} does not fit in {width} classical bits")
    # IonQ's decimal state has bit i = classical bit i: written MSB first, that is Qiskit order
    return format(value, f"0{width}b")


def _histogram_counts(payload: Any, width: int) -> Counts:
    if not isinstance(payload, Mapping):
        raise ProtocolError("the histogram is not an object")
    counts: Counts = {}
    for state, count in payload.items():
        if not isinstance(count, int | float) or count < 0:
            raise ProtocolError(f"histogram count {count!r} is not a count")
        if count:
            key = _bitstring(state, width)
            counts[key] = counts.get(key, 0) + round(count)
    return counts


def _probability_counts(payload: Any, width: int, shots: int) -> Counts:
    """Counts from probabilities, rounded so they sum exactly to ``shots``."""
    if not isinstance(payload, Mapping):
        raise ProtocolError("the probabilities are not an object")
    exact = {}
    for state, p in payload.items():
        if not isinstance(p, int | float) or not 0 <= p <= 1.000001:
            raise ProtocolError(f"probability {p!r} is out of range")
        exact[_bitstring(state, width)] = p * shots
    counts = {k: int(v) for k, v in exact.items()}
    # largest remainder: hand the shots lost to flooring to the largest fractions
    short = shots - sum(counts.values())
    for key in sorted(exact, key=lambda k: exact[k] - counts[k], reverse=True)[:max(short, 0)]:
        counts[key] += 1
    return {k: v for k, v in counts.items() if v}


def _eta(job: Mapping[str, Any]) -> float | None:
    """Seconds IonQ predicts a queued job has left (its predicted wait plus its predicted
    execution), or None if it does not say.

    A started job gets none: its prediction would be ``started_at`` plus the predicted
    execution, whose error does not shrink as the run goes on (a run predicted 30 %
    too long still looks minutes from its end when it ends), whereas a queued job's
    predicted wait shrinks toward its start.
    """
    wait = _millis(job.get("predicted_wait_time_ms"))
    if wait is None:
        return None
    return wait + (_millis(job.get("predicted_execution_duration_ms")) or 0.0)


def _millis(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not value >= 0:
        return None
    return min(value, 1e10) / 1000  # compared first: float() of a 400-digit int overflows


def _timestamp(value: Any) -> float | None:
    if not isinstance(value, str) or not value:
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None
