"""A throwaway PostgreSQL server for tests: initdb in a temporary directory, no service.

    with PostgresServer() as server:
        url = server.create_database()   # a fresh, empty database of its own
        ...                              # postgresql://postgres@127.0.0.1:PORT/NAME

The server listens on 127.0.0.1 (a free port) and on a Unix socket in its directory,
trusts every local connection (nothing else can reach it), and keeps fsync on. Run as
root (CI, containers), it runs as the ``postgres`` system user, which owns its directory.

It never outlives the process that started it: ``postgres`` is this process's own child
(not daemonized by pg_ctl), started with a parent-death signal (SIGQUIT, PostgreSQL's
immediate shutdown) that the kernel sends if this process dies, even by kill -9; a normal
exit stops it with ``pg_ctl stop -m fast``, and so does an interpreter exit that skipped
the ``with`` block's end. (The death signal follows the thread that started the server:
start it from a thread that lives as long as the server, e.g. the main thread.)

Binaries: ``$QJOBD_PG_BINDIR``, else ``initdb`` on ``PATH``, else the newest
``/usr/lib/postgresql/*/bin`` (Debian's layout); :class:`PostgresNotFound` if none.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import weakref
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType

import structlog

__all__ = ["PostgresNotFound", "PostgresServer", "find_bindir"]

log = structlog.get_logger("qjobd.testing.postgres")

#: the system user a root process runs the server as (PostgreSQL refuses to run as root)
SYSTEM_USER = "postgres"
_PROGRAMS = ("initdb", "pg_ctl", "postgres", "pg_isready")


class PostgresNotFound(RuntimeError):
    """No PostgreSQL server binaries on this machine."""


#: where Debian installs each PostgreSQL version's programs (VERSION/bin)
DEBIAN_ROOT = Path("/usr/lib/postgresql")


def find_bindir(debian_root: Path = DEBIAN_ROOT) -> Path:
    """The directory holding initdb, pg_ctl, postgres and pg_isready."""
    candidates: list[Path] = []
    if env := os.environ.get("QJOBD_PG_BINDIR"):
        candidates.append(Path(env))
    if on_path := shutil.which("initdb"):
        # Debian links a few programs into PATH; the server binary sits beside the real one
        candidates += [Path(on_path).parent, Path(on_path).resolve().parent]

    def version(p: Path) -> tuple[int, ...]:
        return tuple(int(x) for x in re.findall(r"\d+", p.parent.name)) or (0,)

    candidates += sorted(debian_root.glob("*/bin"), key=version, reverse=True)
    for bindir in candidates:
        if all(os.access(bindir / name, os.X_OK) for name in _PROGRAMS):
            return bindir
    looked = ", ".join(str(c) for c in candidates) or "nowhere"
    raise PostgresNotFound(
        "PostgreSQL's server binaries (initdb, pg_ctl, postgres, pg_isready) were not "
        f"found (looked in $QJOBD_PG_BINDIR, PATH and {debian_root}/*/bin: {looked}); "
        "install Debian's package postgresql")


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class PostgresServer:
    """One throwaway server; a context manager (start on enter, stop and remove on exit)."""

    def __init__(self, *, bindir: Path | None = None, start_timeout: float = 60.0) -> None:
        self.bindir = bindir if bindir is not None else find_bindir()
        self.start_timeout = start_timeout
        self.root: Path | None = None
        self.port = 0
        self.user = SYSTEM_USER
        self._proc: subprocess.Popen[bytes] | None = None
        self._finalizer: weakref.finalize[..., PostgresServer] | None = None

    # -- where ----------------------------------------------------------------------

    @property
    def host(self) -> str:
        return "127.0.0.1"

    @property
    def socket_dir(self) -> Path:
        assert self.root is not None, "the server is not started"
        return self.root / "run"

    @property
    def data_dir(self) -> Path:
        assert self.root is not None, "the server is not started"
        return self.root / "data"

    @property
    def log_file(self) -> Path:
        assert self.root is not None, "the server is not started"
        return self.root / "postgres.log"

    def url_of(self, database: str) -> str:
        return f"postgresql://{self.user}@{self.host}:{self.port}/{database}"

    @property
    def url(self) -> str:
        """The server's maintenance database, ``postgres`` (create your own to test in)."""
        return self.url_of("postgres")

    # -- life -----------------------------------------------------------------------

    def __enter__(self) -> PostgresServer:
        self.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    def start(self) -> None:
        if self._proc is not None:
            raise RuntimeError("the server is already started")
        # short: the socket path (run/.s.PGSQL.PORT) must fit in 108 bytes
        self.root = Path(tempfile.mkdtemp(prefix="qjobd-pg-", dir="/tmp"))
        # before anything runs: a failure below still removes the directory; a finalizer
        # also runs at the interpreter's exit
        self._finalizer = weakref.finalize(self, _cleanup, self.root, self.bindir, None)
        try:
            self.socket_dir.mkdir()
            if os.geteuid() == 0:
                _chown_tree(self.root, SYSTEM_USER)
            self._run("initdb", "-D", str(self.data_dir), "-U", self.user, "-A", "trust",
                      "-E", "UTF8", "--no-locale", "--no-instructions",
                      # a throwaway: skip initdb's final sync of the new files (the server
                      # itself runs with fsync on)
                      "--no-sync")
            for attempt in range(3):  # a free port can be taken before the server binds it
                self.port = _free_port()
                if self._launch():
                    break
                if attempt == 2:
                    raise RuntimeError(f"PostgreSQL did not start: {self._log_tail()}")
        except BaseException:
            self.stop()
            raise
        log.debug("postgresql started", url=self.url, directory=str(self.root))

    def _launch(self) -> bool:
        """Start the server on ``self.port``; False if the port was taken meanwhile."""
        assert self.root is not None
        args = [str(self.bindir / "postgres"), "-D", str(self.data_dir),
                "-c", "listen_addresses=127.0.0.1", "-c", f"port={self.port}",
                "-c", f"unix_socket_directories={self.socket_dir}",
                "-c", "max_connections=200", "-c", "shared_buffers=32MB",
                "-c", "logging_collector=off", "-c", "log_min_messages=warning"]
        with self.log_file.open("ab") as out:
            self._proc = subprocess.Popen(
                _as_server_user(args, death_signal=True), stdin=subprocess.DEVNULL,
                stdout=out, stderr=subprocess.STDOUT, cwd=self.root, start_new_session=True)
        assert self._finalizer is not None
        self._finalizer.detach()
        self._finalizer = weakref.finalize(self, _cleanup, self.root, self.bindir, self._proc)
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                self._proc = None
                if "could not bind" in self._log_tail() or "in use" in self._log_tail():
                    return False
                raise RuntimeError(f"PostgreSQL exited at start: {self._log_tail()}")
            ready = subprocess.run(
                [str(self.bindir / "pg_isready"), "-q", "-h", self.host, "-p", str(self.port),
                 "-U", self.user, "-d", "postgres", "-t", "2"],
                stdin=subprocess.DEVNULL, capture_output=True, check=False)
            if ready.returncode == 0:
                return True
            time.sleep(0.05)
        raise RuntimeError(f"PostgreSQL was not ready within {self.start_timeout:.0f} s: "
                           f"{self._log_tail()}")

    def stop(self) -> None:
        """Stop the server (fast shutdown) and remove its directory; harmless twice."""
        finalizer, self._finalizer = self._finalizer, None
        self._proc = None
        if finalizer is not None:
            finalizer()

    @contextlib.contextmanager
    def down(self) -> Iterator[None]:
        """The server stopped (fast shutdown: its clients are cut) for the ``with`` block,
        then started again on the same port with the same data: an outage."""
        assert self.root is not None and self._proc is not None, "the server is not started"
        proc = self._proc
        self._run("pg_ctl", "stop", "-D", str(self.data_dir), "-m", "fast", "-w", "-t", "30")
        proc.wait(timeout=30)
        self._proc = None
        try:
            yield
        finally:
            if not self._launch():
                raise RuntimeError(f"PostgreSQL did not come back on port {self.port}: "
                                   f"{self._log_tail()}")

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    # -- databases ------------------------------------------------------------------

    def create_database(self, name: str | None = None, *, template: str = "template0") -> str:
        """Create an empty database (from ``template``) and return its URL."""
        name = name or f"test_{secrets.token_hex(6)}"
        if not re.fullmatch(r"[a-z_][a-z0-9_]*", name):
            raise ValueError(f"not a plain database name: {name!r}")
        self.execute(f'CREATE DATABASE "{name}" TEMPLATE "{template}"')
        return self.url_of(name)

    def drop_database(self, name: str) -> None:
        """Drop a database, disconnecting whoever is still connected to it."""
        self.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    def execute(self, sql: str) -> None:
        """Run one statement in the maintenance database, outside a transaction."""
        import psycopg

        with psycopg.connect(self.url, autocommit=True, connect_timeout=10) as conn:
            conn.execute(sql.encode())

    # -- helpers --------------------------------------------------------------------

    def _run(self, program: str, *args: str) -> None:
        assert self.root is not None
        done = subprocess.run(_as_server_user([str(self.bindir / program), *args]),
                              stdin=subprocess.DEVNULL, capture_output=True, cwd=self.root,
                              timeout=120, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"{program} failed ({done.returncode}): "
                               f"{(done.stdout + done.stderr).decode(errors='replace')[-2000:]}")

    def _log_tail(self) -> str:
        try:
            return self.log_file.read_text(errors="replace")[-2000:]
        except OSError:
            return "(no log)"


