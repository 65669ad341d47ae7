"""systemd integration, in-process: sd_notify, the watchdog rule, the status line, SIGHUP's
reload of backend settings, fd adoption, and journald priorities."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import os
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import structlog

from qjobd.daemon.config import PollingConfig, parse_config
from qjobd.daemon.engine.runner import RunnerStats
from qjobd.daemon.process import logs, systemd
from qjobd.daemon.process.watchdog import Progress, Supervisor, status_line
from qjobd.store.store import Store
from qjobd.testing.scripted import ScriptedBackend
from tests.conftest import BELL2, FAST_POLLING, short_tmpdir

# -- sd_notify ---------------------------------------------------------------------------


def _listener(address: str) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(address)
    sock.settimeout(5)
    return sock


def test_notify_sends_one_datagram_to_a_path_socket(monkeypatch):
    path = str(short_tmpdir() / "notify")
    with _listener(path) as listener:
        monkeypatch.setenv("NOTIFY_SOCKET", path)
        assert systemd.notify("READY=1\nSTATUS=serving")
        assert listener.recv(4096) == b"READY=1\nSTATUS=serving"


def test_notify_understands_the_abstract_at_form(monkeypatch):
    name = f"qjobd-test-{uuid.uuid4().hex}"
    with _listener("\0" + name) as listener:
        monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
        assert systemd.notify("WATCHDOG=1")
        assert listener.recv(4096) == b"WATCHDOG=1"


def test_notify_is_a_quiet_no_op_without_systemd(monkeypatch):
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    assert systemd.notify("READY=1") is False
    monkeypatch.setenv("NOTIFY_SOCKET", str(short_tmpdir() / "nobody-listens"))
    assert systemd.notify("READY=1") is False


def test_status_is_one_line_and_reloading_carries_a_monotonic_stamp():
    assert systemd.status_message("a\nb  c") == "STATUS=a b c"
    first, second = systemd.reloading_message().split("\n")
    assert first == "RELOADING=1"
    usec = int(second.removeprefix("MONOTONIC_USEC="))
    assert abs(usec / 1e6 - time.clock_gettime(time.CLOCK_MONOTONIC)) < 5


@pytest.mark.parametrize(("usec", "pid", "expected"), [
    ("400000", None, 0.2),
    ("30000000", "self", 15.0),
    ("30000000", "1", None),  # the watchdog is another process's
    (None, None, None),
    ("0", None, None),
    ("soon", None, None),
])
def test_watchdog_interval_is_half_of_watchdog_usec_for_this_process(monkeypatch, usec, pid,
                                                                     expected):
    for name, value in (("WATCHDOG_USEC", usec),
                        ("WATCHDOG_PID", str(os.getpid()) if pid == "self" else pid)):
        if value is None:
            monkeypatch.delenv(name, raising=False)
        else:
            monkeypatch.setenv(name, value)
    assert systemd.watchdog_interval() == expected


# -- socket activation: fd adoption, in a small child (fd 3 is taken in pytest) ---------

ADOPT = """
import json, os, socket, sys
from qjobd.daemon.process import systemd
kind = sys.argv[1]
if kind == "unix":
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM); s.bind(sys.argv[2]); s.listen()
elif kind == "unix-unlistened":
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM); s.bind(sys.argv[2])
else:
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM); s.bind(("127.0.0.1", 0)); s.listen()
if s.fileno() != 3:
    os.dup2(s.fileno(), 3)
    s.close()
else:
    s.detach()
os.environ.update(LISTEN_PID=sys.argv[3] if len(sys.argv) > 3 else str(os.getpid()),
                  LISTEN_FDS="1", LISTEN_FDNAMES="qjobd.socket")
try:
    socks = systemd.listen_sockets()
except systemd.ActivationError as exc:
    print(json.dumps({"error": str(exc)})); sys.exit(0)
print(json.dumps({"names": [x.getsockname() for x in socks],
                  "inheritable": [os.get_inheritable(x.fileno()) for x in socks],
                  "env": sorted(k for k in os.environ if k.startswith("LISTEN_"))}))
