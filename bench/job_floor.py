"""The floor under qjobd's CPU per job: the same HTTP and durable work done by bare programs.

A job submitted to IonQ through qjobd costs the daemon at least what its HTTP work costs
on the design card's stack with nothing else around it, and what the commits its
guarantees require cost there. Three bare programs measure that on the same machine, in
the same run as the daemon:

- **provider side**: one ``httpx.AsyncClient`` does for each job what qjobd's IonQ backend
  does on the wire: ``POST /jobs`` (the same body), ``GET /jobs?ids=...`` in groups of up
  to 25 until the job is terminal (the daemon's batched polls), then ``GET`` of the
  histogram artifact, each answer decoded as JSON. Its own process CPU per job.
- **API side**: uvicorn on a Unix socket (h11, the options qjobd's server uses) with a
  Starlette app of two routes, ``POST /v1/batches`` (reads the JSON body, answers 201)
  and ``GET /v1/batches/{id}/wait`` (answers the batch as JSON): the server process's
  CPU per submit + wait pair, the client making them one after the other as the bench's.
- **durable writes**: aiosqlite on one connection, WAL, one table, and per job the four
  transactions SPEC "Guarantees" ask for, one statement and one round trip to aiosqlite's
  thread each, one after another as a serial submitter's jobs go: the job and its circuit
  stored before the 201 (guarantee 1), its intent before the create (2), its remote id,
  and its result with its terminal state (3). The first, second and fourth
  are ``synchronous=FULL`` commits (an fsync each), as a power loss must not undo them;
  the remote id's is not synced (for a backend that looks jobs up by their key, as IonQ
  does, a job whose id a power loss took is found again: guarantee 2). No group commit:
  the daemon shares some transactions between jobs (about 2.9 commits a job here), so
  this part may be above what a daemon needs by an fsync or so. Its own process CPU per job.

All three run on uvloop's event loop, as the daemon does, and httpx with its own
transport. No validation, no engine, no parse workers, no logs: the sum is what any
daemon on the design card's httpx, aiosqlite and SQLite, with uvicorn and Starlette,
spends per job before it does anything of its own.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import uvloop

from bench.procfs import cpu_seconds

ROOT = Path(__file__).resolve().parent.parent
GROUP = 25
BELL3 = ('OPENQASM 3.0;\ninclude "stdgates.inc";\nqubit[2] q;\nbit[2] c;\nh q[0];\n'
         'cx q[0], q[1];\nrz({angle}) q[1];\nc = measure q;\n')


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


# -- provider side -----------------------------------------------------------------------

async def _provider_jobs(base_url: str, api_key: str, jobs: int) -> float:
    """CPU seconds of this process for ``jobs`` create + poll + artifact lifecycles."""
    headers = {"Authorization": f"apiKey {api_key}"}
    async with httpx.AsyncClient(base_url=base_url.rstrip("/") + "/", headers=headers,
                                 limits=httpx.Limits(max_connections=8,
                                                     max_keepalive_connections=8),
                                 timeout=30) as client:
        await client.get("jobs", params={"limit": 1})  # the connection, before the clock
        started = _cpu()
        pending: list[str] = []
        for i in range(jobs):
            body = {"backend": "simulator", "type": "ionq.qasm3.v1",
                    "input": {"data": BELL3.format(angle=f"{0.001 * i:.6f}")},
                    "shots": 1000, "name": f"b{i}",
                    "metadata": {"qjobd_key": uuid.uuid4().hex, "qjobd_label": f"b{i}"}}
            response = await client.post("jobs", json=body)
            response.raise_for_status()
            pending.append(response.json()["id"])
        while pending:
            done: list[dict[str, Any]] = []
            for at in range(0, len(pending), GROUP):
                group = pending[at:at + GROUP]
                params: list[tuple[str, str | int]] = [("ids", j) for j in group]
                params.append(("limit", len(group)))
                response = await client.get("jobs", params=params)
                response.raise_for_status()
                done += [j for j in response.json()["jobs"]
                         if j["status"] in ("completed", "failed", "canceled")]
            for job in done:
                pending.remove(job["id"])
                for descriptor in (job.get("results") or {}).values():
                    if descriptor.get("format", "").startswith("ionq.result.histogram"):
                        r = await client.get(f"jobs/{job['id']}/artifacts/{descriptor['id']}")
                        r.raise_for_status()
                        r.json()
            if pending:
                await asyncio.sleep(0.2)  # as the daemon's initial poll interval
        return _cpu() - started


def provider_floor_ms(base_url: str, api_key: str, jobs: int) -> float:
    """Bare httpx CPU (ms) per job lifecycle against the IonQ API at ``base_url``."""
    out = subprocess.run([sys.executable, "-m", "bench.job_floor", "--provider", base_url,
                          "--jobs", str(jobs)], cwd=ROOT, capture_output=True, text=True,
                         env={**os.environ, "FLOOR_IONQ_KEY": api_key}, timeout=600)
    if out.returncode != 0:
        raise RuntimeError(f"the bare provider client failed: {out.stderr[-2000:]}")
    return float(json.loads(out.stdout)["cpu_ms_per_job"])


# -- API side ----------------------------------------------------------------------------

def _api_app() -> Any:
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    batches: dict[str, dict[str, Any]] = {}

    async def submit(request: Request) -> JSONResponse:
        body = json.loads(await request.body())
        batch_id = uuid.uuid4().hex
        batches[batch_id] = {"id": batch_id, "state": "completed", "backend": body["backend"],
                             "circuits": sorted(body["circuits"]), "created_at": time.time()}
        return JSONResponse(batches[batch_id], status_code=201)

    async def wait(request: Request) -> JSONResponse:
        return JSONResponse(batches[request.path_params["batch_id"]])

    return Starlette(routes=[Route("/v1/batches", submit, methods=["POST"]),
                             Route("/v1/batches/{batch_id}/wait", wait)])


def _serve_api(socket_path: str) -> None:
    import uvicorn
    config = uvicorn.Config(_api_app(), uds=socket_path, http="h11", loop="uvloop",
                            lifespan="off", log_config=None, access_log=False,
                            server_header=False, date_header=False)
    uvicorn.Server(config).run()


def api_floor_ms(jobs: int) -> float:
    """Bare uvicorn + Starlette CPU (ms) per submit + wait pair on a Unix socket."""
    with tempfile.TemporaryDirectory(prefix="qjobd-floor-") as tmp:
        sock = Path(tmp) / "api.sock"
        server = subprocess.Popen([sys.executable, "-m", "bench.job_floor", "--api-server",
                                   str(sock)], cwd=ROOT)
        try:
            deadline = time.monotonic() + 30
            while not sock.exists():
                if server.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("the bare API server did not start")
                time.sleep(0.05)
            transport = httpx.HTTPTransport(uds=str(sock))
            with httpx.Client(transport=transport, base_url="http://qjobd", timeout=30) as c:
                def pair(i: int) -> None:
                    r = c.post("/v1/batches", json={"backend": "ionq", "circuits": {
                        f"b{i}": BELL3.format(angle=f"{0.001 * i:.6f}")}})
                    assert r.status_code == 201, r.text
                    c.get(f"/v1/batches/{r.json()['id']}/wait", params={"timeout": 60})
                for i in range(20):
                    pair(i)
                before = cpu_seconds(server.pid)
                for i in range(jobs):
                    pair(1000 + i)
                return (cpu_seconds(server.pid) - before) / jobs * 1000
        finally:
            server.terminate()
            server.wait(10)


# -- durable writes ----------------------------------------------------------------------

def _sql(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


async def _store_jobs(path: Path, jobs: int) -> float:
    """CPU seconds of this process for ``jobs`` jobs' four transactions (see above)."""
    import aiosqlite
    conn = await aiosqlite.connect(path, isolation_level=None)
    await conn.execute("PRAGMA journal_mode=WAL")
    await conn.execute("PRAGMA synchronous=FULL")
    await conn.execute("CREATE TABLE jobs (id TEXT PRIMARY KEY, source TEXT NOT NULL, "
                       "state TEXT NOT NULL, remote_id TEXT, counts TEXT)")

    async def commit(sql: str, *, synced: bool = True) -> None:
        # one round trip to aiosqlite's thread a transaction (as the daemon's writer)
        script = f"BEGIN IMMEDIATE; {sql}; COMMIT;"
        if not synced:
            script = f"PRAGMA synchronous=NORMAL; {script} PRAGMA synchronous=FULL;"
        await conn.executescript(script)

    async def job(i: int) -> None:
        job_id = _sql(f"job-{i}")
        await commit("INSERT INTO jobs (id, source, state) VALUES "
                     f"({job_id}, {_sql(BELL3.format(angle=f'{0.001 * i:.6f}'))}, 'queued')")
        await commit(f"UPDATE jobs SET state = 'submitting' WHERE id = {job_id}")
        await commit(f"UPDATE jobs SET state = 'submitted', remote_id = {_sql(uuid.uuid4().hex)} "
                     f"WHERE id = {job_id}", synced=False)
        await commit("UPDATE jobs SET state = 'completed', counts = "
                     f"""'{{"00":51,"11":49}}' WHERE id = {job_id}""")

    try:
        for i in range(20):
            await job(i)
        started = _cpu()
        for i in range(jobs):
            await job(1000 + i)
        return _cpu() - started
    finally:
        await conn.close()


