"""qjobctl and the client library against a fake qjobd on a real Unix socket.

The fake speaks the HTTP API of SPEC.md with canned answers and records every request,
so these tests pin down what the CLI sends and how it renders what it gets back.
"""

from __future__ import annotations

import io
import json
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from socketserver import ThreadingMixIn, UnixStreamServer
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import pytest

from qjobd.daemon import config as config_module
from qjobd.daemon.client import connection as client_module
from qjobd.daemon.client import ctl
from qjobd.daemon.client.connection import (
    ApiError,
    Client,
    DaemonUnreachable,
    SocketConfigError,
    format_error_details,
    resolve_socket_path,
)
from qjobd.daemon.config import default_socket_path

#: the installed qjobctl script of the running interpreter's environment
QJOBCTL = Path(sys.executable).parent / "qjobctl"

# -- the fake daemon -------------------------------------------------------------------


@dataclass
class Request:
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: Any


Answer = tuple[int, Any]  # (status, JSON-able body, str sent as text/plain, or Held/Stream)


@dataclass
class Held:
    """An answer sent only once ``release`` is set: a long-poll that is still waiting."""

    answer: Any
    release: threading.Event = field(default_factory=threading.Event)


@dataclass
class Stream:
    """A chunked stream: ``text`` at once, then open until ``release``, then a clean end
    (what qjobd does to a followed event stream when it stops)."""

    text: str
    release: threading.Event = field(default_factory=threading.Event)
    #: False: drop the connection instead (what a killed daemon leaves)
    end: bool = True


class FakeQjobd:
    """Canned answers per (method, path); a list of answers is served in order and its
    last one repeats, which is how a batch 'finishes' after N requests."""

    def __init__(self) -> None:
        self.requests: list[Request] = []
        self._routes: dict[tuple[str, str], list[Answer]] = {}
        self._lock = threading.Lock()

    def on(self, method: str, path: str, *answers: Answer) -> None:
        self._routes[(method, path)] = list(answers)

    def respond(self, request: Request) -> Answer:
        with self._lock:
            self.requests.append(request)
            answers = self._routes.get((request.method, request.path))
            if not answers:
                return 404, error("not_found", f"no route {request.method} {request.path}")
            return answers.pop(0) if len(answers) > 1 else answers[0]

    def sent(self, method: str, path: str) -> list[Request]:
        return [r for r in self.requests if (r.method, r.path) == (method, path)]


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as httpx expects
    server: _Server

    def do_GET(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        url = urlsplit(self.path)
        request = Request(self.command, url.path, dict(parse_qsl(url.query)),
                          {k.lower(): v for k, v in self.headers.items()},
                          json.loads(raw) if raw else None)
        status, body = self.server.fake.respond(request)
        if isinstance(body, Held):
            body.release.wait(30)
            body = body.answer
        if isinstance(body, Stream):
            self.send_response(status)
            self.send_header("Content-Type", "application/x-ndjson")
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            data = body.text.encode()
            self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
            self.wfile.flush()
            body.release.wait(30)
            if body.end:
                self.wfile.write(b"0\r\n\r\n")
            self.close_connection = True
            return
        if isinstance(body, str):
            payload, ctype = body.encode(), "text/plain"
        else:
            payload, ctype = json.dumps(body).encode(), "application/json"
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    do_POST = do_GET

    def address_string(self) -> str:  # a Unix peer has no host
        return "unix"

    def log_message(self, format: str, *args: Any) -> None:
        pass


class _Server(ThreadingMixIn, UnixStreamServer):
    daemon_threads = True
    block_on_close = False
    fake: FakeQjobd


@pytest.fixture
def sock_dir() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(dir="/tmp", prefix="qjobctl-"))  # AF_UNIX: 108 bytes
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def fake(sock_dir: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeQjobd]:
    sock = sock_dir / "qjobd.sock"
    server = _Server(str(sock), _Handler)
    server.fake = FakeQjobd()
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.01})
    thread.start()
    monkeypatch.setenv("QJOBD_SOCKET", str(sock))
    # The fake answers long-polls at once; don't pace or back off against it.
    monkeypatch.setattr(ctl, "MIN_ROUND", 0.0)
    monkeypatch.setattr(ctl, "RECONNECT_DELAY", 0.0)
    try:
        yield server.fake
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


# -- SPEC-shaped answers ---------------------------------------------------------------


def error(code: str, message: str, details: Any = None) -> dict[str, Any]:
    return {"error": {"code": code, "message": message, "details": details}}


def job(jid: str, state: str, labels: list[str], **extra: Any) -> dict[str, Any]:
    return {"id": jid, "remote_id": extra.get("remote_id"), "state": state,
            "remote_status": extra.get("remote_status"), "labels": labels,
            "error": extra.get("error"), "next_poll_at": None}


def batch(bid: str = "b1", state: str = "running", jobs: list[dict[str, Any]] | None = None,
          **extra: Any) -> dict[str, Any]:
    out = {"id": bid, "state": state, "backend": "local", "shots": 100, "name": None,
           "tags": {}, "owner": 1000, "created_at": "2025-01-02T03:04:05Z",
           "updated_at": "2025-01-02T03:04:06Z", "finished_at": None, "error": None,
           "jobs": jobs if jobs is not None else [job("j1", state, ["bell"])]}
    out.update(extra)
    return out


