"""`qjobd serve` as a real subprocess, for tests that cross process boundaries."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import httpx

from qjobd.store import states

__all__ = ["BIN", "TERMINAL", "DaemonProcess", "accepts", "wait_until"]

#: where the running interpreter's ``qjobd`` and ``qjobctl`` scripts are
BIN = Path(sys.executable).parent
#: the terminal batch and job states, as the API spells them
TERMINAL = frozenset(str(state) for state in states.TERMINAL)


def wait_until(predicate: Callable[[], object], limit: float, what: str) -> None:
    """Block until ``predicate()`` is true, for at most ``limit`` seconds."""
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


def accepts(path: Path) -> bool:
    """Whether something accepts connections on the Unix socket at ``path``."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        try:
            probe.connect(str(path))
        except OSError:
            return False
        return True


class DaemonProcess:
    """One daemon's files (config, socket, database, log) and its current process."""

    def __init__(self, root: Path, config: str, env: dict[str, str] | None = None) -> None:
        self.root = root
        self.socket = root / "qjobd.sock"
        self.database = root / "state" / "qjobd.sqlite3"
        self.config = root / "qjobd.toml"
        self.config.write_text(config)
        self.env = {**os.environ, "QJOBD_CONFIG": str(self.config),
                    "QJOBD_SOCKET": str(self.socket), "QJOBD_DATABASE": str(self.database),
                    **(env or {})}
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = root / "qjobd.log"

    def start(self, timeout: float = 60) -> None:
        """Start it and return once its socket answers /v1/health."""
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen([str(BIN / "qjobd"), "serve"], env=self.env,
                                         stdout=log, stderr=log)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, f"qjobd exited: {self.log.read_text()[-3000:]}"
            if self.accepts():
                with self.http() as c:
                    assert c.get("/v1/health").status_code == 200
                return
            time.sleep(0.05)
        raise AssertionError(f"qjobd did not become ready: {self.log.read_text()[-3000:]}")

    def accepts(self) -> bool:
        return accepts(self.socket)

    def http(self, timeout: float = 30) -> httpx.Client:
        return httpx.Client(transport=httpx.HTTPTransport(uds=str(self.socket)),
                            base_url="http://localhost", timeout=timeout)

    def ctl(self, *args: str, stdin: str | None = None, timeout: float = 120
            ) -> subprocess.CompletedProcess[str]:
        return subprocess.run([str(BIN / "qjobctl"), "--socket", str(self.socket), *args],
                              env=self.env, input=stdin, capture_output=True, text=True,
                              timeout=timeout)

    def signal(self, sig: int, timeout: float = 30) -> int:
        """Send ``sig`` and return the exit status."""
        assert self.proc is not None
        self.proc.send_signal(sig)
        return self.proc.wait(timeout=timeout)

    def kill(self) -> None:
        """kill -9: no cleanup of any kind."""
        assert self.signal(signal.SIGKILL) == -signal.SIGKILL

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