def store_floor_ms(directory: Path, jobs: int) -> float:
    """Bare aiosqlite CPU (ms) per job's durable writes, in a database under ``directory``
    (the daemon's filesystem: an fsync costs what the daemon's does)."""
    with tempfile.TemporaryDirectory(prefix="qjobd-floor-", dir=directory) as tmp:
        out = subprocess.run([sys.executable, "-m", "bench.job_floor", "--store",
                              str(Path(tmp) / "floor.db"), "--jobs", str(jobs)], cwd=ROOT,
                             capture_output=True, text=True, timeout=600)
    if out.returncode != 0:
        raise RuntimeError(f"the bare store program failed: {out.stderr[-2000:]}")
    return float(json.loads(out.stdout)["cpu_ms_per_job"])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--provider", metavar="BASE_URL", help="run the bare provider client")
    parser.add_argument("--api-server", metavar="SOCKET", help="serve the bare API")
    parser.add_argument("--store", metavar="DATABASE", help="run the bare durable writes")
    parser.add_argument("--jobs", type=int, default=500)
    args = parser.parse_args(argv)
    if args.store:
        cpu = uvloop.run(_store_jobs(Path(args.store), args.jobs))
        print(json.dumps({"cpu_ms_per_job": cpu / args.jobs * 1000}))
        return 0
    if args.api_server:
        _serve_api(args.api_server)
        return 0
    if args.provider:
        cpu = uvloop.run(_provider_jobs(args.provider, os.environ["FLOOR_IONQ_KEY"],
                                        args.jobs))
        print(json.dumps({"cpu_ms_per_job": cpu / args.jobs * 1000}))
        return 0
    parser.error("say --provider, --api-server or --store (bench.submit_bench runs them)")
    return 2


if __name__ == "__main__":
    sys.exit(main())