"""


def _adopt(*args: str) -> dict[str, Any]:
    r = subprocess.run([sys.executable, "-c", ADOPT, *args], capture_output=True, text=True,
                       timeout=30, cwd=Path(__file__).resolve().parents[2])
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def test_an_inherited_unix_socket_is_adopted_close_on_exec_and_the_env_is_cleared():
    path = str(short_tmpdir() / "a.sock")
    out = _adopt("unix", path)
    assert out == {"names": [path], "inheritable": [False], "env": []}


def test_sockets_meant_for_another_pid_are_left_alone():
    out = _adopt("unix", str(short_tmpdir() / "a.sock"), "1")
    assert out == {"names": [], "inheritable": [], "env": []}


@pytest.mark.parametrize(("kind", "why"), [("tcp", "not a Unix stream socket"),
                                           ("unix-unlistened", "not listening")])
def test_an_unusable_inherited_socket_is_refused_with_the_reason(kind, why):
    out = _adopt(kind, str(short_tmpdir() / "a.sock"))
    assert why in out["error"]


# -- the watchdog rule -------------------------------------------------------------------

class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


async def test_a_writer_with_queued_writes_and_no_commit_stalls_the_watchdog(tmp_path):
    store = await Store.open(tmp_path / "q.sqlite3")
    clock = Clock()
    progress = Progress(store, SimpleNamespace(stats=dict), writer_stall_after=60,
                        clock=clock)
    release = threading.Event()
    entered = threading.Event()

    def wedged(conn: Any) -> None:  # a commit hanging on the disk
        entered.set()
        release.wait(30)

    try:
        assert progress.problem() is None
        first = asyncio.create_task(store.write(wedged))
        await asyncio.to_thread(entered.wait, 5)
        queued = asyncio.create_task(store.write(lambda conn: None))
        await asyncio.sleep(0)
        assert store.writer.backlog == 1
        clock.now = 59
        assert progress.problem() is None  # slow, not yet stuck
        clock.now = 61
        assert "store writer stalled" in progress.problem()
        release.set()
        await asyncio.gather(first, queued)
        clock.now = 62
        assert progress.problem() is None  # it moved again
        clock.now = 500
        assert progress.problem() is None  # idle is not stuck
    finally:
        release.set()
        await store.close()


def _engine(in_flight: int = 1, granted: int = 0, paused_for: float = 0.0, rate: float = 0.0,
            max_interval: float = 30.0) -> RunnerStats:
    return RunnerStats(name="b", type="scripted", in_flight=in_flight, granted=granted,
                       paused_for=paused_for, requests_per_second=rate,
                       polling=PollingConfig(max_interval=max_interval, jitter=0.1))


def _scheduler_stub(engines: dict[str, RunnerStats]) -> SimpleNamespace:
    """A scheduler as the watchdog sees it: each engine's stats (changed by the test)."""
    return SimpleNamespace(stats=lambda: dict(engines))


def _store_stub() -> SimpleNamespace:
    return SimpleNamespace(writer=SimpleNamespace(
        backlog=0, stats=SimpleNamespace(commits=0, failed_commits=0)))


def test_a_poller_with_work_and_no_request_for_too_long_stalls_the_watchdog():
    clock = Clock()
    engines = {"ionq": _engine()}
    progress = Progress(_store_stub(), _scheduler_stub(engines),
                        poller_stall_after=120, clock=clock)
    assert progress.problem() is None
    clock.now = 100
    engines["ionq"] = dataclasses.replace(engines["ionq"], granted=5)  # requests flow
    assert progress.problem() is None
    clock.now = 219
    assert progress.problem() is None
    clock.now = 221
    assert "poller of backend 'ionq' stalled" in progress.problem()


@pytest.mark.parametrize("why", ["paused", "idle", "slow schedule", "slow budget"])
def test_a_poller_that_is_meant_to_wait_is_not_stuck(why):
    clock = Clock()
    engine = {"paused": _engine(paused_for=3600),  # 429 Retry-After or refused credentials
              "idle": _engine(in_flight=0),
              "slow schedule": _engine(max_interval=600),  # waits up to 660 s per job
              "slow budget": _engine(rate=1 / 300)}[why]  # one request per 300 s
    progress = Progress(_store_stub(), _scheduler_stub({"b": engine}),
                        poller_stall_after=120, clock=clock)
    assert progress.problem() is None
    clock.now = 500
    assert progress.problem() is None


async def test_a_real_poller_whose_requests_hang_is_reported(daemon, monkeypatch):
    hang = asyncio.Event()

    async def status(remote_ids):  # the provider never answers
        await hang.wait()
        return {}

    monkeypatch.setattr(daemon.backends["held"], "status", status)
    progress = Progress(daemon.store, daemon.scheduler, poller_stall_after=0.3)
    r = await daemon.client.post("/v1/batches", json={"backend": "held",
                                                      "circuits": {"a": BELL2}})
    assert r.status_code == 201
    deadline = time.monotonic() + 10
    while (problem := progress.problem()) is None:
        assert time.monotonic() < deadline, "the stuck poller was not noticed"
        await asyncio.sleep(0.05)
    assert "poller of backend 'held' stalled" in problem
    assert daemon.scheduler.stats()["fake"].in_flight == 0
    hang.set()


