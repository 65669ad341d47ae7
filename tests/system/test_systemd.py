"""qjobd as a systemd service: the units (verified and scored by systemd-analyze), the
install, and `qjobd serve` as a real subprocess talking sd_notify to a fake systemd,
socket-activated by systemd-socket-activate, and reloaded by SIGHUP.

The systemd tools come from Debian's `systemd` package; .ci/run installs it.
"""

from __future__ import annotations

import configparser
import itertools
import json
import os
import pwd
import re
import shutil
import signal
import socket
import stat
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from qjobd.daemon.config import parse_config
from qjobd.testing.daemon_process import accepts, wait_until
from tests.conftest import BELL2, short_tmpdir

ROOT = Path(__file__).resolve().parents[2]
UNITS = ROOT / "systemd"
BIN = Path(sys.executable).parent


def need_tool(name: str) -> str:
    """The tool's path; skip only where it cannot be had, fail where CI should have it."""
    path = shutil.which(name)
    if path:
        return path
    reason = f"{name} is not installed (Debian package systemd; .ci/run installs it)"
    if os.environ.get("CI") and os.geteuid() == 0 and shutil.which("apt-get"):
        pytest.fail(reason)
    pytest.skip(reason)


def unit(path: Path) -> dict[str, dict[str, list[str]]]:
    """A unit file as {section: {key: [values]}} (systemd keys may repeat)."""
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] = {}
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            current = sections.setdefault(line.strip("[]"), {})
            continue
        key, _, value = line.partition("=")
        current.setdefault(key.strip(), []).append(value.strip())
    return sections


