"""Structured logging: one pipeline for our lines and every library's, with bound context
(job_id, batch_id, backend) on each line and known secrets masked on the way out."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
import structlog

from qjobd.daemon.process import logs

SECRET = "sk-test-123456"
NOISY = ("aiosqlite", "httpcore", "uvicorn.error", "uvicorn.access", "asyncio", "httpx")


@pytest.fixture(autouse=True)
def restore_logging(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Undo configure(): structlog defaults, root handlers and levels, registered secrets."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    levels = {name: logging.getLogger(name).level for name in NOISY}
    monkeypatch.setattr(logs, "_secrets", set())
    yield
    structlog.reset_defaults()
    structlog.contextvars.clear_contextvars()
    root.handlers[:] = handlers
    root.setLevel(level)
    for name, lvl in levels.items():
        logging.getLogger(name).setLevel(lvl)


def json_lines(err: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in err.splitlines() if line.strip()]


def test_json_lines_carry_bound_context_and_a_timestamp(capsys):
    logs.configure(json_output=True)
    log = structlog.get_logger("qjobd.test")

    with structlog.contextvars.bound_contextvars(job_id="j-1", batch_id="b-1", backend="ionq"):
        log.info("polled", remote_id="r-9", attempt=3)
    log.info("idle")

    first, second = json_lines(capsys.readouterr().err)
    assert first["event"] == "polled"
    assert first["level"] == "info"
    assert first["logger"] == "qjobd.test"
    assert (first["job_id"], first["batch_id"], first["backend"]) == ("j-1", "b-1", "ionq")
    assert (first["remote_id"], first["attempt"]) == ("r-9", 3)
    stamp = datetime.fromisoformat(first["timestamp"])
    assert stamp.utcoffset() is not None and stamp.utcoffset().total_seconds() == 0
    assert abs((datetime.now(UTC) - stamp).total_seconds()) < 60
    # the context ends with the block
    assert second["event"] == "idle"
    assert not {"job_id", "batch_id", "backend"} & set(second)


def test_library_lines_go_through_the_same_pipeline_with_the_context(capsys):
    logs.configure(json_output=True)

    with structlog.contextvars.bound_contextvars(job_id="j-2", batch_id="b-2", backend="qoro"):
        logging.getLogger("httpx").warning("HTTP Request: %s %s", "GET", "https://x/jobs/1")
    logging.getLogger("httpx").warning("outside")

    inside, outside = json_lines(capsys.readouterr().err)
    assert inside["event"] == "HTTP Request: GET https://x/jobs/1"
    assert inside["logger"] == "httpx"
    assert inside["level"] == "warning"
    assert (inside["job_id"], inside["batch_id"], inside["backend"]) == ("j-2", "b-2", "qoro")
    assert "timestamp" in inside
    assert outside["event"] == "outside"
    assert "job_id" not in outside


def test_the_level_filters_our_lines_and_librarys_lines(capsys):
    logs.configure("warning", json_output=True)
    log = structlog.get_logger("qjobd.test")
    log.info("dropped")
    logging.getLogger("httpx").info("dropped too")
    log.warning("kept")
    assert [e["event"] for e in json_lines(capsys.readouterr().err)] == ["kept"]


def test_noisy_libraries_are_quieted_to_warning(capsys):
    logs.configure("debug", json_output=True)
    logging.getLogger("aiosqlite").debug("executing SELECT 1")
    logging.getLogger("aiosqlite").warning("slow")
    structlog.get_logger("qjobd.test").debug("ours")
    assert [e["event"] for e in json_lines(capsys.readouterr().err)] == ["slow", "ours"]


def test_registered_secrets_are_masked_in_messages_and_values(capsys):
    logs.configure(json_output=True)
    logs.add_secrets([SECRET])
    log = structlog.get_logger("qjobd.test")

    log.info(f"using key {SECRET} now", url=f"https://h/v1?key={SECRET}&x=1")
    logging.getLogger("httpx").warning("GET %s", f"https://h/v1?key={SECRET}")

    err = capsys.readouterr().err
    assert SECRET not in err
    ours, theirs = json_lines(err)
    assert ours["event"] == "using key *** now"
    assert ours["url"] == "https://h/v1?key=***&x=1"
    assert theirs["event"] == "GET https://h/v1?key=***"


def test_secret_keys_are_masked_whatever_their_value(capsys):
    logs.configure(json_output=True)
    structlog.get_logger("qjobd.test").info(
        "request", api_key="not-registered-1", authorization="Bearer not-registered-2",
        headers_Authorization="x", target="simulator")
    (line,) = json_lines(capsys.readouterr().err)
    assert line["api_key"] == logs.MASK
    assert line["authorization"] == logs.MASK
    assert line["headers_Authorization"] == logs.MASK
    assert line["target"] == "simulator"
    assert "not-registered" not in json.dumps(line)


def test_the_console_format_masks_too(capsys):
    logs.configure(json_output=False)
    logs.add_secrets([SECRET])
    structlog.get_logger("qjobd.test").info(f"key {SECRET}", api_key="anything")
    err = capsys.readouterr().err
    assert "key ***" in err
    assert SECRET not in err
    assert "anything" not in err


def _fail_holding_a_key() -> None:
    api_key = SECRET  # a local that a traceback with locals would print
    request = {"Authorization": f"Bearer {api_key}"}
    raise RuntimeError(f"provider answered 401 for {len(request)} header(s)")


@pytest.mark.parametrize("registered", [False, True], ids=["unregistered", "registered"])
def test_exceptions_never_print_locals_or_secrets(capsys, registered):
    logs.configure(json_output=True)
    if registered:
        logs.add_secrets([SECRET])
    try:
        _fail_holding_a_key()
    except RuntimeError:
        structlog.get_logger("qjobd.test").exception("submit failed")
        logging.getLogger("httpx").exception("transport failed")

    err = capsys.readouterr().err
    ours, theirs = json_lines(err)
    for line in (ours, theirs):
        rendered = json.dumps(line["exception"])
        assert "RuntimeError" in rendered
        assert "provider answered 401" in rendered
        assert "_fail_holding_a_key" in rendered  # the frames are there
    assert SECRET not in err
    assert "Bearer" not in err
    # no frame carries its variables (a "locals" key, JSON or, once redacted, repr-quoted)
    assert '"locals"' not in err
    assert "'locals'" not in err
    assert "api_key" not in err


def test_console_exceptions_never_print_locals_or_secrets(capsys):
    logs.configure(json_output=False)
    logs.add_secrets([SECRET])
    try:
        _fail_holding_a_key()
    except RuntimeError:
        structlog.get_logger("qjobd.test").exception("submit failed")
    err = capsys.readouterr().err
    assert "provider answered 401" in err
    assert SECRET not in err
    assert "Bearer" not in err


def test_registering_secrets_keeps_json_types(capsys):
    logs.configure(json_output=True)
    logs.add_secrets([SECRET])
    structlog.get_logger("qjobd.test").info(
        "state", remote_id=None, counts={"00": 512, "11": 512}, labels=["a", "b"])
    (line,) = json_lines(capsys.readouterr().err)
    assert line["remote_id"] is None
    assert line["counts"] == {"00": 512, "11": 512}
    assert line["labels"] == ["a", "b"]


def test_short_or_empty_secrets_are_ignored(capsys):
    logs.configure(json_output=True)
    logs.add_secrets(["", "abc"])
    structlog.get_logger("qjobd.test").info("abcdef", n=1)
    (line,) = json_lines(capsys.readouterr().err)
    assert line["event"] == "abcdef"


def test_httpx_lines_per_request_show_at_debug_only(capsys):
    # one line per provider request: 130 a second with 100,000 jobs in flight
    logs.configure("info", json_output=True)
    logging.getLogger("httpx").info("HTTP Request: GET https://x/jobs 200 OK")
    logging.getLogger("httpx").warning("kept")
    logs.set_level("debug")  # what a SIGHUP with log_level = "debug" does
    logging.getLogger("httpx").info("HTTP Request: shown")
    assert [e["event"] for e in json_lines(capsys.readouterr().err)] == [
        "kept", "HTTP Request: shown"]