def results_answer(state: str = "completed") -> dict[str, Any]:
    return {"id": "b1", "state": state, "results": {
        "bell": {"counts": {"00": 48, "11": 52}, "shots": 100, "job_id": "j1"},
        "ghz": {"counts": {"111": 10, "000": 70, "001": 20}, "shots": 100, "job_id": "j2"},
    }}


BELL = "OPENQASM 3.0;\nqubit[2] q;\nbit[2] c;\nh q[0];\ncx q[0], q[1];\nc = measure q;\n"


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = ctl.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


# -- submit ----------------------------------------------------------------------------


def test_submit_sends_labels_from_files_and_all_options(fake, tmp_path, capsys, monkeypatch):
    fake.on("POST", "/v1/batches", (201, batch()))
    (tmp_path / "bell.qasm").write_text(BELL)
    (tmp_path / "more.json").write_text(json.dumps({"ghz": "OPENQASM 2.0; // ghz"}))
    monkeypatch.setattr("sys.stdin", io.StringIO("OPENQASM 3.0; // piped"))

    code, out, err = run(capsys, "submit", str(tmp_path / "bell.qasm"),
                         str(tmp_path / "more.json"), "-", "--backend", "ionq",
                         "--shots", "1000", "--name", "exp", "--tag", "team=q",
                         "--tag", "run=a=b", "--timeout", "86400", "--option", "n=3",
                         "--option", "noise=true", "--option", "mode=fast",
                         "--idempotency-key", "key-1")

    assert (code, out, err) == (0, "b1\n", "")
    [req] = fake.sent("POST", "/v1/batches")
    assert req.body == {
        "backend": "ionq",
        "circuits": {"bell": BELL, "ghz": "OPENQASM 2.0; // ghz",
                     "stdin": "OPENQASM 3.0; // piped"},
        "shots": 1000, "name": "exp", "tags": {"team": "q", "run": "a=b"},
        "timeout": 86400, "options": {"n": 3, "noise": True, "mode": "fast"},
    }
    assert req.headers["idempotency-key"] == "key-1"
    assert req.headers["content-type"] == "application/json"


def test_submit_omits_unset_fields_and_prints_batch_json(fake, tmp_path, capsys):
    fake.on("POST", "/v1/batches", (201, batch()))
    (tmp_path / "bell.qasm").write_text(BELL)

    code, out, _ = run(capsys, "submit", str(tmp_path / "bell.qasm"), "--backend", "local",
                       "--json")

    assert code == 0
    assert json.loads(out) == batch()
    [req] = fake.requests
    assert req.body == {"backend": "local", "circuits": {"bell": BELL}}
    assert "idempotency-key" not in req.headers


def test_submit_reads_a_json_map_from_stdin(fake, capsys, monkeypatch):
    fake.on("POST", "/v1/batches", (201, batch()))
    monkeypatch.setattr("sys.stdin", io.StringIO('  {"a": "OPENQASM 3.0;", "b": "x"}'))

    assert run(capsys, "submit", "-", "--backend", "local")[0] == 0
    assert fake.requests[0].body["circuits"] == {"a": "OPENQASM 3.0;", "b": "x"}


def test_submit_rejects_duplicate_labels_before_sending(fake, tmp_path, capsys):
    (tmp_path / "bell.qasm").write_text(BELL)
    (tmp_path / "set.json").write_text(json.dumps({"bell": BELL}))

    code, out, err = run(capsys, "submit", str(tmp_path / "bell.qasm"),
                         str(tmp_path / "set.json"), "--backend", "local")

    assert code == 2
    assert out == ""
    assert err.startswith("qjobctl: error: duplicate circuit label 'bell'")
    assert "bell.qasm" in err and "set.json" in err
    assert fake.requests == []


@pytest.mark.parametrize("content", [None, "[1, 2]", "{not json", '{"a": 1}'])
def test_submit_rejects_unreadable_or_malformed_files(fake, tmp_path, capsys, content):
    path = tmp_path / "circuits.json"
    if content is not None:
        path.write_text(content)

    code, _, err = run(capsys, "submit", str(path), "--backend", "local")

    assert code == 2
    assert err.startswith("qjobctl: error: ") and str(path) in err
    assert fake.requests == []


def test_submit_reports_invalid_qasm_with_label_position_and_file(fake, tmp_path, capsys):
    # As the daemon words it: the message repeats the first of the details.
    message = "circuit 'bell', line 3, column 5: unknown gate 'hh'"
    details = [{"label": "bell", "line": 3, "column": 5, "reason": "unknown gate 'hh'"}]
    fake.on("POST", "/v1/batches", (422, error("invalid_qasm", message, details)))
    (tmp_path / "bell.qasm").write_text(BELL)

    code, out, err = run(capsys, "submit", str(tmp_path / "bell.qasm"), "--backend", "local")

    assert (code, out) == (1, "")
    assert err.splitlines() == [
        "qjobctl: error: invalid OpenQASM (invalid_qasm, HTTP 422)",
        f"  circuit 'bell' ({tmp_path / 'bell.qasm'}), line 3, column 5: unknown gate 'hh'",
    ]


def test_submit_wait_waits_then_prints_results(fake, tmp_path, capsys):
    fake.on("POST", "/v1/batches", (201, batch()))
    fake.on("GET", "/v1/batches/b1/wait", (200, batch()), (200, batch(state="completed")))
    fake.on("GET", "/v1/batches/b1/results", (200, results_answer()))
    (tmp_path / "bell.qasm").write_text(BELL)

    code, out, _ = run(capsys, "submit", str(tmp_path / "bell.qasm"), "--backend", "local",
                       "--wait")

    assert code == 0
    assert out.startswith("b1\nb1 completed\nbell (100 shots, job j1):\n  11  52\n  00  48\n")
    assert len(fake.sent("GET", "/v1/batches/b1/wait")) == 2