# -- the supervisor task: pings from the loop, withheld while stuck ------------------------

class Recorder:
    def __init__(self) -> None:
        self.messages: list[tuple[float, str]] = []

    def __call__(self, message: str) -> bool:
        self.messages.append((time.monotonic(), message))
        return True

    def pings(self) -> list[float]:
        return [t for t, m in self.messages if m == "WATCHDOG=1"]


async def test_no_watchdog_ping_while_the_event_loop_is_blocked():
    recorder = Recorder()
    sup = Supervisor(interval=0.03, notify=recorder)
    task = asyncio.create_task(sup.run())
    await asyncio.sleep(0.2)
    blocked_from = time.monotonic()
    time.sleep(0.3)  # noqa: ASYNC251 - a wedged loop: CPU work run on it by mistake
    blocked_until = time.monotonic()
    await asyncio.sleep(0.2)
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    pings = recorder.pings()
    assert not [t for t in pings if blocked_from + 0.01 < t < blocked_until]
    before = [t for t in pings if t <= blocked_from]
    after = [t for t in pings if t >= blocked_until]
    assert len(before) >= 4 and len(after) >= 4
    # no burst of make-up pings once the loop runs again
    assert len([t for t in after if t < blocked_until + 0.025]) <= 1


async def test_pings_are_withheld_while_stuck_and_resume_after(capsys):
    recorder = Recorder()
    sup = Supervisor(interval=0.02, notify=recorder)
    problem: list[str | None] = [None]
    sup.progress = SimpleNamespace(problem=lambda: problem[0])
    sup.status = lambda: "serving on s; 3 jobs in flight"
    task = asyncio.create_task(sup.run())
    try:
        await asyncio.sleep(0.1)
        assert recorder.pings()
        problem[0] = "store writer stalled: 3 writes queued, none finished for 61 s"
        await asyncio.sleep(0.05)
        stuck_at = time.monotonic()
        await asyncio.sleep(0.2)
        assert not [t for t in recorder.pings() if t > stuck_at]
        problem[0] = None
        await asyncio.sleep(0.1)
        assert [t for t in recorder.pings() if t > stuck_at + 0.2]
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    statuses = [m for _, m in recorder.messages if m.startswith("STATUS=")]
    assert statuses[0] == "STATUS=serving on s; 3 jobs in flight"


async def test_status_line_says_jobs_in_flight_and_paused_backends(daemon):
    sched = daemon.scheduler
    assert status_line(sched, "/run/qjobd/qjobd.sock") == \
        "serving on /run/qjobd/qjobd.sock; 0 jobs in flight"
    r = await daemon.client.post("/v1/batches", json={"backend": "held",
                                                      "circuits": {"a": BELL2, "b": BELL2}})
    assert r.status_code == 201
    sched.runners["fake"]._budget.pause(60)  # what a 429 with Retry-After: 60 does
    assert status_line(sched, "s") == "serving on s; 2 jobs in flight (held 2); paused: fake"


# -- SIGHUP: Scheduler.reload --------------------------------------------------------------

def _config(**fake: Any) -> Any:
    return parse_config({"polling": FAST_POLLING, "backends": {
        "fake": {"type": "scripted", **fake}, "held": {"type": "scripted", "hold": True}}})


async def test_reload_changes_budget_polling_and_backend_settings_in_place(daemon,
                                                                           monkeypatch):
    seen: list[tuple[str, dict[str, Any]]] = []

    async def reconfigure(self: ScriptedBackend, options: Any) -> None:
        seen.append((self.name, dict(options)))

    monkeypatch.setattr(ScriptedBackend, "reconfigure", reconfigure)
    r = await daemon.client.post("/v1/batches", json={"backend": "held",
                                                      "circuits": {"a": BELL2}})
    batch_id = r.json()["id"]
    for _ in range(1000):
        before = await daemon.store.get_batch(batch_id)
        if before.jobs[0].remote_id is not None:
            break
        await asyncio.sleep(0.01)
    assert daemon.scheduler.stats()["held"].in_flight == 1 and before.jobs[0].remote_id is not None
    new = _config(requests_per_second=5, polling={"max_interval": 2.0}, api_key_env="K2")
    problems = await daemon.scheduler.reload(new.backends)
    assert problems == []
    stats = daemon.scheduler.stats()["fake"]
    assert stats.requests_per_second == 5
    assert stats.polling is new.backends["fake"].polling
    assert stats.polling.max_interval == 2.0
    health = (await daemon.client.get("/v1/health")).json()
    assert health["backends"]["fake"]["requests_per_second"] == 5
    assert ("fake", {"api_key_env": "K2"}) in seen and ("held", {"hold": True}) in seen
    # the held job was neither resubmitted nor restarted
    after = await daemon.store.get_batch(batch_id)
    assert after.jobs[0].remote_id == before.jobs[0].remote_id
    assert daemon.backends["held"].submits == 1