# -- the units ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def staged() -> Iterator[Path]:
    """`make install` into a staging root (without the virtual environment: the rest is
    what is checked here)."""
    root = short_tmpdir()
    r = subprocess.run(["make", "-s", "install", f"DESTDIR={root}", "QJOBD_NO_VENV=1"],
                       cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    (root / "install.out").write_text(r.stdout)
    yield root
    shutil.rmtree(root, ignore_errors=True)


def test_install_stages_units_sysusers_config_and_credentials_and_says_what_next(staged):
    etc = staged / "etc"
    for path in ("systemd/system/qjobd.service", "systemd/system/qjobd.socket",
                 "sysusers.d/qjobd.conf", "qjobd/qjobd.toml"):
        assert stat.S_IMODE((etc / path).stat().st_mode) == 0o644, path
    assert (etc / "systemd/system/qjobd.service").read_text() == \
        (UNITS / "qjobd.service").read_text()
    creds = etc / "qjobd" / "credentials"
    assert stat.S_IMODE(creds.stat().st_mode) == 0o700
    for key in unit(UNITS / "qjobd.service")["Service"]["LoadCredential"]:
        name, _, path = key.partition(":")
        assert path == f"/etc/qjobd/credentials/{name}"
        assert stat.S_IMODE((creds / name).stat().st_mode) == 0o600
    assert os.readlink(staged / "usr/local/bin/qjobctl") == "/opt/qjobd/bin/qjobctl"
    # the example config is valid and points qjobctl at the socket unit's socket
    example = parse_config(__import__("tomllib").loads((etc / "qjobd/qjobd.toml").read_text()))
    listen = unit(UNITS / "qjobd.socket")["Socket"]["ListenStream"]
    assert listen == [str(example.daemon.socket)]
    out = (staged / "install.out").read_text()
    assert "usermod -aG qjobd-submit USER" in out
    assert "/etc/qjobd/credentials/ionq" in out and "systemctl enable --now" in out


def test_install_never_overwrites_an_edited_config(staged):
    config = staged / "etc/qjobd/qjobd.toml"
    config.write_text("# mine\n")
    (staged / "etc/qjobd/credentials/ionq").write_text("sk-mine")
    r = subprocess.run(["make", "-s", "install", f"DESTDIR={staged}", "QJOBD_NO_VENV=1"],
                       cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert config.read_text() == "# mine\n"
    assert (staged / "etc/qjobd/credentials/ionq").read_text() == "sk-mine"
    assert (staged / "etc/qjobd/qjobd.toml.example").is_file()


def test_sysusers_creates_the_daemon_user_and_the_submit_group(staged):
    sysusers = need_tool("systemd-sysusers")
    r = subprocess.run([sysusers, f"--root={staged}", str(staged / "etc/sysusers.d/qjobd.conf")],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    users = {line.split(":")[0] for line in (staged / "etc/passwd").read_text().splitlines()}
    groups = {line.split(":")[0] for line in (staged / "etc/group").read_text().splitlines()}
    service = unit(UNITS / "qjobd.service")["Service"]
    sock = unit(UNITS / "qjobd.socket")["Socket"]
    assert set(service["User"]) | set(sock["SocketUser"]) <= users
    assert set(service["Group"]) | set(sock["SocketGroup"]) <= groups


def test_units_pass_systemd_analyze_verify(staged):
    analyze = need_tool("systemd-analyze")
    # verify resolves the units' dependencies and checks every command exists: give the
    # staging root the system's own units, /bin/kill, and a stand-in for the venv
    system = staged / "usr/lib/systemd/system"
    if not system.exists():
        shutil.copytree("/usr/lib/systemd/system", system, symlinks=True)
    for command in ("/bin/kill", "/opt/qjobd/bin/qjobd"):
        target = staged / command.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        if not target.exists():
            target.write_text("#!/bin/sh\n")
            target.chmod(0o755)
    r = subprocess.run([analyze, "verify", f"--root={staged}", "qjobd.service", "qjobd.socket"],
                       capture_output=True, text=True, timeout=60)
    # verify exits 0 on warnings (an unknown key, a bad value): any output is a finding
    assert (r.returncode, r.stdout + r.stderr) == (0, "")


def test_service_exposure_score_is_2_or_better(capsys):
    analyze = need_tool("systemd-analyze")
    r = subprocess.run([analyze, "security", "--offline=true", "--no-pager",
                        str(UNITS / "qjobd.service")], capture_output=True, text=True,
                       timeout=60)
    found = re.search(r"Overall exposure level for qjobd\.service: ([\d.]+) (\w+)", r.stdout)
    assert found, r.stdout + r.stderr
    with capsys.disabled():
        print(f"\nsystemd-analyze security --offline=true: qjobd.service exposure "
              f"{found[1]} {found[2]} (10 = unprotected)")
    assert float(found[1]) <= 2.0


def test_units_are_what_the_service_contract_says():
    service = unit(UNITS / "qjobd.service")["Service"]
    one = {k: v[-1] for k, v in service.items()}
    assert one["Type"] == "notify" and one["NotifyAccess"] == "main"
    assert one["Restart"] == "on-failure" and one["WatchdogSec"]
    assert one["ExecReload"] == "/bin/kill -HUP $MAINPID"
    assert one["StateDirectory"] == "qjobd"
    for key, value in (("ProtectSystem", "strict"), ("NoNewPrivileges", "yes"),
                       ("PrivateTmp", "yes"), ("CapabilityBoundingSet", ""),
                       ("RestrictAddressFamilies", "AF_UNIX AF_INET AF_INET6")):
        assert one[key] == value, key
    assert "@system-service" in service["SystemCallFilter"]
    assert "PrivateUsers" not in service  # it would turn every caller into nobody
    assert {c.partition(":")[0] for c in service["LoadCredential"]} >= {"ionq", "qoro"}
    sock = unit(UNITS / "qjobd.socket")["Socket"]
    assert sock["SocketMode"] == ["0660"] and sock["SocketGroup"] == ["qjobd-submit"]
    # systemd deletes a service's RuntimeDirectory= when it stops: not for the socket
    runtime = service.get("RuntimeDirectory", [])
    assert not any(sock["ListenStream"][0].startswith(f"/run/{d}/") for d in runtime)
    units = unit(UNITS / "qjobd.service")
    assert "qjobd.socket" in units["Unit"]["Requires"]
    assert units["Install"]["WantedBy"] == ["multi-user.target"]  # resume jobs at boot
    parser = configparser.ConfigParser(strict=False)
    parser.read(UNITS / "qjobd.socket")
    assert parser["Install"]["WantedBy"] == "sockets.target"


# -- the daemon under a fake systemd ------------------------------------------------------

class NotifyListener:
    """A fake systemd's notify socket: records every datagram with its arrival time.

    On the first READY=1 it tries the daemon's socket at once, to show the daemon said
    ready only once the socket accepted connections.
    """

    def __init__(self, address: str, daemon_socket: Path) -> None:
        self.address = address  # as NOTIFY_SOCKET says it (path, or @abstract)
        self.messages: list[tuple[float, str]] = []
        self.accepted_at_ready: bool | None = None
        self._daemon_socket = daemon_socket
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._sock.bind("\0" + address[1:] if address.startswith("@") else address)
        self._sock.settimeout(0.1)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                data = self._sock.recv(4096)
            except TimeoutError:
                continue
            message = data.decode()
            if self.accepted_at_ready is None and "READY=1" in message.split("\n"):
                self.accepted_at_ready = accepts(self._daemon_socket)
            self.messages.append((time.monotonic(), message))

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        self._sock.close()

    def lines(self) -> list[str]:
        return [line for _, m in self.messages for line in m.split("\n")]

    def times(self, line: str) -> list[float]:
        return [t for t, m in self.messages if line in m.split("\n")]

    def wait_for(self, line: str, timeout: float = 30, after: float = 0.0) -> float:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            hits = [t for t in self.times(line) if t > after]
            if hits:
                return hits[0]
            time.sleep(0.01)
        raise AssertionError(f"no {line!r} from the daemon; got {self.lines()}")


def plugin_dir(root: Path) -> Path:
    """An installed-distribution stub exposing qjobd.testing.scripted.ScriptedBackend as backend
    type "scripted", found through the same entry points as any plug-in."""
    dist = root / "plugins" / "qjobd_test_plugins-0.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: qjobd-test-plugins\n"
                                   "Version: 0\n")
    (dist / "entry_points.txt").write_text(
        "[qjobd.backends]\nscripted = qjobd.testing.scripted:ScriptedBackend\n")
    return dist.parent


class Served:
    """`qjobd serve` in a subprocess with a scripted backend whose jobs never finish."""

    def __init__(self, root: Path, *, rps: float = 0) -> None:
        self.root = root
        self.socket = root / "qjobd.sock"
        self.config = root / "qjobd.toml"
        self.log = root / "qjobd.log"
        self.write_config(rps)
        self.env = {
            **{k: v for k, v in os.environ.items()
               if not k.startswith(("NOTIFY_", "WATCHDOG_", "LISTEN_", "JOURNAL_"))},
            "PYTHONPATH": f"{plugin_dir(root)}{os.pathsep}{ROOT}",
            "QJOBD_CONFIG": str(self.config), "QJOBD_SOCKET": str(self.socket),
            "QJOBD_DATABASE": str(root / "state" / "qjobd.sqlite3"),
        }
        self.proc: subprocess.Popen[bytes] | None = None

    def write_config(self, rps: float) -> None:
        self.config.write_text(
            "[polling]\ninitial_interval = 0.01\nmax_interval = 0.05\njitter = 0.1\n"
            f'[backends.fake]\ntype = "scripted"\nhold = true\nrequests_per_second = {rps}\n')

    def start(self, argv: list[str] | None = None, **env: str) -> None:
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(argv or [str(BIN / "qjobd"), "serve"],
                                         env={**self.env, **env}, stdout=log, stderr=log)

    def http(self, path: Path | None = None) -> httpx.Client:
        return httpx.Client(transport=httpx.HTTPTransport(uds=str(path or self.socket)),
                            base_url="http://localhost", timeout=30)

    def stop(self) -> int:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=30)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture
def served() -> Iterator[Served]:
    s = Served(short_tmpdir())
    yield s
    s.kill()
    shutil.rmtree(s.root, ignore_errors=True)


@pytest.fixture
def listener(served: Served) -> Iterator[Callable[[str], NotifyListener]]:
    made: list[NotifyListener] = []

    def make(address: str) -> NotifyListener:
        made.append(NotifyListener(address, served.socket))
        return made[-1]

    yield make
    for one in made:
        one.close()


def test_ready_once_accepting_then_watchdog_at_half_the_timeout_and_stopping_on_sigterm(
        served, listener):
    notify = listener(str(served.root / "notify"))
    # WATCHDOG_USEC of 0.2 s: a ping every 0.1 s. SIGUSR2 (test hook) blocks the loop 0.6 s.
    served.start(NOTIFY_SOCKET=notify.address, WATCHDOG_USEC="200000",
                 QJOBD_TEST_HOOKS="1", QJOBD_TEST_BLOCK_SECONDS="0.6")
    ready = notify.wait_for("READY=1")
    assert notify.accepted_at_ready is True
    with served.http() as c:
        assert c.get("/v1/health").json()["status"] == "ok"  # the store is open
    assert any(line.startswith("STATUS=serving on ") and "0 jobs in flight" in line
               for line in notify.lines())

    time.sleep(1.0)
    pings = [t for t in notify.times("WATCHDOG=1") if t > ready]
    gaps = sorted(b - a for a, b in itertools.pairwise(pings))
    assert 7 <= len(pings) <= 13, pings
    assert 0.07 <= gaps[len(gaps) // 2] <= 0.15, gaps  # the median gap: half of 0.2 s

    assert served.proc is not None
    blocked = time.monotonic()
    served.proc.send_signal(signal.SIGUSR2)
    notify.wait_for("WATCHDOG=1", timeout=5, after=blocked + 0.7)
    around = [t for t in notify.times("WATCHDOG=1") if t > blocked - 0.3]
    longest = max(b - a for a, b in itertools.pairwise(around))
    assert longest >= 0.55, around  # silent while the loop was blocked...
    assert longest < 1.0, around    # ...and pinging again right after

    stopping = time.monotonic()
    assert served.stop() == 0
    assert "STOPPING=1" in [line for t, m in notify.messages if t >= stopping
                            for line in m.split("\n")]
    # READY first, STOPPING last of the lifecycle messages
    lifecycle = [line for line in notify.lines() if line in ("READY=1", "STOPPING=1")]
    assert lifecycle == ["READY=1", "STOPPING=1"]


def test_socket_activation_serves_the_inherited_socket_and_keeps_its_mode(served, listener):
    activate = need_tool("systemd-socket-activate")
    notify = listener(f"@qjobd-test-{uuid.uuid4().hex}")  # the abstract form
    path = served.root / "activated.sock"
    env = {**served.env, "NOTIFY_SOCKET": notify.address}
    argv = [activate, "-l", str(path),
            *[f"-E{k}" for k in ("PYTHONPATH", "QJOBD_CONFIG", "QJOBD_DATABASE",
                                 "NOTIFY_SOCKET")],
            str(BIN / "qjobd"), "serve"]
    with served.log.open("ab") as log:
        served.proc = subprocess.Popen(argv, env=env, stdout=log, stderr=log)
    wait_until(path.exists, 10, "systemd-socket-activate to listen")
    # what SocketMode= would do; a mode qjobd itself never sets (its default is 0660)
    mode = 0o606
    path.chmod(mode)
    with served.http(path) as c:  # the first connection starts the daemon
        health = c.get("/v1/health").json()
        r = c.post("/v1/batches", json={"backend": "fake", "circuits": {"bell": BELL2}})
    assert health["pid"] == served.proc.pid  # it exec'd: the same process got the socket
    # the caller is known by SO_PEERCRED on the inherited socket too
    assert r.status_code == 201 and r.json()["owner"] == pwd.getpwuid(os.getuid()).pw_name
    notify.wait_for("READY=1")
    assert not served.socket.exists()  # it bound nothing of its own
    assert "activated" in served.log.read_text()
    assert served.stop() == 0
    assert "STOPPING=1" in notify.lines()
    # the socket is systemd's: left in place, mode untouched, for the next activation
    assert stat.S_IMODE(path.stat().st_mode) == mode


def test_sighup_applies_a_new_budget_without_restarting_jobs_and_refuses_a_broken_file(
        served, listener):
    notify = listener(str(served.root / "notify"))
    served.write_config(rps=2)
    served.start(NOTIFY_SOCKET=notify.address)
    notify.wait_for("READY=1")
    with served.http() as c:
        r = c.post("/v1/batches", json={"backend": "fake", "circuits": {"bell": BELL2}})
        assert r.status_code == 201
        batch_id = r.json()["id"]
        wait_until(lambda: c.get(f"/v1/batches/{batch_id}").json()["jobs"][0]["remote_id"],
                   10, "the job to be submitted")
        before = c.get(f"/v1/batches/{batch_id}").json()["jobs"][0]

        def requests_in(seconds: float) -> int:
            first = c.get("/v1/health").json()["backends"]["fake"]["requests"]
            time.sleep(seconds)
            return c.get("/v1/health").json()["backends"]["fake"]["requests"] - first

        slow = requests_in(1.0)  # the job wants a poll every 0.05 s; the budget says 2/s
        assert slow <= 4, slow

        served.write_config(rps=200)
        hup = time.monotonic()
        assert served.proc is not None
        served.proc.send_signal(signal.SIGHUP)
        reloading = notify.wait_for("RELOADING=1", after=hup)
        notify.wait_for("READY=1", after=reloading)
        assert any(line.startswith("MONOTONIC_USEC=") for line in notify.lines())
        fast = requests_in(1.0)
        assert fast >= 8 and fast >= 3 * max(slow, 1), (slow, fast)

        health = c.get("/v1/health").json()
        after = c.get(f"/v1/batches/{batch_id}").json()["jobs"][0]
    assert health["backends"]["fake"]["requests_per_second"] == 200
    assert health["pid"] == served.proc.pid
    # the same remote job, never resubmitted; still polled
    assert (after["remote_id"], after["attempts"]) == (before["remote_id"], before["attempts"])
    assert after["state"] == before["state"] == "submitted"
    assert "configuration reloaded" in served.log.read_text()

    # a broken file: the reload is refused, loudly, and the daemon goes on as it was
    served.config.write_text("[backends.fake\n")
    hup = time.monotonic()
    served.proc.send_signal(signal.SIGHUP)
    notify.wait_for("READY=1", after=notify.wait_for("RELOADING=1", after=hup))
    with served.http() as c:
        assert c.get("/v1/health").json()["backends"]["fake"]["requests_per_second"] == 200
    errors = [json.loads(line) for line in served.log.read_text().splitlines()
              if line.startswith("{") and '"error"' in line]
    assert any(e["event"].startswith("reload failed") and "invalid TOML" in e["error"]
               for e in errors)
    assert served.stop() == 0


def test_under_journald_the_daemon_prefixes_priorities(served):
    # journald hands the service a stream and names it in $JOURNAL_STREAM (dev:ino)
    served.log.touch()
    st = served.log.stat()
    served.start(JOURNAL_STREAM=f"{st.st_dev}:{st.st_ino}")
    # the socket accepts (the kernel's backlog) a moment before the daemon says it is ready
    wait_until(lambda: '"event": "ready"' in served.log.read_text(), 30, "the ready line")
    assert served.stop() == 0
    lines = served.log.read_text().splitlines()
    assert lines and all(re.match(r"<[0-7]>\{", line) for line in lines), lines
    assert any(line.startswith("<6>") and '"event": "ready"' in line for line in lines)