def test_submit_wait_json_prints_batch_and_results_and_fails_on_failed(fake, tmp_path,
                                                                         capsys):
    fake.on("POST", "/v1/batches", (201, batch()))
    fake.on("GET", "/v1/batches/b1/wait", (200, batch(state="failed")))
    fake.on("GET", "/v1/batches/b1/results", (200, results_answer("failed")))
    (tmp_path / "bell.qasm").write_text(BELL)

    code, out, _ = run(capsys, "--json", "submit", str(tmp_path / "bell.qasm"),
                       "--backend", "local", "--wait")

    assert code == 1
    assert json.loads(out) == {"batch": batch(state="failed"),
                               "results": results_answer("failed")}


@pytest.mark.parametrize("argv", [["--tag", "novalue"], ["--shots", "0"], ["--timeout", "x"]])
def test_submit_bad_arguments_are_usage_errors(fake, tmp_path, capsys, argv):
    (tmp_path / "bell.qasm").write_text(BELL)
    code, _, err = run(capsys, "submit", str(tmp_path / "bell.qasm"), "--backend", "l", *argv)
    assert code == 2
    assert "qjobctl submit: error:" in err
    assert fake.requests == []


# -- list / show -----------------------------------------------------------------------


def test_list_prints_a_table_and_passes_filters(fake, capsys):
    jobs = [job("j1", "completed", ["a"]), job("j2", "running", ["b"])]
    fake.on("GET", "/v1/batches", (200, {
        "batches": [batch("b2", jobs=jobs, name="exp"), batch("b1", state="completed")],
        "next_cursor": "c2"}))

    code, out, err = run(capsys, "list", "--state", "running", "--backend", "local",
                         "--limit", "2")

    assert code == 0
    assert out.splitlines() == [
        "ID  STATE      BACKEND  JOBS  NAME  CREATED",
        "b2  running    local    1/2   exp   2025-01-02T03:04:05Z",
        "b1  completed  local    1/1   -     2025-01-02T03:04:05Z",
    ]
    assert "--cursor c2" in err
    assert [r.query for r in fake.requests] == [
        {"state": "running", "backend": "local", "limit": "2"}]


def test_list_all_follows_next_cursor(fake, capsys):
    fake.on("GET", "/v1/batches",
            (200, {"batches": [batch("b3")], "next_cursor": "c1"}),
            (200, {"batches": [batch("b2")], "next_cursor": "c2"}),
            (200, {"batches": [batch("b1")], "next_cursor": None}))

    code, out, _ = run(capsys, "list", "--all", "--json")

    assert code == 0
    assert [b["id"] for b in json.loads(out)["batches"]] == ["b3", "b2", "b1"]
    assert [r.query.get("cursor") for r in fake.requests] == [None, "c1", "c2"]


def test_show_prints_batch_fields_and_jobs(fake, capsys):
    jobs = [job("j1", "completed", ["bell", "ghz"], remote_id="r-1", remote_status="done"),
            job("j2", "failed", ["x"], error={"code": "rejected", "message": "too wide"})]
    fake.on("GET", "/v1/batches/b1",
            (200, batch(state="failed", jobs=jobs, name="exp", tags={"team": "q"})))

    code, out, _ = run(capsys, "show", "b1")

    assert code == 0
    lines = out.splitlines()
    assert "ID:        b1" in lines
    assert "State:     failed" in lines
    assert "Tags:      team=q" in lines
    assert "Finished:  -" in lines
    assert lines[-3:] == [
        "JOB ID  STATE      REMOTE ID  REMOTE STATUS  LABELS    ERROR",
        "j1      completed  r-1        done           bell,ghz  -",
        "j2      failed     -          -              x         too wide (rejected)",
    ]


def test_show_unknown_id_is_an_api_error(fake, capsys):
    fake.on("GET", "/v1/batches/nope", (404, error("not_found", "no batch 'nope'")))
    code, out, err = run(capsys, "show", "nope")
    assert (code, out) == (1, "")
    assert err == "qjobctl: error: no batch 'nope' (not_found, HTTP 404)\n"


def test_ids_are_escaped_in_paths(fake, capsys):
    run(capsys, "show", "../health")
    assert fake.requests[0].path == "/v1/batches/..%2Fhealth"


# -- results ---------------------------------------------------------------------------


def test_results_json_is_the_api_answer(fake, capsys):
    fake.on("GET", "/v1/batches/b1/results", (200, results_answer()))
    code, out, _ = run(capsys, "results", "b1", "--format", "json")
    assert code == 0
    assert json.loads(out) == results_answer()


def test_results_csv_is_sorted_by_label_then_bitstring(fake, capsys):
    fake.on("GET", "/v1/batches/b1/results", (200, results_answer()))
    code, out, _ = run(capsys, "results", "b1", "--format", "csv")
    assert code == 0
    assert out == ("label,bitstring,count\nbell,00,48\nbell,11,52\n"
                   "ghz,000,70\nghz,001,20\nghz,111,10\n")


def test_results_human_sorts_counts_by_frequency(fake, capsys):
    fake.on("GET", "/v1/batches/b1/results", (200, results_answer()))
    code, out, _ = run(capsys, "results", "b1")
    assert code == 0
    assert out == ("bell (100 shots, job j1):\n  11  52\n  00  48\n"
                   "ghz (100 shots, job j2):\n  000  70\n  001  20\n  111  10\n")


