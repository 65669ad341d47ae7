"""qjobd/testing/postgres.py: the throwaway PostgreSQL server the suite starts itself.

Each test here that starts a server of its own asks for ``postgres_server`` first: with no
PostgreSQL on the machine it skips (or, under CI, fails) as the store's tests do.
"""

from __future__ import annotations

import os
import pwd
import subprocess
import sys
from pathlib import Path

import pytest

from qjobd.testing.daemon_process import wait_until
from qjobd.testing.postgres import PostgresServer


def alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie, dead but not yet reaped by init, does not)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def test_each_test_database_is_empty_and_its_own(postgres_server: PostgresServer) -> None:
    import psycopg

    a, b = postgres_server.create_database(), postgres_server.create_database()
    assert a != b and a.startswith(f"postgresql://postgres@127.0.0.1:{postgres_server.port}/")
    with psycopg.connect(a) as conn:
        conn.execute("CREATE TABLE mine (x INTEGER)")
    with psycopg.connect(b) as conn:
        assert conn.execute("SELECT count(*) FROM pg_tables WHERE schemaname = 'public'"
                            ).fetchone() == (0,)
    postgres_server.drop_database(a.rsplit("/", 1)[1])
    with pytest.raises(psycopg.OperationalError, match="does not exist"), \
            psycopg.connect(a, connect_timeout=5):
        pass
    # also on its Unix socket, in its own directory
    with psycopg.connect(host=str(postgres_server.socket_dir), port=postgres_server.port,
                         user="postgres", dbname="postgres") as conn:
        assert conn.execute("SHOW fsync").fetchone() == ("on",)


def test_a_server_stops_and_its_directory_goes_on_exit(postgres_server: PostgresServer) -> None:
    with PostgresServer() as server:
        assert server.running
        pid = int((server.data_dir / "postmaster.pid").read_text().split()[0])
        root = server.root
        assert root is not None and root.is_dir()
        if os.geteuid() == 0:  # PostgreSQL refuses root: it runs as the postgres user
            assert server.data_dir.stat().st_uid == pwd.getpwnam("postgres").pw_uid
    assert not alive(pid)
    assert not root.exists()


def test_a_server_dies_with_the_process_that_started_it_even_by_kill_9(
        postgres_server: PostgresServer, tmp_path: Path) -> None:
    script = ("import os, signal, sys\n"
              "from qjobd.testing.postgres import PostgresServer\n"
              "s = PostgresServer(); s.start()\n"
              "print(s.data_dir, flush=True)\n"
              "os.kill(os.getpid(), signal.SIGKILL)\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=120, check=False)
    assert done.returncode == -9, done.stderr
    data_dir = Path(done.stdout.strip().splitlines()[-1])
    pid = int((data_dir / "postmaster.pid").read_text().split()[0])
    try:
        wait_until(lambda: not alive(pid), 30, "the orphaned server to stop")
    finally:
        if alive(pid):
            os.kill(pid, 9)
        subprocess.run(["rm", "-rf", str(data_dir.parent)], check=False)
