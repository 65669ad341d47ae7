"""``GET /metrics``: the daemon's numbers in Prometheus text exposition format 0.0.4.

Written by hand (the format is a few lines of text per metric). A scrape costs one
read hop to the store (a grouped count of jobs by backend and state, batches counted
from their state index: ~70 ms with 100,000 jobs, nothing per job in Python) plus
counters already kept in memory, so scraping every 15 s is cheap.

Only names, states, types and numbers are exported: never a backend's settings,
errors or keys (error texts stay in ``GET /v1/health`` and the log).
"""

from __future__ import annotations

import math
import os
import platform
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from qjobd.daemon.engine.histogram import Histogram
from qjobd.store.states import JobState

if TYPE_CHECKING:
    from qjobd.daemon.api.app import Context

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


@dataclass
class Family:
    """One metric: its name, type, help text and samples (labels, value)."""

    name: str
    type: str
    help: str
    samples: list[tuple[dict[str, str], float]] = field(default_factory=list)

    def add(self, value: float, **labels: str) -> Family:
        self.samples.append((labels, value))
        return self


def render(families: Iterable[Family]) -> str:
    """The exposition text: HELP and TYPE, then the samples, of each family with samples."""
    lines: list[str] = []
    for fam in families:
        if not fam.samples:
            continue
        lines.append(f"# HELP {fam.name} {_escape_help(fam.help)}")
        lines.append(f"# TYPE {fam.name} {fam.type}")
        for labels, value in fam.samples:
            # a histogram's series are named apart (_bucket, _sum, _count): "__name__"
            name = labels.get("__name__", fam.name)
            labels = {k: v for k, v in labels.items() if k != "__name__"}
            if labels:
                inner = ",".join(f'{k}="{_escape_label(v)}"' for k, v in labels.items())
                lines.append(f"{name}{{{inner}}} {format_value(value)}")
            else:
                lines.append(f"{name} {format_value(value)}")
    return "\n".join(lines) + "\n"


def format_value(value: float) -> str:
    if isinstance(value, bool):
        value = int(value)
    if isinstance(value, int):
        return str(value)
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(float(value))