async def test_reload_keeps_old_settings_where_they_cannot_change(daemon, monkeypatch):
    async def refuse(self: ScriptedBackend, options: Any) -> None:
        if self.name == "fake":
            raise ValueError("no API key for backend 'fake': set $K2")

    monkeypatch.setattr(ScriptedBackend, "reconfigure", refuse)
    new = parse_config({"backends": {"fake": {"type": "scripted", "requests_per_second": 9},
                                     "held": {"type": "local"},
                                     "extra": {"type": "scripted"}}})
    problems = await daemon.scheduler.reload(new.backends)
    assert any("'fake' kept its settings: no API key" in p for p in problems)
    assert any("'held' changed type" in p for p in problems)
    assert any("'extra' is new" in p for p in problems)
    assert daemon.scheduler.stats()["fake"].requests_per_second == 0  # unchanged
    gone = await daemon.scheduler.reload(parse_config({"backends": {
        "fake": {"type": "scripted"}}}).backends)
    assert any("'held' is no longer configured" in p for p in gone)
    assert "held" in daemon.scheduler.runners  # its jobs keep running until a restart


# -- journald priorities ---------------------------------------------------------------------

@pytest.fixture
def restore_logging(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    monkeypatch.setattr(logs, "_secrets", set())
    yield
    structlog.reset_defaults()
    root.handlers[:] = handlers
    root.setLevel(level)


def _log_all_levels(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, *, journal: bool
                    ) -> list[str]:
    out = tmp_path / "stderr"
    with out.open("w") as stream:
        st = os.fstat(stream.fileno())
        other = st.st_ino + 1
        monkeypatch.setenv("JOURNAL_STREAM", f"{st.st_dev}:{st.st_ino if journal else other}")
        monkeypatch.setattr(sys, "stderr", stream)
        logs.configure("debug")
        log = structlog.get_logger("qjobd.test")
        log.debug("polled")
        log.info("ready")
        log.warning("rate limited")
        log.error("credentials refused")
        logging.getLogger("httpx").error("from a library")
        log.critical("store lost")
    return out.read_text().splitlines()


def test_under_journald_each_line_carries_its_syslog_priority(tmp_path, monkeypatch,
                                                              restore_logging):
    lines = _log_all_levels(tmp_path, monkeypatch, journal=True)
    prefixes = [line[:3] for line in lines]
    assert prefixes == ["<7>", "<6>", "<4>", "<3>", "<3>", "<2>"]
    assert json.loads(lines[3][3:])["event"] == "credentials refused"
    # what `journalctl -p err` keeps: priority 3 and more urgent
    errors = [json.loads(line[3:])["event"] for line in lines if int(line[1]) <= 3]
    assert errors == ["credentials refused", "from a library", "store lost"]


def test_without_journald_lines_are_plain_json(tmp_path, monkeypatch, restore_logging):
    lines = _log_all_levels(tmp_path, monkeypatch, journal=False)
    assert all(line.startswith("{") for line in lines)
    assert len(lines) == 6


# -- the lifecycle's exit status --------------------------------------------------------------

async def test_a_crashed_scheduler_ends_the_daemon_with_a_failure_for_restart_on_failure(
        tmp_path, monkeypatch):
    from qjobd.daemon.engine.scheduler import Scheduler
    from qjobd.daemon.process import service

    async def crash(self: Scheduler) -> None:
        await asyncio.sleep(0.05)
        raise RuntimeError("boom")

    monkeypatch.setattr(service, "create_backend",
                        lambda name, type_name, options: ScriptedBackend(name, options))
    monkeypatch.setattr(Scheduler, "run", crash)
    for name in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "LISTEN_PID", "LISTEN_FDS"):
        monkeypatch.delenv(name, raising=False)
    sock = short_tmpdir() / "s.sock"
    config = parse_config({"daemon": {"socket": str(sock),
                                      "database": str(tmp_path / "q.sqlite3")},
                           "backends": {"fake": {"type": "scripted"}}})
    with pytest.raises(service.CoreTaskFailed, match="scheduler failed: RuntimeError"):
        await asyncio.wait_for(service.run(config), 30)
    assert not sock.exists()  # cleaned up all the same