def test_results_of_an_unfinished_batch_say_so(fake, capsys):
    fake.on("GET", "/v1/batches/b1/results",
            (409, error("not_terminal", "batch is running", {"state": "running"})))
    code, out, err = run(capsys, "results", "b1")
    assert (code, out) == (1, "")
    assert "batch b1 is not finished yet (state: running)" in err
    assert "qjobctl wait b1" in err


def test_results_of_a_failed_batch_are_printed_as_partial(fake, capsys):
    fake.on("GET", "/v1/batches/b1/results", (200, results_answer("failed")))
    code, out, err = run(capsys, "results", "b1", "--format", "csv")
    assert code == 1
    assert out.startswith("label,bitstring,count\n")
    assert "partial" in err


# -- cancel / health / events ----------------------------------------------------------


def test_cancel_prints_each_state_and_fails_if_any_failed(fake, capsys):
    fake.on("POST", "/v1/batches/b1/cancel", (202, batch(state="running")))
    fake.on("POST", "/v1/batches/b2/cancel", (200, batch("b2", state="canceled")))

    code, out, err = run(capsys, "cancel", "b1", "nope", "b2")

    assert code == 1
    assert out == "b1 running\nb2 canceled\n"
    assert err.startswith("qjobctl: error: nope: ")


def test_cancel_json_prints_one_answer_per_line(fake, capsys):
    fake.on("POST", "/v1/batches/b2/cancel", (200, batch("b2", state="canceled")))
    code, out, _ = run(capsys, "cancel", "b2", "--json")
    assert code == 0
    assert [json.loads(line) for line in out.splitlines()] == [batch("b2", state="canceled")]


HEALTH = {  # the shape daemon/api.py answers
    "status": "ok", "version": "0.1.0", "pid": 42, "uptime": 3725.5,
    "batches": {"queued": 0, "running": 2, "completed": 7},
    "jobs": {"queued": 0, "running": 3, "completed": 0},
    "backends": {"local": {"type": "local", "in_flight": 3, "last_error": None},
                 "ionq": {"type": "ionq", "in_flight": 0, "paused_for": 12.5}},
}


def test_health_human_summary(fake, capsys):
    fake.on("GET", "/v1/health", (200, HEALTH))
    code, out, _ = run(capsys, "health")
    assert code == 0
    assert out.splitlines() == [
        "qjobd 0.1.0 (ok), up 1h 2m",
        "batches: running 2, completed 7",
        "jobs: running 3",
        "backends:",
        "  local  type=local in_flight=3",
        "  ionq   type=ionq in_flight=0 paused_for=12.5",
    ]


def test_health_json_is_the_api_answer(fake, capsys):
    fake.on("GET", "/v1/health", (200, HEALTH))
    code, out, _ = run(capsys, "--json", "health")
    assert (code, json.loads(out)) == (0, HEALTH)


def test_events_prints_lines_and_asks_for_no_follow(fake, capsys):
    events = [  # the shape of daemon/views.py's event_view
        {"seq": 1, "ts": "2025-01-02T03:04:05Z", "batch_id": "b1", "job_id": None,
         "kind": "batch", "state": "queued", "detail": None},
        {"seq": 2, "ts": "2025-01-02T03:04:06Z", "batch_id": "b1", "job_id": "j1",
         "kind": "job", "state": "submitted", "detail": None},
    ]
    fake.on("GET", "/v1/events", (200, "".join(json.dumps(e) + "\n" for e in events)))

    code, out, _ = run(capsys, "events", "--since", "0")

    assert code == 0
    assert out == ("1 2025-01-02T03:04:05Z b1 batch queued\n"
                   "2 2025-01-02T03:04:06Z b1/j1 job submitted\n")
    assert fake.requests[0].query == {"since": "0", "follow": "false"}


def test_events_json_passes_lines_through(fake, capsys):
    fake.on("GET", "/v1/events", (200, '{"seq": 7, "state": "running"}\n\n'))
    code, out, _ = run(capsys, "events", "--json")
    assert (code, out) == (0, '{"seq":7,"state":"running"}\n')
    assert fake.requests[0].query == {"follow": "false"}


# -- errors ----------------------------------------------------------------------------


def test_missing_socket_exits_3_naming_the_socket(sock_dir, capsys):
    sock = sock_dir / "absent.sock"
    code, out, err = run(capsys, "--socket", str(sock), "health")
    assert (code, out) == (3, "")
    assert str(sock) in err and "no such socket" in err
    assert "make run" in err and "systemctl start qjobd" in err


def test_stale_socket_exits_3_as_connection_refused(sock_dir, capsys):
    sock = sock_dir / "stale.sock"
    with socket.socket(socket.AF_UNIX) as s:
        s.bind(str(sock))  # bound, never listening: what a crashed daemon leaves
    code, _, err = run(capsys, "list", "--socket", str(sock))
    assert code == 3
    assert f"cannot reach qjobd at {sock}: connection refused" in err


def test_non_envelope_error_answers_still_become_api_errors(fake, capsys):
    fake.on("GET", "/v1/health", (502, "bad gateway"))
    code, _, err = run(capsys, "health")
    assert code == 1
    assert err == "qjobctl: error: bad gateway (http_502, HTTP 502)\n"


