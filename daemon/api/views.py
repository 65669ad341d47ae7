"""How stored records look in API answers (SPEC's batch, job and results objects)."""

from __future__ import annotations

import pwd
from collections.abc import Callable
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any

from qjobd.daemon.engine.runner import RunnerStats
from qjobd.store.models import Batch, Event, Job, Result


def rfc3339(ts: float | None) -> str | None:
    if ts is None:
        return None
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds").replace(
        "+00:00", "Z")


@lru_cache(maxsize=256)
def user_name(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def job_view(job: Job, next_poll_at: float | None = None) -> dict[str, Any]:
    """``next_poll_at``: the engine's live due time, else the stored one is shown."""
    return {
        "id": job.id,
        "remote_id": job.remote_id,
        "state": str(job.state),
        "remote_status": job.remote_status,
        "labels": list(job.labels),
        "error": job.error,
        "attempts": job.attempts,
        "next_poll_at": None if job.state.terminal else rfc3339(
            next_poll_at if next_poll_at is not None else job.next_poll_at),
        "created_at": rfc3339(job.created_at),
        "updated_at": rfc3339(job.updated_at),
        "finished_at": rfc3339(job.finished_at),
    }


def batch_view(batch: Batch,
               next_poll_at: Callable[[Job], float | None] | None = None) -> dict[str, Any]:
    return {
        "id": batch.id,
        "state": str(batch.state),
        "backend": batch.backend,
        "shots": batch.shots,
        "name": batch.name,
        "tags": dict(batch.tags),
        "options": dict(batch.options),
        "timeout": batch.timeout,
        "owner": user_name(batch.owner_uid),
        "owner_uid": batch.owner_uid,
        "cancel_requested": batch.cancel_requested,
        "created_at": rfc3339(batch.created_at),
        "updated_at": rfc3339(batch.updated_at),
        "finished_at": rfc3339(batch.finished_at),
        "error": batch.error,
        "metadata": None if batch.metadata is None else dict(batch.metadata),
        "warnings": list(batch.warnings),
        "jobs": [job_view(j, next_poll_at(j) if next_poll_at is not None else None)
                 for j in batch.jobs],
    }


def results_view(batch: Batch, results: list[Result]) -> dict[str, Any]:
    return {
        "id": batch.id,
        "state": str(batch.state),
        "results": {r.label: {"counts": dict(r.counts), "shots": r.shots, "job_id": r.job_id}
                    for r in results},
    }


def event_view(event: Event) -> dict[str, Any]:
    return {
        "seq": event.seq,
        "ts": rfc3339(event.ts),
        "batch_id": event.batch_id,
        "job_id": event.job_id,
        "kind": event.kind,
        "state": event.state,
        "detail": event.detail,
    }


def backend_view(stats: RunnerStats, details: dict[str, Any]) -> dict[str, Any]:
    """A backend in ``GET /v1/health``: its engine's figures, then the backend's own
    ``details`` (``Backend.health()``)."""
    lag = stats.poll_lag
    return {
        "type": stats.type,
        "in_flight": stats.in_flight,
        "submit_backlog": stats.submit_backlog,
        "requests": stats.requests,
        "errors": stats.errors,
        "last_error": stats.last_error,
        "requests_per_second": stats.requests_per_second or None,
        "paused_for": round(stats.paused_for, 3),
        "poll_lag": {"polls": lag.count, "p50": _rounded(lag.quantile(0.5)),
                     "p99": _rounded(lag.quantile(0.99))},
        **details,
    }


def _rounded(value: float) -> float | None:
    return None if value != value else round(value, 4)  # NaN (no polls yet): null