def _escape_label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _escape_help(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")


async def collect(ctx: Context, *, version: str) -> list[Family]:
    """Every metric family, read now."""
    job_rows, batch_rows = await ctx.store.metric_counts()
    engines = ctx.scheduler.stats()
    states = [str(s) for s in JobState]

    build = Family("qjobd_build_info", "gauge",
                   "qjobd's version and Python's, as labels; the value is always 1")
    build.add(1, version=version, python=platform.python_version())
    uptime = Family("qjobd_uptime_seconds", "gauge", "Seconds since the daemon started")
    uptime.add(round(time.monotonic() - ctx.started_at, 3))

    # every state of every backend, zeros included: a series that comes and goes
    # breaks rate() and alerts on absence
    jobs = Family("qjobd_jobs", "gauge", "Jobs in the store by backend and state")
    names = sorted(set(engines) | {backend for backend, _ in job_rows})
    for backend in names:
        seen = [s for b, s in job_rows if b == backend and s not in states]
        for state in states + sorted(seen):
            jobs.add(job_rows.get((backend, state), 0), backend=backend, state=state)
    batches = Family("qjobd_batches", "gauge", "Batches in the store by state")
    for state in states + sorted(set(batch_rows) - set(states)):
        batches.add(batch_rows.get(state, 0), state=state)

    info = Family("qjobd_backend_info", "gauge",
                  "A configured backend and its type; the value is always 1")
    requests = Family("qjobd_backend_requests_total", "counter",
                      "Requests sent to the backend since the daemon started")
    errors = Family("qjobd_backend_request_errors_total", "counter",
                    "Requests to the backend that failed (network, 5xx, 429, refused) "
                    "since the daemon started")
    paused = Family("qjobd_backend_paused_seconds", "gauge",
                    "Seconds left of a pause the backend ordered (429 Retry-After); 0 if none")
    rate = Family("qjobd_backend_requests_per_second", "gauge",
                  "The backend's request budget in requests per second; 0 means unlimited")
    in_flight = Family("qjobd_backend_jobs_in_flight", "gauge",
                       "Jobs of the backend the engine is driving now (not yet terminal)")
    waiters = Family("qjobd_backend_budget_waiters", "gauge",
                     "Requests waiting for the backend's request budget now")
    lag = Family("qjobd_poll_lag_seconds", "histogram",
                 "Scheduling lag per job polled: from the poll's due time to its status "
                 "request being sent (budget waits included)")
    for name, stats in engines.items():
        info.add(1, backend=name, type=stats.type)
        requests.add(stats.requests, backend=name)
        errors.add(stats.errors, backend=name)
        paused.add(round(stats.paused_for, 3), backend=name)
        rate.add(stats.requests_per_second, backend=name)
        in_flight.add(stats.in_flight, backend=name)
        waiters.add(stats.budget_waiters, backend=name)
        add_histogram(lag, stats.poll_lag, backend=name)

    return [build, uptime, jobs, batches, info, requests, errors, paused, rate, in_flight,
            waiters, lag, *_store_families(ctx)]


def add_histogram(fam: Family, histogram: Histogram, **labels: str) -> None:
    """A histogram's _bucket (cumulative, per ``le``), _sum and _count series."""
    for bound, count in histogram.cumulative():
        fam.add(count, __name__=f"{fam.name}_bucket", **labels, le=format_value(bound))
    fam.add(histogram.sum, __name__=f"{fam.name}_sum", **labels)
    fam.add(histogram.count, __name__=f"{fam.name}_count", **labels)


def _store_families(ctx: Context) -> list[Family]:
    store = ctx.store
    stats = store.writer.stats
    size = Family("qjobd_store_database_bytes", "gauge", "Size of the SQLite database file")
    wal = Family("qjobd_store_wal_bytes", "gauge", "Size of the database's write-ahead log")
    for fam, path in ((size, str(store.path)), (wal, f"{store.path}-wal")):
        try:
            fam.add(os.stat(path).st_size)
        except OSError:
            pass
    return [
        size, wal,
        Family("qjobd_store_commits_total", "counter",
               "Transactions the store's writer committed").add(stats.commits),
        Family("qjobd_store_writes_total", "counter",
               "Write operations committed (several share one transaction)")
        .add(stats.operations),
        Family("qjobd_store_failed_commits_total", "counter",
               "Transactions or operations the store rolled back on an error")
        .add(stats.failed_commits),
        Family("qjobd_store_write_backlog", "gauge",
               "Write operations queued for the next transaction").add(store.writer.backlog),
        Family("qjobd_store_last_commit_duration_seconds", "gauge",
               "Seconds the last committed transaction took, fsync included")
        .add(round(stats.last_commit_seconds, 6)),
        Family("qjobd_store_commit_duration_seconds_total", "counter",
               "Seconds spent in committed transactions, in all")
        .add(round(stats.commit_seconds_total, 6)),
    ]


async def exposition(ctx: Context, *, version: str) -> str:
    """The body of ``GET /metrics``; with several daemons on one store, every sample is
    labelled with this daemon's ``node``, and the cluster's nodes are counted."""
    families = await collect(ctx, version=version)
    leases = ctx.scheduler.leases
    if leases is None:
        return render(families)
    families += [
        Family("qjobd_cluster_nodes", "gauge", "Live daemons on this store (heartbeat within "
               "lease_seconds), as this node saw them at its last lease round")
        .add(len(leases.nodes)),
        Family("qjobd_cluster_node_leases", "gauge",
               "Unfinished jobs whose lease each live node holds", [
                   ({"holder": n.name}, n.jobs) for n in leases.nodes]),
        Family("qjobd_cluster_budget_share", "gauge", "This node's share of each "
               "backend's requests_per_second (the budget of every node together)")
        .add(leases.share),
        Family("qjobd_cluster_leases_valid", "gauge", "1 while this node may act on its "
               "leases (renewed in time), else 0").add(int(leases.valid())),
        Family("qjobd_cluster_jobs_claimed_total", "counter", "Jobs this node claimed (at "
               "start, and from nodes that died)").add(leases.claimed),
        Family("qjobd_cluster_jobs_released_total", "counter", "Jobs this node let go of: "
               "their lease passed to another node").add(leases.released),
    ]
    for family in families:
        family.samples = [({"node": leases.node, **labels}, value)
                          for labels, value in family.samples]
    return render(families)