def test_api_error_str_lists_every_qasm_problem() -> None:
    exc = ApiError(422, "invalid_qasm", "invalid QASM", [
        {"label": "a", "line": 1, "column": 2, "reason": "bad"},
        {"label": "b", "line": None, "column": None, "reason": "empty"},
    ])
    assert str(exc) == ("invalid QASM (invalid_qasm, HTTP 422)\n"
                        "  circuit 'a', line 1, column 2: bad\n"
                        "  circuit 'b': empty")
    assert str(ApiError(413, "too_large", "too big", {"limit": 10})) == (
        "too big (too_large, HTTP 413)\n  limit: 10")
    assert format_error_details(None) == []


def test_socket_resolution_order(monkeypatch, tmp_path):
    monkeypatch.setenv("QJOBD_SOCKET", "/env.sock")
    assert resolve_socket_path("/arg.sock") == Path("/arg.sock")
    assert resolve_socket_path() == Path("/env.sock")
    monkeypatch.delenv("QJOBD_SOCKET")
    config = tmp_path / "qjobd.toml"
    config.write_text('[daemon]\nsocket = "/cfg.sock"\n')
    monkeypatch.setenv("QJOBD_CONFIG", str(config))
    assert resolve_socket_path() == Path("/cfg.sock")
    config.write_text("[daemon\n")  # broken: guessing could reach another daemon
    with pytest.raises(SocketConfigError, match=r"\$QJOBD_CONFIG names .*invalid TOML"):
        resolve_socket_path()
    assert resolve_socket_path("/arg.sock") == Path("/arg.sock")  # never read then
    monkeypatch.delenv("QJOBD_CONFIG")
    monkeypatch.setattr(config_module, "SYSTEM_CONFIG", tmp_path / "absent.toml")
    assert resolve_socket_path() == default_socket_path()


def test_client_is_usable_as_a_library(fake):
    fake.on("GET", "/v1/batches/b1/wait", (200, batch(state="completed")))
    with Client() as client:
        assert client.wait("b1", timeout=2.5)["state"] == "completed"
    assert fake.requests[0].query == {"timeout": "2.5"}


def test_client_splits_long_waits_into_polls_the_daemon_accepts(fake, monkeypatch):
    monkeypatch.setattr(client_module, "MAX_LONG_POLL", 1.0)
    fake.on("GET", "/v1/batches/b1/wait", (200, batch()), (200, batch()),
            (200, batch(state="completed")))
    with Client() as client:
        assert client.wait("b1", timeout=3600)["state"] == "completed"
    assert [r.query for r in fake.requests] == [{"timeout": "1"}] * 3


# -- wait ------------------------------------------------------------------------------


def test_wait_exits_0_when_the_batch_completes(fake, capsys):
    fake.on("GET", "/v1/batches/b1/wait", (200, batch()), (200, batch()),
            (200, batch(state="completed")))

    code, out, err = run(capsys, "wait", "b1")

    assert (code, out, err) == (0, "b1 completed\n", "")
    polls = fake.sent("GET", "/v1/batches/b1/wait")
    assert len(polls) == 3
    assert polls[0].query == {"timeout": str(int(ctl.LONG_POLL))}


def test_wait_exits_1_when_any_batch_ends_otherwise(fake, capsys):
    fake.on("GET", "/v1/batches/b1/wait", (200, batch()), (200, batch(state="completed")))
    fake.on("GET", "/v1/batches/b2", (200, batch("b2", state="failed")))

    code, out, _ = run(capsys, "wait", "b1", "b2")

    assert code == 1
    assert out == "b2 failed\nb1 completed\n"
    # With several batches the long-poll is short, so the others are refreshed often.
    assert fake.sent("GET", "/v1/batches/b1/wait")[0].query == {"timeout": "1"}


def test_wait_exits_124_and_names_unfinished_batches_on_timeout(fake, capsys):
    fake.on("GET", "/v1/batches/b1/wait", (200, batch()))
    fake.on("GET", "/v1/batches/b2", (200, batch("b2", state="completed")))

    code, out, err = run(capsys, "wait", "b1", "b2", "--timeout", "0")

    assert code == 124
    assert out == "b2 completed\n"
    assert err == "qjobctl: error: timed out after 0 s; unfinished: b1 (running)\n"
    assert fake.sent("GET", "/v1/batches/b1/wait")[0].query == {"timeout": "0"}


def test_wait_json_prints_final_batches_in_argument_order(fake, capsys):
    fake.on("GET", "/v1/batches/b1/wait", (200, batch(state="completed")))
    fake.on("GET", "/v1/batches/b2", (200, batch("b2", state="completed")))
    code, out, _ = run(capsys, "--json", "wait", "b1", "b2")
    assert code == 0
    assert [json.loads(line)["id"] for line in out.splitlines()] == ["b1", "b2"]


def test_wait_rides_out_a_daemon_restart(fake, capsys, monkeypatch):
    fake.on("GET", "/v1/batches/b1/wait", (200, batch()), (200, batch(state="completed")))
    real_wait = Client.wait
    calls = []

    def flaky_wait(self: Client, batch_id: str, timeout: float) -> dict[str, Any]:
        calls.append(batch_id)
        if len(calls) == 2:
            raise DaemonUnreachable(self.socket_path, "no such socket")
        return real_wait(self, batch_id, timeout)

    monkeypatch.setattr(Client, "wait", flaky_wait)

    code, out, err = run(capsys, "wait", "b1")

    assert (code, out) == (0, "b1 completed\n")
    assert "lost contact with qjobd" in err
    assert len(calls) == 3


