"""The baseline: IonQ's own client (``ionq-core``) tracking N jobs the way its docs suggest.

One coroutine per circuit: create the job, ``await async_wait_for_job(...)``, then fetch
its probabilities once. ``bench.ionq_bench`` runs this as a separate process so that its
CPU time (``os.wait4`` rusage) is the helper's alone, not the driver's or the fake's::

    python -m bench.helper_client --base-url URL --circuits circuits.json --out out.json \\
        --scale 20

The API key is read from ``$QJOBD_BENCH_IONQ_KEY`` (never from the command line).
Intervals are given in real seconds and divided by ``--scale`` (time compression, see
docs/benchmarks.md); the summary is JSON: one entry per circuit with its remote id and
the wall-clock times of creation and of detection (the moment its results were in hand).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import signal
import sys
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

KEY_ENV = "QJOBD_BENCH_IONQ_KEY"
#: a transient error (timeout, dropped connection) restarts a job's wait; past this many
#: the job is given up and reported, so a broken run cannot hang forever
MAX_ERRORS_PER_JOB = 20


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.helper_client", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--base-url", required=True, help="the (fake) API, e.g. http://.../v0.4")
    p.add_argument("--circuits", required=True, type=Path,
                   help="JSON list of [label, OpenQASM 3 source]")
    p.add_argument("--out", required=True, type=Path, help="where to write the JSON summary")
    p.add_argument("--scale", type=float, default=1.0,
                   help="time compression K: every interval below is divided by it")
    p.add_argument("--poll-interval", type=float, default=1.0,
                   help="the helper's first interval, real seconds (its default: 1)")
    p.add_argument("--max-interval", type=float, default=30.0,
                   help="the helper's interval cap, real seconds (its built-in: 30)")
    p.add_argument("--timeout", type=float, default=8 * 3600.0,
                   help="per-job wait limit, real seconds")
    p.add_argument("--shots", type=int, default=100)
    p.add_argument("--backend", default="simulator")
    p.add_argument("--create-concurrency", type=int, default=50,
                   help="creates in flight at once (a polite client does not open 10,000 "
                        "connections to submit)")
    return p.parse_args(argv)


async def run(args: argparse.Namespace, key: str) -> dict[str, Any]:
    # imported here so `--help` works without the bench extra installed
    from ionq_core import IonQClient, polling
    from ionq_core.api.default import create_job, get_job_probabilities
    from ionq_core.exceptions import IonQError
    from ionq_core.models.circuit_job_creation_payload import CircuitJobCreationPayload
    from ionq_core.polling import JobFailedError, async_wait_for_job

    scale = args.scale
    # the cap is a module constant with no parameter: patching it is the only way to
    # compress the helper's schedule like the fake's durations
    polling._MAX_INTERVAL = args.max_interval / scale
    poll_interval = args.poll_interval / scale
    timeout = args.timeout / scale
    circuits: list[list[str]] = json.loads(args.circuits.read_text())

    with warnings.catch_warnings():
        # the fake speaks plain HTTP on 127.0.0.1; the client warns about cleartext keys
        warnings.simplefilter("ignore", UserWarning)
        # max_retries=0: its transport would otherwise retry POSTs (duplicate jobs) and
        # 5xx polls behind the helper's back; the fake injects no errors anyway
        client = IonQClient(api_key=key, base_url=args.base_url, max_retries=0)
    create_slots = asyncio.Semaphore(args.create_concurrency)
    errors: list[str] = []

    async def track(entry: dict[str, Any], source: str) -> None:
        label = entry["label"]
        body = CircuitJobCreationPayload.from_dict({
            "backend": args.backend, "type": "ionq.qasm3.v1", "input": {"data": source},
            "shots": args.shots, "name": label})
        async with create_slots:
            try:
                created = await create_job.asyncio(client=client, body=body)
            except IonQError as exc:
                # with retries off a failed create is simply lost (retrying could duplicate)
                errors.append(f"create {label}: {exc!r}")
                entry["status"] = "create_failed"
                return
        if created is None:
            entry["status"] = "create_failed"
            return
        entry["remote_id"], entry["created"] = created.id, time.time()
        while True:
            try:
                job = await async_wait_for_job(client, created.id,
                                               poll_interval=poll_interval, timeout=timeout)
                entry["status"] = str(job.status)
                break
            except JobFailedError:
                entry["status"] = "failed"
                entry["detected"] = time.time()
                return
            except IonQError as exc:
                # what a careful user writes around the helper: wait again (its schedule
                # restarts at the first interval)
                entry["errors"] += 1
                errors.append(f"wait {created.id}: {exc!r}")
                if entry["errors"] >= MAX_ERRORS_PER_JOB:
                    entry["status"] = "gave_up"
                    return
        while True:
            try:
                await get_job_probabilities.asyncio(created.id, client=client)
                break
            except IonQError as exc:
                entry["errors"] += 1
                errors.append(f"results {created.id}: {exc!r}")
                if entry["errors"] >= MAX_ERRORS_PER_JOB:
                    entry["status"] = "gave_up"
                    return
                await asyncio.sleep(poll_interval)
        entry["detected"] = time.time()

    entries: list[dict[str, Any]] = [
        {"label": label, "remote_id": None, "created": None, "detected": None,
         "status": None, "errors": 0} for label, _ in circuits]
    # what the process spent before any job (interpreter, imports): reported apart
    usage = resource.getrusage(resource.RUSAGE_SELF)
    startup_cpu = usage.ru_utime + usage.ru_stime
    started = time.time()
    tasks = [asyncio.create_task(track(entry, source))
             for entry, (_, source) in zip(entries, circuits, strict=True)]

    def summary(interrupted: bool) -> dict[str, Any]:
        return {"started": started, "finished": time.time(), "startup_cpu": startup_cpu,
                "interrupted": interrupted, "jobs": entries,
                "errors": len(errors), "error_samples": errors[:20],
                "poll_interval": poll_interval, "max_interval": polling._MAX_INTERVAL}

    def stop() -> None:
        # SIGTERM is the driver's time cap: keep what was measured and leave at once.
        # Cancelling thousands of tasks queued in httpcore's pool would itself take
        # minutes (each cancellation rescans the pool's queue).
        write_summary(args.out, summary(interrupted=True))
        os._exit(0)

    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop)
    try:
        await asyncio.gather(*tasks)
    finally:
        await client.get_async_httpx_client().aclose()
    return summary(interrupted=False)


def write_summary(path: Path, summary: dict[str, Any]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(summary))
    os.replace(tmp, path)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    key = os.environ.get(KEY_ENV)
    if not key:
        print(f"helper_client: set ${KEY_ENV} to the API key", file=sys.stderr)
        return 2
    write_summary(args.out, asyncio.run(run(args, key)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
