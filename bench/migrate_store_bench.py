"""How fast ``qjobd migrate-store`` copies and checks, and whether its memory stays flat.

Generates an SQLite store of ``--batches`` batches (5 jobs of 2 circuits each, results for
two thirds of them, 4 events per job: 43.7 rows per batch), starts a throwaway PostgreSQL
server (qjobd/testing/postgres.py), runs ``qjobd migrate-store`` on it as a subprocess
and prints its summary, its wall time and its peak RSS; a ``check-config`` run gives the
command's baseline RSS (the imports).

    .venv/bin/python -m bench.migrate_store_bench --batches 40000
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from qjobd.store.store import Store
from qjobd.testing.postgres import PostgresServer

SOURCE = ('OPENQASM 2.0;\ninclude "qelib1.inc";\nqreg q[2];\ncreg c[2];\nh q[0];\n'
          'cx q[0], q[1];\nmeasure q -> c;\n')
#: runs main() and reports its peak RSS on stderr
_RUN = ("import resource, sys; from qjobd.daemon.process.main import main; "
        "rc = main(sys.argv[1:]); print('maxrss_kb', "
        "resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, file=sys.stderr); sys.exit(rc)")


def make_store(db: Path, batches: int) -> int:
    """The store, written directly (the store's API would take minutes); its row count."""
    async def schema() -> None:
        await (await Store.open(db)).close()

    asyncio.run(schema())
    now = time.time()
    conn = sqlite3.connect(db)
    with conn:
        for b in range(batches):
            bid = f"b{b:08d}"
            state = "completed" if b % 3 else "running"
            conn.execute(
                "INSERT INTO batches (id, owner_uid, backend, shots, tags, options, state, "
                "created_at, updated_at, finished_at, metadata) "
                "VALUES (?, 1000, 'local', 100, '{\"t\":\"x\"}', '{}', ?, ?, ?, ?, ?)",
                (bid, state, now, now, now if state == "completed" else None,
                 '{"k":[1,2,3]}'))
            for j in range(5):
                jid = f"{bid}-{j}"
                conn.execute(
                    "INSERT INTO jobs (id, batch_id, position, backend, submission_key, "
                    "remote_id, state, attempts, poll_interval, created_at, updated_at) "
                    "VALUES (?, ?, ?, 'local', ?, ?, ?, 1, 0.5, ?, ?)",
                    (jid, bid, j, f"qjobd-{jid}", f"r-{jid}", state, now, now))
                for c in range(2):
                    label = f"c{j}-{c}"
                    conn.execute("INSERT INTO circuits VALUES (?, ?, ?, ?, ?, 2, 2, 2)",
                                 (bid, label, j * 2 + c, jid, SOURCE))
                    if state == "completed":
                        conn.execute("INSERT INTO results VALUES (?, ?, ?, ?, 100, ?)",
                                     (bid, label, jid, '{"00":50,"11":50}', now))
                conn.executemany(
                    "INSERT INTO events (ts, batch_id, job_id, kind, state, detail) "
                    "VALUES (?, ?, ?, 'job_state', ?, '{\"remote_id\":\"r\"}')",
                    [(now, bid, jid, state)] * 4)
            conn.execute("INSERT INTO batch_job_counts VALUES (?, ?, 5)", (bid, state))
    tables = ("batches", "jobs", "circuits", "results", "batch_job_counts", "events")
    total = sum(conn.execute(f"SELECT count(*) FROM {t}").fetchone()[0] for t in tables)
    conn.close()
    return int(total)


def run(*args: str) -> tuple[subprocess.CompletedProcess[str], float, int]:
    env = {**os.environ, "QJOBD_LOG_LEVEL": "warning"}
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", _RUN, *args], capture_output=True,
                          text=True, env=env)
    rss = [int(line.split()[1]) for line in done.stderr.splitlines()
           if line.startswith("maxrss_kb")]
    return done, time.perf_counter() - started, rss[0] if rss else 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, default=10_000)
    parser.add_argument("--chunk-rows", type=int, default=5000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="qjobd-migrate-bench-") as tmp:
        db = Path(tmp) / "qjobd.sqlite3"
        rows = make_store(db, args.batches)
        print(f"store: {db.stat().st_size / 1e6:.1f} MB, {rows:,} rows")
        _, _, baseline = run("check-config")
        with PostgresServer() as server:
            url = server.create_database()
            done, wall, rss = run("migrate-store", "--from", str(db), "--to", url,
                                  "--chunk-rows", str(args.chunk_rows))
        print(done.stdout, end="")
        if done.returncode != 0:
            print(done.stderr, file=sys.stderr)
            return done.returncode
        print(f"wall {wall:.1f} s; peak RSS {rss / 1024:.0f} MB "
              f"(the command's imports alone: {baseline / 1024:.0f} MB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
