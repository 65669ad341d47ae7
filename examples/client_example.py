"""qjobd's Python client: submit a batch, wait for it, print its counts; then the same with
AsyncClient, several batches at once.

    .venv/bin/python examples/client_example.py      # with a daemon running (make run)

The socket is found as qjobctl finds it ($QJOBD_SOCKET, else the daemon's config file).
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

from qjobd.client import AsyncClient, BatchFailed, BatchTimeout, Client

HERE = Path(__file__).resolve().parent
CIRCUITS = {path.stem: path.read_text() for path in (HERE / "bell.qasm", HERE / "ghz3.qasm")}


def run_one() -> int:
    with Client() as qjobd:
        batch = qjobd.submit(CIRCUITS, backend="local", shots=1000, tags={"example": "client"})
        print(f"submitted {batch.id}: {len(batch.jobs)} job(s), {batch.state}")
        try:
            batch = qjobd.wait(batch, timeout=300)
        except BatchFailed as exc:  # failed, canceled or timed_out: exc.errors says why
            print(f"batch {exc.batch_id} ended {exc.state}: {exc.errors}", file=sys.stderr)
            return 1
        except BatchTimeout as exc:  # still running in the daemon: wait again later
            print(f"still {exc.last_state} after {exc.timeout:g} s", file=sys.stderr)
            return 1
        results = qjobd.results(batch)
        for label, result in results.circuits.items():
            print(f"{label}: {dict(sorted(result.counts.items()))} ({result.shots} shots)")
    return 0


async def run_several(n: int = 3) -> None:
    async with AsyncClient() as qjobd:
        # run(): submit, wait and results in one call; the waits share one connection pool
        runs = [qjobd.run({"bell": CIRCUITS["bell"]}, backend="local", shots=100,
                          wait_timeout=300) for _ in range(n)]
        for results in await asyncio.gather(*runs):
            print(f"async {results.id}: {dict(sorted(results['bell'].counts.items()))}")


if __name__ == "__main__":
    status = run_one()
    if status == 0:
        asyncio.run(run_several())
    sys.exit(status)