def test_wait_with_a_terminal_draws_progress_bars(fake, capsys, monkeypatch):
    monkeypatch.setattr(ctl, "_stdout_is_tty", lambda: True)
    jobs = [job("j1", "completed", ["a"]), job("j2", "running", ["b"])]
    fake.on("GET", "/v1/batches/b1/wait", (200, batch(jobs=jobs)),
            (200, batch(state="completed", jobs=[job("j1", "completed", ["a"]),
                                                 job("j2", "completed", ["b"])])))

    code, out, _ = run(capsys, "wait", "b1")

    assert code == 0
    assert "b1" in out and "2/2" in out and "completed" in out
    assert fake.sent("GET", "/v1/batches/b1/wait")[0].query == {"timeout": "1"}


def test_wait_for_an_unknown_batch_is_an_api_error(fake, capsys):
    code, _, err = run(capsys, "wait", "nope")
    assert code == 1
    assert "HTTP 404" in err


def test_help_documents_exit_codes(capsys):
    code, out, _ = run(capsys, "--help")
    assert code == 0
    assert "124" in out and "daemon answered with an error" in out
    assert "124" in (ctl.__doc__ or "")
    assert "4    events --follow: qjobd closed the stream" in out
    assert "$QJOBD_CONFIG" in out and "130  interrupted" in out


# -- --json failures: one JSON error object on stdout ---------------------------------


def json_error(out: str) -> dict[str, Any]:
    """The last stdout line, which must be an {"error": {...}} object."""
    doc = json.loads(out.splitlines()[-1])
    assert set(doc["error"]) == {"code", "message", "details"}
    return doc


def test_json_api_error_prints_the_daemons_error_answer_as_is(fake, capsys):
    answer = error("not_found", "no batch nope", {"id": "nope"})
    fake.on("GET", "/v1/batches/nope", (404, answer))

    code, out, err = run(capsys, "--json", "show", "nope")

    assert code == 1
    assert json.loads(out) == answer
    assert err == "qjobctl: error: no batch nope (not_found, HTTP 404)\n  id: nope\n"


def test_json_submit_rejected_prints_the_422_answer(fake, tmp_path, capsys):
    details = [{"label": "bell", "line": 3, "column": 5, "reason": "unknown gate 'hh'"}]
    answer = error("invalid_qasm", "circuit 'bell', line 3, column 5: unknown gate 'hh'",
                   details)
    fake.on("POST", "/v1/batches", (422, answer))
    (tmp_path / "bell.qasm").write_text(BELL)

    code, out, err = run(capsys, "submit", str(tmp_path / "bell.qasm"), "--backend", "l",
                         "--json")

    assert (code, json.loads(out)) == (1, answer)
    assert "invalid OpenQASM (invalid_qasm, HTTP 422)" in err


def test_json_results_of_an_unfinished_batch_prints_the_409(fake, capsys):
    answer = error("not_terminal", "batch b1 is running", {"state": "running"})
    fake.on("GET", "/v1/batches/b1/results", (409, answer))
    code, out, err = run(capsys, "results", "b1", "--json")
    assert (code, json.loads(out)) == (1, answer)
    assert "not finished yet (state: running)" in err


def test_json_cancel_prints_an_error_line_naming_the_batch(fake, capsys):
    fake.on("POST", "/v1/batches/b1/cancel", (202, batch(state="running")))
    fake.on("POST", "/v1/batches/b2/cancel", (403, error("forbidden", "not yours")))

    code, out, err = run(capsys, "--json", "cancel", "b1", "b2")

    assert code == 1
    first, second = map(json.loads, out.splitlines())
    assert first["id"] == "b1"
    assert second == {"id": "b2", **error("forbidden", "not yours")}
    assert err == "qjobctl: error: b2: not yours (forbidden, HTTP 403)\n"


def test_json_unreachable_daemon_prints_an_error_object(sock_dir, capsys):
    sock = sock_dir / "absent.sock"

    code, out, err = run(capsys, "--json", "--socket", str(sock), "list")

    assert code == 3
    doc = json_error(out)["error"]
    assert doc["code"] == "daemon_unreachable"
    assert doc["details"] == {"socket": str(sock), "reason": "no such socket"}
    assert doc["message"] in err and f"cannot reach qjobd at {sock}" in err


@pytest.mark.parametrize(("argv", "expected"), [
    (["--json", "list", "--limit", "0"], "argument --limit: must be > 0, got 0"),
    (["wait", "--json"], "the following arguments are required: ID"),
    (["--json", "nosuch"], "invalid choice: 'nosuch'"),
    (["--json"], "the following arguments are required: COMMAND"),
])
def test_json_usage_error_prints_an_error_object(fake, capsys, argv, expected):
    code, out, err = run(capsys, *argv)

    assert code == 2
    doc = json_error(out)["error"]
    assert doc["code"] == "usage_error" and expected in doc["message"]
    assert err.startswith("usage: qjobctl")  # argparse's own report, unchanged
    assert f"error: {doc['message']}\n" in err
    assert fake.requests == []


def test_usage_error_without_json_prints_nothing_on_stdout(fake, capsys):
    code, out, err = run(capsys, "list", "--limit", "0")
    assert (code, out) == (2, "")
    assert "qjobctl list: error: argument --limit" in err


