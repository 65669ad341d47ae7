"""Toy Cloud's qjobd backend: a whole plugin, for a provider with a small HTTP API.

The provider's wire (:mod:`qjobd_example_plugin.provider` serves it)::

    POST /jobs {"key", "shots", "circuits": {label: OpenQASM 2}}  -> 201 {"id"}
    GET  /jobs?ids=A&ids=B   -> {"jobs": [{"id", "status", "error"}]}, unknown ids left out
    GET  /jobs?key=K         -> the jobs made with submission key K
    GET  /jobs/ID/counts?page=N  -> {"counts": {label: {bitstring: n}}, "next_page"}
    POST /jobs/ID/cancel     -> 200; 409 once ended; 404 if unknown

What qjobd asks of a backend, and how this one does it:

- translate, nothing more: one request per protocol call where the wire allows, sent
  once (never retried here: a retried create could make a second job), each failure
  raised as the :mod:`qjobd.backends` error that fits (``check`` does it for HTTP);
- a job made by a create whose answer was lost must be findable: the daemon's
  submission key travels in the create (``key``) and :meth:`ToyBackend.lookup` finds
  the job by it, so ``lookup_by_key`` is declared;
- a call of several requests (results, paged; cancel, one per job) paces every request
  after its first (``self.request(..., first=...)``) so it draws from the daemon's budget.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

from qjobd.backends import (
    Capabilities,
    Circuit,
    Counts,
    Grouping,
    HttpBackend,
    ProtocolError,
    RemoteState,
    RemoteStatus,
    SubmitRequest,
)
from qjobd.backends.http import check, json_body

__all__ = ["ToyBackend"]

_STATES = {
    "waiting": RemoteState.QUEUED,
    "running": RemoteState.RUNNING,
    "done": RemoteState.COMPLETED,
    "error": RemoteState.FAILED,
    "cancelled": RemoteState.CANCELED,
}


class ToyBackend(HttpBackend):
    """Toy Cloud: one remote job per batch, statuses of many jobs per request.

    Settings (``[backends.NAME]``): ``base_url``, ``api_key_env`` (default
    ``TOY_API_KEY``) or a systemd credential named after the backend, ``timeout``.
    """

    provider = "Toy Cloud"
    settings = frozenset({"base_url", "api_key_env", "api_key_credential", "timeout"})
    default_base_url = "http://127.0.0.1:8765/v1"
    key_env = "TOY_API_KEY"
    auth_scheme = "Bearer"
    capabilities = Capabilities(
        grouping=Grouping.PER_BATCH, batch_status=True, max_status_batch=50,
        lookup_by_key=True, durable=True, qasm_versions=frozenset({2}),
        default_shots=100, max_shots=10_000, max_qubits=12, max_circuits_per_batch=1000)

    def __init__(self, name: str, config: Mapping[str, Any]) -> None:
        super().__init__(name, config)  # refuses settings it does not know
        self.timeout = float(config.get("timeout", 30.0))
        self._key = self.read_key(config)  # ValueError saying where it looked

    async def submit(self, request: SubmitRequest, *,
                     created: Callable[[str], Awaitable[None]] | None = None) -> str:
        what = "create job"
        body = {"key": request.submission_key, "shots": request.shots,
                "circuits": {c.label: c.source for c in request.circuits}}
        answer = json_body(check(await self.request("POST", "jobs", what, first=True,
                                                    json=body), what), what)
        job_id = answer.get("id") if isinstance(answer, Mapping) else None
        if not isinstance(job_id, str) or not job_id:
            raise ProtocolError(f"{what}: the answer has no job id")
        return job_id

    async def status(self, remote_ids: Sequence[str]) -> dict[str, RemoteStatus]:
        what = "get jobs"
        params = [("ids", remote_id) for remote_id in remote_ids]
        jobs = await self._jobs(what, params)
        wanted = set(remote_ids)
        return {s.remote_id: s for s in map(_status, jobs) if s.remote_id in wanted}

    async def results(self, remote_id: str, circuits: Sequence[Circuit]) -> dict[str, Counts]:
        widths = {c.label: c.num_clbits for c in circuits}
        out: dict[str, Counts] = {}
        page: int | None = 0
        while page is not None:
            if page > len(widths):
                raise ProtocolError(f"job {remote_id}: its counts go on for more pages "
                                    "than it has circuits")
            what = f"get counts of job {remote_id} (page {page})"
            response = await self.request("GET", f"jobs/{remote_id}/counts", what,
                                          first=page == 0, params={"page": page})
            answer = json_body(check(response, what), what)
            if not isinstance(answer, Mapping) or not isinstance(answer.get("counts"), Mapping):
                raise ProtocolError(f"{what}: the answer has no counts")
            for label, counts in answer["counts"].items():
                if label in widths:
                    out[label] = _counts(label, counts, widths[label])
            page = answer.get("next_page")
        missing = sorted(set(widths) - set(out))
        if missing:
            raise ProtocolError(f"job {remote_id} has no counts for {', '.join(missing)}")
        return out

    async def cancel(self, remote_ids: Sequence[str]) -> None:
        for i, remote_id in enumerate(remote_ids):
            what = f"cancel job {remote_id}"
            response = await self.request("POST", f"jobs/{remote_id}/cancel", what,
                                          first=i == 0)
            # idempotent: 409 says it has ended, 404 that it is gone; either way it is not
            # running, which is all a cancel asks for
            if response.status_code not in (404, 409):
                check(response, what)

    async def lookup(self, submission_key: str, *, created_after: float | None = None
                     ) -> str | None:
        jobs = await self._jobs("find job by key", [("key", submission_key)])
        return str(jobs[0]["id"]) if jobs else None

    async def _jobs(self, what: str, params: list[tuple[str, str]]) -> list[Mapping[str, Any]]:
        answer = json_body(check(await self.request("GET", "jobs", what, first=True,
                                                    params=params), what), what)
        jobs = answer.get("jobs") if isinstance(answer, Mapping) else None
        if not isinstance(jobs, list) or not all(
                isinstance(j, Mapping) and isinstance(j.get("id"), str) for j in jobs):
            raise ProtocolError(f"{what}: the answer has no list of jobs with ids")
        return jobs


def _status(job: Mapping[str, Any]) -> RemoteStatus:
    raw = str(job.get("status"))
    # a status this backend does not know is kept raw, and the daemon keeps polling
    state = _STATES.get(raw, RemoteState.UNKNOWN)
    error = str(job.get("error") or "the job failed") if state == RemoteState.FAILED else None
    return RemoteStatus(job["id"], state, raw, error)


def _counts(label: str, counts: Any, width: int) -> Counts:
    if not isinstance(counts, Mapping):
        raise ProtocolError(f"circuit {label!r}: its counts are not an object")
    for key, count in counts.items():
        if len(key) != width or key.strip("01") or not isinstance(count, int) or count < 0:
            raise ProtocolError(f"circuit {label!r}: {key!r}: {count!r} is not a count of "
                                f"a {width}-bit outcome")
    return dict(counts)