def _as_server_user(args: list[str], *, death_signal: bool = False) -> list[str]:
    """``args`` run as the server's user (when root), with a parent-death signal if asked."""
    setpriv = shutil.which("setpriv")
    root = os.geteuid() == 0
    if setpriv is not None and (root or death_signal):
        # setpriv execs the program itself: it stays this process's direct child, so the
        # death signal reaches the postmaster, not an intermediate process
        prefix = [setpriv]
        if root:
            prefix += [f"--reuid={SYSTEM_USER}", f"--regid={SYSTEM_USER}", "--init-groups"]
        if death_signal:
            prefix += ["--pdeathsig", "SIGQUIT"]
        return [*prefix, "--", *args]
    if root:
        runuser = shutil.which("runuser")
        if runuser is None:
            raise PostgresNotFound("running as root needs setpriv or runuser (util-linux) "
                                   f"to start PostgreSQL as {SYSTEM_USER!r}")
        return [runuser, "-u", SYSTEM_USER, "--", *args]
    return args


def _chown_tree(root: Path, user: str) -> None:
    for path in (root, *root.rglob("*")):
        shutil.chown(path, user, user)


def _cleanup(root: Path, bindir: Path, proc: subprocess.Popen[bytes] | None) -> None:
    """Stop the server (fast, then immediate, then SIGKILL) and remove its directory."""
    if proc is not None and proc.poll() is None:
        with contextlib.suppress(subprocess.TimeoutExpired, OSError):
            subprocess.run(_as_server_user([str(bindir / "pg_ctl"), "stop", "-D",
                                            str(root / "data"), "-m", "fast", "-w", "-t", "20"]),
                           stdin=subprocess.DEVNULL, capture_output=True, timeout=30,
                           check=False)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            for sig in (signal.SIGQUIT, signal.SIGKILL):  # immediate shutdown, then no say
                with contextlib.suppress(OSError):
                    proc.send_signal(sig)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(timeout=10)
                    break
    shutil.rmtree(root, ignore_errors=True)