def test_json_bad_local_input_prints_an_error_object(fake, tmp_path, capsys):
    missing = tmp_path / "missing.qasm"
    code, out, err = run(capsys, "--json", "submit", str(missing), "--backend", "l")
    assert code == 2
    doc = json_error(out)["error"]
    assert doc["code"] == "invalid_input" and str(missing) in doc["message"]
    assert err == f"qjobctl: error: {doc['message']}\n"


# -- $QJOBD_CONFIG: a file named but unusable is an error, never a guess --------------


@pytest.fixture
def default_socket_is_the_fake(fake, sock_dir, tmp_path, monkeypatch):
    """Make the built-in default socket lead to the fake too, so a client that fell back
    to the default would be seen reaching it."""
    runtime = tmp_path / "runtime"
    (runtime / "qjobd").mkdir(parents=True)
    (runtime / "qjobd" / "qjobd.sock").symlink_to(sock_dir / "qjobd.sock")
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(runtime))
    monkeypatch.delenv("RUNTIME_DIRECTORY", raising=False)
    monkeypatch.delenv("QJOBD_SOCKET")
    monkeypatch.setattr(config_module, "SYSTEM_CONFIG", tmp_path / "etc" / "absent.toml")
    fake.on("GET", "/v1/health", (200, {"version": "x"}))
    return fake


def test_the_default_socket_trap_works(default_socket_is_the_fake, capsys):
    assert run(capsys, "health")[0] == 0  # no config at all: the default, rightly
    assert len(default_socket_is_the_fake.requests) == 1


def test_qjobd_config_naming_a_missing_file_is_an_error(default_socket_is_the_fake, tmp_path,
                                                        capsys, monkeypatch):
    missing = tmp_path / "nope.toml"
    monkeypatch.setenv("QJOBD_CONFIG", str(missing))

    code, out, err = run(capsys, "health")

    assert (code, out) == (2, "")
    assert err.startswith(f"qjobctl: error: $QJOBD_CONFIG names {missing}: no such file")
    assert "--socket or $QJOBD_SOCKET" in err
    assert default_socket_is_the_fake.requests == []  # no batch goes astray


@pytest.mark.parametrize(("toml", "reason"), [
    ("[daemon\n", "invalid TOML"),
    ('[daemon]\nsocket = "/x.sock"\nsockt_mode = "0600"\n', "unknown key(s) sockt_mode"),
], ids=["invalid-toml", "unknown-key"])
def test_qjobd_config_naming_an_invalid_file_is_an_error(default_socket_is_the_fake,
                                                         tmp_path, capsys, monkeypatch,
                                                         toml, reason):
    path = tmp_path / "bad.toml"
    path.write_text(toml)
    monkeypatch.setenv("QJOBD_CONFIG", str(path))

    code, out, err = run(capsys, "--json", "health")

    assert code == 2
    assert err.startswith(f"qjobctl: error: $QJOBD_CONFIG names {path}: ") and reason in err
    doc = json_error(out)["error"]
    assert doc["code"] == "config_error"
    assert doc["details"]["file"] == str(path)
    assert doc["details"]["variable"] == "QJOBD_CONFIG"
    assert default_socket_is_the_fake.requests == []


def test_an_explicit_socket_wins_without_reading_a_broken_config(default_socket_is_the_fake,
                                                                 sock_dir, tmp_path, capsys,
                                                                 monkeypatch):
    monkeypatch.setenv("QJOBD_CONFIG", str(tmp_path / "nope.toml"))
    assert run(capsys, "--socket", str(sock_dir / "qjobd.sock"), "health")[0] == 0
    monkeypatch.setenv("QJOBD_SOCKET", str(sock_dir / "qjobd.sock"))
    assert run(capsys, "health")[0] == 0
    assert len(default_socket_is_the_fake.requests) == 2


def test_a_broken_system_config_is_an_error_too(default_socket_is_the_fake, tmp_path,
                                                capsys, monkeypatch):
    system = tmp_path / "etc" / "qjobd.toml"
    system.parent.mkdir()
    system.write_text("[daemon]\nsocket = 7\n")
    monkeypatch.setattr(config_module, "SYSTEM_CONFIG", system)

    code, _, err = run(capsys, "health")

    assert code == 2
    assert err.startswith(f"qjobctl: error: {system}: [daemon] socket: must be a string")
    assert "$QJOBD_CONFIG" not in err
    assert default_socket_is_the_fake.requests == []


# -- an interrupted wait, an ended event stream: said, with a distinct status ---------


def test_wait_interrupted_says_the_batches_keep_running(fake, capsys, monkeypatch):
    fake.on("GET", "/v1/batches/b1/wait", (200, batch()))
    fake.on("GET", "/v1/batches/b2", (200, batch("b2", state="completed")))
    fake.on("GET", "/v1/batches/b3", (200, batch("b3", state="queued")))
    real_wait = Client.wait
    calls = []

    def wait_then_ctrl_c(self: Client, batch_id: str, timeout: float) -> dict[str, Any]:
        calls.append(batch_id)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real_wait(self, batch_id, timeout)

    monkeypatch.setattr(Client, "wait", wait_then_ctrl_c)

    code, out, err = run(capsys, "wait", "b1", "b2", "b3")

    assert code == 130
    assert out == "b2 completed\n"
    assert err == ("\nqjobctl: wait interrupted; the batches keep running in qjobd: "
                   "b1 (running), b3 (queued); `qjobctl wait b1 b3` waits again\n")


def test_submit_wait_interrupted_json_says_so_on_stdout(fake, tmp_path, capsys, monkeypatch):
    fake.on("POST", "/v1/batches", (201, batch()))

    def ctrl_c(self: Client, batch_id: str, timeout: float) -> dict[str, Any]:
        raise KeyboardInterrupt

    monkeypatch.setattr(Client, "wait", ctrl_c)
    (tmp_path / "bell.qasm").write_text(BELL)

    code, out, err = run(capsys, "--json", "submit", str(tmp_path / "bell.qasm"),
                         "--backend", "local", "--wait")

    assert code == 130
    doc = json_error(out)["error"]
    assert doc["code"] == "interrupted" and doc["details"] == {"unfinished": ["b1"]}
    assert "`qjobctl wait b1` waits again" in err


def _until(predicate: Callable[[], object], limit: float, what: str) -> None:
    deadline = time.monotonic() + limit
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


def test_ctrl_c_on_a_real_qjobctl_wait_exits_130_saying_how_to_resume(fake):
    held = Held((200, batch()))  # the long-poll the daemon is still holding
    fake.on("GET", "/v1/batches/b1/wait", (200, held))
    proc = subprocess.Popen([str(QJOBCTL), "wait", "b1"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        _until(lambda: fake.sent("GET", "/v1/batches/b1/wait") or proc.poll() is not None,
               30, "qjobctl's long-poll")
        assert proc.poll() is None, proc.communicate()
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=30)
    finally:
        held.release.set()
        if proc.poll() is None:
            proc.kill()
            proc.communicate()

    assert proc.returncode == 130
    assert out == ""
    assert "wait interrupted; the batches keep running in qjobd: b1;" in err
    assert "`qjobctl wait b1` waits again" in err
    assert "Traceback" not in err


def test_events_follow_ended_by_the_daemon_exits_4_saying_so(fake):
    first = {"seq": 41, "ts": "2025-01-02T03:04:05Z", "batch_id": "b1", "job_id": None,
             "kind": "batch", "state": "running", "detail": None}
    stream = Stream(json.dumps(first) + "\n")
    fake.on("GET", "/v1/events", (200, stream))
    proc = subprocess.Popen([str(QJOBCTL), "events", "--follow"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()  # flushed per event; the stream stays open
        assert line == "41 2025-01-02T03:04:05Z b1 batch running\n"
        assert proc.poll() is None  # still following
        stream.release.set()  # the daemon stops: it ends the stream cleanly
        rest, err = proc.communicate(timeout=30)
    finally:
        stream.release.set()
        if proc.poll() is None:
            proc.kill()
            proc.communicate()

    assert (proc.returncode, rest) == (4, "")
    assert err == ("qjobctl: error: the event stream ended: qjobd closed it (it stopped or "
                   "is restarting); `qjobctl events --follow --since 41` goes on after the "
                   "last event shown\n")


def test_events_follow_json_when_the_connection_breaks(fake, capsys):
    stream = Stream('{"seq": 7, "state": "running"}\n', end=False)
    stream.release.set()
    fake.on("GET", "/v1/events", (200, stream))

    code, out, err = run(capsys, "events", "--follow", "--since", "3", "--json")

    assert code == 4
    assert out.splitlines()[0] == '{"seq":7,"state":"running"}'
    doc = json_error(out)["error"]
    assert doc["code"] == "stream_closed" and doc["details"] == {"last_seq": 7}
    assert "the event stream ended: the connection broke" in err
    assert "`qjobctl events --follow --since 7`" in err


def test_events_follow_with_no_daemon_is_unreachable_not_ended(sock_dir, capsys):
    code, _, err = run(capsys, "--socket", str(sock_dir / "absent.sock"), "events",
                       "--follow")
    assert code == 3
    assert "no such socket" in err


# -- results --plot -----------------------------------------------------------------------


def test_results_plot_draws_each_circuits_histogram_in_the_terminal(fake, capsys):
    fake.on("GET", "/v1/batches/b1/results", (200, results_answer()))
    code, out, _ = run(capsys, "results", "b1", "--plot")
    assert code == 0
    bell, ghz = out.strip().split("\n\n")
    assert bell.splitlines()[0] == "bell (100 shots)"
    # by bitstring, each bar as long as its share of the circuit's most frequent outcome
    rows = [line.split() for line in bell.splitlines()[1:]]
    assert [r[0] for r in rows] == ["00", "11"] and [r[-2] for r in rows] == ["48", "52"]
    assert ghz.splitlines()[0] == "ghz (100 shots)"
    bars = {line.split()[0]: line.split()[1] for line in ghz.splitlines()[1:]}
    assert [*bars] == ["000", "001", "111"]
    assert len(bars["000"]) == 40 and len(bars["001"]) < len(bars["000"]) / 3 + 1
    assert "70.0%" in ghz


def test_results_plot_file_writes_one_figure_per_batch(fake, capsys, tmp_path):
    fake.on("GET", "/v1/batches/b1/results", (200, results_answer()))
    png = tmp_path / "b1.png"
    code, out, err = run(capsys, "results", "b1", "--plot", str(png))
    assert code == 0 and f"wrote {png}" in err
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000
    assert "bell (100 shots" in out  # the usual table still goes to stdout


def test_results_plot_to_an_unwritable_file_is_a_clear_error(fake, capsys, tmp_path):
    fake.on("GET", "/v1/batches/b1/results", (200, results_answer()))
    code, _, err = run(capsys, "results", "b1", "--plot", str(tmp_path / "no" / "dir.png"))
    assert code == 2 and "cannot write the figure" in err
